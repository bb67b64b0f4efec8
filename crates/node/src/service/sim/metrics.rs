//! What a run measured, and its summary ([`Report`]).
//!
//! Definitions (the same for every replication scheme, so that phase 2 of
//! issue 18 compares like with like):
//! * a memory is *delivered* when every node with a trust path to its
//!   author (mutual trust: a session needs both sides to trust each other)
//!   holds it; its *time* is from its writing to then;
//! * *hops*: the longest chain of transfers by which a node got it (the
//!   depth of its delivery tree);
//! * *rounds*: its time divided by one round = the mean one-way link
//!   latency plus the processing of one hop (the calibrated ingest of one
//!   memory: fixed cost, index, check, single signature);
//! * *transfers*: memories carried in bundles that reached an ingest; a
//!   *duplicate* is one the receiver already held; the minimum is each
//!   memory crossing each edge of a spanning tree of its author's
//!   component once (targets − 1 transfers);
//! * bytes are frames on the wire (version 1: length, JSON envelope,
//!   base64 payload, signature), estimated by [`super::net::wire_size`];
//!   the minimum bytes of one memory crossing one edge are its bundle bytes
//!   in base64 (800 × 4/3 = 1,067 bytes calibrated).

use std::time::{Duration, Instant};

use super::net::{Kind, KINDS};

/// Per memory.
#[derive(Debug, Clone)]
pub struct MemoryStat {
    pub written: Instant,
    /// Nodes other than the author with a trust path to it.
    pub targets: u32,
    pub holders: u32,
    pub done: Option<Instant>,
    pub max_hop: u8,
    pub forged: bool,
}

/// Counters of a run.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub memories: Vec<MemoryStat>,
    /// Messages and bytes sent, by [`Kind`] (in the order of [`KINDS`]).
    pub msgs: [u64; 6],
    pub bytes: [u64; 6],
    pub transfers: u64,
    pub duplicates: u64,
    pub ingests: u64,
    pub forged_refused: u64,
    /// Lost segments (messages delayed by a retransmission).
    pub retransmits: u64,
    /// Messages lost with a connection that broke.
    pub dropped: u64,
    pub dials: u64,
    pub dials_failed: u64,
    pub sessions_broken: u64,
    /// Per node: bytes sent and not yet arrived (its send queue and the
    /// wire), now and at peak.
    pub inflight: Vec<u64>,
    pub inflight_peak: Vec<u64>,
    /// Wall time in the services (`handle` and `next_io`) and in real
    /// signature verification; the rest of a run is the simulator.
    pub wall_service: Duration,
    pub wall_verify: Duration,
    pub verifications: u64,
    pub events: u64,
}

impl Metrics {
    pub fn kind_index(k: Kind) -> usize {
        KINDS.iter().position(|x| *x == k).expect("a kind")
    }

    pub fn sent(&mut self, node: usize, kind: Kind, bytes: u64) {
        let i = Metrics::kind_index(kind);
        self.msgs[i] += 1;
        self.bytes[i] += bytes;
        self.inflight[node] += bytes;
        if self.inflight[node] > self.inflight_peak[node] {
            self.inflight_peak[node] = self.inflight[node];
        }
    }

    pub fn arrived(&mut self, node: usize, bytes: u64) {
        self.inflight[node] = self.inflight[node].saturating_sub(bytes);
    }

    /// When every memory written so far (forgeries apart) was delivered;
    /// None while one is not.
    pub fn all_delivered(&self) -> Option<Instant> {
        let mut last = None;
        for m in self.memories.iter().filter(|m| !m.forged) {
            let d = m.done?;
            last = Some(last.map_or(d, |l: Instant| l.max(d)));
        }
        last
    }
}

/// p50, p99 and max of `v` (nearest rank).
pub fn percentiles(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    [at(0.50), at(0.99), v[v.len() - 1]]
}

