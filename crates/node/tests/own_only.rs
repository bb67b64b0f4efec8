//! `serve_own_only` holds on every answer: a node that holds memories of its
//! own author and of another one shows peers only its own, whether they
//! query, pull or listen to its announces. 127.0.0.1 port 0 only; every wait
//! is bounded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmogit_identity::{Identity, PublicKey};
use mmogit_node::replicate::*;
use mmogit_node::*;
use mmogit_proto::{MemoryRequest, MemoryResponse, Message, SyncRequest};
use mmogit_store::{MemoryType, NewMemory, Store, VerifiedMemory};

fn ident(n: u8) -> Arc<Identity> {
    Arc::new(Identity::from_secret_bytes(&[n; 32]))
}

fn key(n: u8) -> PublicKey {
    ident(n).public_key()
}

/// Repository of agent `n` in `dir`.
fn repo(dir: &Path, n: u8) -> PathBuf {
    let r = dir.join(format!("repo{n}.git"));
    Store::open_or_init(&r).unwrap();
    r
}

fn remember(repo: &Path, n: u8, count: usize) {
    let id = ident(n);
    let s = Store::open(repo).unwrap();
    for i in 0..count {
        let m = VerifiedMemory::create(
            &id,
            NewMemory {
                kind: MemoryType::Learning,
                content: format!("memory {i} of agent {n}"),
                tags: vec!["t".into()],
                confidence: None,
                private: false,
            },
        )
        .unwrap();
        s.append(&id, &[m], "m").unwrap();
    }
}

/// A node of agent 1 holding 3 memories of its own and 2 of agent 3 (relayed
/// to it earlier), trusting agent 2, serving only its own branch.
struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    node: NodeHandle,
}

async fn setup() -> Setup {
    setup_with(true).await
}

async fn setup_with(own_only: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let a = repo(dir.path(), 1);
    remember(&a, 1, 3);
    let other = repo(dir.path(), 3);
    remember(&other, 3, 2);
    let b = Store::open(&other)
        .unwrap()
        .build_bundle(&[], None, u64::MAX)
        .unwrap()
        .unwrap();
    let p = dir.path().join("other.bundle");
    std::fs::write(&p, &b.bytes).unwrap();
    assert!(Store::open(&a)
        .unwrap()
        .ingest_bundle(&p, "t")
        .unwrap()
        .is_ok());
    let held = held_branches(&a);
    assert_eq!(held.len(), 2, "the node holds both branches");

    let peers = dir.path().join("peers1.json");
    let mut s = PeerStore::load(&peers).unwrap();
    s.add(key(2), None, vec![], PeerSource::Manual);
    s.save().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let node = Node::new(
        ident(1),
        NodeConfig {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            handshake_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(2),
            peers_path: Some(peers.clone()),
            dial_trusted: false,
            ..NodeConfig::default()
        },
        Arc::new(PeerStoreTrust::new(peers)),
    )
    .with_inbox(tx)
    .start()
    .await
    .unwrap();
    let mut cfg = ReplicatorConfig::new(a, key(1));
    cfg.serve_own_only = own_only;
    cfg.poll_interval = Duration::from_millis(20);
    tokio::spawn(Replicator::new(cfg).run(rx, node.sender()));
    Setup {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        node,
    }
}

async fn client(s: &Setup, listen_port: Option<u16>) -> Connection {
    let cfg = ClientConfig {
        listen_port,
        ..ClientConfig::default()
    };
    connect(
        &s.node.local_addr().to_string(),
        ident(2),
        Some(key(1)),
        &cfg,
    )
    .await
    .unwrap()
}

async fn recv_until<T>(conn: &mut Connection, mut f: impl FnMut(Message) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, conn.recv())
            .await
            .expect("timed out waiting for the node")
            .unwrap();
        if let Some(t) = f(m) {
            return t;
        }
    }
}

fn authors(tips: &[mmogit_proto::BranchTip]) -> Vec<String> {
    tips.iter().map(|t| t.author.clone()).collect()
}

