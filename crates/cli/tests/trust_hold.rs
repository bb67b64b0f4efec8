//! Trust changes hold (issue 14): a block or remove (CLI or library) ends
//! every session of the key within a second, client sessions included; no update of
//! peers.json is lost to a concurrent writer; pending keys stay bounded.
//! Real `mmogit serve` and CLI processes, and in-process clients, on
//! 127.0.0.1 port 0 only. Every wait is bounded.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Serve, TestHome};
use mmogit::{Agent, Home};
use mmogit_identity::{Identity, PublicKey};
use mmogit_node::{connect, ClientConfig, Connection, NodeError, PeerSource, PeerStore};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn peers_path(home: &TestHome) -> std::path::PathBuf {
    home.home.join("peers.json")
}

/// Trusts `keys` in `home` before serve starts (nobody else writes yet).
fn trust(home: &TestHome, keys: &[PublicKey]) {
    let mut s = PeerStore::load(&peers_path(home)).unwrap();
    for k in keys {
        s.add(*k, None, Vec::new(), PeerSource::Manual);
    }
    s.save().unwrap();
}

fn config(listen_port: Option<u16>) -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        // Long enough that only a Bye from serve ends the wait below.
        request_timeout: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(60),
        heartbeat_interval: Duration::from_secs(1),
        listen_port,
        ..ClientConfig::default()
    }
}

/// Waits until serve ends the session; returns when that happened and why.
async fn closed_at(mut c: Connection) -> (Instant, String) {
    loop {
        match c.recv().await {
            Ok(_) => continue,
            Err(e) => return (Instant::now(), e.to_string()),
        }
    }
}

/// Opens a client session (no listen port: serve treats it as a client)
/// and a peer session (with a listen port) for `id`, both authenticated.
async fn both_sessions(addr: &str, id: &Arc<Identity>) -> (Connection, Connection) {
    let client = connect(addr, id.clone(), None, &config(None))
        .await
        .unwrap();
    let peer = connect(addr, id.clone(), None, &config(Some(9)))
        .await
        .unwrap();
    (client, peer)
}

fn check_closed_within_a_second(what: &str, done: Instant, closed: &[(Instant, String)]) {
    for (i, (at, why)) in closed.iter().enumerate() {
        let after = at.saturating_duration_since(done);
        eprintln!("{what}: session {i} closed {after:?} after the command exited");
        assert!(
            after < Duration::from_secs(1),
            "{what}: session {i} ({}) closed {after:?} after the command exited ({why})",
            ["client, no listen port", "peer, listen port"][i]
        );
    }
}

#[test]
fn block_and_remove_end_client_and_peer_sessions_within_a_second() {
    let b = TestHome::init();
    let blocked = Arc::new(Identity::generate().0);
    let removed = Arc::new(Identity::generate().0);
    let lib_blocked = Arc::new(Identity::generate().0);
    let kept = Arc::new(Identity::generate().0);
    trust(
        &b,
        &[
            blocked.public_key(),
            removed.public_key(),
            lib_blocked.public_key(),
            kept.public_key(),
        ],
    );
    let agent = Agent::open(Home::new(&b.home)).unwrap();
    let serve = Serve::start(&b, &["--no-dial"]);
    let rt = rt();
    let addr = serve.addr.clone();

    for (id, how) in [
        (&blocked, "p2p block"),
        (&removed, "p2p remove"),
        (&lib_blocked, "library block"),
    ] {
        let (client, peer) = rt.block_on(both_sessions(&addr, id));
        let (mut k, _) = rt.block_on(both_sessions(&addr, &kept));
        let waits = [rt.spawn(closed_at(client)), rt.spawn(closed_at(peer))];
        // Both sessions are up and served before the trust change.
        std::thread::sleep(Duration::from_millis(300));
        assert!(waits.iter().all(|w| !w.is_finished()), "closed too early");
        let hex = id.public_key().to_hex();
        match how {
            "library block" => {
                agent.block_peer(&hex).unwrap();
            }
            cmd => {
                let (p2p, verb) = cmd.split_once(' ').unwrap();
                b.run(&[p2p, verb, &hex]).ok();
            }
        }
        let done = Instant::now();
        let closed: Vec<(Instant, String)> =
            waits.into_iter().map(|w| rt.block_on(w).unwrap()).collect();
        check_closed_within_a_second(how, done, &closed);
        for (_, why) in &closed {
            assert!(why.contains("not authorized"), "{why}");
        }
        // A key that is still trusted keeps its sessions.
        rt.block_on(k.ping())
            .expect("the trusted key is still served");
        // And the blocked or removed key cannot come back.
        let again = rt.block_on(connect(&addr, id.clone(), None, &config(None)));
        assert!(
            matches!(again, Err(NodeError::NotAuthorized { .. })),
            "{:?}",
            again.map(|_| ())
        );
    }
    drop(serve);
}

