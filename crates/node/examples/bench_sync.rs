//! P2P memory sync figures beside a `git daemon` baseline, same data, same run.
//! Run with `cargo run --release -p mmogit-node --example bench_sync`
//! (`MMOGIT_BENCH_N` memories, default 10,000; loopback only).
//!
//! 1. Full sync of N memories into an empty repository over P2P (connect,
//!    pull, in-process bundle, index, verify every signature, move refs),
//!    against `git clone --bare git://127.0.0.1:<port>/a.git`.
//! 2. Incremental sync of 10 new memories on an open session, against
//!    `git fetch` of the same 10 commits from the daemon.
//! 3. Live propagation: a commit on node A until node B's ref moved (A polls
//!    its tips every 100 ms, announces; B pulls, verifies, accepts).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmogit_identity::Identity;
use mmogit_node::replicate::*;
use mmogit_node::*;
use mmogit_store::{MemoryType, NewMemory, Store, VerifiedMemory};
use tokio::sync::mpsc;

fn mem(id: &Identity, i: usize) -> VerifiedMemory {
    VerifiedMemory::create(
        id,
        NewMemory {
            kind: MemoryType::Learning,
            content: format!(
                "memory {i}: agents learn that replication over git keeps every signature \
                 checkable, and that small incremental packs travel fast ({})",
                i * 7919 % 104729
            ),
            tags: vec!["bench".into(), format!("t{}", i % 17)],
            confidence: Some(0.5),
            private: false,
        },
    )
    .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn git(args: &[&str], dir: Option<&Path>) {
    let mut c = Command::new("git");
    if let Some(d) = dir {
        c.arg("--git-dir").arg(d);
    }
    let out = c.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_daemon(base: &Path) -> (Daemon, u16) {
    let port = free_port();
    let child = Command::new("git")
        .args([
            "daemon",
            "--export-all",
            "--reuseaddr",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", base.display()),
        ])
        .arg(base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon");
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "git daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (d, port)
}

async fn start_node(id: Arc<Identity>, repo: PathBuf, peers: PathBuf) -> NodeHandle {
    let (tx, rx) = mpsc::channel(64);
    let node = Node::new(
        id.clone(),
        NodeConfig {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            peers_path: Some(peers.clone()),
            dial_trusted: true,
            dial_refresh: Duration::from_millis(100),
            dial_backoff_base: Duration::from_millis(50),
            ..NodeConfig::default()
        },
        Arc::new(PeerStoreTrust::new(peers)),
    )
    .with_inbox(tx)
    .start()
    .await
    .unwrap();
    let cfg = ReplicatorConfig::new(repo, id.public_key());
    tokio::spawn(Replicator::new(cfg).run(rx, node.sender()));
    node
}

fn trust(peers: &Path, key: mmogit_identity::PublicKey, addr: Option<String>) {
    PeerStore::update(peers, |s| {
        s.add(key, None, addr.into_iter().collect(), PeerSource::Manual);
        Ok::<_, mmogit_node::PeerStoreError>(())
    })
    .unwrap();
}

/// What B asks of A: pull into `repo` as `me`, default limits.
fn client_sync(repo: &Path, me: &Identity, timeout_s: u64) -> ClientSync {
    ClientSync {
        repo: repo.to_path_buf(),
        me: me.public_key(),
        max_transfer: DEFAULT_MAX_TRANSFER,
        max_rate: None,
        chunk_size: MAX_CHUNK,
        timeout: Duration::from_secs(timeout_s),
        deadline: Duration::from_secs(3600),
    }
}

/// A session from `me` to the node at `addr`, which must hold `them`'s key.
async fn dial(addr: &str, me: &Arc<Identity>, them: &Identity) -> Connection {
    connect(
        addr,
        me.clone(),
        Some(them.public_key()),
        &ClientConfig::default(),
    )
    .await
    .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("MMOGIT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("srv");
    std::fs::create_dir_all(&base).unwrap();
    let a_repo = base.join("a.git");
    let ida = Arc::new(Identity::from_secret_bytes(&[1; 32]));
    let idb = Arc::new(Identity::from_secret_bytes(&[2; 32]));
    {
        let s = Store::open_or_init(&a_repo).unwrap();
        let mems: Vec<VerifiedMemory> = (0..n).map(|i| mem(&ida, i)).collect();
        // Memories per commit: 1000 (as `import` makes them), or with
        // MMOGIT_BENCH_ONE_PER_COMMIT set one commit per memory, loose
        // objects (as `remember` makes them).
        if std::env::var_os("MMOGIT_BENCH_ONE_PER_COMMIT").is_some() {
            for m in &mems {
                s.append(&ida, std::slice::from_ref(m), "m").unwrap();
            }
        } else {
            s.import(&ida, &mems, 1000, |_| {}).unwrap();
        }
        s.set_head_to(&ida.public_key()).unwrap();
    }
    let (_daemon, port) = start_daemon(&base);
    let url = format!("git://127.0.0.1:{port}/a.git");
    let a_peers = dir.path().join("a-peers.json");
    trust(&a_peers, idb.public_key(), None);
    let node_a = start_node(ida.clone(), a_repo.clone(), a_peers).await;
    let addr = node_a.local_addr().to_string();
    let runs = 5;

    // 1. Full sync.
    let mut git_full = vec![];
    let mut p2p_full = vec![];
    for r in 0..runs {
        let dst = dir.path().join(format!("clone{r}.git"));
        let t = Instant::now();
        let out = Command::new("git")
            .args(["clone", "--bare", "-q", &url])
            .arg(&dst)
            .output()
            .unwrap();
        assert!(out.status.success());
        git_full.push(t.elapsed());
        let b_repo = dir.path().join(format!("b{r}.git"));
        Store::open_or_init(&b_repo).unwrap();
        let cfg = client_sync(&b_repo, &idb, 120);
        let t = Instant::now();
        let mut conn = dial(&addr, &idb, &ida).await;
        let out = sync_connection(&mut conn, &cfg, &|_, _, _| {})
            .await
            .unwrap();
        p2p_full.push(t.elapsed());
        assert_eq!(out.received.unwrap().memories_added(), n);
        conn.close("done").await.unwrap();
    }

    // 2. Incremental: 10 new memories (10 commits), open session vs git fetch.
    let b_repo = dir.path().join("b0.git");
    let clone = dir.path().join("clone0.git");
    let cfg = client_sync(&b_repo, &idb, 60);
    let mut conn = dial(&addr, &idb, &ida).await;
    let mut git_inc = vec![];
    let mut p2p_inc = vec![];
    let branch = format!("refs/heads/users/{}", ida.public_key().to_hex());
    for r in 0..10 {
        {
            let s = Store::open(&a_repo).unwrap();
            for i in 0..10 {
                s.append(&ida, &[mem(&ida, n + r * 10 + i)], "m").unwrap();
            }
        }
        let t = Instant::now();
        let out = sync_connection(&mut conn, &cfg, &|_, _, _| {})
            .await
            .unwrap();
        p2p_inc.push(t.elapsed());
        assert_eq!(out.received.unwrap().memories_added(), 10);
        let t = Instant::now();
        git(
            &["fetch", "-q", &url, &format!("+{branch}:{branch}")],
            Some(&clone),
        );
        git_inc.push(t.elapsed());
    }
    conn.close("done").await.unwrap();

    // 3. Live propagation A → B (B dials A).
    let b_repo = dir.path().join("b1.git");
    let b_peers = dir.path().join("b-peers.json");
    trust(&b_peers, ida.public_key(), Some(addr.clone()));
    let node_b = start_node(idb.clone(), b_repo.clone(), b_peers).await;
    let tip = |repo: &Path| Store::open(repo).unwrap().tip(&ida.public_key()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tip(&b_repo) != tip(&a_repo) {
        assert!(Instant::now() < deadline, "B did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut live = vec![];
    for r in 0..20 {
        let s = Store::open(&a_repo).unwrap();
        let t = Instant::now();
        let new = s.append(&ida, &[mem(&ida, n + 1000 + r)], "m").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tip(&b_repo) != Some(new) {
            assert!(Instant::now() < deadline, "live propagation stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        live.push(t.elapsed());
        // Spread the writes over the poll phase.
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    node_b.shutdown().await;
    node_a.shutdown().await;

    let (gf, pf) = (median(git_full), median(p2p_full));
    let (gi, pi) = (median(git_inc), median(p2p_inc));
    let lv = median(live.clone());
    let mut lvs = live.clone();
    lvs.sort();
    println!("memories: {n}, runs: full {runs}, incremental 10, live 20");
    println!("| measurement | P2P (median) | git daemon baseline (median) | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| full sync of {n} memories (verification included) | {:.0} ms | {:.0} ms (`git clone`) | {:.2}x | <= 1.0x |",
        ms(pf),
        ms(gf),
        ms(pf) / ms(gf)
    );
    println!(
        "| incremental sync of 10 memories, open session | {:.1} ms | {:.1} ms (`git fetch`) | {:.2}x | <= 0.25x |",
        ms(pi),
        ms(gi),
        ms(pi) / ms(gi)
    );
    println!(
        "| live propagation (commit on A -> ref moved on B) | {:.0} ms (min {:.0}, max {:.0}) | - | - | < 200 ms |",
        ms(lv),
        ms(lvs[0]),
        ms(lvs[lvs.len() - 1])
    );
}
