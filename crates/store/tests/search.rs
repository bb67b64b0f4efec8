//! Full-text search: ranking, phrases, filters, the index following the
//! branches, rebuilds, a lying index, private content.

use std::time::{Duration, SystemTime};

use mmogit_identity::Identity;
use mmogit_store::{
    branch_name, Filter, MemoryType, SearchQuery, SearchResult, Store, StoreError, VerifiedMemory,
};

mod common;

use common::{git_in as git, new, remember};

fn text(store: &Store, id: &Identity, content: &str) -> VerifiedMemory {
    remember(store, id, new(MemoryType::Learning, content, &[]))
}

fn search(store: &Store, reader: Option<&Identity>, q: &str, filter: Filter) -> SearchResult {
    store
        .search(
            &SearchQuery {
                text: q.into(),
                filter,
            },
            reader,
        )
        .unwrap()
}

fn ids(r: &SearchResult) -> Vec<String> {
    r.hits.iter().map(|h| h.memory.id().to_string()).collect()
}

fn find(store: &Store, reader: Option<&Identity>, q: &str) -> Vec<String> {
    ids(&search(store, reader, q, Filter::default()))
}

fn tmp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(&dir.path().join("repo.git")).unwrap();
    (dir, store)
}

#[test]
fn ranking_puts_the_memories_with_the_words_first() {
    let (_d, store) = tmp_store();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let both = text(
        &store,
        &a,
        "The borrow checker rejects data races at compile time",
    );
    let one = text(&store, &a, "I had to borrow a pen from a colleague today");
    let none = text(&store, &a, "Sync over git with trusted peers");
    let again = text(
        &store,
        &a,
        "borrow checker, borrow checker: the borrow checker again",
    );
    let r = search(&store, Some(&a), "borrow checker", Filter::default());
    let got = ids(&r);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(!got.contains(&none.id().to_string()));
    // Both words beat one word; the one-word memory is last.
    assert_eq!(got[2], one.id());
    assert!(got[..2].contains(&both.id().to_string()));
    assert!(got[..2].contains(&again.id().to_string()));
    // Scores: higher is better, best first.
    assert!(r.hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(r.hits[0].score > 0.0);
    let snippet = &r
        .hits
        .iter()
        .find(|h| h.memory.id() == both.id())
        .unwrap()
        .snippet;
    assert!(snippet.contains("**borrow**"), "{snippet}");
    assert!(snippet.contains("**checker**"), "{snippet}");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    // Stemming: the plural finds the singular.
    assert!(find(&store, Some(&a), "checkers").contains(&both.id().to_string()));
    // Plain recall keeps its newest-first order.
    let plain = common::recalled_ids(&store);
    assert_eq!(plain[0], again.id());
    assert_eq!(plain[3], both.id());
}

#[test]
fn phrases_match_words_in_order_and_syntax_is_never_interpreted() {
    let (_d, store) = tmp_store();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let phrase = text(&store, &a, "Compile errors instead of data races");
    let apart = text(&store, &a, "Races in shared data are hard to debug");
    assert_eq!(find(&store, Some(&a), "\"data races\""), vec![phrase.id()]);
    let loose = find(&store, Some(&a), "data races");
    assert_eq!(loose.len(), 2);
    assert!(loose.contains(&apart.id().to_string()));
    // FTS5 operators and column filters in user text are plain words.
    for q in [
        "NEAR(data races)",
        "content:races",
        "races*",
        "data AND NOT",
        "(races",
        "^data",
    ] {
        let r = store.search(
            &SearchQuery {
                text: q.into(),
                filter: Filter::default(),
            },
            Some(&a),
        );
        assert!(r.is_ok(), "{q}: {r:?}");
    }
    for q in ["", "   ", "?!", "\"unterminated phrase"] {
        let r = store.search(
            &SearchQuery {
                text: q.into(),
                filter: Filter::default(),
            },
            Some(&a),
        );
        assert!(matches!(r, Err(StoreError::InvalidQuery(_))), "{q}: {r:?}");
    }
}

#[test]
fn filters_combine_with_the_query() {
    let (_d, store) = tmp_store();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let b = Identity::from_secret_bytes(&[2; 32]);
    let mut n = new(
        MemoryType::Task,
        "rotate the signing keys",
        &["ops", "keys"],
    );
    n.confidence = Some(0.9);
    let task = remember(&store, &a, n);
    let learning = remember(
        &store,
        &a,
        new(MemoryType::Learning, "signing keys are Ed25519", &["keys"]),
    );
    let by_b = remember(
        &store,
        &b,
        new(MemoryType::Task, "keys under the doormat", &["ops"]),
    );
    let f = |f: Filter| {
        let mut v = ids(&search(&store, Some(&a), "keys", f));
        v.sort();
        v
    };
    let sorted = |mut v: Vec<&str>| {
        v.sort();
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(f(Filter::default()).len(), 3);
    assert_eq!(
        f(Filter {
            kinds: vec![MemoryType::Task],
            ..Default::default()
        }),
        sorted(vec![task.id(), by_b.id()])
    );
    assert_eq!(
        f(Filter {
            tags: vec!["ops".into(), "keys".into()],
            ..Default::default()
        }),
        sorted(vec![task.id()])
    );
    assert_eq!(
        f(Filter {
            authors: vec![b.public_key()],
            ..Default::default()
        }),
        sorted(vec![by_b.id()])
    );
    assert_eq!(
        f(Filter {
            min_confidence: Some(0.5),
            ..Default::default()
        }),
        sorted(vec![task.id()])
    );
    assert!(f(Filter {
        since: Some(SystemTime::now() + Duration::from_secs(3600)),
        ..Default::default()
    })
    .is_empty());
    let top = search(
        &store,
        Some(&a),
        "signing keys",
        Filter {
            limit: Some(1),
            ..Default::default()
        },
    );
    assert_eq!(top.hits.len(), 1);
    assert_ne!(top.hits[0].memory.id(), by_b.id());
    assert!([task.id(), learning.id()].contains(&top.hits[0].memory.id()));
}

#[test]
fn the_index_follows_new_memories_replication_and_rewritten_history() {
    let (_d, store) = tmp_store();
    let a = Identity::from_secret_bytes(&[1; 32]);
    text(&store, &a, "first memory about gardening");
    assert_eq!(find(&store, Some(&a), "gardening").len(), 1);
    let index = store.search_index_path();
    assert!(index.exists());

    // A new memory: only the change is indexed.
    let base = store.tip(&a.public_key()).unwrap().unwrap();
    let tomato = text(&store, &a, "tomatoes need more gardening water");
    let r = search(&store, Some(&a), "tomatoes", Filter::default());
    assert_eq!(ids(&r), vec![tomato.id()]);
    assert_eq!(r.update.added, 1);
    assert!(!r.update.rebuilt);
    let u = search(&store, Some(&a), "tomatoes", Filter::default()).update;
    assert_eq!(
        (u.rebuilt, u.branches, u.added, u.removed),
        (false, 0, 0, 0)
    );

    // Another home's branch fetched with plain git is searchable.
    let (_d2, other) = tmp_store();
    let b = Identity::from_secret_bytes(&[2; 32]);
    let theirs = text(&other, &b, "their notes on gardening and compost");
    git(
        store.path(),
        &[
            "fetch",
            other.path().to_str().unwrap(),
            "refs/heads/users/*:refs/heads/users/*",
        ],
    );
    let got = find(&store, Some(&a), "compost");
    assert_eq!(got, vec![theirs.id()]);
    assert_eq!(find(&store, Some(&a), "gardening").len(), 3);

    // The branch moved back by hand: the memory leaves the index.
    store
        .git()
        .reference(&branch_name(&a.public_key()), base, true, "reset")
        .unwrap();
    assert!(find(&store, Some(&a), "tomatoes").is_empty());
    assert_eq!(find(&store, Some(&a), "gardening").len(), 2);
    // And a deleted branch too.
    store
        .git()
        .find_reference(&branch_name(&b.public_key()))
        .unwrap()
        .delete()
        .unwrap();
    assert!(find(&store, Some(&a), "compost").is_empty());
}

#[test]
fn a_deleted_or_corrupt_index_is_rebuilt_with_the_same_answers() {
    let (_d, store) = tmp_store();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let mems: Vec<VerifiedMemory> = (0..500)
        .map(|i| {
            VerifiedMemory::create(
                &a,
                new(
                    MemoryType::Learning,
                    &format!("bulk note {i} about {}", ["rust", "git", "peers"][i % 3]),
                    &[],
                ),
            )
            .unwrap()
        })
        .collect();
    store.import(&a, &mems, 200, |_| {}).unwrap();
    let q = |s: &Store| {
        let r = search(s, Some(&a), "rust peers", Filter::default());
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        (ids(&r), r.update)
    };
    let (first, u) = q(&store);
    assert_eq!(first.len(), 333);
    assert_eq!(u.added, 500);
    let index = store.search_index_path();

    std::fs::remove_file(&index).unwrap();
    let (again, u) = q(&store);
    assert_eq!(again, first);
    assert!(u.rebuilt && u.added == 500, "{u:?}");

    std::fs::write(&index, b"this is not a database, just garbage bytes").unwrap();
    let (again, u) = q(&store);
    assert_eq!(again, first);
    assert!(u.rebuilt, "{u:?}");

    // Damage in the middle of the file.
    let mut bytes = std::fs::read(&index).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 3..len / 3 + 8192] {
        *b = 0xa5;
    }
    std::fs::write(&index, &bytes).unwrap();
    let r = store.search(
        &SearchQuery {
            text: "rust peers".into(),
            filter: Filter::default(),
        },
        Some(&a),
    );
    // Either detected as corrupt and rebuilt, or what SQLite still returns is
    // checked against git; nothing unverified comes out either way.
    let r = r.unwrap();
    assert!(ids(&r).iter().all(|id| first.contains(id)));

    let u = store.reindex_search(Some(&a)).unwrap();
    assert!(u.rebuilt && u.added == 500, "{u:?}");
    assert_eq!(q(&store).0, first);
}

#[test]
fn a_forged_index_row_never_leaks_content() {
    let (_d, store) = tmp_store();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let good = text(&store, &a, "the meeting is on tuesday");
    let other = text(&store, &a, "lunch was good");
    assert_eq!(find(&store, Some(&a), "tuesday"), vec![good.id()]);
    let db = rusqlite::Connection::open(store.search_index_path()).unwrap();

    // 1. Words put into a real memory's indexed text.
    db.execute(
        "UPDATE fts SET content = 'lunch was good zebra' WHERE content = 'lunch was good'",
        [],
    )
    .unwrap();
    let r = search(&store, Some(&a), "zebra", Filter::default());
    assert!(r.hits.is_empty());
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].path.contains(other.id()));

    // 2. A row pointing at a forged blob (changed content, same id).
    let mut rec = good.record().clone();
    rec.content = "the meeting is on friday, secret forged words".into();
    let forged = store
        .git()
        .blob(&serde_json::to_vec(&rec).unwrap())
        .unwrap();
    db.execute(
        "UPDATE docs SET blob = ?1 WHERE id = ?2",
        [forged.to_string(), good.id().to_string()],
    )
    .unwrap();
    db.execute(
        "UPDATE fts SET content = ?1 WHERE content = 'the meeting is on tuesday'",
        [&rec.content],
    )
    .unwrap();
    let r = search(&store, Some(&a), "forged secret friday", Filter::default());
    assert!(r.hits.is_empty(), "{:?}", ids(&r));
    assert!(!r.warnings.is_empty());

    // 3. A whole invented row.
    db.execute(
        "INSERT INTO docs(branch, id, blob, t, kind, tags, conf)
         SELECT branch, ?1, ?2, t, kind, tags, conf FROM docs LIMIT 1",
        [&"ab".repeat(32), &forged.to_string()],
    )
    .unwrap();
    let row = db.last_insert_rowid();
    db.execute(
        "INSERT INTO fts(rowid, content, tags) VALUES (?1, 'invented words', '')",
        [row],
    )
    .unwrap();
    drop(db);
    let r = search(&store, Some(&a), "invented", Filter::default());
    assert!(r.hits.is_empty());
    assert_eq!(r.warnings.len(), 1);

    // A rebuild repairs it all.
    store.reindex_search(Some(&a)).unwrap();
    assert_eq!(find(&store, Some(&a), "tuesday"), vec![good.id()]);
    assert_eq!(find(&store, Some(&a), "lunch"), vec![other.id()]);
    assert!(find(&store, Some(&a), "zebra invented forged").is_empty());
}

