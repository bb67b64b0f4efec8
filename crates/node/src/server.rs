//! The listener: one task per inbound connection, trust policy, limits,
//! graceful shutdown.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mmogit_identity::{Identity, PublicKey};
use mmogit_proto::{reasons, Event, Message, Session, SessionConfig};
use rand::RngCore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::backoff::RateLimiter;
use crate::conn::{Conn, Wake};
use crate::error::NodeError;
use crate::registry::{DialParams, Direction, PeerStatus, Registry};
use crate::status::StatusFile;
pub use crate::trust::PeerStoreTrust;

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
        }
    }
}

/// Decides whether an authenticated inbound peer is served.
pub trait TrustPolicy: Send + Sync + 'static {
    /// Called once per inbound connection, after the peer proved its key.
    fn authorize(&self, pubkey: &PublicKey, addr: SocketAddr) -> bool;

    /// Writes out what the policy keeps in memory (e.g. keys seen lately).
    /// The node calls it from a blocking thread about every second while
    /// running, and once more at shutdown. Default: nothing.
    fn flush(&self) {}
}

impl<F: Fn(&PublicKey, SocketAddr) -> bool + Send + Sync + 'static> TrustPolicy for F {
    fn authorize(&self, pubkey: &PublicKey, addr: SocketAddr) -> bool {
        self(pubkey, addr)
    }
}

/// Handles data messages (MemoryRequest, MemoryResponse, GitBundle) from
/// authenticated peers, inbound and outbound sessions alike; the returned
/// messages are sent back in order on the same session.
pub trait MessageHandler: Send + Sync + 'static {
    fn handle(&self, peer: &PublicKey, msg: Message) -> Vec<Message>;
}

/// What the node reports about peers. PeerConnected / PeerDisconnected are
/// reported for inbound and outbound sessions alike (the direction is in
/// [`NodeHandle::peers`]); a session closed at once by the duplicate-session
/// rule is reported by neither.
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
    /// Connections not authenticated yet, by slot id (oldest first): when
    /// every slot is taken, a new connection evicts the first of them.
    /// Authenticated sessions are never in here, so never evicted.
    pending: BTreeMap<u64, (SocketAddr, Instant, CancellationToken)>,
    next_id: u64,
}

impl Limits {
    /// Gives up a slot's place (its connection ended or was evicted).
    fn release(&mut self, ip: IpAddr) {
        self.total -= 1;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

pub(crate) struct Shared {
    pub identity: Arc<Identity>,
    pub session_config: Arc<SessionConfig>,
    pub config: NodeConfig,
    policy: Arc<dyn TrustPolicy>,
    pub handler: Option<Arc<dyn MessageHandler>>,
    /// Data messages go here (with a reply handle) instead of the handler.
    pub inbox: Option<tokio::sync::mpsc::Sender<crate::inbox::Inbound>>,
    events: broadcast::Sender<NodeEvent>,
    limits: Mutex<Limits>,
    pub cancel: CancellationToken,
    pub registry: Registry,
    rate: Option<Mutex<RateLimiter>>,
    rate_limited: AtomicU64,
    evicted: AtomicU64,
    pub slow_dropped: AtomicU64,
    pub tracker: TaskTracker,
    pub local_addr: SocketAddr,
    started_at: SystemTime,
}

impl Shared {
    pub fn emit(&self, e: NodeEvent) {
        let _ = self.events.send(e);
    }

    /// The status as written to the status file.
    pub fn status(&self, running: bool) -> StatusFile {
        let mut peers = self.registry.snapshot();
        if !running {
            for p in &mut peers {
                p.connected = false;
                p.connected_since_ms = None;
                p.next_attempt_ms = None;
            }
        }
        let ms = |t: SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        };
        StatusFile {
            version: crate::status::STATUS_VERSION,
            pid: std::process::id(),
            running,
            started_at_ms: ms(self.started_at),
            updated_at_ms: ms(SystemTime::now()),
            pubkey: self.identity.public_key(),
            listen_addr: self.local_addr.to_string(),
            inbound_connections: self.limits.lock().unwrap_or_else(|e| e.into_inner()).total,
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            slow_dropped: self.slow_dropped.load(Ordering::Relaxed),
            peers,
        }
    }
}

/// Why [`NodeHandle::send_to`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No authenticated session with this peer.
    #[error("no session with peer {0}")]
    NotConnected(String),
    /// The session closed before the message was queued.
    #[error("the session with peer {0} closed")]
    Closed(String),
}

