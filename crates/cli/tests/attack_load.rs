//! Adversarial load against a live `mmogit serve` on 127.0.0.1 with default
//! limits. The attacker connects from 127.0.0.2 (a different address on
//! loopback); a trusted peer on 127.0.0.1 pings throughout. Phases: a
//! connection flood, half-open handshakes, slow senders, oversized declared
//! lengths, random bytes, replayed frames captured from a real session.
//! Asserts: serve stays up, its peak RSS (VmHWM) stays bounded, the trusted
//! peer's ping RTT stays under 50 ms, a replay never authenticates.
//!
//! CI runs 500 connection attempts; `MMOGIT_LONG_TESTS=1` runs 5,000.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Serve, TestHome};
use mmogit_node::{connect, ClientConfig, Connection, PeerSource, PeerStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const ATTACKER: [u8; 4] = [127, 0, 0, 2];

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A TCP connection from the attacker's address.
async fn attacker_conn(to: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind((ATTACKER, 0).into())?;
    tokio::time::timeout(Duration::from_secs(5), s.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timeout"))?
}

/// The trusted peer's RTTs (ms) over `n` pings.
async fn rtts(c: &mut Connection, n: usize) -> Vec<f64> {
    let mut v = Vec::new();
    for _ in 0..n {
        let d = c.ping().await.expect("trusted peer served");
        v.push(d.as_secs_f64() * 1000.0);
    }
    v
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(0.0, f64::max)
}

/// A TCP proxy that records what the client sent; returns its address and
/// the recording.
async fn recording_proxy(
    to: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let rec = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r2 = rec.clone();
    tokio::spawn(async move {
        let (mut inb, _) = l.accept().await.unwrap();
        let mut out = TcpStream::connect(to).await.unwrap();
        let (mut ir, mut iw) = inb.split();
        let (mut or, mut ow) = out.split();
        let up = async {
            let mut buf = [0u8; 4096];
            loop {
                let n = ir.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    let _ = ow.shutdown().await;
                    break;
                }
                r2.lock().unwrap().extend_from_slice(&buf[..n]);
                if ow.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        let down = tokio::io::copy(&mut or, &mut iw);
        let _ = tokio::join!(up, down);
    });
    (addr, rec)
}

/// Reads until EOF or `secs`; true when the server closed the connection.
async fn closed_within(s: &mut TcpStream, secs: u64) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A `serve` (no dialing) whose home trusts a friend, the friend's
/// identity, and a two-thread runtime for the test's clients.
fn victim_with_a_friend() -> (
    TestHome,
    Serve,
    Arc<mmogit_identity::Identity>,
    tokio::runtime::Runtime,
) {
    let (victim, friend) = (TestHome::init(), TestHome::init());
    let mut s = PeerStore::load(&victim.home.join("peers.json")).unwrap();
    s.add(
        friend.pubkey().parse().unwrap(),
        None,
        Vec::new(),
        PeerSource::Manual,
    );
    s.save().unwrap();
    let serve = Serve::start(&victim, &["--no-dial"]);
    let fid =
        Arc::new(mmogit_identity::Identity::load(&friend.home.join("identity.json")).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    (victim, serve, fid, rt)
}

#[test]
fn node_survives_adversarial_load_and_keeps_serving_a_trusted_peer() {
    let attempts: usize = if std::env::var("MMOGIT_LONG_TESTS").is_ok_and(|v| v == "1") {
        5000
    } else {
        500
    };
    let (_victim, serve, fid, rt) = victim_with_a_friend();
    let pid = serve.child.id();
    let addr: std::net::SocketAddr = serve.addr.parse().unwrap();
    let rss_idle = vm_rss_kib(pid);
    let report = rt.block_on(async move {
        let cfg = ClientConfig::default();
        let mut friend_conn = connect(&serve.addr, fid.clone(), None, &cfg).await.unwrap();
        let base = rtts(&mut friend_conn, 20).await;
        let mut report = vec![format!(
            "baseline RTT max {:.2} ms, serve RSS {} KiB",
            max(&base),
            rss_idle
        )];

        // 1. Connection flood: `attempts` connects from one address, 64 at a
        // time, each closed at once.
        let t = Instant::now();
        let mut ok = 0usize;
        let mut worst = Vec::new();
        for batch in 0..attempts.div_ceil(64) {
            let n = 64.min(attempts - batch * 64);
            let hs: Vec<_> = (0..n)
                .map(|_| tokio::spawn(async move { attacker_conn(addr).await.is_ok() }))
                .collect();
            for h in hs {
                ok += h.await.unwrap() as usize;
            }
            if batch % 8 == 0 {
                worst.push(friend_conn.ping().await.unwrap().as_secs_f64() * 1000.0);
            }
        }
        report.push(format!(
            "flood: {attempts} connection attempts ({ok} TCP-accepted) in {:.2} s; trusted RTT max {:.2} ms meanwhile",
            t.elapsed().as_secs_f64(),
            max(&worst)
        ));
        assert!(max(&worst) < 50.0, "{worst:?}");

        // Wait for the attacker's token bucket to refill (10/s, burst 20).
        tokio::time::sleep(Duration::from_secs(2)).await;

        // 2. Half-open handshakes: connections that send half a Hello and
        // stall; 3. slow senders: one byte every 200 ms; 4. oversized
        // declared lengths; 5. random bytes.
        let mut held = Vec::new();
        let mut slow = Vec::new();
        for i in 0..20 {
            let Ok(mut c) = attacker_conn(addr).await else {
                continue;
            };
            match i % 4 {
                0 => {
                    // Header of a 444-byte Hello, then only 100 bytes of it.
                    let _ = c.write_all(&444u32.to_be_bytes()).await;
                    let _ = c.write_all(&[b'{'; 100]).await;
                    held.push(c);
                }
                1 => {
                    slow.push(tokio::spawn(async move {
                        let _ = c.write_all(&1000u32.to_be_bytes()).await;
                        for _ in 0..15 {
                            if c.write_all(b"x").await.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        c
                    }));
                }
                2 => {
                    let _ = c.write_all(&u32::MAX.to_be_bytes()).await;
                    assert!(
                        closed_within(&mut c, 2).await,
                        "an oversized declared length is refused at once"
                    );
                }
                _ => {
                    let junk: Vec<u8> = (0..4096u32)
                        .map(|x| (x.wrapping_mul(2_654_435_761) >> 13) as u8)
                        .collect();
                    let _ = c.write_all(&junk).await;
                    assert!(closed_within(&mut c, 2).await, "random bytes close");
                }
            }
        }
        let during = rtts(&mut friend_conn, 20).await;
        report.push(format!(
            "{} half-open and {} slow-sender connections held; trusted RTT max {:.2} ms",
            held.len(),
            slow.len(),
            max(&during)
        ));
        for t in slow {
            held.push(t.await.unwrap());
        }
        assert!(max(&during) < 50.0, "{during:?}");
        drop(held);

        // 6. Replay: record a real session of the trusted peer through a
        // proxy, then send the same bytes again from the attacker.
        let (paddr, rec) = recording_proxy(addr).await;
        let c = connect(&paddr.to_string(), fid.clone(), None, &cfg)
            .await
            .unwrap();
        c.close("done").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let captured = rec.lock().unwrap().clone();
        assert!(captured.len() > 400, "Hello + Ping + Bye captured");
        let mut replay_closed = 0;
        for _ in 0..5 {
            let mut c = attacker_conn(addr).await.unwrap();
            let _ = c.write_all(&captured).await;
            replay_closed += closed_within(&mut c, 3).await as usize;
        }
        report.push(format!(
            "replayed a captured session 5 times: closed {replay_closed}"
        ));
        assert_eq!(replay_closed, 5);
        let after = rtts(&mut friend_conn, 20).await;
        assert!(max(&after) < 50.0, "{after:?}");
        report.push(format!("after: trusted RTT max {:.2} ms", max(&after)));
        friend_conn.close("done").await.unwrap();
        (report, serve)
    });
    let (report, serve) = report;
    let hwm = vm_hwm_kib(pid);
    for l in &report {
        eprintln!("{l}");
    }
    eprintln!("serve peak RSS (VmHWM) {hwm} KiB");
    assert!(serve.log().contains("refused"), "{}", serve.log());
    // The friend authenticated twice (direct and via the proxy), the
    // replays never.
    let auths = serve.log().matches("peer authenticated").count();
    assert_eq!(auths, 2, "{}", serve.log());
    assert!(hwm < 64 * 1024, "serve peak RSS {hwm} KiB");
    assert_eq!(serve.terminate(), 0, "still up and stops cleanly");
}

/// Completes a Noise XX handshake with the node as a stranger (a key
/// nobody trusts: what anyone can do with an introducible node). Returns
/// the stream and the channel, or None if the node closed.
async fn stranger_channel(mut c: TcpStream) -> Option<(TcpStream, mmogit_proto::noise::Transport)> {
    use mmogit_proto::noise::{Handshake, Step};
    let (me, _) = mmogit_identity::Identity::generate();
    let mut eph = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut eph);
    let (mut hs, first) = Handshake::initiator(&me, None, eph);
    c.write_all(&first).await.ok()?;
    let mut buf = [0u8; 512];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        match hs.handle_input(&buf[..n]).ok()? {
            Step::Continue(b) => c.write_all(&b).await.ok()?,
            Step::Done(b) => {
                c.write_all(&b).await.ok()?;
                break;
            }
        }
    }
    Some((c, hs.into_transport().ok()?))
}

/// Median of `v`.
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

#[test]
fn unauthenticated_connections_cannot_make_serve_hold_their_frames() {
    // 128 connections (all inbound slots: 8 addresses × 16, the per-address
    // limit) each complete the encrypted handshake under a stranger's key
    // (anyone can, with an introducible node), send the largest transport
    // message allowed before authorization (one 4 KiB frame) all but its
    // last byte, and stall. Before the pre-authentication limit each could
    // declare 10 MiB and send 9.9 MiB: 1 GB held.
    let (_victim, serve, fid, rt) = victim_with_a_friend();
    let pid = serve.child.id();
    let addr: std::net::SocketAddr = serve.addr.parse().unwrap();
    let (rss_before, rss_during, old_refused, during) = rt.block_on(async move {
        let mut friend_conn = connect(&serve.addr, fid, None, &ClientConfig::default())
            .await
            .unwrap();
        rtts(&mut friend_conn, 10).await;
        let rss_before = vm_rss_kib(pid);
        let frame = mmogit_proto::PRE_AUTH_MAX_FRAME_LEN;
        let mut held = Vec::new();
        for host in 2..10u8 {
            for _ in 0..16 {
                let sock = TcpSocket::new_v4().unwrap();
                sock.bind(([127, 0, 0, host], 0).into()).unwrap();
                let Ok(c) = sock.connect(addr).await else {
                    continue;
                };
                let Some((mut c, mut t)) = stranger_channel(c).await else {
                    continue;
                };
                let mut plain = (frame as u32).to_be_bytes().to_vec();
                plain.extend(vec![b'{'; frame]);
                let mut wire = vec![];
                t.encrypt(&plain, &mut wire).unwrap();
                assert_eq!(wire.len() - 2, mmogit_proto::PRE_AUTH_MAX_NOISE_MESSAGE);
                let _ = c.write_all(&wire[..wire.len() - 1]).await;
                held.push(c);
            }
        }
        assert!(held.len() >= 120, "{} connections", held.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let during = rtts(&mut friend_conn, 40).await;
        let rss_during = vm_rss_kib(pid);
        // The old attack: a 10 MiB frame declared inside the channel is
        // refused from the header.
        let mut old_refused = false;
        if let Ok(c) = attacker_conn(addr).await {
            if let Some((mut c, mut t)) = stranger_channel(c).await {
                let mut wire = vec![];
                t.encrypt(&(10u32 << 20).to_be_bytes(), &mut wire).unwrap();
                let _ = c.write_all(&wire).await;
                old_refused = closed_within(&mut c, 2).await;
            }
        }
        drop(held);
        friend_conn.close("done").await.unwrap();
        (rss_before, rss_during, old_refused, during)
    });
    let grew = rss_during.saturating_sub(rss_before);
    eprintln!(
        "128 stalled pre-auth frames of 4 KiB: serve RSS {rss_before} -> {rss_during} KiB (+{grew} KiB); trusted RTT median {:.2} ms, max {:.2} ms",
        median(&during),
        max(&during)
    );
    assert!(grew <= 16 * 1024, "serve grew by {grew} KiB");
    assert!(median(&during) <= 50.0, "{during:?}");
    assert!(
        old_refused,
        "a 10 MiB declaration before Hello closes at once"
    );
}

/// `n` stalled TCP connections (nothing sent) from `hosts` addresses
/// 127.0.`net`.1.., `n / hosts` each: they hold inbound slots until the
/// handshake timeout.
async fn stalled_strangers(
    to: std::net::SocketAddr,
    net: u8,
    hosts: u8,
    n: usize,
) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for i in 0..n {
        let host = 1 + (i % hosts as usize) as u8;
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(([127, 0, net, host], 0).into()).unwrap();
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), sock.connect(to)).await {
            held.push(c);
        }
    }
    held
}

#[test]
fn a_trusted_peer_gets_a_slot_while_strangers_from_many_addresses_hold_them_all() {
    // 32 stranger addresses × 4 stalled connections take all 128 inbound
    // slots (each address well under the per-address limit and its rate
    // bucket). A trusted peer then connects from an address the node has
    // not seen: before slot eviction it was refused ("too many
    // connections") until the strangers' 10 s handshake timeout.
    let (victim, serve, fid, rt) = victim_with_a_friend();
    let addr: std::net::SocketAddr = serve.addr.parse().unwrap();
    let serve_addr = serve.addr.clone();
    let (connect_ms, first_closed, after) = rt.block_on(async move {
        let mut first = stalled_strangers(addr, 1, 32, 128).await;
        assert_eq!(first.len(), 128);
        // Let the listener take them all from the backlog.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        let mut friend_conn = connect(&serve_addr, fid, None, &ClientConfig::default())
            .await
            .expect("a trusted peer gets a slot while strangers hold every one");
        friend_conn.ping().await.expect("trusted peer served");
        let connect_ms = t.elapsed().as_secs_f64() * 1000.0;
        // A second flood from 32 new addresses: every older stranger is
        // evicted, the authenticated session never.
        let second = stalled_strangers(addr, 2, 32, 128).await;
        assert!(second.len() >= 120, "{} connections", second.len());
        let mut first_closed = 0;
        for c in first.iter_mut() {
            if closed_within(c, 2).await {
                first_closed += 1;
            }
        }
        let after = rtts(&mut friend_conn, 10).await;
        friend_conn.close("done").await.unwrap();
        drop(second);
        (connect_ms, first_closed, after)
    });
    eprintln!(
        "128 stalled strangers from 32 addresses: trusted peer connected and pinged in {connect_ms:.1} ms; {first_closed}/128 of the first flood evicted by the second; trusted RTT after median {:.2} ms",
        median(&after)
    );
    assert!(connect_ms < 2000.0, "{connect_ms} ms");
    assert_eq!(first_closed, 128, "every older stranger was evicted");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !serve
        .log()
        .contains("closed the oldest unauthenticated connection")
    {
        assert!(
            Instant::now() < deadline,
            "eviction logged: {}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Counted in the status file: 1 for the trusted peer, 128 for the second flood.
    let evicted = loop {
        let n = std::fs::read_to_string(victim.home.join("status.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["evicted"].as_u64())
            .unwrap_or(0);
        if n >= 129 || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(evicted >= 129, "status file counts {evicted} evictions");
}
