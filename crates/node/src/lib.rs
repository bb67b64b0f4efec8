//! The mmogit peer node: a TCP listener serving trusted peers, a client that
//! connects to them, and the peer store (`peers.json`). Speaks the protocol
//! of `mmogit-proto` (see `docs/PROTOCOL.md`).
//!
//! ```no_run
//! # async fn demo(id: std::sync::Arc<mmogit_identity::Identity>) -> Result<(), mmogit_node::NodeError> {
//! use mmogit_node::*;
//! let node = Node::new(id.clone(), NodeConfig::default(),
//!     std::sync::Arc::new(PeerStoreTrust::new("peers.json".into()))).start().await?;
//! let mut c = connect("127.0.0.1:7420", id, None, &ClientConfig::default()).await?;
//! let rtt = c.ping().await?;
//! c.close("done").await?;
//! node.shutdown().await;
//! # let _ = rtt; Ok(()) }
//! ```
//!
//! # Decisions and I/O
//!
//! What the node decides (whom to dial and when, which of two sessions with
//! a peer to keep, whom to close when trust changes, when to announce, pull,
//! defer or give up) is in [`service`], state machines without I/O that take
//! the time as an input and draw randomness from a seed:
//! `service::sessions` (driven by the registry) and [`service::replication`]
//! (driven by [`replicate::Replicator`]). [`service::Service`] feeds both from
//! one stream of inputs and [`service::sim`] runs nodes of it on a virtual
//! clock, which is how the scenario tests run without sockets. The rest of
//! the crate is the tokio shell: sockets, the handshake, session tasks,
//! store work on blocking threads.
//!
//! # Module order
//!
//! The modules use each other in one direction: a module uses only modules
//! on the lines above its own (bottom layer first), and only `node` knows
//! the whole node. `tests/module_order.rs` checks this list against the
//! `crate::` paths in the sources.
//!
//! 1. `backoff` `config` `discovery` `event` `peers` `queue`: use nothing of the crate
//! 2. `service`: the node's decisions without I/O (sessions, dials, replication)
//! 3. `error` `inbox` `registry` `trust`: errors, data delivery, sessions, trust policy
//! 4. `conn` `status`: one framed connection; the status file
//! 5. `client` `shared`: outbound connections; the state a running node's tasks share
//! 6. `peer_session` `replicate`: the session driver; memory replication
//! 7. `dialer` `server`: the dialer and status writer; the accept loop and handshake
//! 8. `node`: [`Node`] and [`NodeHandle`], which start and stop the tasks

// `NodeError::NotAuthorized` carries the peer's key by value (the CLI
// matches on it); errors are rare and never on a hot path.
#![allow(clippy::result_large_err)]

pub mod backoff;
mod client;
mod config;
mod conn;
mod dialer;
pub mod discovery;
mod error;
mod event;
mod inbox;
mod node;
mod peer_session;
pub mod peers;
mod queue;
mod registry;
pub mod replicate;
mod server;
pub mod service;
mod shared;
pub mod status;
mod trust;

pub use backoff::{Backoff, DialSchedule, RateLimiter};
pub use client::{connect, ClientConfig, Connection};
pub use config::{InboundRate, NodeConfig};
pub use discovery::{Discovery, MdnsDiscovery, MemoryNetwork};
pub use error::NodeError;
pub use event::NodeEvent;
pub use inbox::{Inbound, MessageHandler, Reply};
pub use node::{Node, NodeHandle};
pub use peers::{PeerRecord, PeerSource, PeerStore, PeerStoreError, TrustState};
pub use queue::{SendError, SEND_QUEUE};
pub use service::sessions::{new_session_wins, Direction, PeerStatus, DUPLICATE_SESSION};
pub use shared::NodeSender;
pub use status::{read_status, StatusError, StatusFile};
pub use trust::{PeerStoreTrust, TrustPolicy, DEFAULT_MAX_PENDING};
