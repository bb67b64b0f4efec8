//! Verified ingest between repositories: fetch and bundles into quarantine,
//! verification before any branch moves, refusal of forgeries and rewrites.

use std::path::Path;
use std::time::Duration;

use git2::Oid;
use mmogit_identity::{Identity, PublicKey};
use mmogit_store::{
    branch_name, IngestReport, IngestStatus, MemoryType, NewMemory, Store, VerifiedMemory,
};

mod common;

use common::{git_in, id, repo};

const T: Duration = Duration::from_secs(60);

fn remember(store: &Store, who: &Identity, text: &str) -> VerifiedMemory {
    let m = VerifiedMemory::create(
        who,
        NewMemory {
            kind: MemoryType::Learning,
            content: text.into(),
            tags: vec!["sync".into()],
            confidence: None,
            private: false,
        },
    )
    .unwrap();
    store
        .append(who, std::slice::from_ref(&m), "remember")
        .unwrap();
    m
}

/// Fetches `source` into `into` and accepts what verifies.
fn ingest(into: &Store, source: &str) -> IngestReport {
    let incoming = into.fetch_into_quarantine(source, "test", T).unwrap();
    let report = into.accept_incoming(incoming).unwrap();
    // Our quarantine is gone, whatever was accepted.
    assert!(!into.quarantines().contains(&"test".to_string()));
    report
}

/// `from`'s bundle for a repository holding `have` (only the branches of
/// `only`), as a peer sends it, written at `path` (unless there is nothing
/// to send): a v2 git bundle that `git fetch` reads too.
fn bundle_file(
    from: &Store,
    path: &Path,
    have: &[(PublicKey, Oid)],
    only: Option<&[PublicKey]>,
) -> Option<mmogit_store::Bundle> {
    let b = from.build_bundle(have, only, u64::MAX).unwrap()?;
    std::fs::write(path, &b.bytes).unwrap();
    Some(b)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn heads(store: &Store) -> Vec<(String, Oid)> {
    let mut v: Vec<(String, Oid)> = store
        .git()
        .references_glob("refs/heads/*")
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.name().unwrap().to_string(), r.target().unwrap())
        })
        .collect();
    v.sort();
    v
}

fn recall_ids(store: &Store) -> Vec<String> {
    let mut ids = common::recalled_ids(store);
    ids.sort();
    ids
}

fn status_of(report: &IngestReport, pk: &PublicKey) -> IngestStatus {
    report
        .branches
        .iter()
        .find(|b| b.author == *pk)
        .unwrap_or_else(|| panic!("no branch {pk} in {report:?}"))
        .status
}

/// Commits `content` at `path` (None: deletes it) on top of `author`'s
/// branch, bypassing mmogit, as someone with write access to the repository
/// could. Returns the new tip.
fn forge(store: &Store, author: &PublicKey, path: &str, content: Option<&[u8]>) -> Oid {
    let repo = store.git();
    let tip = store.tip(author).unwrap().unwrap();
    let parent = repo.find_commit(tip).unwrap();
    let parts: Vec<&str> = path.split('/').collect();
    fn rebuild(
        repo: &git2::Repository,
        tree: Option<git2::Tree>,
        parts: &[&str],
        content: Option<&[u8]>,
    ) -> Oid {
        let mut b = repo.treebuilder(tree.as_ref()).unwrap();
        if parts.len() == 1 {
            match content {
                Some(c) => {
                    let blob = repo.blob(c).unwrap();
                    b.insert(parts[0], blob, 0o100644).unwrap();
                }
                None => {
                    b.remove(parts[0]).unwrap();
                }
            }
        } else {
            let sub = tree
                .as_ref()
                .and_then(|t| t.get_name(parts[0]))
                .map(|e| repo.find_tree(e.id()).unwrap());
            let id = rebuild(repo, sub, &parts[1..], content);
            b.insert(parts[0], id, 0o040000).unwrap();
        }
        b.write().unwrap()
    }
    let tree_id = rebuild(repo, Some(parent.tree().unwrap()), &parts, content);
    let tree = repo.find_tree(tree_id).unwrap();
    let sig = git2::Signature::now("forger", "f@f").unwrap();
    let c = repo
        .commit(None, &sig, &sig, "forged", &tree, &[&parent])
        .unwrap();
    repo.reference(&branch_name(author), c, true, "forge")
        .unwrap();
    c
}

