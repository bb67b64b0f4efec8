//! `mmogit sync` end to end: two homes and a bare repository as their shared
//! git remote.

mod common;

use common::{forge, git, shared_remote, SharedRemote, TestHome};

fn setup() -> SharedRemote {
    shared_remote()
}

fn refs(repo: &std::path::Path) -> String {
    git(repo, &["for-each-ref", "--format=%(refname) %(objectname)"])
}

fn heads(repo: &std::path::Path) -> String {
    git(
        repo,
        &[
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            "refs/heads/",
        ],
    )
}

#[test]
fn memories_travel_through_a_shared_git_remote() {
    let s = setup();
    let m1 = s.a.remember(&["--type", "learning", "first from a"]);
    let m2 = s.a.remember(&["second from a"]);

    let r = s.a.run(&["sync", "--json"]);
    let v = r.json();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(v[0]["peer"], s.pkb);
    assert_eq!(v[0]["via"], "git");
    assert_eq!(v[0]["sent"], 2);
    assert_eq!(v[0]["received"], 0);
    assert!(v[0]["refused"].as_array().unwrap().is_empty());
    assert!(v[0]["error"].is_null());
    assert!(v[0]["elapsed_ms"].is_u64());
    assert_eq!(
        git(&s.remote, &["rev-parse", &format!("users/{}", s.pka)]),
        git(&s.a.repo(), &["rev-parse", &format!("users/{}", s.pka)])
    );

    // B pulls A's memories; each one verified.
    let out = s.b.run(&["sync"]).ok();
    assert!(
        out.contains("alice") && out.contains("received 2 memories on 1 branch"),
        "{out}"
    );
    let mut got = s.b.recall_ids(&["--author", &s.pka]);
    got.sort();
    let mut want = vec![m1.clone(), m2.clone()];
    want.sort();
    assert_eq!(got, want);
    s.b.run(&["verify"]).ok();
    // Nothing left in quarantine, nothing fetched into refs/remotes.
    let all = refs(&s.b.repo());
    assert!(!all.contains("refs/quarantine/"), "{all}");
    assert!(!all.contains("refs/remotes/"), "{all}");

    // And back: B writes, syncs (pushes), A syncs (receives).
    let mb = s.b.remember(&["reply from b"]);
    let v = s.b.run(&["sync", "--json"]).json();
    assert_eq!(v[0]["sent"], 1);
    assert_eq!(v[0]["received"], 0);
    let v = s.a.run(&["sync", "--json"]).json();
    assert_eq!(v[0]["received"], 1);
    assert_eq!(v[0]["branches"], 1);
    assert_eq!(v[0]["sent"], 0);
    assert_eq!(s.a.recall_ids(&["--author", &s.pkb]), vec![mb]);

    // --peer by name, key prefix or full key.
    for q in ["bob", &s.pkb[..8], &s.pkb] {
        let v = s.a.run(&["sync", "--peer", q, "--json"]).json();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["peer"], s.pkb);
    }
    let err = s.a.run(&["sync", "--peer", "nobody"]).fails_with(2);
    assert!(err.contains("nobody"), "{err}");
}

