//! The git side of the store: writes, recall, concurrent writers, verification.

use std::time::{Duration, SystemTime};

use mmogit_identity::Identity;
use mmogit_store::{branch_name, Filter, MemoryType, Store, VerifiedMemory};

mod common;

use common::{new, remember};

#[test]
fn append_and_recall_newest_first_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(&dir.path().join("repo.git")).unwrap();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let b = Identity::from_secret_bytes(&[2; 32]);
    let m1 = remember(&store, &a, new(MemoryType::Learning, "first", &["rust"]));
    let m2 = remember(&store, &b, new(MemoryType::Task, "second", &["todo"]));
    let mut n3 = new(MemoryType::Learning, "third", &["rust", "git"]);
    n3.confidence = Some(0.8);
    let m3 = remember(&store, &a, n3);

    let all = store.recall(&Filter::default()).unwrap();
    assert!(all.warnings.is_empty());
    let ids: Vec<&str> = all.memories.iter().map(|m| m.id()).collect();
    assert_eq!(ids, vec![m3.id(), m2.id(), m1.id()]);

    let f = Filter {
        kinds: vec![MemoryType::Learning],
        ..Default::default()
    };
    assert_eq!(store.recall(&f).unwrap().memories.len(), 2);
    let f = Filter {
        tags: vec!["rust".into(), "git".into()],
        ..Default::default()
    };
    assert_eq!(store.recall(&f).unwrap().memories[0].id(), m3.id());
    let f = Filter {
        authors: vec![b.public_key()],
        ..Default::default()
    };
    assert_eq!(store.recall(&f).unwrap().memories[0].id(), m2.id());
    let f = Filter {
        min_confidence: Some(0.5),
        ..Default::default()
    };
    assert_eq!(store.recall(&f).unwrap().memories.len(), 1);
    let f = Filter {
        limit: Some(2),
        ..Default::default()
    };
    let ids: Vec<String> = store
        .recall(&f)
        .unwrap()
        .memories
        .iter()
        .map(|m| m.id().to_string())
        .collect();
    assert_eq!(ids, vec![m3.id().to_string(), m2.id().to_string()]);
    let f = Filter {
        since: Some(SystemTime::now() + Duration::from_secs(3600)),
        ..Default::default()
    };
    assert!(store.recall(&f).unwrap().memories.is_empty());

    // Files are sharded by the first two hex digits of the id.
    let tip = store.tip(&a.public_key()).unwrap().unwrap();
    let tree = store.git().find_commit(tip).unwrap().tree().unwrap();
    assert!(tree.get_path(std::path::Path::new(&m1.path())).is_ok());
    let report = store.verify_all().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.branches, report.memories), (2, 3));
}

#[test]
fn recall_limit_merges_branches_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(&dir.path().join("repo.git")).unwrap();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let b = Identity::from_secret_bytes(&[2; 32]);
    let mut expected = Vec::new();
    for i in 0..30 {
        let who = if i % 3 == 0 { &b } else { &a };
        expected.push(remember(
            &store,
            who,
            new(MemoryType::Observation, &format!("m{i}"), &[]),
        ));
    }
    expected.reverse();
    let got = store
        .recall(&Filter {
            limit: Some(7),
            ..Default::default()
        })
        .unwrap();
    let got: Vec<&str> = got.memories.iter().map(|m| m.id()).collect();
    let want: Vec<&str> = expected.iter().take(7).map(|m| m.id()).collect();
    assert_eq!(got, want);
}

#[test]
fn concurrent_writers_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo.git");
    Store::open_or_init(&path).unwrap();
    let id = Identity::from_secret_bytes(&[3; 32]);
    std::thread::scope(|s| {
        for t in 0..4 {
            let path = &path;
            let id = &id;
            s.spawn(move || {
                let store = Store::open(path).unwrap();
                for i in 0..25 {
                    remember(
                        &store,
                        id,
                        new(MemoryType::Task, &format!("t{t} i{i}"), &[]),
                    );
                }
            });
        }
    });
    let store = Store::open(&path).unwrap();
    let report = store.verify_all().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.commits, report.memories), (100, 100));
    let all = store.recall(&Filter::default()).unwrap();
    assert_eq!(all.memories.len(), 100, "{:?}", all.warnings);
}

