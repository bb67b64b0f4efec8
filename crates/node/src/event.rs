//! What the node reports about peers.

use std::net::SocketAddr;

use mmogit_identity::PublicKey;

/// What the node reports about peers. PeerConnected / PeerDisconnected are
/// reported for inbound and outbound sessions alike (the direction is in
/// [`NodeHandle::peers`]); a session closed at once by the duplicate-session
/// rule is reported by neither.
///
/// [`NodeHandle::peers`]: crate::NodeHandle::peers
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A peer authenticated and is served.
    PeerConnected { pubkey: PublicKey, addr: SocketAddr },
    /// An authenticated peer's connection ended.
    PeerDisconnected {
        pubkey: PublicKey,
        addr: SocketAddr,
        reason: String,
    },
    /// A connection was refused (limits, untrusted key, failed handshake).
    Refused {
        addr: SocketAddr,
        pubkey: Option<PublicKey>,
        reason: String,
    },
}
