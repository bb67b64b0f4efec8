//! End-to-end tests of identity and memory commands through the real binary.

mod common;

use common::{forge, git, TestHome};

#[test]
fn init_creates_private_key_and_prints_phrase_once() {
    let h = TestHome::new();
    let out = h.run(&["init"]).ok();
    let pk = h.pubkey();
    assert_eq!(pk.len(), 64);
    assert!(out.contains(&pk));
    assert!(out.contains("24. "), "phrase is shown: {out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.home.join("identity.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The phrase is not stored anywhere in the home.
    let words: Vec<&str> = out
        .split_whitespace()
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase()) && w.len() > 2)
        .collect();
    let key_file = std::fs::read_to_string(h.home.join("identity.json")).unwrap();
    assert!(!key_file.contains(&words[words.len() - 1].to_string()) || words.is_empty());
    // Head of the repository is our branch: `git clone` checks it out.
    assert_eq!(
        git(&h.repo(), &["symbolic-ref", "HEAD"]),
        format!("refs/heads/users/{pk}")
    );
}

#[test]
fn init_refuses_existing_home_and_force_keeps_memories() {
    let h = TestHome::init();
    let pk = h.pubkey();
    let id = h.remember(&["kept memory"]);
    let err = h.run(&["init"]).fails_with(1);
    assert!(err.contains("already initialized"), "{err}");
    assert!(err.contains("--force"));
    assert_eq!(h.pubkey(), pk, "the key is untouched");

    h.run(&["init", "--force"]).ok();
    assert_ne!(h.pubkey(), pk, "a new key");
    // The old memory is still there and still verifies.
    assert_eq!(h.recall_ids(&[]), vec![id]);
    h.run(&["verify"]).ok();
}

#[test]
fn recover_restores_the_same_key_from_stdin_or_flag() {
    let h = TestHome::new();
    let v = h.run(&["init", "--json"]);
    let v = v.json();
    let phrase = v["recovery_phrase"].as_str().unwrap().to_string();
    let pk = v["pubkey"].as_str().unwrap().to_string();
    assert_eq!(phrase.split(' ').count(), 24);

    let h2 = TestHome::new();
    h2.run_stdin(&["init", "--recover"], &format!("  {phrase}\n"))
        .ok();
    assert_eq!(h2.pubkey(), pk);

    let h3 = TestHome::new();
    h3.run(&["init", "--recover", "--phrase", &phrase.to_uppercase()])
        .ok();
    assert_eq!(h3.pubkey(), pk);

    let h4 = TestHome::new();
    let mut words: Vec<&str> = phrase.split(' ').collect();
    words.swap(0, 1);
    let err = h4
        .run(&["init", "--recover", "--phrase", &words.join(" ")])
        .fails_with(2);
    assert!(
        err.contains("recovery phrase") || err.contains("phrase"),
        "{err}"
    );
    assert!(!h4.home.join("identity.json").exists(), "nothing written");
}

#[test]
fn whoami_json_has_pubkey_home_repo() {
    let h = TestHome::init();
    let v = h.run(&["whoami", "--json"]).json();
    assert_eq!(v["pubkey"].as_str().unwrap().len(), 64);
    assert_eq!(v["home"].as_str().unwrap(), h.home.to_str().unwrap());
    assert_eq!(v["repo"].as_str().unwrap(), h.repo().to_str().unwrap());
}

#[test]
fn home_comes_from_flag_then_env() {
    let h = TestHome::init();
    let pk = h.pubkey();
    let out = std::process::Command::new(common::BIN)
        .args(["whoami"])
        .env("MMOGIT_HOME", &h.home)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pk);
    // --home wins over MMOGIT_HOME.
    let other = TestHome::init();
    let out = std::process::Command::new(common::BIN)
        .args(["--home", other.home.to_str().unwrap(), "whoami"])
        .env("MMOGIT_HOME", &h.home)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), other.pubkey());
}

