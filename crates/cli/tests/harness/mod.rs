//! Multi-host test harness: N network namespaces joined by a bridge, each
//! host with its own mmogit home and, when started, a real `mmogit serve`
//! listening on `10.77.<run>.<i>:7420`. Links can be cut and restored, nodes
//! killed with SIGKILL and restarted. Everything (processes, namespaces) is
//! removed when the [`Net`] is dropped, also when a test panics; namespaces
//! left behind by a test process that was itself killed are removed by the
//! next [`Net::new`].
//!
//! Layout (names unique per test process and net: `mmh<pid>n<k>`):
//!
//! ```text
//!   ns mmh<pid>n<k>b:  bridge br0 (mcast_snooping 0), ports h1..hN
//!   ns mmh<pid>n<k>h<i>: eth0 = 10.77.<run>.<i>/24, lo up   (veth to h<i>)
//! ```
//!
//! Needs root and iproute2 (`.ci/run` runs as root and installs iproute2).
//! Without them, [`Net::new`] returns `None` and the caller skips, saying so
//! on stderr; under `CI=true` (`.ci/run` sets it) it panics instead, so a CI
//! run can never pass by skipping these tests.
//! Traffic only flows between the net's own namespaces: the root namespace
//! has no route into them.
//!
//! Use from a test file with `mod common; mod harness;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Run, TestHome, BIN};

/// The port every host's serve listens on.
pub const PORT: u16 = 7420;
const PREFIX: &str = "mmh";
static NET_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with arguments; panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// True in a CI run (`CI=true`, which `.ci/run` sets): there a test that
/// cannot run must fail, not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// True when namespaces can be made here (root and `ip` present).
pub fn available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let has_ip = Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    root && has_ip
}

/// Deletes namespaces of this harness whose creating process is gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('n').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// One host: a namespace, a home, maybe a running serve.
pub struct Host {
    pub index: usize,
    pub ns: String,
    /// The host's address (no port).
    pub ip: String,
    /// The bridge-side end of its veth (in the bridge namespace).
    pub port: String,
    pub home: TestHome,
    pub pubkey: String,
    serve: Option<Child>,
    serve_args: Vec<String>,
    log: PathBuf,
}

impl Host {
    /// `ip:7420`.
    pub fn addr(&self) -> String {
        format!("{}:{PORT}", self.ip)
    }

