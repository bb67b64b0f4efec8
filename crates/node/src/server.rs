//! The listener: one task per inbound connection, trust policy, limits,
//! graceful shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mmogit_identity::{Identity, PublicKey};
use mmogit_proto::{reasons, Event, Message, Session, SessionConfig};
use rand::RngCore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::conn::{Conn, Wake};
use crate::error::NodeError;
use crate::peers::{PeerStore, TrustState};

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
    /// A started frame must complete within this; also bounds each write (default 30 s).
    pub frame_timeout: Duration,
    /// How long shutdown waits for connections to say Bye (default 5 s).
    pub shutdown_grace: Duration,
    /// Hello `agent` string.
    pub agent: String,
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
            shutdown_grace: Duration::from_secs(5),
            agent: SessionConfig::default().agent,
        }
    }
}

/// Decides whether an authenticated inbound peer is served.
pub trait TrustPolicy: Send + Sync + 'static {
    /// Called once per inbound connection, after the peer proved its key.
    fn authorize(&self, pubkey: &PublicKey, addr: SocketAddr) -> bool;
}

impl<F: Fn(&PublicKey, SocketAddr) -> bool + Send + Sync + 'static> TrustPolicy for F {
    fn authorize(&self, pubkey: &PublicKey, addr: SocketAddr) -> bool {
        self(pubkey, addr)
    }
}

/// The standard policy: reads `peers.json` on every inbound peer (so
/// `trust`/`block` take effect without a restart); serves Trusted peers
/// (updating `last_seen`), refuses Blocked ones, records unknown ones as
/// Pending. A file that cannot be read refuses everyone (fails closed).
pub struct PeerStoreTrust {
    path: PathBuf,
    lock: Mutex<()>,
}

impl PeerStoreTrust {
    pub fn new(path: PathBuf) -> Self {
        PeerStoreTrust {
            path,
            lock: Mutex::new(()),
        }
    }
}

impl TrustPolicy for PeerStoreTrust {
    fn authorize(&self, pubkey: &PublicKey, addr: SocketAddr) -> bool {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut store = match PeerStore::load(&self.path) {
            Ok(s) => s,
            Err(e) => {
                warn!(peer = %pubkey.short(12), %addr, error = %e, "cannot read peer store; refusing");
                return false;
            }
        };
        let trust = store.get_key(pubkey).map(|p| p.trust);
        let allowed = match trust {
            Some(TrustState::Trusted) => {
                store.record_seen(pubkey, None);
                true
            }
            Some(TrustState::Blocked) => return false,
            _ => {
                store.record_pending(*pubkey, Some(addr.to_string()));
                info!(peer = %pubkey.short(12), %addr, "untrusted peer recorded as pending");
                false
            }
        };
        if let Err(e) = store.save() {
            warn!(peer = %pubkey.short(12), error = %e, "cannot save peer store");
        }
        allowed
    }
}

/// Handles data messages (MemoryRequest, MemoryResponse, GitBundle) from
/// authenticated peers; the returned messages are sent back in order.
pub trait MessageHandler: Send + Sync + 'static {
    fn handle(&self, peer: &PublicKey, msg: Message) -> Vec<Message>;
}

/// What the node reports about peers.
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

struct Limits {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

struct Shared {
    identity: Arc<Identity>,
    session_config: Arc<SessionConfig>,
    config: NodeConfig,
    policy: Arc<dyn TrustPolicy>,
    handler: Option<Arc<dyn MessageHandler>>,
    events: broadcast::Sender<NodeEvent>,
    limits: Mutex<Limits>,
    cancel: CancellationToken,
}

impl Shared {
    fn emit(&self, e: NodeEvent) {
        let _ = self.events.send(e);
    }
}

/// A slot in the connection limits, released on drop.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut l = self.shared.limits.lock().unwrap_or_else(|e| e.into_inner());
        l.total -= 1;
        if let Some(n) = l.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                l.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A node to be started.
pub struct Node {
    identity: Arc<Identity>,
    config: NodeConfig,
    policy: Arc<dyn TrustPolicy>,
    handler: Option<Arc<dyn MessageHandler>>,
}

/// A running node.
pub struct NodeHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl Node {
    pub fn new(identity: Arc<Identity>, config: NodeConfig, policy: Arc<dyn TrustPolicy>) -> Node {
        Node {
            identity,
            config,
            policy,
            handler: None,
        }
    }

    /// Serve data messages with `handler` (without one they are logged and dropped).
    pub fn with_handler(mut self, handler: Arc<dyn MessageHandler>) -> Node {
        self.handler = Some(handler);
        self
    }

    /// Binds the listener and starts accepting.
    pub async fn start(self) -> Result<NodeHandle, NodeError> {
        let listener = TcpListener::bind(self.config.listen_addr).await?;
        let local_addr = listener.local_addr()?;
        let session_config = Arc::new(SessionConfig {
            agent: self.config.agent.clone(),
            listen_port: Some(local_addr.port()),
            handshake_timeout: self.config.handshake_timeout,
            idle_timeout: self.config.idle_timeout,
            heartbeat_interval: self.config.heartbeat_interval,
            frame_timeout: self.config.frame_timeout,
            ..SessionConfig::default()
        });
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            identity: self.identity,
            session_config,
            config: self.config,
            policy: self.policy,
            handler: self.handler,
            events,
            limits: Mutex::new(Limits {
                total: 0,
                per_ip: HashMap::new(),
            }),
            cancel: CancellationToken::new(),
        });
        let tracker = TaskTracker::new();
        info!(addr = %local_addr, pubkey = %shared.identity.public_key().short(12), "node listening");
        tracker.spawn(accept_loop(listener, shared.clone(), tracker.clone()));
        Ok(NodeHandle {
            local_addr,
            shared,
            tracker,
        })
    }
}