/// The authors whose branches the repository at `repo` holds.
fn held_branches(repo: &std::path::Path) -> Vec<PublicKey> {
    Store::open(repo)
        .unwrap()
        .branches()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_answers_hold_only_own_memories() {
    let s = setup().await;
    let mut conn = client(&s, None).await;
    let t = Duration::from_secs(10);
    let all = query_peer(&mut conn, MemoryRequest::default(), t)
        .await
        .unwrap();
    let by: Vec<PublicKey> = all.memories.iter().map(|m| *m.author()).collect();
    assert_eq!(by, vec![key(1); 3], "only the node's own memories");
    // Asking for the other author by name gets nothing either.
    let other = query_peer(
        &mut conn,
        MemoryRequest {
            authors: vec![key(3).to_hex()],
            ..Default::default()
        },
        t,
    )
    .await
    .unwrap();
    assert!(other.memories.is_empty(), "{:?}", other.memories.len());
    // Both authors asked: only ours.
    let both = query_peer(
        &mut conn,
        MemoryRequest {
            authors: vec![key(3).to_hex(), key(1).to_hex()],
            ..Default::default()
        },
        t,
    )
    .await
    .unwrap();
    assert_eq!(both.memories.len(), 3);
    conn.close("done").await.unwrap();
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_answers_hold_only_own_branch() {
    let s = setup().await;
    // The answer to a pull names only our branch...
    let mut conn = client(&s, None).await;
    send_pull(&mut conn, 7, &[]).await;
    let tips = recv_until(&mut conn, |m| match m {
        Message::MemoryResponse(MemoryResponse {
            id: Some(7), tips, ..
        }) => Some(tips.unwrap_or_default()),
        _ => None,
    })
    .await;
    assert_eq!(authors(&tips), vec![key(1).to_hex()], "pull answer tips");
    conn.close("done").await.unwrap();
    // ...and what a pull brings is only our branch.
    let mine = repo(&s.dir, 2);
    let mut conn = client(&s, None).await;
    let cfg = ClientSync {
        repo: mine.clone(),
        me: key(2),
        max_transfer: DEFAULT_MAX_TRANSFER,
        max_rate: None,
        chunk_size: 1 << 20,
        timeout: Duration::from_secs(10),
        deadline: Duration::from_secs(60),
    };
    let out = sync_connection(&mut conn, &cfg, &|_, _, _| {})
        .await
        .unwrap();
    assert!(out.pull_error.is_none(), "{:?}", out.pull_error);
    let got = held_branches(&mine);
    assert_eq!(got, vec![key(1)], "pulled branches");
    conn.close("done").await.unwrap();
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_tips_hold_only_own_branch() {
    let s = setup().await;
    // A peer session (it announces a listen port) hears the node's tips.
    let mut conn = client(&s, Some(9)).await;
    let tips = recv_until(&mut conn, |m| match m {
        Message::MemoryResponse(MemoryResponse {
            id: None,
            tips: Some(t),
            ingested: None,
            ..
        }) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!(authors(&tips), vec![key(1).to_hex()], "announced tips");
    conn.close("done").await.unwrap();
    s.node.shutdown().await;
}

/// Sends pull `id` with nothing held, naming `authors` (none: every branch).
async fn send_pull(conn: &mut Connection, id: u64, authors: &[PublicKey]) {
    conn.send(Message::MemoryRequest(MemoryRequest {
        id,
        authors: authors.iter().map(PublicKey::to_hex).collect(),
        sync: Some(SyncRequest {
            have: vec![],
            max_transfer: None,
        }),
        ..Default::default()
    }))
    .await
    .unwrap();
}

/// The transfer announced for pull `id` naming `authors`: its commits, or
/// None for "nothing new".
async fn pull_naming(conn: &mut Connection, id: u64, authors: &[PublicKey]) -> Option<u64> {
    send_pull(conn, id, authors).await;
    recv_until(conn, |m| match m {
        Message::MemoryResponse(MemoryResponse {
            id: Some(i),
            transfer,
            ..
        }) if i == id => Some(transfer.map(|t| t.commits)),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targeted_pull_gets_only_the_branches_it_names() {
    // A relaying node holds 3 memories of its own and 2 of agent 3.
    let s = setup_with(false).await;
    let mut conn = client(&s, None).await;
    assert_eq!(pull_naming(&mut conn, 1, &[]).await, Some(5), "everything");
    conn.close("done").await.unwrap();
    let mut conn = client(&s, None).await;
    assert_eq!(
        pull_naming(&mut conn, 2, &[key(3)]).await,
        Some(2),
        "agent 3's only"
    );
    conn.close("done").await.unwrap();
    let mut conn = client(&s, None).await;
    assert_eq!(
        pull_naming(&mut conn, 3, &[key(9)]).await,
        None,
        "a branch it does not hold"
    );
    conn.close("done").await.unwrap();
    s.node.shutdown().await;
    // Serving its own branch only, naming another author gets nothing.
    let s = setup().await;
    let mut conn = client(&s, None).await;
    assert_eq!(pull_naming(&mut conn, 4, &[key(3)]).await, None);
    conn.close("done").await.unwrap();
    let mut conn = client(&s, None).await;
    assert_eq!(pull_naming(&mut conn, 5, &[key(3), key(1)]).await, Some(3));
    conn.close("done").await.unwrap();
    s.node.shutdown().await;
}
