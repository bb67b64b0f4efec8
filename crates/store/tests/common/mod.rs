//! Helpers the store's integration tests share.
#![allow(dead_code)]

use std::path::PathBuf;

use mmogit_identity::Identity;
use mmogit_store::{Filter, MemoryType, NewMemory, Store, VerifiedMemory};

/// A public memory with no confidence.
pub fn new(kind: MemoryType, content: &str, tags: &[&str]) -> NewMemory {
    NewMemory {
        kind,
        content: content.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        confidence: None,
        private: false,
    }
}

/// Signs `n` and commits it alone, as `mmogit remember` does.
pub fn remember(store: &Store, id: &Identity, n: NewMemory) -> VerifiedMemory {
    let m = VerifiedMemory::create(id, n).unwrap();
    store
        .append(id, std::slice::from_ref(&m), "remember")
        .unwrap();
    m
}

/// A fresh repository in a temporary directory.
pub struct Repo {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub store: Store,
}

impl Repo {
    /// The same repository through a new handle (after another process
    /// wrote it).
    pub fn reopen(self) -> Repo {
        Repo {
            store: Store::open(&self.path).unwrap(),
            ..self
        }
    }
}

pub fn repo() -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memories.git");
    let store = Store::open_or_init(&path).unwrap();
    Repo {
        _dir: dir,
        path,
        store,
    }
}

/// The identity whose secret key is 32 bytes of `n`.
pub fn id(n: u8) -> Identity {
    Identity::from_secret_bytes(&[n; 32])
}

/// Ids of every memory `recall` returns, in its order (newest first).
pub fn recalled_ids(store: &Store) -> Vec<String> {
    store
        .recall(&Filter::default())
        .unwrap()
        .memories
        .iter()
        .map(|m| m.id().to_string())
        .collect()
}

/// Runs `git --git-dir <repo> <args>`; panics with git's stderr if it fails.
#[allow(dead_code)]
pub fn git_in(repo: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