#[test]
fn a_forged_commit_in_the_remote_is_refused_and_nothing_moves() {
    let s = setup();
    let m1 = s.a.remember(&["genuine memory"]);
    s.a.run(&["sync"]).ok();
    s.b.run(&["sync"]).ok();
    s.a.remember(&["a second, genuine one"]);
    s.a.run(&["sync"]).ok();

    // Someone with write access to the shared repository changes m1.
    let branch = format!("users/{}", s.pka);
    let path = format!("memories/{}/{m1}.json", &m1[..2]);
    let json = git(&s.remote, &["show", &format!("{branch}:{path}")]);
    let forged = json.replace("genuine memory", "forged memory");
    assert_ne!(json, forged);
    forge(&s.remote, &branch, &path, Some(forged.as_bytes()));

    let before = heads(&s.b.repo());
    let recalled = s.b.recall_ids(&[]);
    let r = s.b.run(&["sync"]);
    assert_eq!(r.code, 4, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(r.stdout.contains("REFUSED"), "{}", r.stdout);
    assert!(r.stdout.contains(&m1), "names the memory: {}", r.stdout);
    assert!(r.stdout.contains("changed"), "{}", r.stdout);
    assert!(r.stderr.contains("verification failed"), "{}", r.stderr);
    assert_eq!(heads(&s.b.repo()), before, "no ref moved");
    assert_eq!(s.b.recall_ids(&[]), recalled);
    s.b.run(&["verify"]).ok();

    let r = s.b.run(&["sync", "--json"]);
    assert_eq!(r.code, 4);
    let v = r.json();
    let refused = v[0]["refused"].as_array().unwrap();
    assert!(!refused.is_empty());
    assert_eq!(refused[0]["branch"], branch);
    assert_eq!(refused[0]["memory"], m1.as_str());
    assert!(refused[0]["reason"].as_str().unwrap().contains("changed"));
    assert_eq!(v[0]["received"], 0);
    assert_eq!(heads(&s.b.repo()), before);

    let st = s.b.run(&["sync", "--status", "--json"]).json();
    assert_eq!(st[0]["outcome"], "refused");
}

#[test]
fn a_rewritten_branch_in_the_remote_is_refused_and_kept_as_evidence() {
    let s = setup();
    s.a.remember(&["one"]);
    s.a.run(&["sync"]).ok();
    s.b.run(&["sync"]).ok();
    let before = heads(&s.b.repo());
    // The same memories under a new root commit, force-pushed: every memory
    // still verifies, but the history B holds was rewritten.
    let branch = format!("users/{}", s.pka);
    let tip = git(&s.remote, &["rev-parse", &branch]);
    let tree = git(&s.remote, &["rev-parse", &format!("{tip}^{{tree}}")]);
    let root = git(&s.remote, &["commit-tree", &tree, "-m", "rewritten root"]);
    git(
        &s.remote,
        &["update-ref", &format!("refs/heads/{branch}"), &root],
    );

    let r = s.b.run(&["sync", "--json"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let v = r.json();
    let refused = &v[0]["refused"][0];
    assert!(
        refused["reason"].as_str().unwrap().contains("rewritten"),
        "{refused}"
    );
    let ev = refused["evidence"].as_str().unwrap();
    assert!(ev.starts_with(&format!("refs/mmogit/evidence/{}/", s.pka)));
    assert_eq!(git(&s.b.repo(), &["rev-parse", ev]), root);
    assert_eq!(heads(&s.b.repo()), before);
    // Reported by verify (not a problem of this repository) and by
    // sync --status for that peer.
    let v = s.b.run(&["verify", "--json"]).json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["evidence"][0], ev);
    let out = s.b.run(&["verify"]);
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains(&format!("EVIDENCE {ev}")),
        "{}",
        out.stdout
    );
    let st = s.b.run(&["sync", "--status", "--json"]).json();
    assert_eq!(st[0]["evidence"][0], ev);
    let st = s.b.run(&["sync", "--status"]).ok();
    assert!(
        st.contains(&format!("evidence of a rewritten history: {ev}")),
        "{st}"
    );
}

#[test]
fn sync_status_reports_last_sync_and_whether_behind() {
    let s = setup();
    s.a.remember(&["x"]);
    s.a.run(&["sync"]).ok();

    let v = s.b.run(&["sync", "--status", "--json"]).json();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["peer"], s.pka);
    assert_eq!(v[0]["name"], "alice");
    assert_eq!(v[0]["via"], "git");
    assert!(v[0]["last_sync"].is_null());
    assert!(v[0]["outcome"].is_null());
    assert_eq!(v[0]["behind"], "yes");
    assert_eq!(v[0]["incoming"], true);

    s.b.run(&["sync"]).ok();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.b.home.join("sync-state.json")).unwrap())
            .unwrap();
    assert_eq!(state["peers"][&s.pka]["outcome"], "ok");
    assert_eq!(state["peers"][&s.pka]["received"], 1);
    let v = s.b.run(&["sync", "--status", "--json"]).json();
    assert!(v[0]["last_sync"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v[0]["outcome"], "ok");
    assert_eq!(v[0]["behind"], "no");

    // Our own unsent memory makes the peer behind.
    s.b.remember(&["not sent yet"]);
    let v = s.b.run(&["sync", "--status", "--json"]).json();
    assert_eq!(v[0]["behind"], "yes");
    assert_eq!(v[0]["outgoing"], true);
    assert_eq!(v[0]["incoming"], false);
    let out = s.b.run(&["sync", "--status"]).ok();
    assert!(
        out.contains("alice") && out.contains("behind: yes"),
        "{out}"
    );

    // Unreachable: unknown, and a sync fails with 1.
    std::fs::rename(&s.remote, s.remote.with_extension("moved")).unwrap();
    let v = s.b.run(&["sync", "--status", "--json"]).json();
    assert_eq!(v[0]["behind"], "unknown");
    assert!(v[0]["note"].as_str().unwrap().contains("unreachable"));
    let r = s.b.run(&["sync", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.json()[0]["error"].as_str().unwrap().contains("git fetch"));
    let v = s.b.run(&["sync", "--status", "--json"]).json();
    assert_eq!(v[0]["outcome"], "failed");
}

#[test]
fn unreachable_address_only_peer_fails_alone() {
    let s = setup();
    let c = TestHome::init();
    // An address nobody listens on: added anyway, with its key.
    s.b.run(&[
        "p2p",
        "add",
        "127.0.0.1:1",
        "--pubkey",
        &c.pubkey(),
        "--timeout",
        "2s",
    ])
    .ok();
    s.a.remember(&["x"]);
    s.a.run(&["sync"]).ok();
    let r = s.b.run(&["sync", "--json", "--timeout", "2s"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let p2p = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["via"] == "p2p")
        .unwrap();
    assert!(
        p2p["error"].as_str().unwrap().contains("unreachable"),
        "{p2p}"
    );
    // The git peer synced all the same.
    assert!(!r.stdout.contains(&s.pkb));
    assert_eq!(s.b.recall_ids(&["--author", &s.pka]).len(), 1);
}

#[test]
fn no_peers_is_not_an_error() {
    let h = TestHome::init();
    let r = h.run(&["sync"]);
    assert_eq!(r.code, 0);
    assert!(r.stderr.contains("p2p add"), "{}", r.stderr);
    assert_eq!(h.run(&["sync", "--json"]).ok().trim(), "[]");
    assert_eq!(h.run(&["sync", "--status", "--json"]).ok().trim(), "[]");
}

#[test]
fn a_hanging_remote_is_cut_off_by_the_timeout() {
    let s = setup();
    // Point B's remote at an ssh URL whose "ssh" never answers.
    let remote = format!("peer_{}", &s.pka[..8]);
    git(
        &s.b.repo(),
        &[
            "remote",
            "set-url",
            &remote,
            "ssh://peer.invalid/memories.git",
        ],
    );
    let before = heads(&s.b.repo());
    let started = std::time::Instant::now();
    let out =
        s.b.cmd()
            .args(["sync", "--json", "--timeout", "1s"])
            .env("GIT_SSH_COMMAND", "sleep 30;:")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = v[0]["error"].as_str().unwrap();
    assert!(err.contains("took longer than 1s"), "{err}");
    assert_eq!(heads(&s.b.repo()), before);
}
