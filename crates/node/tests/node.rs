//! Node tests on 127.0.0.1, port 0 only. Every wait is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mmogit_identity::Identity;
use mmogit_node::*;
use mmogit_proto::{Message, Session, SessionConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ident(n: u8) -> Arc<Identity> {
    Arc::new(Identity::from_secret_bytes(&[n; 32]))
}

fn node_config() -> NodeConfig {
    NodeConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_secs(2),
        frame_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(2),
        ..NodeConfig::default()
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    peers: std::path::PathBuf,
    node: NodeHandle,
    addr: String,
}

/// A node with key 1 that trusts key 2.
async fn fixture(config: NodeConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let peers = dir.path().join("peers.json");
    let mut store = PeerStore::load(&peers).unwrap();
    store.add(
        ident(2).public_key(),
        Some("two".into()),
        vec![],
        PeerSource::Manual,
    );
    store.save().unwrap();
    let node = Node::new(
        ident(1),
        config,
        Arc::new(PeerStoreTrust::new(peers.clone())),
    )
    .start()
    .await
    .unwrap();
    let addr = node.local_addr().to_string();
    Fixture {
        _dir: dir,
        peers,
        node,
        addr,
    }
}

async fn trusted_client(f: &Fixture) -> Connection {
    connect(
        &f.addr,
        ident(2),
        Some(ident(1).public_key()),
        &client_config(),
    )
    .await
    .unwrap()
}

/// Reads until EOF or error; true if the server closed within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn ping_between_two_nodes() {
    let f = fixture(node_config()).await;
    let mut events = f.node.subscribe();
    // The client side is itself a node, as in real use.
    let other = Node::new(ident(2), node_config(), Arc::new(|_: &_, _| false))
        .start()
        .await
        .unwrap();
    let mut c = trusted_client(&f).await;
    assert_eq!(c.peer_pubkey(), ident(1).public_key());
    assert_eq!(c.peer().listen_port, Some(f.node.local_addr().port()));
    assert!(c.handshake_rtt() < Duration::from_secs(2));
    for _ in 0..3 {
        let rtt = c.ping().await.unwrap();
        assert!(rtt < Duration::from_secs(2));
    }
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev, NodeEvent::PeerConnected { pubkey, .. } if pubkey == ident(2).public_key())
    );
    c.close("done").await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev, NodeEvent::PeerDisconnected { ref reason, .. } if reason.contains("done")),
        "{ev:?}"
    );
    other.shutdown().await;
    f.node.shutdown().await;
    // last_seen recorded for the trusted peer (written by the periodic
    // flush, at the latest at shutdown).
    let store = PeerStore::load(&f.peers).unwrap();
    assert!(store
        .get_key(&ident(2).public_key())
        .unwrap()
        .last_seen
        .is_some());
}

#[tokio::test]
async fn untrusted_key_is_refused_and_recorded_pending() {
    let f = fixture(node_config()).await;
    let mut events = f.node.subscribe();
    let err = connect(&f.addr, ident(3), None, &client_config())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, NodeError::NotAuthorized { peer: Some(p) } if p == f.node.public_key()),
        "{err}"
    );
    // Recorded in memory at once, written within about a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let rec = loop {
        let store = PeerStore::load(&f.peers).unwrap();
        if let Some(r) = store.get_key(&ident(3).public_key()) {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "pending key not written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rec.trust, TrustState::Pending);
    assert_eq!(rec.addresses.len(), 1);
    assert!(rec.addresses[0].starts_with("127.0.0.1:"));
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, NodeEvent::Refused { pubkey: Some(k), .. } if k == ident(3).public_key()));
    // Trusting it in the file takes effect without a restart.
    PeerStore::update(&f.peers, |s| {
        s.trust(&ident(3).public_key().to_hex()[..8]).map(|_| ())
    })
    .unwrap();
    let mut c = connect(&f.addr, ident(3), None, &client_config())
        .await
        .unwrap();
    c.ping().await.unwrap();
    f.node.shutdown().await;
}

