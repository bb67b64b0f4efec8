//! The recall index: derived, untrusted metadata about every memory on every
//! branch, so that `recall --limit 20` reads and verifies 20 memories instead
//! of all of them.
//!
//! It lives in the repository directory (`memories.git/mmogit/recall-index.json`),
//! is never on a branch and never synced. Each branch's part records the tip
//! it was built for; when the tip moves, only the new commits are walked, and
//! when the old tip is no longer an ancestor (or the file is missing or
//! corrupt) that part is rebuilt from the branch itself. Nothing in it is
//! trusted: recall reads every memory it returns from git and verifies it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use git2::Oid;
use mmogit_identity::PublicKey;
use serde::{Deserialize, Serialize};

use crate::memory::{parse_time, MemoryType, UnverifiedMemory, MAX_MEMORY_FILE_BYTES};
use crate::repo::{Change, Store};
use crate::StoreError;

const INDEX_VERSION: u32 = 1;

/// Metadata of one memory file added on a branch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Memory id (= file name).
    pub id: String,
    /// created_at, microseconds since the Unix epoch.
    pub t: i64,
    pub k: MemoryType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub g: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<f64>,
    /// Blob id.
    pub b: String,
    /// Path in the tree.
    pub p: String,
}

impl Entry {
    pub fn created(&self) -> SystemTime {
        if self.t >= 0 {
            UNIX_EPOCH + Duration::from_micros(self.t as u64)
        } else {
            UNIX_EPOCH - Duration::from_micros(self.t.unsigned_abs())
        }
    }
}

/// A file added on a branch that cannot be a valid memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Bad {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct BranchIndex {
    pub tip: String,
    pub entries: Vec<Entry>,
    #[serde(default)]
    pub bad: Vec<Bad>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    branches: BTreeMap<String, BranchIndex>,
}

fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_micros().min(i64::MAX as u128) as i64),
    }
}

impl Store {
    fn index_path(&self) -> PathBuf {
        self.path().join("mmogit").join("recall-index.json")
    }

    /// The index parts of `branches`, brought up to date with their tips
    /// (and saved when anything changed).
    pub(crate) fn branch_indexes(
        &self,
        branches: &[(PublicKey, Oid)],
    ) -> Result<Vec<BranchIndex>, StoreError> {
        let path = self.index_path();
        let mut file = load(&path);
        let mut changed = false;
        for (owner, tip) in branches {
            let key = owner.to_hex();
            let cached = file.branches.remove(&key);
            let up_to_date = cached.as_ref().is_some_and(|c| c.tip == tip.to_string());
            let bi = if up_to_date {
                cached.expect("checked")
            } else {
                changed = true;
                self.update_branch(owner, *tip, cached)?
            };
            file.branches.insert(key, bi);
        }
        if changed {
            file.version = INDEX_VERSION;
            save(&path, &file);
        }
        Ok(branches
            .iter()
            .map(|(pk, _)| file.branches.remove(&pk.to_hex()).unwrap_or_default())
            .collect())
    }

    fn update_branch(
        &self,
        owner: &PublicKey,
        tip: Oid,
        cached: Option<BranchIndex>,
    ) -> Result<BranchIndex, StoreError> {
        let repo = self.git();
        let stop: Option<Oid> = cached.as_ref().and_then(|c| Oid::from_str(&c.tip).ok());
        // Walk first parents back to the cached tip (or the root).
        let mut commits = Vec::new();
        let mut cur = Some(tip);
        let mut reached = stop.is_none();
        while let Some(oid) = cur {
            if Some(oid) == stop {
                reached = true;
                break;
            }
            let c = repo.find_commit(oid)?;
            cur = if c.parent_count() > 0 {
                Some(c.parent_id(0)?)
            } else {
                None
            };
            commits.push(c);
        }
        let mut bi = match (reached, cached) {
            (true, Some(c)) => c,
            (false, Some(_)) => {
                tracing::info!(branch = %owner.short(12), "history changed; rebuilding its recall index");
                return self.update_branch(owner, tip, None);
            }
            (_, None) => BranchIndex::default(),
        };
        for c in commits.iter().rev() {
            let parent_tree = if c.parent_count() > 0 {
                Some(c.parent(0)?.tree()?)
            } else {
                None
            };
            for ch in self.diff_trees(parent_tree.as_ref(), &c.tree()?)? {
                let Change::Added { path, id, blob } = ch else {
                    continue;
                };
                let bad = |reason: String| Bad {
                    path: path.clone(),
                    reason,
                };
                let parsed = self
                    .read_blob(blob, MAX_MEMORY_FILE_BYTES)
                    .and_then(|d| UnverifiedMemory::from_json(&d));
                match parsed {
                    Err(e) => bi.bad.push(bad(e.to_string())),
                    Ok(m) if m.id != id => bi.bad.push(bad(format!(
                        "file name does not match the memory id {}",
                        m.id
                    ))),
                    Ok(m) if m.author != *owner => bi.bad.push(bad(format!(
                        "memory by {} on a branch it does not own",
                        m.author
                    ))),
                    Ok(m) => match parse_time(&m.created_at) {
                        Err(e) => bi.bad.push(bad(e.to_string())),
                        Ok(t) => bi.entries.push(Entry {
                            id,
                            t: micros(t),
                            k: m.kind,
                            g: m.tags,
                            c: m.confidence,
                            b: blob.to_string(),
                            p: path,
                        }),
                    },
                }
            }
        }
        bi.tip = tip.to_string();
        Ok(bi)
    }
}

fn load(path: &Path) -> IndexFile {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(_) => return IndexFile::default(),
    };
    match serde_json::from_slice::<IndexFile>(&data) {
        Ok(f) if f.version == INDEX_VERSION => f,
        Ok(_) | Err(_) => {
            tracing::info!(path = %path.display(), "recall index unreadable; rebuilding it");
            IndexFile::default()
        }
    }
}

fn save(path: &Path, file: &IndexFile) {
    let write = || -> std::io::Result<()> {
        let dir = path.parent().expect("index path has a parent");
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".recall-index.{}.tmp", std::process::id()));
        // fsynced before the rename: after a power loss the file is the
        // old index or the new one, never an empty or partial one. (Either
        // is safe: a part is only used for the tip it records.)
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(file)?)?;
        if crate::repo::durable_writes() {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        // Derived data: recall still works, only slower next time.
        tracing::debug!(path = %path.display(), error = %e, "cannot save the recall index");
    }
}