/// A slot in the connection limits, released on drop (or at once when the
/// connection is evicted).
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
    id: u64,
    /// Cancelled (under the limits lock) when the connection is evicted;
    /// its place is then already given up.
    evict: CancellationToken,
}

impl Slot {
    /// The peer authenticated: from now on this connection is never
    /// evicted. False when it was evicted already (e.g. while the trust
    /// policy was asked): its place is gone, so it must close.
    fn authenticated(&self) -> bool {
        let mut l = self.shared.limits.lock().unwrap_or_else(|e| e.into_inner());
        l.pending.remove(&self.id);
        !self.evict.is_cancelled()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut l = self.shared.limits.lock().unwrap_or_else(|e| e.into_inner());
        if self.evict.is_cancelled() {
            return;
        }
        l.pending.remove(&self.id);
        l.release(self.ip);
    }
}

/// A node to be started.
pub struct Node {
    /// LAN discovery and whether to announce a private tag.
    discovery: Option<(Arc<dyn crate::discovery::Discovery>, bool)>,
    identity: Arc<Identity>,
    config: NodeConfig,
    policy: Arc<dyn TrustPolicy>,
    handler: Option<Arc<dyn MessageHandler>>,
    inbox: Option<tokio::sync::mpsc::Sender<crate::inbox::Inbound>>,
}

/// A running node.
pub struct NodeHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

/// Most messages queued for one session by [`NodeHandle::send_to`];
/// further sends wait (backpressure).
pub const SEND_QUEUE: usize = 64;

/// A session's send queue. Messages are boxed: tokio allocates a channel's
/// slots in blocks of 32 when it is created, and 32 unboxed [`Message`]s
/// (248 bytes each) would add about 8 KiB to every idle session.
pub(crate) type SessionTx = tokio::sync::mpsc::Sender<Box<Message>>;

impl Node {
    pub fn new(identity: Arc<Identity>, config: NodeConfig, policy: Arc<dyn TrustPolicy>) -> Node {
        Node {
            discovery: None,
            identity,
            config,
            policy,
            handler: None,
            inbox: None,
        }
    }

    /// Deliver data messages to `inbox`, each with a [`crate::Reply`] for
    /// its session, instead of the handler. The session waits (up to its
    /// frame timeout) while the channel is full: backpressure on the peer.
    pub fn with_inbox(mut self, inbox: tokio::sync::mpsc::Sender<crate::inbox::Inbound>) -> Node {
        self.inbox = Some(inbox);
        self
    }

    /// Announce this node on the LAN and browse for others with
    /// `discovery` (`private`: announce a private tag instead of the key).
    /// A trusted peer found at an address is dialled there (the handshake
    /// proves its key) and the address is stored on success; other nodes
    /// found are never dialled.
    pub fn with_discovery(
        mut self,
        discovery: Arc<dyn crate::discovery::Discovery>,
        private: bool,
    ) -> Node {
        self.discovery = Some((discovery, private));
        self
    }

    /// Serve data messages with `handler` (without one they are logged and dropped).
    pub fn with_handler(mut self, handler: Arc<dyn MessageHandler>) -> Node {
        self.handler = Some(handler);
        self
    }

