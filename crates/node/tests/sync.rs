//! Memory exchange between nodes: relay A → B → C with every signature
//! checked, tampered and rewritten branches refused, several chunks, bad
//! transfers refused, the client sync both ways, queries with a cursor.
//! 127.0.0.1 port 0 only; every wait is bounded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmogit_identity::{Identity, PublicKey};
use mmogit_node::replicate::*;
use mmogit_node::*;
use mmogit_proto::{BranchTip, GitBundle, MemoryRequest, MemoryResponse, Message, TransferInfo};
use mmogit_store::{MemoryType, NewMemory, Store, VerifiedMemory};
use tokio::sync::mpsc;

fn ident(n: u8) -> Arc<Identity> {
    Arc::new(Identity::from_secret_bytes(&[n; 32]))
}

fn key(n: u8) -> PublicKey {
    ident(n).public_key()
}

fn mem(id: &Identity, text: &str, tags: &[&str]) -> VerifiedMemory {
    VerifiedMemory::create(
        id,
        NewMemory {
            kind: MemoryType::Learning,
            content: text.to_string(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            confidence: None,
            private: false,
        },
    )
    .unwrap()
}

struct Home {
    n: u8,
    repo: PathBuf,
    peers: PathBuf,
}

impl Home {
    fn new(dir: &Path, n: u8) -> Home {
        let repo = dir.join(format!("repo{n}.git"));
        Store::open_or_init(&repo).unwrap();
        Home {
            n,
            repo,
            peers: dir.join(format!("peers{n}.json")),
        }
    }

    fn store(&self) -> Store {
        Store::open(&self.repo).unwrap()
    }

    fn remember(&self, count: usize, tag: &str) {
        let id = ident(self.n);
        let s = self.store();
        for i in 0..count {
            s.append(&id, &[mem(&id, &format!("{tag} {i}"), &[tag])], "m")
                .unwrap();
        }
    }

    fn trust(&self, other: u8, addr: Option<String>) {
        PeerStore::update(&self.peers, |s| {
            s.add(
                key(other),
                None,
                addr.into_iter().collect(),
                PeerSource::Manual,
            );
            Ok::<_, PeerStoreError>(())
        })
        .unwrap();
    }

    fn count(&self, author: u8) -> usize {
        let s = self.store();
        match s.tip(&key(author)).unwrap() {
            None => 0,
            Some(t) => s.verify_history(&key(author), t, None).unwrap().memories,
        }
    }
}

struct Running {
    node: NodeHandle,
    events: mpsc::UnboundedReceiver<ReplicationEvent>,
    seen: Vec<ReplicationEvent>,
}

impl Running {
    fn addr(&self) -> String {
        self.node.local_addr().to_string()
    }

    fn drain(&mut self) -> &[ReplicationEvent] {
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
        &self.seen
    }
}

fn node_config(peers: &Path) -> NodeConfig {
    NodeConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(10),
        frame_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(2),
        peers_path: Some(peers.to_path_buf()),
        dial_trusted: true,
        dial_refresh: Duration::from_millis(100),
        dial_backoff_base: Duration::from_millis(50),
        dial_backoff_cap: Duration::from_millis(200),
        dial_timeout: Duration::from_secs(1),
        ..NodeConfig::default()
    }
}

async fn start(h: &Home, tweak: impl FnOnce(&mut ReplicatorConfig)) -> Running {
    start_with(h, node_config(&h.peers), tweak).await
}

