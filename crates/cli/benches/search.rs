//! Search benchmark: `recall --query`, the incremental index update after a
//! `remember`, and `reindex`, as whole processes, beside `git grep` over the
//! same branch in the same run.
//!
//! Run: `cargo bench -p mmogit --bench search`
//!   MMOGIT_BENCH_N     memories (default 100000)
//!   MMOGIT_BENCH_RUNS  repetitions per latency measurement (default 20)
//!
//! Corpus: the generator of the foundation bench (`benches/cli.rs`): ~300
//! bytes of realistic sentences per memory, 7 types, 0-3 tags, each ending in
//! a unique "(note <i>)". The sentences repeat a lot, so common words match
//! 20-60 % of all memories: a hard case for ranking.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{env_usize, generate_jsonl, mmogit, mmogit_bin};

fn timed(what: &str, cmd: &mut Command) -> (Duration, Output) {
    cmd.stdin(Stdio::null());
    let t = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let d = t.elapsed();
    // git grep exits 1 when nothing matches.
    if !out.status.success() && out.status.code() != Some(1) {
        panic!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    (d, out)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2
    }
}

fn p90(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    let rank = ((0.9 * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn repeat(runs: usize, mut f: impl FnMut() -> Duration) -> Vec<Duration> {
    f(); // warm-up
    (0..runs).map(|_| f()).collect()
}

fn main() {
    let n = env_usize("MMOGIT_BENCH_N", 100_000).max(1);
    let runs = env_usize("MMOGIT_BENCH_RUNS", 20).max(1);
    let bin = mmogit_bin();
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("mmogit-search-bench-")
        .tempdir()
        .expect("tempdir");
    let home = tmp.path().join("home");
    let jsonl = tmp.path().join("memories.jsonl");
    generate_jsonl(&jsonl, n);
    eprintln!("search bench: N={n} RUNS={runs} bin={}", bin.display());
    timed("init", mmogit(&bin, &home).args(["init", "-q"]));
    let pk = String::from_utf8(timed("whoami", mmogit(&bin, &home).arg("whoami")).1.stdout)
        .unwrap()
        .trim()
        .to_string();
    let repo = home.join("memories.git");
    eprintln!("[1/4] import");
    timed("import", mmogit(&bin, &home).arg("import").arg(&jsonl));

    // Full reindex, 3 times.
    eprintln!("[2/4] reindex x3");
    let mut reindex_wall = Vec::new();
    let mut reindex_rate = Vec::new();
    for _ in 0..3 {
        let (d, out) = timed("reindex", mmogit(&bin, &home).args(["reindex", "--json"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["memories"].as_u64(), Some(n as u64), "{v}");
        reindex_wall.push(d);
        reindex_rate.push(n as f64 / d.as_secs_f64());
    }
    reindex_rate.sort_by(f64::total_cmp);
    let index_bytes = std::fs::metadata(repo.join("mmogit/search.sqlite"))
        .map(|m| m.len())
        .unwrap_or(0);

    // Queries, each beside git grep over the same branch.
    eprintln!("[3/4] recall --query x{runs} per query, git grep");
    let branch = format!("users/{pk}");
    let probe = n / 2;
    let queries: Vec<(String, Vec<String>, Vec<String>)> = vec![
        (
            // One memory has this number.
            format!("{probe}"),
            vec![],
            vec!["-F".into(), "-e".into(), format!("(note {probe})")],
        ),
        (
            "\"borrow checker\"".into(),
            vec!["--limit".into(), "20".into()],
            vec![
                "-F".into(),
                "-i".into(),
                "-e".into(),
                "borrow checker".into(),
            ],
        ),
        (
            "handshake clock skew".into(),
            vec!["--limit".into(), "20".into()],
            vec![
                "-i".into(),
                "-e".into(),
                "handshake".into(),
                "-e".into(),
                "clock".into(),
                "-e".into(),
                "skew".into(),
            ],
        ),
        (
            "\"borrow checker\"".into(),
            vec![
                "--limit".into(),
                "20".into(),
                "--tag".into(),
                "rust".into(),
                "--type".into(),
                "learning".into(),
            ],
            vec![
                "-F".into(),
                "-i".into(),
                "-e".into(),
                "borrow checker".into(),
            ],
        ),
    ];
    let mut rows = Vec::new();
    for (q, extra, grep) in &queries {
        let mut args: Vec<String> = vec![
            "recall".into(),
            "--json".into(),
            "--query".into(),
            q.clone(),
        ];
        args.extend(extra.iter().cloned());
        let mut hits = 0;
        let xs = repeat(runs, || {
            let (d, out) = timed("recall --query", mmogit(&bin, &home).args(&args));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            hits = v.as_array().map(|a| a.len()).unwrap_or(0);
            d
        });
        let mut gargs: Vec<String> = vec!["grep".into(), "-l".into()];
        gargs.extend(grep.iter().cloned());
        gargs.push(branch.clone());
        let mut files = 0;
        let gs = repeat(runs.min(10), || {
            let (d, out) = timed(
                "git grep",
                Command::new("git").arg("--git-dir").arg(&repo).args(&gargs),
            );
            files = out
                .stdout
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
            d
        });
        rows.push((
            format!("recall --query '{q}' {}", extra.join(" ")),
            hits,
            median(xs.clone()),
            p90(xs),
            format!("git grep -l {}", grep.join(" ")),
            files,
            median(gs),
        ));
    }

    // Incremental update after one remember: the update itself (logged with
    // -v) and the whole recall --query process that did it.
    eprintln!("[4/4] remember + recall --query x{runs}");
    let mut update_ms = Vec::new();
    let mut after_remember = Vec::new();
    let mut remember_t = Vec::new();
    for i in 0..=runs {
        let (d, _) = timed(
            "remember",
            mmogit(&bin, &home).args([
                "remember",
                &format!("fresh bench memory {i} about zeppelins"),
            ]),
        );
        let (d2, out) = timed(
            "recall --query",
            mmogit(&bin, &home).args(["-v", "recall", "--query", "zeppelins", "--limit", "20"]),
        );
        let log = String::from_utf8_lossy(&out.stderr);
        let t = log
            .lines()
            .find(|l| l.contains("index updated"))
            .and_then(|l| l.split("ms=").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no update logged: {log}"));
        if i > 0 {
            update_ms.push(Duration::from_secs_f64(t / 1e3));
            after_remember.push(d2);
            remember_t.push(d);
        }
    }

    println!();
    println!("mmogit search benchmark: N={n} memories, RUNS={runs}");
    let cmd = |c: &mut Command| {
        c.output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    println!(
        "machine: nproc {}, CPU {cpu}, {}; date {}; {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cmd(Command::new("uname").arg("-sr")),
        cmd(Command::new("date").arg("-u")),
        cmd(Command::new("git").arg("--version")),
    );
    println!();
    println!(
        "| operation | hits | mmogit median (p90) | git grep baseline | files | target | result |"
    );
    println!("|---|---|---|---|---|---|---|");
    let verdict = |ok: bool| if ok { "pass" } else { "MISSED" };
    for (op, hits, med, p, gop, files, gmed) in &rows {
        println!(
            "| `{op}` | {hits} | {:.1} ms ({:.1}) | {:.1} ms `{gop}` | {files} | <= 50 ms | {} |",
            ms(*med),
            ms(*p),
            ms(*gmed),
            verdict(ms(*med) <= 50.0)
        );
    }
    let upd = median(update_ms.clone());
    println!(
        "| index update after one remember (logged by the process) | - | {:.2} ms ({:.2}) | - | - | <= 5 ms | {} |",
        ms(upd),
        ms(p90(update_ms)),
        verdict(ms(upd) <= 5.0)
    );
    println!(
        "| `recall --query zeppelins --limit 20` right after a remember (whole process) | - | {:.1} ms ({:.1}) | - | - | <= 50 ms | {} |",
        ms(median(after_remember.clone())),
        ms(p90(after_remember.clone())),
        verdict(ms(median(after_remember)) <= 50.0)
    );
    println!(
        "| remember (whole process, info) | - | {:.1} ms | - | - | - | - |",
        ms(median(remember_t))
    );
    let rate = reindex_rate[1];
    println!(
        "| reindex {n} (whole process, median of 3) | - | {:.0}/s ({:.2} s) | - | - | >= 20000/s | {} |",
        rate,
        median(reindex_wall).as_secs_f64(),
        verdict(rate >= 20_000.0)
    );
    println!();
    println!(
        "index size: {:.1} MiB; total bench time {:.0} s",
        index_bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
}
