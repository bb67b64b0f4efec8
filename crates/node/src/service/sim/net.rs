//! The simulated network: per-link latency, loss as TCP retransmission
//! delay, bandwidth, partitions; the wire size of messages; topologies.
//!
//! Sessions run over TCP, so a lost segment is not a lost message: the
//! sender retransmits and the message (and everything behind it on that
//! connection) arrives late. A message of `s` bytes spans ⌈s / 1448⌉
//! segments; with probability `1 − (1 − p)^segments` at least one of them
//! is lost, and the message is delayed by one retransmission timeout
//! (`rto`, 200 ms: Linux's minimum RTO, which dominates at these RTTs).
//! Two losses in one message, and fast retransmit (about one RTT instead of
//! an RTO for bulk transfers with later segments in flight) are not
//! modelled: the first is rare at 1 %, the second makes bulk loss cheaper
//! than modelled. Messages on one connection arrive in order (head-of-line
//! blocking behind a retransmission).
//!
//! A link has a one-way latency drawn once from [`Latency`] and a
//! bandwidth per direction (serialization delay `bytes / bandwidth`,
//! messages queue behind each other on the link). A partition cuts every
//! link between two groups for an interval. Nothing arrives across a cut:
//! a connection across it stays open while both ends wait (TCP holds what
//! was sent and delivers it after the heal) until the idle timeout (30 s,
//! the node's default: no heartbeat arrives) closes it on both ends, and
//! then what it held is lost; a dial across a cut fails after the dial
//! timeout (10 s). After the heal, nodes redial on their own backoff.

use std::time::{Duration, Instant};

use mmogit_proto::{BranchTip, Message};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// TCP payload per segment (1500-byte MTU, IPv4, TCP timestamps).
pub const SEGMENT: u64 = 1448;

/// One-way latency of a link, drawn once per link.
#[derive(Debug, Clone, Copy)]
pub enum Latency {
    Fixed(Duration),
    /// Uniform in `mean ± spread`.
    Uniform {
        mean: Duration,
        spread: Duration,
    },
}

impl Latency {
    pub fn draw(&self, rng: &mut StdRng) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { mean, spread } => {
                let lo = mean.saturating_sub(spread).as_secs_f64();
                let hi = (mean + spread).as_secs_f64();
                Duration::from_secs_f64(rng.gen_range(lo..=hi))
            }
        }
    }

    pub fn mean(&self) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { mean, .. } => mean,
        }
    }
}

/// The network's settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub latency: Latency,
    /// Probability that a TCP segment is lost.
    pub loss: f64,
    /// The delay a loss adds (retransmission timeout).
    pub rto: Duration,
    /// Bytes per second per link direction (`None`: no serialization delay).
    pub bandwidth: Option<u64>,
    /// Round trips of a dial until both sides hold an authenticated session
    /// (TCP handshake, then the protocol's handshake).
    pub handshake_rtts: u32,
    /// A session that receives nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A dial that gets no answer fails after this long.
    pub dial_timeout: Duration,
}

impl NetConfig {
    /// The first simulator's network: 5 ms fixed, nothing lost, no
    /// bandwidth limit.
    pub fn classic() -> NetConfig {
        NetConfig {
            latency: Latency::Fixed(Duration::from_millis(5)),
            loss: 0.0,
            rto: Duration::from_millis(200),
            bandwidth: None,
            handshake_rtts: 2,
            idle_timeout: Duration::from_secs(30),
            dial_timeout: Duration::from_secs(10),
        }
    }

    /// Issue 18's network: 50 ± 20 ms, 1 % loss, 100 Mbit/s links.
    pub fn wan() -> NetConfig {
        NetConfig {
            latency: Latency::Uniform {
                mean: Duration::from_millis(50),
                spread: Duration::from_millis(20),
            },
            loss: 0.01,
            rto: Duration::from_millis(200),
            bandwidth: Some(12_500_000),
            ..NetConfig::classic()
        }
    }

    /// The extra delay of a message of `bytes` (a retransmission or none).
    pub fn loss_delay(&self, bytes: u64, rng: &mut StdRng) -> Duration {
        if self.loss <= 0.0 {
            return Duration::ZERO;
        }
        let segments = bytes.div_ceil(SEGMENT).max(1);
        let p = 1.0 - (1.0 - self.loss).powf(segments as f64);
        if rng.gen::<f64>() < p {
            self.rto
        } else {
            Duration::ZERO
        }
    }

    pub fn serialization(&self, bytes: u64) -> Duration {
        match self.bandwidth {
            Some(bw) if bw > 0 => Duration::from_nanos(bytes.saturating_mul(1_000_000_000) / bw),
            _ => Duration::ZERO,
        }
    }
}

