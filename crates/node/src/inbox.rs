//! Data messages delivered to a task of the application (instead of the
//! synchronous [`crate::MessageHandler`]), each with a handle to answer on
//! the same session; and a cloneable handle to send to any peer session.

use std::sync::Arc;
use std::time::Duration;

use mmogit_identity::PublicKey;
use mmogit_proto::Message;

use crate::server::{SendError, Shared, SEND_QUEUE};

/// A data message (MemoryRequest, MemoryResponse, GitBundle) from an
/// authenticated peer or client.
#[derive(Debug)]
pub struct Inbound {
    pub peer: PublicKey,
    pub msg: Message,
    /// Answers go back on the session the message came from.
    pub reply: Reply,
}

/// Sends messages on one session (peer or client connection).
#[derive(Debug, Clone)]
pub struct Reply {
    peer: PublicKey,
    tx: crate::server::SessionTx,
}

impl Reply {
    pub(crate) fn new(peer: PublicKey, tx: crate::server::SessionTx) -> Reply {
        Reply { peer, tx }
    }

    /// The peer at the other end.
    pub fn peer(&self) -> &PublicKey {
        &self.peer
    }

    /// Whether both handles send on the same session (a reconnect makes a new one).
    pub fn same_session(&self, other: &Reply) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// Queues `msg`, waiting at most `timeout` for room in the session's queue.
    pub async fn send(&self, msg: Message, timeout: Duration) -> Result<(), SendError> {
        match tokio::time::timeout(timeout, self.tx.send(Box::new(msg))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SendError::Closed(self.peer.short(12))),
            Err(_) => Err(SendError::Closed(format!(
                "{} (send queue full for {timeout:?})",
                self.peer.short(12)
            ))),
        }
    }

    /// Queues `msg` only if there is room now: never waits (for a task
    /// that serves every peer and must not wait on one of them).
    pub fn try_send(&self, msg: Message) -> Result<(), SendError> {
        use tokio::sync::mpsc::error::TrySendError;
        match self.tx.try_send(Box::new(msg)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(SendError::Closed(self.peer.short(12))),
            Err(TrySendError::Full(_)) => Err(SendError::Closed(format!(
                "{} (send queue full)",
                self.peer.short(12)
            ))),
        }
    }

    /// Waits until at most `n` messages are queued for the session (so a
    /// large transfer holds few chunks in memory), at most `timeout`.
    pub async fn wait_queued_at_most(&self, n: usize, timeout: Duration) -> Result<(), SendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.tx.is_closed() {
                return Err(SendError::Closed(self.peer.short(12)));
            }
            if SEND_QUEUE.saturating_sub(self.tx.capacity()) <= n {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SendError::Closed(format!(
                    "{} (peer not reading for {timeout:?})",
                    self.peer.short(12)
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The session ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A cloneable handle on a running node, for background tasks.
#[derive(Clone)]
pub struct NodeSender {
    shared: Arc<Shared>,
}

impl NodeSender {
    pub(crate) fn new(shared: Arc<Shared>) -> NodeSender {
        NodeSender { shared }
    }

    /// Peers with an open peer session.
    pub fn connected(&self) -> Vec<PublicKey> {
        self.shared
            .registry
            .snapshot()
            .into_iter()
            .filter(|p| p.connected)
            .map(|p| p.pubkey)
            .collect()
    }

    /// A reply handle on the session with `peer`.
    pub fn session(&self, peer: &PublicKey) -> Option<Reply> {
        self.shared
            .registry
            .sender(peer)
            .map(|tx| Reply::new(*peer, tx))
    }

    /// The node is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// Cancelled when the node shuts down.
    pub async fn stopped(&self) {
        self.shared.cancel.cancelled().await
    }
}
