//! A deterministic simulator of nodes: each runs the real [`Service`], on a
//! virtual clock, linked by simulated connections, with a stand-in store
//! whose memories carry real Ed25519 signatures that every node verifies
//! ([`store`]). No socket, no thread, no wall clock: a run is a function of
//! its scenario and seed, so its action trace (or its digest, at scale) can
//! be compared between runs.
//!
//! * The network ([`net`]): per-link latency from a distribution, loss as
//!   TCP retransmission delay, bandwidth, partitions that break sessions
//!   and heal, nodes leaving, restarting and joining, clock drift per node.
//! * A node's loop is single-threaded, as the replicator task is: store
//!   work ([`Work`]) runs inline and takes its calibrated simulated CPU
//!   time ([`Costs`]); inputs that arrive meanwhile wait. Building a bundle
//!   for a peer runs beside it (a task of its own) and delays only that
//!   send.
//! * Topologies ([`Topology`]); trust is mutual along the graph's edges.
//! * Metrics ([`Metrics`], [`Report`]) and [`run_mesh`], the scenario of
//!   issue 18's bench and CI test.
//!
//! Randomness: the network's (loss) from the world's RNG; the topology,
//! link latencies and clock drifts from a setup RNG; each service from its
//! own seed (the world seed, the node, its incarnation); the workload of
//! [`run_mesh`] from its own. Same seed, same run.

mod metrics;
mod net;
mod store;

pub use metrics::{percentiles, MemoryStat, Metrics, Report};
pub use net::{wire_size, Kind, Latency, NetConfig, Partition, Topology, KINDS, SEGMENT};
pub use store::{Costs, FakeStore, Record, SimBundle, VerifyMode};

use std::cell::Cell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mmogit_identity::{Identity, PublicKey};
use mmogit_proto::{BranchTip, GitBundle, IngestSummary, MemoryResponse, Message, TransferInfo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::replication::{
    IfFull, Input as RInput, Io as RIo, JobId, Outcome, Policy, ReplicationEvent, Work,
};
use super::sessions::{Direction, DUPLICATE_SESSION};
use super::{DialParams, Input, Io, Service, ServiceConfig, SessionId};
use store::{parse_oid, tips_of};

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The node whose input the simulator is handling on this thread now
/// (`usize::MAX`: the simulator itself). A counting allocator can charge
/// each allocation to it (the bench does).
pub fn current_node() -> usize {
    CURRENT.with(|c| c.get())
}

/// Hosts sharing cores (see [`SimConfig::cpu`]).
#[derive(Debug, Clone, Copy)]
pub struct CpuShare {
    pub cores: usize,
    /// CPU per delivered memory (the node's whole work for it: messages,
    /// store, verification), measured on the real node.
    pub per_delivery: Duration,
}

/// The settings of a world.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub net: NetConfig,
    pub costs: Costs,
    pub dial: DialParams,
    pub max_outbound: usize,
    /// How often each node polls its tips (the replicator's default 100 ms).
    pub poll: Duration,
    /// Largest clock skew: each node's clock runs at `1 + x`, `x` drawn
    /// uniformly in `±drift` (e.g. 1e-4 = 100 ppm).
    pub drift: f64,
    pub verify: VerifyMode,
    /// Run the verified ingest beside the node's loop, one at a time per
    /// node, as the replicator does (false: inline, holding up the loop,
    /// as the simulator did before).
    pub ingest_beside_loop: bool,
    /// Nodes share this many cores (None: a core each), each delivered
    /// memory costing this much CPU beside its store time.
    pub cpu: Option<CpuShare>,
    /// Keep the trace as text lines and each node's replication events
    /// (small runs); the digest of the trace is kept always.
    pub trace_lines: bool,
    /// Adjusts each node's service settings (node index, settings): the
    /// hook for comparing replication schemes.
    pub configure: Option<fn(usize, &mut ServiceConfig)>,
}

impl SimConfig {
    /// The first simulator: 5 ms links, nothing lost, store work free,
    /// fast dial backoff (200 ms base, 5 s cap, 2 s healthy), text trace.
    pub fn classic() -> SimConfig {
        SimConfig {
            net: NetConfig::classic(),
            costs: Costs::zero(),
            dial: DialParams {
                base: Duration::from_millis(200),
                cap: Duration::from_secs(5),
                healthy: Duration::from_secs(2),
            },
            max_outbound: 8,
            poll: Duration::from_millis(100),
            drift: 0.0,
            verify: VerifyMode::Every,
            ingest_beside_loop: true,
            cpu: None,
            trace_lines: true,
            configure: None,
        }
    }

    /// Issue 18's setting: 50 ± 20 ms links, 1 % loss, 100 Mbit/s, the
    /// node's default dial settings (1 s base, 5 min cap, 10 s healthy, 64
    /// outbound), calibrated store costs, 100 ppm of clock drift, trace as
    /// a digest only.
    pub fn wan() -> SimConfig {
        SimConfig {
            net: NetConfig::wan(),
            costs: Costs::calibrated(),
            dial: DialParams {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(300),
                healthy: Duration::from_secs(10),
            },
            max_outbound: 64,
            poll: Duration::from_millis(100),
            drift: 1e-4,
            verify: VerifyMode::Every,
            ingest_beside_loop: true,
            cpu: None,
            trace_lines: false,
            configure: None,
        }
    }
}

pub struct SimNode {
    pub name: String,
    pub key: PublicKey,
    pub addr: String,
    /// Accepts connections.
    pub listening: bool,
    /// Running (a stopped node has no service loop, no session, no poll).
    pub up: bool,
    pub service: Service,
    pub store: FakeStore,
    /// Trusted peers and their addresses, as the peer store says.
    pub trusts: Vec<(PublicKey, Vec<String>)>,
    /// Replication events (kept with `trace_lines`).
    pub events: Vec<ReplicationEvent>,
    /// Clock rate error in parts per billion.
    pub drift_ppb: i64,
    incoming: BTreeMap<PublicKey, (TransferInfo, Vec<u8>)>,
    /// The store version its service last read its served tips at.
    read: Option<u64>,
    /// The node's loop is busy (store work) until then.
    busy_until: Instant,
    /// The node's store takes the next ingest then (ingests run one at a
    /// time, beside the node's loop).
    writer_free: Instant,
    backlog: VecDeque<Input>,
    resume_at: Option<Instant>,
    /// Incarnation: events of an earlier one are dropped.
    epoch: u32,
    /// Hops by which each record (by index) reached this node.
    hops: Vec<u8>,
}

#[derive(Debug)]
enum Event {
    Input {
        node: usize,
        epoch: u32,
        input: Box<Input>,
    },
    Deliver {
        node: usize,
        from: usize,
        conn: SessionId,
        bytes: u64,
        msg: Box<Message>,
    },
    Tick(usize, u32),
    Poll(usize, u32),
    Resume(usize, u32),
    /// A verified ingest that started at `start` (its turn at the node's
    /// store) ends now.
    Ingest {
        node: usize,
        epoch: u32,
        job: JobId,
        peer: PublicKey,
        start: Instant,
    },
    /// Partition `p` has lasted the idle timeout: its sessions break.
    Break(usize),
}

struct Ev {
    t: Instant,
    seq: u64,
    e: Event,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Ev) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Ev) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Ev) -> Ordering {
        (self.t, self.seq).cmp(&(o.t, o.seq))
    }
}

/// One end of a connection: its node, the other end, and when the last
/// message sent from here arrives there (TCP keeps order).
#[derive(Debug, Clone, Copy)]
struct End {
    node: usize,
    remote_node: usize,
    remote_conn: SessionId,
    last_arrival: Instant,
}

