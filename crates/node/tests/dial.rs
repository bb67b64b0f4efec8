//! Peer sessions kept by the dialer: simultaneous dial, reconnect, trust
//! changes, send_to both ways, the inbound rate limit, the status file.
//! 127.0.0.1 port 0 only; every wait is bounded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mmogit_identity::{Identity, PublicKey};
use mmogit_node::*;
use mmogit_proto::{GitBundle, MemoryRequest, MemoryResponse, Message};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn ident(n: u8) -> Arc<Identity> {
    Arc::new(Identity::from_secret_bytes(&[n; 32]))
}

fn config(peers: &Path) -> NodeConfig {
    NodeConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_secs(2),
        frame_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(2),
        peers_path: Some(peers.to_path_buf()),
        dial_trusted: true,
        dial_refresh: Duration::from_millis(100),
        dial_backoff_base: Duration::from_millis(50),
        dial_backoff_cap: Duration::from_millis(200),
        healthy_session: Duration::from_millis(200),
        dial_timeout: Duration::from_secs(1),
        ..NodeConfig::default()
    }
}

/// Records data messages; answers MemoryRequest with MemoryResponse.
#[derive(Default)]
struct Recorder(Mutex<Vec<(PublicKey, Message)>>);

impl MessageHandler for Recorder {
    fn handle(&self, peer: &PublicKey, msg: Message) -> Vec<Message> {
        let reply = match &msg {
            Message::MemoryRequest(r) => vec![Message::MemoryResponse(MemoryResponse {
                cursor: r.cursor.clone(),
                ..Default::default()
            })],
            _ => vec![],
        };
        self.0.lock().unwrap().push((*peer, msg));
        reply
    }
}

struct Side {
    key: u8,
    peers: PathBuf,
    status: PathBuf,
    recorder: Arc<Recorder>,
    node: Option<NodeHandle>,
}

impl Side {
    fn new(dir: &Path, key: u8) -> Side {
        Side {
            key,
            peers: dir.join(format!("peers{key}.json")),
            status: dir.join(format!("status{key}.json")),
            recorder: Arc::new(Recorder::default()),
            node: None,
        }
    }

    async fn start(&mut self, addr: Option<std::net::SocketAddr>) {
        self.start_with(addr, Duration::ZERO).await
    }

    /// Starts with a policy that takes `slow` to decide about each inbound
    /// key, as a node on a slow network or disk would.
    async fn start_with(&mut self, addr: Option<std::net::SocketAddr>, slow: Duration) {
        let mut c = config(&self.peers);
        if let Some(a) = addr {
            c.listen_addr = a;
        }
        c.status_path = Some(self.status.clone());
        let policy = Slow(PeerStoreTrust::new(self.peers.clone()), slow);
        let node = Node::new(ident(self.key), c, Arc::new(policy))
            .with_handler(self.recorder.clone())
            .start()
            .await
            .unwrap();
        self.node = Some(node);
    }

    fn node(&self) -> &NodeHandle {
        self.node.as_ref().unwrap()
    }

    fn addr(&self) -> String {
        self.node().local_addr().to_string()
    }

    /// Changes the peer file under its lock, as the CLI does while the node runs.
    fn edit(&self, f: impl FnOnce(&mut PeerStore)) {
        PeerStore::update(&self.peers, |s| {
            f(s);
            Ok::<_, PeerStoreError>(())
        })
        .unwrap();
    }

    fn trust(&self, other: u8, addr: Option<String>) {
        self.edit(|s| {
            s.add(
                ident(other).public_key(),
                None,
                addr.into_iter().collect(),
                PeerSource::Manual,
            );
        });
    }

    fn status_of(&self, other: u8) -> Option<PeerStatus> {
        let k = ident(other).public_key();
        self.node().peers().into_iter().find(|p| p.pubkey == k)
    }

    fn connected_to(&self, other: u8) -> bool {
        self.status_of(other).is_some_and(|p| p.connected)
    }

    async fn shutdown(&mut self) {
        if let Some(n) = self.node.take() {
            n.shutdown().await;
        }
    }
}

/// The standard policy, taking this long for each decision.
struct Slow(PeerStoreTrust, Duration);

impl TrustPolicy for Slow {
    fn authorize(&self, pubkey: &PublicKey, addr: std::net::SocketAddr) -> bool {
        std::thread::sleep(self.1);
        self.0.authorize(pubkey, addr)
    }

