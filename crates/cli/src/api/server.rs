//! [`P2PServer`]: this agent's node, embedded (what `mmogit serve` runs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mmogit_identity::{Identity, PublicKey};
use mmogit_node::replicate::{ReplicationEvent, Replicator, ReplicatorConfig};
use mmogit_node::{Node, NodeConfig, NodeEvent, NodeHandle, PeerStatus, PeerStoreTrust};
use mmogit_store::{Oid, VerifiedMemory};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

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

/// Builder of an embedded node: listens, serves trusted peers (`peers.json`
/// of the home), replicates memories (queries, pulls, live announces), and
/// optionally keeps sessions to trusted peers and announces itself on the LAN.
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
    discovery: Option<(Arc<dyn mmogit_node::Discovery>, bool)>,
    max_pending: usize,
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
            discovery: None,
            max_pending: mmogit_node::DEFAULT_MAX_PENDING,
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

    /// Replication settings (serve own branch only, transfer limits); the
    /// repository and key are the home's and the identity's.
    pub fn replication(mut self, cfg: ReplicatorConfig) -> P2PServer {
        self.replication = Some(cfg);
        self
    }

    /// Announce this node and find peers with `discovery` (e.g.
    /// [`mmogit_node::MdnsDiscovery`]); `private`: a daily tag instead of the key.
    pub fn discovery(
        mut self,
        discovery: Arc<dyn mmogit_node::Discovery>,
        private: bool,
    ) -> P2PServer {
        self.discovery = Some((discovery, private));
        self
    }

    /// Starts listening and replicating.
    pub async fn start(self) -> Result<ServerHandle> {
        let home = self
            .home
            .ok_or_else(|| Error::Usage("P2PServer: no home set (call .home(...))".into()))?;
        let store = home.open_store()?;
        let me = self.identity.public_key();
        let mut rcfg = self
            .replication
            .unwrap_or_else(|| ReplicatorConfig::new(home.repo_path(), me));
        rcfg.repo = home.repo_path();
        rcfg.me = me;
        let policy =
            Arc::new(PeerStoreTrust::new(home.peers_path()).with_max_pending(self.max_pending));
        let (inbox_tx, inbox_rx) = mpsc::channel(64);
        let mut node = Node::new(self.identity.clone(), self.config, policy);
        if let Some((d, private)) = self.discovery {
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
        let tips: HashMap<PublicKey, Oid> = store.branches()?.into_iter().collect();
        drop(store);
        let forwarder = tokio::spawn(forward(
            node.subscribe(),
            rep_rx,
            events.clone(),
            home,
            me,
            tips,
        ));
        Ok(ServerHandle {
            node,
            replicator,
            forwarder,
            events,
        })
    }
}

/// A running node.
pub struct ServerHandle {
    node: NodeHandle,
    replicator: JoinHandle<()>,
    forwarder: JoinHandle<()>,
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

    /// Says goodbye to every peer, stops listening and replicating.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        self.replicator.abort();
        self.forwarder.abort();
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

/// Maps node and replication events to [`Event`]s.
async fn forward(
    mut node: broadcast::Receiver<NodeEvent>,
    mut rep: mpsc::UnboundedReceiver<ReplicationEvent>,
    out: broadcast::Sender<Event>,
    home: Home,
    me: PublicKey,
    mut tips: HashMap<PublicKey, Oid>,
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
                    Event::MemoriesReceived { from: peer, memories, refused }
                }
                Some(ReplicationEvent::PullFailed { peer, reason }) => Event::PullFailed { peer, reason },
                Some(_) => continue,
                None => break,
            },
        };
        let _ = out.send(ev);
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
