//! The one error type of the node.

use mmogit_proto::{CloseReason, ProtoError};

use crate::peers::PeerStoreError;

/// Everything that can go wrong talking to peers. Each variant maps to its
/// own CLI exit code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The address could not be resolved or the TCP connection failed.
    #[error("cannot reach {addr}: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Connecting, the handshake, a read or a request took too long.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The peer does not trust our key (it answered Bye "not authorized").
    /// `peer` is the key the peer proved in the handshake (its Bye is signed
    /// in the session), so the user can still see whom they talked to.
    #[error("not authorized by the peer (it has recorded our key as pending; ask its owner to trust it)")]
    NotAuthorized {
        peer: Option<mmogit_identity::PublicKey>,
    },
    /// The peer's key is not the one we expected.
    #[error("peer has public key {got}, expected {expected}: possible impersonation")]
    WrongPubkey { expected: String, got: String },
    /// The peer closed the connection instead of completing the encrypted
    /// handshake for the key we dialled: only that key's holder can.
    #[error("peer did not prove key {expected}: it holds another key (possible impersonation, or its key changed) or does not speak mmogit version 2")]
    KeyNotProven { expected: String },
    /// A first contact without the peer's key got no answer: the node is
    /// hidden (or not an mmogit version 2 node).
    #[error("no answer to a first contact without the peer's key: it may answer only peers that know its key (add it with --pubkey HEX)")]
    KeyNeeded,
    /// No protocol version in common.
    #[error("protocol version mismatch: {0}")]
    VersionMismatch(String),
    /// The peer closed the session with Bye for another reason.
    #[error("peer closed the connection: {0}")]
    PeerClosed(String),
    /// The peer broke the protocol (bad frame, bad signature, ...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Socket error on an established connection.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Loading or saving peers.json failed.
    #[error(transparent)]
    PeerStore(#[from] PeerStoreError),
}

impl From<ProtoError> for NodeError {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::WrongPubkey { expected, got } => NodeError::WrongPubkey { expected, got },
            ProtoError::KeyNotProven { expected } => NodeError::KeyNotProven { expected },
            ProtoError::ClosedWithoutKey => NodeError::KeyNeeded,
            ProtoError::VersionMismatch { ours, theirs } => NodeError::VersionMismatch(format!(
                "we support {ours:?}, the peer supports {theirs:?}"
            )),
            ProtoError::HandshakeTimeout => NodeError::Timeout("handshake".into()),
            ProtoError::IdleTimeout => NodeError::Timeout("no data from peer".into()),
            ProtoError::FrameTimeout => NodeError::Timeout("reading a frame".into()),
            other => NodeError::Protocol(other.to_string()),
        }
    }
}

impl NodeError {
    /// The error for a session that closed with `reason`.
    pub fn from_close(reason: CloseReason) -> NodeError {
        match reason {
            CloseReason::Remote(r) if r == mmogit_proto::reasons::NOT_AUTHORIZED => {
                NodeError::NotAuthorized { peer: None }
            }
            CloseReason::Remote(r) if r.starts_with(mmogit_proto::reasons::VERSION_MISMATCH) => {
                NodeError::VersionMismatch(r)
            }
            CloseReason::Remote(r) => NodeError::PeerClosed(r),
            CloseReason::Error(e) => e.into(),
            CloseReason::Eof => NodeError::PeerClosed("connection closed without Bye".into()),
            CloseReason::Local(r) => NodeError::Protocol(format!("session closed locally: {r}")),
        }
    }
}
