//! Recall: memories across every branch, newest first, with filters.

use std::collections::HashSet;
use std::time::SystemTime;

use mmogit_identity::PublicKey;

use rusqlite::types::Value;
use rusqlite::Connection;

use crate::index::{memory_path_safe, micros, Fail, Reader};
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

/// How many candidates are read and verified together (batch verification).
const VERIFY_CHUNK: usize = 256;

/// A candidate row of the index, not trusted yet.
struct Candidate {
    owner: String,
    id: String,
    blob: String,
    t: i64,
}

impl Filter {
    /// The SQL conditions (and their arguments) the index can check without
    /// reading the memory: a superset of what [`Filter::matches`] keeps,
    /// which every memory read from git is checked with again.
    fn index_conditions(&self) -> (String, Vec<Value>) {
        let mut sql = String::from("1");
        let mut args: Vec<Value> = Vec::new();
        let mut arg = |v: Value| {
            args.push(v);
            format!("?{}", args.len())
        };
        let list = |ps: Vec<String>| ps.join(", ");
        if !self.authors.is_empty() {
            let ps = self
                .authors
                .iter()
                .map(|a| arg(a.to_hex().into()))
                .collect();
            sql.push_str(&format!(" AND b.owner IN ({})", list(ps)));
        }
        if !self.kinds.is_empty() {
            let ps = self
                .kinds
                .iter()
                .map(|k| arg(k.as_str().to_string().into()))
                .collect();
            sql.push_str(&format!(" AND d.kind IN ({})", list(ps)));
        }
        for t in &self.tags {
            let p = arg(format!("\x1f{t}\x1f").into());
            sql.push_str(&format!(" AND instr(d.tags, {p}) > 0"));
        }
        if let Some(min) = self.min_confidence {
            let p = arg(min.into());
            sql.push_str(&format!(" AND d.conf >= {p}"));
        }
        if let Some(since) = self.since {
            // Truncated to the microsecond as `t` is: never excludes a
            // memory created at or after `since`.
            let p = arg(micros(since).into());
            sql.push_str(&format!(" AND d.t >= {p}"));
        }
        if let Some(k) = &self.after {
            let (t, id) = (arg(k.t.into()), arg(k.id.clone().into()));
            sql.push_str(&format!(" AND (d.t < {t} OR (d.t = {t} AND d.id > {id}))"));
        }
        (sql, args)
    }
}

impl Store {
    /// Memories on every `users/*` branch that pass `filter`, newest first
    /// (then by id), each read from git and verified (signature, id, author
    /// owns the branch) before it is returned.
    ///
    /// Candidates come from the index (derived, untrusted metadata, brought
    /// up to date with the branch tips first, see [`Store::search`]), so a
    /// limited recall reads only about `limit` memories. Files that cannot
    /// be memories are reported as warnings and never returned.
    pub fn recall(&self, filter: &Filter) -> Result<RecallResult, StoreError> {
        self.with_index(Reader::Any, |conn, _| self.recall_in(conn, filter))
    }

    fn recall_in(&self, conn: &Connection, filter: &Filter) -> Result<RecallResult, Fail> {
        let mut result = RecallResult::default();
        let (cond, args) = filter.index_conditions();
        let owners = if filter.authors.is_empty() {
            String::from("1")
        } else {
            // The authors' conditions come first, numbered from 1.
            let ps: Vec<String> = (1..=filter.authors.len())
                .map(|i| format!("?{i}"))
                .collect();
            format!("b.owner IN ({})", ps.join(", "))
        };
        let mut bad = conn.prepare(&format!(
            "SELECT b.owner, bad.path, bad.reason FROM bad JOIN branches b ON b.rowid = bad.branch
             WHERE {owners} ORDER BY b.owner, bad.rowid"
        ))?;
        let author_args = &args[..filter.authors.len()];
        let rows = bad.query_map(rusqlite::params_from_iter(author_args), |r| {
            Ok(Warning {
                path: format!(
                    "users/{}:{}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?
                ),
                reason: r.get(2)?,
            })
        })?;
        for w in rows {
            result.warnings.push(w?);
        }
        let from = "FROM docs d JOIN branches b ON b.rowid = d.branch";
        if let Some(max) = filter.max_matches {
            let n: i64 = conn.query_row(
                &format!("SELECT count(*) {from} WHERE {cond}"),
                rusqlite::params_from_iter(&args),
                |r| r.get(0),
            )?;
            if n as u64 > max as u64 {
                return Err(Fail::Store(StoreError::InvalidQuery(format!(
                    "{n} memories match, more than the limit of {max}: narrow the query (authors, types, tags, since)"
                ))));
            }
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT b.owner, d.id, d.blob, d.t {from} WHERE {cond} ORDER BY d.t DESC, d.id"
        ))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(&args))?;
        let want = filter.limit.unwrap_or(usize::MAX);
        let mut seen: HashSet<String> = HashSet::new();
        let mut done = false;
        while result.memories.len() < want && !done {
            let n = (want - result.memories.len()).clamp(1, VERIFY_CHUNK);
            let mut chunk = Vec::with_capacity(n);
            while chunk.len() < n {
                match rows.next()? {
                    Some(r) => chunk.push(Candidate {
                        owner: r.get(0)?,
                        id: r.get(1)?,
                        blob: r.get(2)?,
                        t: r.get(3)?,
                    }),
                    None => {
                        done = true;
                        break;
                    }
                }
            }
            self.verify_recalled(chunk, filter, &mut seen, &mut result);
        }
        result.memories.truncate(want);
        result.keys.truncate(want);
        Ok(result)
    }

    /// Reads `chunk` from git and verifies it (in one batch); what passes
    /// and matches `filter` is added to `result`, in order.
    fn verify_recalled(
        &self,
        chunk: Vec<Candidate>,
        filter: &Filter,
        seen: &mut HashSet<String>,
        result: &mut RecallResult,
    ) {
        let mut parsed = Vec::with_capacity(chunk.len());
        let mut keys = Vec::with_capacity(chunk.len());
        for c in chunk {
            if !seen.insert(c.id.clone()) {
                continue;
            }
            let warn = |reason: String| Warning {
                path: format!("users/{}:{}", c.owner, memory_path_safe(&c.id)),
                reason,
            };
            let um = git2::Oid::from_str(&c.blob)
                .map_err(StoreError::from)
                .and_then(|b| self.read_blob(b, MAX_MEMORY_FILE_BYTES))
                .and_then(|d| UnverifiedMemory::from_json(&d));
            match um {
                Ok(m) if m.id == c.id && m.author.to_hex() == c.owner => {
                    if filter.matches(&m) {
                        parsed.push((m, warn(String::new())));
                        keys.push(RecallKey { t: c.t, id: c.id });
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
}