#[test]
fn memories_travel_a_to_b_to_c_by_fetch_and_by_bundle() {
    let (a, b) = (repo(), repo());
    let (ida, idb) = (id(1), id(2));
    let (pka, pkb) = (ida.public_key(), idb.public_key());
    let mine: Vec<String> = (0..3)
        .map(|i| remember(&a.store, &ida, &format!("a{i}")).id().to_string())
        .collect();
    remember(&b.store, &idb, "b0");

    // A -> B by fetch.
    let r = ingest(&b.store, path_str(&a.path));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(status_of(&r, &pka), IngestStatus::Accepted);
    assert_eq!(r.memories_added(), 3);
    assert_eq!(r.commits_added(), 3);
    assert_eq!(r.branches[0].old, None);
    assert_eq!(b.store.tip(&pka).unwrap(), a.store.tip(&pka).unwrap());
    // Again: nothing new.
    let r = ingest(&b.store, path_str(&a.path));
    assert_eq!(status_of(&r, &pka), IngestStatus::Unchanged);
    assert_eq!(r.memories_added(), 0);

    // B -> C by bundle (C has nothing: full bundle of both branches).
    let c = repo();
    let bundle = c.path.parent().unwrap().join("b.bundle");
    let info = bundle_file(&b.store, &bundle, &c.store.branches().unwrap(), None)
        .expect("something to send");
    assert_eq!(info.commits, 4);
    assert_eq!(info.sha256.len(), 64);
    let keys: Vec<PublicKey> = info.branches.iter().map(|(k, _)| *k).collect();
    assert!(keys.contains(&pka) && keys.contains(&pkb));
    let r = ingest(&c.store, path_str(&bundle));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.memories_added(), 4);
    let v = c.store.verify_all().unwrap();
    assert!(v.is_ok() && v.memories == 4, "{v:?}");
    let got = recall_ids(&c.store);
    for m in &mine {
        assert!(got.contains(m));
    }

    // B -> C2 by fetch.
    let c2 = repo();
    let r = ingest(&c2.store, path_str(&b.path));
    assert!(r.is_ok());
    assert_eq!(r.memories_added(), 4);
    assert_eq!(recall_ids(&c2.store), got);
    assert_eq!(heads(&c2.store), heads(&c.store));

    // Our own branch fast-forwards from a peer too (identity restored elsewhere).
    let fresh = repo();
    let r = ingest(&fresh.store, path_str(&a.path));
    assert_eq!(status_of(&r, &pka), IngestStatus::Accepted);
}

