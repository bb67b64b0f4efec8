//! The embeddable API: everything the `mmogit` command does, as library calls.
//!
//! - [`Agent`]: one agent's home (identity, memory repository, peers) —
//!   [`remember`](Agent::remember), [`recall`](Agent::recall),
//!   [`search`](Agent::search), [`sync`](Agent::sync) and
//!   [`sync_status`](Agent::sync_status), peer trust, the
//!   [`serve_status`](Agent::serve_status) of its running node;
//! - [`P2PServer`]: run this agent's node (what `mmogit serve` runs, mDNS
//!   and repository maintenance included) and watch its [`Event`]s,
//!   memories received included;
//! - [`connect_to_peer`], [`query_peer`], [`discover_lan`] and
//!   [`Peering`] ([`probe`](Peering::probe) then [`trust`](Peering::trust),
//!   or [`add_peer`](Peering::add_peer)): reach, query, find and trust peers
//!   (what `mmogit p2p connect`, `query`, `discover` and `add` do).
//!
//! The types these calls take and give are re-exported here, so that a
//! program (the CLI first) needs no other path into the node and store
//! crates. The CLI is built on these same calls (`tests/layering.rs` checks
//! that its commands use nothing else).

mod agent;
mod discovery;
mod error;
mod server;
pub mod sync;

pub use agent::Agent;
pub use discovery::{
    connect_to_peer, discover_lan, is_address, query_peer, remote_users, PeerAdded, PeerProbe,
    Peering,
};
pub use error::{Error, Result};
pub use server::{Event, Events, GcSchedule, P2PServer, ServerHandle};

/// A node found on the local network by [`discover_lan`], and how it
/// announced itself.
pub use mmogit_node::discovery::{Announced, Candidate};
/// Why a sync with a peer failed: the peer's fault or our store's.
pub use mmogit_node::replicate::ReplicateError;
/// Replication settings of a [`P2PServer`] (relaying, transfer limits, quotas).
pub use mmogit_node::replicate::ReplicatorConfig;
/// Node settings of a [`P2PServer`] (limits, timeouts, dialing).
pub use mmogit_node::NodeConfig;
/// How many unknown keys a [`P2PServer`] keeps as pending by default.
pub use mmogit_node::DEFAULT_MAX_PENDING;
/// An authenticated session with a peer ([`connect_to_peer`]) and what
/// [`query_peer`] gets from it.
pub use mmogit_node::{replicate::QueryOutcome, Connection};
/// The errors [`Error`] wraps, for telling their cases apart.
pub use mmogit_node::{NodeError, PeerStoreError};
/// A peer's entry in the peer store (`peers.json`) and its parts.
pub use mmogit_node::{PeerRecord, PeerSource, PeerStore, TrustState};
/// What a running node publishes ([`Agent::serve_status`]).
pub use mmogit_node::{PeerStatus, StatusError, StatusFile};
/// The errors [`Error`] wraps, for telling their cases apart.
pub use mmogit_store::StoreError;
/// Memories: what [`Agent::remember`] takes and [`Agent::recall`] and
/// [`Agent::search`] give.
pub use mmogit_store::{
    Filter, MemoryType, NewMemory, RecallResult, SearchHit, SearchResult, VerifiedMemory, Warning,
    MAX_CONTENT_BYTES,
};
/// What [`Home::open_store`](crate::Home::open_store)'s repository reports
/// of `mmogit verify` and `mmogit gc`.
pub use mmogit_store::{GcReport, VerifyReport};
pub use sync::{PeerSyncResult, PeerSyncStatus, Refusal, SyncOptions, SyncProgress, SyncTarget};