impl NodeHandle {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Our public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.identity.public_key()
    }

    /// Peer events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.shared.events.subscribe()
    }

    /// Inbound connections currently open.
    pub fn connection_count(&self) -> usize {
        self.shared
            .limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .total
    }

    /// Stops accepting, sends Bye "shutting down" to every peer and waits
    /// for the connections to finish, at most `shutdown_grace`.
    pub async fn shutdown(self) {
        info!(addr = %self.local_addr, "node shutting down");
        self.shared.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.shared.config.shutdown_grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("shutdown grace period over; dropping remaining connections");
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // E.g. out of file descriptors: back off briefly.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let refused = {
            let mut l = shared.limits.lock().unwrap_or_else(|e| e.into_inner());
            let from_ip = l.per_ip.get(&addr.ip()).copied().unwrap_or(0);
            if l.total >= shared.config.max_inbound {
                Some("too many connections")
            } else if from_ip >= shared.config.max_per_ip {
                Some("too many connections from this address")
            } else {
                l.total += 1;
                *l.per_ip.entry(addr.ip()).or_insert(0) += 1;
                None
            }
        };
        if let Some(reason) = refused {
            warn!(%addr, reason, "connection refused");
            drop(stream);
            shared.emit(NodeEvent::Refused {
                addr,
                pubkey: None,
                reason: reason.into(),
            });
            continue;
        }
        let slot = Slot {
            shared: shared.clone(),
            ip: addr.ip(),
        };
        tracker.spawn(serve(stream, addr, shared.clone(), slot));
    }
    debug!("accept loop stopped");
}

async fn serve(stream: TcpStream, addr: SocketAddr, shared: Arc<Shared>, _slot: Slot) {
    let _ = stream.set_nodelay(true);
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let session = Session::acceptor(
        shared.identity.clone(),
        shared.session_config.clone(),
        nonce,
        Box::new(rand::rngs::OsRng),
        Instant::now(),
    );
    let mut conn = Conn::new(stream, session, shared.config.frame_timeout);
    let mut peer: Option<PublicKey> = None;
    let mut authenticated = false;
    let mut shutting_down = false;
    debug!(%addr, "inbound connection");
    let reason: String = 'conn: loop {
        if let Err(e) = conn.flush().await {
            break 'conn format!("write failed: {e}");
        }
        while let Some(ev) = conn.session.poll_event() {
            match ev {
                Event::AuthorizationRequired(info) => {
                    peer = Some(info.pubkey);
                    let policy = shared.policy.clone();
                    let pk = info.pubkey;
                    let allowed = tokio::task::spawn_blocking(move || policy.authorize(&pk, addr))
                        .await
                        .unwrap_or(false);
                    let now = Instant::now();
                    if allowed {
                        let _ = conn.session.accept(now);
                    } else {
                        warn!(%addr, peer = %pk.short(12), agent = %info.agent, "refused: not authorized");
                        conn.session.reject(now, reasons::NOT_AUTHORIZED);
                        shared.emit(NodeEvent::Refused {
                            addr,
                            pubkey: Some(pk),
                            reason: reasons::NOT_AUTHORIZED.into(),
                        });
                    }
                }
                Event::Authenticated { peer: info, .. } => {
                    authenticated = true;
                    info!(%addr, peer = %info.pubkey.short(12), agent = %info.agent, version = info.version, "peer connected");
                    shared.emit(NodeEvent::PeerConnected {
                        pubkey: info.pubkey,
                        addr,
                    });
                }
                Event::Pong(_) => {}
                Event::Message(m) => {
                    let pk = peer.expect("messages only after authentication");
                    match &shared.handler {
                        Some(h) => {
                            for reply in h.handle(&pk, m) {
                                if let Err(e) = conn.session.send(Instant::now(), reply) {
                                    warn!(%addr, peer = %pk.short(12), error = %e, "cannot send reply");
                                }
                            }
                        }
                        None => {
                            debug!(%addr, peer = %pk.short(12), msg_type = %m.msg_type(), "no handler; message dropped")
                        }
                    }
                }
                Event::Closed(r) => {
                    conn.finish(shared.config.frame_timeout.min(Duration::from_secs(2)))
                        .await;
                    break 'conn match r {
                        mmogit_proto::CloseReason::Local(s) => format!("closed by us: {s}"),
                        mmogit_proto::CloseReason::Remote(s) => format!("peer said bye: {s}"),
                        mmogit_proto::CloseReason::Error(e) => format!("error: {e}"),
                        mmogit_proto::CloseReason::Eof => "connection closed".into(),
                    };
                }
            }
        }
        let cancel = (!shutting_down).then_some(&shared.cancel);
        match conn.wait(None, cancel).await {
            Ok(Wake::Cancelled) => {
                shutting_down = true;
                conn.session.close(Instant::now(), reasons::SHUTTING_DOWN);
            }
            Ok(Wake::Input | Wake::Timer) => {}
            Err(e) => break 'conn format!("read failed: {e}"),
        }
    };
    let who = peer.map(|p| p.short(12)).unwrap_or_else(|| "-".into());
    if authenticated {
        info!(%addr, peer = %who, %reason, "peer disconnected");
        shared.emit(NodeEvent::PeerDisconnected {
            pubkey: peer.expect("authenticated peer has a key"),
            addr,
            reason,
        });
    } else {
        if !reason.contains(reasons::NOT_AUTHORIZED) {
            warn!(%addr, peer = %who, %reason, "handshake failed");
            shared.emit(NodeEvent::Refused {
                addr,
                pubkey: peer,
                reason,
            });
        }
    }
}