#[test]
fn tampered_memory_is_refused_naming_it_and_nothing_moves() {
    let (a, b, c) = (repo(), repo(), repo());
    let (ida, idb) = (id(1), id(2));
    let (pka, pkb) = (ida.public_key(), idb.public_key());
    let m1 = remember(&a.store, &ida, "genuine");
    ingest(&b.store, path_str(&a.path));
    ingest(&c.store, path_str(&b.path));
    let c_before = heads(&c.store);

    // A writes more, B relays it but changes the first memory on A's branch,
    // and B also writes something of its own.
    remember(&a.store, &ida, "second");
    ingest(&b.store, path_str(&a.path));
    let path = format!("memories/{}/{}.json", &m1.id()[..2], m1.id());
    let json = String::from_utf8(m1.to_json()).unwrap();
    let tampered = json.replace("genuine", "tampered");
    forge(&b.store, &pka, &path, Some(tampered.as_bytes()));
    remember(&b.store, &idb, "b's own");

    let r = ingest(&c.store, path_str(&b.path));
    assert!(!r.is_ok());
    assert_eq!(status_of(&r, &pka), IngestStatus::Refused);
    // B's branch verifies on its own and is taken.
    assert_eq!(status_of(&r, &pkb), IngestStatus::Accepted);
    let refused = r.branches.iter().find(|x| x.author == pka).unwrap();
    assert!(
        refused
            .problems
            .iter()
            .any(|p| p.path.as_deref().is_some_and(|p| p.contains(m1.id()))
                && p.reason.contains("changed")),
        "{refused:?}"
    );
    assert_eq!(refused.memories_added, 0);
    assert!(refused.evidence.is_none());
    // A's branch in C is exactly as before: not even the genuine second memory.
    assert_eq!(
        c.store.tip(&pka).unwrap(),
        c_before
            .iter()
            .find(|(n, _)| *n == branch_name(&pka))
            .map(|x| x.1)
    );
    assert!(c.store.verify_all().unwrap().is_ok());

    // A forged new memory (bad signature) is named by its id.
    let d = repo();
    let fake = json
        .replace("genuine", "forged")
        .replace(m1.id(), &"ab".repeat(32));
    let b2 = repo();
    ingest(&b2.store, path_str(&a.path));
    forge(
        &b2.store,
        &pka,
        &format!("memories/ab/{}.json", "ab".repeat(32)),
        Some(fake.as_bytes()),
    );
    let r = ingest(&d.store, path_str(&b2.path));
    assert_eq!(status_of(&r, &pka), IngestStatus::Refused);
    let p = &r.branches[0].problems;
    assert!(
        p.iter()
            .any(|p| p.memory.as_deref() == Some("ab".repeat(32).as_str())),
        "{p:?}"
    );
    assert!(heads(&d.store).is_empty(), "no branch created");
    assert!(recall_ids(&d.store).is_empty());

    // A deleted memory is refused too.
    let b3 = repo();
    ingest(&b3.store, path_str(&a.path));
    forge(&b3.store, &pka, &path, None);
    let r = ingest(&c.store, path_str(&b3.path));
    assert_eq!(status_of(&r, &pka), IngestStatus::Refused);
    assert!(r.branches[0]
        .problems
        .iter()
        .any(|p| p.reason.contains("deleted")));
}

#[test]
fn rewritten_history_is_refused_and_kept_as_evidence() {
    let (a, c) = (repo(), repo());
    let ida = id(1);
    let pka = ida.public_key();
    remember(&a.store, &ida, "one");
    remember(&a.store, &ida, "two");
    ingest(&c.store, path_str(&a.path));
    let before = heads(&c.store);

    // The same key, a different history: every memory is genuinely signed,
    // but the new tip does not descend from the one C holds.
    let other = repo();
    remember(&other.store, &ida, "another past");
    let rewritten_tip = other.store.tip(&pka).unwrap().unwrap();
    let r = ingest(&c.store, path_str(&other.path));
    let b = &r.branches[0];
    assert_eq!(b.status, IngestStatus::Refused);
    assert!(
        b.problems.iter().any(|p| p.reason.contains("rewritten")),
        "{b:?}"
    );
    let ev = b.evidence.clone().expect("kept as evidence");
    assert!(ev.starts_with(&format!("refs/mmogit/evidence/{}/", pka.to_hex())));
    assert_eq!(
        c.store.evidence_refs().unwrap(),
        vec![(ev.clone(), rewritten_tip)]
    );
    assert_eq!(heads(&c.store), before);
    assert!(c.store.verify_all().unwrap().is_ok());

    // A source that is merely behind us is not a rewrite.
    let c2 = repo();
    ingest(&c2.store, path_str(&a.path));
    let a_old = repo();
    // a_old holds A's branch at its first commit only.
    let first = {
        let tip = a.store.tip(&pka).unwrap().unwrap();
        a.store
            .git()
            .find_commit(tip)
            .unwrap()
            .parent_id(0)
            .unwrap()
    };
    ingest(&a_old.store, path_str(&a.path));
    a_old
        .store
        .git()
        .reference(&branch_name(&pka), first, true, "rewind")
        .unwrap();
    let r = ingest(&c2.store, path_str(&a_old.path));
    assert_eq!(r.branches[0].status, IngestStatus::Unchanged);
    assert!(c2.store.evidence_refs().unwrap().is_empty());
}

