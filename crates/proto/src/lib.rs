//! The mmogit wire protocol, without I/O.
//!
//! * [`codec`]: frames `[u32 BE length][JSON {msg_type, payload, signature}]`,
//!   an incremental decoder that never allocates for a frame before its bytes
//!   arrive.
//! * [`message`]: the message types and their payload schemas.
//! * [`noise`]: version 2's encrypted channel (a Noise handshake, then
//!   transport messages carrying the frame stream).
//! * [`session`]: the signed handshake and the session state machine, driven
//!   by bytes in → events and bytes out (like quinn-proto). Time and
//!   randomness are passed in, so it is deterministic under test.
//!
//! The specification is `docs/PROTOCOL.md`.

pub mod codec;
pub mod error;
pub mod message;
pub mod noise;
pub mod session;

pub use codec::{
    encode_frame, FrameDecoder, NetworkMessage, RawMessage, MAX_FRAME_LEN, PRE_AUTH_MAX_FRAME_LEN,
};
pub use error::ProtoError;
pub use message::{
    reasons, BranchTip, Bye, GitBundle, Hello, IngestSummary, MemoryRequest, MemoryResponse,
    Message, MsgType, SyncRequest, TransferInfo, MAX_BUNDLE_CHUNK,
};
pub use session::{
    compute_session_id, hello_signed_bytes, signed_bytes, CloseReason, Event, PeerInfo, Role,
    Session, SessionConfig, PRE_AUTH_MAX_NOISE_MESSAGE, PROTOCOL_VERSIONS,
};
