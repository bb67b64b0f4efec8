//! Issue 18's simulator in CI: 100 real node services on a random
//! 8-regular trust graph over a simulated WAN (50 ± 20 ms, 1 % loss, real
//! signatures verified at every hop). Asserts that the metrics are computed
//! and sane (every memory reaches every node, same seed same run), asserts
//! the targets met so far (duplicates ≤ 5 %; convergence ≤ 5 s
//! after a 60 s split heals) and prints the others scaled to N = 100 (p99
//! rounds, bytes), not met yet.

use std::time::Duration;

use mmogit_node::service::sim::{run_mesh, MeshRun};

#[test]
fn a_hundred_nodes_deliver_every_memory_the_same_way_every_run() {
    let mut r = MeshRun::new(100, 60, 18);
    r.warmup = Duration::from_secs(2);
    r.window = Duration::from_secs(2);
    r.max_time = Duration::from_secs(120);
    let a = run_mesh(&r);
    let rep = &a.report;
    rep.print("N = 100 (CI)");
    assert_eq!(rep.nodes, 100);
    assert_eq!(rep.edges, 400, "8-regular");
    assert_eq!(rep.memories, 60);
    assert_eq!(rep.delivered, 60, "every memory reaches every node");
    assert_eq!(rep.min_transfers, 60 * 99);
    assert!(rep.transfers >= rep.min_transfers);
    assert!(rep.duplicates <= rep.transfers);
    assert!(rep.time_ms[0] > 0.0 && rep.time_ms[0] <= rep.time_ms[1]);
    assert!(rep.time_ms[1] <= rep.time_ms[2]);
    assert!(
        rep.hops[2] >= 2.0,
        "the graph's diameter is more than one hop"
    );
    assert!(rep.bytes_over_min >= 1.0, "nothing beats the spanning tree");
    assert!(rep.verifications >= 60 * 99, "every hop verifies");
    assert!(
        rep.duplicate_share <= 0.05,
        "duplicate transfers {:.1} %, target 5 %",
        rep.duplicate_share * 100.0
    );
    assert_eq!(rep.forged_refused, 0);

    let b = run_mesh(&r);
    assert_eq!(rep.digest, b.report.digest, "same seed, same trace");
    assert_eq!(rep.time_ms, b.report.time_ms);
    assert_eq!(rep.bytes, b.report.bytes);

    // Issue 18's targets at N = 100 not met yet: printed.
    let rounds = (100f64).log2().ceil() + 2.0;
    eprintln!(
        "targets not met yet (printed): p99 rounds {:.1} <= {rounds}: {}; bytes {:.1}x <= 2x: {}; duplicates {:.1} % <= 5 %: {}",
        rep.rounds[1],
        rep.rounds[1] <= rounds,
        rep.bytes_over_min,
        rep.bytes_over_min <= 2.0,
        rep.duplicate_share * 100.0,
        rep.duplicate_share <= 0.05
    );
}

#[test]
fn a_hundred_nodes_converge_within_five_seconds_of_a_sixty_second_split_healing() {
    let mut r = MeshRun::new(100, 40, 18);
    r.partition = Some(Duration::from_secs(60));
    r.window = Duration::from_secs(50);
    r.max_time = Duration::from_secs(120);
    let m = run_mesh(&r);
    let rep = &m.report;
    rep.print("N = 100, split in half for 60 s (CI)");
    assert_eq!(rep.delivered, 40, "every memory reaches every node");
    assert!(
        rep.sessions_broken > 0,
        "the split breaks the sessions across it"
    );
    let conv = m.converged_after_heal.expect("converged");
    eprintln!("converged {conv:?} after the heal (target 5 s)");
    assert!(
        conv <= Duration::from_secs(5),
        "converged {conv:?} after the heal, target 5 s"
    );
}