#[test]
fn remember_recall_show_round_trip_with_filters() {
    let h = TestHome::init();
    let pk = h.pubkey();
    let a = h.remember(&[
        "--type",
        "learning",
        "--tag",
        "rust",
        "--confidence",
        "0.9",
        "ownership rules",
    ]);
    let b = h.remember(&["--type", "task", "--tag", "todo", "write the README"]);
    let c = h
        .run(&["post", "--tag", "rust", "hello agents"])
        .ok()
        .trim()
        .to_string();
    let d = h
        .run_stdin(&["remember", "-"], "from stdin\nsecond line\n")
        .ok()
        .trim()
        .to_string();
    for id in [&a, &b, &c, &d] {
        assert_eq!(id.len(), 64);
    }

    let all = h.run(&["recall", "--json"]).json();
    let all = all.as_array().unwrap();
    let ids: Vec<&str> = all.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec![d.as_str(), c.as_str(), b.as_str(), a.as_str()],
        "newest first"
    );
    let first = &all[3];
    assert_eq!(first["author"], pk.as_str());
    assert_eq!(first["type"], "learning");
    assert_eq!(first["content"], "ownership rules");
    assert_eq!(first["tags"][0], "rust");
    assert_eq!(first["confidence"], 0.9);
    assert_eq!(first["verified"], true);
    assert_eq!(all[0]["content"], "from stdin\nsecond line");

    assert_eq!(h.recall_ids(&["--type", "learning"]), vec![a.clone()]);
    assert_eq!(h.recall_ids(&["--tag", "rust"]), vec![c.clone(), a.clone()]);
    assert_eq!(
        h.recall_ids(&["--tag", "rust", "--type", "message"]),
        vec![c.clone()]
    );
    assert_eq!(h.recall_ids(&["--min-confidence", "0.5"]), vec![a.clone()]);
    assert_eq!(h.recall_ids(&["--limit", "2"]), vec![d.clone(), c.clone()]);
    assert_eq!(h.recall_ids(&["--author", "me"]).len(), 4);
    assert_eq!(h.recall_ids(&["--author", &pk[..10]]).len(), 4);
    assert_eq!(h.recall_ids(&["--since", "1h"]).len(), 4);
    assert!(h
        .recall_ids(&["--since", "2999-01-01T00:00:00Z"])
        .is_empty());

    // show = messages only.
    let shown = h.run(&["show", "--json"]).json();
    assert_eq!(shown.as_array().unwrap().len(), 1);
    assert_eq!(shown[0]["id"], c.as_str());
    let human = h.run(&["show"]).ok();
    assert!(human.contains("hello agents"));
    let human = h.run(&["recall"]).ok();
    assert!(human.contains("ownership rules") && human.contains("#rust"));

    // Files are sharded by id and committed one per memory.
    let files = git(
        &h.repo(),
        &["ls-tree", "-r", "--name-only", &format!("users/{pk}")],
    );
    assert!(files.contains(&format!("memories/{}/{a}.json", &a[..2])));
    assert_eq!(
        git(&h.repo(), &["rev-list", "--count", &format!("users/{pk}")]),
        "4"
    );
    h.run(&["verify"]).ok();
}

#[test]
fn bad_input_changes_nothing() {
    let h = TestHome::init();
    h.remember(&["one"]);
    let before = git(&h.repo(), &["for-each-ref"]);
    let e = h.run(&["remember", ""]).fails_with(2);
    assert!(e.contains("empty"), "{e}");
    h.run(&["remember", "   "]).fails_with(2);
    let e = h
        .run(&["remember", "--confidence", "1.5", "x"])
        .fails_with(2);
    assert!(e.contains("outside 0..1"), "{e}");
    let e = h.run(&["remember", "--type", "feeling", "x"]).fails_with(2);
    assert!(e.contains("unknown memory type"), "{e}");
    h.run(&["remember", "--tag", "has space", "x"])
        .fails_with(2);
    h.run(&["recall", "--since", "yesterday-ish"]).fails_with(2);
    h.run(&["recall", "--author", "abc"]).fails_with(2);
    h.run(&["recall", "--author", "ffffffffff"]).fails_with(2);
    assert_eq!(git(&h.repo(), &["for-each-ref"]), before);

    let fresh = TestHome::new();
    let e = fresh.run(&["remember", "x"]).fails_with(3);
    assert!(e.contains("mmogit init"), "{e}");
    fresh.run(&["recall"]).fails_with(3);
    fresh.run(&["whoami"]).fails_with(3);
}

#[cfg(unix)]
#[test]
fn key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let h = TestHome::init();
    let key = h.home.join("identity.json");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = h.run(&["remember", "x"]).fails_with(5);
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    h.remember(&["x"]);
}

#[test]
fn private_memories_are_readable_only_by_their_author() {
    let a = TestHome::init();
    let id = a.remember(&["--private", "--tag", "diary", "the launch code is 1234"]);
    let mine = a.run(&["recall", "--json"]).json();
    assert_eq!(mine[0]["content"], "the launch code is 1234");
    assert_eq!(mine[0]["private"], true);
    assert_eq!(mine[0]["encrypted"], false);
    // The ciphertext is what is stored.
    let pk = a.pubkey();
    let raw = git(
        &a.repo(),
        &[
            "show",
            &format!("users/{pk}:memories/{}/{id}.json", &id[..2]),
        ],
    );
    assert!(!raw.contains("launch code"));

    // Another agent replicates the branch: it verifies but cannot read it.
    let b = TestHome::init();
    git(
        &b.repo(),
        &[
            "fetch",
            a.repo().to_str().unwrap(),
            "refs/heads/users/*:refs/heads/users/*",
        ],
    );
    let theirs = b.run(&["recall", "--json", "--author", &pk]);
    assert!(!theirs.stdout.contains("launch code"));
    let v = theirs.json();
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["content"], serde_json::Value::Null);
    assert_eq!(v[0]["encrypted"], true);
    let human = b.run(&["recall"]).ok();
    assert!(human.contains("<encrypted"), "{human}");
    b.run(&["verify"]).ok();
}