async fn start_with(
    h: &Home,
    config: NodeConfig,
    tweak: impl FnOnce(&mut ReplicatorConfig),
) -> Running {
    let (tx, rx) = mpsc::channel(16);
    let node = Node::new(
        ident(h.n),
        config,
        Arc::new(PeerStoreTrust::new(h.peers.clone())),
    )
    .with_inbox(tx)
    .start()
    .await
    .unwrap();
    let mut cfg = ReplicatorConfig::new(h.repo.clone(), key(h.n));
    cfg.poll_interval = Duration::from_millis(20);
    cfg.transfer_timeout = Duration::from_secs(5);
    tweak(&mut cfg);
    let (etx, erx) = mpsc::unbounded_channel();
    tokio::spawn(Replicator::new(cfg).with_events(etx).run(rx, node.sender()));
    Running {
        node,
        events: erx,
        seen: vec![],
    }
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adds a commit on `author`'s branch of `repo` that changes the first
/// memory file (a forgery by whoever holds the repository).
fn tamper(repo: &Path, author: &PublicKey) {
    let r = git2::Repository::open_bare(repo).unwrap();
    let refname = format!("refs/heads/users/{}", author.to_hex());
    let tip = r
        .find_reference(&refname)
        .unwrap()
        .peel_to_commit()
        .unwrap();
    let root = tip.tree().unwrap();
    let mems = root.get_name("memories").unwrap();
    let tree = r.find_tree(mems.id()).unwrap();
    let shard = tree.get(0).unwrap();
    let shard_tree = r.find_tree(shard.id()).unwrap();
    let file = shard_tree.get(0).unwrap();
    let blob = r.find_blob(file.id()).unwrap();
    let text = String::from_utf8(blob.content().to_vec()).unwrap();
    let forged = text.replacen("\"content\": \"", "\"content\": \"FORGED ", 1);
    assert_ne!(forged, text);
    let new_blob = r.blob(forged.as_bytes()).unwrap();
    let mut sb = r.treebuilder(Some(&shard_tree)).unwrap();
    sb.insert(file.name().unwrap(), new_blob, 0o100644).unwrap();
    let new_shard = sb.write().unwrap();
    let mut mb = r.treebuilder(Some(&tree)).unwrap();
    mb.insert(shard.name().unwrap(), new_shard, 0o040000)
        .unwrap();
    let new_mems = mb.write().unwrap();
    let mut rb = r.treebuilder(Some(&root)).unwrap();
    rb.insert("memories", new_mems, 0o040000).unwrap();
    let new_tree = r.find_tree(rb.write().unwrap()).unwrap();
    let sig = git2::Signature::now("x", "x@x").unwrap();
    let c = r
        .commit(None, &sig, &sig, "forged", &new_tree, &[&tip])
        .unwrap();
    r.reference(&refname, c, true, "forge").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_through_b_then_tamper_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        Home::new(dir.path(), 1),
        Home::new(dir.path(), 2),
        Home::new(dir.path(), 3),
    );
    a.remember(5, "alpha");
    b.trust(1, None);
    b.trust(3, None);
    let mut nb = start(&b, |_| {}).await;
    a.trust(2, Some(nb.addr()));
    c.trust(2, Some(nb.addr()));
    let na = start(&a, |_| {}).await;
    let mut nc = start(&c, |_| {}).await;
    // A's memories reach C through B; C verified each one.
    wait_for("A's memories on C", 10, || c.count(1) == 5).await;
    assert!(c.store().verify_all().unwrap().is_ok());
    assert_eq!(b.count(1), 5);
    // Live: a new memory on A reaches C.
    a.remember(2, "beta");
    wait_for("new memories on C", 10, || c.count(1) == 7).await;
    // B forges a memory on A's branch: C refuses it and applies nothing.
    let c_tip = c.store().tip(&key(1)).unwrap();
    tamper(&b.repo, &key(1));
    wait_for("C refuses the forgery", 10, || {
        nc.drain().iter().any(|e| {
            matches!(e, ReplicationEvent::Ingested { refused, .. }
                if refused.iter().any(|r| r.contains("changed")))
        })
    })
    .await;
    assert_eq!(c.store().tip(&key(1)).unwrap(), c_tip);
    assert!(c.store().verify_all().unwrap().is_ok());
    let _ = nb.drain();
    na.node.shutdown().await;
    nb.node.shutdown().await;
    nc.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_branch_is_refused_with_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Home::new(dir.path(), 1), Home::new(dir.path(), 2));
    a.remember(3, "one");
    // B holds A's history, then A's branch is rewritten (another history).
    let bundle = a
        .store()
        .build_bundle(&[], None, u64::MAX)
        .unwrap()
        .unwrap();
    let p = dir.path().join("x.bundle");
    std::fs::write(&p, &bundle.bytes).unwrap();
    assert!(b.store().ingest_bundle(&p, "t").unwrap().is_ok());
    let r = git2::Repository::open_bare(&a.repo).unwrap();
    r.find_reference(&format!("refs/heads/users/{}", key(1).to_hex()))
        .unwrap()
        .delete()
        .unwrap();
    a.remember(2, "other");
    let b_tip = b.store().tip(&key(1)).unwrap();
    a.trust(2, None);
    b.trust(1, None);
    let na = start(&a, |_| {}).await;
    b.trust(1, Some(na.addr()));
    let mut nb = start(&b, |_| {}).await;
    wait_for("B refuses the rewrite", 10, || {
        nb.drain().iter().any(|e| {
            matches!(e, ReplicationEvent::Ingested { refused, .. }
                if refused.iter().any(|r| r.contains("rewritten")))
        })
    })
    .await;
    assert_eq!(b.store().tip(&key(1)).unwrap(), b_tip);
    assert_eq!(b.store().evidence_refs().unwrap().len(), 1);
    na.node.shutdown().await;
    nb.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_chunks_and_client_sync_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Home::new(dir.path(), 1), Home::new(dir.path(), 2));
    a.remember(40, "many");
    b.remember(3, "mine");
    a.trust(2, None);
    let mut na = start(&a, |c| c.chunk_size = 2048).await;
    let mut conn = connect(&na.addr(), ident(2), Some(key(1)), &ClientConfig::default())
        .await
        .unwrap();
    let cfg = ClientSync {
        repo: b.repo.clone(),
        me: key(2),
        max_transfer: DEFAULT_MAX_TRANSFER,
        max_rate: None,
        chunk_size: 1024,
        timeout: Duration::from_secs(10),
        deadline: Duration::from_secs(60),
    };
    let out = sync_connection(&mut conn, &cfg, &|_, _, _| {})
        .await
        .unwrap();
    assert!(out.pull_error.is_none(), "{:?}", out.pull_error);
    assert_eq!(out.received.as_ref().unwrap().memories_added(), 40);
    assert!(
        out.bytes_received > 2048 * 3,
        "several chunks: {}",
        out.bytes_received
    );
    assert!(out.bytes_sent > 1024, "several chunks: {}", out.bytes_sent);
    assert_eq!(out.sent.as_ref().unwrap().memories, 3, "{out:?}");
    conn.close("done").await.unwrap();
    assert_eq!(b.count(1), 40);
    assert_eq!(a.count(2), 3);
    assert!(b.store().verify_all().unwrap().is_ok());
    // Again: nothing new either way.
    let mut conn = connect(&na.addr(), ident(2), Some(key(1)), &ClientConfig::default())
        .await
        .unwrap();
    let out = sync_connection(&mut conn, &cfg, &|_, _, _| {})
        .await
        .unwrap();
    assert!(out.received.is_none() && out.sent.is_none(), "{out:?}");
    let _ = na.drain();
    na.node.shutdown().await;
}