#[test]
fn import_writes_packs_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(&dir.path().join("repo.git")).unwrap();
    let id = Identity::from_secret_bytes(&[4; 32]);
    remember(&store, &id, new(MemoryType::Task, "before", &[]));
    let mems: Vec<VerifiedMemory> = (0..250)
        .map(|i| {
            VerifiedMemory::create(
                &id,
                new(MemoryType::Learning, &format!("bulk {i}"), &["bulk"]),
            )
            .unwrap()
        })
        .collect();
    let mut seen = Vec::new();
    store.import(&id, &mems, 100, |n| seen.push(n)).unwrap();
    assert_eq!(seen, vec![100, 200, 250]);
    let report = store.verify_all().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.commits, 4);
    assert_eq!(report.memories, 251);
    let got = store
        .recall(&Filter {
            tags: vec!["bulk".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(got.memories.len(), 250);
    // Objects went into packs, not one loose file per memory.
    let packs = std::fs::read_dir(dir.path().join("repo.git/objects/pack"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "pack")
        })
        .count();
    assert_eq!(packs, 4, "one blob pack per batch, and the remember's pack");
    // Importing the same memories again adds nothing.
    store.import(&id, &mems, 100, |_| {}).unwrap();
    assert_eq!(store.verify_all().unwrap().commits, 4);
}

/// Writes a commit on `owner`'s branch that puts `data` at `path`, bypassing
/// the store's checks (what a malicious peer could push).
fn forge_commit(store: &Store, owner: &Identity, path: &str, data: Option<&[u8]>) {
    let repo = store.git();
    let refname = branch_name(&owner.public_key());
    let parent = repo
        .find_commit(repo.refname_to_id(&refname).unwrap())
        .unwrap();
    let mut index = git2::Index::new().unwrap();
    index.read_tree(&parent.tree().unwrap()).unwrap();
    match data {
        Some(d) => {
            let blob = repo.blob(d).unwrap();
            let entry = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: 0o100644,
                uid: 0,
                gid: 0,
                file_size: d.len() as u32,
                id: blob,
                flags: path.len() as u16,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            };
            index.add(&entry).unwrap();
        }
        None => index.remove_path(std::path::Path::new(path)).unwrap(),
    }
    let tree = repo.find_tree(index.write_tree_to(repo).unwrap()).unwrap();
    let sig = git2::Signature::now("forger", "f@x").unwrap();
    repo.commit(Some(&refname), &sig, &sig, "forged", &tree, &[&parent])
        .unwrap();
}

#[test]
fn verify_and_recall_catch_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(&dir.path().join("repo.git")).unwrap();
    let a = Identity::from_secret_bytes(&[5; 32]);
    let m = remember(&store, &a, new(MemoryType::Learning, "true fact", &[]));

    // 1. A changed byte in an existing memory.
    let mut json = m.to_json();
    let pos = json.windows(4).position(|w| w == b"true").unwrap();
    json[pos] = b'T';
    forge_commit(&store, &a, &m.path(), Some(&json));
    let report = store.verify_all().unwrap();
    assert!(!report.is_ok());
    assert!(
        report.problems[0].reason.contains("changed"),
        "{:?}",
        report.problems
    );

    // Recall only uses added files, so the modified copy is never shown.
    let got = store.recall(&Filter::default()).unwrap();
    assert_eq!(got.memories.len(), 1);
    assert_eq!(got.memories[0].stored_content(), "true fact");

    // 2. A new memory with a bad signature and 3. a deleted one.
    let dir2 = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(&dir2.path().join("repo.git")).unwrap();
    let m = remember(&store, &a, new(MemoryType::Learning, "one", &[]));
    let other = VerifiedMemory::create(&a, new(MemoryType::Learning, "two", &[])).unwrap();
    let mut rec = other.record().clone();
    rec.content = "two (edited)".into();
    let forged = serde_json::to_vec(&rec).unwrap();
    forge_commit(&store, &a, &other.path(), Some(&forged));
    let got = store.recall(&Filter::default()).unwrap();
    assert_eq!(got.memories.len(), 1);
    assert_eq!(got.warnings.len(), 1);
    assert!(got.warnings[0].path.contains(other.id()));
    forge_commit(&store, &a, &m.path(), None);
    let report = store.verify_all().unwrap();
    let reasons: Vec<&str> = report.problems.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(report.problems.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("deleted")));
    assert!(reasons
        .iter()
        .any(|r| r.contains("id") || r.contains("signature")));

    // 4. A memory by someone else placed on a's branch, and a stray file.
    let dir3 = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(&dir3.path().join("repo.git")).unwrap();
    remember(&store, &a, new(MemoryType::Learning, "mine", &[]));
    let b = Identity::from_secret_bytes(&[6; 32]);
    let theirs = VerifiedMemory::create(&b, new(MemoryType::Learning, "theirs", &[])).unwrap();
    forge_commit(&store, &a, &theirs.path(), Some(&theirs.to_json()));
    forge_commit(&store, &a, "README", Some(b"hi"));
    let report = store.verify_all().unwrap();
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(report
        .problems
        .iter()
        .any(|p| p.reason.contains("does not own")));
    assert!(report
        .problems
        .iter()
        .any(|p| p.path.as_deref() == Some("README")));
    let got = store.recall(&Filter::default()).unwrap();
    assert_eq!(got.memories.len(), 1);
    assert_eq!(got.warnings.len(), 1);
}

