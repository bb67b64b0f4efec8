//! A deterministic simulator of nodes: each runs the real [`Service`], on a
//! virtual clock, linked by in-process connections with a fixed latency,
//! with an in-memory store (branches as chains of numbered commits). No
//! socket, no thread, no wall clock: a run is a function of its scenario and
//! seed, so its action trace can be compared between runs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mmogit_identity::{Identity, PublicKey};
use mmogit_proto::{BranchTip, GitBundle, IngestSummary, MemoryResponse, Message, TransferInfo};

use super::replication::{Input as RInput, Io as RIo, Outcome, Policy, ReplicationEvent, Work};
use super::sessions::{Direction, DUPLICATE_SESSION};
use super::{DialParams, Input, Io, Service, ServiceConfig, SessionId};

/// One-way latency of every link.
const LATENCY: Duration = Duration::from_millis(5);
/// How often each node polls (the replicator's default).
const POLL: Duration = Duration::from_millis(100);

/// A node's memories: each author's branch as a chain of commit numbers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeStore {
    pub chains: BTreeMap<PublicKey, Vec<u64>>,
}

fn oid(c: u64) -> String {
    format!("{c:040x}")
}

impl FakeStore {
    fn tips(&self) -> Vec<BranchTip> {
        self.chains
            .iter()
            .filter_map(|(a, c)| {
                Some(BranchTip {
                    author: a.to_hex(),
                    tip: oid(*c.last()?),
                })
            })
            .collect()
    }

    fn has(&self, author: &PublicKey, tip: &str) -> bool {
        self.chains
            .get(author)
            .is_some_and(|c| c.iter().any(|x| oid(*x) == tip))
    }

    fn lacking(&self, tips: &[BranchTip]) -> bool {
        tips.iter().any(|t| match t.author.parse::<PublicKey>() {
            Ok(a) => !self.has(&a, &t.tip),
            Err(_) => false,
        })
    }

    /// The chains a peer holding `have` lacks something of.
    fn bundle(&self, have: &[BranchTip]) -> Vec<(String, Vec<u64>)> {
        self.chains
            .iter()
            .filter(|(a, c)| {
                let theirs = have.iter().find(|t| t.author == a.to_hex());
                c.last()
                    .is_some_and(|last| theirs.is_none_or(|t| t.tip != oid(*last)))
            })
            .map(|(a, c)| (a.to_hex(), c.clone()))
            .collect()
    }

    /// Takes the chains that extend ours; the number of new commits.
    fn ingest(&mut self, chains: Vec<(String, Vec<u64>)>) -> (u64, u64) {
        let (mut commits, mut branches) = (0, 0);
        for (a, chain) in chains {
            let Ok(a) = a.parse::<PublicKey>() else {
                continue;
            };
            let ours = self.chains.entry(a).or_default();
            if chain.len() > ours.len() && chain.starts_with(ours) {
                commits += (chain.len() - ours.len()) as u64;
                branches += 1;
                *ours = chain;
            }
        }
        (commits, branches)
    }
}

pub struct SimNode {
    pub name: char,
    pub key: PublicKey,
    pub addr: String,
    pub listening: bool,
    pub service: Service,
    pub store: FakeStore,
    /// Trusted peers and their addresses, as the peer store says.
    pub trusts: Vec<(PublicKey, Vec<String>)>,
    pub events: Vec<ReplicationEvent>,
    incoming: BTreeMap<PublicKey, (TransferInfo, Vec<u8>)>,
}

#[derive(Debug)]
enum Event {
    Input(usize, Box<Input>),
    Tick(usize),
    Poll(usize),
}

/// The other end of a connection: its node and its name there.
#[derive(Debug, Clone, Copy)]
struct End {
    node: usize,
    remote_node: usize,
    remote_conn: SessionId,
}

pub struct World {
    pub t0: Instant,
    pub now: Instant,
    pub nodes: Vec<SimNode>,
    pub trace: Vec<String>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Event>,
    seq: u64,
    conns: BTreeMap<SessionId, End>,
    next_conn: SessionId,
    next_commit: u64,
}

impl World {
    /// Nodes named `names`, keys from fixed secrets, every node's RNG
    /// seeded from `seed` and its index.
    pub fn new(names: &str, seed: u64) -> World {
        let t0 = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let nodes = names
            .chars()
            .enumerate()
            .map(|(i, name)| {
                let key = Identity::from_secret_bytes(&[i as u8 + 1; 32]).public_key();
                let cfg = ServiceConfig {
                    dial: DialParams {
                        base: Duration::from_millis(200),
                        cap: Duration::from_secs(5),
                        healthy: Duration::from_secs(2),
                    },
                    max_outbound: 8,
                    replication: Policy {
                        me: key,
                        max_transfer: 1 << 30,
                        transfer_timeout: Duration::from_secs(60),
                        transfer_deadline: Duration::from_secs(3600),
                        quota_bytes: 1 << 30,
                        quota_memories: 1_000_000,
                    },
                };
                SimNode {
                    name,
                    key,
                    addr: format!("10.0.0.{}:7420", i + 1),
                    listening: true,
                    service: Service::new(cfg, seed.wrapping_mul(1000) + i as u64, t0, wall0),
                    store: FakeStore::default(),
                    trusts: Vec::new(),
                    events: Vec::new(),
                    incoming: BTreeMap::new(),
                }
            })
            .collect();
        World {
            t0,
            now: t0,
            nodes,
            trace: Vec::new(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            conns: BTreeMap::new(),
            next_conn: 1,
            next_commit: 1,
        }
    }

    pub fn node(&self, name: char) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("a node of that name")
    }