/// Links between two groups of nodes cut from `from` until `until`.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Group of each node (by index); links between different groups are cut.
    pub groups: Vec<u32>,
    pub from: Instant,
    pub until: Instant,
}

impl Partition {
    pub fn cuts(&self, a: usize, b: usize, t: Instant) -> bool {
        t >= self.from
            && t < self.until
            && self.groups.get(a).copied().unwrap_or(0) != self.groups.get(b).copied().unwrap_or(0)
    }
}

/// What kind of message, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Tips sent unasked (`MemoryResponse`, no id).
    Announce,
    /// A pull (`MemoryRequest` with `sync`).
    Pull,
    /// A pull's answer: the transfer announced, or nothing new.
    PullAnswer,
    /// Bundle bytes.
    Chunk,
    /// An `ingested` summary.
    Ingested,
    Other,
}

pub const KINDS: [Kind; 6] = [
    Kind::Announce,
    Kind::Pull,
    Kind::PullAnswer,
    Kind::Chunk,
    Kind::Ingested,
    Kind::Other,
];

impl Kind {
    pub fn of(msg: &Message) -> Kind {
        match msg {
            Message::MemoryRequest(r) if r.sync.is_some() => Kind::Pull,
            Message::MemoryResponse(r) if r.ingested.is_some() => Kind::Ingested,
            Message::MemoryResponse(r) if r.id.is_none() && r.tips.is_some() => Kind::Announce,
            Message::MemoryResponse(r) if r.id.is_some() => Kind::PullAnswer,
            Message::GitBundle(_) => Kind::Chunk,
            _ => Kind::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Announce => "announce",
            Kind::Pull => "pull",
            Kind::PullAnswer => "pull answer",
            Kind::Chunk => "bundle",
            Kind::Ingested => "ingested",
            Kind::Other => "other",
        }
    }
}

/// JSON bytes of one tip (`{"author":"<64>","tip":"<40>"}` and a comma).
const TIP_JSON: u64 = 127;

/// The size of `msg`'s frame on the wire (version 1: a 4-byte length, a
/// JSON envelope with the payload and the signature in base64; empty
/// payload fields left out), computed without serializing it; `bundle` is the simulated size of a chunk's
/// bundle bytes. Within a few percent of the real encoding (tested).
pub fn wire_size(msg: &Message, bundle: u64) -> u64 {
    // Empty fields are left out: each present one costs `"name":` + its
    // value + a comma.
    let field = |name: &str, value: u64| name.len() as u64 + 4 + value;
    let string = |s: &String| s.len() as u64 + 2;
    let list = |v: &Vec<String>| 2 + v.iter().map(|x| x.len() as u64 + 3).sum::<u64>();
    let tips = |t: &Vec<BranchTip>| 2 + TIP_JSON * t.len() as u64;
    let payload = match msg {
        Message::MemoryResponse(r) => {
            let mut n = 2;
            if let Some(id) = r.id {
                n += field("id", id.to_string().len() as u64);
            }
            if !r.memories.is_empty() {
                let m: u64 = r
                    .memories
                    .iter()
                    .map(|m| m.to_string().len() as u64 + 1)
                    .sum();
                n += field("memories", 2 + m);
            }
            if let Some(c) = &r.cursor {
                n += field("cursor", string(c));
            }
            if let Some(t) = &r.tips {
                n += field("tips", tips(t));
            }
            if let Some(t) = &r.transfer {
                n += field(
                    "transfer",
                    110 + t.transfer_id.len() as u64 + t.sha256.len() as u64 + 30,
                );
            }
            if let Some(e) = &r.error {
                n += field("error", string(e));
            }
            if let Some(s) = &r.ingested {
                let refused: u64 = s.refused.iter().map(|x| x.len() as u64 + 3).sum();
                n += field("ingested", 50 + s.transfer_id.len() as u64 + refused);
            }
            n
        }
        Message::MemoryRequest(r) => {
            let mut n = 2 + field("id", r.id.to_string().len() as u64);
            for (name, v) in [
                ("authors", &r.authors),
                ("types", &r.types),
                ("tags", &r.tags),
            ] {
                if !v.is_empty() {
                    n += field(name, list(v));
                }
            }
            if let Some(x) = &r.since {
                n += field("since", string(x));
            }
            if let Some(x) = &r.cursor {
                n += field("cursor", string(x));
            }
            if let Some(l) = r.limit {
                n += field("limit", l.to_string().len() as u64);
            }
            if let Some(sync) = &r.sync {
                let mut v = 2;
                if !sync.have.is_empty() {
                    v += field("have", tips(&sync.have));
                }
                if let Some(m) = sync.max_transfer {
                    v += field("max_transfer", m.to_string().len() as u64);
                }
                n += field("sync", v);
            }
            n
        }
        Message::GitBundle(g) => 4 + 70 + g.transfer_id.len() as u64 + 20 + 64 + 20 + bundle,
        other => other.encode_payload().len() as u64,
    };
    let msg_type = msg.msg_type().as_str().len() as u64;
    4 + 42 + msg_type + payload.div_ceil(3) * 4 + 88
}

