//! Failure scenarios on several hosts (network namespaces, real `serve`
//! processes, see `harness/mod.rs`): partition and heal, kill -9 during
//! `remember` and mid sync, convergence over a chain and a mesh. Needs root
//! and iproute2; skipped (with a line on stderr) otherwise, except under
//! `CI=true` (`.ci/run`), where a missing requirement fails. The 20-node runs
//! need `MMOGIT_LONG_TESTS=1`; the 5-node versions always run.

mod common;
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::Net;

/// Live propagation settings for tests: a short idle timeout, so a session
/// whose link went dark is noticed within seconds.
const SERVE: &[&str] = &["--idle-timeout", "4s"];

/// Every id `recall` lists on `h`, asserting none is listed twice.
fn ids_no_dupes(h: &harness::Host) -> BTreeSet<String> {
    let r = h.run(&["recall", "--json", "--limit", "1000000"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let set: BTreeSet<String> = v.iter().cloned().collect();
    assert_eq!(set.len(), v.len(), "host {} lists a memory twice", h.index);
    set
}

#[test]
fn harness_builds_hosts_that_reach_each_other_and_cleans_up() {
    let names;
    {
        let Some(mut net) = Net::new(2) else { return };
        names = vec![net.bridge_ns.clone(), net.host(0).ns.clone()];
        net.link_trust(0, 1);
        net.start_all(&["--no-dial"]);
        let (a, b) = (net.host(0), net.host(1));
        let v = a
            .run(&["p2p", "ping", &b.addr(), "--count", "2", "--json"])
            .ok();
        assert!(v.contains(&b.pubkey), "{v}");
        // Cut: unreachable within the timeout; restored: reachable again.
        net.cut(1);
        let code = a.run(&["p2p", "ping", &b.addr(), "--timeout", "1s"]).code;
        assert!(
            code == 10 || code == 11,
            "cut link: unreachable or timeout, got {code}"
        );
        net.restore(1);
        a.run(&["p2p", "ping", &b.addr(), "--timeout", "5s"]).ok();
        // kill -9 and restart on the same address.
        net.host_mut(1).kill9();
        net.host(0)
            .run(&["p2p", "ping", &net.host(1).addr(), "--timeout", "1s"])
            .fails_with(10);
        net.host_mut(1).restart();
        net.host(0).run(&["p2p", "ping", &net.host(1).addr()]).ok();
    }
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for n in names {
        assert!(!list.contains(&n), "namespace {n} left behind");
    }
}

#[test]
fn partition_then_heal_converges_without_loss_or_duplicates() {
    let Some(mut net) = Net::new(3) else { return };
    net.trust_mesh();
    net.start_all(SERVE);
    // Connected: a first memory from each host reaches every host.
    for h in &net.hosts {
        h.remember(&format!("before the cut, from {}", h.index));
    }
    let want = net.own_tips();
    assert!(
        net.wait_converged(&want, 15).is_some(),
        "initial convergence\n{}{}",
        net.describe(&want),
        net.logs(20)
    );

    // Host 3 is cut off; both sides keep writing.
    net.cut(2);
    let t_cut = Instant::now();
    let mut written = BTreeSet::new();
    for round in 0..3 {
        for h in &net.hosts {
            written.insert(h.remember(&format!("during the cut, {round} from {}", h.index)));
        }
    }
    // The connected side converges among itself; host 3 sees nothing new.
    let side: BTreeMap<String, String> = net.hosts[..2]
        .iter()
        .map(|h| (h.pubkey.clone(), h.tips()[&h.pubkey].clone()))
        .collect();
    assert!(crate::common::wait_until(10, || {
        net.hosts[..2].iter().all(|h| {
            let t = h.tips();
            side.iter().all(|(a, tip)| t.get(a) == Some(tip))
        })
    }));
    // Stay cut for longer than the idle timeout: the sessions across the
    // cut die and must be dialled again after the heal.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(t_cut.elapsed()));
    let c = net.host(2).tips();
    for (a, tip) in &side {
        assert_ne!(c.get(a), Some(tip), "host 3 got news through a cut link");
    }
    let cut_for = t_cut.elapsed();
    let log = net.host(2).log();
    assert!(
        log.contains("peer disconnected") && log.contains("idle timeout"),
        "host 3's sessions ended while cut off: {log}"
    );

    net.restore(2);
    let want = net.own_tips();
    let took = net.wait_converged(&want, 20);
    assert!(
        took.is_some(),
        "no convergence 20 s after heal\n{}{}",
        net.describe(&want),
        net.logs(30)
    );
    eprintln!(
        "partition of {:.1} s healed: converged {:.2} s after the link returned",
        cut_for.as_secs_f64(),
        took.unwrap().as_secs_f64()
    );
    // Every memory everywhere, once, verified.
    let all = ids_no_dupes(net.host(0));
    assert!(written.is_subset(&all));
    assert_eq!(all.len(), 3 + 9);
    for h in &net.hosts {
        assert_eq!(ids_no_dupes(h), all, "host {}", h.index);
        assert!(h.verify_ok(), "host {} verify", h.index);
    }
}

/// Hosts 0..n write one memory each; returns how long until every host
/// holds every host's branch at its tip.
fn converge(net: &Net, secs: u64) -> Duration {
    for h in &net.hosts {
        h.remember(&format!("hello from host {}", h.index));
    }
    let want = net.own_tips();
    assert_eq!(want.len(), net.hosts.len());
    let t0 = Instant::now();
    let r = net.wait_converged(&want, secs);
    assert!(
        r.is_some(),
        "no convergence in {secs} s\n{}{}",
        net.describe(&want),
        net.logs(10)
    );
    t0.elapsed()
}

fn wait_sessions(net: &Net, min_each: usize, secs: u64) {
    let ok = crate::common::wait_until(secs, || {
        net.hosts.iter().all(|h| {
            let r = h.run(&["p2p", "status", "--json"]);
            r.code == 0 && r.json().to_string().matches("\"connected\":true").count() >= min_each
        })
    });
    assert!(ok, "sessions did not come up\n{}", net.logs(10));
}

fn chain(n: usize) {
    let Some(mut net) = Net::new(n) else { return };
    net.trust_chain();
    let t0 = Instant::now();
    net.start_all(&[]);
    wait_sessions(&net, 1, 30);
    let up = t0.elapsed();
    let took = converge(&net, 60);
    eprintln!(
        "chain of {n}: sessions up in {:.2} s; {n} memories (one per node) on every node in {:.2} s",
        up.as_secs_f64(),
        took.as_secs_f64()
    );
    for h in [net.host(0), net.host(n - 1)] {
        assert_eq!(ids_no_dupes(h).len(), n);
        assert!(h.verify_ok());
    }
}

fn mesh(n: usize) {
    let Some(mut net) = Net::new(n) else { return };
    net.trust_mesh();
    let t0 = Instant::now();
    net.start_all(&[]);
    wait_sessions(&net, n - 1, 30);
    let up = t0.elapsed();
    let took = converge(&net, 60);
    eprintln!(
        "mesh of {n}: sessions up in {:.2} s; {n} memories (one per node) on every node in {:.2} s",
        up.as_secs_f64(),
        took.as_secs_f64()
    );
    for h in [net.host(0), net.host(n - 1)] {
        assert_eq!(ids_no_dupes(h).len(), n);
        assert!(h.verify_ok());
    }
}

fn long_tests() -> bool {
    std::env::var("MMOGIT_LONG_TESTS").is_ok_and(|v| v == "1")
}

#[test]
fn chain_of_5_converges() {
    chain(5);
}

#[test]
fn mesh_of_5_converges() {
    mesh(5);
}

#[test]
fn chain_of_20_converges_long() {
    if !long_tests() {
        eprintln!("SKIPPED: set MMOGIT_LONG_TESTS=1");
        return;
    }
    chain(20);
}

#[test]
fn mesh_of_20_converges_long() {
    if !long_tests() {
        eprintln!("SKIPPED: set MMOGIT_LONG_TESTS=1");
        return;
    }
    mesh(20);
}