#[tokio::test]
async fn wrong_expected_pubkey_and_unreachable() {
    let f = fixture(node_config()).await;
    let err = connect(
        &f.addr,
        ident(2),
        Some(ident(9).public_key()),
        &client_config(),
    )
    .await
    .err()
    .unwrap();
    // Version 2: the node cannot read a handshake made for another key, so
    // it closes; the client says what that means.
    assert!(matches!(err, NodeError::KeyNotProven { .. }), "{err}");
    assert!(err.to_string().contains("impersonation"));
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap().to_string();
    drop(l);
    let err = connect(&dead, ident(2), None, &client_config())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, NodeError::Unreachable { .. }), "{err}");
    f.node.shutdown().await;
}

#[tokio::test]
async fn slow_sender_is_cut_off() {
    let f = fixture(node_config()).await; // frame timeout 1 s
    let mut s = TcpStream::connect(&f.addr).await.unwrap();
    let hello = Session::initiator(
        ident(2),
        Arc::new(SessionConfig::default()),
        None,
        [1; 32],
        Box::new(rand::rngs::OsRng),
        Instant::now(),
    )
    .poll_transmit()
    .unwrap();
    let start = Instant::now();
    let mut cut = false;
    // One byte every 300 ms; bounded to the frame length and 5 s.
    for b in hello.iter().take(20) {
        if s.write_all(std::slice::from_ref(b)).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            _ => {}
        }
        if start.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    assert!(cut, "server kept a connection sending one byte at a time");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // Still serving.
    trusted_client(&f).await.ping().await.unwrap();
    f.node.shutdown().await;
}

/// Runs a real initiator session over a raw socket, returning the bytes
/// it sent, one entry per write.
async fn raw_handshake(addr: &str) -> Vec<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut sess = Session::initiator(
        ident(2),
        Arc::new(SessionConfig::default()),
        None,
        [7; 32],
        Box::new(rand::rngs::OsRng),
        Instant::now(),
    );
    let mut sent = vec![];
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(3);
    while !sess.is_established() && Instant::now() < end {
        while let Some(f) = sess.poll_transmit() {
            s.write_all(&f).await.unwrap();
            sent.push(f);
        }
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        sess.handle_input(Instant::now(), &buf[..n]).unwrap();
        while sess.poll_event().is_some() {}
    }
    assert!(sess.is_established());
    sent
}

/// Every byte the server sends until it closes (bounded: 3 s).
async fn server_bytes(s: &mut TcpStream) -> Vec<u8> {
    let mut out = vec![];
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    out
}