#[test]
fn rewritten_history_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(&dir.path().join("repo.git")).unwrap();
    let a = Identity::from_secret_bytes(&[5; 32]);
    remember(&store, &a, new(MemoryType::Learning, "one", &[]));
    let old_tip = store.tip(&a.public_key()).unwrap().unwrap();
    remember(&store, &a, new(MemoryType::Learning, "two", &[]));
    let good_tip = store.tip(&a.public_key()).unwrap().unwrap();
    assert!(store
        .verify_history(&a.public_key(), good_tip, Some(old_tip))
        .unwrap()
        .is_ok());
    // A second root: does not descend from old_tip.
    let dir2 = tempfile::tempdir().unwrap();
    let other = Store::open_or_init(&dir2.path().join("repo.git")).unwrap();
    remember(&other, &a, new(MemoryType::Learning, "alternative", &[]));
    let alt = other.tip(&a.public_key()).unwrap().unwrap();
    // Copy the objects over.
    let odb = store.git().odb().unwrap();
    let src = other.git().odb().unwrap();
    src.foreach(|oid| {
        let o = src.read(*oid).unwrap();
        odb.write(o.kind(), o.data()).unwrap();
        true
    })
    .unwrap();
    let report = store
        .verify_history(&a.public_key(), alt, Some(old_tip))
        .unwrap();
    assert!(report
        .problems
        .iter()
        .any(|p| p.reason.contains("rewritten")));
}

fn recall_ids(store: &Store, f: &Filter) -> Vec<String> {
    store
        .recall(f)
        .unwrap()
        .memories
        .iter()
        .map(|m| m.id().to_string())
        .collect()
}

#[test]
fn recall_index_is_incremental_and_rebuilt_when_lost_or_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo.git");
    let store = Store::open_or_init(&repo).unwrap();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let mems: Vec<VerifiedMemory> = (0..300)
        .map(|i| {
            VerifiedMemory::create(
                &a,
                new(MemoryType::Learning, &format!("bulk {i}"), &["bulk"]),
            )
            .unwrap()
        })
        .collect();
    store.import(&a, &mems, 1000, |_| {}).unwrap();
    // The JSON recall index of earlier versions goes when the index is built.
    let legacy = repo.join("mmogit/recall-index.json");
    std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
    std::fs::write(&legacy, b"{}").unwrap();
    let limited = Filter {
        limit: Some(5),
        ..Default::default()
    };
    let first = recall_ids(&store, &limited);
    let want: Vec<String> = mems
        .iter()
        .rev()
        .take(5)
        .map(|m| m.id().to_string())
        .collect();
    assert_eq!(first, want);
    let index = store.search_index_path();
    assert!(index.exists());
    assert!(!legacy.exists());

    // A new memory is picked up by reading only the new file.
    let newest = remember(&store, &a, new(MemoryType::Task, "after import", &[]));
    assert_eq!(recall_ids(&store, &limited)[0], newest.id());
    let all = recall_ids(&store, &Filter::default());
    assert_eq!(all.len(), 301);
    let u = store.update_search_index(None).unwrap();
    assert_eq!(
        (u.added, u.rebuilt),
        (0, false),
        "recall left it up to date"
    );

    // Deleted or corrupt: rebuilt, same answers.
    for suffix in ["", "-wal", "-shm"] {
        let mut p = index.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    assert_eq!(recall_ids(&store, &Filter::default()), all);
    drop(store);
    for suffix in ["-wal", "-shm"] {
        let mut p = index.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    std::fs::write(&index, vec![b'x'; 8192]).unwrap();
    let store = Store::open(&repo).unwrap();
    assert_eq!(recall_ids(&store, &Filter::default()), all);
    assert_eq!(recall_ids(&store, &limited), all[..5].to_vec());
}

#[test]
fn recall_works_in_a_repository_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo.git");
    let store = Store::open_or_init(&repo).unwrap();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let m = remember(&store, &a, new(MemoryType::Learning, "read only", &[]));
    // A directory where the index file would be: it cannot be created
    // (as in a repository this process may not write).
    std::fs::create_dir_all(store.search_index_path()).unwrap();
    assert_eq!(recall_ids(&store, &Filter::default()), vec![m.id()]);
}

