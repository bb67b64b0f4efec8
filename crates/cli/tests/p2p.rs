//! End-to-end tests of serve and the p2p commands: real processes on 127.0.0.1.

mod common;

use common::{git, wait_until, Serve, TestHome};

#[test]
fn untrusted_then_accepted_then_ping_works() {
    let a = TestHome::init();
    let b = TestHome::init();
    let serve = Serve::start(&b, &[]);
    let (apk, bpk) = (a.pubkey(), b.pubkey());

    // B does not know A: refused, and A is recorded as pending on B.
    let e = a.run(&["p2p", "ping", &serve.addr]).fails_with(12);
    assert!(e.contains("not authorized"), "{e}");
    let pending = b.run(&["p2p", "pending", "--json"]).json();
    assert_eq!(pending[0]["pubkey"], apk.as_str());
    assert_eq!(pending[0]["trust"], "pending");

    b.run(&["p2p", "accept", &apk[..8]]).ok();
    assert!(b
        .run(&["p2p", "pending", "--json"])
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    let v = a
        .run(&[
            "p2p",
            "ping",
            &serve.addr,
            "--count",
            "3",
            "--interval",
            "10ms",
            "--json",
        ])
        .json();
    assert_eq!(v["pubkey"], bpk.as_str());
    assert_eq!(v["rtt_ms"].as_array().unwrap().len(), 3);
    assert!(v["handshake_ms"].as_f64().unwrap() > 0.0);
    let c = a
        .run(&["p2p", "connect", &serve.addr, "--pubkey", &bpk, "--json"])
        .json();
    assert_eq!(c["pubkey"], bpk.as_str());
    assert_eq!(c["protocol"], 2);
    assert_eq!(c["channel"], "Noise_XK_25519_ChaChaPoly_BLAKE2s");
    // Without the key: a first contact, which this (introducible) node answers.
    let c = a.run(&["p2p", "connect", &serve.addr, "--json"]).json();
    assert_eq!(c["pubkey"], bpk.as_str());
    assert_eq!(c["channel"], "Noise_XX_25519_ChaChaPoly_BLAKE2s");

    let log = serve.log();
    assert!(log.contains("not authorized"), "{log}");
    assert!(
        log.contains(&apk[..12]),
        "serve logs the peer's key prefix: {log}"
    );
    assert_eq!(serve.terminate(), 0, "graceful shutdown on SIGTERM");
}

#[test]
fn wrong_key_unreachable_and_blocked_have_distinct_exit_codes() {
    let a = TestHome::init();
    let b = TestHome::init();
    let other = TestHome::init();
    let serve = Serve::start(&b, &[]);
    b.run(&["p2p", "block", &a.pubkey()]).ok();

    // Expecting someone else's key at B's address: possible impersonation.
    let e = a
        .run(&["p2p", "connect", &serve.addr, "--pubkey", &other.pubkey()])
        .fails_with(13);
    assert!(e.contains("impersonation"), "{e}");
    // Adding with a mismatching key is refused and adds nothing.
    a.run(&["p2p", "add", &serve.addr, "--pubkey", &other.pubkey()])
        .fails_with(13);
    assert!(a
        .run(&["p2p", "list", "--json"])
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    // Blocked.
    a.run(&["p2p", "ping", &serve.addr]).fails_with(12);
    let list = b.run(&["p2p", "list", "--json"]).json();
    assert_eq!(
        list[0]["trust"], "blocked",
        "a blocked key stays blocked: {list}"
    );
    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let e = a
        .run(&["p2p", "ping", &closed, "--timeout", "2s"])
        .fails_with(10);
    assert!(e.contains("cannot reach"), "{e}");
    // Unknown peer name.
    a.run(&["p2p", "ping", "nobody"]).fails_with(2);
}

#[test]
fn add_by_address_confirms_the_key() {
    let a = TestHome::init();
    let b = TestHome::init();
    let serve = Serve::start(&b, &[]);
    let bpk = b.pubkey();
    // No --pubkey and no terminal: refuse with the key and a hint.
    let e = a.run(&["p2p", "add", &serve.addr]).fails_with(2);
    assert!(e.contains(&bpk) && e.contains("--pubkey"), "{e}");
    assert!(a
        .run(&["p2p", "list", "--json"])
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    // --yes trusts the key the handshake proved, even though B does not trust A yet.
    let out = a.run(&[
        "p2p",
        "add",
        &serve.addr,
        "--yes",
        "--name",
        "bob",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("p2p accept"), "{}", out.stderr);
    let rec = out.json();
    assert_eq!(rec["pubkey"], bpk.as_str());
    assert_eq!(rec["name"], "bob");
    assert_eq!(rec["trust"], "trusted");
    assert_eq!(rec["addresses"][0], serve.addr.as_str());
    // Names and prefixes work wherever a peer is taken.
    b.run(&["p2p", "accept", &a.pubkey()[..10]]).ok();
    a.run(&["p2p", "ping", "bob", "-c", "1"]).ok();
    a.run(&["p2p", "ping", &bpk[..8], "-c", "1"]).ok();
    a.run(&["p2p", "remove", "bob"]).ok();
    assert!(a
        .run(&["p2p", "list", "--json"])
        .json()
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn add_by_git_url_learns_the_key_and_remove_drops_the_remote() {
    let a = TestHome::init();
    let b = TestHome::init();
    b.remember(&["something to share"]);
    let bpk = b.pubkey();
    // B's repository itself is a git URL with exactly one users/* branch.
    let url = b.repo().to_str().unwrap().to_string();
    let rec = a.run(&["p2p", "add", &url, "--json"]).json();
    assert_eq!(rec["pubkey"], bpk.as_str());
    assert_eq!(rec["source"], "git");
    let remote = format!("peer_{}", &bpk[..8]);
    assert_eq!(rec["git_remote"], remote.as_str());
    assert_eq!(git(&a.repo(), &["remote", "get-url", &remote]), url);

    // Two branches: the key must be chosen.
    let c = TestHome::init();
    git(
        &c.repo(),
        &["fetch", &url, "refs/heads/users/*:refs/heads/users/*"],
    );
    c.remember(&["c's own"]);
    let e = a
        .run(&["p2p", "add", c.repo().to_str().unwrap()])
        .fails_with(2);
    assert!(e.contains("--pubkey") && e.contains(&bpk), "{e}");
    a.run(&[
        "p2p",
        "add",
        c.repo().to_str().unwrap(),
        "--pubkey",
        &c.pubkey(),
    ])
    .ok();

    a.run(&["p2p", "remove", &bpk[..8]]).ok();
    let remotes = git(&a.repo(), &["remote"]);
    assert!(!remotes.contains(&remote), "{remotes}");
    assert!(remotes.contains(&format!("peer_{}", &c.pubkey()[..8])));
    // Not a repository.
    a.run(&["p2p", "add", "/nonexistent/repo.git", "--timeout", "5s"])
        .fails_with(10);
}

#[test]
fn corrupt_peer_file_is_reported_and_kept() {
    let a = TestHome::init();
    let path = a.home.join("peers.json");
    std::fs::write(&path, b"{ not json").unwrap();
    let e = a.run(&["p2p", "list"]).fails_with(1);
    assert!(e.contains(path.to_str().unwrap()), "{e}");
    a.run(&["p2p", "block", &TestHome::init().pubkey()])
        .fails_with(1);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"{ not json",
        "never replaced"
    );
}

fn connected_to(home: &TestHome, pk: &str) -> bool {
    let v = home.run(&["p2p", "status", "--json"]).json();
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["pubkey"] == pk && p["connected"] == true)
}

#[test]
fn serve_keeps_trusted_peers_connected_across_restarts() {
    let a = TestHome::init();
    let b = TestHome::init();
    let (apk, bpk) = (a.pubkey(), b.pubkey());
    let sb = Serve::start(&b, &[]);
    let b_addr = sb.addr.clone();
    a.run(&["p2p", "add", &b_addr, "--pubkey", &bpk]).ok();
    b.run(&[
        "p2p",
        "add",
        "127.0.0.1:9",
        "--pubkey",
        &apk,
        "--timeout",
        "1s",
    ])
    .ok();
    let sa = Serve::start(&a, &[]);
    assert!(
        wait_until(20, || connected_to(&a, &bpk)),
        "A dials B: {}",
        sa.log()
    );
    assert!(wait_until(10, || connected_to(&b, &apk)), "B sees A");
    let st = a.run(&["p2p", "status", "--json"]).json();
    assert_eq!(st["serving"], true);
    let human = a.run(&["p2p", "status"]).ok();
    assert!(human.contains("connected"), "{human}");

    // B restarts on the same port: A reconnects by itself.
    assert_eq!(sb.terminate(), 0);
    assert!(wait_until(10, || !connected_to(&a, &bpk)), "A notices");
    let sb2 = Serve::start(&b, &["--listen", &b_addr]);
    assert!(
        wait_until(30, || connected_to(&a, &bpk)),
        "A reconnects: {}\n{}",
        sa.log(),
        sb2.log()
    );
    drop(sb2);
    assert_eq!(sa.terminate(), 0);
    let st = a.run(&["p2p", "status", "--json"]).json();
    assert_eq!(st["serving"], false);
}

#[test]
fn adding_a_git_url_that_cannot_be_read_fails_with_the_network_codes() {
    let h = TestHome::init();
    let missing = h.run(&["p2p", "add", "/nonexistent/memories.git", "--yes"]);
    assert_eq!(missing.code, 10, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("cannot read git repository"),
        "{}",
        missing.stderr
    );
    // A remote that never answers: cut off by --timeout.
    let started = std::time::Instant::now();
    let out = h
        .cmd()
        .args([
            "p2p",
            "add",
            "ssh://peer.invalid/m.git",
            "--yes",
            "--timeout",
            "1s",
        ])
        .env("GIT_SSH_COMMAND", "sleep 30;:")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(11));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("took longer than 1s"), "{err}");
    assert!(h.run(&["p2p", "list", "--json"]).stdout.contains("[]"));
}

#[test]
fn a_hidden_node_is_added_only_by_someone_who_knows_its_key() {
    let a = TestHome::init();
    let b = TestHome::init();
    let bpk = b.pubkey();
    for flag in ["--hidden", "--mdns-private"] {
        let serve = Serve::start(&b, &[flag]);
        // A first contact without the key gets no answer: the error says
        // what that probably means and what to do.
        let e = a
            .run(&["p2p", "add", &serve.addr, "--yes", "--timeout", "5s"])
            .fails_with(14);
        assert!(e.contains("--pubkey") && !e.contains(&bpk), "{flag}: {e}");
        assert!(a
            .run(&["p2p", "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty());
        // With the key, it answers.
        a.run(&["p2p", "add", &serve.addr, "--pubkey", &bpk, "--name", "bob"])
            .ok();
        b.run(&["p2p", "accept", &a.pubkey()]).ok();
        a.run(&["p2p", "ping", "bob", "-c", "1"]).ok();
        a.run(&["p2p", "remove", "bob"]).ok();
        b.run(&["p2p", "remove", &a.pubkey()]).ok();
    }
}
