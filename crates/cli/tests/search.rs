//! `recall --query` and `reindex` through the real binary.

mod common;

use common::{forge, git, TestHome};

/// Ids and the whole JSON array of `recall --query Q --json` with extra args.
fn query(h: &TestHome, q: &str, extra: &[&str]) -> (Vec<String>, serde_json::Value) {
    let mut args = vec!["recall", "--json", "--query", q];
    args.extend_from_slice(extra);
    let r = h.run(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    let ids = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    (ids, v)
}

fn index_path(h: &TestHome) -> std::path::PathBuf {
    h.repo().join("mmogit/search.sqlite")
}

#[test]
fn query_ranks_best_first_with_score_and_snippet() {
    let h = TestHome::init();
    let both = h.remember(&[
        "--tag",
        "rust",
        "The borrow checker rejects data races at compile time",
    ]);
    let one = h.remember(&["Lent a pen: people borrow things all day"]);
    let none = h.remember(&["Sync over git with trusted peers"]);
    let (ids, v) = query(&h, "borrow checker", &[]);
    assert_eq!(ids, vec![both.clone(), one.clone()]);
    assert!(!ids.contains(&none));
    let first = &v[0];
    assert!(first["score"].as_f64().unwrap() >= v[1]["score"].as_f64().unwrap());
    assert!(first["snippet"].as_str().unwrap().contains("**checker**"));
    // Every usual field is still there.
    assert_eq!(first["verified"], true);
    assert_eq!(first["tags"][0], "rust");
    assert_eq!(
        first["content"],
        "The borrow checker rejects data races at compile time"
    );

    // A phrase.
    let (ids, _) = query(&h, "\"data races\"", &[]);
    assert_eq!(ids, vec![both.clone()]);
    let (ids, _) = query(&h, "\"races data\"", &[]);
    assert!(ids.is_empty());

    // Human output shows the score and the snippet.
    let out = h.run(&["recall", "--query", "borrow checker"]).ok();
    assert!(out.contains("score "), "{out}");
    assert!(out.contains("**borrow**"), "{out}");

    // Plain recall is still newest first.
    assert_eq!(h.recall_ids(&[]), vec![none, one, both]);
}

#[test]
fn query_combines_with_filters_and_limit() {
    let h = TestHome::init();
    let task = h.remember(&[
        "--type",
        "task",
        "--tag",
        "ops",
        "--confidence",
        "0.9",
        "rotate the signing keys",
    ]);
    let learning = h.remember(&["--type", "learning", "signing keys are Ed25519 keys"]);
    assert_eq!(query(&h, "keys", &[]).0.len(), 2);
    assert_eq!(query(&h, "keys", &["--type", "task"]).0, vec![task.clone()]);
    assert_eq!(query(&h, "keys", &["--tag", "ops"]).0, vec![task.clone()]);
    assert_eq!(
        query(&h, "keys", &["--min-confidence", "0.5"]).0,
        vec![task.clone()]
    );
    assert_eq!(query(&h, "keys", &["--author", "me"]).0.len(), 2);
    assert!(query(&h, "keys", &["--since", "2999-01-01T00:00:00Z"])
        .0
        .is_empty());
    // Limit keeps the best: the memory that says "keys" twice.
    assert_eq!(query(&h, "keys", &["--limit", "1"]).0, vec![learning]);
}

#[test]
fn an_invalid_query_is_a_usage_error() {
    let h = TestHome::init();
    h.remember(&["something"]);
    for q in ["", "  ", "?!", "an \"open phrase"] {
        let err = h.run(&["recall", "--query", q]).fails_with(2);
        assert!(err.contains("invalid query"), "{q}: {err}");
    }
    // FTS5 syntax in user text is just words.
    for q in ["NEAR(a b)", "content:x", "a*", "-x", "AND OR NOT", "((x"] {
        h.run(&["recall", "--query", q]).ok();
    }
}

#[test]
fn the_index_follows_remember_and_replication() {
    let a = TestHome::init();
    let b = TestHome::init();
    a.remember(&["first note about gardening"]);
    assert_eq!(query(&a, "gardening", &[]).0.len(), 1);
    let tomato = a.remember(&["tomatoes need water"]);
    assert_eq!(query(&a, "tomatoes", &[]).0, vec![tomato]);

    let compost = b.remember(&["their notes on compost and gardening"]);
    git(
        &a.repo(),
        &[
            "fetch",
            "-q",
            b.repo().to_str().unwrap(),
            "refs/heads/users/*:refs/heads/users/*",
        ],
    );
    assert_eq!(query(&a, "compost", &[]).0, vec![compost.clone()]);
    assert_eq!(query(&a, "gardening", &[]).0.len(), 2);
    assert_eq!(
        query(&a, "gardening", &["--author", &b.pubkey()]).0,
        vec![compost]
    );
}

#[test]
fn reindex_and_a_lost_or_corrupt_index_give_the_same_answers() {
    let h = TestHome::init();
    let mut lines = String::new();
    for i in 0..300 {
        let topic = ["rust", "git", "peers"][i % 3];
        lines.push_str(&format!(
            "{{\"content\": \"note {i} about {topic}\", \"tags\": [\"{topic}\"]}}\n"
        ));
    }
    h.run_stdin(&["import", "-"], &lines).ok();
    let (first, _) = query(&h, "rust peers", &[]);
    assert_eq!(first.len(), 200);

    let out = h.run(&["reindex", "--json"]);
    let v = out.json();
    assert_eq!(v["memories"], 300);
    assert_eq!(v["branches"], 1);
    assert_eq!(query(&h, "rust peers", &[]).0, first);
    h.run(&["reindex"]).ok();

    std::fs::remove_file(index_path(&h)).unwrap();
    assert_eq!(query(&h, "rust peers", &[]).0, first);

    std::fs::write(index_path(&h), b"garbage, not SQLite").unwrap();
    let r = h.run(&["recall", "--json", "--query", "rust peers"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("corrupt"), "a log line: {}", r.stderr);
    let ids: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, first);
}

#[test]
fn a_forged_memory_in_the_index_is_never_returned() {
    let h = TestHome::init();
    let pk = h.pubkey();
    let good = h.remember(&["the meeting is on tuesday"]);
    // A forger with write access commits a changed copy under a new name:
    // valid JSON, indexed, but its signature does not verify.
    let v = h.run(&["recall", "--json"]).json();
    let mut rec = v[0].clone();
    let obj = rec.as_object_mut().unwrap();
    for k in ["encrypted", "verified", "branch"] {
        obj.remove(k);
    }
    obj.insert("version".into(), 1.into());
    obj.remove("confidence");
    obj.insert("content".into(), "the meeting moved to friday".into());
    let fake_id = "ab".repeat(32);
    obj.insert("id".into(), fake_id.clone().into());
    forge(
        &h.repo(),
        &format!("users/{pk}"),
        &format!("memories/ab/{fake_id}.json"),
        Some(serde_json::to_string_pretty(&rec).unwrap().as_bytes()),
    );
    let r = h.run(&["recall", "--json", "--query", "friday"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json(), serde_json::json!([]));
    assert!(r.stderr.contains(&fake_id), "{}", r.stderr);

    // Edit the index itself: put words into the real memory's row.
    let db = rusqlite::Connection::open(index_path(&h)).unwrap();
    let n = db
        .execute(
            "UPDATE fts SET content = content || ' zebra' WHERE content LIKE '%tuesday%'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    let r = h.run(&["recall", "--json", "--query", "zebra"]);
    assert_eq!(r.json(), serde_json::json!([]));
    assert!(r.stderr.contains(&good), "{}", r.stderr);
    h.run(&["reindex", "-q"]).ok();
    assert_eq!(query(&h, "tuesday", &[]).0, vec![good]);
}

#[test]
fn forged_rows_ranked_first_do_not_hide_the_real_match() {
    // More forged index rows than one page of candidates rank above the
    // only real match: they are skipped and the next page is read.
    let h = TestHome::init();
    let real = h.remember(&["kiwi season starts in may"]);
    assert_eq!(query(&h, "kiwi", &[]).0, vec![real.clone()]);
    let db = rusqlite::Connection::open(index_path(&h)).unwrap();
    let (branch, blob): (i64, String) = db
        .query_row("SELECT branch, blob FROM docs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    for k in 0..40 {
        let fake = format!("{k:064x}");
        db.execute(
            "INSERT INTO docs(branch, id, blob, t, kind, tags, conf)
             VALUES (?1, ?2, ?3, 0, 'observation', '', NULL)",
            rusqlite::params![branch, fake, blob],
        )
        .unwrap();
        db.execute(
            "INSERT INTO fts(rowid, content, tags) VALUES (last_insert_rowid(), 'kiwi kiwi kiwi', '')",
            [],
        )
        .unwrap();
    }
    drop(db);
    let (ids, _) = query(&h, "kiwi", &["--limit", "1"]);
    assert_eq!(ids, vec![real]);
}

#[test]
fn private_content_stays_in_its_owners_index() {
    let a = TestHome::init();
    let b = TestHome::init();
    let secret = a.remember(&["--private", "--tag", "diary", "my xylophonist secret"]);
    a.remember(&["a public note"]);
    assert_eq!(query(&a, "xylophonist", &[]).0, vec![secret.clone()]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(index_path(&a))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    git(
        &b.repo(),
        &[
            "fetch",
            "-q",
            a.repo().to_str().unwrap(),
            "refs/heads/users/*:refs/heads/users/*",
        ],
    );
    assert!(query(&b, "xylophonist", &[]).0.is_empty());
    let (ids, v) = query(&b, "diary", &[]);
    assert_eq!(ids, vec![secret]);
    assert_eq!(v[0]["encrypted"], true);
    assert_eq!(v[0]["content"], serde_json::Value::Null);
    assert_eq!(v[0]["snippet"], "");
    let bytes = std::fs::read(index_path(&b)).unwrap();
    assert!(!bytes.windows(11).any(|w| w == b"xylophonist"));
}
