//! Helpers for tests that run the real `mmogit` binary in fresh homes.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_mmogit");

/// A temporary home directory and a way to run `mmogit` in it.
pub struct TestHome {
    _dir: tempfile::TempDir,
    pub home: PathBuf,
}

/// The result of one run, with its streams as text.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.stdout
    }

    /// Asserts the exit code and returns stderr.
    #[track_caller]
    pub fn fails_with(self, code: i32) -> String {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.stderr
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl TestHome {
    /// A fresh, uninitialized home.
    pub fn new() -> TestHome {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        TestHome { _dir: dir, home }
    }

    /// A fresh home with an identity.
    pub fn init() -> TestHome {
        let h = TestHome::new();
        h.run(&["init"]).ok();
        h
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--home").arg(&self.home);
        c.env_remove("MMOGIT_HOME")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            // Never multicast from the machine's own namespace: mDNS tests
            // run in network namespaces and remove this (tests/mdns.rs).
            .env("MMOGIT_NO_MDNS", "1");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.cmd().args(args).stdin(Stdio::null()).output().unwrap();
        Run::from(out)
    }

    pub fn run_stdin(&self, args: &[&str], input: &str) -> Run {
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        Run::from(child.wait_with_output().unwrap())
    }

    pub fn pubkey(&self) -> String {
        self.run(&["whoami", "--json"]).json()["pubkey"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn repo(&self) -> PathBuf {
        self.home.join("memories.git")
    }

    /// Ids returned by `recall --json` with extra args.
    pub fn recall_ids(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["recall", "--json"];
        args.extend_from_slice(extra);
        let r = self.run(&args);
        let v = r.json();
        assert_eq!(r.code, 0, "{}", r.stderr);
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn remember(&self, args: &[&str]) -> String {
        let mut a = vec!["remember"];
        a.extend_from_slice(args);
        self.run(&a).ok().trim().to_string()
    }
}

/// Runs system git against a bare repository.
pub fn git(repo: &Path, args: &[&str]) -> String {
    git_env(repo, args, &[])
}

pub fn git_env(repo: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut c = Command::new("git");
    c.arg("--git-dir").arg(repo).args(args);
    c.env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Commits `content` at `path` (or deletes `path` when None) on `branch`,
/// bypassing mmogit, as a forger with write access to the repository would.
pub fn forge(repo: &Path, branch: &str, path: &str, content: Option<&[u8]>) {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("index");
    let env = [("GIT_INDEX_FILE", index.as_path())];
    git_env(repo, &["read-tree", branch], &env);
    match content {
        Some(data) => {
            let f = tmp.path().join("blob");
            std::fs::write(&f, data).unwrap();
            let blob = git(repo, &["hash-object", "-w", f.to_str().unwrap()]);
            git_env(
                repo,
                &[
                    "update-index",
                    "--add",
                    "--cacheinfo",
                    &format!("100644,{blob},{path}"),
                ],
                &env,
            );
        }
        None => {
            // Mode 0 in --index-info removes the entry (no work tree needed).
            let mut c = Command::new("git")
                .arg("--git-dir")
                .arg(repo)
                .args(["update-index", "--index-info"])
                .env("GIT_INDEX_FILE", &index)
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            let line = format!("0 {}\t{path}\n", "0".repeat(40));
            c.stdin.take().unwrap().write_all(line.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success());
        }
    }
    let tree = git_env(repo, &["write-tree"], &env);
    let tip = git(repo, &["rev-parse", branch]);
    let commit = git(repo, &["commit-tree", &tree, "-p", &tip, "-m", "forged"]);
    git(
        repo,
        &["update-ref", &format!("refs/heads/{branch}"), &commit],
    );
}

/// A running `mmogit serve`, killed when dropped.
pub struct Serve {
    pub child: std::process::Child,
    pub addr: String,
    stderr_path: PathBuf,
}

impl Serve {
    /// Starts `serve` in `home` on 127.0.0.1 (port 0 unless `extra` has --listen).
    pub fn start(home: &TestHome, extra: &[&str]) -> Serve {
        let stderr_path = home
            .home
            .with_extension(format!("serve-{}.log", std::process::id()));
        let log = std::fs::File::create(&stderr_path).unwrap();
        let mut args = vec!["serve"];
        if !extra.contains(&"--listen") {
            args.extend_from_slice(&["--listen", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        let mut child = home
            .cmd()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let line = first_stdout_line(&mut child);
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        Serve {
            child,
            addr,
            stderr_path,
        }
    }

    /// What serve logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns its code.
    pub fn terminate(mut self) -> i32 {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not stop on SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// Polls `f` every 50 ms until it returns true or `secs` pass.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    f()
}

/// The first line a `serve` child prints on stdout (`listening on <addr> as
/// <pubkey>`), waiting at most 20 s. The child's stdout must be piped.
pub fn first_stdout_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("serve printed its address")
}

/// Two initialized homes (named alice and bob for each other) and an empty
/// bare repository, each home trusting the other's key through it.
pub struct SharedRemote {
    _dir: tempfile::TempDir,
    pub remote: PathBuf,
    pub a: TestHome,
    pub b: TestHome,
    pub pka: String,
    pub pkb: String,
}

pub fn shared_remote() -> SharedRemote {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("shared.git");
    let out = Command::new("git")
        .args(["init", "--quiet", "--bare"])
        .arg(&remote)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (a, b) = (TestHome::init(), TestHome::init());
    let (pka, pkb) = (a.pubkey(), b.pubkey());
    let url = remote.to_str().unwrap();
    a.run(&["p2p", "add", url, "--pubkey", &pkb, "--name", "bob"])
        .ok();
    b.run(&["p2p", "add", url, "--pubkey", &pka, "--name", "alice"])
        .ok();
    SharedRemote {
        _dir: dir,
        remote,
        a,
        b,
        pka,
        pkb,
    }
}