#[test]
fn a_lying_index_never_yields_an_unverified_memory() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo.git");
    let store = Store::open_or_init(&repo).unwrap();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let good = remember(&store, &a, new(MemoryType::Learning, "good", &["x"]));
    let other = remember(&store, &a, new(MemoryType::Learning, "other", &["y"]));
    store.recall(&Filter::default()).unwrap();
    // Point `good`'s entry at a forged blob with the same id but changed content.
    let mut rec = good.record().clone();
    rec.content = "evil".into();
    let forged = store
        .git()
        .blob(&serde_json::to_vec(&rec).unwrap())
        .unwrap();
    let db = rusqlite::Connection::open(store.search_index_path()).unwrap();
    let n = db
        .execute(
            "UPDATE docs SET blob = ?1 WHERE id = ?2",
            [forged.to_string(), good.id().to_string()],
        )
        .unwrap();
    assert_eq!(n, 1);
    let got = store.recall(&Filter::default()).unwrap();
    let ids: Vec<&str> = got.memories.iter().map(|m| m.id()).collect();
    assert_eq!(ids, vec![other.id()], "the forged content is not returned");
    assert!(
        got.warnings
            .iter()
            .any(|w| w.reason.contains("does not match its content")),
        "{:?}",
        got.warnings
    );
    // A lying tag in the index cannot smuggle a memory past the filter.
    db.execute(
        "UPDATE docs SET tags = ?1 WHERE id = ?2",
        ["\u{1f}x\u{1f}".to_string(), other.id().to_string()],
    )
    .unwrap();
    let got = store
        .recall(&Filter {
            tags: vec!["x".into()],
            ..Default::default()
        })
        .unwrap();
    assert!(got
        .memories
        .iter()
        .all(|m| m.tags().contains(&"x".to_string())));
    assert!(!got.memories.iter().any(|m| m.id() == other.id()));
}

#[test]
fn files_that_cannot_be_memories_are_recall_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo.git");
    let store = Store::open_or_init(&repo).unwrap();
    let a = Identity::from_secret_bytes(&[1; 32]);
    let b = Identity::from_secret_bytes(&[2; 32]);
    let ok = remember(&store, &a, new(MemoryType::Learning, "fine", &[]));
    // b's memory committed to a's branch, and a file that is not JSON.
    let theirs = VerifiedMemory::create(&b, new(MemoryType::Learning, "theirs", &[])).unwrap();
    let git = store.git();
    let tip = git
        .find_commit(store.tip(&a.public_key()).unwrap().unwrap())
        .unwrap();
    let mut tree = tip.tree().unwrap();
    for (id, data) in [
        (theirs.id().to_string(), theirs.to_json()),
        (format!("{:0<64}", &ok.id()[..2]), b"garbage".to_vec()),
    ] {
        let blob = git.blob(&data).unwrap();
        let path = std::path::Path::new("memories")
            .join(&id[..2])
            .join(format!("{id}.json"));
        let mut b = git2::build::TreeUpdateBuilder::new();
        b.upsert(&path, blob, git2::FileMode::Blob);
        let oid = b.create_updated(git, &tree).unwrap();
        tree = git.find_tree(oid).unwrap();
    }
    let sig = git2::Signature::now("t", "t@t").unwrap();
    git.commit(
        Some(&branch_name(&a.public_key())),
        &sig,
        &sig,
        "bad files",
        &tree,
        &[&tip],
    )
    .unwrap();
    let got = store.recall(&Filter::default()).unwrap();
    let ids: Vec<&str> = got.memories.iter().map(|m| m.id()).collect();
    assert_eq!(ids, vec![ok.id()]);
    let reasons: Vec<&str> = got.warnings.iter().map(|w| w.reason.as_str()).collect();
    assert_eq!(got.warnings.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("on a branch it does not own")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not a memory record")),
        "{reasons:?}"
    );
    assert!(got.warnings.iter().all(|w| w
        .path
        .starts_with(&format!("users/{}:memories/", a.public_key().to_hex()))));
    // Reported on every recall, not only the one that indexed them.
    assert_eq!(
        store.recall(&Filter::default()).unwrap().warnings,
        got.warnings
    );
    // Only for the authors asked about.
    let only_b = Filter {
        authors: vec![b.public_key()],
        ..Default::default()
    };
    assert!(store.recall(&only_b).unwrap().warnings.is_empty());
}

