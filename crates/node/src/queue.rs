//! A session's send queue: its bound, its sender and why a send failed.

use mmogit_proto::Message;

/// Most messages queued for one session by [`NodeHandle::send_to`];
/// further sends wait (backpressure).
///
/// [`NodeHandle::send_to`]: crate::NodeHandle::send_to
pub const SEND_QUEUE: usize = 64;

/// A session's send queue. Messages are boxed: tokio allocates a channel's
/// slots in blocks of 32 when it is created, and 32 unboxed [`Message`]s
/// (248 bytes each) would add about 8 KiB to every idle session.
pub(crate) type SessionTx = tokio::sync::mpsc::Sender<Box<Message>>;

/// Why [`NodeHandle::send_to`] failed.
///
/// [`NodeHandle::send_to`]: crate::NodeHandle::send_to
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No authenticated session with this peer.
    #[error("no session with peer {0}")]
    NotConnected(String),
    /// The session closed before the message was queued.
    #[error("the session with peer {0} closed")]
    Closed(String),
}
