//! Version 2's wire privacy, end to end (issue 17): every session runs
//! inside Noise, so a passive observer of a sync sees no key, memory, tag or
//! branch; a node answers nothing to anyone who does not know its key (and,
//! started with `--hidden` or `--mdns-private`, nothing to a first contact
//! without it); a man in the middle with its own keys completes neither
//! handshake; a changed byte ends the session without a partial memory.
//!
//! Real `mmogit serve` and CLI processes; relays, scanners and the man in
//! the middle are threads of this test, all on 127.0.0.1 with ports picked
//! by the system. Every wait is bounded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{wait_until, Serve, TestHome};
use mmogit_identity::{Identity, PublicKey};
use mmogit_node::{PeerSource, PeerStore};
use mmogit_proto::noise::{Handshake, NoiseError, Step};

// ---------------------------------------------------------------------------
// Helpers

/// Trusts `pubkey` (64 hex) in `home`, at `addr` when given, under the
/// peer store's lock (safe while that home's serve runs).
fn trust(home: &TestHome, pubkey: &str, addr: Option<&str>) {
    let pk: PublicKey = pubkey.parse().unwrap();
    let addresses = addr.map(|a| vec![a.to_string()]).unwrap_or_default();
    PeerStore::update(&home.home.join("peers.json"), |s| {
        s.add(pk, None, addresses, PeerSource::Manual);
        Ok::<_, mmogit_node::PeerStoreError>(())
    })
    .unwrap();
}

/// Ids of the memories of `author` that `home` holds (all verified by recall).
fn ids_by(home: &TestHome, author: &str) -> Vec<String> {
    home.recall_ids(&["--author", author, "--limit", "100000"])
}

/// A fresh ephemeral key for a Noise handshake (the handshake takes it
/// from its caller since version 2's session layer).
fn ephemeral() -> [u8; 32] {
    let mut k = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut k))
        .expect("random bytes from /dev/urandom");
    k
}

/// Standard base64 (with padding), for looking for encoded needles.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The forms of `needle` to look for: itself, and the part of its base64
/// that does not depend on its neighbours, at each of the 3 alignments
/// (version 1 carried payloads and signatures as base64 inside JSON).
fn forms(needle: &[u8]) -> Vec<Vec<u8>> {
    let mut v = vec![needle.to_vec()];
    for k in 0..3usize {
        let mut padded = vec![0u8; k];
        padded.extend_from_slice(needle);
        let enc = base64(&padded);
        let skip = [0, 2, 3][k];
        let end = 4 * (padded.len() / 3);
        if end > skip + 8 {
            v.push(enc.as_bytes()[skip..end].to_vec());
        }
    }
    v
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The longest run of printable ASCII bytes (ciphertext has none longer
/// than a few bytes; version 1's JSON is nothing but).
fn longest_printable_run(data: &[u8]) -> (usize, usize) {
    let (mut best, mut at, mut run) = (0, 0, 0);
    for (i, b) in data.iter().enumerate() {
        if (0x20..0x7f).contains(b) {
            run += 1;
            if run > best {
                best = run;
                at = i + 1 - run;
            }
        } else {
            run = 0;
        }
    }
    (best, at)
}

/// A small xorshift generator, seeded and printed, for junk bytes.
struct Junk(u64);

impl Junk {
    fn new() -> Junk {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("junk seed {seed:#x}");
        Junk(seed)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 24) as u8
            })
            .collect()
    }
}

/// Everything one relayed connection carried, as forwarded.
#[derive(Default)]
struct Conn {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
}

/// Flip the low bit of the byte at `offset` of one direction of every
/// connection (offsets count from the connection's first byte that way).
#[derive(Clone, Copy, Debug)]
struct Tamper {
    to_client: bool,
    offset: usize,
}