#[test]
fn incremental_bundle_holds_only_new_commits() {
    let (a, c) = (repo(), repo());
    let (ida, idb) = (id(1), id(2));
    let (pka, pkb) = (ida.public_key(), idb.public_key());
    for i in 0..30 {
        remember(&a.store, &ida, &format!("memory number {i} with some text"));
    }
    remember(&a.store, &idb, "b lives here too");
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.bundle");
    let info_full = bundle_file(&a.store, &full, &[], None).unwrap();
    assert_eq!(info_full.commits, 31);
    ingest(&c.store, path_str(&full));
    assert_eq!(heads(&c.store), heads(&a.store));

    // Nothing new for C.
    let none = dir.path().join("none.bundle");
    assert!(bundle_file(&a.store, &none, &c.store.branches().unwrap(), None).is_none());
    assert!(!none.exists());

    remember(&a.store, &ida, "one more");
    let inc = dir.path().join("inc.bundle");
    let info = bundle_file(&a.store, &inc, &c.store.branches().unwrap(), None).unwrap();
    assert_eq!(info.commits, 1);
    assert_eq!(
        info.branches,
        vec![(pka, a.store.tip(&pka).unwrap().unwrap())]
    );
    assert!(
        info.bytes.len() * 4 < info_full.bytes.len(),
        "{} vs {}",
        info.bytes.len(),
        info_full.bytes.len()
    );
    // Another repository without the prerequisites cannot use it, and
    // nothing moves there.
    let d = repo();
    assert!(d
        .store
        .fetch_into_quarantine(path_str(&inc), "test", T)
        .is_err());
    assert!(heads(&d.store).is_empty());
    let r = ingest(&c.store, path_str(&inc));
    assert_eq!(r.memories_added(), 1);
    assert_eq!(heads(&c.store), heads(&a.store));

    // `only` restricts the branches; an unknown `have` tip sends the branch in full.
    let only = dir.path().join("only.bundle");
    let unknown = Oid::from_str(&"1".repeat(40)).unwrap();
    let info = bundle_file(&a.store, &only, &[(pkb, unknown)], Some(&[pkb])).unwrap();
    assert_eq!(info.branches.len(), 1);
    assert_eq!(info.branches[0].0, pkb);
    assert_eq!(info.commits, 1);
    let e = repo();
    let r = ingest(&e.store, path_str(&only));
    assert_eq!(r.branches.len(), 1);
    assert_eq!(status_of(&r, &pkb), IngestStatus::Accepted);
}

#[test]
fn interrupted_ingest_leaves_heads_untouched_and_the_next_one_completes() {
    let (a, c) = (repo(), repo());
    let ida = id(1);
    remember(&a.store, &ida, "one");
    ingest(&c.store, path_str(&a.path));
    remember(&a.store, &ida, "two");
    let before = heads(&c.store);

    // Fetched but not accepted yet: the objects are in the quarantine,
    // nothing in the repository changed.
    let objects_before = object_files(&c.store);
    let incoming = c
        .store
        .fetch_into_quarantine(path_str(&a.path), "first", T)
        .unwrap();
    assert_eq!(incoming.tips.len(), 1);
    assert_eq!(heads(&c.store), before);
    assert_eq!(c.store.quarantines(), vec!["first".to_string()]);
    assert_eq!(object_files(&c.store), objects_before);
    assert!(c.store.git().find_commit(incoming.tips[0].1).is_err());
    // Dropped without accepting (the transfer was abandoned): nothing left.
    drop(incoming);
    assert!(c.store.quarantines().is_empty());
    assert_eq!(object_files(&c.store), objects_before);

    // A quarantine left by a killed ingest (its lock is free) is removed by
    // the next ingest, which completes.
    let left = c
        .store
        .path()
        .join(mmogit_store::QUARANTINE_DIR)
        .join("killed");
    std::fs::create_dir_all(left.join("objects/pack")).unwrap();
    std::fs::write(left.join("objects/pack/pack-x.pack"), b"junk").unwrap();
    let incoming = c
        .store
        .fetch_into_quarantine(path_str(&a.path), "second", T)
        .unwrap();
    assert_eq!(c.store.quarantines(), vec!["second".to_string()]);
    let r = c.store.accept_incoming(incoming).unwrap();
    assert_eq!(r.memories_added(), 1);
    assert!(c.store.quarantines().is_empty());
    assert_eq!(heads(&c.store), heads(&a.store));
    assert_ne!(object_files(&c.store), objects_before);
}

