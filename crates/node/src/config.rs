//! The node's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mmogit_proto::SessionConfig;

/// A per-IP token bucket over new inbound connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InboundRate {
    /// Connections per second an IP regains.
    pub per_sec: f64,
    /// Connections an IP may open at once.
    pub burst: u32,
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Default `0.0.0.0:7420`.
    pub listen_addr: SocketAddr,
    /// Most inbound connections at once (default 128).
    pub max_inbound: usize,
    /// Most inbound connections from one IP address at once (default 16).
    pub max_per_ip: usize,
    /// The handshake must complete within this (default 10 s).
    pub handshake_timeout: Duration,
    /// Close when nothing was received for this long (default 30 s).
    pub idle_timeout: Duration,
    /// Heartbeat Ping when nothing was sent for this long, at most
    /// `idle_timeout / 2` (default 30 s).
    pub heartbeat_interval: Duration,
    /// A started frame must complete within this; during the handshake a
    /// write fails when the peer takes none of it for this long (default 30 s).
    pub frame_timeout: Duration,
    /// An authenticated session whose peer takes none of our queued bytes
    /// for this long is closed, logged and counted
    /// ([`NodeHandle::slow_dropped_count`]): a peer that stops reading
    /// holds up only its own session (default 30 s).
    ///
    /// [`NodeHandle::slow_dropped_count`]: crate::NodeHandle::slow_dropped_count
    pub send_timeout: Duration,
    /// How long shutdown waits for connections to say Bye (default 5 s).
    pub shutdown_grace: Duration,
    /// Hello `agent` string.
    pub agent: String,
    /// Most outbound sessions plus dials in flight at once (default 64).
    pub max_outbound: usize,
    /// Per-IP rate limit on new inbound connections, checked before anything
    /// else; over it the connection is closed at once, logged at debug and
    /// counted ([`NodeHandle::rate_limited_count`]). Default 10/s, burst 20;
    /// `None` disables it.
    ///
    /// [`NodeHandle::rate_limited_count`]: crate::NodeHandle::rate_limited_count
    pub inbound_rate: Option<InboundRate>,
    /// `peers.json`. When set, the node re-reads it as soon as it changes
    /// (its size, times and inode are checked every 250 ms), on demand and
    /// at least every `dial_refresh`, and closes every session, peer or
    /// client, of a key that is no longer Trusted there (removed or
    /// blocked) with Bye "not authorized". Default `None`.
    pub peers_path: Option<PathBuf>,
    /// Keep sessions open to every Trusted peer of `peers_path` that has
    /// addresses: dial those without a session, reconnect with backoff.
    /// Default false.
    pub dial_trusted: bool,
    /// The peer store is re-read at least this often, changed or not
    /// (default 2 s); a change is read within 250 ms.
    pub dial_refresh: Duration,
    /// First reconnect delay; doubles per failure (default 1 s, ±20 % jitter).
    pub dial_backoff_base: Duration,
    /// Longest reconnect delay (default 5 min).
    pub dial_backoff_cap: Duration,
    /// A session that lasted this long resets the backoff (default 10 s);
    /// one that ended sooner counts as a failed attempt.
    pub healthy_session: Duration,
    /// Resolving and TCP connect when dialling (default 10 s).
    pub dial_timeout: Duration,
    /// Where to write the status file ([`crate::StatusFile`]); default `None`.
    pub status_path: Option<PathBuf>,
    /// Answer only connections that prove they know our key (Noise XK);
    /// a first contact without it (XX) is closed without a byte, so a
    /// scanner cannot learn who runs here. Default false: the node is
    /// introducible (`p2p add <ip:port>` without `--pubkey` works). A node
    /// announcing a private mDNS tag is hidden whatever this says.
    pub hidden: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 7420)),
            max_inbound: 128,
            max_per_ip: 16,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            agent: SessionConfig::default().agent,
            max_outbound: 64,
            inbound_rate: Some(InboundRate {
                per_sec: 10.0,
                burst: 20,
            }),
            peers_path: None,
            dial_trusted: false,
            dial_refresh: Duration::from_secs(2),
            dial_backoff_base: Duration::from_secs(1),
            dial_backoff_cap: Duration::from_secs(300),
            healthy_session: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(10),
            status_path: None,
            hidden: false,
        }
    }
}
