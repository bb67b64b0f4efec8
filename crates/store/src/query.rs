//! Recall: memories across every branch, newest first, with filters.

use std::collections::HashSet;
use std::time::SystemTime;

use mmogit_identity::PublicKey;

use crate::index::Entry;
use crate::memory::{MemoryType, UnverifiedMemory, VerifiedMemory, MAX_MEMORY_FILE_BYTES};
use crate::repo::Store;
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
    /// Only memories after this one in recall order (newest first, then by
    /// id): the cursor of the next page, costing O(page) to resume.
    pub after: Option<RecallKey>,
    /// Refuse (InvalidQuery) a query that more memories match than this:
    /// each one is sorted (default: no limit).
    pub max_matches: Option<usize>,
}

/// A memory's place in recall order: `created_at` in microseconds since
/// the Unix epoch, then the id. Written `<t>.<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallKey {
    pub t: i64,
    pub id: String,
}

impl std::fmt::Display for RecallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.t, self.id)
    }
}

impl std::str::FromStr for RecallKey {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<RecallKey, StoreError> {
        let bad = || StoreError::InvalidQuery(format!("bad recall key {s:?}"));
        let (t, id) = s.split_once('.').ok_or_else(bad)?;
        if id.len() != 64 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        Ok(RecallKey {
            t: t.parse().map_err(|_| bad())?,
            id: id.to_string(),
        })
    }
}

impl RecallKey {
    /// True when `(t, id)` comes after this key in recall order.
    fn precedes(&self, t: i64, id: &str) -> bool {
        t < self.t || (t == self.t && id > self.id.as_str())
    }
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
    /// The recall key of each memory, in the same order (for cursors).
    pub keys: Vec<RecallKey>,
    /// Files that failed to parse or verify; they are never returned as memories.
    pub warnings: Vec<Warning>,
}

impl Filter {
    /// The conditions that the index can check without reading the memory.
    fn matches_entry(&self, e: &Entry) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&e.k))
            && self.tags.iter().all(|t| e.g.contains(t))
            && self
                .min_confidence
                .is_none_or(|min| e.c.is_some_and(|c| c >= min))
            && self.since.is_none_or(|s| e.created() >= s)
            && self.after.as_ref().is_none_or(|k| k.precedes(e.t, &e.id))
    }
}

/// How many candidates are read and verified together (batch verification).
const VERIFY_CHUNK: usize = 256;

impl Store {
    /// Memories on every `users/*` branch that pass `filter`, newest first,
    /// each read from git and verified (signature, id, author owns the
    /// branch) before it is returned.
    ///
    /// Candidates come from the recall index (derived, untrusted metadata,
    /// brought up to date with the branch tips first), so a limited recall
    /// reads only about `limit` memories. Files that cannot be memories are
    /// reported as warnings and never returned.
    pub fn recall(&self, filter: &Filter) -> Result<RecallResult, StoreError> {
        let mut branches = self.branches()?;
        if !filter.authors.is_empty() {
            branches.retain(|(pk, _)| filter.authors.contains(pk));
        }
        let indexes = self.branch_indexes(&branches)?;
        let mut result = RecallResult::default();
        let mut candidates: Vec<(&Entry, &PublicKey)> = Vec::new();
        for ((owner, _), bi) in branches.iter().zip(&indexes) {
            let branch = format!("users/{}", owner.to_hex());
            for b in &bi.bad {
                result.warnings.push(Warning {
                    path: format!("{branch}:{}", b.path),
                    reason: b.reason.clone(),
                });
            }
            candidates.extend(
                bi.entries
                    .iter()
                    .filter(|e| filter.matches_entry(e))
                    .map(|e| (e, owner)),
            );
        }
        if let Some(max) = filter.max_matches {
            if candidates.len() > max {
                return Err(StoreError::InvalidQuery(format!(
                    "{} memories match, more than the limit of {max}: narrow the query (authors, types, tags, since)",
                    candidates.len()
                )));
            }
        }
        candidates.sort_by(|a, b| b.0.t.cmp(&a.0.t).then_with(|| a.0.id.cmp(&b.0.id)));
        let want = filter.limit.unwrap_or(usize::MAX);
        let mut seen: HashSet<&str> = HashSet::new();
        let mut rest = candidates.as_slice();
        while result.memories.len() < want && !rest.is_empty() {
            let n = (want - result.memories.len())
                .clamp(1, VERIFY_CHUNK)
                .min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let mut parsed = Vec::with_capacity(n);
            let mut keys = Vec::with_capacity(n);
            for (e, owner) in chunk {
                if !seen.insert(e.id.as_str()) {
                    continue;
                }
                let warn = |reason: String| Warning {
                    path: format!("users/{}:{}", owner.to_hex(), e.p),
                    reason,
                };
                let um = git2::Oid::from_str(&e.b)
                    .map_err(StoreError::from)
                    .and_then(|b| self.read_blob(b, MAX_MEMORY_FILE_BYTES))
                    .and_then(|d| UnverifiedMemory::from_json(&d));
                match um {
                    Ok(m) if m.id == e.id && m.author == **owner => {
                        if filter.matches(&m) {
                            parsed.push((m, warn(String::new())));
                            keys.push(RecallKey {
                                t: e.t,
                                id: e.id.clone(),
                            });
                        }
                    }
                    Ok(_) => result
                        .warnings
                        .push(warn("the file changed since it was indexed".into())),
                    Err(err) => result.warnings.push(warn(err.to_string())),
                }
            }
            let (items, places): (Vec<_>, Vec<_>) = parsed.into_iter().unzip();
            for ((r, mut place), key) in UnverifiedMemory::verify_many(items)
                .into_iter()
                .zip(places)
                .zip(keys)
            {
                match r {
                    Ok(vm) => {
                        result.memories.push(vm);
                        result.keys.push(key);
                    }
                    Err(err) => {
                        place.reason = err.to_string();
                        result.warnings.push(place);
                    }
                }
            }
        }
        result.memories.truncate(want);
        result.keys.truncate(want);
        Ok(result)
    }
}
