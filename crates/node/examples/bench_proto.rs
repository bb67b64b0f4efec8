//! Loopback protocol figures. Run with
//! `cargo run --release -p mmogit-node --example bench_proto`
//! (needs `ulimit -n` above 4,100 for the 2,000 idle connections).
//!
//! Prints: handshake-to-authenticated median, pipelined signed Ping/Pong
//! throughput on one connection, raw Ed25519 verify/s in the same run and
//! their ratio, and memory per idle authenticated connection (server side,
//! RSS delta over 2,000 connections opened by a child process).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmogit_identity::Identity;
use mmogit_node::{connect, ClientConfig, Node, NodeConfig, NodeHandle};

const IDLE_CONNS: usize = 2000;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of this process so far, from /proc/self/stat.
fn cpu_time() -> Duration {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks = f.iter().sum::<u64>();
    Duration::from_millis(ticks * 10)
}

fn client_config() -> ClientConfig {
    ClientConfig {
        idle_timeout: Duration::from_secs(600),
        heartbeat_interval: Duration::from_secs(600),
        request_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    }
}

/// Child mode: open `n` authenticated connections to `addr`, say "ready",
/// hold them until stdin closes.
async fn clients(addr: String, n: usize) {
    let id = Arc::new(Identity::from_secret_bytes(&[2; 32]));
    let before = rss_kib();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let (addr, id, sem) = (addr.clone(), id.clone(), sem.clone());
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            connect(&addr, id, None, &client_config()).await
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for h in handles {
        conns.push(h.await.unwrap().expect("connect"));
    }
    let after = rss_kib();
    println!(
        "ready client_side_bytes_per_conn={}",
        (after.saturating_sub(before)) * 1024 / n as u64
    );
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(conns);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--clients" {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(clients(args[2].clone(), args[3].parse().unwrap()));
        return;
    }
    // The node and the client each get their own runtime (their own I/O
    // driver and threads), as two processes would: in one shared runtime a
    // worker busy verifying delays the other side's wake-ups until it
    // yields, which turns the pipeline into strict turns.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("node")
        .build()
        .unwrap();
    let server_id = Arc::new(Identity::from_secret_bytes(&[1; 32]));
    let node = server_rt.block_on(start_node(server_id.clone()));
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(run(node, server_id));
}

async fn start_node(server_id: Arc<Identity>) -> NodeHandle {
    let config = NodeConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        max_inbound: 10_000,
        max_per_ip: 10_000,
        idle_timeout: Duration::from_secs(600),
        heartbeat_interval: Duration::from_secs(600),
        // The bench opens thousands of connections from one address.
        inbound_rate: None,
        ..NodeConfig::default()
    };
    Node::new(server_id, config, Arc::new(|_: &_, _| true))
        .start()
        .await
        .unwrap()
}

async fn run(node: NodeHandle, server_id: Arc<Identity>) {
    let client_id = Arc::new(Identity::from_secret_bytes(&[2; 32]));
    let addr = node.local_addr().to_string();
    let cc = client_config();

    // 1. Handshake to authenticated.
    let mut times = Vec::new();
    for _ in 0..300 {
        let c = connect(&addr, client_id.clone(), Some(server_id.public_key()), &cc)
            .await
            .unwrap();
        times.push(c.handshake_rtt());
        c.close("bench").await.unwrap();
    }
    times.sort();
    let median = times[times.len() / 2];
    let p99 = times[times.len() * 99 / 100];

    // 2. Pipelined signed Ping/Pong on one connection.
    let mut c = connect(&addr, client_id.clone(), None, &cc).await.unwrap();
    let mut single = Vec::new();
    for _ in 0..200 {
        single.push(c.ping().await.unwrap());
    }
    single.sort();
    c.ping_pipelined(2000, 64).await.unwrap();
    let n = 30_000;
    let cpu0 = cpu_time();
    let t = c.ping_pipelined(n, 64).await.unwrap();
    let cpu = cpu_time() - cpu0;
    let pings_per_s = n as f64 / t.as_secs_f64();
    c.close("bench").await.unwrap();

    // 3. Raw Ed25519 verify in the same process.
    let msg = [7u8; 150];
    let sig = client_id.sign(&msg);
    let pk = client_id.public_key();
    let m = 20_000;
    let t0 = Instant::now();
    for _ in 0..m {
        pk.verify(std::hint::black_box(&msg), &sig).unwrap();
    }
    let verify_per_s = m as f64 / t0.elapsed().as_secs_f64();

    // 4. Memory per idle authenticated connection (server side).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--clients", &addr, &IDLE_CONNS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn client process");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut l = String::new();
        BufReader::new(stdout).read_line(&mut l).unwrap();
        l
    })
    .await
    .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while node.connection_count() < IDLE_CONNS && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = node.connection_count();
    let after = rss_kib();
    drop(child.stdin.take());
    let _ = child.wait();
    let per_conn = (after.saturating_sub(before)) * 1024 / open.max(1) as u64;

    println!(
        "mmogit protocol bench (loopback, release, {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "handshake to authenticated: median {:?}, p99 {:?} ({} handshakes)",
        median,
        p99,
        times.len()
    );
    println!(
        "single ping round trip: median {:?}",
        single[single.len() / 2]
    );
    println!(
        "pipelined signed Ping/Pong (window 64): {:.0} round trips/s = {:.0} signed messages/s",
        pings_per_s,
        2.0 * pings_per_s
    );
    println!(
        "  cpu {:.2} s for {:.2} s of wall time ({:.0} µs of cpu per round trip, both ends)",
        cpu.as_secs_f64(),
        t.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64
    );
    println!("raw Ed25519 verify (1 core): {:.0}/s", verify_per_s);
    println!(
        "ratio signed messages/s : verify/s = {:.2}",
        2.0 * pings_per_s / verify_per_s
    );
    println!(
        "idle authenticated connections: {open} open, server RSS +{} KiB = {} bytes per connection; {}",
        after.saturating_sub(before),
        per_conn,
        line.trim()
    );
    node.shutdown().await;
}