fn mix(h: &mut u64, v: u64) {
    *h = (*h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(27);
}

fn secret(i: usize) -> [u8; 32] {
    if i < 255 {
        [i as u8 + 1; 32]
    } else {
        let mut s = [0x5au8; 32];
        s[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        s
    }
}

pub struct World {
    pub cfg: SimConfig,
    pub seed: u64,
    pub t0: Instant,
    pub now: Instant,
    pub nodes: Vec<SimNode>,
    /// The trace as text (with `trace_lines`).
    pub trace: Vec<String>,
    /// A digest of every action of every node, with its time.
    pub digest: u64,
    pub metrics: Metrics,
    pub records: Vec<Record>,
    pub partitions: Vec<Partition>,
    wall0: SystemTime,
    ids: Vec<Identity>,
    hexes: Vec<String>,
    by_key: HashMap<[u8; 32], usize>,
    /// Node by the first 64 bits of its key's hex (checked in full).
    by_hex: HashMap<u64, usize>,
    /// Each record's commit id on the wire.
    oids: Vec<String>,
    by_addr: HashMap<String, usize>,
    rng: StdRng,
    setup: StdRng,
    queue: BinaryHeap<Reverse<Ev>>,
    seq: u64,
    conns: BTreeMap<SessionId, End>,
    broken: std::collections::HashSet<SessionId>,
    next_conn: SessionId,
    latency: HashMap<(u32, u32), Duration>,
    /// With [`SimConfig::cpu`]: when each shared core is free.
    cores: Vec<Instant>,
    link_free: HashMap<(u32, u32), Instant>,
    /// Component of each node in the mutual-trust graph (None: changed).
    components: Option<(Vec<usize>, Vec<u32>)>,
    /// Verification results by record (0 unknown, 1 good, 2 bad), for
    /// [`VerifyMode::Memo`].
    verified: Vec<u8>,
    undelivered: usize,
}

impl World {
    /// Nodes named by the characters of `names`, the first simulator's
    /// settings ([`SimConfig::classic`]).
    pub fn new(names: &str, seed: u64) -> World {
        let names: Vec<String> = names.chars().map(|c| c.to_string()).collect();
        World::with_names(SimConfig::classic(), names, seed)
    }

    /// `n` nodes named `0`, `1`, ….
    pub fn build(cfg: SimConfig, n: usize, seed: u64) -> World {
        World::with_names(cfg, (0..n).map(|i| i.to_string()).collect(), seed)
    }

    /// Nodes named `names`, keys from fixed secrets, every node's RNG
    /// seeded from `seed` and its index.
    pub fn with_names(cfg: SimConfig, names: Vec<String>, seed: u64) -> World {
        let t0 = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut setup = StdRng::seed_from_u64(seed ^ 0x5e70_5e70_5e70_5e70);
        let n = names.len();
        let ids: Vec<Identity> = (0..n)
            .map(|i| Identity::from_secret_bytes(&secret(i)))
            .collect();
        let mut nodes = Vec::with_capacity(n);
        for (i, name) in names.into_iter().enumerate() {
            let key = ids[i].public_key();
            let drift_ppb = if cfg.drift > 0.0 {
                (setup.gen_range(-cfg.drift..=cfg.drift) * 1e9) as i64
            } else {
                0
            };
            nodes.push(SimNode {
                name,
                key,
                addr: format!("10.0.{}.{}:7420", (i + 1) >> 8, (i + 1) & 255),
                listening: true,
                up: true,
                service: new_service(&cfg, i, key, seed, 0, t0, wall0),
                store: FakeStore::default(),
                trusts: Vec::new(),
                events: Vec::new(),
                drift_ppb,
                incoming: BTreeMap::new(),
                read: None,
                busy_until: t0,
                writer_free: t0,
                backlog: VecDeque::new(),
                resume_at: None,
                epoch: 0,
                hops: Vec::new(),
            });
        }
        let hexes: Vec<String> = nodes.iter().map(|x| x.key.to_hex()).collect();
        let by_key = nodes
            .iter()
            .enumerate()
            .map(|(i, x)| (*x.key.as_bytes(), i))
            .collect();
        let by_hex = hexes
            .iter()
            .enumerate()
            .map(|(i, h)| (hex_prefix(h).expect("64 hex"), i))
            .collect();
        let by_addr = nodes
            .iter()
            .enumerate()
            .map(|(i, x)| (x.addr.clone(), i))
            .collect();
        let metrics = Metrics {
            inflight: vec![0; n],
            inflight_peak: vec![0; n],
            ..Metrics::default()
        };
        World {
            cfg,
            seed,
            t0,
            now: t0,
            nodes,
            trace: Vec::new(),
            digest: seed,
            metrics,
            records: Vec::new(),
            partitions: Vec::new(),
            wall0,
            ids,
            hexes,
            by_key,
            by_hex,
            oids: Vec::new(),
            by_addr,
            rng: StdRng::seed_from_u64(seed),
            setup,
            queue: BinaryHeap::new(),
            seq: 0,
            conns: BTreeMap::new(),
            broken: Default::default(),
            next_conn: 1,
            latency: HashMap::new(),
            cores: Vec::new(),
            link_free: HashMap::new(),
            components: None,
            verified: Vec::new(),
            undelivered: 0,
        }
    }

    pub fn node(&self, name: char) -> usize {
        let name = name.to_string();
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("a node of that name")
    }

    fn idx(&self, k: &PublicKey) -> Option<usize> {
        self.by_key.get(k.as_bytes()).copied()
    }

    /// The node whose key is `hex`.
    fn author_of(&self, hex: &str) -> Option<usize> {
        let i = *self.by_hex.get(&hex_prefix(hex)?)?;
        (self.hexes[i] == hex).then_some(i)
    }

    fn ms(&self) -> u128 {
        self.now.duration_since(self.t0).as_millis()
    }

    fn at(&mut self, t: Instant, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Ev {
            t,
            seq: self.seq,
            e,
        }));
    }

    fn input_at(&mut self, t: Instant, node: usize, input: Input) {
        let epoch = self.nodes[node].epoch;
        self.at(
            t,
            Event::Input {
                node,
                epoch,
                input: Box::new(input),
            },
        );
    }

    fn input(&mut self, after: Duration, node: usize, i: Input) {
        self.input_at(self.now + after, node, i);
    }

    /// Node `n`'s clock at world time `t`.
    fn local(&self, n: usize, t: Instant) -> Instant {
        let ppb = self.nodes[n].drift_ppb;
        if ppb == 0 {
            return t;
        }
        let d = t.saturating_duration_since(self.t0).as_nanos() as i128;
        let skewed = d + d * ppb as i128 / 1_000_000_000;
        self.t0 + Duration::from_nanos(skewed.max(0) as u64)
    }

    /// The world time when node `n`'s clock shows `t`.
    fn world_of(&self, n: usize, t: Instant) -> Instant {
        let ppb = self.nodes[n].drift_ppb;
        if ppb == 0 {
            return t;
        }
        let d = t.saturating_duration_since(self.t0).as_nanos() as i128;
        let w = d * 1_000_000_000 / (1_000_000_000 + ppb as i128);
        self.t0 + Duration::from_nanos(w.max(0) as u64)
    }

    /// A duration of node `n`'s clock in world time.
    fn world_dur(&self, n: usize, d: Duration) -> Duration {
        let ppb = self.nodes[n].drift_ppb;
        if ppb == 0 {
            return d;
        }
        let w = d.as_nanos() as i128 * 1_000_000_000 / (1_000_000_000 + ppb as i128);
        Duration::from_nanos(w.max(0) as u64)
    }

    fn link_latency(&mut self, a: usize, b: usize) -> Duration {
        let key = (a.min(b) as u32, a.max(b) as u32);
        if let Some(l) = self.latency.get(&key) {
            return *l;
        }
        let l = self.cfg.net.latency.draw(&mut self.setup);
        self.latency.insert(key, l);
        l
    }

    fn cutting(&self, a: usize, b: usize, t: Instant) -> Option<usize> {
        self.partitions.iter().position(|p| p.cuts(a, b, t))
    }

    // ---- the scenario ----

    /// `a` trusts `b` (at `b`'s address); the peer store is read at once.
    pub fn trust(&mut self, a: char, b: char) {
        let (ai, bi) = (self.node(a), self.node(b));
        self.trust_idx(ai, bi);
    }

    pub fn trust_idx(&mut self, a: usize, b: usize) {
        let entry = (self.nodes[b].key, vec![self.nodes[b].addr.clone()]);
        self.nodes[a].trusts.push(entry);
        self.components = None;
        let targets = self.nodes[a].trusts.clone();
        self.input(Duration::ZERO, a, Input::PeerStore(targets));
    }

    /// Mutual trust along `edges`; each node's peer store is read once.
    /// Each link's latency is drawn now, in the order of the edges.
    pub fn connect_graph(&mut self, edges: &[(usize, usize)]) {
        for &(a, b) in edges {
            self.link_latency(a, b);
            let (ka, kb) = (self.nodes[a].key, self.nodes[b].key);
            let (aa, ab) = (self.nodes[a].addr.clone(), self.nodes[b].addr.clone());
            self.nodes[a].trusts.push((kb, vec![ab]));
            self.nodes[b].trusts.push((ka, vec![aa]));
        }
        self.components = None;
        for n in 0..self.nodes.len() {
            let targets = self.nodes[n].trusts.clone();
            self.input(Duration::ZERO, n, Input::PeerStore(targets));
        }
    }

    /// `a` removes `b` from its peer store.
    pub fn block(&mut self, a: char, b: char) {
        let (ai, bk) = (self.node(a), self.nodes[self.node(b)].key);
        self.nodes[ai].trusts.retain(|(k, _)| *k != bk);
        self.components = None;
        let targets = self.nodes[ai].trusts.clone();
        self.input(Duration::ZERO, ai, Input::PeerStore(targets));
    }

    /// `a` writes a memory now (a commit on its own branch).
    pub fn remember(&mut self, a: char) -> u64 {
        let ai = self.node(a);
        self.remember_idx(ai)
    }

    /// Node `a` writes a memory now, signed with its key.
    pub fn remember_idx(&mut self, a: usize) -> u64 {
        let key = self.nodes[a].key;
        let seq = self.nodes[a].store.chains.get(&key).map_or(0, Vec::len);
        let c = self.records.len() as u64 + 1;
        let bytes = format!(
            "{{\"author\":\"{}\",\"seq\":{seq},\"content\":\"memory {c} of the simulation, written by node {a} for the mesh at scale\"}}",
            self.hexes[a]
        )
        .into_bytes();
        let sig = self.ids[a].sign(&bytes);
        self.add_record(a, a, seq, bytes, sig, false)
    }

    /// `forger` writes a memory claiming `author` as its author (signed
    /// with the forger's key) on its copy of the author's branch. Every
    /// node that pulls it must refuse it.
    pub fn forge(&mut self, forger: usize, author: usize) -> u64 {
        let key = self.nodes[author].key;
        let seq = self.nodes[forger]
            .store
            .chains
            .get(&key)
            .map_or(0, Vec::len);
        let c = self.records.len() as u64 + 1;
        let bytes = format!(
            "{{\"author\":\"{}\",\"seq\":{seq},\"content\":\"forged memory {c}\"}}",
            self.hexes[author]
        )
        .into_bytes();
        let sig = self.ids[forger].sign(&bytes);
        self.add_record(forger, author, seq, bytes, sig, true)
    }

    fn add_record(
        &mut self,
        holder: usize,
        author: usize,
        seq: usize,
        bytes: Vec<u8>,
        sig: mmogit_identity::Signature,
        forged: bool,
    ) -> u64 {
        let c = self.records.len() as u64 + 1;
        self.oids.push(store::oid(c));
        self.records.push(Record {
            author,
            seq,
            bytes,
            sig,
            forged,
        });
        let key = self.nodes[author].key;
        self.nodes[holder]
            .store
            .chains
            .entry(key)
            .or_default()
            .push(c);
        self.nodes[holder].store.version += 1;
        set_hop(&mut self.nodes[holder].hops, c, 0);
        let targets = if forged {
            0
        } else {
            self.component_size(author) - 1
        };
        self.metrics.memories.push(MemoryStat {
            written: self.now,
            targets: targets as u32,
            holders: 0,
            done: (targets == 0 && !forged).then_some(self.now),
            max_hop: 0,
            forged,
        });
        if targets > 0 {
            self.undelivered += 1;
        }
        c
    }

    /// Nodes in `a`'s component of the mutual-trust graph, `a` included.
    fn component_size(&mut self, a: usize) -> usize {
        if self.components.is_none() {
            let n = self.nodes.len();
            let mut comp = vec![usize::MAX; n];
            let mut sizes = vec![];
            for s in 0..n {
                if comp[s] != usize::MAX {
                    continue;
                }
                let c = sizes.len();
                let mut size = 0u32;
                let mut stack = vec![s];
                comp[s] = c;
                while let Some(x) = stack.pop() {
                    size += 1;
                    for (k, _) in &self.nodes[x].trusts {
                        let Some(y) = self.idx(k) else { continue };
                        let me = self.nodes[x].key;
                        if comp[y] == usize::MAX
                            && self.nodes[y].trusts.iter().any(|(k2, _)| *k2 == me)
                        {
                            comp[y] = c;
                            stack.push(y);
                        }
                    }
                }
                sizes.push(size);
            }
            self.components = Some((comp, sizes));
        }
        let (comp, sizes) = self.components.as_ref().expect("computed");
        sizes[comp[a]] as usize
    }

    /// Mutual-trust edges.
    pub fn edge_count(&self) -> usize {
        let mut e = 0;
        for (i, x) in self.nodes.iter().enumerate() {
            for (k, _) in &x.trusts {
                if let Some(j) = self.idx(k) {
                    if j > i && self.nodes[j].trusts.iter().any(|(k2, _)| *k2 == x.key) {
                        e += 1;
                    }
                }
            }
        }
        e
    }

    /// Memories written and not yet delivered everywhere they can go.
    pub fn undelivered(&self) -> usize {
        self.undelivered
    }

    /// One line: simulated time, undelivered memories, events queued,
    /// inputs waiting for busy nodes, messages sent so far.
    pub fn progress(&self) -> String {
        let backlog: usize = self.nodes.iter().map(|n| n.backlog.len()).sum();
        let late = self
            .nodes
            .iter()
            .map(|n| n.busy_until.saturating_duration_since(self.now))
            .max()
            .unwrap_or_default();
        format!(
            "t={:.1}s undelivered={} queued events={} waiting inputs={} busiest node busy for {:.1}s more, messages {}",
            self.now.duration_since(self.t0).as_secs_f64(),
            self.undelivered,
            self.queue.len(),
            backlog,
            late.as_secs_f64(),
            self.metrics.msgs.iter().sum::<u64>()
        )
    }

    /// Starts every running node's polling.
    pub fn start(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].up {
                let e = self.nodes[i].epoch;
                self.at(self.now, Event::Poll(i, e));
            }
        }
    }

    /// Node `n` stops (crash or shutdown): its sessions end (its peers see
    /// the connection reset), what it was doing is lost; its store stays.
    pub fn stop_node(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.up = false;
        node.listening = false;
        node.epoch += 1;
        node.backlog.clear();
        node.resume_at = None;
        node.busy_until = self.now;
        node.incoming.clear();
        let mine: Vec<SessionId> = self
            .conns
            .iter()
            .filter(|(_, e)| e.node == n)
            .map(|(c, _)| *c)
            .collect();
        for c in mine {
            self.break_conn(c, "connection reset by peer", false);
        }
    }

    /// Node `n` starts (again, or for the first time: a node that joins):
    /// a new service, the same store; it reads its peer store and polls.
    pub fn start_node(&mut self, n: usize) {
        let epoch = self.nodes[n].epoch + 1;
        let key = self.nodes[n].key;
        let service = new_service(&self.cfg, n, key, self.seed, epoch, self.t0, self.wall0);
        let node = &mut self.nodes[n];
        node.epoch = epoch;
        node.service = service;
        node.read = None;
        node.up = true;
        node.listening = true;
        node.busy_until = self.now;
        node.writer_free = self.now;
        let targets = node.trusts.clone();
        self.input(Duration::ZERO, n, Input::PeerStore(targets));
        self.at(self.now, Event::Poll(n, epoch));
    }

    /// Cuts every link between nodes of different `groups` from `from`
    /// until `until`.
    pub fn partition(&mut self, groups: Vec<u32>, from: Instant, until: Instant) {
        let p = self.partitions.len();
        let idle = self.cfg.net.idle_timeout;
        self.partitions.push(Partition {
            groups,
            from,
            until,
        });
        if until > from + idle {
            self.at(from + idle, Event::Break(p));
        }
    }

    /// Runs events until `until` (virtual).
    pub fn run_until(&mut self, until: Instant) {
        while let Some(Reverse(ev)) = self.queue.peek() {
            if ev.t > until {
                break;
            }
            let Reverse(Ev { t, e, .. }) = self.queue.pop().expect("peeked");
            self.now = t;
            self.metrics.events += 1;
            match e {
                Event::Input { node, epoch, input } => {
                    if epoch == self.nodes[node].epoch {
                        self.deliver_input(node, *input);
                    }
                }
                Event::Deliver {
                    node,
                    from,
                    conn,
                    bytes,
                    msg,
                } => self.on_deliver(node, from, conn, bytes, msg),
                Event::Tick(n, epoch) => {
                    if epoch == self.nodes[n].epoch {
                        self.deliver_input(n, Input::Tick);
                    }
                }
                Event::Poll(n, epoch) => {
                    if epoch == self.nodes[n].epoch && self.nodes[n].up {
                        let queued = self.nodes[n]
                            .backlog
                            .iter()
                            .any(|i| matches!(i, Input::Tick));
                        if !queued {
                            self.deliver_input(n, Input::Tick);
                        }
                        let next = t + self.world_dur(n, self.cfg.poll);
                        self.at(next, Event::Poll(n, epoch));
                    }
                }
                Event::Resume(n, epoch) => {
                    if epoch == self.nodes[n].epoch {
                        self.resume(n);
                    }
                }
                Event::Break(p) => self.break_partition(p),
                Event::Ingest {
                    node,
                    epoch,
                    job,
                    peer,
                    start,
                } => {
                    if epoch == self.nodes[node].epoch && self.nodes[node].up {
                        CURRENT.with(|c| c.set(node));
                        let end = self.now;
                        self.now = start;
                        let (outcome, _) = self.work(node, peer, Work::Ingest);
                        self.now = end;
                        CURRENT.with(|c| c.set(usize::MAX));
                        self.deliver_input(node, Input::Replication(RInput::Done { job, outcome }));
                    }
                }
            }
        }
        self.now = until;
    }

    fn on_deliver(
        &mut self,
        node: usize,
        from: usize,
        conn: SessionId,
        bytes: u64,
        msg: Box<Message>,
    ) {
        if let Some(p) = self.cutting(from, node, self.now) {
            let (pfrom, until) = (self.partitions[p].from, self.partitions[p].until);
            if until <= pfrom + self.cfg.net.idle_timeout {
                // The session outlives the cut: TCP delivers after the heal.
                let t = until + self.link_latency(from, node);
                self.at(
                    t,
                    Event::Deliver {
                        node,
                        from,
                        conn,
                        bytes,
                        msg,
                    },
                );
                return;
            }
            self.broken.insert(conn);
        }
        self.metrics.arrived(from, bytes);
        if self.broken.contains(&conn) || !self.nodes[node].up {
            self.metrics.dropped += 1;
            return;
        }
        let peer = self.nodes[from].key;
        self.deliver_input(
            node,
            Input::Received {
                peer,
                conn,
                msg: *msg,
            },
        );
    }

    /// Hands `i` to node `n` now, or after its current work.
    fn deliver_input(&mut self, n: usize, i: Input) {
        let node = &mut self.nodes[n];
        if !node.up {
            return;
        }
        if self.now < node.busy_until || !node.backlog.is_empty() {
            node.backlog.push_back(i);
            self.schedule_resume(n);
            return;
        }
        self.handle(n, i);
    }

    fn schedule_resume(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if node.resume_at.is_none() {
            let t = node.busy_until.max(self.now);
            node.resume_at = Some(t);
            let e = node.epoch;
            self.at(t, Event::Resume(n, e));
        }
    }

    fn resume(&mut self, n: usize) {
        self.nodes[n].resume_at = None;
        if self.now < self.nodes[n].busy_until {
            self.schedule_resume(n);
            return;
        }
        if let Some(i) = self.nodes[n].backlog.pop_front() {
            self.handle(n, i);
        }
        if !self.nodes[n].backlog.is_empty() {
            self.schedule_resume(n);
        }
    }

    /// Handles `i` at node `n`, and the results of the work it asks for
    /// (inline, as the replicator runs store work): the work's simulated
    /// time moves the node's clock on.
    fn handle(&mut self, n: usize, i: Input) {
        CURRENT.with(|c| c.set(n));
        let mut inputs = VecDeque::from([i]);
        while let Some(i) = inputs.pop_front() {
            let local = self.local(n, self.now);
            let w = Instant::now();
            self.nodes[n].service.handle(local, i);
            self.metrics.wall_service += w.elapsed();
            loop {
                let w = Instant::now();
                let io = self.nodes[n].service.next_io();
                self.metrics.wall_service += w.elapsed();
                let Some(io) = io else { break };
                self.record(n, &io);
                if let Some(back) = self.execute(n, io) {
                    inputs.push_back(back);
                }
            }
        }
        self.nodes[n].busy_until = self.now;
        CURRENT.with(|c| c.set(usize::MAX));
    }

    fn record(&mut self, n: usize, io: &Io) {
        let t = self.now.duration_since(self.t0).as_nanos() as u64;
        let mut h = self.digest;
        mix(&mut h, t);
        mix(&mut h, n as u64);
        let (kind, peer, extra): (u64, Option<&PublicKey>, u64) = match io {
            Io::Dial { peer, .. } => (1, Some(peer), 0),
            Io::Close { conn, .. } => (2, None, *conn),
            Io::ReadPeerStore => (3, None, 0),
            Io::WakeAt(_) => (4, None, 0),
            Io::Replication(r) => match r {
                RIo::Send { peer, msg, .. } | RIo::SendLater { peer, msg, .. } => (
                    10 + Metrics::kind_index(Kind::of(msg)) as u64,
                    Some(peer),
                    0,
                ),
                RIo::Work { peer, job, .. } => (20, Some(peer), *job),
                RIo::Discard { peer } => (21, Some(peer), 0),
                RIo::Serve { peer, req, .. } => (22, Some(peer), req.id),
                RIo::Answer { peer, .. } => (23, Some(peer), 0),
                RIo::Event(_) => (24, None, 0),
            },
        };
        mix(&mut h, kind);
        mix(
            &mut h,
            peer.and_then(|p| self.idx(p))
                .map_or(u64::MAX, |x| x as u64),
        );
        mix(&mut h, extra);
        self.digest = h;
        if self.cfg.trace_lines {
            let line = describe(io, |k| {
                self.idx(k)
                    .map(|i| self.nodes[i].name.clone())
                    .unwrap_or_else(|| "?".into())
            });
            self.trace
                .push(format!("{:>6} {} {line}", self.ms(), self.nodes[n].name));
        }
    }

    fn execute(&mut self, n: usize, io: Io) -> Option<Input> {
        match io {
            Io::Dial { peer, addr } => return self.dial(n, peer, addr),
            Io::Close { conn, reason } => {
                let end = self.conns.remove(&conn)?;
                self.conns.remove(&end.remote_conn);
                let superseded = reason == DUPLICATE_SESSION;
                let (k_here, k_there) = (self.nodes[end.remote_node].key, self.nodes[n].key);
                self.input(
                    Duration::ZERO,
                    n,
                    Input::Disconnected {
                        peer: k_here,
                        conn,
                        error: None,
                        superseded,
                    },
                );
                // The Bye arrives after what was sent before it.
                let lat = self.link_latency(n, end.remote_node);
                let t = (self.now + lat).max(end.last_arrival);
                self.input_at(
                    t,
                    end.remote_node,
                    Input::Disconnected {
                        peer: k_there,
                        conn: end.remote_conn,
                        error: Some(format!("peer said bye: {reason}")),
                        superseded,
                    },
                );
            }
            Io::ReadPeerStore => {
                return Some(Input::PeerStore(self.nodes[n].trusts.clone()));
            }
            Io::WakeAt(t) => {
                let t = self.world_of(n, t).max(self.now);
                let e = self.nodes[n].epoch;
                self.at(t, Event::Tick(n, e));
            }
            Io::Replication(r) => return self.replicate(n, r).map(Input::Replication),
        }
        None
    }

    fn dial(&mut self, n: usize, peer: PublicKey, addr: String) -> Option<Input> {
        self.metrics.dials += 1;
        let me = self.nodes[n].key;
        let target = self
            .by_addr
            .get(&addr)
            .copied()
            .filter(|m| self.nodes[*m].key == peer);
        let lat = match target {
            Some(m) => self.link_latency(n, m),
            None => self.cfg.net.latency.mean(),
        };
        let fail = |w: &mut World, after: Duration, error: &str| {
            w.metrics.dials_failed += 1;
            w.input(
                after,
                n,
                Input::DialFailed {
                    peer,
                    error: error.into(),
                },
            );
        };
        let Some(m) = target else {
            fail(self, lat * 2, "connection refused");
            return None;
        };
        // Across a cut the SYN is lost, and sent again 1, 3 and 7 s after
        // the first (Linux's doubling RTO): a cut that heals before the
        // dial timeout lets the next one through.
        let mut wait = Duration::ZERO;
        if self.cutting(n, m, self.now).is_some() {
            let deadline = self.now + self.cfg.net.dial_timeout;
            let retry = [1u64, 3, 7]
                .iter()
                .map(|s| self.now + Duration::from_secs(*s))
                .find(|t| *t < deadline && self.cutting(n, m, *t).is_none());
            match retry {
                Some(t) => wait = t - self.now,
                None => {
                    fail(self, self.cfg.net.dial_timeout, "connection timed out");
                    return None;
                }
            }
        }
        // The handshake proves both keys; a node that does not trust the
        // dialler refuses it there.
        let x = &self.nodes[m];
        if !(x.up && x.listening && x.trusts.iter().any(|(k, _)| *k == me)) {
            fail(self, lat * 2, "connection refused");
            return None;
        }
        let (cn, cm) = (self.next_conn, self.next_conn + 1);
        self.next_conn += 2;
        let hs = wait + lat * 2 * self.cfg.net.handshake_rtts;
        let ready = self.now + hs;
        self.conns.insert(
            cn,
            End {
                node: n,
                remote_node: m,
                remote_conn: cm,
                last_arrival: ready,
            },
        );
        self.conns.insert(
            cm,
            End {
                node: m,
                remote_node: n,
                remote_conn: cn,
                last_arrival: ready,
            },
        );
        let addr_of = |i: usize| -> SocketAddr { self.nodes[i].addr.parse().expect("an address") };
        let (an, am) = (addr_of(n), addr_of(m));
        let km = self.nodes[m].key;
        self.input(
            hs,
            m,
            Input::Connected {
                peer: me,
                direction: Direction::Inbound,
                addr: an,
                conn: cm,
            },
        );
        self.input(
            hs,
            n,
            Input::Connected {
                peer: km,
                direction: Direction::Outbound,
                addr: am,
                conn: cn,
            },
        );
        None
    }

    /// Connection `c` (and its other end) breaks: both ends that run see
    /// it with `error` (`here`: also the end at `c`'s node, else only the
    /// remote one, after a link latency).
    fn break_conn(&mut self, c: SessionId, error: &str, here: bool) {
        let Some(end) = self.conns.remove(&c) else {
            return;
        };
        self.conns.remove(&end.remote_conn);
        self.broken.insert(c);
        self.broken.insert(end.remote_conn);
        self.metrics.sessions_broken += 1;
        let (kn, km) = (self.nodes[end.node].key, self.nodes[end.remote_node].key);
        if here {
            self.input(
                Duration::ZERO,
                end.node,
                Input::Disconnected {
                    peer: km,
                    conn: c,
                    error: Some(error.into()),
                    superseded: false,
                },
            );
        }
        let after = if here {
            Duration::ZERO
        } else {
            self.link_latency(end.node, end.remote_node)
        };
        self.input(
            after,
            end.remote_node,
            Input::Disconnected {
                peer: kn,
                conn: end.remote_conn,
                error: Some(error.into()),
                superseded: false,
            },
        );
    }

    fn break_partition(&mut self, p: usize) {
        let cut: Vec<SessionId> = self
            .conns
            .iter()
            .filter(|(c, e)| {
                **c < e.remote_conn && self.partitions[p].cuts(e.node, e.remote_node, self.now)
            })
            .map(|(c, _)| *c)
            .collect();
        for c in cut {
            self.break_conn(c, "idle timeout: nothing received", true);
        }
    }

    /// Queues `msg` on connection `conn` at `at`; returns when its last
    /// byte is on the wire, or None when the connection is gone.
    fn transmit(
        &mut self,
        n: usize,
        conn: SessionId,
        msg: Message,
        at: Instant,
    ) -> Option<Instant> {
        let end = *self.conns.get(&conn)?;
        let m = end.remote_node;
        let bundle = match &msg {
            Message::GitBundle(g) => g.total_size,
            _ => 0,
        };
        let bytes = wire_size(&msg, bundle);
        self.metrics.sent(n, Kind::of(&msg), bytes);
        let lat = self.link_latency(n, m);
        let free = self.link_free.entry((n as u32, m as u32)).or_insert(at);
        let start = (*free).max(at);
        let done = start + self.cfg.net.serialization(bytes);
        *free = done;
        let loss = self.cfg.net.loss_delay(bytes, &mut self.rng);
        if !loss.is_zero() {
            self.metrics.retransmits += 1;
        }
        let arrive = (done + lat + loss).max(end.last_arrival);
        if let Some(e) = self.conns.get_mut(&conn) {
            e.last_arrival = arrive;
        }
        self.at(
            arrive,
            Event::Deliver {
                node: m,
                from: n,
                conn: end.remote_conn,
                bytes,
                msg: Box::new(msg),
            },
        );
        Some(done)
    }

    fn replicate(&mut self, n: usize, io: RIo) -> Option<RInput> {
        match io {
            RIo::Send {
                peer,
                session,
                msg,
                if_full,
            } => {
                let now = self.now;
                if self.transmit(n, session, msg, now).is_none() && if_full != IfFull::Drop {
                    return Some(RInput::NotQueued {
                        peer,
                        session,
                        what: if_full,
                        closed: true,
                    });
                }
            }
            RIo::SendLater { session, msg, .. } => {
                let now = self.now;
                self.transmit(n, session, msg, now);
            }
            RIo::Work {
                job,
                peer,
                work: Work::Ingest,
            } if self.cfg.ingest_beside_loop => {
                // As the replicator: the ingest runs on a thread of its own
                // while the node's loop goes on; ingests take the store one
                // at a time.
                let c = &self.cfg.costs;
                let commits = self.nodes[n]
                    .incoming
                    .get(&peer)
                    .and_then(|(_, d)| SimBundle::decode(d))
                    .map_or(0, |b| b.commits());
                let per = c.index_per_commit + c.check_per_memory + c.sig_per(commits);
                let cost = c.ingest_fixed + per * commits as u32;
                let start = self.nodes[n].writer_free.max(self.now);
                // Hosts sharing cores: the node's CPU for these memories
                // waits for a free core.
                let mut end = start + cost;
                if let Some(cpu) = self.cfg.cpu {
                    end = end.max(self.on_a_core(start, cpu.per_delivery * commits as u32));
                }
                let node = &mut self.nodes[n];
                node.writer_free = end;
                let epoch = node.epoch;
                self.at(
                    end,
                    Event::Ingest {
                        node: n,
                        epoch,
                        job,
                        peer,
                        // Its store time ends with it.
                        start: end - cost,
                    },
                );
            }
            RIo::Work { job, peer, work } => {
                let (outcome, cost) = self.work(n, peer, work);
                self.now += cost;
                return Some(RInput::Done { job, outcome });
            }
            RIo::Discard { peer } => {
                self.nodes[n].incoming.remove(&peer);
            }
            RIo::Serve { peer, session, req } => self.serve(n, peer, session, req),
            RIo::Answer { peer, session, req } => {
                let m = Message::MemoryResponse(MemoryResponse {
                    id: Some(req.id),
                    ..Default::default()
                });
                let now = self.now;
                self.transmit(n, session, m, now);
                return Some(RInput::Answered { peer });
            }
            RIo::Event(e) => {
                if self.cfg.trace_lines {
                    self.nodes[n].events.push(e);
                }
            }
        }
        None
    }

    /// Answers a pull: a bundle built beside the node's loop (it delays
    /// this answer only), then `Served` once its last byte is on the wire.
    fn serve(
        &mut self,
        n: usize,
        peer: PublicKey,
        session: SessionId,
        req: mmogit_proto::MemoryRequest,
    ) {
        let authors = req.authors;
        let have = req.sync.map(|s| s.have).unwrap_or_default();
        // A targeted pull: only the branches it names, as `answer_sync`.
        let only: Option<BTreeSet<usize>> = (!authors.is_empty())
            .then(|| authors.iter().filter_map(|a| self.author_of(a)).collect());
        let bundle = self.bundle_for(n, &have, only.as_ref());
        let tips = self.tips_only(n, only.as_ref());
        let c = &self.cfg.costs;
        let commits = bundle.commits();
        let cost = if commits == 0 {
            c.tips(tips.len())
        } else {
            c.serve_fixed + c.serve_per_commit * commits as u32
        };
        let at = self.now + cost;
        let mut sent = None;
        let mut end = at;
        if commits == 0 {
            let m = Message::MemoryResponse(MemoryResponse {
                id: Some(req.id),
                tips: Some(tips),
                ..Default::default()
            });
            if let Some(t) = self.transmit(n, session, m, at) {
                end = t;
            }
        } else {
            let size = self.cfg.costs.bundle_bytes(&bundle);
            let info = TransferInfo {
                transfer_id: req.id.to_string(),
                total_size: size,
                sha256: "00".repeat(32),
                chunks: 1,
                commits: commits as u64,
            };
            let head = Message::MemoryResponse(MemoryResponse {
                id: Some(req.id),
                tips: Some(tips),
                transfer: Some(info.clone()),
                ..Default::default()
            });
            let chunk = Message::GitBundle(GitBundle {
                transfer_id: info.transfer_id.clone(),
                index: 0,
                total_size: size,
                sha256: info.sha256.clone(),
                data: bundle.encode(),
            });
            if self.transmit(n, session, head, at).is_some() {
                if let Some(t) = self.transmit(n, session, chunk, at) {
                    end = t;
                    sent = Some((size, commits as u64));
                }
            }
        }
        self.input_at(end, n, Input::Replication(RInput::Served { peer, sent }));
    }

    /// Runs `d` of CPU work from `at` on the first core free (hosts sharing
    /// [`SimConfig::cpu`]'s cores); when it ends.
    fn on_a_core(&mut self, at: Instant, d: Duration) -> Instant {
        let Some(cpu) = self.cfg.cpu else {
            return at + d;
        };
        if self.cores.len() != cpu.cores.max(1) {
            self.cores = vec![self.t0; cpu.cores.max(1)];
        }
        let (i, free) = self
            .cores
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .map(|(i, t)| (i, *t))
            .expect("at least one core");
        let end = free.max(at) + d;
        self.cores[i] = end;
        end
    }

    /// Whether node `n` holds commit `c` on `author`'s branch.
    fn holds(&self, n: usize, author: usize, c: u64) -> bool {
        let Some(r) = c.checked_sub(1).and_then(|i| self.records.get(i as usize)) else {
            return false;
        };
        r.author == author
            && self.nodes[n]
                .store
                .chains
                .get(&self.nodes[author].key)
                .and_then(|ch| ch.get(r.seq))
                == Some(&c)
    }

    /// Node `n`'s tips of the authors in `only` (all without it).
    fn tips_only(&self, n: usize, only: Option<&BTreeSet<usize>>) -> Vec<BranchTip> {
        let Some(only) = only else {
            return self.tips(n);
        };
        let chains = &self.nodes[n].store.chains;
        let mut out: Vec<(&PublicKey, BranchTip)> = only
            .iter()
            .filter_map(|a| {
                let k = &self.nodes[*a].key;
                let tip = *chains.get(k)?.last()?;
                Some((
                    k,
                    BranchTip {
                        author: self.hexes[*a].clone(),
                        tip: self.oids[tip as usize - 1].clone(),
                    },
                ))
            })
            .collect();
        // In the order of the store's branches, as `tips` gives them.
        out.sort_by(|x, y| x.0.cmp(y.0));
        out.into_iter().map(|(_, t)| t).collect()
    }

    fn tips(&self, n: usize) -> Vec<BranchTip> {
        tips_of(
            &self.nodes[n].store,
            |k| {
                self.idx(k)
                    .map(|i| self.hexes[i].clone())
                    .unwrap_or_else(|| k.to_hex())
            },
            |c| self.oids[c as usize - 1].clone(),
        )
    }

    /// What `build_bundle` would send a peer whose tips are `have`.
    fn bundle_for(
        &self,
        n: usize,
        have: &[BranchTip],
        only: Option<&BTreeSet<usize>>,
    ) -> SimBundle {
        let mut theirs: HashMap<usize, u64> = HashMap::new();
        let mut known = 0;
        for t in have {
            if let (Some(a), Some(c)) = (self.author_of(&t.author), parse_oid(&t.tip)) {
                theirs.insert(a, c);
                if self.holds(n, a, c) {
                    known += 1;
                }
            }
        }
        let mut b = SimBundle {
            branches: vec![],
            known,
        };
        let chains = &self.nodes[n].store.chains;
        let keys: Vec<&PublicKey> = match only {
            Some(o) => {
                let mut v: Vec<&PublicKey> = o.iter().map(|a| &self.nodes[*a].key).collect();
                v.sort();
                v
            }
            None => chains.keys().collect(),
        };
        for k in keys {
            let Some(chain) = chains.get(k) else {
                continue;
            };
            let (Some(a), Some(tip)) = (self.idx(k), chain.last()) else {
                continue;
            };
            let from = match theirs.get(&a) {
                Some(c) if c == tip => continue,
                Some(c) if self.holds(n, a, *c) => self.records[*c as usize - 1].seq + 1,
                // Unknown to us (they are ahead, or diverged): nothing of
                // the branch is hidden, as with git.
                _ => 0,
            };
            b.branches.push((a as u32, chain[from..].to_vec()));
        }
        b
    }

    fn work(&mut self, n: usize, peer: PublicKey, work: Work) -> (Outcome, Duration) {
        let c = &self.cfg.costs;
        match work {
            Work::ServedTips if self.nodes[n].read == Some(self.nodes[n].store.version) => {
                (Outcome::Unchanged, c.tips(self.nodes[n].store.chains.len()))
            }
            Work::ServedTips => {
                self.nodes[n].read = Some(self.nodes[n].store.version);
                let tips = self.tips(n);
                let cost = c.tips(tips.len());
                (Outcome::Tips(Ok(tips)), cost)
            }
            Work::OurTips(only) => {
                // The store reads every ref, whatever it returns.
                let cost = c.tips(self.nodes[n].store.chains.len());
                let only: Option<BTreeSet<usize>> =
                    only.map(|a| a.iter().filter_map(|x| self.author_of(x)).collect());
                (Outcome::Tips(Ok(self.tips_only(n, only.as_ref()))), cost)
            }
            Work::Lacking(tips) => {
                let cost = c.lacking_per_tip * tips.len() as u32;
                let lacks: Vec<BranchTip> = tips
                    .into_iter()
                    .filter(|t| match (self.author_of(&t.author), parse_oid(&t.tip)) {
                        (Some(a), Some(x)) => !self.holds(n, a, x),
                        _ => false,
                    })
                    .collect();
                (Outcome::Lacking(Ok(lacks)), cost)
            }
            Work::Start(info) => {
                let cost = c.start;
                self.nodes[n].incoming.insert(peer, (info, Vec::new()));
                (Outcome::Started(Ok(())), cost)
            }
            Work::Chunk(g) => {
                let cost = c.chunk_per_kib * (g.total_size / 1024) as u32;
                match self.nodes[n].incoming.get_mut(&peer) {
                    None => (Outcome::Chunk(Err("chunk of no transfer".into())), cost),
                    Some((info, data)) => {
                        data.extend_from_slice(&g.data);
                        (Outcome::Chunk(Ok(g.index + 1 == info.chunks)), cost)
                    }
                }
            }
            Work::Ingest => self.ingest(n, peer),
        }
    }

    /// The verified ingest of `peer`'s transfer at node `n`.
    fn ingest(&mut self, n: usize, peer: PublicKey) -> (Outcome, Duration) {
        let costs = self.cfg.costs.clone();
        let Some((info, data)) = self.nodes[n].incoming.remove(&peer) else {
            return (
                Outcome::Ingested(Err("transfer already finished".into())),
                Duration::ZERO,
            );
        };
        let Some(bundle) = SimBundle::decode(&data) else {
            return (
                Outcome::Ingested(Err("not a bundle".into())),
                costs.ingest_fixed,
            );
        };
        let from = self.idx(&peer);
        self.metrics.ingests += 1;
        let mut cost = costs.ingest_fixed;
        let (mut memories, mut branches, mut refused) = (0u64, 0u64, vec![]);
        let mut accepted: Vec<(u64, u8)> = vec![];
        for (a, commits) in bundle.branches {
            let a = a as usize;
            let Some(&first) = commits.first() else {
                continue;
            };
            if a >= self.nodes.len() {
                continue;
            }
            cost += costs.index_per_commit * commits.len() as u32;
            self.metrics.transfers += commits.len() as u64;
            let branch = format!("users/{}", &self.hexes[a][..16]);
            let start = self.records[first as usize - 1].seq;
            let shaped = commits.iter().enumerate().all(|(i, c)| {
                self.records
                    .get(*c as usize - 1)
                    .is_some_and(|r| r.author == a && r.seq == start + i)
            });
            let tip = *commits.last().expect("not empty");
            let key = self.nodes[a].key;
            let ours: &[u64] = self.nodes[n].store.chains.get(&key).map_or(&[], |v| v);
            let ours_len = ours.len();
            if !shaped || start > ours_len {
                self.metrics.duplicates +=
                    commits.iter().filter(|c| self.holds(n, a, **c)).count() as u64;
                refused.push(format!("{branch}: the incoming tip is not a commit"));
                continue;
            }
            if self.holds(n, a, tip) {
                // Unchanged (we hold it, or more).
                self.metrics.duplicates += commits.len() as u64;
                continue;
            }
            let overlap = ours_len.min(start + commits.len()) - start;
            if ours[start..start + overlap] != commits[..overlap] {
                self.metrics.duplicates += commits[..overlap]
                    .iter()
                    .filter(|c| self.holds(n, a, **c))
                    .count() as u64;
                refused.push(format!(
                    "{branch}: history was rewritten: the new tip does not descend from ours"
                ));
                continue;
            }
            self.metrics.duplicates += overlap as u64;
            let new = &commits[overlap..];
            for part in new.chunks(256) {
                cost += (costs.check_per_memory + costs.sig_per(part.len())) * part.len() as u32;
            }
            let bad = self.verify(new);
            if bad > 0 {
                self.metrics.forged_refused += bad as u64;
                refused.push(format!(
                    "{branch}: {bad} memories whose signature does not verify"
                ));
                continue;
            }
            let sender_hop = |w: &World, c: u64| -> u8 {
                from.map_or(0, |f| get_hop(&w.nodes[f].hops, c).unwrap_or(0))
            };
            for c in new {
                accepted.push((*c, sender_hop(self, *c).saturating_add(1)));
            }
            self.nodes[n]
                .store
                .chains
                .entry(key)
                .or_default()
                .extend_from_slice(new);
            memories += new.len() as u64;
            self.nodes[n].store.version += 1;
            branches += 1;
        }
        let done = self.now + cost;
        for (c, hop) in accepted {
            set_hop(&mut self.nodes[n].hops, c, hop);
            let m = &mut self.metrics.memories[c as usize - 1];
            if m.forged {
                continue;
            }
            m.holders += 1;
            m.max_hop = m.max_hop.max(hop);
            if m.holders == m.targets && m.done.is_none() {
                m.done = Some(done);
                self.undelivered -= 1;
            }
        }
        let summary = IngestSummary {
            transfer_id: info.transfer_id,
            memories,
            branches,
            refused,
        };
        (Outcome::Ingested(Ok(summary)), cost)
    }

    /// Verifies the signatures of records `cs` (batches of up to 256, one by
    /// one only after a failed batch); returns how many do not verify.
    fn verify(&mut self, cs: &[u64]) -> usize {
        let w = Instant::now();
        let mut bad = 0;
        let todo: Vec<u64> = match self.cfg.verify {
            VerifyMode::Every => cs.to_vec(),
            VerifyMode::Memo => {
                if self.verified.len() < self.records.len() {
                    self.verified.resize(self.records.len(), 0);
                }
                bad += cs
                    .iter()
                    .filter(|c| self.verified[**c as usize - 1] == 2)
                    .count();
                cs.iter()
                    .copied()
                    .filter(|c| self.verified[*c as usize - 1] == 0)
                    .collect()
            }
        };
        for part in todo.chunks(256) {
            let recs: Vec<&Record> = part
                .iter()
                .map(|c| &self.records[*c as usize - 1])
                .collect();
            let msgs: Vec<&[u8]> = recs.iter().map(|r| r.bytes.as_slice()).collect();
            let sigs: Vec<_> = recs.iter().map(|r| r.sig).collect();
            let keys: Vec<PublicKey> = recs.iter().map(|r| self.nodes[r.author].key).collect();
            self.metrics.verifications += part.len() as u64;
            let results: Vec<bool> = if mmogit_identity::verify_batch(&msgs, &sigs, &keys).is_ok() {
                vec![true; part.len()]
            } else {
                recs.iter()
                    .zip(&keys)
                    .map(|(r, k)| k.verify(&r.bytes, &r.sig).is_ok())
                    .collect()
            };
            for (c, ok) in part.iter().zip(results) {
                if !ok {
                    bad += 1;
                }
                if self.cfg.verify == VerifyMode::Memo {
                    self.verified[*c as usize - 1] = if ok { 1 } else { 2 };
                }
            }
        }
        self.metrics.wall_verify += w.elapsed();
        bad
    }

    /// The summary of the run so far.
    pub fn report(&self) -> Report {
        let m = &self.metrics;
        let real: Vec<&MemoryStat> = m.memories.iter().filter(|x| !x.forged).collect();
        let done: Vec<&&MemoryStat> = real.iter().filter(|x| x.done.is_some()).collect();
        let c = &self.cfg.costs;
        let round = self.cfg.net.latency.mean()
            + c.ingest_fixed
            + c.index_per_commit
            + c.check_per_memory
            + c.sig_per(1);
        let round_ms = round.as_secs_f64() * 1e3;
        let times: Vec<f64> = done
            .iter()
            .map(|x| (x.done.expect("done") - x.written).as_secs_f64() * 1e3)
            .collect();
        let hops: Vec<f64> = done.iter().map(|x| x.max_hop as f64).collect();
        let rounds: Vec<f64> = times.iter().map(|t| t / round_ms).collect();
        let edges = self.edge_count();
        let memories = real.len();
        let msgs: u64 = m.msgs.iter().sum();
        let bytes: u64 = m.bytes.iter().sum();
        let min_transfers: u64 = real.iter().map(|x| x.targets as u64).sum();
        let min_bytes = min_transfers as f64 * c.bytes_per_memory as f64 * 4.0 / 3.0;
        let per = |x: f64| {
            if memories == 0 || edges == 0 {
                0.0
            } else {
                x / memories as f64 / edges as f64
            }
        };
        let ratio = |x: f64| if min_bytes > 0.0 { x / min_bytes } else { 0.0 };
        let k = |kind: Kind| Metrics::kind_index(kind);
        let nodes = self.nodes.len();
        Report {
            nodes,
            edges,
            memories,
            delivered: done.len(),
            time_ms: percentiles(times),
            hops: percentiles(hops),
            rounds: percentiles(rounds),
            round_ms,
            msgs,
            bytes,
            msgs_by_kind: KINDS
                .iter()
                .map(|x| (x.name(), m.msgs[k(*x)], m.bytes[k(*x)]))
                .collect(),
            msgs_per_memory_edge: per(msgs as f64),
            bytes_per_memory_edge: per(bytes as f64),
            bytes_over_min: ratio(bytes as f64),
            bundle_bytes_over_min: ratio(m.bytes[k(Kind::Chunk)] as f64),
            transfers: m.transfers,
            min_transfers,
            duplicates: m.duplicates,
            duplicate_share: if m.transfers > 0 {
                m.duplicates as f64 / m.transfers as f64
            } else {
                0.0
            },
            announces_per_memory: if memories > 0 {
                m.msgs[k(Kind::Announce)] as f64 / memories as f64
            } else {
                0.0
            },
            pulls_per_memory: if memories > 0 {
                m.msgs[k(Kind::Pull)] as f64 / memories as f64
            } else {
                0.0
            },
            ingests: m.ingests,
            forged_refused: m.forged_refused,
            retransmits: m.retransmits,
            dropped: m.dropped,
            dials: m.dials,
            dials_failed: m.dials_failed,
            sessions_broken: m.sessions_broken,
            inflight_peak_max: m.inflight_peak.iter().copied().max().unwrap_or(0),
            inflight_peak_mean: if nodes > 0 {
                m.inflight_peak.iter().sum::<u64>() as f64 / nodes as f64
            } else {
                0.0
            },
            sim_secs: self.now.duration_since(self.t0).as_secs_f64(),
            wall_service: m.wall_service,
            wall_verify: m.wall_verify,
            verifications: m.verifications,
            events: m.events,
            digest: self.digest,
        }
    }
}

