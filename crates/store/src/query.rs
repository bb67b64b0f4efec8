//! Recall: memories across every branch, newest first, with filters.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::time::SystemTime;

use git2::Oid;
use mmogit_identity::PublicKey;

use crate::memory::{MemoryType, UnverifiedMemory, VerifiedMemory, MAX_MEMORY_FILE_BYTES};
use crate::repo::{Change, Store};
use crate::StoreError;

/// Which memories to return. Empty lists mean "any".
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Any of these types.
    pub kinds: Vec<MemoryType>,
    /// All of these tags.
    pub tags: Vec<String>,
    /// Any of these authors.
    pub authors: Vec<PublicKey>,
    /// Created at or after this time.
    pub since: Option<SystemTime>,
    /// Confidence at least this (memories without a confidence are excluded).
    pub min_confidence: Option<f64>,
    /// At most this many (the newest).
    pub limit: Option<usize>,
}

impl Filter {
    /// Whether `m` passes every condition (limit aside).
    pub fn matches(&self, m: &UnverifiedMemory) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&m.kind) {
            return false;
        }
        if !self.tags.iter().all(|t| m.tags.contains(t)) {
            return false;
        }
        if !self.authors.is_empty() && !self.authors.contains(&m.author) {
            return false;
        }
        if let Some(min) = self.min_confidence {
            match m.confidence {
                Some(c) if c >= min => {}
                _ => return false,
            }
        }
        if let Some(since) = self.since {
            match crate::memory::parse_time(&m.created_at) {
                Ok(t) if t >= since => {}
                _ => return false,
            }
        }
        true
    }
}

/// A memory file that could not be used, with where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    /// `users/<pubkey>:memories/<2 hex>/<id>.json`
    pub path: String,
    pub reason: String,
}

/// What [`Store::recall`] found.
#[derive(Debug, Default)]
pub struct RecallResult {
    /// Newest first.
    pub memories: Vec<VerifiedMemory>,
    /// Files that failed to parse or verify; they are never returned as memories.
    pub warnings: Vec<Warning>,
}

fn commit_secs(c: &git2::Commit) -> i64 {
    c.time().seconds()
}

fn to_secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

impl Store {
    /// Memories on every `users/*` branch that pass `filter`, newest first,
    /// each verified (signature, id, and author owns the branch).
    ///
    /// Walks the branches' histories from their tips, newest commit first,
    /// and stops as soon as older commits cannot hold anything newer than
    /// what was found (a commit's time is never before the memories it adds).
    pub fn recall(&self, filter: &Filter) -> Result<RecallResult, StoreError> {
        let repo = self.git();
        let mut result = RecallResult::default();
        let mut branches = self.branches()?;
        if !filter.authors.is_empty() {
            branches.retain(|(pk, _)| filter.authors.contains(pk));
        }
        let since_secs = filter.since.map(to_secs);
        // Max-heap of (commit time, branch index, commit id).
        let mut heap: BinaryHeap<(i64, usize, Oid)> = BinaryHeap::new();
        for (i, (_, tip)) in branches.iter().enumerate() {
            let c = repo.find_commit(*tip)?;
            heap.push((commit_secs(&c), i, *tip));
        }
        // Min-heap of the best `limit` creation times found so far.
        let mut best: BinaryHeap<Reverse<SystemTime>> = BinaryHeap::new();
        let mut found: Vec<VerifiedMemory> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut visited: HashSet<Oid> = HashSet::new();
        while let Some((secs, bi, oid)) = heap.pop() {
            if let (Some(limit), Some(Reverse(worst))) = (filter.limit, best.peek()) {
                if best.len() >= limit && secs < to_secs(*worst) - 1 {
                    break;
                }
            }
            if let Some(s) = since_secs {
                if secs < s - 1 {
                    continue; // this branch has nothing newer further down
                }
            }
            if !visited.insert(oid) {
                continue;
            }
            let (owner, _) = branches[bi];
            let commit = repo.find_commit(oid)?;
            let parent = if commit.parent_count() > 0 {
                Some(commit.parent(0)?)
            } else {
                None
            };
            let parent_tree = parent.as_ref().map(|p| p.tree()).transpose()?;
            let changes = self.diff_trees(parent_tree.as_ref(), &commit.tree()?)?;
            let branch = format!("users/{}", owner.to_hex());
            for ch in changes {
                let Change::Added { path, id, blob } = ch else {
                    continue;
                };
                if seen.contains(&id) {
                    continue;
                }
                let warn = |reason: String| Warning {
                    path: format!("{branch}:{path}"),
                    reason,
                };
                let um = match self
                    .read_blob(blob, MAX_MEMORY_FILE_BYTES)
                    .and_then(|d| UnverifiedMemory::from_json(&d))
                {
                    Ok(m) => m,
                    Err(e) => {
                        result.warnings.push(warn(e.to_string()));
                        continue;
                    }
                };
                if !filter.matches(&um) {
                    continue;
                }
                if um.id != id {
                    result.warnings.push(warn(format!(
                        "file name does not match the memory id {}",
                        um.id
                    )));
                    continue;
                }
                if um.author != owner {
                    result.warnings.push(warn(format!(
                        "memory by {} on a branch it does not own",
                        um.author
                    )));
                    continue;
                }
                match um.verify() {
                    Ok(vm) => {
                        seen.insert(id);
                        let t = vm.created_time();
                        if let Some(limit) = filter.limit {
                            best.push(Reverse(t));
                            if best.len() > limit {
                                best.pop();
                            }
                        }
                        found.push(vm);
                    }
                    Err(e) => result.warnings.push(warn(e.to_string())),
                }
            }
            if let Some(p) = parent {
                heap.push((commit_secs(&p), bi, p.id()));
            }
        }
        found.sort_by(|a, b| {
            b.created_time()
                .cmp(&a.created_time())
                .then_with(|| a.id().cmp(b.id()))
        });
        if let Some(limit) = filter.limit {
            found.truncate(limit);
        }
        result.memories = found;
        Ok(result)
    }
}
