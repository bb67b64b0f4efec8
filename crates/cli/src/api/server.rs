//! [`P2PServer`]: this agent's node, embedded (what `mmogit serve` runs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mmogit_identity::{Identity, PublicKey};
use mmogit_node::replicate::{ReplicationEvent, Replicator, ReplicatorConfig};
use mmogit_node::{
    Discovery, MdnsDiscovery, Node, NodeConfig, NodeEvent, NodeHandle, PeerStatus, PeerStoreTrust,
};
use mmogit_store::{Oid, Store, VerifiedMemory};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::error::{Error, Result};
use crate::Home;

/// What happens on a running node, for an agent to react to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A peer authenticated and is served (inbound or outbound session).
    PeerConnected {
        /// Its proven key.
        pubkey: PublicKey,
        /// Its address.
        addr: SocketAddr,
    },
    /// An authenticated peer's session ended.
    PeerDisconnected {
        /// Its key.
        pubkey: PublicKey,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A connection was refused (limits, untrusted key, failed handshake).
    Refused {
        /// Where it came from.
        addr: SocketAddr,
        /// The key, when the handshake got that far.
        pubkey: Option<PublicKey>,
        /// Why.
        reason: String,
    },
    /// Memories from `from` passed the verified-ingest gate and are now in
    /// the repository (each one verified again as it is listed here). The
    /// list is what other authors' branches gained since the previous such
    /// event, so memories that another process's `sync` brought in between
    /// are listed here too.
    MemoriesReceived {
        /// The peer that sent them (not necessarily their author: memories relay).
        from: PublicKey,
        /// The new memories, any author but us.
        memories: Vec<VerifiedMemory>,
        /// Problems of branches that were refused in the same transfer.
        refused: Vec<String>,
    },
    /// A transfer from `peer` failed or was refused whole.
    PullFailed {
        /// The peer.
        peer: PublicKey,
        /// Why.
        reason: String,
    },
    /// This many events were dropped because the receiver fell behind.
    Lagged(u64),
}

/// When a running node maintains its repository (what `mmogit gc` does; see
/// [`P2PServer::gc`]). The default is that of `mmogit serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcSchedule {
    /// How often to check whether maintenance is needed (default 6 h); zero
    /// turns maintenance off.
    pub interval: Duration,
    /// Maintenance runs when the repository has more than this many packs
    /// (default 50)...
    pub min_packs: usize,
    /// ...or more than this many loose objects (default 6700).
    pub min_loose: usize,
    /// Unreachable objects younger than this are kept (default 14 days).
    pub grace: Duration,
}