/// The first 64 bits of a 64-hex key.
fn hex_prefix(hex: &str) -> Option<u64> {
    if hex.len() != 64 {
        return None;
    }
    u64::from_str_radix(hex.get(..16)?, 16).ok()
}

fn get_hop(hops: &[u8], c: u64) -> Option<u8> {
    hops.get(c as usize - 1).copied().filter(|h| *h != u8::MAX)
}

fn set_hop(hops: &mut Vec<u8>, c: u64, hop: u8) {
    let i = c as usize - 1;
    if hops.len() <= i {
        hops.resize(i + 1, u8::MAX);
    }
    hops[i] = hop;
}

fn new_service(
    cfg: &SimConfig,
    i: usize,
    key: PublicKey,
    seed: u64,
    epoch: u32,
    t0: Instant,
    wall0: SystemTime,
) -> Service {
    let mut sc = ServiceConfig {
        dial: cfg.dial,
        max_outbound: cfg.max_outbound,
        replication: Policy {
            me: key,
            max_transfer: 1 << 30,
            transfer_timeout: Duration::from_secs(60),
            transfer_deadline: Duration::from_secs(3600),
            quota_bytes: 1 << 30,
            quota_memories: 1_000_000,
        },
    };
    if let Some(f) = cfg.configure {
        f(i, &mut sc);
    }
    let s = seed
        .wrapping_mul(1000)
        .wrapping_add(i as u64)
        .wrapping_add((epoch as u64) << 40);
    Service::new(sc, s, t0, wall0)
}

