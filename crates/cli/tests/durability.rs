//! Durability and maintenance (issue 15): what `remember` writes is fsynced
//! (objects, the ref, their directories) before it prints the memory id;
//! `mmogit gc` repacks without losing anything, also beside writers; `serve`
//! runs it on a schedule.
//!
//! The fsync check traces `remember` with strace: it verifies the order of
//! the system calls, not what the disk does with them (see SECURITY.md,
//! "Durability and maintenance"). Needs strace (`.ci/run` installs it);
//! skipped without it, a failure under `CI=true`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{wait_until, Serve, TestHome};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn have_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Files under `objects/` (loose objects, packs, `info/`), relative paths.
fn object_files(repo: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let objects = repo.join("objects");
    for d in std::fs::read_dir(&objects).unwrap().flatten() {
        if !d.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            if f.path().is_file() {
                let name = f.file_name().to_string_lossy().into_owned();
                out.insert(format!("{}/{name}", d.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Decodes the C-style escapes strace uses in a quoted string (enough for
/// paths and a hex id).
fn unquote(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\\"", "\"")
}

/// The quoted strings of a strace line, in order.
fn quoted(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(a) = rest.find('"') {
        let after = &rest[a + 1..];
        let mut end = None;
        let b = after.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' {
                i += 2;
                continue;
            }
            if b[i] == b'"' {
                end = Some(i);
                break;
            }
            i += 1;
        }
        let Some(e) = end else { break };
        out.push(unquote(&after[..e]));
        rest = &after[e + 1..];
    }
    out
}

/// What a strace log of one `remember` says: the fsyncs (path, line), the
/// renames (from, to, line) and the line where the id went to stdout.
struct Trace {
    fsyncs: Vec<(PathBuf, usize)>,
    renames: Vec<(PathBuf, PathBuf, usize)>,
    id_written: usize,
}

fn clean(p: &str) -> PathBuf {
    let mut s = p.to_string();
    while s.contains("//") {
        s = s.replace("//", "/");
    }
    PathBuf::from(s.trim_end_matches('/'))
}

fn parse_trace(log: &str, id: &str) -> Trace {
    let mut t = Trace {
        fsyncs: Vec::new(),
        renames: Vec::new(),
        id_written: usize::MAX,
    };
    for (n, line) in log.lines().enumerate() {
        // "<pid> syscall(args) = ret"
        let call = line
            .split_once(' ')
            .map(|(_, r)| r.trim_start())
            .unwrap_or(line);
        let ok = !line.contains("= -1");
        if (call.starts_with("fsync(") || call.starts_with("fdatasync(")) && ok {
            // fsync(3</abs/path>) = 0
            if let (Some(a), Some(b)) = (call.find('<'), call.rfind('>')) {
                t.fsyncs.push((clean(&call[a + 1..b]), n));
            }
        } else if (call.starts_with("rename") || call.starts_with("link")) && ok {
            // libgit2 moves a file into place with link() then unlink()
            // of the temporary (rename() where link fails).
            let q = quoted(call);
            if q.len() >= 2 {
                t.renames.push((clean(&q[0]), clean(&q[1]), n));
            }
        } else if call.starts_with("write(1") && call.contains(id) && t.id_written == usize::MAX {
            t.id_written = n;
        }
    }
    t
}

impl Trace {
    fn synced(&self, path: &Path, after: usize, before: usize) -> bool {
        self.fsyncs
            .iter()
            .any(|(p, n)| p == path && *n > after && *n < before)
    }

    /// `file` was renamed into place from a temporary file that was fsynced
    /// before the rename, and its directory was fsynced after the rename;
    /// all before the id was printed. Returns the rename's line.
    #[track_caller]
    fn check_durable(&self, file: &Path) -> usize {
        let (from, _, r) = self
            .renames
            .iter()
            .find(|(_, to, _)| to == file)
            .unwrap_or_else(|| panic!("{} was not renamed into place", file.display()));
        assert!(
            *r < self.id_written,
            "{} renamed after the id was printed",
            file.display()
        );
        assert!(
            self.synced(from, 0, *r),
            "{} (written as {}) not fsynced before its rename",
            file.display(),
            from.display()
        );
        let dir = file.parent().unwrap();
        assert!(
            self.synced(dir, *r, self.id_written),
            "directory {} not fsynced after {} moved in, before the id was printed",
            dir.display(),
            file.display()
        );
        *r
    }
}

/// Runs `remember` under strace and checks that every object it wrote and
/// its branch ref are durable before the id reaches stdout.
fn remember_traced(h: &TestHome, text: &str, log: &Path, first: bool) {
    let repo = std::fs::canonicalize(h.repo()).unwrap();
    let before = object_files(&repo);
    let out = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "4096", "-o"])
        .arg(log)
        .args([
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat,write",
        ])
        .arg(common::BIN)
        .arg("--home")
        .arg(&h.home)
        .args(["remember", text])
        .env("MMOGIT_NO_MDNS", "1")
        .env_remove("MMOGIT_BENCH_NO_FSYNC")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "{id:?}");
    let trace = parse_trace(&std::fs::read_to_string(log).unwrap(), &id);
    assert!(
        trace.id_written != usize::MAX,
        "the id was not seen on stdout"
    );
    let new: Vec<String> = object_files(&repo)
        .difference(&before)
        .filter(|f| !f.starts_with("info/"))
        .cloned()
        .collect();
    // One pack (the blob, three trees and the commit) and its index.
    assert!(new.iter().any(|f| f.ends_with(".pack")), "{new:?}");
    assert!(new.iter().any(|f| f.ends_with(".idx")), "{new:?}");
    let mut last_object = 0;
    for f in &new {
        last_object = last_object.max(trace.check_durable(&repo.join("objects").join(f)));
    }
    let refname = format!("refs/heads/users/{}", h.pubkey());
    let ref_rename = trace.check_durable(&repo.join(&refname));
    assert!(
        last_object < ref_rename,
        "objects are durable before the ref moves"
    );
    if first {
        // The first write created refs/heads/users/: refs/heads synced too.
        assert!(
            trace.synced(&repo.join("refs/heads"), ref_rename, trace.id_written),
            "refs/heads not fsynced before the id was printed"
        );
    }
}

