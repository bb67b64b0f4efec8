//! Repository maintenance (`Store::gc`): many packs and loose objects become
//! one pack, nothing any ref reaches is lost, a live ingest keeps everything,
//! and writers running beside it lose nothing.

use std::path::Path;
use std::time::Duration;

use git2::Oid;
use mmogit_identity::Identity;
use mmogit_store::{Filter, IngestStatus, MemoryType, NewMemory, Store, VerifiedMemory};

mod common;

use common::{id, repo};

const T: Duration = Duration::from_secs(120);

fn memory(who: &Identity, text: &str) -> VerifiedMemory {
    VerifiedMemory::create(
        who,
        NewMemory {
            kind: MemoryType::Learning,
            content: text.into(),
            tags: vec!["gc".into()],
            confidence: None,
            private: false,
        },
    )
    .unwrap()
}

fn remember(store: &Store, who: &Identity, text: &str) -> String {
    let m = memory(who, text);
    store
        .append(who, std::slice::from_ref(&m), "remember")
        .unwrap();
    m.id().to_string()
}

fn ingest(into: &Store, source: &Path) -> mmogit_store::IngestReport {
    let incoming = into
        .fetch_into_quarantine(source.to_str().unwrap(), "test", T)
        .unwrap();
    into.accept_incoming(incoming).unwrap()
}

fn recall_count(store: &Store) -> usize {
    store.recall(&Filter::default()).unwrap().memories.len()
}

/// Whether the object exists, seen by a fresh handle (no cache).
fn exists(path: &Path, oid: Oid) -> bool {
    Store::open(path).unwrap().git().odb().unwrap().exists(oid)
}

/// Every object reachable from `tip` can be read.
fn readable(store: &Store, tip: Oid) -> bool {
    let repo = store.git();
    let mut walk = repo.revwalk().unwrap();
    walk.push(tip).unwrap();
    for c in walk {
        let c = repo.find_commit(c.unwrap()).unwrap();
        let mut ok = true;
        c.tree()
            .unwrap()
            .walk(git2::TreeWalkMode::PreOrder, |_, e| {
                if repo.find_object(e.id(), None).is_err() {
                    ok = false;
                }
                git2::TreeWalkResult::Ok
            })
            .unwrap();
        if !ok {
            return false;
        }
    }
    true
}

#[test]
fn gc_after_remembers_imports_and_ingests_leaves_one_pack_and_loses_nothing() {
    let c = repo();
    let (ida, idb) = (id(1), id(2));
    for i in 0..20 {
        remember(&c.store, &ida, &format!("remembered {i}"));
    }
    let batch: Vec<VerifiedMemory> = (0..50)
        .map(|i| memory(&ida, &format!("imported {i}")))
        .collect();
    c.store.import(&ida, &batch, 5, |_| {}).unwrap();
    // B's memories arrive by an ingest; then B's history rewritten (still
    // signed by B) is refused and kept as evidence.
    let b = repo();
    remember(&b.store, &idb, "b one");
    remember(&b.store, &idb, "b two");
    assert!(ingest(&c.store, &b.path).is_ok());
    let other = repo();
    remember(&other.store, &idb, "b's other past");
    let r = ingest(&c.store, &other.path);
    assert_eq!(r.branches[0].status, IngestStatus::Refused);
    let evidence = c.store.evidence_refs().unwrap();
    assert_eq!(evidence.len(), 1);
    // Something nothing points at.
    let garbage = c.store.git().blob(b"unreachable").unwrap();

    let before = c.store.object_counts();
    assert!(before.packs >= 10, "{before:?}");
    assert!(before.loose > 50, "{before:?}");

    let report = c.store.gc(Duration::ZERO, T).unwrap();
    assert_eq!(report.before, before);
    assert_eq!(report.after.packs, 1, "{report:?}");
    assert_eq!(report.after.loose, 0, "{report:?}");
    assert!(report.pruned);
    assert_eq!(c.store.object_counts(), report.after);

    assert!(!exists(&c.path, garbage), "unreachable object dropped");
    let fresh = Store::open(&c.path).unwrap();
    assert!(fresh.verify_all().unwrap().is_ok());
    assert_eq!(recall_count(&fresh), 72);
    assert_eq!(fresh.evidence_refs().unwrap(), evidence);
    assert!(
        readable(&fresh, evidence[0].1),
        "evidence keeps its objects"
    );
    // Writing goes on after maintenance.
    remember(&fresh, &ida, "after gc");
    assert_eq!(recall_count(&fresh), 73);
}

