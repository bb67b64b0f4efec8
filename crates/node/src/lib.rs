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

mod client;
mod conn;
mod error;
pub mod peers;
mod server;

pub use client::{connect, ClientConfig, Connection};
pub use error::NodeError;
pub use peers::{PeerRecord, PeerSource, PeerStore, PeerStoreError, TrustState};
pub use server::{
    MessageHandler, Node, NodeConfig, NodeEvent, NodeHandle, PeerStoreTrust, TrustPolicy,
};