#[test]
fn recall_index_follows_a_replaced_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(&dir.path().join("repo.git")).unwrap();
    let a = Identity::from_secret_bytes(&[1; 32]);
    remember(&store, &a, new(MemoryType::Learning, "one", &[]));
    let base = store.tip(&a.public_key()).unwrap().unwrap();
    let two = remember(&store, &a, new(MemoryType::Learning, "two", &[]));
    assert_eq!(recall_ids(&store, &Filter::default()).len(), 2);
    // Move the branch back (as a repair by hand would): the index follows.
    store
        .git()
        .reference(&branch_name(&a.public_key()), base, true, "reset")
        .unwrap();
    let ids = recall_ids(&store, &Filter::default());
    assert_eq!(ids.len(), 1);
    assert!(!ids.contains(&two.id().to_string()));
}

#[test]
fn recall_resumes_after_a_key_and_refuses_too_broad_queries() {
    // Two authors, 1,300 memories, many sharing a creation time (ties are
    // broken by id): pages resumed from the last key add up to one recall.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(&dir.path().join("m.git")).unwrap();
    let base = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
    for who in [1u8, 2] {
        let id = Identity::from_secret_bytes(&[who; 32]);
        let ms: Vec<VerifiedMemory> = (0..650u64)
            .map(|i| {
                let t = base + std::time::Duration::from_secs(i / 7);
                let n = common::new(MemoryType::Learning, &format!("m {who} {i}"), &[]);
                VerifiedMemory::create_at(&id, n, t).unwrap()
            })
            .collect();
        store.import(&id, &ms, 10_000, |_| {}).unwrap();
    }
    let all = store.recall(&Filter::default()).unwrap();
    assert_eq!(all.memories.len(), 1300);
    assert_eq!(all.keys.len(), 1300);
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .recall(&Filter {
                limit: Some(500),
                after: after.clone(),
                ..Filter::default()
            })
            .unwrap();
        if page.memories.is_empty() {
            break;
        }
        after = page.keys.last().cloned();
        let key: mmogit_store::RecallKey = after.as_ref().unwrap().to_string().parse().unwrap();
        assert_eq!(Some(key), after);
        paged.extend(page.memories.iter().map(|m| m.id().to_string()));
    }
    let ids: Vec<String> = all.memories.iter().map(|m| m.id().to_string()).collect();
    assert_eq!(paged, ids);

    let err = store
        .recall(&Filter {
            max_matches: Some(1000),
            ..Filter::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("1300 memories match"), "{err}");
    for bad in ["", "1", "x.y", &format!("1.{}", "A".repeat(64))] {
        assert!(bad.parse::<mmogit_store::RecallKey>().is_err(), "{bad}");
    }
}

#[test]
fn includes_answers_ahead_behind_and_beside() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_init(&dir.path().join("m.git")).unwrap();
    let other = Store::open_or_init(&dir.path().join("o.git")).unwrap();
    let me = Identity::from_secret_bytes(&[4; 32]);
    let tips: Vec<git2::Oid> = (0..3)
        .map(|i| {
            remember(
                &store,
                &me,
                new(MemoryType::Learning, &format!("m {i}"), &[]),
            );
            store.tip(&me.public_key()).unwrap().unwrap()
        })
        .collect();
    let (a, c) = (tips[0], tips[2]);
    assert!(store.includes(c, a), "a later tip includes an earlier one");
    assert!(store.includes(a, a));
    assert!(
        !store.includes(a, c),
        "an earlier tip does not include a later one"
    );
    // A history of its own (another repository), unknown here.
    remember(&other, &me, new(MemoryType::Learning, "elsewhere", &[]));
    let beside = other.tip(&me.public_key()).unwrap().unwrap();
    assert!(!store.includes(c, beside));
    assert!(!store.includes(beside, c));
}
