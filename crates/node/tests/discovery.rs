//! LAN discovery with the in-memory transport: found is not trusted,
//! a trusted peer found on a new address is dialled there and stored,
//! hostile records are ignored, the table is bounded, private tags are
//! recognised only by those who know the key. 127.0.0.1 only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mmogit_identity::{Identity, PublicKey};
use mmogit_node::discovery::*;
use mmogit_node::*;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn ident(n: u8) -> Arc<Identity> {
    Arc::new(Identity::from_secret_bytes(&[n; 32]))
}

fn key(n: u8) -> PublicKey {
    ident(n).public_key()
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
        // Long backoff: without discovery a failing address is not retried
        // within the test.
        dial_backoff_base: Duration::from_secs(60),
        dial_backoff_cap: Duration::from_secs(60),
        dial_timeout: Duration::from_secs(1),
        ..NodeConfig::default()
    }
}

fn peers_file(dir: &Path, n: u8) -> PathBuf {
    dir.join(format!("peers{n}.json"))
}

fn trust(path: &Path, other: u8, addrs: Vec<String>) {
    PeerStore::update(path, |s| {
        s.add(key(other), None, addrs, PeerSource::Manual);
        Ok::<_, PeerStoreError>(())
    })
    .unwrap();
}

async fn start(
    dir: &Path,
    n: u8,
    net: &MemoryNetwork,
    private: bool,
) -> (NodeHandle, Arc<MemoryDiscovery>) {
    start_with(dir, n, net, private, true).await
}

async fn start_with(
    dir: &Path,
    n: u8,
    net: &MemoryNetwork,
    private: bool,
    dial: bool,
) -> (NodeHandle, Arc<MemoryDiscovery>) {
    let peers = peers_file(dir, n);
    let disc = Arc::new(net.node(LOCAL));
    let mut c = config(&peers);
    c.dial_trusted = dial;
    let node = Node::new(ident(n), c, Arc::new(PeerStoreTrust::new(peers)))
        .with_discovery(disc.clone(), private)
        .start()
        .await
        .unwrap();
    (node, disc)
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn connected(node: &NodeHandle, other: u8) -> bool {
    node.peers()
        .iter()
        .any(|p| p.pubkey == key(other) && p.connected)
}

fn raw(instance: &str, port: u16, txt: &[(&str, &str)]) -> RawService {
    RawService {
        instance: instance.into(),
        addrs: vec![SocketAddr::new(LOCAL, port)],
        txt: txt
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
            .collect(),
    }
}

#[tokio::test]
async fn found_is_not_trusted_and_never_dialled() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let (a, _) = start(dir.path(), 1, &net, false).await;
    let (b, _) = start(dir.path(), 2, &net, false).await;
    let mut events = a.subscribe();

    // Both see each other on the "LAN" ...
    let seen = net.node(LOCAL);
    let mut rx = seen.browse().unwrap();
    let mut table = CandidateTable::new(None);
    let end = Instant::now() + Duration::from_secs(2);
    while table.candidates().len() < 2 && Instant::now() < end {
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            table.apply(ev, Instant::now());
        }
    }
    let found: Vec<Announced> = table.candidates().iter().map(|c| c.announced).collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.contains(&Announced::Key(key(1))) && found.contains(&Announced::Key(key(2))));

    // ... but nobody dials anybody: no sessions, no connection attempts,
    // nothing written to either peer store.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(a.session_count() + b.session_count(), 0);
    assert_eq!(a.connection_count() + b.connection_count(), 0);
    assert!(events.try_recv().is_err(), "no connection reached A");
    for n in [1, 2] {
        let s = PeerStore::load(&peers_file(dir.path(), n)).unwrap();
        assert!(s.list().is_empty(), "peer store {n} untouched");
    }
    a.shutdown().await;
    b.shutdown().await;
}