/// A client that pretends to be a node with tips the node lacks, and
/// answers its pull with `answer`.
async fn fake_transfer(answer: impl FnOnce(u64) -> Vec<Message>) -> (Vec<ReplicationEvent>, Home) {
    let dir = tempfile::tempdir().unwrap();
    let a = Home::new(dir.path(), 1);
    a.trust(2, None);
    let mut na = start(&a, |c| c.max_transfer = 1 << 20).await;
    let mut conn = connect(&na.addr(), ident(2), Some(key(1)), &ClientConfig::default())
        .await
        .unwrap();
    conn.send(Message::MemoryResponse(MemoryResponse {
        tips: Some(vec![BranchTip {
            author: key(2).to_hex(),
            tip: "ab".repeat(20),
        }]),
        ..Default::default()
    }))
    .await
    .unwrap();
    let id = loop {
        match conn.recv().await.unwrap() {
            Message::MemoryRequest(r) if r.sync.is_some() => break r.id,
            _ => continue,
        }
    };
    for m in answer(id) {
        conn.send(m).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !na
        .drain()
        .iter()
        .any(|e| matches!(e, ReplicationEvent::PullFailed { .. }))
    {
        assert!(Instant::now() < deadline, "no failure reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = na.seen.clone();
    let _ = conn.close("done").await;
    na.node.shutdown().await;
    // Keep the directory alive for the caller's checks.
    let kept = Home {
        n: a.n,
        repo: a.repo.clone(),
        peers: a.peers.clone(),
    };
    std::mem::forget(dir);
    (seen, kept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_declared_total_is_refused() {
    let (events, a) = fake_transfer(|id| {
        vec![Message::MemoryResponse(MemoryResponse {
            id: Some(id),
            transfer: Some(TransferInfo {
                transfer_id: id.to_string(),
                total_size: 2 << 30,
                sha256: "00".repeat(32),
                chunks: 300,
                commits: 1,
            }),
            ..Default::default()
        })]
    })
    .await;
    assert!(
        events.iter().any(
            |e| matches!(e, ReplicationEvent::PullFailed { reason, .. } if reason.contains("limit"))
        ),
        "{events:?}"
    );
    assert!(a.store().branches().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(a.repo.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hash_is_refused_and_nothing_applied() {
    // A real bundle of B's memories, announced with a wrong hash.
    let dir = tempfile::tempdir().unwrap();
    let b = Home::new(dir.path(), 2);
    b.remember(3, "x");
    let bundle = b
        .store()
        .build_bundle(&[], None, u64::MAX)
        .unwrap()
        .unwrap();
    let bytes = bundle.bytes.clone();
    let (events, a) = fake_transfer(move |id| {
        let sha = "11".repeat(32);
        vec![
            Message::MemoryResponse(MemoryResponse {
                id: Some(id),
                transfer: Some(TransferInfo {
                    transfer_id: id.to_string(),
                    total_size: bytes.len() as u64,
                    sha256: sha.clone(),
                    chunks: 1,
                    commits: 3,
                }),
                ..Default::default()
            }),
            Message::GitBundle(GitBundle {
                transfer_id: id.to_string(),
                index: 0,
                total_size: bytes.len() as u64,
                sha256: sha,
                data: bytes,
            }),
        ]
    })
    .await;
    assert!(
        events.iter().any(|e| matches!(e, ReplicationEvent::PullFailed { reason, .. } if reason.contains("SHA-256"))),
        "{events:?}"
    );
    assert!(a.store().branches().unwrap().is_empty());
    let incoming = a.repo.join(mmogit_store::INCOMING_DIR);
    let names = || -> Vec<std::ffi::OsString> {
        std::fs::read_dir(&incoming)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while !names().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        names(),
        Vec::<std::ffi::OsString>::new(),
        "temporary file removed"
    );
    let _ = std::fs::remove_dir_all(a.repo.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_with_filters_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let a = Home::new(dir.path(), 1);
    let id = ident(1);
    let many: Vec<VerifiedMemory> = (0..QUERY_PAGE + 150)
        .map(|i| {
            mem(
                &id,
                &format!("m {i}"),
                &[if i % 2 == 0 { "even" } else { "odd" }],
            )
        })
        .collect();
    a.store().import(&id, &many, 10_000, |_| {}).unwrap();
    a.trust(2, None);
    let na = start(&a, |_| {}).await;
    let mut conn = connect(&na.addr(), ident(2), Some(key(1)), &ClientConfig::default())
        .await
        .unwrap();
    let t = Duration::from_secs(10);
    let all = query_peer(&mut conn, MemoryRequest::default(), t)
        .await
        .unwrap();
    assert_eq!(all.memories.len(), QUERY_PAGE + 150);
    assert!(all.pages >= 2, "cursor across several frames");
    let mut ids: Vec<&str> = all.memories.iter().map(|m| m.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), QUERY_PAGE + 150, "no duplicates");
    let even = query_peer(
        &mut conn,
        MemoryRequest {
            tags: vec!["even".into()],
            authors: vec![key(1).to_hex()],
            types: vec!["learning".into()],
            limit: Some(7),
            ..Default::default()
        },
        t,
    )
    .await
    .unwrap();
    assert_eq!(even.memories.len(), 7);
    assert!(even.memories.iter().all(|m| m.tags() == ["even"]));
    let none = query_peer(
        &mut conn,
        MemoryRequest {
            types: vec!["task".into()],
            ..Default::default()
        },
        t,
    )
    .await
    .unwrap();
    assert!(none.memories.is_empty());
    let bad = query_peer(
        &mut conn,
        MemoryRequest {
            types: vec!["nonsense".into()],
            ..Default::default()
        },
        t,
    )
    .await;
    assert!(bad.is_err());
    // A cursor that is not ours is refused; one from a page resumes after it.
    conn.send(Message::MemoryRequest(MemoryRequest {
        id: 77,
        cursor: Some("500".into()),
        ..Default::default()
    }))
    .await
    .unwrap();
    let r = loop {
        match conn.recv().await.unwrap() {
            Message::MemoryResponse(r) if r.id == Some(77) => break r,
            _ => {}
        }
    };
    assert_eq!(r.error.as_deref(), Some("bad cursor"));

    // At most MAX_CONCURRENT_QUERIES of one peer run at once: 12 full-page
    // queries sent together, the rest answered `busy` at once.
    for id in 1..=12u64 {
        conn.send(Message::MemoryRequest(MemoryRequest {
            id: 100 + id,
            limit: Some(QUERY_PAGE as u32),
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    let (mut answered, mut busy) = (0, 0);
    while answered + busy < 12 {
        match tokio::time::timeout(t, conn.recv()).await.unwrap().unwrap() {
            Message::MemoryResponse(r) if r.id.is_some_and(|i| i > 100) => match r.error {
                Some(e) => {
                    assert!(e.starts_with("busy"), "{e}");
                    busy += 1;
                }
                None => {
                    assert_eq!(r.memories.len(), QUERY_PAGE);
                    answered += 1;
                }
            },
            _ => {}
        }
    }
    assert!(answered >= MAX_CONCURRENT_QUERIES, "{answered} answered");
    assert!(busy >= 1, "{busy} busy");
    // The slots are free again.
    let again = query_peer(&mut conn, MemoryRequest::default(), t)
        .await
        .unwrap();
    assert_eq!(again.memories.len(), QUERY_PAGE + 150);
    conn.close("done").await.unwrap();
    na.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_daily_quota_is_not_pulled_from() {
    // B takes at most 10 memories a day from A: the first pull (12) is
    // taken whole, then A's news are refused with a reason, and nothing of
    // them applied. A third node C, whose own quota is bytes, refuses A's
    // transfer outright.
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        Home::new(dir.path(), 1),
        Home::new(dir.path(), 2),
        Home::new(dir.path(), 3),
    );
    a.remember(12, "first");
    b.trust(1, None);
    c.trust(1, None);
    let mut nb = start(&b, |cfg| cfg.quota_memories = 10).await;
    let mut nc = start(&c, |cfg| cfg.quota_bytes = 500).await;
    a.trust(2, Some(nb.addr()));
    a.trust(3, Some(nc.addr()));
    let na = start(&a, |_| {}).await;
    wait_for("A's first memories on B", 10, || b.count(1) == 12).await;
    a.remember(3, "second");
    wait_for("B refuses for the quota", 10, || {
        nb.drain().iter().any(|e| {
            matches!(e, ReplicationEvent::PullFailed { reason, .. }
                if reason.contains("daily quota reached: 12 memories"))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.count(1), 12);
    // A reconnect does not start a new period: A restarts, has news again,
    // and B still refuses.
    na.node.shutdown().await;
    nb.seen.clear();
    a.remember(2, "third");
    let na = start(&a, |_| {}).await;
    wait_for("B refuses again after A reconnected", 10, || {
        nb.drain().iter().any(|e| {
            matches!(e, ReplicationEvent::PullFailed { reason, .. }
                if reason.contains("daily quota reached: 12 memories"))
        })
    })
    .await;
    assert_eq!(b.count(1), 12);
    wait_for("C refuses the transfer", 10, || {
        nc.drain().iter().any(|e| {
            matches!(e, ReplicationEvent::PullFailed { reason, .. }
                if reason.contains("over the daily quota"))
        })
    })
    .await;
    assert_eq!(c.count(1), 0);
    assert!(c.store().quarantines().is_empty());
    na.node.shutdown().await;
    nb.node.shutdown().await;
    nc.node.shutdown().await;
}

/// A TCP proxy to `to`. What the client sends is always forwarded; what
/// the node sends is forwarded until `stall` is set, then never read again
/// (the upstream socket has a 4 KiB receive buffer): a peer that stopped
/// reading.
async fn stalling_proxy(
    to: std::net::SocketAddr,
    stall: Arc<std::sync::atomic::AtomicBool>,
) -> std::net::SocketAddr {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (down, _) = l.accept().await.unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let up = sock.connect(to).await.unwrap();
        let (mut dr, mut dw) = down.into_split();
        let (mut ur, mut uw) = up.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut dr, &mut uw).await;
        });
        let mut buf = [0u8; 4096];
        while !stall.load(Ordering::SeqCst) {
            let n = match ur.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if dw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
        // Stalled: hold both sockets open, read nothing more.
        std::future::pending::<()>().await;
    });
    addr
}

/// Memories of incompressible text (a bundle of several MiB).
fn remember_big(h: &Home, count: usize) {
    use rand::Rng;
    let id = ident(h.n);
    let s = h.store();
    let mut rng = rand::thread_rng();
    for i in 0..count {
        let text: String = (0..200 * 1024)
            .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
            .collect();
        s.append(&id, &[mem(&id, &format!("big {i} {text}"), &["big"])], "m")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_dropped_and_others_keep_replicating() {
    // A serves a healthy peer H (node 2, dials A) and a trusted peer S
    // (key 3) that pulls a bundle of several MiB and stops reading. H must
    // keep receiving A's new memories live meanwhile, and A must drop S
    // after its send timeout (1 s here), saying why.
    let dir = tempfile::tempdir().unwrap();
    let (a, h) = (Home::new(dir.path(), 1), Home::new(dir.path(), 2));
    remember_big(&a, 16);
    a.trust(2, None);
    a.trust(3, None);
    let send_timeout = Duration::from_secs(1);
    let na = start_with(
        &a,
        NodeConfig {
            send_timeout,
            ..node_config(&a.peers)
        },
        |_| {},
    )
    .await;
    h.trust(1, Some(na.addr()));
    let nh = start(&h, |_| {}).await;
    wait_for("A's big memories on H", 20, || h.count(1) == 16).await;
    let mut events = na.node.subscribe();
    let dropped = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(NodeEvent::PeerDisconnected { pubkey, reason, .. }) if pubkey == key(3) => {
                    break (Instant::now(), reason);
                }
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });

    let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proxy = stalling_proxy(na.node.local_addr(), stall.clone()).await;
    let cfg = ClientConfig {
        listen_port: Some(9),
        ..ClientConfig::default()
    };
    let mut s = connect(&proxy.to_string(), ident(3), Some(key(1)), &cfg)
        .await
        .unwrap();
    stall.store(true, std::sync::atomic::Ordering::SeqCst);
    s.send(Message::MemoryRequest(MemoryRequest {
        id: 1,
        sync: Some(mmogit_proto::SyncRequest {
            have: vec![],
            max_transfer: None,
        }),
        ..Default::default()
    }))
    .await
    .unwrap();
    let stalled_at = Instant::now();

    // Live propagation to H goes on while S holds A's bundle unread.
    let mut lags = Vec::new();
    for i in 0..6 {
        a.remember(1, &format!("live{i}"));
        let t = Instant::now();
        wait_for("a new memory on H", 3, || h.count(1) == 17 + i).await;
        lags.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (at, reason) = tokio::time::timeout(Duration::from_secs(10), dropped)
        .await
        .expect("the stalled peer is dropped")
        .unwrap();
    let after = at - stalled_at;
    let max_lag = lags.iter().max().unwrap();
    eprintln!(
        "stalled peer dropped {:.2} s after its pull request ({reason}); healthy peer lag max {:.0} ms over {} live memories",
        after.as_secs_f64(),
        max_lag.as_secs_f64() * 1000.0,
        lags.len()
    );
    assert!(reason.contains("took none of our data"), "{reason}");
    assert!(after >= send_timeout, "{after:?}");
    assert!(after < send_timeout + Duration::from_secs(5), "{after:?}");
    assert_eq!(na.node.slow_dropped_count(), 1);
    assert!(*max_lag < Duration::from_secs(2), "{lags:?}");
    assert!(na
        .node
        .peers()
        .iter()
        .any(|p| p.pubkey == key(2) && p.connected));
    drop(s);
    na.node.shutdown().await;
    nh.node.shutdown().await;
}