    fn flush(&self) {
        self.0.flush()
    }
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn simultaneous_dial_leaves_one_session() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = (Side::new(dir.path(), 1), Side::new(dir.path(), 2));
        // Each dial is in flight for at least 50 ms: otherwise one side's
        // session may be up before the other side's dialer even looked,
        // and that side, already connected, would not dial at all.
        a.start_with(None, Duration::from_millis(50)).await;
        b.start_with(None, Duration::from_millis(50)).await;
        // Both learn the other's address at the same moment and dial at once.
        a.trust(2, Some(b.addr()));
        b.trust(1, Some(a.addr()));
        a.node().dial_now();
        b.node().dial_now();
        wait_until("both connected", Duration::from_secs(5), || {
            a.connected_to(2) && b.connected_to(1)
        })
        .await;
        // Settled: still exactly one session on each side, the same one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.node().session_count(), 1, "round {round}");
        assert_eq!(b.node().session_count(), 1, "round {round}");
        let (sa, sb) = (a.status_of(2).unwrap(), b.status_of(1).unwrap());
        assert!(sa.connected && sb.connected, "round {round}");
        let (da, db) = (sa.direction.unwrap(), sb.direction.unwrap());
        assert_ne!(
            da, db,
            "round {round}: one side's outbound is the other's inbound"
        );
        // The surviving connection is the one opened by the lower key.
        let a_lower = ident(1).public_key().as_bytes() < ident(2).public_key().as_bytes();
        assert_eq!(da == Direction::Outbound, a_lower, "round {round}");
        a.shutdown().await;
        b.shutdown().await;
    }
}

