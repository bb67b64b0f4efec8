//! Issue 18's mesh bench: the simulator (`mmogit_node::service::sim`) runs
//! N real node services on a random 8-regular trust graph with 50 ± 20 ms
//! links, 1 % loss (as TCP retransmission delay) and 100 Mbit/s, memories
//! signed for real and verified at every hop, store work charged its
//! calibrated time. Prints the metrics of each run and its wall time.
//!
//! ```sh
//! cargo run --release -p mmogit-node --example bench_mesh            # N = 10, 100, 1000
//! MMOGIT_MESH_N=100 MMOGIT_MESH_M=1000 cargo run --release -p mmogit-node --example bench_mesh
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `MMOGIT_MESH_N` | `10,100,1000` | node counts |
//! | `MMOGIT_MESH_M` | 1000 | memories per run |
//! | `MMOGIT_MESH_WINDOW` | 10 | seconds over which they are written |
//! | `MMOGIT_MESH_SEED` | 1 | seed |
//! | `MMOGIT_MESH_PARTITION` | `100,1000` | node counts of the partition scenario (`none` to skip) |
//! | `MMOGIT_MESH_VERIFY` | `every` | `memo`: verify each record once per process (same outcomes) |
//! | `MMOGIT_MESH_PROGRESS` | unset | set: a line of progress per simulated second on stderr |
//! | `MMOGIT_MESH_INGEST` | `beside` | `inline`: the ingest holds up the node's loop (the simulator before 2026-12-02) |
//!
//! Memory per node: a counting global allocator charges every allocation
//! to the node whose input the simulator was handling when it was made
//! ([`sim::current_node`]), until it is freed (a message stays charged to
//! its sender until the receiver drops it). Reported: the largest peak of
//! one node and the mean of the nodes' peaks, plus the simulator's own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use mmogit_node::service::sim::{self, run_mesh, MeshRun, VerifyMode};

const SLOTS: usize = 4097;
const SIM: usize = SLOTS - 1;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicI64 = AtomicI64::new(0);
static LIVE: [AtomicI64; SLOTS] = [ZERO; SLOTS];
static PEAK: [AtomicI64; SLOTS] = [ZERO; SLOTS];

/// Each block carries a 16-byte header: its owner.
struct Counting;

const HEADER: usize = 16;

