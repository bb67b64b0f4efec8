//! Memory exchange over P2P with real processes: live propagation between
//! two `serve`, `sync --json` via p2p both ways, a receiver killed mid
//! transfer, `p2p query` with filters. 127.0.0.1 port 0 only; bounded waits.

mod common;

use common::*;
use std::process::Stdio;

fn import(h: &TestHome, n: usize, tag: &str) {
    let mut lines = String::new();
    for i in 0..n {
        lines.push_str(&format!(
            "{{\"content\": \"{tag} memory number {i} with some words to make it longer\", \"tags\": [\"{tag}\"]}}\n"
        ));
    }
    h.run_stdin(&["import", "-"], &lines).ok();
}

fn count(h: &TestHome) -> usize {
    h.recall_ids(&[]).len()
}

#[test]
fn live_propagation_between_two_serves() {
    let (a, b) = (TestHome::init(), TestHome::init());
    let (pa, pb) = (a.pubkey(), b.pubkey());
    let sa = Serve::start(&a, &[]);
    // A trusts B's key before B first dials (the pending → accept flow and
    // its backoff are tested in p2p.rs); B's own address is not needed.
    a.run(&[
        "p2p",
        "add",
        "127.0.0.1:9",
        "--pubkey",
        &pb,
        "--timeout",
        "1s",
    ])
    .ok();
    b.run(&["p2p", "add", &sa.addr, "--pubkey", &pa]).ok();
    let sb = Serve::start(&b, &[]);
    // B was refused until A accepted it, so its dialer backs off (1 s, 2 s,
    // 4 s, 8 s ± 20 %): allow for the next attempt on a slow machine.
    assert!(wait_until(40, || {
        let v = b.run(&["p2p", "status", "--json"]).json();
        v.to_string().contains("\"connected\":true")
    }));
    let id = a.remember(&["live from A"]);
    assert!(
        wait_until(10, || b.recall_ids(&[]).contains(&id)),
        "A's memory reached B live\nA log: {}\nB log: {}",
        sa.log(),
        sb.log()
    );
    // And the other way.
    let id2 = b.remember(&["live from B"]);
    assert!(
        wait_until(10, || a.recall_ids(&[]).contains(&id2)),
        "B's memory reached A live"
    );
    assert_eq!(a.run(&["verify", "--json"]).json()["ok"], true);
    assert_eq!(b.run(&["verify", "--json"]).json()["ok"], true);
}

#[test]
fn sync_json_via_p2p_both_ways() {
    let (a, b) = (TestHome::init(), TestHome::init());
    let (pa, pb) = (a.pubkey(), b.pubkey());
    for i in 0..3 {
        a.remember(&[&format!("a {i}")]);
    }
    for i in 0..2 {
        b.remember(&[&format!("b {i}")]);
    }
    // A serves with B trusted (no address: B is not dialled).
    let sa = Serve::start(&a, &["--no-dial"]);
    b.run(&["p2p", "add", &sa.addr, "--pubkey", &pa]).ok();
    let r = b.run(&["sync", "--json"]);
    if r.code != 0 {
        // A does not trust B yet: accept and retry.
        a.run(&["p2p", "accept", &pb[..16]]).ok();
    }
    let r = b.run(&["sync", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v[0]["via"], "p2p", "{v}");
    assert_eq!(v[0]["received"], 3, "{v}");
    assert_eq!(v[0]["sent"], 2, "{v}");
    assert!(v[0]["error"].is_null(), "{v}");
    assert_eq!(count(&b), 5);
    assert!(wait_until(5, || count(&a) == 5));
    // Nothing new: still p2p, zero both ways.
    let v = b.run(&["sync", "--json"]).json();
    assert_eq!(v[0]["received"], 0);
    assert_eq!(v[0]["sent"], 0);
    drop(sa);
}

#[test]
fn receiver_killed_mid_transfer_then_sync_completes() {
    let (a, b) = (TestHome::init(), TestHome::init());
    let (pa, pb) = (a.pubkey(), b.pubkey());
    import(&a, 1500, "bulk");
    // Slow sender: small chunks, 64 KiB/s.
    let sa = Serve::start(
        &a,
        &["--no-dial", "--max-rate", "64K", "--chunk-size", "8K"],
    );
    b.run(&["p2p", "add", &sa.addr, "--pubkey", &pa]).ok();
    // First contact records B as pending on A.
    let _ = b.run(&["sync", "--json", "--timeout", "5s"]);
    a.run(&["p2p", "accept", &pb[..16]]).ok();
    let mut child = b
        .cmd()
        .args(["sync", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the transfer has started writing, then kill -9.
    let incoming = b.repo().join("mmogit-incoming");
    let started = wait_until(10, || {
        std::fs::read_dir(&incoming)
            .map(|d| {
                d.flatten()
                    .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
            })
            .unwrap_or(false)
    });
    assert!(started, "transfer started");
    std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    // Nothing applied, repository consistent.
    assert_eq!(count(&b), 0);
    assert_eq!(b.run(&["verify", "--json"]).json()["ok"], true);
    // Restart A without the throttle; the next sync completes.
    drop(sa);
    let sa = Serve::start(&a, &["--no-dial"]);
    b.run(&["p2p", "add", &sa.addr, "--pubkey", &pa]).ok();
    let v = b.run(&["sync", "--json"]).json();
    assert_eq!(v[0]["received"], 1500, "{v}");
    assert_eq!(count(&b), 1500);
    let ver = b.run(&["verify", "--json"]).json();
    assert_eq!(ver["ok"], true);
    assert_eq!(ver["memories"], 1500, "nothing lost or duplicated");
    // Leftovers of the killed transfer are gone.
    let left = std::fs::read_dir(&incoming).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0);
}

#[test]
fn p2p_query_with_filters() {
    let (a, b) = (TestHome::init(), TestHome::init());
    let (pa, pb) = (a.pubkey(), b.pubkey());
    a.remember(&["--tag", "rust", "--type", "learning", "ownership"]);
    a.remember(&["--tag", "rust", "--type", "task", "write tests"]);
    a.remember(&["--tag", "go", "goroutines"]);
    let sa = Serve::start(&a, &["--no-dial"]);
    b.run(&["p2p", "add", &sa.addr, "--pubkey", &pa]).ok();
    let _ = b.run(&["p2p", "ping", &sa.addr, "--count", "1"]);
    a.run(&["p2p", "accept", &pb[..16]]).ok();
    let v = b
        .run(&["p2p", "query", &sa.addr, "--tag", "rust", "--json"])
        .json();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["verified"] == true && m["author"] == pa.as_str()));
    let v = b
        .run(&[
            "p2p",
            "query",
            &pa[..16],
            "--tag",
            "rust",
            "--type",
            "task",
            "--json",
        ])
        .json();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["content"], "write tests");
    let v = b
        .run(&[
            "p2p", "query", &sa.addr, "--author", &pa, "--limit", "1", "--json",
        ])
        .json();
    assert_eq!(v.as_array().unwrap().len(), 1);
    // Nothing was stored: a query is not a sync.
    assert_eq!(count(&b), 0);
}
