//! The state every task of a running node shares ([`Shared`]), and the
//! application's cloneable handle on it ([`NodeSender`]). It sits below the
//! tasks (the accept loop, session driver, dialer) and above what it holds
//! (registry, limits, trust policy, inbox).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use mmogit_identity::{Identity, PublicKey};
use mmogit_proto::SessionConfig;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::RateLimiter;
use crate::config::NodeConfig;
use crate::event::NodeEvent;
use crate::inbox::{Inbound, MessageHandler, Reply};
use crate::registry::Registry;
use crate::status::{StatusFile, STATUS_VERSION};
use crate::trust::TrustPolicy;

/// The inbound connection slots.
pub(crate) struct Limits {
    pub total: usize,
    pub per_ip: HashMap<IpAddr, usize>,
    /// Connections not authenticated yet, by slot id (oldest first): when
    /// every slot is taken, a new connection evicts the first of them.
    /// Authenticated sessions are never in here, so never evicted.
    pub pending: BTreeMap<u64, (SocketAddr, Instant, CancellationToken)>,
    pub next_id: u64,
}

impl Limits {
    /// Gives up a slot's place (its connection ended or was evicted).
    pub fn release(&mut self, ip: IpAddr) {
        self.total -= 1;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// What every task of a running node shares: its identity and settings,
/// the application's policy and handler, the session registry, limits and
/// counters.
pub(crate) struct Shared {
    pub identity: Arc<Identity>,
    pub session_config: Arc<SessionConfig>,
    pub config: NodeConfig,
    pub policy: Arc<dyn TrustPolicy>,
    pub handler: Option<Arc<dyn MessageHandler>>,
    /// Data messages go here (with a reply handle) instead of the handler.
    pub inbox: Option<tokio::sync::mpsc::Sender<Inbound>>,
    pub events: broadcast::Sender<NodeEvent>,
    pub limits: Mutex<Limits>,
    pub cancel: CancellationToken,
    pub registry: Registry,
    pub rate: Option<Mutex<RateLimiter>>,
    pub rate_limited: AtomicU64,
    pub evicted: AtomicU64,
    pub slow_dropped: AtomicU64,
    pub tracker: TaskTracker,
    pub local_addr: SocketAddr,
    pub started_at: SystemTime,
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
            version: STATUS_VERSION,
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

/// A cloneable handle on a running node, for background tasks.
#[derive(Clone)]
pub struct NodeSender {
    shared: Arc<Shared>,
}

impl NodeSender {
    pub(crate) fn new(shared: Arc<Shared>) -> NodeSender {
        NodeSender { shared }
    }

    /// Peers with an open peer session.
    pub fn connected(&self) -> Vec<PublicKey> {
        self.shared
            .registry
            .snapshot()
            .into_iter()
            .filter(|p| p.connected)
            .map(|p| p.pubkey)
            .collect()
    }

    /// A reply handle on the session with `peer`.
    pub fn session(&self, peer: &PublicKey) -> Option<Reply> {
        self.shared
            .registry
            .sender(peer)
            .map(|tx| Reply::new(*peer, tx))
    }

    /// The node is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// Cancelled when the node shuts down.
    pub async fn stopped(&self) {
        self.shared.cancel.cancelled().await
    }
}