    /// `mmogit --home <home>` run inside this host's namespace.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, BIN, "--home"])
            .arg(&self.home.home);
        c.env_remove("MMOGIT_HOME")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("MMOGIT_NO_MDNS", "1");
        c
    }

    /// Runs a CLI command in the namespace and waits for it.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run mmogit");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `remember <content>`: the new memory's id.
    pub fn remember(&self, content: &str) -> String {
        self.run(&["remember", content]).ok().trim().to_string()
    }

    /// Branch tips of the host's repository, read in process: author hex -> commit.
    pub fn tips(&self) -> BTreeMap<String, String> {
        let Ok(store) = mmogit_store::Store::open(&self.home.repo()) else {
            return BTreeMap::new();
        };
        store
            .branches()
            .unwrap_or_default()
            .into_iter()
            .map(|(pk, oid)| (pk.to_hex(), oid.to_string()))
            .collect()
    }

    /// Ids of every memory `recall` shows (all of them verified).
    pub fn memory_ids(&self) -> BTreeSet<String> {
        let r = self.run(&["recall", "--json", "--limit", "1000000"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// `mmogit verify --json` says ok.
    pub fn verify_ok(&self) -> bool {
        let r = self.run(&["verify", "--json"]);
        r.code == 0 && r.json()["ok"] == true
    }

    /// Trusts `other` (its key and address) in this host's peers.json,
    /// under the file's lock (safe while this host's serve runs).
    pub fn trust(&self, other: &Host) {
        let path = self.home.home.join("peers.json");
        let pk: mmogit_identity::PublicKey = other.pubkey.parse().unwrap();
        mmogit_node::PeerStore::update(&path, |store| {
            store.add(
                pk,
                Some(format!("h{}", other.index)),
                vec![other.addr()],
                mmogit_node::PeerSource::Manual,
            );
            Ok::<_, mmogit_node::PeerStoreError>(())
        })
        .expect("update peers.json");
    }

    /// Starts `mmogit serve --listen <ip>:7420 <extra>` in the namespace and
    /// waits until it listens. The arguments are kept for [`Host::restart`].
    pub fn start(&mut self, extra: &[&str]) {
        assert!(self.serve.is_none(), "host {} already serving", self.index);
        self.serve_args = extra.iter().map(|s| s.to_string()).collect();
        self.spawn_serve();
    }

    fn spawn_serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = self
            .cmd()
            .args(["serve", "--listen", &self.addr()])
            .args(&self.serve_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so serve never blocks on a full pipe.
            let mut sink = String::new();
            while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        assert!(
            line.starts_with("listening on "),
            "host {} serve did not start: {line:?}\n{}",
            self.index,
            self.log()
        );
        self.serve = Some(child);
    }

    /// The serve process id, when running.
    pub fn serve_pid(&self) -> Option<u32> {
        self.serve.as_ref().map(|c| c.id())
    }

    pub fn is_serving(&self) -> bool {
        self.serve.is_some()
    }

    /// SIGKILL the serve process (no Bye, no cleanup) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (graceful) and wait, at most 15 s; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let Some(mut c) = self.serve.take() else {
            return 0;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        -1
    }

    /// Starts serve again with the arguments of the last [`Host::start`]
    /// (after [`Host::kill9`] or [`Host::stop`]).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn_serve();
    }

    /// Everything serve logged (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// CPU time the serve process has used so far.
    pub fn serve_cpu(&self) -> Option<Duration> {
        cpu_time(self.serve_pid()?)
    }

    /// Peak resident memory of the serve process (VmHWM), in KiB.
    pub fn serve_peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.serve_pid()?)
    }
}

/// CPU time (user + system) a process has used so far, from /proc (clock
/// ticks of 10 ms, Linux's `CLK_TCK` of 100).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// VmHWM of a process from /proc, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A set of hosts on one bridge.
pub struct Net {
    pub name: String,
    pub bridge_ns: String,
    /// Third octet of the addresses.
    pub run: u8,
    pub hosts: Vec<Host>,
}

impl Net {
    /// Creates `n` hosts (1 ≤ n ≤ 250), each with an initialized home, on
    /// one bridge; no serve runs yet. `None` when not root (the caller skips;
    /// under `CI=true` this panics instead).
    pub fn new(n: usize) -> Option<Net> {
        assert!((1..=250).contains(&n));
        if !available() {
            let why = "the multi-host harness needs root and iproute2 (`ip`)";
            assert!(
                !in_ci(),
                "{why}; CI=true, so this test fails rather than skip (.ci/run runs as root and installs iproute2)"
            );
            eprintln!("SKIPPED: {why} (under CI=true this fails)");
            return None;
        }
        remove_stale();
        let k = NET_COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}n{k}");
        let run = ((pid.wrapping_mul(31).wrapping_add(k)) % 250) as u8;
        let bridge_ns = format!("{name}b");
        // From here on, Drop cleans up whatever was made.
        let mut net = Net {
            name,
            bridge_ns,
            run,
            hosts: Vec::new(),
        };
        let b = net.bridge_ns.clone();
        ip(&["netns", "add", &b]);
        ip(&["-n", &b, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &b,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &b, "link", "set", "br0", "up"]);
        // Homes are initialized in parallel: `init` is the slow part.
        let homes: Vec<(TestHome, String)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| {
                        let h = TestHome::init();
                        let pk = h.pubkey();
                        (h, pk)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, (home, pubkey)) in homes.into_iter().enumerate() {
            let idx = i + 1;
            let ns = format!("{}h{idx}", net.name);
            let port = format!("h{idx}");
            let addr = format!("10.77.{run}.{idx}");
            ip(&["netns", "add", &ns]);
            let log = home.home.with_extension("serve.log");
            net.hosts.push(Host {
                index: idx,
                ns: ns.clone(),
                ip: addr.clone(),
                port: port.clone(),
                home,
                pubkey,
                serve: None,
                serve_args: Vec::new(),
                log,
            });
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &b, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &b, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &b, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        Some(net)
    }

