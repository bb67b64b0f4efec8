//! The simulator's store: a faithful stand-in for `mmogit-store`.
//!
//! Each author's branch is a chain of commits, one memory per commit. A
//! memory is a [`Record`] of the world: its signed bytes and a real Ed25519
//! signature by its author (or, for a forgery, by someone else). A node
//! holds a prefix of each author's chain ([`FakeStore`]); what it pulls is
//! a bundle of chain segments, shaped like the real `build_bundle`: per
//! branch, everything from the sender's tip back to the newest commit the
//! receiver said it has (its `have` tips that the sender knows), so a
//! receiver that is *ahead* of the sender on a branch gets the sender's
//! whole branch again, as with git. The ingest checks each branch like
//! `accept_incoming` (unchanged / rewritten / verified), verifies every new
//! memory's signature with `mmogit_identity` (batches of up to 256 per
//! branch, as `verify_history` does, one by one only to find the culprit of
//! a failed batch) and moves a branch only when all of its new memories
//! verify.
//!
//! Store work is charged simulated CPU time from [`Costs`], calibrated from
//! BENCHMARKS.md (see [`Costs::calibrated`]).

use std::collections::BTreeMap;
use std::time::Duration;

use mmogit_identity::{PublicKey, Signature};
use mmogit_proto::BranchTip;

/// A node's memories: each author's branch as a chain of commit numbers
/// (a commit number is its record's index + 1).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeStore {
    pub chains: BTreeMap<PublicKey, Vec<u64>>,
    /// Grows with every write: served tips unchanged since a read are
    /// answered `Outcome::Unchanged` (same cost, no copy).
    pub version: u64,
}

impl FakeStore {
    /// Commits held, over all branches.
    pub fn commits(&self) -> usize {
        self.chains.values().map(Vec::len).sum()
    }
}

/// A memory as written: who it claims as author, its place in that
/// author's chain, its bytes and signature.
#[derive(Debug, Clone)]
pub struct Record {
    /// The claimed author (a node index).
    pub author: usize,
    /// Position in the author's chain.
    pub seq: usize,
    pub bytes: Vec<u8>,
    pub sig: Signature,
    /// Made by [`super::World::forge`] (for the metrics only: the
    /// verification does not look at it).
    pub forged: bool,
}

/// The commit id on the wire.
pub fn oid(c: u64) -> String {
    format!("{c:040x}")
}

/// The commit number of a wire commit id (ours are numbers in hex).
pub fn parse_oid(s: &str) -> Option<u64> {
    if s.len() != 40 {
        return None;
    }
    let (hi, lo) = s.split_at(24);
    if hi.bytes().any(|b| b != b'0') {
        return None;
    }
    u64::from_str_radix(lo, 16).ok()
}

/// A bundle as the simulator carries it in `GitBundle.data`: per branch
/// (author index), the commits sent, oldest first, ending at the sender's
/// tip. Encoded compactly; its *wire* size is [`Costs::bundle_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimBundle {
    pub branches: Vec<(u32, Vec<u64>)>,
    /// `have` tips the sender knew (listed as prerequisites in a real bundle).
    pub known: u32,
}

impl SimBundle {
    pub fn commits(&self) -> usize {
        self.branches.iter().map(|(_, c)| c.len()).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.commits() * 8 + self.branches.len() * 8);
        out.extend_from_slice(&self.known.to_le_bytes());
        out.extend_from_slice(&(self.branches.len() as u32).to_le_bytes());
        for (a, cs) in &self.branches {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&(cs.len() as u32).to_le_bytes());
            for c in cs {
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        out
    }

    pub fn decode(data: &[u8]) -> Option<SimBundle> {
        let mut at = 0usize;
        let u32_ = |at: &mut usize| -> Option<u32> {
            let v = u32::from_le_bytes(data.get(*at..*at + 4)?.try_into().ok()?);
            *at += 4;
            Some(v)
        };
        let known = u32_(&mut at)?;
        let n = u32_(&mut at)?;
        let mut branches = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let a = u32_(&mut at)?;
            let k = u32_(&mut at)? as usize;
            let mut cs = Vec::with_capacity(k);
            for _ in 0..k {
                cs.push(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?));
                at += 8;
            }
            branches.push((a, cs));
        }
        Some(SimBundle { branches, known })
    }
}

/// How a node's verification of incoming memories runs in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    /// Every node verifies every new memory it ingests, for real.
    Every,
    /// Each record's signature is verified for real once per world and the
    /// result reused by every later node. A record never changes, so every
    /// accept and refusal is the same as with `Every` (a forgery is its own
    /// record); only the process's CPU is saved. The *simulated* cost is
    /// charged at every hop either way.
    Memo,
}

