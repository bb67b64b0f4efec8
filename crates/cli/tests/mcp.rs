//! `mmogit mcp`: the Model Context Protocol over stdio.
//!
//! The interop test drives it with the official MCP Python SDK (`pip install
//! mcp`, which .ci/run does); the others speak JSON-RPC lines directly.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::{Serve, TestHome, BIN};
use serde_json::{json, Value};

#[test]
fn python_mcp_sdk_lists_tools_remembers_recalls_and_gets_tool_errors() {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/mcp_client.py");
    let probe = Command::new("python3")
        .args(["-c", "import mcp.client.stdio"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "the interop test needs python3 with the MCP SDK: python3 -m pip install mcp (.ci/run does)"
    );
    let h = TestHome::init();
    let out = Command::new("python3")
        .arg(&script)
        .arg(BIN)
        .arg(&h.home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["server"], "mmogit");
    assert_eq!(summary["tool_errors"].as_array().unwrap().len(), 12);
    // What the SDK stored is what the CLI recalls.
    let id = summary["remembered"].as_str().unwrap();
    assert_eq!(h.recall_ids(&["--tag", "mcp"]), vec![id.to_string()]);
}

/// A JSON-RPC client over the stdio of `mmogit mcp`.
struct Mcp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Mcp {
    fn start(h: &TestHome) -> Mcp {
        Mcp::start_with(h, &[])
    }

    fn start_with(h: &TestHome, extra: &[&str]) -> Mcp {
        let mut child = h
            .cmd()
            .arg("mcp")
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut m = Mcp {
            child,
            stdin,
            stdout,
            next_id: 1,
        };
        let init = m.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "mmogit-test", "version": "0"}}),
        );
        assert_eq!(init["result"]["serverInfo"]["name"], "mmogit", "{init}");
        m.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        m
    }

    fn send(&mut self, v: Value) {
        writeln!(self.stdin, "{v}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "mmogit mcp closed stdout"
            );
            // Every line on stdout is protocol: nothing else may be printed there.
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not JSON-RPC on stdout ({e}): {line}"));
            if v["id"] == json!(id) {
                return v;
            }
        }
    }

    /// Calls a tool; returns (isError, structuredContent or text).
    fn call(&mut self, tool: &str, args: Value) -> (bool, Value) {
        let r = self.request("tools/call", json!({"name": tool, "arguments": args}));
        let res = &r["result"];
        assert!(res.is_object(), "a protocol error instead of a result: {r}");
        let err = res["isError"].as_bool().unwrap_or(false);
        if err {
            (true, res["content"][0]["text"].clone())
        } else {
            (false, res["structuredContent"].clone())
        }
    }

    fn stop(self) -> String {
        drop(self.stdin);
        let out = self.child.wait_with_output().unwrap();
        assert!(out.status.success(), "mmogit mcp exit: {:?}", out.status);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[test]
fn tools_have_schemas_and_bad_arguments_are_tool_errors() {
    let h = TestHome::init();
    let mut m = Mcp::start(&h);
    let list = m.request("tools/list", json!({}));
    let tools = list["result"]["tools"].as_array().unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["peers", "recall", "remember", "status", "sync"]);
    for t in tools {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert_eq!(t["inputSchema"]["additionalProperties"], false, "{t}");
    }
    for (tool, args) in [
        ("remember", json!({})),
        ("remember", json!({"content": 42})),
        ("remember", json!({"content": "x", "type": "dream"})),
        ("remember", json!({"content": "x", "tags": ["Not A Tag!"]})),
        ("recall", json!({"limit": 0})),
        ("recall", json!({"min_confidence": 2})),
        ("peers", json!({"action": "accept"})),
        ("nosuchtool", json!({})),
    ] {
        let (err, text) = m.call(tool, args.clone());
        assert!(err, "{tool} {args}: {text}");
        assert!(text.as_str().unwrap().starts_with("error: "), "{text}");
    }
    // Alive and well afterwards.
    let (err, st) = m.call("status", json!({}));
    assert!(!err, "{st}");
    assert_eq!(st["pubkey"], h.pubkey());
    let stderr = m.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn recall_returns_memories_with_author_and_verification_and_private_stays_private() {
    let h = TestHome::init();
    h.remember(&["--tag", "cli", "written by the CLI"]);
    let mut m = Mcp::start(&h);
    let (err, r) = m.call(
        "remember",
        json!({"content": "secret plan", "private": true, "tags": ["cli"]}),
    );
    assert!(!err, "{r}");
    let (err, r) = m.call("recall", json!({"tags": ["cli"]}));
    assert!(!err, "{r}");
    let ms = r["memories"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{r}");
    for mem in ms {
        assert_eq!(mem["author"], h.pubkey());
        assert_eq!(mem["verified"], true);
    }
    // Our own private memory is readable here (newest first).
    assert_eq!(ms[0]["content"], "secret plan");
    assert_eq!(ms[0]["private"], true);
    let (err, r) = m.call("recall", json!({"query": "written", "authors": ["me"]}));
    assert!(!err, "{r}");
    assert_eq!(r["memories"][0]["content"], "written by the CLI");
    m.stop();
}

#[test]
fn writes_beside_a_running_serve_and_cli_writers_do_not_corrupt() {
    let h = TestHome::init();
    let serve = Serve::start(&h, &[]);
    let mut m = Mcp::start(&h);
    let writers: Vec<_> = (0..6)
        .map(|i| {
            h.cmd()
                .args(["remember", "--tag", "load", &format!("cli memory {i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for i in 0..6 {
        let (err, r) = m.call(
            "remember",
            json!({"content": format!("mcp memory {i}"), "tags": ["load"]}),
        );
        assert!(!err, "{r}");
    }
    for mut w in writers {
        assert!(w.wait().unwrap().success());
    }
    let (err, r) = m.call("recall", json!({"tags": ["load"], "limit": 100}));
    assert!(!err, "{r}");
    assert_eq!(r["count"], 12, "{r}");
    let (err, st) = m.call("status", json!({}));
    assert!(!err, "{st}");
    assert_eq!(st["serve"]["running"], true, "{st}");
    m.stop();
    assert_eq!(serve.terminate(), 0);
    h.run(&["verify"]).ok();
    assert_eq!(h.recall_ids(&["--tag", "load", "-n", "100"]).len(), 12);
}

#[test]
fn sync_and_peers_tools_work_with_a_real_peer() {
    let alice = TestHome::init();
    let bob = TestHome::init();
    let serve = Serve::start(&alice, &[]);
    // Bob asks: Alice's node records him as pending.
    let add = bob.run(&[
        "p2p",
        "add",
        &serve.addr,
        "--pubkey",
        &alice.pubkey(),
        "--name",
        "alice",
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    alice.remember(&["--tag", "news", "from alice"]);

    let mut ma = Mcp::start_with(&alice, &["--allow-trust-changes"]);
    let (err, p) = ma.call("peers", json!({"action": "pending"}));
    assert!(!err, "{p}");
    assert_eq!(p["peers"][0]["pubkey"], bob.pubkey(), "{p}");
    let (err, p) = ma.call(
        "peers",
        json!({"action": "accept", "peer": bob.pubkey(), "name": "bob"}),
    );
    assert!(!err, "{p}");
    assert_eq!(p["accepted"]["trust"], "trusted", "{p}");
    ma.stop();

    let mut mb = Mcp::start(&bob);
    let (err, s) = mb.call("sync", json!({"peer": "alice", "timeout_secs": 20}));
    assert!(!err, "{s}");
    assert_eq!(s["received"], 1, "{s}");
    assert_eq!(s["peers"][0]["via"], "p2p", "{s}");
    let (err, r) = mb.call("recall", json!({"tags": ["news"]}));
    assert!(!err, "{r}");
    assert_eq!(r["memories"][0]["content"], "from alice");
    assert_eq!(r["memories"][0]["author"], alice.pubkey());
    assert_eq!(r["memories"][0]["verified"], true);
    let (err, st) = mb.call("status", json!({}));
    assert!(!err, "{st}");
    assert_eq!(st["last_syncs"][0]["outcome"], "ok", "{st}");
    // Unknown peer: a tool error naming it.
    let (err, t) = mb.call("sync", json!({"peer": "carol"}));
    assert!(err, "{t}");
    mb.stop();
    assert_eq!(serve.terminate(), 0);
}

/// The `peers` tool's actions offered in `tools/list`.
fn peer_actions(m: &mut Mcp) -> Vec<String> {
    let list = m.request("tools/list", json!({}));
    let peers = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "peers")
        .unwrap()
        .clone();
    peers["inputSchema"]["properties"]["action"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn trust_changes_are_off_by_default_and_then_need_the_full_key() {
    let alice = TestHome::init();
    let bob = TestHome::init();
    let serve = Serve::start(&alice, &[]);
    // Bob asks: Alice's node records him as pending.
    let add = bob.run(&["p2p", "add", &serve.addr, "--pubkey", &alice.pubkey()]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    assert_eq!(serve.terminate(), 0);
    let peers_json = alice.home.join("peers.json");
    let before = std::fs::read(&peers_json).unwrap();
    let key = bob.pubkey();

    // Without the flag: no accept offered, and none done, whatever the key.
    let mut m = Mcp::start(&alice);
    assert_eq!(peer_actions(&mut m), ["list", "pending"]);
    for peer in [key.clone(), key[..8].to_string()] {
        let (err, t) = m.call("peers", json!({"action": "accept", "peer": peer}));
        assert!(err, "{t}");
        let t = t.as_str().unwrap();
        assert!(
            t.starts_with("error: ") && t.contains("mmogit mcp --allow-trust-changes"),
            "{t}"
        );
    }
    // Reading stays available.
    let (err, p) = m.call("peers", json!({"action": "pending"}));
    assert!(!err, "{p}");
    assert_eq!(p["peers"][0]["pubkey"], key, "{p}");
    let (err, p) = m.call("peers", json!({"action": "list"}));
    assert!(!err, "{p}");
    m.stop();
    assert_eq!(
        std::fs::read(&peers_json).unwrap(),
        before,
        "peers.json untouched"
    );

    // With the flag: a prefix, a name or a malformed key is refused...
    let mut m = Mcp::start_with(&alice, &["--allow-trust-changes"]);
    assert_eq!(peer_actions(&mut m), ["list", "pending", "accept"]);
    for peer in [
        key[..8].to_string(),
        key[..63].to_string(),
        format!("{key}0"),
        format!("{}zz", &key[..62]),
        "bob".to_string(),
    ] {
        let (err, t) = m.call("peers", json!({"action": "accept", "peer": peer}));
        assert!(err, "{peer}: {t}");
        let t = t.as_str().unwrap();
        assert!(t.contains("full 64-hex key"), "{peer}: {t}");
    }
    let (err, t) = m.call("peers", json!({"action": "accept"}));
    assert!(
        err && t.as_str().unwrap().contains("full 64-hex key"),
        "{t}"
    );
    assert_eq!(
        std::fs::read(&peers_json).unwrap(),
        before,
        "peers.json untouched"
    );
    // ...and the full key (either case) is accepted.
    let (err, p) = m.call(
        "peers",
        json!({"action": "accept", "peer": key.to_uppercase(), "name": "bob"}),
    );
    assert!(!err, "{p}");
    assert_eq!(p["accepted"]["pubkey"], key, "{p}");
    assert_eq!(p["accepted"]["trust"], "trusted", "{p}");
    m.stop();
    assert_ne!(
        std::fs::read(&peers_json).unwrap(),
        before,
        "the accept was written"
    );
}

#[test]
fn without_identity_it_exits_with_the_init_hint() {
    let h = TestHome::new();
    let err = h.run(&["mcp"]).fails_with(3);
    assert!(err.contains("mmogit init"), "{err}");
}