/// A TCP relay on 127.0.0.1:0 to `target` that records both directions of
/// every connection and can change one byte of each.
struct Relay {
    addr: String,
    conns: Arc<Mutex<Vec<Arc<Mutex<Conn>>>>>,
    tamper: Arc<Mutex<Option<Tamper>>>,
    flipped: Arc<AtomicUsize>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<Arc<Mutex<Conn>>>>> = Arc::default();
        let tamper: Arc<Mutex<Option<Tamper>>> = Arc::default();
        let flipped = Arc::new(AtomicUsize::new(0));
        let (c, t, f, target) = (
            conns.clone(),
            tamper.clone(),
            flipped.clone(),
            target.to_string(),
        );
        // Lives until the test process ends (it holds nothing else).
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let conn = Arc::new(Mutex::new(Conn::default()));
                c.lock().unwrap().push(conn.clone());
                let tamper = *t.lock().unwrap();
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (conn2, f2, f3) = (conn.clone(), f.clone(), f.clone());
                std::thread::spawn(move || pump(client, server, conn, false, tamper, f2));
                std::thread::spawn(move || pump(s2, c2, conn2, true, tamper, f3));
            }
        });
        Relay {
            addr,
            conns,
            tamper,
            flipped,
        }
    }

    fn set_tamper(&self, t: Option<Tamper>) {
        *self.tamper.lock().unwrap() = t;
    }

    /// (bytes to the server, bytes to the client) of every connection so far.
    fn captured(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                let c = c.lock().unwrap();
                (c.to_server.clone(), c.to_client.clone())
            })
            .collect()
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    conn: Arc<Mutex<Conn>>,
    to_client: bool,
    tamper: Option<Tamper>,
    flipped: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        if let Some(t) = tamper {
            if t.to_client == to_client && (seen..seen + n).contains(&t.offset) {
                chunk[t.offset - seen] ^= 0x01;
                flipped.fetch_add(1, Ordering::SeqCst);
            }
        }
        seen += n;
        {
            let mut c = conn.lock().unwrap();
            if to_client {
                c.to_client.extend_from_slice(chunk);
            } else {
                c.to_server.extend_from_slice(chunk);
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// What a node did with what a test client sent it.
#[derive(Debug)]
enum Answer {
    /// It closed (end of stream or reset) without sending a byte.
    Silent(Duration),
    /// It sent bytes.
    Spoke(Vec<u8>),
    /// Still open at the limit, nothing received.
    Open,
}

/// Connects to `addr`, sends `bytes` and waits at most `limit` for the
/// node's first bytes or its close.
fn answer_to(addr: &str, bytes: &[u8], limit: Duration) -> Answer {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    if !bytes.is_empty() {
        // A node may close (and reset) before taking everything: fine.
        let _ = s.write_all(bytes);
    }
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => Answer::Silent(t0.elapsed()),
        Ok(n) => Answer::Spoke(buf[..n].to_vec()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Answer::Open,
        Err(_) => Answer::Silent(t0.elapsed()),
    }
}

/// Runs a Noise initiator handshake over `s` from its first message: feeds
/// what the node sends until the handshake completes (returned with the
/// last message, not sent), fails, or the node closes.
fn drive_initiator(
    s: &mut TcpStream,
    mut hs: Handshake,
    first: &[u8],
    limit: Duration,
) -> Result<(Handshake, Vec<u8>), String> {
    s.write_all(first).map_err(|e| format!("send: {e}"))?;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {} bytes: {got:02x?}", got.len())),
            Ok(n) => n,
            Err(e) => return Err(format!("after {} bytes: {e}", got.len())),
        };
        got.extend_from_slice(&buf[..n]);
        match hs.handle_input(&buf[..n]) {
            Ok(Step::Continue(out)) => {
                s.write_all(&out).map_err(|e| format!("send: {e}"))?;
            }
            Ok(Step::Done(out)) => return Ok((hs, out)),
            Err(e) => {
                let shown = &got[..got.len().min(64)];
                return Err(format!(
                    "the node's answer is no Noise handshake message ({e}): {shown:02x?} / {:?}",
                    String::from_utf8_lossy(shown)
                ));
            }
        }
    }
}

fn start_serve(home: &TestHome, extra: &[&str]) -> Result<Serve, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Serve::start(home, extra))).map_err(
        |p| {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("serve {extra:?} did not start: {why}")
        },
    )
}