    /// Binds the listener and starts accepting; with `peers_path` set,
    /// starts the peer-store refresh (and with `dial_trusted` the dialer);
    /// with `status_path` set, the status file writer.
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
        let tracker = TaskTracker::new();
        let registry = Registry::new(
            self.identity.public_key(),
            DialParams {
                base: self.config.dial_backoff_base,
                cap: self.config.dial_backoff_cap,
                healthy: self.config.healthy_session,
            },
        );
        let rate = self
            .config
            .inbound_rate
            .map(|r| Mutex::new(RateLimiter::new(r.per_sec, r.burst)));
        let shared = Arc::new(Shared {
            identity: self.identity,
            session_config,
            config: self.config,
            policy: self.policy,
            handler: self.handler,
            inbox: self.inbox,
            events,
            limits: Mutex::new(Limits {
                total: 0,
                per_ip: HashMap::new(),
                pending: BTreeMap::new(),
                next_id: 0,
            }),
            cancel: CancellationToken::new(),
            registry,
            rate,
            rate_limited: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            slow_dropped: AtomicU64::new(0),
            tracker: tracker.clone(),
            local_addr,
            started_at: SystemTime::now(),
        });
        info!(addr = %local_addr, pubkey = %shared.identity.public_key().short(12), "node listening");
        tracker.spawn(accept_loop(listener, shared.clone(), tracker.clone()));
        let (found_tx, found_rx) = tokio::sync::mpsc::channel(crate::discovery::CANDIDATE_QUEUE);
        if let Some((discovery, private)) = self.discovery {
            tracker.spawn(crate::discovery::run(
                shared.clone(),
                discovery,
                private,
                found_tx,
            ));
        }
        if let Some(path) = shared.config.peers_path.clone() {
            tracker.spawn(crate::dialer::run(shared.clone(), path, found_rx));
        }
        tracker.spawn(policy_flusher(shared.clone()));
        if let Some(path) = shared.config.status_path.clone() {
            crate::dialer::write_status_now(&shared, &path, true).await;
            tracker.spawn(crate::dialer::status_writer(shared.clone(), path));
        }
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

    /// Every peer with a session or known to the dialer, ordered by key.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.shared.registry.snapshot()
    }

    /// Authenticated sessions open (inbound and outbound).
    pub fn session_count(&self) -> usize {
        self.shared.registry.sessions()
    }

    /// Authenticated client sessions open (inbound without a listen port,
    /// not counted by [`NodeHandle::session_count`]).
    pub fn client_session_count(&self) -> usize {
        self.shared.registry.client_sessions()
    }

    /// Queues `msg` (MemoryRequest, MemoryResponse, GitBundle; a Ping is
    /// sent as a Ping) on the session with `peer`. Waits while that
    /// session's queue holds [`SEND_QUEUE`] messages. Replies arrive at the
    /// [`MessageHandler`].
    pub async fn send_to(&self, peer: &PublicKey, msg: Message) -> Result<(), SendError> {
        let tx = self
            .shared
            .registry
            .sender(peer)
            .ok_or_else(|| SendError::NotConnected(peer.short(12)))?;
        tx.send(Box::new(msg))
            .await
            .map_err(|_| SendError::Closed(peer.short(12)))
    }

    /// A cloneable handle for sending to peers from other tasks.
    pub fn sender(&self) -> crate::inbox::NodeSender {
        crate::inbox::NodeSender::new(self.shared.clone())
    }

    /// Re-reads the peer store and dials what is due now (no effect without
    /// `peers_path`).
    pub fn dial_now(&self) {
        self.shared.registry.dial_wake.notify_one();
    }

    /// Inbound connection attempts refused by the per-IP rate limit so far.
    pub fn rate_limited_count(&self) -> u64 {
        self.shared.rate_limited.load(Ordering::Relaxed)
    }

    /// Unauthenticated inbound connections closed so far to make room for
    /// a new connection while every inbound slot was taken.
    pub fn evicted_count(&self) -> u64 {
        self.shared.evicted.load(Ordering::Relaxed)
    }

    /// Sessions closed so far because their peer took none of our data
    /// for the send timeout.
    pub fn slow_dropped_count(&self) -> u64 {
        self.shared.slow_dropped.load(Ordering::Relaxed)
    }

    /// The status as the status file shows it.
    pub fn status(&self) -> StatusFile {
        self.shared.status(true)
    }

    /// Stops accepting and dialling, sends Bye "shutting down" to every
    /// peer and waits for the connections to finish, at most
    /// `shutdown_grace`; then writes the status file a last time with
    /// `running: false` and every peer disconnected.
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
        let policy = self.shared.policy.clone();
        let _ = tokio::task::spawn_blocking(move || policy.flush()).await;
        if let Some(path) = self.shared.config.status_path.clone() {
            crate::dialer::write_status_now(&self.shared, &path, false).await;
        }
    }
}

/// How often the trust policy writes out what it keeps in memory.
const POLICY_FLUSH: Duration = Duration::from_secs(1);