/// A trust graph shape.
#[derive(Debug, Clone, Copy)]
pub enum Topology {
    Chain,
    Ring,
    /// Random `d`-regular graph.
    Regular(usize),
    /// Watts–Strogatz: a ring where each node links its `k` nearest
    /// (k/2 each side), each link rewired with probability `beta`.
    SmallWorld {
        k: usize,
        beta: f64,
    },
    /// Node 0 in the middle.
    Star,
    /// `teams` clusters, dense inside (complete up to 11 members, else a
    /// random 10-regular graph), joined in a ring of teams by `links`
    /// random links between neighbouring teams.
    Teams {
        teams: usize,
        links: usize,
    },
}

impl Topology {
    /// The undirected edges (a < b) of this shape on `n` nodes.
    pub fn edges(&self, n: usize, rng: &mut StdRng) -> Vec<(usize, usize)> {
        let mut e: Vec<(usize, usize)> = match *self {
            Topology::Chain => (1..n).map(|i| (i - 1, i)).collect(),
            Topology::Ring => {
                let mut e: Vec<_> = (1..n).map(|i| (i - 1, i)).collect();
                if n > 2 {
                    e.push((0, n - 1));
                }
                e
            }
            Topology::Regular(d) => regular(&(0..n).collect::<Vec<_>>(), d, rng),
            Topology::SmallWorld { k, beta } => small_world(n, k, beta, rng),
            Topology::Star => (1..n).map(|i| (0, i)).collect(),
            Topology::Teams { teams, links } => {
                let teams = teams.clamp(1, n.max(1));
                let members: Vec<Vec<usize>> = (0..teams)
                    .map(|t| (0..n).filter(|i| i % teams == t).collect())
                    .collect();
                let mut e = vec![];
                for m in &members {
                    if m.len() <= 11 {
                        for (i, a) in m.iter().enumerate() {
                            for b in &m[i + 1..] {
                                e.push((*a, *b));
                            }
                        }
                    } else {
                        e.extend(regular(m, 10, rng));
                    }
                }
                if teams > 1 {
                    for t in 0..teams {
                        let (x, y) = (&members[t], &members[(t + 1) % teams]);
                        if teams == 2 && t == 1 {
                            break;
                        }
                        for _ in 0..links.max(1) {
                            let a = *x.choose(rng).expect("a member");
                            let b = *y.choose(rng).expect("a member");
                            e.push((a, b));
                        }
                    }
                }
                e
            }
        };
        for x in e.iter_mut() {
            if x.0 > x.1 {
                *x = (x.1, x.0);
            }
        }
        e.retain(|(a, b)| a != b);
        e.sort_unstable();
        e.dedup();
        e
    }
}

/// A random `d`-regular graph on `nodes` (pairing stubs at random, never a
/// loop or a double edge, starting over when stuck: Steger–Wormald).
fn regular(nodes: &[usize], d: usize, rng: &mut StdRng) -> Vec<(usize, usize)> {
    let n = nodes.len();
    let d = d.min(n.saturating_sub(1));
    if n < 2 || d == 0 {
        return vec![];
    }
    let d = if (n * d) % 2 == 1 { d - 1 } else { d };
    for _ in 0..1000 {
        let mut stubs: Vec<usize> = (0..n).flat_map(|v| std::iter::repeat_n(v, d)).collect();
        let mut have = std::collections::HashSet::new();
        let mut edges = Vec::with_capacity(n * d / 2);
        let mut stuck = false;
        while stubs.len() >= 2 {
            let mut found = false;
            for _ in 0..200 {
                let i = rng.gen_range(0..stubs.len());
                let j = rng.gen_range(0..stubs.len());
                let (a, b) = (stubs[i], stubs[j]);
                let key = (a.min(b), a.max(b));
                if i == j || a == b || have.contains(&key) {
                    continue;
                }
                have.insert(key);
                edges.push(key);
                let (hi, lo) = (i.max(j), i.min(j));
                stubs.swap_remove(hi);
                stubs.swap_remove(lo);
                found = true;
                break;
            }
            if !found {
                stuck = true;
                break;
            }
        }
        if !stuck {
            return edges
                .into_iter()
                .map(|(a, b)| (nodes[a], nodes[b]))
                .collect();
        }
    }
    panic!("no {d}-regular graph on {n} nodes found");
}