/// One line of the trace for `io`.
fn describe(io: &Io, name: impl Fn(&PublicKey) -> String) -> String {
    match io {
        Io::Dial { peer, .. } => format!("dial {}", name(peer)),
        Io::Close { conn, reason } => format!("close #{conn} ({reason})"),
        Io::ReadPeerStore => "read peer store".into(),
        Io::WakeAt(_) => "wake".into(),
        Io::Replication(r) => match r {
            RIo::Send { peer, msg, .. } | RIo::SendLater { peer, msg, .. } => {
                let what = match msg {
                    Message::MemoryRequest(r) if r.sync.is_some() => format!("pull #{}", r.id),
                    Message::MemoryResponse(r) if r.ingested.is_some() => {
                        let s = r.ingested.as_ref().expect("checked");
                        format!("ingested {} memories", s.memories)
                    }
                    Message::MemoryResponse(r) if r.id.is_none() => format!(
                        "announce {}",
                        r.tips
                            .iter()
                            .flatten()
                            .map(|t| t.tip.trim_start_matches('0').to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    m => m.msg_type().to_string(),
                };
                format!("send {} {what}", name(peer))
            }
            RIo::Work { peer, work, .. } => {
                let w = match work {
                    Work::ServedTips => "served tips",
                    Work::OurTips(_) => "our tips",
                    Work::Lacking(_) => "lacking?",
                    Work::Start(_) => "start transfer",
                    Work::Chunk(_) => "chunk",
                    Work::Ingest => "ingest",
                };
                format!("work {w} ({})", name(peer))
            }
            RIo::Discard { peer } => format!("discard transfer of {}", name(peer)),
            RIo::Serve { peer, .. } => format!("serve {}", name(peer)),
            RIo::Answer { peer, .. } => format!("answer {}", name(peer)),
            RIo::Event(e) => match e {
                ReplicationEvent::Ingested {
                    peer,
                    memories,
                    refused,
                    ..
                } => format!(
                    "event ingested {memories} memories from {} ({} refused)",
                    name(peer),
                    refused.len()
                ),
                ReplicationEvent::PullFailed { peer, reason } => {
                    format!("event pull from {} failed: {reason}", name(peer))
                }
                ReplicationEvent::Sent { peer, commits, .. } => {
                    format!("event sent {commits} commits to {}", name(peer))
                }
            },
        },
    }
}

/// A run of issue 18's scenario: `n` nodes on `topology`, `memories`
/// written by random authors at uniformly random times in the write
/// window, then run until every memory is delivered (or `max_time`).
#[derive(Debug, Clone)]
pub struct MeshRun {
    pub n: usize,
    pub topology: Topology,
    pub memories: usize,
    /// Sessions form before the first write.
    pub warmup: Duration,
    pub window: Duration,
    pub seed: u64,
    pub cfg: SimConfig,
    /// Split the nodes in two halves (by index) `warmup` after the start
    /// for this long; the memories are then written during the split.
    pub partition: Option<Duration>,
    /// Give up this long after the last write (or the heal).
    pub max_time: Duration,
    /// Print a line of progress on stderr every simulated second.
    pub progress: bool,
}

/// What [`run_mesh`] measured.
#[derive(Debug, Clone)]
pub struct MeshResult {
    pub report: Report,
    /// From the heal until every memory is delivered everywhere.
    pub converged_after_heal: Option<Duration>,
    pub wall: Duration,
}

impl MeshRun {
    pub fn new(n: usize, memories: usize, seed: u64) -> MeshRun {
        MeshRun {
            n,
            topology: Topology::Regular(8),
            memories,
            warmup: Duration::from_secs(3),
            window: Duration::from_secs(10),
            seed,
            cfg: SimConfig::wan(),
            partition: None,
            max_time: Duration::from_secs(600),
            progress: false,
        }
    }
}

/// Runs `r`.
pub fn run_mesh(r: &MeshRun) -> MeshResult {
    let wall = Instant::now();
    let mut w = World::build(r.cfg.clone(), r.n, r.seed);
    let mut topo = StdRng::seed_from_u64(r.seed ^ 0x7090_7090);
    let edges = r.topology.edges(r.n, &mut topo);
    w.connect_graph(&edges);
    w.start();
    let mut load = StdRng::seed_from_u64(r.seed ^ 0x10ad_10ad);
    let begin = w.t0 + r.warmup;
    let heal = r.partition.map(|len| {
        let groups = (0..r.n).map(|i| (i >= r.n / 2) as u32).collect();
        w.partition(groups, begin, begin + len);
        begin + len
    });
    let window = match r.partition {
        Some(len) => r.window.min(len),
        None => r.window,
    };
    let mut writes: Vec<(Duration, usize)> = (0..r.memories)
        .map(|_| {
            (
                window.mul_f64(load.gen::<f64>()),
                load.gen_range(0..r.n.max(1)),
            )
        })
        .collect();
    writes.sort();
    let mut shown = w.t0;
    let mut show = |w: &World| {
        if r.progress && w.now >= shown + Duration::from_secs(1) {
            shown = w.now;
            eprintln!(
                "{} (wall {:.1}s)",
                w.progress(),
                wall.elapsed().as_secs_f64()
            );
        }
    };
    for (t, a) in writes {
        w.run_until(begin + t);
        w.remember_idx(a);
        show(&w);
    }
    let from = heal.unwrap_or(w.now).max(w.now);
    w.run_until(from);
    let deadline = from + r.max_time;
    while w.undelivered() > 0 && w.now < deadline {
        let next = w.now + Duration::from_millis(100);
        w.run_until(next);
        show(&w);
    }
    let report = w.report();
    let converged_after_heal = heal.and_then(|h| {
        w.metrics
            .all_delivered()
            .map(|t| t.saturating_duration_since(h))
    });
    MeshResult {
        report,
        converged_after_heal,
        wall: wall.elapsed(),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// A–B–C in a line; A writes a memory at 0.5 s; C starts at 1.5 s
    /// (B's dials to it fail until then, on B's jittered backoff).
    fn relay(seed: u64) -> World {
        let mut w = World::new("ABC", seed);
        let c = w.node('C');
        w.nodes[c].listening = false;
        w.trust('A', 'B');
        w.trust('B', 'A');
        w.trust('B', 'C');
        w.start();
        w.run_until(w.t0 + secs(0.5));
        w.remember('A');
        w.run_until(w.t0 + secs(1.5));
        w.nodes[c].listening = true;
        w.trust('C', 'B');
        w.run_until(w.t0 + secs(8.0));
        w
    }

    #[test]
    fn a_memory_is_relayed_from_a_through_b_to_c_the_same_way_every_run() {
        let w = relay(1);
        let (a, b, c) = (w.node('A'), w.node('B'), w.node('C'));
        let ka = w.nodes[a].key;
        // C holds A's memory, which it got from B (A and C never meet).
        assert_eq!(w.nodes[c].store.chains.get(&ka), Some(&vec![1]));
        assert_eq!(w.nodes[b].store.chains.get(&ka), Some(&vec![1]));
        let kb = w.nodes[b].key;
        assert!(
            w.nodes[c].events.iter().any(|e| matches!(e,
                ReplicationEvent::Ingested { peer, memories: 1, .. } if *peer == kb)),
            "{:?}",
            w.nodes[c].events
        );
        assert!(!w
            .trace
            .iter()
            .any(|l| l.contains(" A dial C") || l.contains(" C dial A")));
        // One session per pair: A and B both dialled; one connection each
        // way was closed as the duplicate, the other kept.
        assert_eq!(w.nodes[a].service.connected().len(), 1);
        assert_eq!(w.nodes[b].service.connected().len(), 2);
        assert_eq!(w.nodes[c].service.connected().len(), 1);
        // Same seed, same trace, line by line.
        let again = relay(1);
        assert_eq!(w.trace, again.trace);
        // Another seed jitters B's retries of C: another trace, same result.
        let other = relay(2);
        assert_ne!(w.trace, other.trace);
        assert_eq!(other.nodes[c].store, w.nodes[c].store);
        eprintln!("{}", w.trace.join("\n"));
    }

    #[test]
    fn a_blocked_peer_is_closed_and_not_dialled_again() {
        let mut w = World::new("AB", 1);
        w.trust('A', 'B');
        w.trust('B', 'A');
        w.start();
        w.run_until(w.t0 + secs(1.0));
        let (a, b) = (w.node('A'), w.node('B'));
        assert_eq!(w.nodes[a].service.connected().len(), 1);
        w.block('B', 'A');
        let from = w.trace.len();
        w.run_until(w.t0 + secs(10.0));
        assert!(w.nodes[b].service.connected().is_empty());
        assert!(w.nodes[a].service.connected().is_empty());
        let after = &w.trace[from..];
        assert!(
            after
                .iter()
                .any(|l| l.contains(" B close") && l.contains("not authorized")),
            "{after:?}"
        );
        // B never dials A again; A's dials to B may go on (B refuses them
        // in the handshake, which the simulator does not model).
        assert!(!after.iter().any(|l| l.contains(" B dial A")), "{after:?}");
        // A memory of A's no longer reaches B.
        w.remember('A');
        w.run_until(w.t0 + secs(12.0));
        assert!(!w.nodes[b].store.chains.contains_key(&w.nodes[a].key));
    }

    /// A small WAN mesh with the calibrated costs.
    fn small(n: usize, memories: usize, seed: u64) -> MeshRun {
        let mut r = MeshRun::new(n, memories, seed);
        r.window = Duration::from_secs(3);
        r.max_time = Duration::from_secs(120);
        r
    }

    #[test]
    fn the_same_seed_gives_the_same_run_and_another_seed_another() {
        let mut r = small(30, 40, 7);
        r.topology = Topology::SmallWorld { k: 4, beta: 0.2 };
        let a = run_mesh(&r);
        let b = run_mesh(&r);
        assert_eq!(a.report.delivered, 40, "{:?}", a.report);
        assert_eq!(a.report.digest, b.report.digest);
        assert_eq!(a.report.time_ms, b.report.time_ms);
        assert_eq!(a.report.bytes, b.report.bytes);
        assert_eq!(a.report.msgs_by_kind, b.report.msgs_by_kind);
        assert_eq!(a.report.duplicates, b.report.duplicates);
        r.seed = 8;
        let c = run_mesh(&r);
        assert_eq!(c.report.delivered, 40);
        assert_ne!(a.report.digest, c.report.digest);
        assert_ne!(a.report.bytes, c.report.bytes);
    }

    #[test]
    fn a_forged_memory_is_refused_by_every_node_that_pulls_it() {
        let mut w = World::build(SimConfig::wan(), 6, 3);
        let edges = Topology::Ring.edges(6, &mut StdRng::seed_from_u64(1));
        w.connect_graph(&edges);
        w.start();
        w.run_until(w.t0 + secs(3.0));
        // Node 2 forges a memory of node 0's; later 0 writes a real one.
        w.forge(2, 0);
        w.run_until(w.t0 + secs(10.0));
        w.remember_idx(0);
        w.run_until(w.t0 + secs(25.0));
        let k0 = w.nodes[0].key;
        // Node 2's neighbours pulled the forgery and refused it (its
        // signature does not verify); every node but the forger holds the
        // real memory alone (the forger refuses it: to it, a rewritten
        // history).
        assert!(w.metrics.forged_refused >= 1, "{:?}", w.report());
        for (i, x) in w.nodes.iter().enumerate() {
            if i == 2 {
                continue;
            }
            let chain = x.store.chains.get(&k0).cloned().unwrap_or_default();
            assert_eq!(chain.len(), 1, "node {i} holds the real memory");
            assert!(
                !w.records[chain[0] as usize - 1].forged,
                "node {i}: {chain:?}"
            );
        }
    }

    #[test]
    fn a_partition_breaks_sessions_and_the_mesh_converges_after_the_heal() {
        let mut r = small(24, 20, 5);
        r.topology = Topology::Regular(4);
        r.partition = Some(Duration::from_secs(40));
        let m = run_mesh(&r);
        assert_eq!(m.report.delivered, 20, "{:?}", m.report);
        assert!(m.report.sessions_broken > 0);
        assert!(m.report.dials_failed > 0, "dials across the cut fail");
        let conv = m.converged_after_heal.expect("converged");
        assert!(conv < Duration::from_secs(120), "{conv:?}");
        eprintln!("converged {conv:?} after the heal");
    }

    #[test]
    fn nodes_sharing_one_core_deliver_in_turn() {
        // A star: A writes, B..E pull it; each delivery costs 200 ms of CPU.
        // On a core each the four deliveries overlap; on one shared core
        // they take turns.
        let run = |cpu: Option<CpuShare>| {
            let mut cfg = SimConfig::classic();
            cfg.cpu = cpu;
            let mut w = World::with_names(cfg, "ABCDE".chars().map(String::from).collect(), 4);
            for x in ['B', 'C', 'D', 'E'] {
                w.trust('A', x);
                w.trust(x, 'A');
            }
            w.start();
            w.run_until(w.t0 + secs(1.0));
            let at = w.now;
            w.remember('A');
            w.run_until(at + secs(5.0));
            w.metrics.all_delivered().expect("delivered") - at
        };
        let each = run(Some(CpuShare {
            cores: 4,
            per_delivery: Duration::from_millis(200),
        }));
        let shared = run(Some(CpuShare {
            cores: 1,
            per_delivery: Duration::from_millis(200),
        }));
        assert!(each < secs(0.5), "{each:?}");
        assert!(shared >= secs(0.8), "four deliveries in turn: {shared:?}");
    }

    #[test]
    fn a_dial_across_a_cut_gets_through_at_the_syn_retransmission_after_the_heal() {
        // A and B are cut from the start until 2.5 s: A's first dial (at 0)
        // loses its SYNs at 0 and 1 s, the one at 3 s gets through (not
        // the dial timeout of 10 s, nor a backoff after it).
        let mut cfg = SimConfig::classic();
        cfg.net.dial_timeout = Duration::from_secs(10);
        let mut w = World::with_names(cfg, vec!["A".into(), "B".into()], 3);
        w.trust('A', 'B');
        w.trust('B', 'A');
        let t0 = w.t0;
        w.partition(vec![0, 1], t0, t0 + secs(2.5));
        w.start();
        let a = w.node('A');
        w.run_until(t0 + secs(2.9));
        assert!(w.nodes[a].service.connected().is_empty(), "cut until 2.5 s");
        w.run_until(t0 + secs(3.2));
        assert_eq!(w.nodes[a].service.connected().len(), 1, "through at 3 s");
        assert_eq!(w.metrics.dials_failed, 0);
    }

    #[test]
    fn a_node_that_restarts_or_joins_late_catches_up() {
        let mut cfg = SimConfig::wan();
        cfg.drift = 1e-3;
        let mut w = World::build(cfg, 8, 9);
        let edges = Topology::Ring.edges(8, &mut StdRng::seed_from_u64(2));
        w.connect_graph(&edges);
        w.stop_node(5); // joins later
        w.start();
        w.run_until(w.t0 + secs(3.0));
        w.remember_idx(0);
        w.stop_node(3);
        w.run_until(w.t0 + secs(5.0));
        w.remember_idx(1);
        w.start_node(3);
        w.run_until(w.t0 + secs(8.0));
        w.start_node(5);
        w.run_until(w.t0 + secs(40.0));
        assert_eq!(w.undelivered(), 0, "{:?}", w.report());
        for x in &w.nodes {
            assert_eq!(x.store.commits(), 2);
        }
    }

    #[test]
    fn loss_delays_by_a_retransmission_and_bandwidth_by_serialization() {
        let mut net = NetConfig::wan();
        net.loss = 0.5;
        let mut rng = StdRng::seed_from_u64(1);
        let lost = (0..1000)
            .filter(|_| !net.loss_delay(100, &mut rng).is_zero())
            .count();
        assert!((400..600).contains(&lost), "{lost}");
        // A 1 MB message spans 691 segments: at 1 % almost surely delayed.
        net.loss = 0.01;
        let big = (0..100)
            .filter(|_| !net.loss_delay(1_000_000, &mut rng).is_zero())
            .count();
        assert!(big > 95, "{big}");
        assert_eq!(net.serialization(12_500_000), Duration::from_secs(1));
    }
}