/// A run's summary.
#[derive(Debug, Clone)]
pub struct Report {
    pub nodes: usize,
    pub edges: usize,
    pub memories: usize,
    pub delivered: usize,
    /// Milliseconds: p50, p99, max over delivered memories.
    pub time_ms: [f64; 3],
    pub hops: [f64; 3],
    pub rounds: [f64; 3],
    pub round_ms: f64,
    pub msgs: u64,
    pub bytes: u64,
    pub msgs_by_kind: Vec<(&'static str, u64, u64)>,
    /// Per memory per edge.
    pub msgs_per_memory_edge: f64,
    pub bytes_per_memory_edge: f64,
    /// All bytes over the spanning-tree minimum.
    pub bytes_over_min: f64,
    /// Bundle bytes alone over the same minimum.
    pub bundle_bytes_over_min: f64,
    pub transfers: u64,
    pub min_transfers: u64,
    pub duplicates: u64,
    pub duplicate_share: f64,
    pub announces_per_memory: f64,
    pub pulls_per_memory: f64,
    pub ingests: u64,
    pub forged_refused: u64,
    pub retransmits: u64,
    pub dropped: u64,
    pub dials: u64,
    pub dials_failed: u64,
    pub sessions_broken: u64,
    /// Peak bytes in flight from one node (max over nodes, and mean of the
    /// per-node peaks).
    pub inflight_peak_max: u64,
    pub inflight_peak_mean: f64,
    pub sim_secs: f64,
    pub wall_service: Duration,
    pub wall_verify: Duration,
    pub verifications: u64,
    pub events: u64,
    pub digest: u64,
}

impl Report {
    pub fn print(&self, title: &str) {
        println!("== {title}");
        println!(
            "   {} nodes, {} edges, {} memories, {} delivered to every node with a trust path; {:.1} s simulated",
            self.nodes, self.edges, self.memories, self.delivered, self.sim_secs
        );
        println!(
            "   delivery time p50/p99/max: {:.0} / {:.0} / {:.0} ms; hops {:.0} / {:.0} / {:.0}; rounds of {:.0} ms {:.1} / {:.1} / {:.1}",
            self.time_ms[0], self.time_ms[1], self.time_ms[2],
            self.hops[0], self.hops[1], self.hops[2],
            self.round_ms, self.rounds[0], self.rounds[1], self.rounds[2]
        );
        println!(
            "   messages {} ({:.2} per memory per edge), bytes {} ({:.0} per memory per edge; {:.1}x the spanning-tree minimum, bundles alone {:.2}x)",
            self.msgs, self.msgs_per_memory_edge, self.bytes, self.bytes_per_memory_edge,
            self.bytes_over_min, self.bundle_bytes_over_min
        );
        let kinds: Vec<String> = self
            .msgs_by_kind
            .iter()
            .filter(|(_, n, _)| *n > 0)
            .map(|(k, n, b)| format!("{k} {n} ({:.1} MB)", *b as f64 / 1e6))
            .collect();
        println!("   by kind: {}", kinds.join(", "));
        println!(
            "   transfers {} (minimum {}), duplicates {} = {:.1} %; announces per memory {:.0}, pulls per memory {:.1}; ingests {}",
            self.transfers, self.min_transfers, self.duplicates, self.duplicate_share * 100.0,
            self.announces_per_memory, self.pulls_per_memory, self.ingests
        );
        println!(
            "   retransmitted {}, lost with a broken session {}, dials {} ({} failed), sessions broken {}, forged refused {}",
            self.retransmits, self.dropped, self.dials, self.dials_failed, self.sessions_broken, self.forged_refused
        );
        println!(
            "   peak bytes in flight from one node: max {} B, mean {:.0} B",
            self.inflight_peak_max, self.inflight_peak_mean
        );
        println!(
            "   wall: services {:.2} s, signature verification {:.2} s ({} verified); {} events; digest {:016x}",
            self.wall_service.as_secs_f64(),
            self.wall_verify.as_secs_f64(),
            self.verifications,
            self.events,
            self.digest
        );
    }
}