    /// Host `i`, counted from 0.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    pub fn host_mut(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[i]
    }

    /// Makes `a` and `b` trust each other (call before starting them).
    pub fn link_trust(&self, a: usize, b: usize) {
        self.hosts[a].trust(&self.hosts[b]);
        self.hosts[b].trust(&self.hosts[a]);
    }

    /// Hosts trust their neighbours only: 0 - 1 - 2 - … - n-1.
    pub fn trust_chain(&self) {
        for i in 1..self.hosts.len() {
            self.link_trust(i - 1, i);
        }
    }

    /// Every host trusts every other.
    pub fn trust_mesh(&self) {
        for i in 0..self.hosts.len() {
            for j in i + 1..self.hosts.len() {
                self.link_trust(i, j);
            }
        }
    }

    /// Starts serve on every host (in parallel) with the same arguments.
    pub fn start_all(&mut self, extra: &[&str]) {
        std::thread::scope(|s| {
            for h in self.hosts.iter_mut() {
                s.spawn(move || h.start(extra));
            }
        });
    }

    /// Cuts host `i` off the bridge (its port goes down; its TCP sessions
    /// see silence, not a reset).
    pub fn cut(&self, i: usize) {
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &self.hosts[i].port,
            "down",
        ]);
    }

    /// Connects host `i` to the bridge again.
    pub fn restore(&self, i: usize) {
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &self.hosts[i].port,
            "up",
        ]);
    }

    /// Waits until every host holds exactly `want` (author -> tip); returns
    /// the time it took, or None after `secs`.
    pub fn wait_converged(&self, want: &BTreeMap<String, String>, secs: u64) -> Option<Duration> {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(secs);
        loop {
            if self.hosts.iter().all(|h| &h.tips() == want) {
                return Some(t0.elapsed());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// CPU time used so far by every running serve together.
    pub fn serve_cpu(&self) -> Duration {
        self.hosts.iter().filter_map(Host::serve_cpu).sum()
    }

    /// Union of every host's own branch tip (what convergence means when
    /// each host writes only its own memories).
    pub fn own_tips(&self) -> BTreeMap<String, String> {
        self.hosts
            .iter()
            .filter_map(|h| {
                h.tips()
                    .get(&h.pubkey)
                    .map(|t| (h.pubkey.clone(), t.clone()))
            })
            .collect()
    }

    /// Per-host summary for failure messages: which authors each host lacks.
    pub fn describe(&self, want: &BTreeMap<String, String>) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            let tips = h.tips();
            let missing: Vec<String> = want
                .iter()
                .filter(|(a, t)| tips.get(*a) != Some(*t))
                .map(|(a, _)| a[..8].to_string())
                .collect();
            s.push_str(&format!(
                "host {} ({}): {} branches, missing/behind {:?}\n",
                h.index,
                &h.pubkey[..8],
                tips.len(),
                missing
            ));
        }
        s
    }

    /// The last `lines` lines of every host's serve log.
    pub fn logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            let log = h.log();
            let all: Vec<&str> = log.lines().collect();
            let from = all.len().saturating_sub(lines);
            s.push_str(&format!("--- host {} log ---\n", h.index));
            for l in &all[from..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.kill9();
        }
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.bridge_ns])
            .status();
    }
}
