//! Issue 18's simulator in CI: 100 real node services on a random
//! 8-regular trust graph over a simulated WAN (50 ± 20 ms, 1 % loss, real
//! signatures verified at every hop). Asserts that the metrics are computed
//! and sane (every memory reaches every node, same seed same run); prints
//! the efficiency targets scaled to N = 100 without asserting them
//! (the gossip change, phase 2, will).

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
    assert_eq!(rep.forged_refused, 0);

    let b = run_mesh(&r);
    assert_eq!(rep.digest, b.report.digest, "same seed, same trace");
    assert_eq!(rep.time_ms, b.report.time_ms);
    assert_eq!(rep.bytes, b.report.bytes);

    // Issue 18's targets at N = 100, for phase 2 to assert.
    let rounds = (100f64).log2().ceil() + 2.0;
    eprintln!(
        "targets (not asserted yet): p99 rounds {:.1} <= {rounds}: {}; bytes {:.1}x <= 2x: {}; duplicates {:.1} % <= 5 %: {}",
        rep.rounds[1],
        rep.rounds[1] <= rounds,
        rep.bytes_over_min,
        rep.bytes_over_min <= 2.0,
        rep.duplicate_share * 100.0,
        rep.duplicate_share <= 0.05
    );
}