#[test]
fn tampering_is_caught_by_verify_and_skipped_by_recall() {
    let h = TestHome::init();
    let pk = h.pubkey();
    let branch = format!("users/{pk}");
    let good = h.remember(&["--type", "learning", "a true fact"]);
    h.run(&["verify"]).ok();

    // One changed byte in an existing memory file.
    let path = format!("memories/{}/{good}.json", &good[..2]);
    let raw = git(&h.repo(), &["show", &format!("{branch}:{path}")]);
    let tampered = raw.replacen("a true fact", "a true fakt", 1);
    forge(&h.repo(), &branch, &path, Some(tampered.as_bytes()));
    let out = h.run(&["verify"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stdout.contains(&path), "{}", out.stdout);
    let v = h.run(&["verify", "--json"]);
    assert_eq!(v.code, 4);
    assert_eq!(v.json()["ok"], false);
    // Recall still shows only the original, verified version.
    let r = h.run(&["recall", "--json"]).json();
    assert_eq!(r[0]["content"], "a true fact");

    // A corrupt new file: recall warns with its path and goes on.
    let h = TestHome::init();
    let pk = h.pubkey();
    let branch = format!("users/{pk}");
    let keep = h.remember(&["keep me"]);
    let bad_id = "ab".repeat(32);
    let bad_path = format!("memories/ab/{bad_id}.json");
    forge(&h.repo(), &branch, &bad_path, Some(b"{ this is not json"));
    let r = h.run(&["recall", "--json"]);
    assert_eq!(r.code, 0);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert_eq!(r.json()[0]["id"], keep.as_str());
    assert!(
        r.stderr.contains(&bad_path),
        "warning names the file: {}",
        r.stderr
    );
    let out = h.run(&["verify"]);
    assert_eq!(out.code, 4);
    assert!(out.stdout.contains(&bad_path));

    // A deleted memory.
    let h = TestHome::init();
    let pk = h.pubkey();
    let id = h.remember(&["soon gone"]);
    forge(
        &h.repo(),
        &format!("users/{pk}"),
        &format!("memories/{}/{id}.json", &id[..2]),
        None,
    );
    let out = h.run(&["verify"]);
    assert_eq!(out.code, 4);
    assert!(out.stdout.contains("deleted"), "{}", out.stdout);
}

#[test]
fn import_checks_every_line_first() {
    let h = TestHome::init();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("in.jsonl");
    let mut lines = String::new();
    for i in 0..120 {
        lines.push_str(&format!(
            "{{\"content\": \"imported {i}\", \"type\": \"learning\", \"tags\": [\"bulk\"], \"confidence\": 0.5}}\n"
        ));
    }
    std::fs::write(&f, &lines).unwrap();
    let v = h
        .run(&["import", f.to_str().unwrap(), "--batch", "50", "--json"])
        .json();
    assert_eq!(v["imported"], 120);
    assert_eq!(v["commits"], 3);
    assert_eq!(h.recall_ids(&["--tag", "bulk"]).len(), 120);
    let pk = h.pubkey();
    assert_eq!(
        git(&h.repo(), &["rev-list", "--count", &format!("users/{pk}")]),
        "3"
    );
    h.run(&["verify"]).ok();

    // A bad line: nothing is imported, the line is named.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"content\": \"fine\"}\n{\"content\": \"x\", \"type\": \"feeling\"}\n",
    )
    .unwrap();
    let e = h.run(&["import", bad.to_str().unwrap()]).fails_with(2);
    assert!(e.contains("bad.jsonl:2"), "{e}");
    assert_eq!(h.recall_ids(&[]).len(), 120);
    // stdin works too.
    h.run_stdin(&["import", "-"], "{\"content\": \"piped\"}\n")
        .ok();
    assert_eq!(h.recall_ids(&[]).len(), 121);
}

#[test]
fn concurrent_remember_processes_all_land() {
    let h = TestHome::init();
    let children: Vec<_> = (0..8)
        .map(|i| {
            h.cmd()
                .args(["remember", &format!("parallel {i}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(h.recall_ids(&[]).len(), 8);
    h.run(&["verify"]).ok();
}

#[test]
fn a_closed_stdout_is_a_quiet_success() {
    // `mmogit recall | head -1`: the reader goes away after one line.
    let h = TestHome::init();
    let mut lines = String::new();
    for i in 0..3000 {
        lines.push_str(&format!(
            "{{\"content\": \"memory number {i}, long enough to fill the pipe buffer quickly\"}}\n"
        ));
    }
    h.run_stdin(&["import", "-"], &lines).ok();
    for args in [
        &["recall", "--limit", "3000"][..],
        &["recall", "--limit", "3000", "--json"][..],
    ] {
        let mut child = h
            .cmd()
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        std::io::BufRead::read_line(&mut out, &mut first).unwrap();
        assert!(!first.is_empty());
        drop(out);
        let res = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