// ---------------------------------------------------------------------------
// 1. A passive observer of a sync.

#[test]
fn passive_capture_of_a_sync_shows_no_key_content_tag_or_branch() {
    let (a, b) = (TestHome::init(), TestHome::init());
    let (pka, pkb) = (a.pubkey(), b.pubkey());
    let secrets_a = ["zebra-secret-content-4711", "tag-canary-9931"];
    let secrets_b = ["yak-secret-content-5822", "tag-canary-8842"];
    let mut ids_a = Vec::new();
    let mut ids_b = Vec::new();
    for i in 0..4 {
        ids_a.push(a.remember(&[
            "--tag",
            secrets_a[1],
            &format!("{} number {i}: the gate code is 0000", secrets_a[0]),
        ]));
        ids_b.push(b.remember(&[
            "--tag",
            secrets_b[1],
            "--type",
            "learning",
            &format!("{} number {i}: the vault opens on Tuesdays", secrets_b[0]),
        ]));
    }
    // B trusts A by key (A serves nothing: its address is never dialled).
    b.run(&[
        "p2p",
        "add",
        "127.0.0.1:9",
        "--pubkey",
        &pka,
        "--timeout",
        "1s",
    ])
    .ok();
    let sb = Serve::start(&b, &["--no-dial"]);
    let relay = Relay::start(&sb.addr);
    // A trusts B by key at the relay's address (its probe is captured too).
    a.run(&["p2p", "add", &relay.addr, "--pubkey", &pkb, "--name", "bob"])
        .ok();
    let r = a.run(&["sync", "--peer", &pkb, "--json", "--timeout", "10s"]);
    assert_eq!(
        r.code,
        0,
        "sync through the relay\nstdout: {}\nstderr: {}\nB log: {}",
        r.stdout,
        r.stderr,
        sb.log()
    );
    let v = r.json();
    assert_eq!(v[0]["via"], "p2p", "{v}");
    assert_eq!(v[0]["received"], 4, "{v}");
    // The sync worked both ways.
    let got_a = ids_by(&a, &pkb);
    assert!(
        ids_b.iter().all(|id| got_a.contains(id)),
        "B's memories at A"
    );
    assert!(
        wait_until(5, || {
            let got = ids_by(&b, &pka);
            ids_a.iter().all(|id| got.contains(id))
        }),
        "A's memories at B"
    );

    let conns = relay.captured();
    let to_b: Vec<u8> = conns.iter().flat_map(|c| c.0.clone()).collect();
    let to_a: Vec<u8> = conns.iter().flat_map(|c| c.1.clone()).collect();
    let all: Vec<u8> = to_b.iter().chain(to_a.iter()).copied().collect();
    eprintln!(
        "captured {} connections: {} bytes A->B, {} bytes B->A",
        conns.len(),
        to_b.len(),
        to_a.len()
    );
    assert!(
        to_b.len() >= 1000 && to_a.len() >= 1000 && all.len() >= 3000,
        "the capture holds the sync: {} bytes A->B, {} bytes B->A",
        to_b.len(),
        to_a.len()
    );

    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for (who, hex) in [("A", &pka), ("B", &pkb)] {
        let pk: PublicKey = hex.parse().unwrap();
        needles.push((format!("{who}'s key, hex"), hex.as_bytes().to_vec()));
        needles.push((
            format!("{who}'s key, upper-case hex"),
            hex.to_uppercase().into_bytes(),
        ));
        needles.push((format!("{who}'s key, raw"), pk.as_bytes().to_vec()));
        needles.push((format!("{who}'s key, X25519"), pk.to_x25519().to_vec()));
        needles.push((
            format!("{who}'s branch"),
            format!("users/{hex}").into_bytes(),
        ));
        // Half a key is as good as a key to a tracker.
        needles.push((format!("{who}'s key prefix"), hex.as_bytes()[..16].to_vec()));
    }
    for s in secrets_a.iter().chain(secrets_b.iter()) {
        needles.push((format!("{s:?}"), s.as_bytes().to_vec()));
    }
    for s in ["Hello", "mmogit", "msg_type", "users/", "GitBundle"] {
        needles.push((format!("{s:?}"), s.as_bytes().to_vec()));
    }
    let mut found = Vec::new();
    let streams: Vec<(String, &[u8])> = vec![
        ("A->B".into(), &to_b[..]),
        ("B->A".into(), &to_a[..]),
        ("both".into(), &all[..]),
    ];
    for (what, needle) in &needles {
        for (dir, hay) in &streams {
            for (i, form) in forms(needle).iter().enumerate() {
                if contains(hay, form) {
                    let how = if i == 0 { "as is" } else { "in base64" };
                    let f = format!("{what} ({how}) in {dir}");
                    if !found.contains(&f) {
                        found.push(f);
                    }
                }
            }
        }
    }
    for (i, (up, down)) in conns.iter().enumerate() {
        for (dir, data) in [("A->B", up), ("B->A", down)] {
            let (run, at) = longest_printable_run(data);
            if run >= 24 {
                found.push(format!(
                    "connection {i} {dir}: {run} printable bytes at {at}: {:?}",
                    String::from_utf8_lossy(&data[at..at + run.min(80)])
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "a passive observer reads:\n  {}",
        found.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// 2. Scanners.

#[test]
fn a_scanner_that_does_not_know_the_key_gets_nothing() {
    let b = TestHome::init();
    let pkb: PublicKey = b.pubkey().parse().unwrap();
    let common_args = ["--no-dial", "--handshake-timeout", "2s"];
    let open = Serve::start(&b, &common_args);
    let limit = Duration::from_secs(6);
    let mut junk = Junk::new();
    let stranger = Identity::generate().0;
    let wrong = Identity::generate().0.public_key();

    // A version 1 Hello frame, as a v1 client would send it.
    let hello_payload = format!(
        "{{\"pubkey\":\"{}\",\"nonce\":\"{}\",\"protocol\":\"mmogit/1\",\"versions\":[1],\"listen_port\":null}}",
        stranger.public_key().to_hex(),
        hex::encode(junk.bytes(32))
    );
    let body = format!(
        "{{\"msg_type\":\"Hello\",\"payload\":\"{}\",\"signature\":\"{}\"}}",
        base64(hello_payload.as_bytes()),
        base64(&junk.bytes(64))
    );
    let mut v1_hello = (body.len() as u32).to_be_bytes().to_vec();
    v1_hello.extend_from_slice(body.as_bytes());
    let mut huge = vec![0xff, 0xff];
    huge.extend(junk.bytes(200));
    let (_, xk_wrong) = Handshake::initiator(&stranger, Some(&wrong), ephemeral());
    let (_, xx_first) = Handshake::initiator(&stranger, None, ephemeral());

    let mut probes: Vec<(String, String, Vec<u8>)> = vec![
        ("(a) nothing sent".into(), open.addr.clone(), vec![]),
        (
            "(b) 64 random bytes".into(),
            open.addr.clone(),
            junk.bytes(64),
        ),
        ("(c) a version 1 Hello".into(), open.addr.clone(), v1_hello),
        (
            "(d) Noise XK for another key".into(),
            open.addr.clone(),
            xk_wrong,
        ),
        ("(e) length 0xffff and junk".into(), open.addr.clone(), huge),
    ];
    let mut failures: Vec<String> = Vec::new();
    // Nodes that refuse a first contact without their key.
    let hidden = start_serve(&b, &[&common_args[..], &["--hidden"]].concat());
    let private = start_serve(&b, &[&common_args[..], &["--mdns-private"]].concat());
    for (name, flag, node) in [
        ("(f)", "--hidden", &hidden),
        ("(g)", "--mdns-private", &private),
    ] {
        match node {
            Ok(s) => probes.push((
                format!("{name} Noise XX at a {flag} node"),
                s.addr.clone(),
                xx_first.clone(),
            )),
            Err(e) => failures.push(e.clone()),
        }
    }

    // All at once: each takes up to the handshake timeout.
    let answers: Vec<(String, Answer)> = std::thread::scope(|s| {
        let hs: Vec<_> = probes
            .iter()
            .map(|(name, addr, bytes)| {
                s.spawn(move || (name.clone(), answer_to(addr, bytes, limit)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (name, answer) in answers {
        match answer {
            Answer::Silent(after) => eprintln!("{name}: closed silently after {after:?}"),
            Answer::Spoke(bytes) => failures.push(format!(
                "{name}: the node answered {} bytes: {:?}",
                bytes.len(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
            )),
            Answer::Open => failures.push(format!(
                "{name}: still open after {limit:?} (handshake timeout 2 s)"
            )),
        }
    }

    // Positive controls: the node does answer those who know its key, and
    // an open node answers a first contact (with its key, as XX does).
    let mut controls: Vec<(String, String, Option<PublicKey>)> = vec![
        ("XX at the open node".into(), open.addr.clone(), None),
        (
            "XK with the right key at the open node".into(),
            open.addr.clone(),
            Some(pkb),
        ),
    ];
    if let Ok(s) = &hidden {
        controls.push((
            "XK with the right key at the --hidden node".into(),
            s.addr.clone(),
            Some(pkb),
        ));
    }
    for (name, addr, key) in controls {
        let (hs, first) = Handshake::initiator(&stranger, key.as_ref(), ephemeral());
        let mut s = TcpStream::connect(&addr).unwrap();
        match drive_initiator(&mut s, hs, &first, limit) {
            Ok((hs, _last)) => match hs.into_transport() {
                Ok(t) if t.is_peer(&pkb) => eprintln!("{name}: answered, Noise complete"),
                Ok(_) => failures.push(format!("{name}: the node showed another static key")),
                Err(e) => failures.push(format!("{name}: no transport: {e}")),
            },
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n  {}\nopen node log: {}",
        failures.len(),
        failures.join("\n  "),
        open.log()
    );
    // Every node is still up after the scan.
    for (name, s) in [
        ("open", Ok(open)),
        ("--hidden", hidden),
        ("--mdns-private", private),
    ] {
        let mut s = s.unwrap();
        assert!(
            s.child.try_wait().unwrap().is_none(),
            "the {name} node exited"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. A man in the middle with its own keys.

/// What the man in the middle's responder made of one connection from A
/// (the byte counts are read by `Debug`, in failure messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Terminated {
    Refused(NoiseError),
    Completed,
    ClosedByClient(usize),
    TimedOut(usize),
}

#[test]
fn a_man_in_the_middle_with_its_own_keys_completes_neither_handshake() {
    let (a, b) = (TestHome::init(), TestHome::init());
    let (pka, pkb_hex) = (a.pubkey(), b.pubkey());
    let pkb: PublicKey = pkb_hex.parse().unwrap();
    a.remember(&["alpha-mitm-content-3141"]);
    let secrets_b = ["bravo-mitm-content-2718", "tag-mitm-canary-1618"];
    b.remember(&["--tag", secrets_b[1], secrets_b[0]]);
    trust(&b, &pka, None);
    let sb = Serve::start(&b, &["--no-dial", "--handshake-timeout", "2s"]);
    let m = Arc::new(Identity::generate().0);

    // M's listener: it terminates A's handshake as a responder with its own key.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mitm_addr = listener.local_addr().unwrap().to_string();
    let outcomes: Arc<Mutex<Vec<Terminated>>> = Arc::default();
    {
        let (m, outcomes) = (m.clone(), outcomes.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let mut hs = Handshake::responder(&m, false, ephemeral());
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 4096];
                let mut n_in = 0;
                let outcome = loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) => break Terminated::ClosedByClient(n_in),
                        Ok(n) => n,
                        Err(_) => break Terminated::TimedOut(n_in),
                    };
                    n_in += n;
                    match hs.handle_input(&buf[..n]) {
                        Err(e) => break Terminated::Refused(e),
                        Ok(Step::Continue(out)) => {
                            let _ = s.write_all(&out);
                        }
                        Ok(Step::Done(out)) => {
                            let _ = s.write_all(&out);
                            break Terminated::Completed;
                        }
                    }
                };
                outcomes.lock().unwrap().push(outcome);
                // Dropped: closed.
            }
        });
    }

    // A has B's real key for M's address.
    trust(&a, &pkb_hex, Some(&mitm_addr));
    let r = a.run(&["sync", "--peer", &pkb_hex, "--json", "--timeout", "5s"]);
    assert_ne!(r.code, 0, "A's sync through M succeeded: {}", r.stdout);
    let error = serde_json::from_str::<serde_json::Value>(&r.stdout)
        .ok()
        .and_then(|v| v[0]["error"].as_str().map(str::to_string))
        .unwrap_or_default();
    eprintln!(
        "A's sync through M: exit {}, error {error:?}, stderr {:?}",
        r.code, r.stderr
    );
    assert!(
        !error.trim().is_empty() || !r.stderr.trim().is_empty(),
        "A's failed sync says why: stdout {} stderr {}",
        r.stdout,
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(ids_by(&a, &pkb_hex).is_empty(), "nothing of B's at A");
    {
        let outcomes = outcomes.lock().unwrap();
        assert!(!outcomes.is_empty(), "A never reached M");
        for o in outcomes.iter() {
            assert!(
                matches!(o, Terminated::Refused(NoiseError::Decrypt(_))),
                "M's responder should fail to decrypt A's XK first message (made for B's key); it got {o:?} ({outcomes:?})"
            );
        }
    }

    // It names the key that was not proven (A cannot tell a man in the
    // middle from a node that lost its key: either way that key is absent).
    assert!(
        format!("{error}{}", r.stderr).contains(&pkb_hex[..12]),
        "A's error names B's key: {error:?} {}",
        r.stderr
    );

    // M dials B with its own key and B's: Noise completes (M knows B's
    // key), but B does not trust M and gives it nothing.
    let mut s = TcpStream::connect(&sb.addr).unwrap();
    let (hs, first) = Handshake::initiator(&m, Some(&pkb), ephemeral());
    let (hs, last) = drive_initiator(&mut s, hs, &first, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("M's XK handshake with B: {e}"));
    s.write_all(&last).unwrap();
    let mut t = hs.into_transport().expect("M's channel to B");
    assert!(t.is_peer(&pkb), "the channel is with B");
    // Read what B sends until it closes (at most its handshake timeout,
    // 2 s, and margin).
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut plain, mut raw, mut closed, mut decrypt_error) = (vec![], 0usize, false, None);
    let mut buf = [0u8; 16 * 1024];
    while t0.elapsed() < Duration::from_secs(8) {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                raw += n;
                if let Err(e) = t.decrypt(&buf[..n], &mut plain) {
                    decrypt_error = Some(e);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    eprintln!(
        "B to M after the handshake: {raw} bytes, {} of plaintext {:?}, closed {closed} after {:?}, decrypt error {decrypt_error:?}",
        plain.len(),
        String::from_utf8_lossy(&plain[..plain.len().min(300)]),
        t0.elapsed()
    );
    assert!(closed, "B closed M's session");
    for s in secrets_b.iter() {
        assert!(
            !contains(&plain, s.as_bytes()),
            "B sent {s} to M: {:?}",
            String::from_utf8_lossy(&plain)
        );
    }
    assert!(
        !contains(&plain, b"GitBundle") && !contains(&plain, b"MemoryResponse"),
        "B sent memories to M: {:?}",
        String::from_utf8_lossy(&plain)
    );

    // And the whole client, as M: refused as not authorized.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = mmogit_node::ClientConfig {
        connect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..mmogit_node::ClientConfig::default()
    };
    let res = rt.block_on(mmogit_node::connect(&sb.addr, m.clone(), Some(pkb), &cfg));
    assert!(
        matches!(res, Err(mmogit_node::NodeError::NotAuthorized { .. })),
        "M's client session at B: {:?}",
        res.map(|_| ())
    );
    // B learned M's key from the handshake and keeps it as pending.
    let mk = m.public_key().to_hex();
    assert!(
        wait_until(3, || b
            .run(&["p2p", "pending", "--json"])
            .stdout
            .contains(&mk)),
        "B records M as pending"
    );
    assert!(ids_by(&b, &pka).is_empty(), "nothing of A's at B");
}

// ---------------------------------------------------------------------------
// 4. A changed byte.

#[test]
fn tampering_any_byte_of_a_session_closes_it() {
    let (a, b) = (TestHome::init(), TestHome::init());
    let (pka, pkb) = (a.pubkey(), b.pubkey());
    a.remember(&["a memory of A's"]);
    // Enough of B's memories that its bundle spans well past byte 5000.
    let mut lines = String::new();
    for i in 0..200 {
        lines.push_str(&format!(
            "{{\"content\": \"memory {i} of B's, with words enough to make the bundle longer: {}\", \"tags\": [\"bulk\"]}}\n",
            "lorem ipsum dolor sit amet ".repeat(3)
        ));
    }
    b.run_stdin(&["import", "-"], &lines).ok();
    trust(&b, &pka, None);
    let mut sb = Serve::start(&b, &["--no-dial"]);
    let relay = Relay::start(&sb.addr);
    trust(&a, &pkb, Some(&relay.addr));

    let cases = [
        (
            "B to A, the first byte after the handshake's second message",
            Tamper {
                to_client: true,
                offset: 60,
            },
        ),
        (
            "B to A, byte 400",
            Tamper {
                to_client: true,
                offset: 400,
            },
        ),
        (
            "B to A, byte 5000 (B's memories)",
            Tamper {
                to_client: true,
                offset: 5000,
            },
        ),
        (
            "A to B, byte 300",
            Tamper {
                to_client: false,
                offset: 300,
            },
        ),
    ];
    for (what, t) in cases {
        let before = relay.flipped.load(Ordering::SeqCst);
        let decrypt_errors_at_b = sb.log().matches("decrypt").count();
        relay.set_tamper(Some(t));
        let t0 = Instant::now();
        let r = a.run(&["sync", "--peer", &pkb, "--json", "--timeout", "5s"]);
        eprintln!(
            "{what}: exit {} after {:?}: {} {}",
            r.code,
            t0.elapsed(),
            r.stdout.trim(),
            r.stderr.trim()
        );
        assert!(
            relay.flipped.load(Ordering::SeqCst) > before,
            "{what}: the session ended before that byte ({:?})",
            relay.captured().last().map(|c| (c.0.len(), c.1.len()))
        );
        assert_ne!(r.code, 0, "{what}: the sync succeeded: {}", r.stdout);
        assert!(
            ids_by(&a, &pkb).is_empty(),
            "{what}: some of B's memories reached A"
        );
        assert!(
            sb.child.try_wait().unwrap().is_none(),
            "{what}: B's serve exited: {}",
            sb.log()
        );
        // The receiver's channel caught it (version 1 caught a changed byte
        // only later, in the frame, its signature or the bundle's SHA-256).
        if t.to_client {
            let said = format!("{}{}", r.stdout, r.stderr);
            assert!(
                said.contains("decrypt"),
                "{what}: A's error does not come from the channel: {said}"
            );
        } else {
            assert!(
                wait_until(3, || sb.log().matches("decrypt").count()
                    > decrypt_errors_at_b),
                "{what}: B logged no channel error: {}",
                sb.log()
            );
        }
    }
    assert_eq!(a.run(&["verify", "--json"]).json()["ok"], true);

    // The same path, untouched: the sync completes.
    relay.set_tamper(None);
    let r = a.run(&["sync", "--peer", &pkb, "--json", "--timeout", "10s"]);
    assert_eq!(r.code, 0, "{}\n{}\nB log: {}", r.stdout, r.stderr, sb.log());
    assert_eq!(r.json()[0]["received"], 200, "{}", r.stdout);
    assert_eq!(ids_by(&a, &pkb).len(), 200);
    let down = relay.captured().last().map(|c| c.1.len()).unwrap_or(0);
    eprintln!("a clean sync carried {down} bytes from B to A");
    assert!(down > 5000);
}