#[tokio::test]
async fn send_to_works_both_ways_on_one_session() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Side::new(dir.path(), 1), Side::new(dir.path(), 2));
    a.start(None).await;
    b.start(None).await;
    b.trust(1, None); // B accepts A but does not dial it.
    a.trust(2, Some(b.addr()));
    a.node().dial_now();
    wait_until("A connected to B", Duration::from_secs(5), || {
        a.connected_to(2) && b.connected_to(1)
    })
    .await;
    assert_eq!(a.status_of(2).unwrap().direction, Some(Direction::Outbound));
    assert_eq!(b.status_of(1).unwrap().direction, Some(Direction::Inbound));
    let not_peer = ident(9).public_key();
    assert!(matches!(
        a.node().send_to(&not_peer, Message::Ping(vec![])).await,
        Err(SendError::NotConnected(_))
    ));
    // A → B request, answered on the same session to A's handler.
    a.node()
        .send_to(
            &ident(2).public_key(),
            Message::MemoryRequest(MemoryRequest {
                cursor: Some("c1".into()),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    // B → A over the session A opened.
    b.node()
        .send_to(
            &ident(1).public_key(),
            Message::GitBundle(GitBundle {
                transfer_id: "t".into(),
                index: 0,
                total_size: 3,
                sha256: "00".repeat(32),
                data: vec![1, 2, 3],
            }),
        )
        .await
        .unwrap();
    let (ra, rb) = (a.recorder.clone(), b.recorder.clone());
    wait_until("messages delivered", Duration::from_secs(3), || {
        let a_got = ra.0.lock().unwrap().clone();
        let b_got = rb.0.lock().unwrap().clone();
        a_got.iter().any(|(k, m)| {
            *k == ident(2).public_key()
                && matches!(m, Message::MemoryResponse(r) if r.cursor.as_deref() == Some("c1"))
        }) && a_got
            .iter()
            .any(|(_, m)| matches!(m, Message::GitBundle(g) if g.data == [1, 2, 3]))
            && b_got
                .iter()
                .any(|(k, m)| *k == ident(1).public_key() && matches!(m, Message::MemoryRequest(_)))
    })
    .await;
    // RTT measured on the session.
    wait_until("rtt", Duration::from_secs(3), || {
        a.status_of(2).unwrap().rtt_us.is_some()
    })
    .await;
    // Blocking A in B's store disconnects it within the next refresh, and
    // A's dials are refused from then on.
    b.edit(|s| {
        s.set_blocked(&ident(1).public_key().to_hex()).unwrap();
    });
    wait_until("B dropped A", Duration::from_secs(3), || {
        !a.connected_to(2) && !b.connected_to(1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.connected_to(1));
    assert_eq!(b.node().session_count(), 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn reconnects_after_restart_and_after_trust() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Side::new(dir.path(), 1), Side::new(dir.path(), 2));
    a.start(None).await;
    b.start(None).await;
    // B does not know A yet: A's dials are refused and A backs off.
    a.trust(2, Some(b.addr()));
    a.node().dial_now();
    wait_until("refusals", Duration::from_secs(5), || {
        a.status_of(2).is_some_and(|p| p.failures >= 2)
    })
    .await;
    let s = a.status_of(2).unwrap();
    assert!(!s.connected);
    assert!(
        s.last_error.as_deref().unwrap().contains("not authorized"),
        "{s:?}"
    );
    assert!(s.backoff_ms.unwrap() > 50, "{s:?}");
    let rec = PeerStore::load(&a.peers).unwrap();
    assert!(rec
        .get_key(&ident(2).public_key())
        .unwrap()
        .last_error
        .is_some());
    // B recorded A as pending (written within about a second, coalesced);
    // trusting it lets A's next attempt in.
    wait_until("A pending on B", Duration::from_secs(5), || {
        PeerStore::load(&b.peers)
            .unwrap()
            .get_key(&ident(1).public_key())
            .map(|r| r.trust)
            == Some(TrustState::Pending)
    })
    .await;
    b.edit(|s| {
        s.trust(&ident(1).public_key().to_hex()).unwrap();
    });
    wait_until("connected after trust", Duration::from_secs(5), || {
        a.connected_to(2) && b.connected_to(1)
    })
    .await;
    assert_eq!(a.status_of(2).unwrap().last_error, None);
    // B restarts on the same port: A reconnects by itself.
    let b_addr = b.node().local_addr();
    let mut events = a.node().subscribe();
    b.shutdown().await;
    wait_until("A saw B go", Duration::from_secs(3), || !a.connected_to(2)).await;
    b.start(Some(b_addr)).await;
    wait_until("reconnected", Duration::from_secs(5), || {
        a.connected_to(2) && b.connected_to(1)
    })
    .await;
    let mut seen = (false, false);
    while let Ok(ev) = events.try_recv() {
        match ev {
            NodeEvent::PeerDisconnected { reason, .. } => {
                seen.0 |= reason.contains("shutting down")
            }
            NodeEvent::PeerConnected { pubkey, .. } => seen.1 |= pubkey == ident(2).public_key(),
            _ => {}
        }
    }
    assert_eq!(seen, (true, true), "events for the outbound session");
    // Removing B from A's store disconnects it and stops the dialling.
    a.edit(|s| {
        s.remove(&ident(2).public_key().to_hex()).unwrap();
    });
    wait_until("A dropped B", Duration::from_secs(3), || {
        !a.connected_to(2) && !b.connected_to(1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.node().session_count(), 0);
    assert_eq!(b.node().session_count(), 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn status_file_follows_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Side::new(dir.path(), 1), Side::new(dir.path(), 2));
    a.start(None).await;
    b.start(None).await;
    let s = read_status(&a.status).unwrap();
    assert!(s.is_live());
    assert_eq!(s.pid, std::process::id());
    assert_eq!(s.pubkey, ident(1).public_key());
    b.trust(1, None);
    a.trust(2, Some(b.addr()));
    a.node().dial_now();
    let path = a.status.clone();
    wait_until("status shows the session", Duration::from_secs(5), || {
        read_status(&path)
            .map(|s| {
                s.peers
                    .iter()
                    .any(|p| p.connected && p.pubkey == ident(2).public_key())
            })
            .unwrap_or(false)
    })
    .await;
    let s = read_status(&a.status).unwrap();
    let p = &s.peers[0];
    assert_eq!(p.direction, Some(Direction::Outbound));
    assert!(p.connected_since_ms.is_some() && p.addr.is_some());
    a.shutdown().await;
    let s = read_status(&a.status).unwrap();
    assert!(!s.running && !s.is_live());
    assert!(s.peers.iter().all(|p| !p.connected));
    b.shutdown().await;
}

#[tokio::test]
async fn inbound_rate_limit_refuses_a_burst_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let a = Side::new(dir.path(), 1);
    a.trust(2, None);
    let node = Node::new(
        ident(1),
        NodeConfig {
            inbound_rate: Some(InboundRate {
                per_sec: 20.0,
                burst: 5,
            }),
            max_per_ip: 1000,
            dial_trusted: false,
            ..config(&a.peers)
        },
        Arc::new(PeerStoreTrust::new(a.peers.clone())),
    )
    .start()
    .await
    .unwrap();
    let addr = node.local_addr().to_string();
    let mut conns = vec![];
    for _ in 0..100 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(&addr)).await
        {
            conns.push(s);
        }
    }
    // Refused connections are closed at once (EOF); the few admitted get a Hello.
    let mut closed = 0;
    for s in conns.iter_mut() {
        let mut buf = [0u8; 1024];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    let limited = node.rate_limited_count();
    assert!(limited >= 80, "rate limited {limited}");
    assert!(closed >= 80, "closed {closed}");
    drop(conns);
    // After the bucket refills, a trusted peer gets in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let mut c = connect(&addr, ident(2), Some(ident(1).public_key()), &cfg)
        .await
        .unwrap();
    c.ping().await.unwrap();
    c.close("done").await.unwrap();
    node.shutdown().await;
}