/// Simulated CPU time of store work and wire sizes of bundles.
#[derive(Debug, Clone)]
pub struct Costs {
    /// Listing our branch tips: fixed part and per branch.
    pub tips_fixed: Duration,
    pub tips_per_branch: Duration,
    /// Checking an announce: per tip (the author key is parsed, the ref
    /// read and the ancestry checked).
    pub lacking_per_tip: Duration,
    /// Opening an incoming transfer (its checks, its file).
    pub start: Duration,
    /// Writing chunk bytes, per simulated byte.
    pub chunk_per_kib: Duration,
    /// One ingest: quarantine, pack index, fsyncs, compare-and-swap.
    pub ingest_fixed: Duration,
    /// Per commit of the pack (indexing it), new or not.
    pub index_per_commit: Duration,
    /// Per new memory: read the blob, parse, hash the id (signature apart).
    pub check_per_memory: Duration,
    /// Signature per memory by batch size: 1, 2–8, 9–63, 64 and more.
    pub sig: [Duration; 4],
    /// Building a bundle (in a task of its own: it delays the sending, it
    /// does not block the node's loop): fixed part and per commit.
    pub serve_fixed: Duration,
    pub serve_per_commit: Duration,
    /// Wire size of one memory in a bundle (commit, tree delta, blob).
    pub bytes_per_memory: u64,
    /// Bundle header: fixed, per prerequisite, per branch.
    pub bundle_fixed: u64,
    pub bundle_per_known: u64,
    pub bundle_per_branch: u64,
}

impl Costs {
    /// No CPU time at all (the first simulator's behaviour); bundle sizes
    /// as calibrated.
    pub fn zero() -> Costs {
        Costs {
            tips_fixed: Duration::ZERO,
            tips_per_branch: Duration::ZERO,
            lacking_per_tip: Duration::ZERO,
            start: Duration::ZERO,
            chunk_per_kib: Duration::ZERO,
            ingest_fixed: Duration::ZERO,
            index_per_commit: Duration::ZERO,
            check_per_memory: Duration::ZERO,
            sig: [Duration::ZERO; 4],
            serve_fixed: Duration::ZERO,
            serve_per_commit: Duration::ZERO,
            ..Costs::calibrated()
        }
    }

    /// Calibrated from BENCHMARKS.md (2 vCPU AMD EPYC; see the section
    /// "Mesh at scale (issue 18)" for the derivation):
    /// * signatures: bench_verify (2026-12-01): single 36.6 µs, batch of 8
    ///   23.5 µs, batch of 64 13.5 µs per signature; 9–63 interpolated
    ///   18.5 µs;
    /// * key parse 13.4 µs (bench_verify) + about 1.5 µs of ref lookup per
    ///   announced tip (estimate);
    /// * full sync of 10,000 memories (bench_sync, after the fixes): pack
    ///   index 180 ms → 18 µs per commit; verification 265 ms on two cores
    ///   = 53 µs of one core per memory, of which 13.5 µs is the batch
    ///   signature → 40 µs to read, parse and hash; bundle build 340 ms →
    ///   34 µs per commit;
    /// * incremental sync of 10 memories over an open session: 27–54 ms
    ///   end to end (fsync of pack and refs since issue 15) → 20 ms fixed
    ///   per ingest, 5 ms fixed per bundle build;
    /// * 10,000 memories ≈ 8 MB of bundle → 800 bytes per memory; header
    ///   lines as git writes them (41 bytes per prerequisite, about 110 per
    ///   branch).
    pub fn calibrated() -> Costs {
        let us = Duration::from_micros;
        Costs {
            tips_fixed: us(100),
            tips_per_branch: us(2),
            lacking_per_tip: us(15),
            start: us(200),
            chunk_per_kib: us(1),
            ingest_fixed: Duration::from_millis(20),
            index_per_commit: us(18),
            check_per_memory: us(40),
            sig: [
                Duration::from_nanos(36_600),
                Duration::from_nanos(23_500),
                Duration::from_nanos(18_500),
                Duration::from_nanos(13_500),
            ],
            serve_fixed: Duration::from_millis(5),
            serve_per_commit: us(34),
            bytes_per_memory: 800,
            bundle_fixed: 60,
            bundle_per_known: 41,
            bundle_per_branch: 110,
        }
    }

    /// Signature time per memory in a batch of `n`.
    pub fn sig_per(&self, n: usize) -> Duration {
        match n {
            0 | 1 => self.sig[0],
            2..=8 => self.sig[1],
            9..=63 => self.sig[2],
            _ => self.sig[3],
        }
    }

    /// The wire size of `b` as a real bundle.
    pub fn bundle_bytes(&self, b: &SimBundle) -> u64 {
        self.bundle_fixed
            + self.bundle_per_known * b.known as u64
            + self.bundle_per_branch * b.branches.len() as u64
            + self.bytes_per_memory * b.commits() as u64
    }

    pub fn tips(&self, branches: usize) -> Duration {
        self.tips_fixed + self.tips_per_branch * branches as u32
    }
}

/// The tips of `store`, authors' hex from `hex_of`, commit ids from `oid_of`.
pub fn tips_of(
    store: &FakeStore,
    hex_of: impl Fn(&PublicKey) -> String,
    oid_of: impl Fn(u64) -> String,
) -> Vec<BranchTip> {
    store
        .chains
        .iter()
        .filter_map(|(a, c)| {
            Some(BranchTip {
                author: hex_of(a),
                tip: oid_of(*c.last()?),
            })
        })
        .collect()
}
