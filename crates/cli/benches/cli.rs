//! Foundation benchmark: the `mmogit` binary as a user runs it (whole processes),
//! printed beside a plain git baseline measured in the same run.
//!
//! Run: `cargo bench -p mmogit --bench cli`
//!   MMOGIT_BENCH_N     repository size in memories (default 10000)
//!   MMOGIT_BENCH_RUNS  repetitions of each per-command measurement (default 30)
//!   MMOGIT_BENCH_KEEP  if set, keep the temporary directories (printed) for profiling
//!
//! Steps (all in fresh temporary directories):
//!  1. `mmogit init`, then `mmogit import` of N generated memories (~300 bytes each).
//!  2. `mmogit remember` RUNS times with N memories present.
//!  3. `mmogit recall --limit 20` and `recall --limit 20 --json`, RUNS times each.
//!  4. `mmogit verify` of the whole repository, 3 times.
//!  5. Git baseline: a normal repository holding the same files in the same sharded
//!     layout; RUNS iterations of write one file + `git add` + `git commit`; reads
//!     with `git log -20`; `git fsck` as the integrity-check counterpart of verify.
//!  6. A table with targets. Missed targets are printed as MISSED; exit code stays 0.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{env_usize, generate_jsonl, mmogit, mmogit_bin, timed, Rng};

// ---------------------------------------------------------------------------
// Setup helpers

/// The benchmark's directory; removed on drop unless kept (MMOGIT_BENCH_KEEP).
struct TmpDir(PathBuf);
impl TmpDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

// ---------------------------------------------------------------------------
// Running and timing processes

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "user.name=b", "-c", "user.email=b@b"])
        // No background/auto gc in the middle of a measurement.
        .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"]);
    c
}

fn run(what: &str, cmd: &mut Command) -> Output {
    timed(what, cmd).1
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

struct Stats {
    /// Number of measured calls.
    n: usize,
    median: Duration,
    p90: Duration,
    /// Mean CPU (user + sys) per call of the measured processes, if known.
    cpu: Option<Duration>,
}

impl Stats {
    fn with_cpu(mut self, total: Duration, calls: usize) -> Stats {
        if !total.is_zero() {
            self.cpu = Some(total / calls as u32);
        }
        self
    }
}

/// CPU time (user + sys) of all reaped child processes so far, from /proc/self/stat
/// (cutime + cstime, in clock ticks of 10 ms: only meaningful summed over many calls).
/// Zero where unavailable. Unlike wall time, it is not inflated by other load.
fn children_cpu() -> Duration {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 16 (cutime) and 17 (cstime); `after` starts at field 3.
    let ticks = f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Runs `f`, returning its result and the CPU its child processes used.
fn cpu_of<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let before = children_cpu();
    let r = f();
    (r, children_cpu().saturating_sub(before))
}

fn stats(mut xs: Vec<Duration>) -> Stats {
    assert!(!xs.is_empty());
    xs.sort();
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2
    };
    // Nearest-rank percentile.
    let rank = ((0.9 * n as f64).ceil() as usize).clamp(1, n);
    Stats {
        n,
        median,
        p90: xs[rank - 1],
        cpu: None,
    }
}

/// Repetitions for a command whose warm-up call took `warm`: calls slower than
/// 300 ms are repeated at most 5 times, to keep a full run near two minutes.
fn reps_for(warm: Duration, runs: usize) -> usize {
    if warm > Duration::from_millis(300) {
        runs.min(5)
    } else {
        runs
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------
// Report

enum Target {
    /// Lower is better: value must be <= limit.
    AtMostMs(f64),
    /// Higher is better: rate must be >= limit.
    AtLeastPerSec(f64),
}

struct Row {
    op: String,
    mmogit: String,
    baseline: String,
    ratio: String,
    target: String,
    verdict: &'static str,
}

fn verdict(t: &Target, value: f64) -> (String, &'static str) {
    match *t {
        Target::AtMostMs(l) => (
            format!("<= {l} ms"),
            if value <= l { "pass" } else { "MISSED" },
        ),
        Target::AtLeastPerSec(l) => (
            format!(">= {l}/s"),
            if value >= l { "pass" } else { "MISSED" },
        ),
    }
}

fn fmt_stats(s: &Stats) -> String {
    match s.cpu {
        Some(c) => format!(
            "{:.1} ms (p90 {:.1}, cpu {:.1})",
            ms(s.median),
            ms(s.p90),
            ms(c)
        ),
        None => format!("{:.1} ms (p90 {:.1})", ms(s.median), ms(s.p90)),
    }
}

fn latency_row(op: &str, m: &Stats, base: Option<&Stats>, target: Target) -> Row {
    let (target_s, v) = verdict(&target, ms(m.median));
    Row {
        op: format!("{op} [n={}]", m.n),
        mmogit: fmt_stats(m),
        baseline: base.map(fmt_stats).unwrap_or_else(|| "-".into()),
        ratio: base
            .map(|b| format!("{:.2}x", m.median.as_secs_f64() / b.median.as_secs_f64()))
            .unwrap_or_else(|| "-".into()),
        target: target_s,
        verdict: v,
    }
}

fn print_table(rows: &[Row]) {
    let head = [
        "operation",
        "mmogit",
        "git baseline",
        "ratio",
        "target",
        "pass/fail",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.op.clone(),
                r.mmogit.clone(),
                r.baseline.clone(),
                r.ratio.clone(),
                r.target.clone(),
                r.verdict.to_string(),
            ]
        })
        .collect();
    let mut w = head.map(|h| h.len());
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let mut s = String::from("|");
        for (i, x) in c.iter().enumerate() {
            let _ = write!(s, " {:<width$} |", x, width = w[i]);
        }
        s
    };
    println!("{}", line(head));
    let mut sep = String::from("|");
    for x in w {
        let _ = write!(sep, "{}|", "-".repeat(x + 2));
    }
    println!("{sep}");
    for c in &cells {
        println!("{}", line([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]]));
    }
}