async fn trusted_peer_moves(private: bool) {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let (pa, pb) = (peers_file(dir.path(), 1), peers_file(dir.path(), 2));
    // A trusts B (no address needed: B dials). B knows A at an old address
    // where nothing listens any more.
    trust(&pa, 2, vec![]);
    let stale = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    trust(&pb, 1, vec![stale.clone()]);
    // A only accepts (so the session is B's dial, whatever the timing).
    let (a, _) = start_with(dir.path(), 1, &net, private, false).await;
    let (b, _) = start(dir.path(), 2, &net, false).await;

    wait_until(
        "B dials A at its new address",
        Duration::from_secs(5),
        || connected(&b, 1),
    )
    .await;
    let new_addr = a.local_addr().to_string();
    wait_until(
        "B's peer store has A's new address",
        Duration::from_secs(3),
        || {
            let s = PeerStore::load(&pb).unwrap();
            let r = s.get_key(&key(1)).unwrap();
            r.addresses.last() == Some(&new_addr) && r.last_seen.is_some()
        },
    )
    .await;
    let s = PeerStore::load(&pb).unwrap();
    assert!(s.get_key(&key(1)).unwrap().addresses.contains(&stale));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn trusted_peer_found_on_a_new_address_is_dialled_there_and_stored() {
    trusted_peer_moves(false).await;
}

#[tokio::test]
async fn trusted_peer_with_a_private_tag_is_recognised_and_dialled() {
    trusted_peer_moves(true).await;
}

#[tokio::test]
async fn hostile_flood_leaves_the_node_working_and_dials_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let pb = peers_file(dir.path(), 2);
    trust(&pb, 1, vec![]);
    let (b, _) = start(dir.path(), 2, &net, false).await;
    // Thousands of announcements: malformed ones, and well-formed ones of
    // untrusted keys pointing at an address that would show a dial.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    for i in 0..3000u32 {
        let instance = format!("x{i}.{SERVICE_TYPE}");
        let r = match i % 3 {
            0 => raw(
                &instance,
                trap_port,
                &[("v", "1"), ("pk", &"zz".repeat(32))],
            ),
            1 => raw(&instance, trap_port, &[("v", &"1,".repeat(600))]),
            _ => raw(
                &instance,
                trap_port,
                &[("v", "1"), ("pk", &key((i % 200 + 10) as u8).to_hex())],
            ),
        };
        net.inject(DiscoveryEvent::Found(r));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(trap.accept().is_err(), "nothing dialled an untrusted key");
    assert_eq!(b.session_count(), 0);
    // Still serving: a trusted client gets through.
    let mut c = connect(
        &b.local_addr().to_string(),
        ident(1),
        Some(key(2)),
        &ClientConfig::default(),
    )
    .await
    .unwrap();
    c.ping().await.unwrap();
    c.close("done").await.unwrap();
    b.shutdown().await;
}