fn small_world(n: usize, k: usize, beta: f64, rng: &mut StdRng) -> Vec<(usize, usize)> {
    let half = (k / 2).max(1);
    let mut have = std::collections::HashSet::new();
    let mut edges = vec![];
    for i in 0..n {
        for j in 1..=half {
            let b = (i + j) % n;
            if b != i {
                let key = (i.min(b), i.max(b));
                if have.insert(key) {
                    edges.push(key);
                }
            }
        }
    }
    for e in edges.iter_mut() {
        if rng.gen::<f64>() < beta {
            let a = e.0;
            for _ in 0..20 {
                let b = rng.gen_range(0..n);
                let key = (a.min(b), a.max(b));
                if b != a && !have.contains(&key) {
                    have.remove(e);
                    have.insert(key);
                    *e = key;
                    break;
                }
            }
        }
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmogit_proto::{BranchTip, GitBundle, MemoryRequest, MemoryResponse, SyncRequest};
    use rand::SeedableRng;

    fn real(msg: &Message) -> u64 {
        mmogit_proto::encode_frame(msg.msg_type(), &msg.encode_payload(), &[7u8; 64])
            .unwrap()
            .len() as u64
    }

    #[test]
    fn wire_sizes_are_within_a_few_percent_of_the_real_frames() {
        let tips: Vec<BranchTip> = (0..300u64)
            .map(|i| BranchTip {
                author: format!("{:064x}", i * 7919),
                tip: format!("{:040x}", i + 1),
            })
            .collect();
        let bundle = 8_000u64;
        let msgs = vec![
            Message::MemoryResponse(MemoryResponse {
                tips: Some(tips.clone()),
                ..Default::default()
            }),
            Message::MemoryResponse(MemoryResponse {
                tips: Some(tips[..1].to_vec()),
                ..Default::default()
            }),
            Message::MemoryRequest(MemoryRequest {
                id: 12,
                sync: Some(SyncRequest {
                    have: tips.clone(),
                    max_transfer: Some(1 << 30),
                }),
                ..Default::default()
            }),
            Message::MemoryResponse(MemoryResponse {
                id: Some(12),
                tips: Some(tips.clone()),
                transfer: Some(mmogit_proto::TransferInfo {
                    transfer_id: "12".into(),
                    total_size: bundle,
                    sha256: "00".repeat(32),
                    chunks: 1,
                    commits: 10,
                }),
                ..Default::default()
            }),
            Message::MemoryRequest(MemoryRequest {
                id: 13,
                authors: tips[..3].iter().map(|t| t.author.clone()).collect(),
                sync: Some(SyncRequest {
                    have: tips[..3].to_vec(),
                    max_transfer: Some(1 << 30),
                }),
                ..Default::default()
            }),
            Message::MemoryResponse(MemoryResponse {
                id: Some(13),
                tips: Some(tips[..3].to_vec()),
                ..Default::default()
            }),
            Message::MemoryResponse(MemoryResponse {
                ingested: Some(mmogit_proto::IngestSummary {
                    transfer_id: "12".into(),
                    memories: 10,
                    branches: 3,
                    refused: vec![],
                }),
                ..Default::default()
            }),
        ];
        for m in &msgs {
            let (est, real) = (wire_size(m, 0), real(m));
            let off = (est as f64 - real as f64).abs() / real as f64;
            assert!(off < 0.05, "{est} vs {real} for {m:?}");
        }
        let g = Message::GitBundle(GitBundle {
            transfer_id: "12".into(),
            index: 0,
            total_size: bundle,
            sha256: "00".repeat(32),
            data: vec![1; bundle as usize],
        });
        let (est, real) = (wire_size(&g, bundle), real(&g));
        assert!(
            (est as f64 - real as f64).abs() / (real as f64) < 0.02,
            "{est} vs {real}"
        );
    }

    #[test]
    fn topologies_have_their_shape() {
        let mut rng = StdRng::seed_from_u64(1);
        let n = 200;
        for d in [4, 8, 12] {
            let e = Topology::Regular(d).edges(n, &mut rng);
            let mut deg = vec![0; n];
            for (a, b) in &e {
                deg[*a] += 1;
                deg[*b] += 1;
            }
            assert!(deg.iter().all(|x| *x == d), "{d}-regular");
        }
        assert_eq!(Topology::Chain.edges(n, &mut rng).len(), n - 1);
        assert_eq!(Topology::Ring.edges(n, &mut rng).len(), n);
        assert_eq!(Topology::Star.edges(n, &mut rng).len(), n - 1);
        let sw = Topology::SmallWorld { k: 6, beta: 0.1 }.edges(n, &mut rng);
        assert_eq!(sw.len(), n * 3);
        let teams = Topology::Teams {
            teams: 10,
            links: 2,
        }
        .edges(n, &mut rng);
        assert!(teams.len() > 10 * 19 * 10 / 2 / 2);
        assert!(teams.iter().all(|(a, b)| a < b));
    }
}
