//! LAN discovery with real multicast: `mmogit serve` and `mmogit p2p
//! discover` run in network namespaces joined by a bridge (one test LAN
//! per test, created and removed by the test). Nothing here runs an mDNS
//! responder in the machine's own namespace.
//!
//! Needs root and iproute2 (`ip`); the interop test needs python3 with
//! `zeroconf` (.ci/run installs it). Each is a clear failure when missing.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{wait_until, TestHome, BIN};

static LAN_SEQ: AtomicU32 = AtomicU32::new(0);

fn sh(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn must(cmd: &[&str]) {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test LAN: a bridge in a namespace of its own and `n` host namespaces
/// (`eth0` = 10.77.0.i/24). Deleted on drop, also when the test fails.
struct Lan {
    names: Vec<String>,
    hosts: Vec<String>,
}

impl Lan {
    fn new(n: usize) -> Lan {
        assert!(
            sh(&["id", "-u"]).stdout.starts_with(b"0"),
            "the mDNS tests need root (network namespaces); run them as root"
        );
        assert!(
            Command::new("ip").arg("-V").output().is_ok(),
            "the mDNS tests need iproute2 (`ip`): apt-get install iproute2"
        );
        let p = format!(
            "mmt{}x{}",
            std::process::id(),
            LAN_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let br = format!("{p}br");
        let mut lan = Lan {
            names: vec![],
            hosts: vec![],
        };
        let out = sh(&["ip", "netns", "add", &br]);
        assert!(
            out.status.success(),
            "cannot create a network namespace (the sandbox may forbid it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lan.names.push(br.clone());
        must(&[
            "ip",
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        must(&["ip", "-n", &br, "link", "set", "br0", "up"]);
        for i in 1..=n {
            let h = format!("{p}h{i}");
            must(&["ip", "netns", "add", &h]);
            lan.names.push(h.clone());
            // New IPv6 addresses usable at once (no duplicate address detection).
            must(&[
                "ip",
                "netns",
                "exec",
                &h,
                "sh",
                "-c",
                "echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad; \
                 echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad",
            ]);
            let v = format!("v{i}");
            must(&[
                "ip", "-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0",
                "netns", &h,
            ]);
            must(&["ip", "-n", &br, "link", "set", &v, "master", "br0", "up"]);
            let ip = format!("10.77.0.{i}/24");
            must(&["ip", "-n", &h, "addr", "add", &ip, "dev", "eth0"]);
            must(&["ip", "-n", &h, "link", "set", "eth0", "up"]);
            must(&["ip", "-n", &h, "link", "set", "lo", "up"]);
            must(&["ip", "-n", &h, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
            lan.hosts.push(h);
        }
        lan
    }

    fn host(&self, i: usize) -> &str {
        &self.hosts[i - 1]
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = sh(&["ip", "netns", "del", n]);
        }
    }
}

/// `mmogit --home H args...` inside namespace `ns`, with mDNS allowed.
fn mmogit_in(ns: &str, home: &TestHome, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, BIN, "--home"])
        .arg(&home.home)
        .args(args)
        .env_remove("MMOGIT_HOME")
        .env_remove("RUST_LOG")
        .env_remove("MMOGIT_NO_MDNS")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

fn run(mut c: Command) -> Run {
    let out = c.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `mmogit serve` in a namespace; killed on drop.
struct NsServe {
    child: Child,
    log: PathBuf,
}

impl NsServe {
    fn start(ns: &str, home: &TestHome, extra: &[&str]) -> NsServe {
        let log = home.home.with_extension("serve.log");
        let mut args = vec!["-v", "serve", "--listen", "0.0.0.0:7420"];
        args.extend_from_slice(extra);
        let mut child = mmogit_in(ns, home, &args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let line = common::first_stdout_line(&mut child);
        assert!(line.starts_with("listening on "), "{line:?}");
        NsServe { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then a bounded wait for a clean exit.
    fn terminate(mut self) -> i32 {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < end, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NsServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn discover(ns: &str, home: &TestHome, timeout: &str) -> serde_json::Value {
    run(mmogit_in(
        ns,
        home,
        &["p2p", "discover", "--json", "--timeout", timeout],
    ))
    .json()
}

fn entry<'a>(found: &'a serde_json::Value, pubkey: &str) -> Option<&'a serde_json::Value> {
    found
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pubkey"] == pubkey)
}

fn addresses(e: &serde_json::Value) -> Vec<String> {
    e["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn nodes_see_each_other_and_a_stopped_node_disappears() {
    let t0 = Instant::now();
    let lan = Lan::new(2);
    let (a, b) = (TestHome::init(), TestHome::init());
    let (apk, bpk) = (a.pubkey(), b.pubkey());
    let serve_a = NsServe::start(lan.host(1), &a, &[]);
    let _serve_b = NsServe::start(lan.host(2), &b, &[]);

    // Each sees the other (never itself), as a new, untrusted node.
    let seen_by_b = discover(lan.host(2), &b, "2s");
    let ea = entry(&seen_by_b, &apk).unwrap_or_else(|| panic!("B does not see A: {seen_by_b}"));
    assert_eq!(ea["state"], "new");
    assert_eq!(ea["private"], false);
    assert!(
        addresses(ea).contains(&"10.77.0.1:7420".to_string()),
        "{ea}"
    );
    assert_eq!(ea["versions"], serde_json::json!([2]));
    assert!(entry(&seen_by_b, &bpk).is_none(), "B lists itself");
    let seen_by_a = discover(lan.host(1), &a, "2s");
    let eb = entry(&seen_by_a, &bpk).unwrap_or_else(|| panic!("A does not see B: {seen_by_a}"));
    assert!(
        addresses(eb).contains(&"10.77.0.2:7420".to_string()),
        "{eb}"
    );
    assert_eq!(seen_by_a.as_array().unwrap().len(), 1, "{seen_by_a}");
    // Human output: key prefix, state, address. Under load one 2 s window
    // sometimes holds only A's IPv6 link-local record; up to 3 windows.
    let mut out = String::new();
    for _ in 0..3 {
        out = run(mmogit_in(
            lan.host(2),
            &b,
            &["p2p", "discover", "--timeout", "2s"],
        ))
        .ok()
        .to_string();
        if out.contains("10.77.0.1:7420") {
            break;
        }
    }
    assert!(out.contains(&apk[..12]), "{out}");
    assert!(
        out.contains("new") && out.contains("10.77.0.1:7420"),
        "{out}"
    );

    // Discovery trusted nobody.
    let listed = run(mmogit_in(lan.host(2), &b, &["p2p", "list", "--json"])).json();
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");

    // A stops cleanly while B is looking: its goodbye removes it.
    let watch = mmogit_in(
        lan.host(2),
        &b,
        &["-vv", "p2p", "discover", "--json", "--timeout", "4s"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let log_a = serve_a.log();
    assert_eq!(serve_a.terminate(), 0);
    let out = watch.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let after: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        stderr.contains(&format!("mmogit-{}", &apk[..16])) && stderr.contains("node gone"),
        "B saw A, then saw it go: {stderr}"
    );
    assert!(entry(&after, &apk).is_none(), "A still listed: {after}");
    assert!(log_a.contains("announcing"), "{log_a}");
    eprintln!("took {:?}", t0.elapsed());
}

#[test]
fn private_tag_is_recognised_only_by_a_peer_that_knows_the_key() {
    let lan = Lan::new(3);
    let (a, b, c) = (TestHome::init(), TestHome::init(), TestHome::init());
    let apk = a.pubkey();
    let _serve_a = NsServe::start(lan.host(1), &a, &["--mdns-private"]);
    // B knows A's key (blocked, even: any known key recognises the tag); C does not.
    b.run(&["p2p", "block", &apk]).ok();
    let by_b = discover(lan.host(2), &b, "2s");
    let e = entry(&by_b, &apk).unwrap_or_else(|| panic!("B knows A: {by_b}"));
    assert_eq!(e["private"], true);
    assert_eq!(e["state"], "blocked");
    let by_c = discover(lan.host(3), &c, "2s");
    let all = by_c.as_array().unwrap();
    assert_eq!(all.len(), 1, "{by_c}");
    assert_eq!(all[0]["state"], "private");
    assert!(all[0]["pubkey"].is_null());
    assert!(!by_c.to_string().contains(&apk[..16]), "key leaked: {by_c}");
}

#[test]
fn no_mdns_announces_nothing() {
    let lan = Lan::new(2);
    let (a, b) = (TestHome::init(), TestHome::init());
    let _serve_a = NsServe::start(lan.host(1), &a, &["--no-mdns"]);
    let found = discover(lan.host(2), &b, "1500ms");
    assert!(found.as_array().unwrap().is_empty(), "{found}");
}

#[test]
fn interop_with_python_zeroconf() {
    let lan = Lan::new(2);
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/zeroconf_peer.py");
    let probe = Command::new("python3")
        .args(["-c", "import zeroconf"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "the interop test needs python3 with zeroconf: python3 -m pip install zeroconf (.ci/run does)"
    );
    let a = TestHome::init();
    let other = TestHome::init(); // only its key: the python peer announces it
    let (apk, ppk) = (a.pubkey(), other.pubkey());
    let _serve_a = NsServe::start(lan.host(1), &a, &[]);

    // python-zeroconf in h2 browses (and sees us) while advertising itself;
    // mmogit discover in h1 sees the python service at the same time.
    let py = Command::new("ip")
        .args(["netns", "exec", lan.host(2), "python3"])
        .arg(&script)
        .args([
            "--seconds",
            "3",
            "--advertise",
            "--pubkey",
            &ppk,
            "--port",
            "7421",
            "--ip",
            "10.77.0.2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let ours = discover(lan.host(1), &a, "2500ms");
    let py = py.wait_with_output().unwrap();
    assert!(
        py.status.success(),
        "python: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();

    let svc = theirs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["txt"]["pk"] == apk.as_str())
        .unwrap_or_else(|| panic!("python-zeroconf did not see our node: {theirs}"));
    assert_eq!(svc["txt"]["v"], "2");
    assert_eq!(svc["port"], 7420);
    assert!(svc["addresses"].to_string().contains("10.77.0.1"), "{svc}");
    assert_eq!(
        svc["name"],
        format!("mmogit-{}._mmogit._tcp.local.", &apk[..16]).as_str()
    );

    let e = entry(&ours, &ppk)
        .unwrap_or_else(|| panic!("mmogit did not see the python service: {ours}"));
    assert_eq!(addresses(e), vec!["10.77.0.2:7421".to_string()]);
    assert_eq!(e["state"], "new");
}

#[test]
fn two_fresh_agents_meet_on_the_lan_and_connect() {
    let t0 = Instant::now();
    let lan = Lan::new(2);
    let (a, b) = (TestHome::init(), TestHome::init());
    let (apk, bpk) = (a.pubkey(), b.pubkey());
    let _serve_a = NsServe::start(lan.host(1), &a, &[]);
    let serve_b = NsServe::start(lan.host(2), &b, &[]);

    // B finds A and trusts it by the key discover showed.
    let found = discover(lan.host(2), &b, "2s");
    let ea = entry(&found, &apk).unwrap_or_else(|| panic!("{found}"));
    let addr = addresses(ea)[0].clone();
    assert_eq!(addr, "10.77.0.1:7420");
    let added = run(mmogit_in(
        lan.host(2),
        &b,
        &["p2p", "add", &addr, "--pubkey", &apk, "--json"],
    ));
    added.ok();
    // A sees B as pending, and accepts it.
    let pending = run(mmogit_in(lan.host(1), &a, &["p2p", "pending", "--json"])).json();
    assert_eq!(pending[0]["pubkey"], bpk.as_str(), "{pending}");
    run(mmogit_in(lan.host(1), &a, &["p2p", "accept", &bpk[..12]])).ok();

    // They connect: B's serve dials A where discovery found it (the peer
    // session shows on both sides), B pings A and A pings B.
    let connected = |ns: &str, home: &TestHome, key: &str| {
        let st = run(mmogit_in(ns, home, &["p2p", "status", "--json"])).json();
        st["peers"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["pubkey"] == key && p["connected"] == true)
        })
    };
    assert!(
        wait_until(8, || connected(lan.host(1), &a, &bpk)
            && connected(lan.host(2), &b, &apk)),
        "peer session A-B; serve B log: {}",
        serve_b.log()
    );
    let ping = run(mmogit_in(
        lan.host(2),
        &b,
        &["p2p", "ping", &addr, "--count", "2", "--json"],
    ))
    .json();
    assert_eq!(ping["pubkey"], apk.as_str());
    let ping_back = run(mmogit_in(
        lan.host(1),
        &a,
        &[
            "p2p",
            "ping",
            "10.77.0.2:7420",
            "--pubkey",
            &bpk,
            "--count",
            "1",
            "--json",
        ],
    ))
    .json();
    assert_eq!(ping_back["pubkey"], bpk.as_str());
    let d = run(mmogit_in(
        lan.host(2),
        &b,
        &["p2p", "discover", "--json", "--timeout", "1500ms"],
    ))
    .json();
    assert_eq!(entry(&d, &apk).unwrap()["state"], "trusted");
    eprintln!("took {:?}", t0.elapsed());
}