/// Calls [`TrustPolicy::flush`] every [`POLICY_FLUSH`] until shutdown
/// (which flushes once more).
async fn policy_flusher(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep(POLICY_FLUSH) => {}
        }
        let policy = shared.policy.clone();
        let _ = tokio::task::spawn_blocking(move || policy.flush()).await;
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
        if let Some(rate) = &shared.rate {
            let allowed = rate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .allow(addr.ip(), tokio::time::Instant::now());
            if !allowed {
                // Debug only: a flood must not flood the log too.
                shared.rate_limited.fetch_add(1, Ordering::Relaxed);
                debug!(%addr, "connection refused: rate limited");
                drop(stream);
                continue;
            }
        }
        let mut evicted = None;
        let admitted = {
            let mut l = shared.limits.lock().unwrap_or_else(|e| e.into_inner());
            let from_ip = l.per_ip.get(&addr.ip()).copied().unwrap_or(0);
            if from_ip >= shared.config.max_per_ip {
                Err("too many connections from this address")
            } else {
                if l.total >= shared.config.max_inbound {
                    // Full: the oldest connection that has not authenticated
                    // yet makes room (strangers holding slots through the
                    // handshake timeout cannot lock a trusted peer out).
                    // Authenticated sessions are never evicted.
                    if let Some((_, (old, since, token))) = l.pending.pop_first() {
                        token.cancel();
                        l.release(old.ip());
                        evicted = Some((old, since.elapsed()));
                    }
                }
                if l.total >= shared.config.max_inbound {
                    Err("too many connections")
                } else {
                    l.total += 1;
                    *l.per_ip.entry(addr.ip()).or_insert(0) += 1;
                    let id = l.next_id;
                    l.next_id += 1;
                    let evict = CancellationToken::new();
                    l.pending.insert(id, (addr, Instant::now(), evict.clone()));
                    Ok((id, evict))
                }
            }
        };
        if let Some((old, age)) = evicted {
            let n = shared.evicted.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(evicted = %old, age_ms = age.as_millis() as u64, for_addr = %addr, total_evicted = n,
                "inbound slots full: closed the oldest unauthenticated connection");
        }
        let (id, evict) = match admitted {
            Ok(x) => x,
            Err(reason) => {
                warn!(%addr, reason, "connection refused");
                drop(stream);
                shared.emit(NodeEvent::Refused {
                    addr,
                    pubkey: None,
                    reason: reason.into(),
                });
                continue;
            }
        };
        let slot = Slot {
            shared: shared.clone(),
            ip: addr.ip(),
            id,
            evict,
        };
        tracker.spawn(serve(stream, addr, shared.clone(), slot));
    }
    debug!("accept loop stopped");
}

/// Why an evicted connection ended.
const EVICTED: &str = "evicted: inbound slots full";

async fn serve(stream: TcpStream, addr: SocketAddr, shared: Arc<Shared>, slot: Slot) {
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
                    if !slot.authenticated() {
                        break 'conn EVICTED.to_string();
                    }
                    // Events after this one stay queued in the session for
                    // the session task.
                    crate::peer_session::drive(
                        conn,
                        info,
                        addr,
                        Direction::Inbound,
                        shared,
                        VecDeque::new(),
                        None,
                    )
                    .await;
                    return;
                }
                Event::Pong(_) | Event::Message(_) => {}
                Event::Closed(r) => {
                    conn.finish(shared.config.frame_timeout.min(Duration::from_secs(2)))
                        .await;
                    break 'conn crate::peer_session::close_text(r);
                }
            }
        }
        let cancel = (!shutting_down).then_some(&shared.cancel);
        let woke = tokio::select! {
            biased;
            _ = slot.evict.cancelled() => break 'conn EVICTED.to_string(),
            w = conn.wait(None, cancel) => w,
        };
        match woke {
            Ok(Wake::Cancelled) => {
                shutting_down = true;
                conn.session.close(Instant::now(), reasons::SHUTTING_DOWN);
            }
            Ok(Wake::Input | Wake::Timer) => {}
            Err(e) => break 'conn format!("read failed: {e}"),
        }
    };
    let who = peer.map(|p| p.short(12)).unwrap_or_else(|| "-".into());
    if reason == EVICTED {
        // Logged (once per eviction) where it was decided.
        shared.emit(NodeEvent::Refused {
            addr,
            pubkey: peer,
            reason,
        });
    } else if !reason.contains(reasons::NOT_AUTHORIZED) {
        warn!(%addr, peer = %who, %reason, "handshake failed");
        shared.emit(NodeEvent::Refused {
            addr,
            pubkey: peer,
            reason,
        });
    }
}
