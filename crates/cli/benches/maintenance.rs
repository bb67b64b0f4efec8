//! Durability and maintenance benchmark (issue 15), everything in one run:
//!
//!  1. A repository of N memories imported in batches so that it holds
//!     PACKS small packs (`import --batch N/PACKS`), as many imports or
//!     ingests leave it.
//!  2. Before `mmogit gc`: `recall --limit 20` (whole process) RUNS times,
//!     and the ingest of a small bundle from a peer (one new memory, in
//!     process, as `serve` does it) RUNS times.
//!  3. `mmogit gc --grace 0s`, timed once; packs and loose objects before/after.
//!  4. The same measurements after gc.
//!  5. `mmogit remember` with about N memories present, RUNS times with
//!     fsync (the default) and RUNS times without (MMOGIT_BENCH_NO_FSYNC=1:
//!     the same code with every fsync skipped, which is what the fsyncs
//!     cost), interleaved so that both see the same load.
//!
//! Run: `cargo bench -p mmogit --bench maintenance`
//!   MMOGIT_BENCH_N      memories (default 10000)
//!   MMOGIT_BENCH_PACKS  packs before gc (default 1000)
//!   MMOGIT_BENCH_RUNS   repetitions of each measurement (default 30)

use std::path::Path;
use std::time::{Duration, Instant};

use mmogit_identity::PublicKey;
use mmogit_store::Store;

mod common;

use common::{check, env_usize, generate_jsonl, mmogit, mmogit_bin, timed};

/// (median, p90).
fn stats(mut xs: Vec<Duration>) -> (Duration, Duration) {
    xs.sort();
    let n = xs.len();
    (xs[n / 2], xs[(n * 9 / 10).min(n - 1)])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn pubkey(bin: &Path, home: &Path) -> PublicKey {
    let out = check(
        "whoami",
        mmogit(bin, home)
            .args(["whoami", "--json"])
            .output()
            .unwrap(),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pubkey"].as_str().unwrap().parse().unwrap()
}

fn recall_runs(bin: &Path, home: &Path, runs: usize) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            timed(
                "recall",
                mmogit(bin, home).args(["recall", "--limit", "20", "--json"]),
            )
            .0
        })
        .collect()
}

/// The peer remembers one memory; its bundle (what we lack of its branch)
/// is ingested into `home`'s repository. Only the ingest is timed.
fn ingest_runs(
    bin: &Path,
    home: &Path,
    peer: &Path,
    peer_key: &PublicKey,
    dir: &Path,
    runs: usize,
    round: &str,
) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..runs {
        check(
            "peer remember",
            mmogit(bin, peer)
                .args(["remember", &format!("peer memory {round} {i}")])
                .output()
                .unwrap(),
        );
        let ours = Store::open(&home.join("memories.git")).unwrap();
        let have: Vec<_> = ours
            .tip(peer_key)
            .unwrap()
            .map(|t| (*peer_key, t))
            .into_iter()
            .collect();
        let theirs = Store::open(&peer.join("memories.git")).unwrap();
        let bundle = theirs
            .build_bundle(&have, None, 1 << 30)
            .unwrap()
            .expect("something new");
        let path = dir.join(format!("b-{round}-{i}.bundle"));
        std::fs::write(&path, &bundle.bytes).unwrap();
        let t = Instant::now();
        let report = ours
            .ingest_bundle(&path, &format!("bench{round}{i}"))
            .unwrap();
        out.push(t.elapsed());
        assert!(report.is_ok() && report.memories_added() == 1, "{report:?}");
        std::fs::remove_file(&path).unwrap();
    }
    out
}

fn counts(home: &Path) -> mmogit_store::ObjectCounts {
    Store::open(&home.join("memories.git"))
        .unwrap()
        .object_counts()
}

