//! The client side against a hostile server: `query_peer` and
//! `sync_connection` end within their bounds whatever the other side sends
//! (endless pages, unrelated chatter that used to extend every wait, a
//! transfer that trickles forever). Every test is wrapped in an outer
//! timeout, so a client that waits forever fails instead of hanging.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mmogit_identity::{Identity, PublicKey};
use mmogit_node::replicate::{
    query_peer, query_peer_with, sync_connection, ClientSync, QueryLimits,
};
use mmogit_node::*;
use mmogit_proto::{GitBundle, MemoryRequest, MemoryResponse, Message, TransferInfo};

fn ident(n: u8) -> Arc<Identity> {
    Arc::new(Identity::from_secret_bytes(&[n; 32]))
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Every query page: no memory, and a cursor.
    EndlessPages,
    /// Never answers; the chatter task talks meanwhile.
    Silent,
    /// Answers a pull with a transfer of 10,000 chunks, then trickles.
    Trickle,
}

struct Hostile(Behaviour);

impl MessageHandler for Hostile {
    fn handle(&self, _peer: &PublicKey, msg: Message) -> Vec<Message> {
        match (self.0, msg) {
            (Behaviour::EndlessPages, Message::MemoryRequest(r)) => {
                vec![Message::MemoryResponse(MemoryResponse {
                    id: Some(r.id),
                    cursor: Some("again".into()),
                    ..Default::default()
                })]
            }
            (Behaviour::Trickle, Message::MemoryRequest(r)) if r.sync.is_some() => {
                vec![Message::MemoryResponse(MemoryResponse {
                    id: Some(r.id),
                    tips: Some(vec![]),
                    transfer: Some(TransferInfo {
                        transfer_id: "t".into(),
                        total_size: 10_000,
                        sha256: "0".repeat(64),
                        chunks: 10_000,
                        commits: 1,
                    }),
                    ..Default::default()
                })]
            }
            _ => vec![],
        }
    }
}

/// A node answering as `b`, and a session to it from key 5 that announces
/// a listen port (so the node can also send to it unasked).
async fn hostile(b: Behaviour) -> (NodeHandle, Connection) {
    let config = NodeConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        idle_timeout: Duration::from_secs(30),
        ..NodeConfig::default()
    };
    let node = Node::new(ident(1), config, Arc::new(|_: &_, _| true))
        .with_handler(Arc::new(Hostile(b)))
        .start()
        .await
        .unwrap();
    let conn = connect(
        &node.local_addr().to_string(),
        ident(5),
        None,
        &ClientConfig {
            listen_port: Some(1),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    (node, conn)
}

/// Sends `make(i)` to key 5 every 50 ms, from `after` on, until the node
/// stops (or 100 s).
fn chatter(node: &NodeHandle, after: Duration, make: impl Fn(u64) -> Message + Send + 'static) {
    let tx = node.sender();
    let to = ident(5).public_key();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        for i in 0..2000 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if tx.is_stopping() {
                break;
            }
            if let Some(s) = tx.session(&to) {
                let _ = s.send(make(i), Duration::from_secs(1)).await;
            }
        }
    });
}

fn announce(_: u64) -> Message {
    Message::MemoryResponse(MemoryResponse {
        tips: Some(vec![]),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_pages_stop_at_the_page_cap() {
    let (_node, mut conn) = hostile(Behaviour::EndlessPages).await;
    let limits = QueryLimits {
        max_pages: 25,
        ..QueryLimits::new(Duration::from_secs(5))
    };
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        query_peer_with(&mut conn, MemoryRequest::default(), &limits),
    )
    .await
    .expect("the query ends");
    let e = r.unwrap_err().to_string();
    assert!(e.contains("25 pages"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_messages_do_not_extend_a_query_wait() {
    let (node, mut conn) = hostile(Behaviour::Silent).await;
    chatter(&node, Duration::ZERO, announce);
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        query_peer(
            &mut conn,
            MemoryRequest::default(),
            Duration::from_millis(600),
        ),
    )
    .await
    .expect("the query ends");
    assert!(matches!(r, Err(NodeError::Timeout(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

fn client_sync(dir: &std::path::Path, timeout: Duration, deadline: Duration) -> ClientSync {
    let repo = dir.join("memories.git");
    mmogit_store::Store::open_or_init(&repo).unwrap();
    ClientSync {
        repo,
        me: ident(5).public_key(),
        max_transfer: 1 << 30,
        max_rate: None,
        chunk_size: 1 << 20,
        timeout,
        deadline,
    }
}

/// Runs a client sync into a fresh repository (600 ms per wait, `deadline`
/// in all) under an outer 20 s timeout; its result, how long it took, and
/// the directory of the repository.
async fn timed_sync(
    conn: &mut Connection,
    deadline: Duration,
) -> (
    Result<mmogit_node::replicate::SyncOutcome, mmogit_node::replicate::ReplicateError>,
    Duration,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = client_sync(dir.path(), Duration::from_millis(600), deadline);
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        sync_connection(conn, &cfg, &|_, _, _| {}),
    )
    .await
    .expect("the sync ends");
    (r, t.elapsed(), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_messages_do_not_extend_a_sync_wait() {
    let (node, mut conn) = hostile(Behaviour::Silent).await;
    chatter(&node, Duration::ZERO, announce);
    let (r, took, _) = timed_sync(&mut conn, Duration::from_secs(60)).await;
    assert!(
        matches!(
            r,
            Err(mmogit_node::replicate::ReplicateError::Peer(
                NodeError::Timeout(_)
            ))
        ),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_that_trickles_ends_at_the_sync_deadline() {
    // One byte every 50 ms is progress, so the per-wait timeout never
    // fires; the overall deadline ends it, and nothing is applied.
    let (node, mut conn) = hostile(Behaviour::Trickle).await;
    // (after the client asked, so the chunks belong to its transfer)
    chatter(&node, Duration::from_millis(400), |i| {
        Message::GitBundle(GitBundle {
            transfer_id: "t".into(),
            index: i,
            total_size: 10_000,
            sha256: "0".repeat(64),
            data: vec![b'x'],
        })
    });
    let (r, took, dir) = timed_sync(&mut conn, Duration::from_millis(1500)).await;
    let e = r.unwrap_err();
    assert!(e.to_string().contains("deadline"), "{e}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    let store = mmogit_store::Store::open(&dir.path().join("memories.git")).unwrap();
    assert!(store.branches().unwrap().is_empty());
}