#[test]
fn remember_fsyncs_its_objects_and_ref_before_printing_the_id() {
    if !have_strace() {
        assert!(!in_ci(), "strace is missing (.ci/run installs it)");
        eprintln!("SKIPPED: strace not installed");
        return;
    }
    let h = TestHome::init();
    let log = h.home.with_extension("strace.log");
    // The first memory creates the branch (and refs/heads/users/).
    remember_traced(&h, "first, creating the branch", &log, true);
    remember_traced(&h, "second, moving the branch", &log, false);
    let _ = std::fs::remove_file(&log);
    h.run(&["verify"]).ok();
}

fn gc_json(h: &TestHome, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["gc", "--json"];
    args.extend_from_slice(extra);
    let r = h.run(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.json()
}

#[test]
fn gc_repacks_everything_into_one_pack_and_keeps_every_memory() {
    let h = TestHome::init();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(h.remember(&[&format!("memory {i}")]));
    }
    let lines: String = (0..12)
        .map(|i| format!("{{\"content\": \"imported {i}\"}}\n"))
        .collect();
    h.run_stdin(&["import", "-", "--batch", "3"], &lines).ok();
    let v = gc_json(&h, &["--grace", "0s"]);
    // A pack per remember and per import batch; the import's trees and
    // commits are loose.
    assert_eq!(v["before"]["packs"], 10, "{v}");
    assert!(v["before"]["loose"].as_u64().unwrap() >= 16, "{v}");
    assert_eq!(v["after"]["packs"], 1, "{v}");
    assert_eq!(v["after"]["loose"], 0, "{v}");
    assert_eq!(v["pruned"], true, "{v}");
    assert!(v["elapsed_ms"].as_f64().is_some(), "{v}");
    h.run(&["verify"]).ok();
    let held: BTreeSet<String> = h.recall_ids(&["--limit", "100"]).into_iter().collect();
    assert_eq!(held.len(), 18);
    for id in &ids {
        assert!(held.contains(id));
    }
    // The summary line, for people.
    let r = h.run(&["gc"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("gc: 1 packs and 0 loose objects"),
        "{}",
        r.stderr
    );
    // No repository: the usual exit code.
    TestHome::new().run(&["gc"]).fails_with(3);
}

#[test]
fn remember_beside_repeated_gc_loses_nothing() {
    let h = TestHome::init();
    h.remember(&["seed"]);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (ids, runs) = std::thread::scope(|s| {
        let gc = s.spawn(|| {
            let mut n = 0;
            // Bounded: the writer ends long before.
            while !done.load(std::sync::atomic::Ordering::SeqCst) && n < 300 {
                let r = h.run(&["gc", "--grace", "0s"]);
                assert_eq!(r.code, 0, "{}", r.stderr);
                n += 1;
            }
            n
        });
        let mut ids = Vec::new();
        for i in 0..25 {
            ids.push(h.remember(&[&format!("beside gc {i}")]));
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (ids, gc.join().unwrap())
    });
    assert!(runs >= 2, "gc ran {runs} times");
    h.run(&["verify"]).ok();
    let held: BTreeSet<String> = h.recall_ids(&["--limit", "100"]).into_iter().collect();
    for id in &ids {
        assert!(held.contains(id), "memory {id} lost");
    }
    assert_eq!(held.len(), 26);
}

#[test]
fn serve_runs_maintenance_on_its_schedule() {
    let h = TestHome::init();
    for i in 0..4 {
        h.remember(&[&format!("before serve {i}")]);
    }
    let lines: String = (0..6)
        .map(|i| format!("{{\"content\": \"imported {i}\"}}\n"))
        .collect();
    h.run_stdin(&["import", "-", "--batch", "2"], &lines).ok();
    let repo = h.repo();
    let counts = |repo: &Path| {
        let files = object_files(repo);
        let packs = files.iter().filter(|f| f.ends_with(".pack")).count();
        let loose = files
            .iter()
            .filter(|f| !f.starts_with("pack/") && !f.starts_with("info/"))
            .count();
        (packs, loose)
    };
    assert!(counts(&repo).0 >= 3);
    let serve = Serve::start(
        &h,
        &[
            "--no-dial",
            "--gc-interval",
            "300ms",
            "--gc-min-packs",
            "2",
            "--gc-min-loose",
            "10",
        ],
    );
    assert!(
        wait_until(30, || counts(&repo) == (1, 0)),
        "not repacked: {:?}\n{}",
        counts(&repo),
        serve.log()
    );
    assert!(
        wait_until(10, || serve.log().contains("repository maintenance done")),
        "{}",
        serve.log()
    );
    // Below the thresholds it leaves the repository alone.
    h.remember(&["while serving"]);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(counts(&repo), (2, 0), "{}", serve.log());
    assert_eq!(serve.terminate(), 0);
    h.run(&["verify"]).ok();
    assert_eq!(h.recall_ids(&["--limit", "100"]).len(), 11);
}

#[test]
fn remember_alone_keeps_packs_from_piling_up() {
    // No serve, no gc: each remember writes a pack, and past 50 remember
    // rolls the small ones up itself (git repack --geometric).
    let h = TestHome::init();
    let packs = || {
        std::fs::read_dir(h.repo().join("objects/pack"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".pack")
            })
            .count()
    };
    let mut most = 0;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(h.remember(&[&format!("memory {i}")]));
        most = most.max(packs());
    }
    assert!(most <= mmogit_store::AUTO_CONSOLIDATE_PACKS, "{most} packs");
    assert!(packs() < 20, "{} packs", packs());
    h.run(&["verify"]).ok();
    let held: BTreeSet<String> = h.recall_ids(&["--limit", "100"]).into_iter().collect();
    assert_eq!(held, ids.into_iter().collect());
}