/// Every file under the repository's `objects/` (loose objects and packs).
fn object_files(s: &Store) -> Vec<String> {
    fn walk(d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(&s.path().join("objects"), &mut out);
    out.sort();
    out
}

#[test]
fn a_refused_transfer_leaves_no_object_behind() {
    // A forged memory arrives through a git remote and through a bundle:
    // refused both times, and the repository's objects are as before.
    let (a, c) = (repo(), repo());
    let ida = id(1);
    let pka = ida.public_key();
    remember(&a.store, &ida, "genuine");
    ingest(&c.store, path_str(&a.path));
    let objects_before = object_files(&c.store);
    let heads_before = heads(&c.store);
    // The forger changes the content of a new memory after signing.
    let m = remember(&a.store, &ida, "to be forged");
    let tip = a.store.tip(&pka).unwrap().unwrap();
    let forged = String::from_utf8(m.to_json())
        .unwrap()
        .replace("to be forged", "forged words");
    let repo_a = a.store.git();
    let blob = repo_a.blob(forged.as_bytes()).unwrap();
    let commit = repo_a.find_commit(tip).unwrap();
    let mut tb = git2::build::TreeUpdateBuilder::new();
    tb.upsert(
        mmogit_store::memory_path(m.id()),
        blob,
        git2::FileMode::Blob,
    );
    let tree = tb.create_updated(repo_a, &commit.tree().unwrap()).unwrap();
    let tree = repo_a.find_tree(tree).unwrap();
    let sig = git2::Signature::now("f", "f@f").unwrap();
    let parent = commit.parent(0).unwrap();
    let forged_commit = repo_a
        .commit(None, &sig, &sig, "forged", &tree, &[&parent])
        .unwrap();
    repo_a
        .reference(
            &mmogit_store::branch_name(&pka),
            forged_commit,
            true,
            "forge",
        )
        .unwrap();

    let r = ingest(&c.store, path_str(&a.path));
    assert!(!r.is_ok());
    assert_eq!(r.memories_added(), 0);
    assert_eq!(heads(&c.store), heads_before);
    assert_eq!(object_files(&c.store), objects_before, "git remote");
    assert!(c.store.git().find_blob(blob).is_err());

    let have = c.store.branches().unwrap();
    let b = a
        .store
        .build_bundle(&have, None, u64::MAX)
        .unwrap()
        .unwrap();
    let p = c.path.parent().unwrap().join("forged.bundle");
    std::fs::write(&p, &b.bytes).unwrap();
    let r = c.store.ingest_bundle(&p, "bundle").unwrap();
    assert!(!r.is_ok());
    assert_eq!(heads(&c.store), heads_before);
    assert_eq!(object_files(&c.store), objects_before, "bundle");
    assert!(c.store.quarantines().is_empty());
}

#[test]
fn bad_sources_and_tags_are_errors_without_side_effects() {
    let c = repo();
    let missing = c.path.parent().unwrap().join("nothing-here.git");
    let err = c
        .store
        .fetch_into_quarantine(path_str(&missing), "t", T)
        .unwrap_err();
    assert!(err.to_string().contains("git fetch"), "{err}");
    assert!(c
        .store
        .fetch_into_quarantine(path_str(&missing), "../heads", T)
        .is_err());
    assert!(heads(&c.store).is_empty());
    assert!(c.store.quarantines().is_empty());

    // An incoming ref that is not users/<key> is ignored.
    let a = repo();
    let ida = id(1);
    remember(&a.store, &ida, "x");
    let tip = a.store.tip(&ida.public_key()).unwrap().unwrap();
    a.store
        .git()
        .reference("refs/heads/users/not-a-key", tip, false, "junk")
        .unwrap();
    let incoming = c
        .store
        .fetch_into_quarantine(path_str(&a.path), "t", T)
        .unwrap();
    assert_eq!(incoming.tips, vec![(ida.public_key(), tip)]);
    assert_eq!(incoming.refused.len(), 1);
    assert!(incoming.refused[0].branch.ends_with("users/not-a-key"));
}

#[test]
fn remote_tips_and_push() {
    let (a, r) = (repo(), repo());
    let ida = id(1);
    let pka = ida.public_key();
    remember(&a.store, &ida, "x");
    assert!(a
        .store
        .remote_tips(path_str(&r.path), T)
        .unwrap()
        .is_empty());
    a.store.push_branch(path_str(&r.path), &pka, T).unwrap();
    let tip = a.store.tip(&pka).unwrap().unwrap();
    assert_eq!(
        a.store.remote_tips(path_str(&r.path), T).unwrap(),
        vec![(pka, tip)]
    );
    assert_eq!(a.store.count_commits(tip, Some(tip)).unwrap(), 0);
    // A push that would rewrite the remote's branch is refused.
    let other = repo();
    remember(&other.store, &ida, "diverged");
    let err = other
        .store
        .push_branch(path_str(&r.path), &pka, T)
        .unwrap_err();
    assert!(err.to_string().contains("git push"), "{err}");
    assert_eq!(r.store.tip(&pka).unwrap(), Some(tip));
}

#[test]
fn remote_users_lists_the_authors_of_a_repository_not_yet_a_remote() {
    let (a, r) = (repo(), repo());
    let (ida, idb) = (id(1), id(2));
    assert!(mmogit_store::remote_users(path_str(&r.path), T)
        .unwrap()
        .is_empty());
    remember(&a.store, &ida, "a");
    remember(&a.store, &idb, "b");
    a.store
        .push_branch(path_str(&r.path), &ida.public_key(), T)
        .unwrap();
    a.store
        .push_branch(path_str(&r.path), &idb.public_key(), T)
        .unwrap();
    // Not a users/<key> branch: not listed.
    git_in(
        &r.path,
        &["branch", "users/not-a-key", &branch_name(&ida.public_key())],
    );
    let mut want = vec![ida.public_key(), idb.public_key()];
    want.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    assert_eq!(
        mmogit_store::remote_users(path_str(&r.path), T).unwrap(),
        want
    );
    let missing = r.path.with_file_name("nowhere.git");
    let err = mmogit_store::remote_users(path_str(&missing), T).unwrap_err();
    assert!(
        matches!(err, mmogit_store::StoreError::RemoteUnreadable { .. }),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("cannot read git repository"),
        "{err}"
    );
}

#[test]
fn added_since_lists_what_other_branches_gained_verified() {
    let a = repo();
    let (me, other, third) = (id(1), id(2), id(3));
    remember(&a.store, &me, "mine");
    let before = remember(&a.store, &other, "before");
    let (none, tips) = a.store.added_since(&Default::default(), &[]).unwrap();
    assert_eq!(none.len(), 2, "every branch counts from its root");
    assert_eq!(tips.len(), 2);
    // Others' branches move (as a sync or a peer's transfer moves them).
    let m1 = remember(&a.store, &other, "new from other");
    let m2 = remember(&a.store, &third, "new from third");
    remember(&a.store, &me, "mine again");
    let (got, tips2) = a.store.added_since(&tips, &[me.public_key()]).unwrap();
    let ids: Vec<&str> = got.iter().map(|m| m.id()).collect();
    assert_eq!(
        ids,
        vec![m1.id(), m2.id()],
        "oldest first, not ours, not `before`"
    );
    assert!(!ids.contains(&before.id()));
    assert_eq!(tips2.len(), 3);
    // Nothing moved since: nothing listed.
    let (again, _) = a.store.added_since(&tips2, &[]).unwrap();
    assert!(again.is_empty());
}

/// Child side of `a_killed_ingest_never_moves_a_branch_to_an_unverified_tip`.
#[test]
fn ingest_child_process() {
    let (Some(target), Some(source)) = (
        std::env::var_os("MMOGIT_SYNC_CHILD_TARGET"),
        std::env::var_os("MMOGIT_SYNC_CHILD_SOURCE"),
    ) else {
        return;
    };
    let store = Store::open(Path::new(&target)).unwrap();
    loop {
        let incoming = store
            .fetch_into_quarantine(source.to_str().unwrap(), "child", T)
            .unwrap();
        store.accept_incoming(incoming).unwrap();
    }
}

#[test]
fn a_killed_ingest_never_moves_a_branch_to_an_unverified_tip() {
    // The source: a good branch and a forged one.
    let a = repo();
    let (ida, idb) = (id(1), id(2));
    let (pka, pkb) = (ida.public_key(), idb.public_key());
    let good: Vec<VerifiedMemory> = (0..300)
        .map(|i| {
            VerifiedMemory::create(
                &ida,
                NewMemory {
                    kind: MemoryType::Observation,
                    content: format!("memory {i}"),
                    tags: vec![],
                    confidence: None,
                    private: false,
                },
            )
            .unwrap()
        })
        .collect();
    a.store.import(&ida, &good, 10, |_| {}).unwrap();
    let m = remember(&a.store, &idb, "b");
    let json = String::from_utf8(m.to_json())
        .unwrap()
        .replace("\"b\"", "\"c\"");
    forge(
        &a.store,
        &pkb,
        &format!("memories/{}/{}.json", &m.id()[..2], m.id()),
        Some(json.as_bytes()),
    );
    let good_tip = a.store.tip(&pka).unwrap().unwrap();
    let exe = std::env::current_exe().unwrap();
    for delay_ms in [0u64, 20, 60, 120, 180, 250, 350, 500, 700] {
        let c = repo();
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "ingest_child_process", "--nocapture"])
            .env("MMOGIT_SYNC_CHILD_TARGET", &c.path)
            .env("MMOGIT_SYNC_CHILD_SOURCE", &a.path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let c = c.reopen();
        // Either nothing or the whole verified tip; never the forged branch.
        let tip = c.store.tip(&pka).unwrap();
        assert!(tip.is_none() || tip == Some(good_tip), "{delay_ms} ms");
        assert_eq!(c.store.tip(&pkb).unwrap(), None);
        // The next ingest completes.
        let r = ingest(&c.store, path_str(&a.path));
        assert_eq!(status_of(&r, &pkb), IngestStatus::Refused);
        assert_eq!(c.store.tip(&pka).unwrap(), Some(good_tip));
        assert!(c.store.verify_all().unwrap().is_ok());
    }
}

