//! The one error type of the protocol core.

/// Everything that can go wrong while decoding frames or running a session.
///
/// Every variant is fatal for the connection it happened on: the session
/// closes (sending a signed `Bye` when a session id already exists).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A frame header declared a length of zero.
    #[error("frame of length 0")]
    EmptyFrame,
    /// A frame header declared a length above the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: usize },
    /// The stream ended in the middle of a frame.
    #[error("truncated frame: stream ended after {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
    /// The frame body is not the JSON `NetworkMessage` object.
    #[error("invalid message JSON: {0}")]
    InvalidJson(String),
    /// `msg_type` names no known message type.
    #[error("unknown message type {0:?}")]
    UnknownMessageType(String),
    /// A base64 field does not decode.
    #[error("invalid base64 in {field}")]
    InvalidBase64 { field: &'static str },
    /// The signature field is not 64 bytes.
    #[error("signature is not 64 bytes")]
    BadSignatureEncoding,
    /// The signature does not verify under the peer's key for this session,
    /// direction and sequence number (forged, replayed, reordered or duplicated).
    #[error("bad signature on {msg_type} (forged, replayed, reordered or duplicated)")]
    BadSignature { msg_type: &'static str },
    /// A payload does not match its message type's schema or limits.
    #[error("invalid {msg_type} payload: {reason}")]
    InvalidPayload {
        msg_type: &'static str,
        reason: String,
    },
    /// The peer's Hello names another protocol.
    #[error("peer speaks protocol {0:?}, not \"mmogit\"")]
    WrongProtocol(String),
    /// The peer's Hello carries a public key other than the one expected.
    #[error("peer has public key {got}, expected {expected}: possible impersonation")]
    WrongPubkey { expected: String, got: String },
    /// No protocol version in common.
    #[error("no common protocol version: we support {ours:?}, peer supports {theirs:?}")]
    VersionMismatch { ours: Vec<u32>, theirs: Vec<u32> },
    /// A message that is not allowed in the current state.
    #[error("unexpected {msg_type} while {state}")]
    UnexpectedMessage {
        msg_type: &'static str,
        state: &'static str,
    },
    /// The Pong that completes authentication does not echo our Ping.
    #[error("authentication Pong does not echo the Ping payload")]
    PongMismatch,
    /// The handshake did not complete in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// Nothing was received for the idle timeout.
    #[error("no data from peer within the idle timeout")]
    IdleTimeout,
    /// A frame that had started did not complete in time.
    #[error("frame not completed within the read timeout")]
    FrameTimeout,
    /// `send` before the session is authenticated.
    #[error("session is not established")]
    NotEstablished,
    /// The session is closed.
    #[error("session is closed")]
    Closed,
    /// The local side asked to send something it may not send directly.
    #[error("cannot send {0} directly")]
    InvalidSend(&'static str),
    /// An outgoing message would exceed the frame limit.
    #[error("outgoing {msg_type} of {len} bytes exceeds the frame limit")]
    MessageTooLarge { msg_type: &'static str, len: usize },
    /// The Noise channel failed: a handshake that does not decrypt (wrong
    /// key, scanner, replay, hidden node refusing a first contact), or a
    /// transport message tampered with. Nothing is sent back while there is
    /// no session id (the handshake, the Hellos); after that, a signed Bye
    /// as for any protocol error.
    #[error("encrypted channel: {0}")]
    Noise(#[from] crate::noise::NoiseError),
    /// The Hello's key is not the one the Noise handshake authenticated.
    #[error("the Hello's key is not the key that opened the encrypted channel")]
    ChannelKeyMismatch,
    /// The peer closed the connection during a Noise handshake (XK) for
    /// `expected`: only the holder of that key can answer it.
    #[error("the peer did not complete the encrypted handshake for key {expected}: it holds another key (possible impersonation, or its key changed) or does not speak mmogit version 2")]
    KeyNotProven { expected: String },
    /// A first contact without the peer's key was cut off in the Noise
    /// handshake: the node may accept only peers that know its key.
    #[error("the peer closed the connection during a first contact without its key: it may accept only peers that know its key (add it with --pubkey)")]
    ClosedWithoutKey,
    /// The sequence number would overflow (2^64 messages).
    #[error("sequence number exhausted")]
    SequenceExhausted,
}
