//! mmogit: sovereign, verifiable memory for AI agents.
//!
//! This crate is both the `mmogit` command-line tool and the library it is
//! built on, so that an agent written in Rust embeds mmogit without shelling
//! out. The building blocks are re-exported:
//! - [`identity`]: Ed25519 keys, recovery phrase, key file;
//! - [`store`]: signed memory records in git, recall, search and verification;
//! - [`node`]: the peer node, its protocol client and the peer store.
//!
//! [`Home`] ties them to a directory on disk (`--home`, `MMOGIT_HOME` or
//! `~/.mmogit`), the same layout the CLI uses, and [`Agent`] does on a home
//! what the CLI commands do: [`remember`](Agent::remember),
//! [`recall`](Agent::recall), [`search`](Agent::search),
//! [`sync`](Agent::sync). [`P2PServer`] runs the node (`mmogit serve`) with a
//! stream of [`Event`]s; [`connect_to_peer`] and [`Peering::add_peer`]
//! reach and trust peers.
//!
//! ```
//! use mmogit::{Agent, Home};
//! use mmogit::store::{Filter, MemoryType, NewMemory};
//!
//! # fn main() -> Result<(), mmogit::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let home = Home::new(dir.path());
//! # Agent::init(home.clone())?;
//! let agent = Agent::open(home)?;
//! agent.remember(NewMemory {
//!     kind: MemoryType::Observation,
//!     content: "the build takes four minutes".into(),
//!     tags: vec!["ci".into()],
//!     confidence: None,
//!     private: false,
//! })?;
//! let recent = agent.recall(&Filter { limit: Some(10), ..Filter::default() })?;
//! for m in &recent.memories {
//!     println!("{} {}: {:?}", m.author().short(12), m.kind(), m.readable_content(agent.reader()));
//! }
//! # assert_eq!(recent.memories.len(), 1);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub use mmogit_identity as identity;
pub use mmogit_node as node;
pub use mmogit_store as store;

pub mod api;
mod home;

pub use api::{
    connect_to_peer, discover_lan, query_peer, Agent, Error, Event, Events, GcSchedule, P2PServer,
    PeerAdded, PeerProbe, PeerSyncResult, PeerSyncStatus, Peering, Refusal, ServerHandle,
    SyncOptions, SyncProgress, SyncTarget,
};
pub use home::{resolve_prefix, Home, HomeError};
