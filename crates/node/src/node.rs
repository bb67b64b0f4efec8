//! The top of the crate, the only module that knows the whole node:
//! [`Node`] builds the shared state and starts the tasks (accept loop,
//! discovery, dialer, status writer, policy flusher); [`NodeHandle`] is
//! the running node.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mmogit_identity::{Identity, PublicKey};
use mmogit_proto::{Message, SessionConfig};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backoff::RateLimiter;
use crate::config::NodeConfig;
use crate::discovery::{Advertisement, Discovery};
use crate::error::NodeError;
use crate::event::NodeEvent;
use crate::inbox::{Inbound, MessageHandler};
use crate::queue::SendError;
use crate::registry::{DialParams, PeerStatus, Registry};
use crate::shared::{Limits, NodeSender, Shared};
use crate::status::StatusFile;
use crate::trust::TrustPolicy;

/// A node to be started.
pub struct Node {
    /// LAN discovery and whether to announce a private tag.
    discovery: Option<(Arc<dyn Discovery>, bool)>,
    identity: Arc<Identity>,
    config: NodeConfig,
    policy: Arc<dyn TrustPolicy>,
    handler: Option<Arc<dyn MessageHandler>>,
    inbox: Option<tokio::sync::mpsc::Sender<Inbound>>,
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
    pub fn with_inbox(mut self, inbox: tokio::sync::mpsc::Sender<Inbound>) -> Node {
        self.inbox = Some(inbox);
        self
    }

    /// Announce this node on the LAN and browse for others with
    /// `discovery` (`private`: announce a private tag instead of the key).
    /// A trusted peer found at an address is dialled there (the handshake
    /// proves its key) and the address is stored on success; other nodes
    /// found are never dialled.
    pub fn with_discovery(mut self, discovery: Arc<dyn Discovery>, private: bool) -> Node {
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
            // A private mDNS tag would be undone by answering anyone who asks.
            hidden: self.config.hidden || self.discovery.as_ref().is_some_and(|(_, p)| *p),
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
        tracker.spawn(crate::server::accept_loop(
            listener,
            shared.clone(),
            tracker.clone(),
        ));
        let (found_tx, found_rx) = tokio::sync::mpsc::channel(crate::discovery::CANDIDATE_QUEUE);
        if let Some((discovery, private)) = self.discovery {
            let ad = Advertisement {
                pubkey: shared.identity.public_key(),
                port: local_addr.port(),
                versions: shared.session_config.versions.clone(),
                private,
            };
            tracker.spawn(crate::discovery::run(
                discovery,
                ad,
                shared.cancel.clone(),
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
    ///
    /// [`SEND_QUEUE`]: crate::SEND_QUEUE
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
    pub fn sender(&self) -> NodeSender {
        NodeSender::new(self.shared.clone())
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
