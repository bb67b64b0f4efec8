//! The error of replication: the peer's fault, or ours.

use crate::error::NodeError;

/// Why a sync or a query with a peer failed. The two kinds stay apart so a
/// caller (and the CLI's exit code) can tell "the peer broke the protocol
/// or went away" from "our own store failed".
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// The connection or the peer: unreachable, timed out, closed, or it
    /// broke the protocol.
    #[error(transparent)]
    Peer(#[from] NodeError),
    /// Our own store failed (a disk, a lock, a damaged repository): nothing
    /// the peer sent is to blame.
    #[error("our store: {0}")]
    Store(#[from] mmogit_store::StoreError),
    /// A blocking worker of ours panicked or was cancelled.
    #[error("worker failed: {0}")]
    Worker(String),
}

impl ReplicateError {
    /// The connection error, when the peer's side is to blame.
    pub fn as_peer(&self) -> Option<&NodeError> {
        match self {
            ReplicateError::Peer(e) => Some(e),
            _ => None,
        }
    }
}

impl From<tokio::task::JoinError> for ReplicateError {
    fn from(e: tokio::task::JoinError) -> ReplicateError {
        ReplicateError::Worker(e.to_string())
    }
}