fn slot() -> usize {
    let n = sim::current_node();
    if n < SIM {
        n
    } else {
        SIM
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let align = layout.align().max(HEADER);
        let Ok(l) = Layout::from_size_align(layout.size() + align, align) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `l` has a non-zero size.
        let p = unsafe { System.alloc(l) };
        if p.is_null() {
            return p;
        }
        let s = slot();
        let live =
            LIVE[s].fetch_add(layout.size() as i64, Ordering::Relaxed) + layout.size() as i64;
        PEAK[s].fetch_max(live, Ordering::Relaxed);
        // SAFETY: `align >= 16` bytes precede the block handed out.
        unsafe {
            let user = p.add(align);
            (user.sub(8) as *mut u64).write(s as u64);
            user
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let align = layout.align().max(HEADER);
        // SAFETY: `ptr` came from `alloc` with the same layout.
        unsafe {
            let s = (ptr.sub(8) as *const u64).read() as usize;
            LIVE[s.min(SIM)].fetch_sub(layout.size() as i64, Ordering::Relaxed);
            let l = Layout::from_size_align_unchecked(layout.size() + align, align);
            System.dealloc(ptr.sub(align), l);
        }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn reset_counts() {
    for i in 0..SLOTS {
        PEAK[i].store(LIVE[i].load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// (largest peak of one node, mean of the nodes' peaks, the simulator's peak).
fn heap_peaks(n: usize) -> (i64, f64, i64) {
    let peaks: Vec<i64> = (0..n.min(SIM))
        .map(|i| PEAK[i].load(Ordering::Relaxed))
        .collect();
    let max = peaks.iter().copied().max().unwrap_or(0);
    let mean = peaks.iter().sum::<i64>() as f64 / peaks.len().max(1) as f64;
    (max, mean, PEAK[SIM].load(Ordering::Relaxed))
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    let v = std::env::var(name).unwrap_or_else(|_| default.into());
    if v == "none" {
        return vec![];
    }
    v.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn inline_ingest() -> bool {
    std::env::var("MMOGIT_MESH_INGEST").as_deref() != Ok("inline")
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(title: &str, r: &MeshRun) {
    // Peaks from here (what earlier runs allocated is freed: each run's
    // world is dropped at its end).
    reset_counts();
    let m = run_mesh(r);
    let rep = &m.report;
    rep.print(title);
    let (max, mean, simp) = heap_peaks(r.n);
    println!(
        "   heap charged to one node: peak max {:.1} KiB, mean of peaks {:.1} KiB; simulator's own peak {:.1} MiB",
        max as f64 / 1024.0,
        mean / 1024.0,
        simp as f64 / 1048576.0
    );
    if let Some(c) = m.converged_after_heal {
        println!(
            "   partition: converged {:.2} s after the heal",
            c.as_secs_f64()
        );
    } else if r.partition.is_some() {
        println!("   partition: NOT converged");
    }
    let wall = m.wall.as_secs_f64();
    let svc = rep.wall_service.as_secs_f64();
    let ver = rep.wall_verify.as_secs_f64();
    println!(
        "   wall {:.2} s: services {:.2} s ({:.0} %), signature verification {:.2} s ({:.0} %), simulator and store stand-in {:.2} s ({:.0} %)",
        wall,
        svc,
        100.0 * svc / wall,
        ver,
        100.0 * ver / wall,
        wall - svc - ver,
        100.0 * (wall - svc - ver) / wall
    );
    println!(
        "   table: | {} | {} | {:.0} / {:.0} / {:.0} | {:.1} / {:.1} / {:.1} | {:.0} / {:.0} / {:.0} | {:.2} | {:.0} | {:.1}x | {:.2}x | {:.1} % | {:.0} | {:.1} | {:.0} / {:.0} | {} | {:.1} |",
        rep.nodes,
        rep.memories,
        rep.time_ms[0],
        rep.time_ms[1],
        rep.time_ms[2],
        rep.rounds[0],
        rep.rounds[1],
        rep.rounds[2],
        rep.hops[0],
        rep.hops[1],
        rep.hops[2],
        rep.msgs_per_memory_edge,
        rep.bytes_per_memory_edge,
        rep.bytes_over_min,
        rep.bundle_bytes_over_min,
        rep.duplicate_share * 100.0,
        rep.announces_per_memory,
        rep.pulls_per_memory,
        max as f64 / 1024.0,
        mean / 1024.0,
        m.converged_after_heal
            .map(|c| format!("{:.1} s", c.as_secs_f64()))
            .unwrap_or_else(|| "–".into()),
        wall
    );
}

fn main() {
    let ns = env_list("MMOGIT_MESH_N", "10,100,1000");
    let parts = env_list("MMOGIT_MESH_PARTITION", "100,1000");
    let m = env_num("MMOGIT_MESH_M", 1000) as usize;
    let window = Duration::from_secs(env_num("MMOGIT_MESH_WINDOW", 10));
    let seed = env_num("MMOGIT_MESH_SEED", 1);
    let verify = match std::env::var("MMOGIT_MESH_VERIFY").as_deref() {
        Ok("memo") => VerifyMode::Memo,
        _ => VerifyMode::Every,
    };
    println!(
        "bench_mesh: random 8-regular trust graph, 50 ± 20 ms links, 1 % segment loss (+200 ms RTO), 100 Mbit/s, {m} memories by random authors over {} s after 3 s of warm-up, seed {seed}, verification {verify:?}",
        window.as_secs()
    );
    for &n in &ns {
        let mut r = MeshRun::new(n, m, seed);
        r.window = window;
        r.cfg.verify = verify;
        r.cfg.ingest_beside_loop = inline_ingest();
        r.progress = std::env::var("MMOGIT_MESH_PROGRESS").is_ok();
        run(&format!("N = {n}, {m} memories"), &r);
    }
    for &n in &parts {
        let mut r = MeshRun::new(n, m.min(100), seed);
        r.partition = Some(Duration::from_secs(60));
        r.window = Duration::from_secs(50);
        r.cfg.verify = verify;
        r.cfg.ingest_beside_loop = inline_ingest();
        r.progress = std::env::var("MMOGIT_MESH_PROGRESS").is_ok();
        run(
            &format!(
                "N = {n}, split in half for 60 s, {} memories written during the split",
                r.memories
            ),
            &r,
        );
    }
}