fn machine_info(bin: &Path) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cmd_out = |c: &mut Command| {
        c.output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let date = cmd_out(Command::new("date").arg("-u"));
    let gitv = cmd_out(Command::new("git").arg("--version"));
    let mv = cmd_out(Command::new(bin).arg("--version"));
    let kernel = cmd_out(Command::new("uname").arg("-sr"));
    format!(
        "machine: nproc {nproc}, CPU {model}, RAM {ram}, {kernel}\n\
         date:    {date}\n\
         tools:   {mv}, {gitv}"
    )
}

// ---------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter); nothing to parse.
    let n = env_usize("MMOGIT_BENCH_N", 10_000).max(1);
    let runs = env_usize("MMOGIT_BENCH_RUNS", 30).max(1);
    let bin = mmogit_bin();
    let started = Instant::now();
    eprintln!("mmogit bench: N={n} RUNS={runs} bin={}", bin.display());

    let tmp = tempfile::Builder::new()
        .prefix("mmogit-bench-")
        .tempdir()
        .expect("tempdir");
    // MMOGIT_BENCH_KEEP=1 keeps the directories (home, JSONL, git baseline) for profiling.
    let tmp_path = if env::var_os("MMOGIT_BENCH_KEEP").is_some() {
        let p = tmp.keep();
        eprintln!("keeping {}", p.display());
        p
    } else {
        tmp.path().to_path_buf()
    };
    let tmp = TmpDir(tmp_path);
    let home = tmp.path().join("home");
    let jsonl = tmp.path().join("memories.jsonl");
    generate_jsonl(&jsonl, n);
    let jsonl_bytes = fs::metadata(&jsonl).map(|m| m.len()).unwrap_or(0);

    // 1. init + import
    run("mmogit init", mmogit(&bin, &home).args(["init", "--json"]));
    let pk = stdout(&run("mmogit whoami", mmogit(&bin, &home).arg("whoami")));
    let repo = home.join("memories.git");
    eprintln!(
        "[1/5] import {n} memories ({} KiB JSONL)",
        jsonl_bytes / 1024
    );
    let ((import_t, out), import_cpu) = cpu_of(|| {
        timed(
            "mmogit import",
            mmogit(&bin, &home).arg("import").arg("--json").arg(&jsonl),
        )
    });
    let import_report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    assert_eq!(
        import_report["imported"].as_u64(),
        Some(n as u64),
        "import reported {import_report}"
    );
    let import_rate = n as f64 / import_t.as_secs_f64();

    // 3a. recall right after the import: the newest 20 are inside the N-memory
    //     import commit (one warm-up each; slow calls get fewer repetitions).
    eprintln!("[2/5] recall --limit 20 [--json] after import");
    let recall = |json: bool| {
        let mut args = vec!["recall", "--limit", "20"];
        if json {
            args.push("--json");
        }
        let (warm, out) = timed("mmogit recall", mmogit(&bin, &home).args(&args));
        if json {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("recall json");
            assert_eq!(
                v.as_array().map(|a| a.len()),
                Some(20),
                "recall --json returns 20"
            );
        }
        let reps = reps_for(warm, runs);
        let (xs, cpu) = cpu_of(|| {
            (0..reps)
                .map(|_| timed("mmogit recall", mmogit(&bin, &home).args(&args)).0)
                .collect::<Vec<_>>()
        });
        stats(xs).with_cpu(cpu, reps)
    };
    let recall_text = recall(false);
    let recall_json = recall(true);

    // 2. remember (one warm-up call, not counted)
    eprintln!("[3/5] remember x{runs}");
    let remember_text = |i: usize| {
        format!(
            "Benchmark note {i}: whole-process remember with a realistic sentence about \
             signed memories in git, long enough to look like an agent's observation."
        )
    };
    run(
        "mmogit remember",
        mmogit(&bin, &home).args(["remember", &remember_text(0)]),
    );
    let (rem, rem_cpu) = cpu_of(|| {
        (1..=runs)
            .map(|i| {
                timed(
                    "mmogit remember",
                    mmogit(&bin, &home).args(["remember", "--tag", "bench", &remember_text(i)]),
                )
                .0
            })
            .collect::<Vec<_>>()
    });
    let rem = stats(rem).with_cpu(rem_cpu, runs);

    // 3b. recall again, now that RUNS + 1 single-memory commits sit on top: when
    //     they hold at least 20 memories, recall stops before the import commit.
    let recall_after_rem = recall(false);

    // 4. verify, 3 times
    eprintln!("[4/5] verify x3");
    let (ver, ver_cpu) = cpu_of(|| {
        (0..3)
            .map(|_| timed("mmogit verify", mmogit(&bin, &home).args(["verify", "-q"])).0)
            .collect::<Vec<_>>()
    });
    let ver = stats(ver).with_cpu(ver_cpu, 3);

    // 5. git baseline: same N files, same layout, normal repository.
    eprintln!("[5/5] git baseline");
    let gdir = tmp.path().join("git-baseline");
    fs::create_dir(&gdir).unwrap();
    run("git init", git(&gdir).args(["init", "-q"]));
    {
        // Export exactly the imported N memories (the tip of the import), not the
        // remembered ones, so both sides start from N files.
        let tip = import_report["tip"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("users/{pk}"));
        let mut archive = Command::new("git")
            .arg("--git-dir")
            .arg(&repo)
            .args(["archive", "--format=tar", &tip])
            .stdout(Stdio::piped())
            .spawn()
            .expect("git archive");
        let tar = Command::new("tar")
            .args(["-x", "-C"])
            .arg(&gdir)
            .stdin(archive.stdout.take().unwrap())
            .status()
            .expect("tar -x");
        assert!(
            tar.success() && archive.wait().unwrap().success(),
            "git archive | tar -x"
        );
    }
    let ((git_add_all_t, git_commit_all_t), git_import_cpu) = cpu_of(|| {
        let (a, _) = timed("git add -A", git(&gdir).args(["add", "-A"]));
        let (c, _) = timed(
            "git commit",
            git(&gdir).args(["commit", "-q", "-m", "import"]),
        );
        (a, c)
    });
    let git_import_t = git_add_all_t + git_commit_all_t;
    let git_import_rate = n as f64 / git_import_t.as_secs_f64();
    // Packed, like mmogit's pack-based import (not part of any timing).
    run("git repack", git(&gdir).args(["repack", "-adq"]));
    let files = run("git ls-files", git(&gdir).arg("ls-files"));
    let nfiles = stdout(&files).lines().count();
    assert_eq!(nfiles, n, "baseline has {nfiles} files, expected {n}");

    let one_commit = |i: usize| -> Duration {
        // A new id-named file in the same sharded layout, same size as a memory file.
        let mut rng = Rng(0xA5A5_0000 + i as u64);
        let id = format!(
            "{:016x}{:016x}{:016x}{:016x}",
            rng.next(),
            rng.next(),
            rng.next(),
            rng.next()
        );
        let rel = format!("memories/{}/{id}.json", &id[..2]);
        let body = serde_json::json!({
            "id": id, "author": pk, "type": "observation",
            "content": remember_text(i), "tags": ["bench"], "signature": "0".repeat(128),
        })
        .to_string();
        let t = Instant::now();
        let path = gdir.join(&rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(body.as_bytes()).unwrap();
        drop(f);
        run("git add", git(&gdir).args(["add", &rel]));
        run("git commit", git(&gdir).args(["commit", "-q", "-m", "x"]));
        t.elapsed()
    };
    one_commit(0); // warm-up
    let (gc, gc_cpu) = cpu_of(|| (1..=runs).map(one_commit).collect::<Vec<_>>());
    let git_commit = stats(gc).with_cpu(gc_cpu, runs);

    // Read baselines: hashes of the 20 newest commits, and the 20 newest files
    // (names from `git log`, then read from the working tree).
    let mut log_hashes = Vec::with_capacity(runs);
    let mut log_files = Vec::with_capacity(runs);
    let mut read_bytes = 0usize;
    let before_read = children_cpu();
    for _ in 0..=runs {
        let (d, _) = timed("git log", git(&gdir).args(["log", "-20", "--format=%H"]));
        log_hashes.push(d);
        let t = Instant::now();
        let out = run(
            "git log --name-only",
            git(&gdir).args(["log", "-20", "--name-only", "--format="]),
        );
        read_bytes = 0;
        for name in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
        {
            read_bytes += fs::read(gdir.join(name)).map(|b| b.len()).unwrap_or(0);
        }
        log_files.push(t.elapsed());
    }
    // CPU of both git log commands per iteration (reported on the files row).
    let read_cpu = children_cpu().saturating_sub(before_read);
    // Drop the warm-up iteration.
    log_hashes.remove(0);
    log_files.remove(0);
    assert!(read_bytes > 0);
    let git_log = stats(log_hashes);
    let git_read20 = stats(log_files).with_cpu(read_cpu, runs + 1);

    let (fsck, fsck_cpu) = cpu_of(|| {
        (0..3)
            .map(|_| {
                timed(
                    "git fsck",
                    git(&gdir).args(["fsck", "--no-dangling", "--no-progress"]),
                )
                .0
            })
            .collect::<Vec<_>>()
    });
    let fsck = stats(fsck).with_cpu(fsck_cpu, 3);

    // 6. Report
    let mut rows = Vec::new();
    {
        let (target_s, v) = verdict(&Target::AtLeastPerSec(5000.0), import_rate);
        rows.push(Row {
            op: format!("import {n} (one run)"),
            mmogit: format!(
                "{:.0}/s ({:.2} s, cpu {:.2})",
                import_rate,
                import_t.as_secs_f64(),
                import_cpu.as_secs_f64()
            ),
            baseline: format!(
                "{:.0}/s ({:.2} s, cpu {:.2})",
                git_import_rate,
                git_import_t.as_secs_f64(),
                git_import_cpu.as_secs_f64()
            ),
            ratio: format!(
                "{:.2}x",
                import_t.as_secs_f64() / git_import_t.as_secs_f64()
            ),
            target: target_s,
            verdict: v,
        });
    }
    rows.push(latency_row(
        "remember (whole process)",
        &rem,
        Some(&git_commit),
        Target::AtMostMs(15.0),
    ));
    rows.push(latency_row(
        "recall --limit 20 (after import)",
        &recall_text,
        Some(&git_read20),
        Target::AtMostMs(50.0),
    ));
    rows.push(latency_row(
        "recall --limit 20 --json (after import)",
        &recall_json,
        Some(&git_read20),
        Target::AtMostMs(50.0),
    ));
    rows.push(latency_row(
        &format!("recall --limit 20 (after {} remembers)", runs + 1),
        &recall_after_rem,
        Some(&git_read20),
        Target::AtMostMs(50.0),
    ));
    rows.push(latency_row(
        &format!("verify ({} memories)", n + runs + 1),
        &ver,
        Some(&fsck),
        Target::AtMostMs(1000.0),
    ));
    rows.push(Row {
        op: "git log -20 --format=%H (info)".into(),
        mmogit: "-".into(),
        baseline: format!("{:.1} ms (p90 {:.1})", ms(git_log.median), ms(git_log.p90)),
        ratio: "-".into(),
        target: "-".into(),
        verdict: "-",
    });

    println!();
    println!("mmogit foundation benchmark: N={n} memories, RUNS={runs}");
    println!("{}", machine_info(&bin));
    println!();
    print_table(&rows);
    println!();
    println!("baselines: remember ~ write file + `git add <file>` + `git commit -q -m x` (2 processes, summed);");
    println!("           recall ~ `git log -20 --name-only` + reading those 20 files from the work tree;");
    println!("           verify ~ `git fsck --no-dangling` (hash integrity, no signatures); import ~ `git add -A` + `git commit` of N files.");
    println!("cpu: user+sys of the processes per call (10 ms ticks averaged), insensitive to other load on the machine.");
    println!("ratio: mmogit time / git time (< 1: mmogit faster); mmogit figures are whole processes incl. start-up.");
    let missed: Vec<&str> = rows
        .iter()
        .filter(|r| r.verdict == "MISSED")
        .map(|r| r.op.as_str())
        .collect();
    if missed.is_empty() {
        println!("all targets met");
    } else {
        println!("MISSED {} target(s): {}", missed.len(), missed.join(", "));
    }
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
}