impl Default for GcSchedule {
    fn default() -> Self {
        GcSchedule {
            interval: Duration::from_secs(6 * 3600),
            min_packs: 50,
            min_loose: 6700,
            grace: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// How a node looks for peers on the local network.
enum Lan {
    /// Not at all.
    Off,
    /// mDNS, when it can start and the node is reachable from the LAN.
    Mdns { private: bool },
    /// The embedder's discovery.
    Custom(Arc<dyn Discovery>, bool),
}

/// Builder of an embedded node: listens, serves trusted peers (`peers.json`
/// of the home), replicates memories (queries, pulls, live announces), and
/// optionally keeps sessions to trusted peers, announces itself on the LAN
/// and maintains its repository.
///
/// ```no_run
/// # async fn demo() -> Result<(), mmogit::Error> {
/// use mmogit::{Agent, Event, Home, P2PServer};
/// let agent = Agent::open(Home::resolve(None)?)?;
/// let server = P2PServer::new("127.0.0.1:0".parse().unwrap(), agent.identity()?.clone())
///     .home(agent.home().clone())
///     .start()
///     .await?;
/// println!("listening on {}", server.local_addr());
/// let mut events = server.events();
/// while let Some(ev) = events.next().await {
///     if let Event::MemoriesReceived { from, memories, .. } = ev {
///         println!("{} new memories from {}", memories.len(), from.short(12));
///     }
/// }
/// server.shutdown().await;
/// # Ok(()) }
/// ```
pub struct P2PServer {
    identity: Arc<Identity>,
    home: Option<Home>,
    config: NodeConfig,
    replication: Option<ReplicatorConfig>,
    lan: Lan,
    max_pending: usize,
    gc: Option<GcSchedule>,
}

impl P2PServer {
    /// A node for `identity` listening on `listen_addr` (port 0: any free
    /// port, see [`ServerHandle::local_addr`]). Set a [`home`](P2PServer::home)
    /// before starting.
    pub fn new(listen_addr: SocketAddr, identity: Arc<Identity>) -> P2PServer {
        P2PServer {
            identity,
            home: None,
            config: NodeConfig {
                listen_addr,
                ..NodeConfig::default()
            },
            replication: None,
            lan: Lan::Off,
            max_pending: mmogit_node::DEFAULT_MAX_PENDING,
            gc: None,
        }
    }

    /// Keep at most `max` unknown keys as pending (default 256, as
    /// `mmogit serve --max-pending`); the least recently seen are dropped.
    pub fn max_pending(mut self, max: usize) -> P2PServer {
        self.max_pending = max;
        self
    }

    /// The home whose memory repository is served and whose `peers.json`
    /// decides who is trusted (required). Also publishes the node's sessions
    /// to `status.json` (what `mmogit p2p status` reads).
    pub fn home(mut self, home: Home) -> P2PServer {
        self.config.peers_path = Some(home.peers_path());
        self.config.status_path = Some(home.status_path());
        self.home = Some(home);
        self
    }

    /// Node settings (limits, timeouts, dialing); the listen address and the
    /// home's paths given so far are kept.
    pub fn config(mut self, config: NodeConfig) -> P2PServer {
        let keep = (
            self.config.listen_addr,
            self.config.peers_path.take(),
            self.config.status_path.take(),
        );
        self.config = config;
        self.config.listen_addr = keep.0;
        self.config.peers_path = keep.1.or(self.config.peers_path.take());
        self.config.status_path = keep.2.or(self.config.status_path.take());
        self
    }

    /// Keep sessions open to trusted peers with known addresses (reconnect
    /// with backoff), as `mmogit serve` does unless `--no-dial`.
    pub fn dial_trusted(mut self, on: bool) -> P2PServer {
        self.config.dial_trusted = on;
        self
    }

    /// Replication settings (serve own branch only, transfer limits, daily
    /// quotas per peer); the
    /// repository and key are the home's and the identity's.
    pub fn replication(mut self, cfg: ReplicatorConfig) -> P2PServer {
        self.replication = Some(cfg);
        self
    }

    /// Announce this node and find peers with `discovery` (e.g.
    /// [`mmogit_node::MdnsDiscovery`]); `private`: a daily tag instead of the key.
    pub fn discovery(mut self, discovery: Arc<dyn Discovery>, private: bool) -> P2PServer {
        self.lan = Lan::Custom(discovery, private);
        self
    }

    /// Announce this node on the local network with mDNS and find peers
    /// there, as `mmogit serve` does unless `--no-mdns`; `private`: a daily
    /// tag that only peers knowing our key recognise, instead of the key.
    /// Not when listening on loopback (the LAN cannot reach the node); a
    /// node whose mDNS cannot start serves without it. Both are logged.
    pub fn mdns(mut self, private: bool) -> P2PServer {
        self.lan = Lan::Mdns { private };
        self
    }

    /// Maintain the repository on `schedule` while running (`mmogit gc`
    /// when it has too many packs or loose objects), as `mmogit serve`
    /// does; default: no maintenance. A run takes the repository write
    /// lock, so ingests and local writers wait for it; each run is logged.
    pub fn gc(mut self, schedule: GcSchedule) -> P2PServer {
        self.gc = Some(schedule);
        self
    }

    /// Starts listening and replicating.
    pub async fn start(self) -> Result<ServerHandle> {
        let home = self
            .home
            .ok_or_else(|| Error::Usage("P2PServer: no home set (call .home(...))".into()))?;
        let store = home.open_store()?;
        // What is held before listening: MemoriesReceived lists what comes after.
        let tips: HashMap<PublicKey, Oid> = store.branches()?.into_iter().collect();
        drop(store);
        let me = self.identity.public_key();
        let mut rcfg = self
            .replication
            .unwrap_or_else(|| ReplicatorConfig::new(home.repo_path(), me));
        rcfg.repo = home.repo_path();
        rcfg.me = me;
        let policy =
            Arc::new(PeerStoreTrust::new(home.peers_path()).with_max_pending(self.max_pending));
        let (inbox_tx, inbox_rx) = mpsc::channel(64);
        let loopback = self.config.listen_addr.ip().is_loopback();
        let mut node = Node::new(self.identity.clone(), self.config, policy);
        if let Some((d, private)) = lan_discovery(self.lan, loopback) {
            node = node.with_discovery(d, private);
        }
        let node = node.with_inbox(inbox_tx).start().await?;
        let (rep_tx, rep_rx) = mpsc::unbounded_channel();
        let replicator = tokio::spawn(
            Replicator::new(rcfg)
                .with_events(rep_tx)
                .run(inbox_rx, node.sender()),
        );
        let (events, _) = broadcast::channel(1024);
        let maintenance = self
            .gc
            .filter(|s| !s.interval.is_zero())
            .map(|s| tokio::spawn(maintenance(home.repo_path(), s)));
        let (ingested_tx, ingested_rx) = mpsc::unbounded_channel();
        let lister = tokio::spawn(list_received(ingested_rx, events.clone(), home, me, tips));
        let forwarder = tokio::spawn(forward(
            node.subscribe(),
            rep_rx,
            events.clone(),
            ingested_tx,
        ));
        Ok(ServerHandle {
            node,
            tasks: [Some(replicator), Some(forwarder), Some(lister), maintenance]
                .into_iter()
                .flatten()
                .collect(),
            events,
        })
    }
}

/// A running node.
pub struct ServerHandle {
    node: NodeHandle,
    /// Replication, event forwarding, maintenance.
    tasks: Vec<JoinHandle<()>>,
    events: broadcast::Sender<Event>,
}

impl ServerHandle {
    /// The address it listens on (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// This node's key.
    pub fn public_key(&self) -> PublicKey {
        self.node.public_key()
    }

    /// A new stream of the events from now on.
    pub fn events(&self) -> Events {
        Events {
            rx: self.events.subscribe(),
        }
    }

    /// Sessions and dial state of every peer the node knows of.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.node.peers()
    }

    /// Dials trusted peers now instead of at the next refresh.
    pub fn dial_now(&self) {
        self.node.dial_now()
    }

    /// The underlying node (sessions, sending messages).
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// Says goodbye to every peer, stops listening, replicating and
    /// maintaining (a maintenance run in progress finishes on its blocking
    /// thread).
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The events of a [`ServerHandle`].
pub struct Events {
    rx: broadcast::Receiver<Event>,
}

impl Events {
    /// The next event; None once the node has stopped. A receiver that
    /// falls behind gets [`Event::Lagged`] and goes on.
    pub async fn next(&mut self) -> Option<Event> {
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Event::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Maps node and replication events to [`Event`]s; ingests go to
/// [`list_received`], so that listing what arrived never holds up the
/// events of the sessions.
async fn forward(
    mut node: broadcast::Receiver<NodeEvent>,
    mut rep: mpsc::UnboundedReceiver<ReplicationEvent>,
    out: broadcast::Sender<Event>,
    ingested: mpsc::UnboundedSender<(PublicKey, Vec<String>)>,
) {
    loop {
        let ev = tokio::select! {
            e = node.recv() => match e {
                Ok(NodeEvent::PeerConnected { pubkey, addr }) => Event::PeerConnected { pubkey, addr },
                Ok(NodeEvent::PeerDisconnected { pubkey, addr, reason }) => {
                    Event::PeerDisconnected { pubkey, addr, reason }
                }
                Ok(NodeEvent::Refused { addr, pubkey, reason }) => Event::Refused { addr, pubkey, reason },
                Err(broadcast::error::RecvError::Lagged(n)) => Event::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => break,
            },
            e = rep.recv() => match e {
                Some(ReplicationEvent::Ingested { peer, refused, .. }) => {
                    let _ = ingested.send((peer, refused));
                    continue;
                }
                Some(ReplicationEvent::PullFailed { peer, reason }) => Event::PullFailed { peer, reason },
                Some(_) => continue,
                None => break,
            },
        };
        let _ = out.send(ev);
    }
}

/// For each ingest (from which peer, what was refused), the memories other
/// authors' branches gained since the previous one, as
/// [`Event::MemoriesReceived`].
async fn list_received(
    mut ingested: mpsc::UnboundedReceiver<(PublicKey, Vec<String>)>,
    out: broadcast::Sender<Event>,
    home: Home,
    me: PublicKey,
    mut tips: HashMap<PublicKey, Oid>,
) {
    while let Some((peer, refused)) = ingested.recv().await {
        let (memories, new_tips) = {
            let home = home.clone();
            let old = tips.clone();
            tokio::task::spawn_blocking(move || new_memories(&home, &me, &old))
                .await
                .unwrap_or_else(|_| (Vec::new(), tips.clone()))
        };
        tips = new_tips;
        if memories.is_empty() && refused.is_empty() {
            continue;
        }
        let _ = out.send(Event::MemoriesReceived {
            from: peer,
            memories,
            refused,
        });
    }
}

/// The discovery to start with, logging why there is none.
fn lan_discovery(lan: Lan, loopback: bool) -> Option<(Arc<dyn Discovery>, bool)> {
    match lan {
        Lan::Off => None,
        Lan::Custom(d, private) => Some((d, private)),
        Lan::Mdns { .. } if loopback => {
            // A node listening on loopback cannot be reached from the LAN:
            // announcing it there is pointless.
            info!("listening on loopback only: mDNS off");
            info!("mDNS off: not announcing this node nor looking for peers on the local network");
            None
        }
        Lan::Mdns { private } => match MdnsDiscovery::new() {
            Ok(d) => Some((Arc::new(d), private)),
            Err(e) => {
                warn!(error = %e, "mDNS unavailable; serving without local network discovery");
                None
            }
        },
    }
}

/// Every `s.interval`, repository maintenance (`mmogit gc`) when the
/// repository has more than `s.min_packs` packs or `s.min_loose` loose
/// objects. It takes the repository write lock, so ingests and local
/// writers wait for it.
async fn maintenance(repo: std::path::PathBuf, s: GcSchedule) {
    loop {
        tokio::time::sleep(s.interval).await;
        let repo = repo.clone();
        let res = tokio::task::spawn_blocking(move || {
            let store = Store::open(&repo)?;
            if !store.needs_gc(s.min_packs, s.min_loose) {
                return Ok(None);
            }
            store
                .gc(s.grace, mmogit_store::DEFAULT_GC_TIMEOUT)
                .map(Some)
        })
        .await;
        match res {
            Ok(Ok(Some(r))) => info!(
                packs_before = r.before.packs,
                loose_before = r.before.loose,
                packs_after = r.after.packs,
                loose_after = r.after.loose,
                elapsed_ms = r.elapsed.as_millis() as u64,
                live_quarantines = r.live_quarantines,
                "repository maintenance done"
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(error = %e, "repository maintenance failed"),
            Err(e) => warn!(error = %e, "repository maintenance task failed"),
        }
    }
}

/// Memories added to other authors' branches since `old`, and the new tips.
fn new_memories(
    home: &Home,
    me: &PublicKey,
    old: &HashMap<PublicKey, Oid>,
) -> (Vec<VerifiedMemory>, HashMap<PublicKey, Oid>) {
    let store = match home.open_store() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot open the repository to list received memories: {e}");
            return (Vec::new(), old.clone());
        }
    };
    match store.added_since(old, std::slice::from_ref(me)) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!("cannot list branches: {e}");
            (Vec::new(), old.clone())
        }
    }
}