#[tokio::test]
async fn hostile_raw_clients_are_disconnected() {
    let f = fixture(node_config()).await;
    for junk in [
        // A 64 KiB handshake message declared.
        &[0xff, 0xff, 0xff, 0xff][..],
        // Length 0 (also what a version 1 frame header looks like).
        &[0, 0, 0, 0][..],
        // Garbage.
        &b"\0\0\0\x10GET / HTTP/1.1\r\n"[..],
    ] {
        let mut s = TcpStream::connect(&f.addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        assert_eq!(
            server_bytes(&mut s).await,
            b"",
            "{junk:?}: not one byte back"
        );
    }
    // A replay of a whole earlier connection, in one write: the third
    // handshake message does not decrypt (the node's ephemeral key is
    // new), so at most the second comes back: no Hello, no Bye, nothing
    // signed.
    let recorded = raw_handshake(&f.addr).await;
    let mut s = TcpStream::connect(&f.addr).await.unwrap();
    s.write_all(&recorded.concat()).await.unwrap();
    let back = server_bytes(&mut s).await;
    assert!(
        back.len() <= 2 + mmogit_proto::noise::MAX_HANDSHAKE_MESSAGE,
        "{} bytes back",
        back.len()
    );
    // The server keeps serving.
    trusted_client(&f).await.ping().await.unwrap();
    f.node.shutdown().await;
}

#[tokio::test]
async fn connection_flood_against_low_limit() {
    let f = fixture(NodeConfig {
        max_inbound: 8,
        max_per_ip: 1000,
        // This test is about the connection limit, not the rate limit.
        inbound_rate: None,
        ..node_config()
    })
    .await;
    let mut events = f.node.subscribe();
    let mut c = trusted_client(&f).await;
    let mut flood = Vec::new();
    let connects: Vec<_> = (0..200)
        .map(|_| {
            let a = f.addr.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(a)).await
            })
        })
        .collect();
    for h in connects {
        if let Ok(Ok(Ok(s))) = h.await {
            flood.push(s);
        }
    }
    // The established peer is still served while the flood holds its slots.
    c.ping().await.unwrap();
    assert!(f.node.connection_count() <= 8);
    // Full, each new connection evicts the oldest unauthenticated one
    // (never the authenticated session), reported as Refused.
    let end = Instant::now() + Duration::from_secs(3);
    let mut refused = 0;
    while refused < 150 && Instant::now() < end {
        while let Ok(ev) = events.try_recv() {
            if matches!(ev, NodeEvent::Refused { ref reason, .. } if reason == "evicted: inbound slots full")
            {
                refused += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused >= 150, "refused {refused}");
    assert!(f.node.evicted_count() >= 150, "{}", f.node.evicted_count());
    c.ping().await.unwrap();
    drop(flood);
    // Slots free again (EOF); a new trusted connection is served.
    let end = Instant::now() + Duration::from_secs(3);
    while f.node.connection_count() > 1 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c2 = trusted_client(&f).await;
    c2.ping().await.unwrap();
    c.ping().await.unwrap();
    f.node.shutdown().await;
}

#[tokio::test]
async fn per_ip_limit() {
    let f = fixture(NodeConfig {
        max_per_ip: 2,
        ..node_config()
    })
    .await;
    let _a = TcpStream::connect(&f.addr).await.unwrap();
    let _b = TcpStream::connect(&f.addr).await.unwrap();
    let mut c = TcpStream::connect(&f.addr).await.unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(2)).await);
    f.node.shutdown().await;
}

#[tokio::test]
async fn silent_peer_times_out_handshake() {
    let f = fixture(node_config()).await; // handshake timeout 2 s
    let mut s = TcpStream::connect(&f.addr).await.unwrap();
    let start = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
    assert!(start.elapsed() >= Duration::from_millis(1500));
    f.node.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_sends_bye() {
    let f = fixture(node_config()).await;
    let mut c = trusted_client(&f).await;
    c.ping().await.unwrap();
    let start = Instant::now();
    f.node.shutdown().await;
    assert!(start.elapsed() < Duration::from_secs(2));
    let err = c.ping().await.err().unwrap();
    assert!(
        matches!(err, NodeError::PeerClosed(ref r) if r == "shutting down"),
        "{err}"
    );
}

#[tokio::test]
async fn data_messages_reach_the_handler() {
    struct Echo;
    impl MessageHandler for Echo {
        fn handle(&self, _peer: &mmogit_identity::PublicKey, msg: Message) -> Vec<Message> {
            match msg {
                Message::MemoryRequest(r) => {
                    vec![Message::MemoryResponse(mmogit_proto::MemoryResponse {
                        cursor: r.cursor,
                        ..Default::default()
                    })]
                }
                _ => vec![],
            }
        }
    }
    let node = Node::new(ident(1), node_config(), Arc::new(|_: &_, _| true))
        .with_handler(Arc::new(Echo))
        .start()
        .await
        .unwrap();
    let mut c = connect(
        &node.local_addr().to_string(),
        ident(5),
        None,
        &client_config(),
    )
    .await
    .unwrap();
    c.send(Message::MemoryRequest(mmogit_proto::MemoryRequest {
        cursor: Some("abc".into()),
        ..Default::default()
    }))
    .await
    .unwrap();
    let reply = c.recv().await.unwrap();
    assert!(matches!(reply, Message::MemoryResponse(r) if r.cursor.as_deref() == Some("abc")));
    node.shutdown().await;
}