#[test]
fn evidence_is_kept_only_when_it_verifies_and_at_most_16_per_author() {
    let (a, c) = (repo(), repo());
    let ida = id(1);
    let pka = ida.public_key();
    remember(&a.store, &ida, "one");
    ingest(&c.store, path_str(&a.path));
    let objects_before = object_files(&c.store);

    // A rewritten history that does not verify (a forged memory under the
    // author's branch): refused and not kept, nothing left behind.
    let forged = repo();
    let m = remember(&forged.store, &ida, "original words");
    let tip = forged.store.tip(&pka).unwrap().unwrap();
    let g = forged.store.git();
    let blob = g
        .blob(
            String::from_utf8(m.to_json())
                .unwrap()
                .replace("original words", "forged words")
                .as_bytes(),
        )
        .unwrap();
    let mut tb = git2::build::TreeUpdateBuilder::new();
    tb.upsert(
        mmogit_store::memory_path(m.id()),
        blob,
        git2::FileMode::Blob,
    );
    let tree = tb
        .create_updated(g, &g.find_commit(tip).unwrap().tree().unwrap())
        .unwrap();
    let sig = git2::Signature::now("f", "f@f").unwrap();
    let root = g
        .commit(
            None,
            &sig,
            &sig,
            "forged root",
            &g.find_tree(tree).unwrap(),
            &[],
        )
        .unwrap();
    g.reference(&mmogit_store::branch_name(&pka), root, true, "forge")
        .unwrap();
    let r = ingest(&c.store, path_str(&forged.path));
    assert_eq!(r.branches[0].status, IngestStatus::Refused);
    assert_eq!(r.branches[0].evidence, None);
    assert!(c.store.evidence_refs().unwrap().is_empty());
    assert_eq!(object_files(&c.store), objects_before);

    // Genuinely signed rewritten histories: the first 16 are kept, then
    // they are refused without being kept.
    for n in 0..18 {
        let other = repo();
        remember(&other.store, &ida, &format!("another past {n}"));
        let r = ingest(&c.store, path_str(&other.path));
        let b = &r.branches[0];
        assert_eq!(b.status, IngestStatus::Refused);
        assert_eq!(b.evidence.is_some(), n < 16, "rewrite {n}: {b:?}");
    }
    assert_eq!(
        c.store.evidence_refs().unwrap().len(),
        mmogit_store::MAX_EVIDENCE_PER_AUTHOR
    );
    let report = c.store.verify_all().unwrap();
    assert!(report.is_ok());
    assert_eq!(report.evidence.len(), 16);
}
