//! How data messages reach the application: the synchronous
//! [`MessageHandler`], or a task of the application that receives each
//! [`Inbound`] with a [`Reply`] handle to answer on the same session.

use std::time::Duration;

use mmogit_identity::PublicKey;
use mmogit_proto::Message;

use crate::queue::{SendError, SessionTx, SEND_QUEUE};

/// Handles data messages (MemoryRequest, MemoryResponse, GitBundle) from
/// authenticated peers, inbound and outbound sessions alike; the returned
/// messages are sent back in order on the same session.
pub trait MessageHandler: Send + Sync + 'static {
    fn handle(&self, peer: &PublicKey, msg: Message) -> Vec<Message>;
}

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
    tx: SessionTx,
}

impl Reply {
    pub(crate) fn new(peer: PublicKey, tx: SessionTx) -> Reply {
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