/// Handshakes with fresh unknown keys against `addr` until `stop`; each is
/// refused and recorded as pending by serve. Returns how many completed.
fn flood(addr: String, stop: Arc<AtomicBool>) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = Arc::new(Identity::generate().0);
        if let Err(NodeError::NotAuthorized { .. }) =
            rt.block_on(connect(&addr, id, None, &config(None)))
        {
            n += 1;
        } else {
            // Rate limited (serve allows ~10 new connections/s per IP).
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    n
}

#[test]
fn blocks_persist_under_a_flood_of_writers() {
    let b = TestHome::init();
    let agent = Agent::open(Home::new(&b.home)).unwrap();
    // A trusted peer the library writers keep renaming: each is a full
    // read-change-write of peers.json.
    let friend = Identity::generate().0.public_key();
    trust(&b, &[friend]);
    let serve = Serve::start(&b, &["--no-dial"]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = vec![];
    for _ in 0..2 {
        let (addr, stop) = (serve.addr.clone(), stop.clone());
        threads.push(std::thread::spawn(move || flood(addr, stop)));
    }
    let mut writers = vec![];
    for w in 0..2 {
        let (agent, stop) = (agent.clone(), stop.clone());
        let hex = friend.to_hex();
        writers.push(std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // A new name each time: each call rewrites the file.
                agent
                    .accept_peer(&hex, Some(format!("friend-{w}-{n}")))
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    let blocked: Vec<PublicKey> = (0..50)
        .map(|_| Identity::generate().0.public_key())
        .collect();
    for k in &blocked {
        b.run(&["p2p", "block", &k.to_hex()]).ok();
    }
    // Let the writers run on a little after the last block.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let handshakes: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let rewrites: usize = writers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(handshakes > 0 && rewrites > 0, "{handshakes} {rewrites}");
    let count_blocked = || {
        let s = PeerStore::load(&peers_path(&b)).unwrap();
        blocked
            .iter()
            .filter(|k| {
                s.get_key(k)
                    .is_some_and(|r| r.trust == mmogit_node::TrustState::Blocked)
            })
            .count()
    };
    assert_eq!(count_blocked(), 50, "blocks lost while serving");
    assert_eq!(serve.terminate(), 0);
    assert_eq!(count_blocked(), 50, "blocks lost at shutdown");
    let s = PeerStore::load(&peers_path(&b)).unwrap();
    assert!(s.is_trusted(&friend));
    eprintln!(
        "{handshakes} unknown handshakes and {rewrites} library rewrites alongside 50 blocks"
    );
}

#[test]
fn pending_is_bounded_and_shows_the_latest() {
    let b = TestHome::init();
    let me = Arc::new(Identity::generate().0);
    let rt = rt();
    let keys: Vec<Arc<Identity>> = (0..2000)
        .map(|_| Arc::new(Identity::generate().0))
        .collect();
    let peers = peers_path(&b);
    let node = rt.block_on(async {
        mmogit_node::Node::new(
            me.clone(),
            mmogit_node::NodeConfig {
                listen_addr: "127.0.0.1:0".parse().unwrap(),
                inbound_rate: None,
                ..mmogit_node::NodeConfig::default()
            },
            Arc::new(mmogit_node::PeerStoreTrust::new(peers.clone())),
        )
        .start()
        .await
        .unwrap()
    });
    let addr = node.local_addr().to_string();
    let started = Instant::now();
    rt.block_on(async {
        // Eight at a time, in order: the last ones are the most recent.
        for chunk in keys.chunks(8) {
            let mut tasks = vec![];
            for id in chunk {
                let (addr, id) = (addr.clone(), id.clone());
                tasks.push(tokio::spawn(async move {
                    connect(&addr, id, None, &config(None)).await.map(|_| ())
                }));
            }
            for t in tasks {
                let r = t.await.unwrap();
                assert!(matches!(r, Err(NodeError::NotAuthorized { .. })), "{r:?}");
            }
        }
    });
    let took = started.elapsed();
    rt.block_on(node.shutdown());
    let size = std::fs::metadata(&peers).unwrap().len();
    let s = PeerStore::load(&peers).unwrap();
    let pending: std::collections::HashSet<PublicKey> = s
        .list()
        .into_iter()
        .filter(|r| r.trust == mmogit_node::TrustState::Pending)
        .map(|r| r.pubkey)
        .collect();
    eprintln!(
        "2000 unknown handshakes in {took:?}; peers.json {size} bytes, {} pending",
        pending.len()
    );
    assert!(pending.len() <= 256, "{} pending", pending.len());
    for id in &keys[2000 - 200..] {
        assert!(
            pending.contains(&id.public_key()),
            "a recent key was dropped"
        );
    }
    for id in &keys[..1500] {
        assert!(!pending.contains(&id.public_key()), "an old key was kept");
    }
    let last = keys[1999].public_key().to_hex();
    let listed = b.run(&["p2p", "pending", "--json"]).json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["pubkey"] == last.as_str()),
        "p2p pending does not show the latest key"
    );
}