    fn ms(&self) -> u128 {
        self.now.duration_since(self.t0).as_millis()
    }

    fn at(&mut self, t: Instant, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq)));
        self.events.insert(self.seq, e);
    }

    fn input(&mut self, after: Duration, node: usize, i: Input) {
        self.at(self.now + after, Event::Input(node, Box::new(i)));
    }

    /// `a` trusts `b` (at `b`'s address); the peer store is read at once.
    pub fn trust(&mut self, a: char, b: char) {
        let (ai, bi) = (self.node(a), self.node(b));
        let entry = (self.nodes[bi].key, vec![self.nodes[bi].addr.clone()]);
        self.nodes[ai].trusts.push(entry);
        let targets = self.nodes[ai].trusts.clone();
        self.input(Duration::ZERO, ai, Input::PeerStore(targets));
    }

    /// `a` removes `b` from its peer store.
    pub fn block(&mut self, a: char, b: char) {
        let (ai, bk) = (self.node(a), self.nodes[self.node(b)].key);
        self.nodes[ai].trusts.retain(|(k, _)| *k != bk);
        let targets = self.nodes[ai].trusts.clone();
        self.input(Duration::ZERO, ai, Input::PeerStore(targets));
    }

    /// `a` writes a memory now (a commit on its own branch).
    pub fn remember(&mut self, a: char) -> u64 {
        let ai = self.node(a);
        let c = self.next_commit;
        self.next_commit += 1;
        let key = self.nodes[ai].key;
        self.nodes[ai].store.chains.entry(key).or_default().push(c);
        c
    }

    /// Starts every node's polling.
    pub fn start(&mut self) {
        for i in 0..self.nodes.len() {
            self.at(self.now, Event::Poll(i));
        }
    }

    /// Runs events until `until` (virtual).
    pub fn run_until(&mut self, until: Instant) {
        while let Some(Reverse((t, seq))) = self.queue.peek().copied() {
            if t > until {
                break;
            }
            self.queue.pop();
            self.now = t;
            let e = self.events.remove(&seq).expect("each event once");
            match e {
                Event::Input(n, i) => self.handle(n, *i),
                Event::Tick(n) => self.handle(n, Input::Tick),
                Event::Poll(n) => {
                    self.handle(n, Input::Tick);
                    self.at(self.now + POLL, Event::Poll(n));
                }
            }
        }
        self.now = until;
    }

    /// Handles `i` at node `n`, and the results of the work it asks for
    /// at once (as the replicator runs store work inline).
    fn handle(&mut self, n: usize, i: Input) {
        let now = self.now;
        let mut inputs = VecDeque::from([i]);
        while let Some(i) = inputs.pop_front() {
            self.nodes[n].service.handle(now, i);
            while let Some(io) = self.nodes[n].service.next_io() {
                let line = describe(&io, &self.nodes);
                self.trace
                    .push(format!("{:>6} {} {line}", self.ms(), self.nodes[n].name));
                if let Some(back) = self.execute(n, io) {
                    inputs.push_back(back);
                }
            }
        }
    }

    fn execute(&mut self, n: usize, io: Io) -> Option<Input> {
        match io {
            Io::Dial { peer, addr } => {
                // The handshake proves both keys; a node that does not trust
                // the dialler refuses it there.
                let me = self.nodes[n].key;
                let target = self.nodes.iter().position(|x| {
                    x.addr == addr
                        && x.key == peer
                        && x.listening
                        && x.trusts.iter().any(|(k, _)| *k == me)
                });
                let Some(m) = target else {
                    self.input(
                        LATENCY,
                        n,
                        Input::DialFailed {
                            peer,
                            error: "connection refused".into(),
                        },
                    );
                    return None;
                };
                let (cn, cm) = (self.next_conn, self.next_conn + 1);
                self.next_conn += 2;
                self.conns.insert(
                    cn,
                    End {
                        node: n,
                        remote_node: m,
                        remote_conn: cm,
                    },
                );
                self.conns.insert(
                    cm,
                    End {
                        node: m,
                        remote_node: n,
                        remote_conn: cn,
                    },
                );
                let addr_of = |i: usize| -> SocketAddr { self.nodes[i].addr.parse().unwrap() };
                let (an, am) = (addr_of(n), addr_of(m));
                // The handshake: two round trips.
                let (kn, km) = (self.nodes[n].key, self.nodes[m].key);
                self.input(
                    LATENCY * 4,
                    m,
                    Input::Connected {
                        peer: kn,
                        direction: Direction::Inbound,
                        addr: an,
                        conn: cm,
                    },
                );
                self.input(
                    LATENCY * 4,
                    n,
                    Input::Connected {
                        peer: km,
                        direction: Direction::Outbound,
                        addr: am,
                        conn: cn,
                    },
                );
            }
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
                self.input(
                    LATENCY,
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
            Io::WakeAt(t) => self.at(t, Event::Tick(n)),
            Io::Replication(r) => return self.replicate(n, r).map(Input::Replication),
        }
        None
    }

    fn send(&mut self, conn: SessionId, msg: Message) -> bool {
        let Some(end) = self.conns.get(&conn).copied() else {
            return false;
        };
        let peer = self.nodes[end.node].key;
        self.input(
            LATENCY,
            end.remote_node,
            Input::Received {
                peer,
                conn: end.remote_conn,
                msg,
            },
        );
        true
    }

    fn replicate(&mut self, n: usize, io: RIo) -> Option<RInput> {
        let back = Input::Replication;
        match io {
            RIo::Send {
                peer,
                session,
                msg,
                if_full,
            } => {
                if !self.send(session, msg) && if_full != super::replication::IfFull::Drop {
                    return Some(RInput::NotQueued {
                        peer,
                        session,
                        what: if_full,
                        closed: true,
                    });
                }
            }
            RIo::SendLater { session, msg, .. } => {
                self.send(session, msg);
            }
            RIo::Work { job, peer, work } => {
                let outcome = self.work(n, peer, work);
                return Some(RInput::Done { job, outcome });
            }
            RIo::Discard { peer } => {
                self.nodes[n].incoming.remove(&peer);
            }
            RIo::Serve { peer, session, req } => {
                let store = &self.nodes[n].store;
                let have = req.sync.map(|s| s.have).unwrap_or_default();
                let mut chains = store.bundle(&have);
                // A targeted pull gets the branches it names only.
                if !req.authors.is_empty() {
                    chains.retain(|(a, _)| req.authors.contains(a));
                }
                let tips = store.tips();
                let mut sent = None;
                if chains.is_empty() {
                    let m = Message::MemoryResponse(MemoryResponse {
                        id: Some(req.id),
                        tips: Some(tips),
                        ..Default::default()
                    });
                    self.send(session, m);
                } else {
                    let data = serde_json::to_vec(&chains).unwrap();
                    let commits: usize = chains.iter().map(|(_, c)| c.len()).sum();
                    let info = TransferInfo {
                        transfer_id: req.id.to_string(),
                        total_size: data.len() as u64,
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
                        total_size: info.total_size,
                        sha256: info.sha256.clone(),
                        data: data.clone(),
                    });
                    if self.send(session, head) && self.send(session, chunk) {
                        sent = Some((data.len() as u64, commits as u64));
                    }
                }
                self.input(LATENCY, n, back(RInput::Served { peer, sent }));
            }
            RIo::Answer { peer, session, req } => {
                let m = Message::MemoryResponse(MemoryResponse {
                    id: Some(req.id),
                    ..Default::default()
                });
                self.send(session, m);
                return Some(RInput::Answered { peer });
            }
            RIo::Event(e) => self.nodes[n].events.push(e),
        }
        None
    }

    fn work(&mut self, n: usize, peer: PublicKey, work: Work) -> Outcome {
        let node = &mut self.nodes[n];
        match work {
            Work::ServedTips | Work::OurTips => Outcome::Tips(Ok(node.store.tips())),
            Work::Lacking(tips) => Outcome::Lacking(Ok(node.store.lacking(&tips))),
            Work::Start(info) => {
                node.incoming.insert(peer, (info, Vec::new()));
                Outcome::Started(Ok(()))
            }
            Work::Chunk(g) => match node.incoming.get_mut(&peer) {
                None => Outcome::Chunk(Err("chunk of no transfer".into())),
                Some((info, data)) => {
                    data.extend_from_slice(&g.data);
                    Outcome::Chunk(Ok(g.index + 1 == info.chunks))
                }
            },
            Work::Ingest => match node.incoming.remove(&peer) {
                None => Outcome::Ingested(Err("transfer already finished".into())),
                Some((info, data)) => {
                    let chains: Vec<(String, Vec<u64>)> =
                        serde_json::from_slice(&data).unwrap_or_default();
                    let (memories, branches) = node.store.ingest(chains);
                    Outcome::Ingested(Ok(IngestSummary {
                        transfer_id: info.transfer_id,
                        memories,
                        branches,
                        refused: vec![],
                    }))
                }
            },
        }
    }
}

/// One line of the trace for `io`.
fn describe(io: &Io, nodes: &[SimNode]) -> String {
    let name = |k: &PublicKey| {
        nodes
            .iter()
            .find(|n| n.key == *k)
            .map(|n| n.name)
            .unwrap_or('?')
    };
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
                        let s = r.ingested.as_ref().unwrap();
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
                    Work::OurTips => "our tips",
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
}