#[test]
fn malformed_records_are_ignored() {
    let pk = key(1).to_hex();
    let good = raw("good._mmogit._tcp.local.", 7420, &[("v", "1"), ("pk", &pk)]);
    let mut t = CandidateTable::new(Some(key(9)));
    let now = Instant::now();
    assert!(t.apply(DiscoveryEvent::Found(good.clone()), now).is_some());
    let tag = "ab".repeat(16);
    let huge = "x".repeat(250);
    let many: Vec<(String, String)> = (0..40).map(|i| (format!("k{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cases: Vec<(&str, RawService)> = vec![
        ("no versions", raw("a", 1, &[("pk", &pk)])),
        ("bad versions", raw("a", 1, &[("v", "one"), ("pk", &pk)])),
        ("no key", raw("a", 1, &[("v", "1")])),
        ("short key", raw("a", 1, &[("v", "1"), ("pk", &pk[..40])])),
        (
            "not hex",
            raw("a", 1, &[("v", "1"), ("pk", &"g".repeat(64))]),
        ),
        (
            "key and tag",
            raw("a", 1, &[("v", "1"), ("pk", &pk), ("tag", &tag)]),
        ),
        ("bad tag", raw("a", 1, &[("v", "1"), ("tag", "abcd")])),
        ("port 0", raw("a", 0, &[("v", "1"), ("pk", &pk)])),
        (
            "huge TXT",
            raw(
                "a",
                1,
                &[
                    ("v", "1"),
                    ("pk", &pk),
                    ("a", &huge),
                    ("b", &huge),
                    ("c", &huge),
                    ("d", &huge),
                ],
            ),
        ),
        ("too many TXT strings", raw("a", 1, &many)),
        (
            "huge name",
            raw(&"n".repeat(300), 1, &[("v", "1"), ("pk", &pk)]),
        ),
        (
            "no address",
            RawService {
                addrs: vec![],
                ..good.clone()
            },
        ),
        (
            "multicast address",
            RawService {
                addrs: vec!["224.0.0.251:7420".parse().unwrap()],
                ..good.clone()
            },
        ),
    ];
    for (what, r) in &cases {
        assert!(parse_record(r).is_err(), "{what} accepted");
        assert!(
            t.apply(DiscoveryEvent::Found(r.clone()), now).is_none(),
            "{what}"
        );
    }
    assert_eq!(t.ignored(), cases.len() as u64);
    assert_eq!(t.candidates().len(), 1);
    // A non-UTF-8 value.
    let mut bin = good.clone();
    bin.txt[1].1 = Some(vec![0xff; 64]);
    assert!(parse_record(&bin).is_err());
    // Ourselves: filtered; by key and by private tag.
    let mut me = CandidateTable::new(Some(key(1)));
    assert!(me.apply(DiscoveryEvent::Found(good.clone()), now).is_none());
    let my_tag = hex::encode(private_tag(&key(1), utc_day(SystemTime::now())));
    let r = raw("t", 1, &[("v", "1"), ("tag", &my_tag)]);
    assert!(me.apply(DiscoveryEvent::Found(r), now).is_none());
    assert!(me.is_empty());
}

#[test]
fn table_is_bounded_merges_by_key_and_expires() {
    let mut t = CandidateTable::with_limits(None, 64, Duration::from_secs(10));
    let t0 = Instant::now();
    for i in 0..5000u32 {
        let r = raw(
            &format!("i{i}"),
            1000 + (i % 1000) as u16,
            &[("v", "1"), ("pk", &key((i % 250) as u8 + 1).to_hex())],
        );
        t.apply(DiscoveryEvent::Found(r), t0);
        assert!(t.len() <= 64);
    }
    assert_eq!(t.len(), 64);

    // Two instances of one key (renamed by mDNS, or two interfaces): one candidate.
    let mut t = CandidateTable::with_limits(None, 64, Duration::from_secs(10));
    let pk = key(3).to_hex();
    t.apply(
        DiscoveryEvent::Found(raw("one", 7420, &[("v", "1"), ("pk", &pk)])),
        t0,
    );
    let mut second = raw("one (2)", 7420, &[("v", "1"), ("pk", &pk)]);
    second.addrs.push("10.1.2.3:7420".parse().unwrap());
    t.apply(DiscoveryEvent::Found(second.clone()), t0);
    // The same record again is no change.
    assert!(t.apply(DiscoveryEvent::Found(second), t0).is_none());
    let c = t.candidates();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].announced, Announced::Key(key(3)));
    assert_eq!(
        c[0].addrs,
        vec![
            "10.1.2.3:7420".parse::<SocketAddr>().unwrap(),
            "127.0.0.1:7420".parse().unwrap()
        ],
        "de-duplicated, non-loopback first"
    );
    assert_eq!(c[0].instances.len(), 2);
    t.apply(DiscoveryEvent::Removed("one".into()), t0);
    assert_eq!(t.len(), 1);
    t.expire(t0 + Duration::from_secs(11));
    assert!(t.is_empty(), "expired after its TTL");
}

#[test]
fn private_tag_is_recognised_only_by_knowers() {
    let now = SystemTime::now();
    let day = utc_day(now);
    let ad = Advertisement {
        pubkey: key(1),
        port: 7420,
        versions: vec![1],
        private: true,
    };
    let txt = ad.txt(now);
    assert!(txt
        .iter()
        .all(|(k, v)| k != "pk" && !v.contains(&key(1).to_hex())));
    assert!(!ad.instance_label(now).contains(&key(1).short(16)));
    let Announced::Tag(tag) = ad.announced(now) else {
        panic!("private announces a tag")
    };
    assert_eq!(tag, private_tag(&key(1), day));
    assert_ne!(tag, private_tag(&key(1), day + 1), "changes every day");
    assert_ne!(tag, private_tag(&key(2), day));
    let a = Announced::Tag(tag);
    assert_eq!(a.resolve(&[key(2), key(1)], now), Some(key(1)));
    assert_eq!(
        a.resolve(&[key(2), key(3)], now),
        None,
        "strangers see a tag"
    );
    assert_eq!(a.resolve(&[], now), None);
    // Yesterday's tag still matches (a node that has not re-announced yet);
    // the day before does not.
    let yesterday = Announced::Tag(private_tag(&key(1), day - 1));
    assert_eq!(yesterday.resolve(&[key(1)], now), Some(key(1)));
    let older = Announced::Tag(private_tag(&key(1), day - 2));
    assert_eq!(older.resolve(&[key(1)], now), None);
}

#[test]
fn private_tag_vector() {
    // Documented in docs/PROTOCOL.md: key of secret 32 × 0x01, day 20000.
    let tag = private_tag(&key(1), 20_000);
    assert_eq!(
        key(1).to_hex(),
        "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
    );
    // Also computed independently with Python's hmac module.
    assert_eq!(hex::encode(tag), "0d7abee75b2fa928a111694002a93290");
}