fn main() {
    let n = env_usize("MMOGIT_BENCH_N", 10_000);
    let packs = env_usize("MMOGIT_BENCH_PACKS", 1_000).max(1);
    let runs = env_usize("MMOGIT_BENCH_RUNS", 30).max(2);
    let bin = mmogit_bin();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("a");
    let peer = tmp.path().join("b");
    for h in [&home, &peer] {
        check("init", mmogit(&bin, h).arg("init").output().unwrap());
    }
    let peer_key = pubkey(&bin, &peer);
    let jsonl = tmp.path().join("m.jsonl");
    generate_jsonl(&jsonl, n);
    let batch = n.div_ceil(packs).max(1);
    let t = Instant::now();
    check(
        "import",
        mmogit(&bin, &home)
            .arg("import")
            .arg(&jsonl)
            .args(["--batch", &batch.to_string()])
            .output()
            .unwrap(),
    );
    eprintln!(
        "imported {n} memories in batches of {batch} in {:.1?}",
        t.elapsed()
    );
    // Build the index once, as any first recall would.
    recall_runs(&bin, &home, 1);

    let before = counts(&home);
    let recall_before = stats(recall_runs(&bin, &home, runs));
    let ingest_before = stats(ingest_runs(
        &bin,
        &home,
        &peer,
        &peer_key,
        tmp.path(),
        runs,
        "x",
    ));
    let counts_mid = counts(&home);

    let (gc_time, gc_out) = timed(
        "gc",
        mmogit(&bin, &home).args(["gc", "--grace", "0s", "--json"]),
    );
    let gc: serde_json::Value = serde_json::from_slice(&gc_out.stdout).unwrap();
    let after = counts(&home);
    recall_runs(&bin, &home, 1);
    let recall_after = stats(recall_runs(&bin, &home, runs));
    let ingest_after = stats(ingest_runs(
        &bin,
        &home,
        &peer,
        &peer_key,
        tmp.path(),
        runs,
        "y",
    ));

    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let mut c = mmogit(&bin, &home);
        c.args(["remember", &format!("durable {i}")]);
        with.push(timed("remember", &mut c).0);
        let mut c = mmogit(&bin, &home);
        c.args(["remember", &format!("not synced {i}")])
            .env(mmogit_store::NO_FSYNC_ENV, "1");
        without.push(timed("remember (no fsync)", &mut c).0);
    }
    let (with, without) = (stats(with), stats(without));

    println!("\n## Maintenance and durability, N = {n}, RUNS = {runs}\n");
    println!(
        "repository before gc: {} packs, {} loose objects, {:.1} MiB ({} packs after the ingests)",
        before.packs,
        before.loose,
        before.bytes as f64 / 1048576.0,
        counts_mid.packs
    );
    println!(
        "`mmogit gc --grace 0s`: {} (reported {} ms), after: {} packs, {} loose objects, {:.1} MiB\n",
        ms(gc_time),
        gc["elapsed_ms"].as_f64().unwrap_or(0.0).round(),
        after.packs,
        after.loose,
        after.bytes as f64 / 1048576.0
    );
    println!("| measurement | before | after | target |");
    println!("|---|---|---|---|");
    let row = |what: &str, b: (Duration, Duration), a: (Duration, Duration), target: &str| {
        println!(
            "| {what} | {} (p90 {}) | {} (p90 {}) | {target} |",
            ms(b.0),
            ms(b.1),
            ms(a.0),
            ms(a.1)
        );
    };
    row(
        &format!(
            "recall --limit 20, whole process ({} packs → {})",
            before.packs, after.packs
        ),
        recall_before,
        recall_after,
        "–",
    );
    row(
        "ingest of a one-memory bundle (in process)",
        ingest_before,
        ingest_after,
        "–",
    );
    row(
        &format!("remember, whole process, ~{n} memories (before: fsync off; after: fsync on)"),
        without,
        with,
        "≤ 15 ms median",
    );
    if with.0 > Duration::from_millis(15) {
        println!("\nMISSED: remember with fsync {} > 15 ms", ms(with.0));
    }
}