#[test]
fn private_content_is_indexed_only_for_its_owner() {
    let (_d, store) = tmp_store();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let mut n = new(MemoryType::Reflection, "my xylophonist secret", &["diary"]);
    n.private = true;
    let secret = remember(&store, &a, n);
    text(&store, &a, "a public note");
    let r = search(&store, Some(&a), "xylophonist", Filter::default());
    assert_eq!(ids(&r), vec![secret.id()]);
    assert!(r.hits[0].snippet.contains("**xylophonist**"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.search_index_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A replica in another home with another identity.
    let (_d2, replica) = tmp_store();
    let b = Identity::from_secret_bytes(&[2; 32]);
    git(
        replica.path(),
        &[
            "fetch",
            store.path().to_str().unwrap(),
            "refs/heads/users/*:refs/heads/users/*",
        ],
    );
    assert!(find(&replica, Some(&b), "xylophonist").is_empty());
    // Its tags are public (like in recall), its content is not.
    let by_tag = search(&replica, Some(&b), "diary", Filter::default());
    assert_eq!(ids(&by_tag), vec![secret.id()]);
    assert_eq!(by_tag.hits[0].snippet, "");
    let bytes = std::fs::read(replica.search_index_path()).unwrap();
    let needle = b"xylophonist";
    assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    // Without any identity either.
    assert!(find(&replica, None, "xylophonist").is_empty());

    // The same home read without its identity drops the decrypted text.
    assert!(find(&store, None, "xylophonist").is_empty());
    for suffix in ["", "-wal"] {
        let mut p = store.search_index_path().into_os_string();
        p.push(suffix);
        let bytes = std::fs::read(p).unwrap_or_default();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }
    // Read by its owner again, it is searchable again.
    assert_eq!(find(&store, Some(&a), "xylophonist"), vec![secret.id()]);
}

#[test]
fn recall_and_search_share_one_index_whoever_builds_it() {
    let (_d, store) = tmp_store();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let private = |content: &str| {
        let mut n = new(MemoryType::Reflection, content, &["diary"]);
        n.private = true;
        remember(&store, &a, n)
    };
    let first = private("my xylophonist secret");
    let public = text(&store, &a, "a public xylophonist note");
    // A recall (no key) builds the index for nobody...
    let all = store.recall(&Filter::default()).unwrap();
    assert_eq!(all.memories.len(), 2);
    let u = store.update_search_index(None).unwrap();
    assert_eq!((u.rebuilt, u.added), (false, 0), "{u:?}");
    // ...which the owner's search takes over without rebuilding it.
    let r = search(&store, Some(&a), "xylophonist", Filter::default());
    assert!(!r.update.rebuilt, "{:?}", r.update);
    let mut got = ids(&r);
    got.sort();
    let mut want = vec![first.id().to_string(), public.id().to_string()];
    want.sort();
    assert_eq!(got, want);
    // A private memory that a recall indexes (without the key) is recalled
    // at once and found by the next search of its owner.
    let second = private("another zither secret");
    let r = store
        .recall(&Filter {
            limit: Some(1),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(r.memories[0].id(), second.id());
    assert_eq!(find(&store, Some(&a), "zither"), vec![second.id()]);
    // Recall after the owner's search does not touch it.
    assert_eq!(store.recall(&Filter::default()).unwrap().memories.len(), 3);
    let u = store.update_search_index(Some(&a)).unwrap();
    assert_eq!((u.rebuilt, u.added, u.branches), (false, 0, 0), "{u:?}");
}

#[test]
fn the_index_answers_for_the_tips_a_recall_saw() {
    let (d, store) = tmp_store();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let m1 = text(&store, &a, "one");
    assert_eq!(store.recall(&Filter::default()).unwrap().memories.len(), 1);
    // Another process moves the branch, then another one (which saw the
    // old tip) writes the index back to that old tip.
    let other = Store::open(&d.path().join("repo.git")).unwrap();
    let old_tip = store.tip(&a.public_key()).unwrap().unwrap();
    let m2 = text(&other, &a, "two");
    assert_eq!(other.recall(&Filter::default()).unwrap().memories.len(), 2);
    let db = rusqlite::Connection::open(store.search_index_path()).unwrap();
    db.execute("UPDATE branches SET tip = ?1", [old_tip.to_string()])
        .unwrap();
    db.execute(
        "DELETE FROM fts WHERE rowid IN (SELECT rowid FROM docs WHERE id = ?1)",
        [m2.id()],
    )
    .unwrap();
    db.execute("DELETE FROM docs WHERE id = ?1", [m2.id()])
        .unwrap();
    drop(db);
    let ids: Vec<String> = store
        .recall(&Filter::default())
        .unwrap()
        .memories
        .iter()
        .map(|m| m.id().to_string())
        .collect();
    assert_eq!(ids, vec![m2.id().to_string(), m1.id().to_string()]);
}

#[test]
fn concurrent_first_recalls_on_a_repository_without_an_index_all_answer() {
    // Eight readers (a peer's queries, a recall beside a search...) open a
    // repository whose index does not exist yet, at the same moment. The
    // first to switch the new file to WAL used to make another fail at once
    // with "database is locked", whatever the busy timeout: the peer got an
    // error instead of memories (caught by a node test under load). Many
    // rounds, since the window is narrow.
    let id = Identity::from_secret_bytes(&[4; 32]);
    for round in 0..60 {
        let (dir, store) = tmp_store();
        remember(&store, &id, new(MemoryType::Observation, "one", &[]));
        let path = store.path().to_path_buf();
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || {
                    let s = Store::open(&p).unwrap();
                    s.recall(&Filter {
                        limit: Some(20),
                        ..Filter::default()
                    })
                    .map(|r| r.memories.len())
                })
            })
            .collect();
        for r in readers {
            let got = r.join().unwrap();
            assert!(
                matches!(got, Ok(1)),
                "round {round}: a reader got {:?}",
                got.map_err(|e| e.to_string())
            );
        }
        drop(dir);
    }
}
