//! What the benches share: settings from the environment, the binary under
//! test, and the deterministic memory corpus they import.

#![allow(dead_code)]

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A positive integer setting from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    match env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a positive integer, got {v:?}")),
        Err(_) => default,
    }
}

/// The release binary: cargo passes `CARGO_BIN_EXE_mmogit` to benches (built with the
/// `bench` profile, which inherits `release`). Fallback: `target/release/mmogit`,
/// built on demand.
pub fn mmogit_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_mmogit") {
        let p = PathBuf::from(p);
        if p.exists() {
            return p;
        }
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../target"));
    let bin = target.join("release").join("mmogit");
    if !bin.exists() {
        eprintln!("building {} ...", bin.display());
        let status = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "mmogit"])
            .current_dir(&manifest)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --release -p mmogit failed");
    }
    bin
}

/// Deterministic generator (xorshift64*), so every run imports the same corpus.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

pub const KINDS: &[&str] = &[
    "observation",
    "learning",
    "relationship",
    "task",
    "experience",
    "reflection",
    "question",
];
pub const TAGS: &[&str] = &[
    "rust", "git", "p2p", "crypto", "ed25519", "design", "perf", "user", "bug", "api", "storage",
    "sync", "ux", "docs", "testing", "network", "memory", "identity",
];
pub const SENTENCES: &[&str] = &[
    "The borrow checker rejected the shared mutable reference until the cache moved behind a mutex.",
    "Ed25519 signatures over the canonical JSON keep every memory verifiable offline by any peer.",
    "The user prefers short answers with a concrete example before any longer explanation.",
    "Packing thousands of small blobs into one pack file is much faster than loose objects.",
    "A fast-forward ref update with compare-and-swap avoids losing concurrent writes.",
    "Recall should show the newest memories first and filter by tag before loading contents.",
    "The peer refused the handshake because its clock skew exceeded the allowed window.",
    "Remember to rotate the test keys after the demo and document the recovery phrase flow.",
    "Sharding files by the first two hex digits keeps directory listings small in git trees.",
    "Why does the import slow down after the first batch? Probably tree rebuilding per commit.",
    "Today the sync between the laptop and the server finished without a single conflict.",
    "Private memories are encrypted with a key derived from the identity and still signed.",
    "Latency of a whole CLI call matters more to agents than raw throughput of the library.",
    "The design review agreed that branches are per author and files are only ever added.",
];

/// ~300-byte realistic content: sentences until the target length, plus a counter so
/// every memory is distinct.
pub fn content(rng: &mut Rng, i: usize) -> String {
    let mut s = String::with_capacity(340);
    while s.len() < 280 {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(rng.pick(SENTENCES));
    }
    let _ = write!(s, " (note {i})");
    s
}

/// Writes `n` memories as JSONL, the same corpus on every run.
pub fn generate_jsonl(path: &Path, n: usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = String::with_capacity(n * 420);
    for i in 0..n {
        let ntags = (rng.next() % 4) as usize; // 0..=3 tags
        let mut tags: Vec<&str> = Vec::new();
        for _ in 0..ntags {
            let t = rng.pick(TAGS);
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        let mut rec = serde_json::json!({
            "content": content(&mut rng, i),
            "type": rng.pick(KINDS),
            "tags": tags,
        });
        if rng.next().is_multiple_of(3) {
            rec["confidence"] = serde_json::json!((rng.next() % 100) as f64 / 100.0);
        }
        out.push_str(&rec.to_string());
        out.push('\n');
    }
    fs::write(path, out).expect("write jsonl");
}

/// `mmogit --home <home>`, with no home or log level from the environment.
pub fn mmogit(bin: &Path, home: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("--home").arg(home);
    c.env_remove("MMOGIT_HOME").env_remove("RUST_LOG");
    c
}

/// Panics with both streams unless `out` is a success.
pub fn check(what: &str, out: Output) -> Output {
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a command to completion (stdout captured and drained, as a caller
/// would), returning its wall time and output; it must succeed.
pub fn timed(what: &str, cmd: &mut Command) -> (Duration, Output) {
    cmd.stdin(Stdio::null());
    let t = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    (t.elapsed(), check(what, out))
}