#[test]
fn grace_period_keeps_recent_unreachable_objects() {
    let c = repo();
    let ida = id(1);
    remember(&c.store, &ida, "one");
    let garbage = c.store.git().blob(b"recent garbage").unwrap();
    let report = c.store.gc(Duration::from_secs(3600), T).unwrap();
    assert!(report.pruned);
    assert!(exists(&c.path, garbage), "younger than the grace period");
    assert_eq!(report.after.loose, 0, "{report:?}");
    assert!(c.store.verify_all().unwrap().is_ok());
}

#[test]
fn gc_during_a_live_ingest_keeps_the_quarantine_and_drops_nothing() {
    let c = repo();
    let (ida, idb) = (id(1), id(2));
    remember(&c.store, &ida, "ours");
    let garbage = c.store.git().blob(b"unreachable").unwrap();
    let b = repo();
    remember(&b.store, &idb, "theirs");
    let incoming = c
        .store
        .fetch_into_quarantine(b.path.to_str().unwrap(), "live", T)
        .unwrap();
    assert_eq!(c.store.quarantines(), vec!["live".to_string()]);

    let report = c.store.gc(Duration::ZERO, T).unwrap();
    assert_eq!(report.live_quarantines, 1);
    assert!(!report.pruned);
    assert_eq!(c.store.quarantines(), vec!["live".to_string()]);
    assert!(exists(&c.path, garbage), "nothing dropped during an ingest");

    let r = c.store.accept_incoming(incoming).unwrap();
    assert_eq!(r.branches[0].status, IngestStatus::Accepted);
    assert!(c.store.verify_all().unwrap().is_ok());
    assert_eq!(recall_count(&c.store), 2);

    let report = c.store.gc(Duration::ZERO, T).unwrap();
    assert!(report.pruned);
    assert_eq!(report.after.packs, 1, "{report:?}");
    assert!(!exists(&c.path, garbage));
    assert_eq!(recall_count(&Store::open(&c.path).unwrap()), 2);
}

#[test]
fn writers_beside_repeated_gc_lose_nothing() {
    let c = repo();
    let ida = id(1);
    remember(&c.store, &ida, "seed");
    let path = c.path.clone();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (ids, gcs) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let store = Store::open(&path).unwrap();
            let mut ids = Vec::new();
            for i in 0..60 {
                ids.push(remember(&store, &ida, &format!("beside gc {i}")));
                if i % 10 == 0 {
                    let batch: Vec<VerifiedMemory> = (0..5)
                        .map(|j| memory(&ida, &format!("import {i}/{j}")))
                        .collect();
                    store.import(&ida, &batch, 2, |_| {}).unwrap();
                    ids.extend(batch.iter().map(|m| m.id().to_string()));
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            ids
        });
        let gc = s.spawn(|| {
            let store = Store::open(&path).unwrap();
            let mut n = 0;
            // Bounded: the writer finishes long before.
            while !done.load(std::sync::atomic::Ordering::SeqCst) && n < 500 {
                store.gc(Duration::ZERO, T).unwrap();
                n += 1;
            }
            n
        });
        (writer.join().unwrap(), gc.join().unwrap())
    });
    assert!(gcs >= 2, "gc ran {gcs} times");
    let store = Store::open(&c.path).unwrap();
    assert!(store.verify_all().unwrap().is_ok());
    let held: std::collections::HashSet<String> =
        common::recalled_ids(&store).into_iter().collect();
    for id in &ids {
        assert!(held.contains(id), "memory {id} lost");
    }
    assert_eq!(held.len(), ids.len() + 1);
}
