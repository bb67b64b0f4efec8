//! Full-text search: ranked recall (BM25, SQLite FTS5) over every branch.
//!
//! The search index is derived data in the repository directory
//! (`memories.git/mmogit/search.sqlite`, mode 0600), never on a branch and
//! never synced. Like the recall index it follows the branch tips: it stores
//! the tip each branch was indexed at, and before every search the tree of
//! that tip is compared with the tree of the current tip, so only new memory
//! files are read (a rewritten history is handled the same way: files that
//! disappeared are dropped, new ones are added). A branch whose indexed tip
//! no longer exists is indexed again from scratch. A missing file is built;
//! a corrupt one is deleted (with a log line) and built again.
//!
//! Nothing in the index is trusted. Every hit is read from git and verified
//! (signature, id, the author owns the branch) before it is returned, and the
//! text that was indexed for it must be exactly the verified memory's text,
//! so the index can neither invent a memory nor put words in a real one.
//!
//! Private memories: the reader's own are indexed decrypted (the index is the
//! reader's, in the reader's home); anyone else's are indexed by their tags
//! and metadata only, never their content.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use git2::{Oid, Repository, Tree};
use mmogit_identity::{Identity, PublicKey};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use serde::Deserialize;

use crate::memory::{
    memory_path, parse_time, MemoryType, UnverifiedMemory, VerifiedMemory, MAX_MEMORY_FILE_BYTES,
};
use crate::query::{Filter, Warning};
use crate::repo::{Change, Store};
use crate::StoreError;

/// Bumped whenever the layout of the index changes; an index of another
/// version is rebuilt.
const SCHEMA_VERSION: &str = "2";
/// Tokens around the matched words in a snippet.
const SNIPPET_TOKENS: i32 = 16;
/// How candidates are read and verified together.
const VERIFY_CHUNK: usize = 64;

/// Memories added in one index update from which the FTS5 index is merged
/// into one segment afterwards (a full build, a large import or sync).
const OPTIMIZE_AFTER: usize = 5_000;

/// The ranking: BM25, tags weighing half as much as the content.
const RANK: &str = "bm25(fts, 1.0, 0.5)";
/// Memory files parsed per batch while (re)indexing.
const PARSE_CHUNK: usize = 2048;

/// A ranked search: `text` is words and "quoted phrases"; `filter` narrows
/// the memories as in [`Store::recall`] (its `limit` bounds the hits).
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub text: String,
    pub filter: Filter,
}

/// One memory found by [`Store::search`].
#[derive(Debug, Clone)]
pub struct SearchHit {
    /// Read from git and verified.
    pub memory: VerifiedMemory,
    /// BM25 relevance (higher is better; only comparable within one search).
    pub score: f64,
    /// A short extract of the content around the matched words, marked with
    /// `**`; empty when the content is private and not the reader's.
    pub snippet: String,
}

/// What [`Store::search`] found.
#[derive(Debug, Default)]
pub struct SearchResult {
    /// Best first.
    pub hits: Vec<SearchHit>,
    /// Index entries whose memory could not be read or verified, or whose
    /// indexed text did not match the memory; they are never returned.
    pub warnings: Vec<Warning>,
    /// What bringing the index up to date took.
    pub update: IndexUpdate,
}

/// Work done to bring the search index up to date with the branch tips.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct IndexUpdate {
    /// The index was built from nothing (missing, corrupt, other reader or version).
    pub rebuilt: bool,
    /// Branches whose tip had moved (or were new, or were gone).
    pub branches: usize,
    /// Memories added to the index.
    pub added: usize,
    /// Index entries dropped (files no longer on their branch).
    pub removed: usize,
    /// Files on a branch that cannot be memories of that branch (not indexed).
    pub skipped: usize,
    /// Wall time of the update, including the check of the tips.
    #[serde(rename = "elapsed_ms", serialize_with = "as_millis")]
    pub elapsed: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// Turns user text into a safe FTS5 query: every word and every "quoted
/// phrase" becomes a quoted FTS5 string (so no user text is ever FTS5
/// syntax), joined with OR; BM25 ranks memories with more of them, and
/// rarer ones, first. Words without any letter or digit are dropped.
///
/// Errors: an unterminated `"`, or nothing left to search for.
pub fn fts_query(text: &str) -> Result<String, StoreError> {
    let mut terms: Vec<String> = Vec::new();
    let mut push = |t: &str| {
        let t = t.trim();
        if t.chars().any(char::is_alphanumeric) {
            terms.push(format!("\"{}\"", t.replace('"', "\"\"")));
        }
    };
    let mut rest = text;
    loop {
        match rest.find('"') {
            None => {
                rest.split_whitespace().for_each(&mut push);
                break;
            }
            Some(open) => {
                rest[..open].split_whitespace().for_each(&mut push);
                let after = &rest[open + 1..];
                let Some(close) = after.find('"') else {
                    return Err(StoreError::InvalidQuery(format!(
                        "unterminated phrase in `{text}`: close it with \""
                    )));
                };
                push(&after[..close]);
                rest = &after[close + 1..];
            }
        }
    }
    if terms.is_empty() {
        return Err(StoreError::InvalidQuery(format!(
            "`{text}` has no words to search for"
        )));
    }
    Ok(terms.join(" OR "))
}

/// Errors inside the index code: SQLite ones may mean a corrupt file.
enum Fail {
    Store(StoreError),
    Sql(rusqlite::Error),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}
impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Fail {
        Fail::Sql(e)
    }
}
impl From<git2::Error> for Fail {
    fn from(e: git2::Error) -> Fail {
        Fail::Store(e.into())
    }
}

impl Fail {
    fn is_corrupt(&self) -> bool {
        matches!(self, Fail::Sql(e) if matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        ))
    }

    fn into_store(self, path: &Path) -> StoreError {
        match self {
            Fail::Store(e) => e,
            Fail::Sql(e) => StoreError::SearchIndex(format!("{}: {e}", path.display())),
        }
    }
}

/// The memory record as the indexer reads it: no key or signature parsing
/// (nothing here is trusted; hits are verified when they are returned).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {
    #[allow(dead_code)]
    version: u32,
    id: String,
    author: String,
    created_at: String,
    #[serde(rename = "type")]
    kind: MemoryType,
    content: String,
    tags: Vec<String>,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(default)]
    private: bool,
    #[allow(dead_code)]
    signature: serde::de::IgnoredAny,
}

/// One memory file, ready to be inserted.
struct Doc {
    id: String,
    blob: Oid,
    t: i64,
    kind: MemoryType,
    tags: Vec<String>,
    confidence: Option<f64>,
    /// The text indexed as content (decrypted for the reader's own private
    /// memories, empty for other private ones).
    text: String,
}

/// Tags as stored for filtering: `\x1f` around each (tags have no control characters).
fn tag_key(tags: &[String]) -> String {
    let mut s = String::from("\x1f");
    for t in tags {
        s.push_str(t);
        s.push('\x1f');
    }
    s
}

fn micros(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_micros().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_micros().min(i64::MAX as u128) as i64),
    }
}

/// The text of a memory as it is indexed for `reader`.
fn indexed_text(
    content: &str,
    private: bool,
    author: &PublicKey,
    reader: Option<&Identity>,
) -> Option<String> {
    if !private {
        return Some(content.to_string());
    }
    match reader {
        Some(r) if r.public_key() == *author => {
            use base64::Engine;
            let ct = base64::engine::general_purpose::STANDARD
                .decode(content)
                .ok()?;
            String::from_utf8(r.decrypt_private(&ct).ok()?).ok()
        }
        _ => Some(String::new()),
    }
}

/// Reads and parses one memory file for the index; Err is why it is skipped.
fn parse_doc(
    repo: &Repository,
    owner: &PublicKey,
    owner_hex: &str,
    id: &str,
    blob: Oid,
    reader: Option<&Identity>,
) -> Result<Doc, String> {
    let b = repo.find_blob(blob).map_err(|e| e.to_string())?;
    let data = b.content();
    if data.len() > MAX_MEMORY_FILE_BYTES {
        return Err(format!("memory file is {} bytes", data.len()));
    }
    let m: RawMemory = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    if m.id != id {
        return Err(format!("file name does not match the memory id {}", m.id));
    }
    if m.author != owner_hex {
        return Err(format!(
            "memory by {} on a branch it does not own",
            m.author
        ));
    }
    let t = parse_time(&m.created_at).map_err(|e| e.to_string())?;
    let text = indexed_text(&m.content, m.private, owner, reader)
        .ok_or_else(|| "private content that does not decrypt".to_string())?;
    Ok(Doc {
        id: m.id,
        blob,
        t: micros(t),
        kind: m.kind,
        tags: m.tags,
        confidence: m.confidence,
        text,
    })
}

/// Parses `items` (id, blob) on up to 2 threads, each with its own handle on
/// the repository. Results are in input order.
fn parse_docs(
    repo_path: &Path,
    main: &Repository,
    owner: &PublicKey,
    items: &[(String, Oid)],
    reader: Option<&Identity>,
) -> Vec<Result<Doc, String>> {
    let owner_hex = owner.to_hex();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(2);
    let one = |repo: &Repository, part: &[(String, Oid)]| -> Vec<Result<Doc, String>> {
        part.iter()
            .map(|(id, blob)| parse_doc(repo, owner, &owner_hex, id, *blob, reader))
            .collect()
    };
    if threads < 2 || items.len() < 256 {
        return one(main, items);
    }
    let (a, b) = items.split_at(items.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| match Repository::open_bare(repo_path) {
            Ok(r) => one(&r, b),
            Err(e) => b.iter().map(|_| Err(e.to_string())).collect(),
        });
        let mut out = one(main, a);
        out.extend(other.join().expect("parser thread"));
        out
    })
}

fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS branches(
             rowid INTEGER PRIMARY KEY, owner TEXT NOT NULL UNIQUE, tip TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS docs(
             rowid INTEGER PRIMARY KEY,
             branch INTEGER NOT NULL,
             id TEXT NOT NULL,
             blob TEXT NOT NULL,
             t INTEGER NOT NULL,
             kind TEXT NOT NULL,
             tags TEXT NOT NULL,
             conf REAL,
             UNIQUE(branch, id));
         CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
             content, tags, tokenize = 'porter unicode61 remove_diacritics 2');",
    )
}

/// Opens (creating if needed, mode 0600) the index file.
fn open_db(path: &Path) -> Result<Connection, Fail> {
    let dir = path.parent().expect("index path has a parent");
    let io = |source| {
        Fail::Store(StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    {
        let mut o = std::fs::OpenOptions::new();
        o.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let f = o.open(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = f.metadata().map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
        }
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    // Deleted rows (a private memory's decrypted text among them) are
    // overwritten, not left in free pages.
    conn.execute_batch(
        // WAL with synchronous=NORMAL: no fsync per transaction, but the
        // WAL is synced before each checkpoint, so a power loss can only
        // lose the last updates (and the tips they were made for: they are
        // redone), never leave a damaged index. (With OFF a power loss could
        // leave one that looks whole and silently misses memories.) Every
        // hit is checked in git anyway.
        "PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY; PRAGMA secure_delete=ON;",
    )?;
    Ok(conn)
}

/// Opens the index for `reader`. An index of another schema version or
/// built for another reader (whose decrypted memories must not stay) is
/// deleted first. Returns whether the index starts empty.
fn open_for(path: &Path, reader: &str) -> Result<(Connection, bool), Fail> {
    let conn = open_db(path)?;
    if !has_table(&conn, "meta")? {
        return Ok((conn, true));
    }
    if meta(&conn, "version")?.as_deref() == Some(SCHEMA_VERSION)
        && meta(&conn, "reader")?.as_deref() == Some(reader)
    {
        return Ok((conn, false));
    }
    drop(conn);
    tracing::info!(path = %path.display(), "search index is for another reader or version; rebuilding it");
    remove_index_files(path);
    Ok((open_db(path)?, true))
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn reader_key(reader: Option<&Identity>) -> String {
    reader.map(|r| r.public_key().to_hex()).unwrap_or_default()
}

fn remove_index_files(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

impl Store {
    /// Where the search index of this repository lives.
    pub fn search_index_path(&self) -> PathBuf {
        self.path().join("mmogit").join("search.sqlite")
    }

    /// Ranked full-text search over every `users/*` branch (BM25, best
    /// first), combined with `query.filter`. The index is brought up to date
    /// with the branch tips first. Every hit is read from git and verified
    /// before it is returned; index entries that do not verify are reported
    /// as warnings. `reader` is the home's identity: its own private
    /// memories are searchable, nobody else's content is.
    ///
    /// Errors: [`StoreError::InvalidQuery`] for a query with nothing to
    /// search for or an unterminated phrase.
    pub fn search(
        &self,
        query: &SearchQuery,
        reader: Option<&Identity>,
    ) -> Result<SearchResult, StoreError> {
        let fts = fts_query(&query.text)?;
        self.with_index(reader, |conn, update| {
            self.search_in(conn, &fts, &query.filter, reader, update)
        })
    }

    /// Brings the search index up to date with the branch tips (what every
    /// search does first) and says what that took.
    pub fn update_search_index(
        &self,
        reader: Option<&Identity>,
    ) -> Result<IndexUpdate, StoreError> {
        self.with_index(reader, |_, update| Ok(update))
    }

    /// Deletes the search index and builds it again from every branch.
    pub fn reindex_search(&self, reader: Option<&Identity>) -> Result<IndexUpdate, StoreError> {
        remove_index_files(&self.search_index_path());
        let mut u = self.update_search_index(reader)?;
        u.rebuilt = true;
        Ok(u)
    }

    /// Opens the index, updates it and runs `f`; a corrupt index is deleted
    /// and rebuilt once.
    fn with_index<T>(
        &self,
        reader: Option<&Identity>,
        f: impl Fn(&Connection, IndexUpdate) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let path = self.search_index_path();
        let attempt = || -> Result<T, Fail> {
            let (mut conn, fresh) = open_for(&path, &reader_key(reader))?;
            let mut update = self.sync_index(&mut conn, reader)?;
            update.rebuilt |= fresh;
            f(&conn, update)
        };
        match attempt() {
            Ok(v) => Ok(v),
            Err(e) if e.is_corrupt() => {
                let Fail::Sql(err) = &e else { unreachable!() };
                tracing::warn!(
                    path = %path.display(),
                    error = %err,
                    "search index is corrupt; deleting and rebuilding it"
                );
                remove_index_files(&path);
                attempt().map_err(|e| e.into_store(&path))
            }
            Err(e) => Err(e.into_store(&path)),
        }
    }

    /// Compares the indexed tip of every branch with the current one and
    /// indexes what changed.
    fn sync_index(
        &self,
        conn: &mut Connection,
        reader: Option<&Identity>,
    ) -> Result<IndexUpdate, Fail> {
        let started = Instant::now();
        let branches = self.branches()?;
        let want_reader = reader_key(reader);
        let current = |conn: &Connection| -> Result<bool, Fail> {
            let ok_meta = meta(conn, "version")
                .ok()
                .flatten()
                .is_some_and(|v| v == SCHEMA_VERSION)
                && meta(conn, "reader").ok().flatten().as_deref() == Some(want_reader.as_str());
            if !ok_meta {
                return Ok(false);
            }
            let stored = stored_tips(conn)?;
            Ok(stored.len() == branches.len()
                && branches.iter().all(|(pk, tip)| {
                    stored
                        .get(&pk.to_hex())
                        .is_some_and(|(_, t)| *t == tip.to_string())
                }))
        };
        // The common case, without taking the write lock.
        if matches!(current(conn), Ok(true)) {
            return Ok(IndexUpdate {
                elapsed: started.elapsed(),
                ..IndexUpdate::default()
            });
        }
        let checked = started.elapsed();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut update = IndexUpdate::default();
        if !has_table(&tx, "meta")? {
            create_schema(&tx)?;
        }
        let ok_meta = meta(&tx, "version")?.as_deref() == Some(SCHEMA_VERSION)
            && meta(&tx, "reader")?.as_deref() == Some(want_reader.as_str());
        if !ok_meta {
            // Blank, or changed by another process since it was opened:
            // start from nothing.
            tx.execute_batch("DELETE FROM docs; DELETE FROM fts; DELETE FROM branches;")?;
            tx.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('version', ?1), ('reader', ?2)",
                params![SCHEMA_VERSION, want_reader],
            )?;
            // A blank index: this update is a full build.
            update.rebuilt = true;
        }
        let stored = stored_tips(&tx)?;
        for (owner, tip) in &branches {
            let key = owner.to_hex();
            let (branch_row, old_tree) = match stored.get(&key) {
                Some((_, t)) if *t == tip.to_string() => continue,
                Some((row, t)) => {
                    let old = Oid::from_str(t)
                        .ok()
                        .and_then(|o| self.git().find_commit(o).ok())
                        .and_then(|c| c.tree().ok());
                    if old.is_none() {
                        tracing::info!(branch = %owner.short(12), "indexed tip is gone; indexing the branch again");
                        update.removed += delete_branch_docs(&tx, *row)?;
                    }
                    (*row, old)
                }
                None => {
                    tx.execute("INSERT INTO branches(owner, tip) VALUES (?1, '')", [&key])?;
                    (tx.last_insert_rowid(), None)
                }
            };
            update.branches += 1;
            let new_tree = self.git().find_commit(*tip)?.tree()?;
            self.index_changes(
                &tx,
                branch_row,
                owner,
                old_tree.as_ref(),
                &new_tree,
                reader,
                &mut update,
            )?;
            tx.execute(
                "UPDATE branches SET tip = ?1 WHERE rowid = ?2",
                params![tip.to_string(), branch_row],
            )?;
        }
        // Branches that no longer exist.
        for (key, (row, _)) in &stored {
            if !branches.iter().any(|(pk, _)| pk.to_hex() == *key) {
                update.branches += 1;
                update.removed += delete_branch_docs(&tx, *row)?;
                tx.execute("DELETE FROM branches WHERE rowid = ?1", [row])?;
            }
        }
        let indexed = started.elapsed();
        tx.commit()?;
        if update.added >= OPTIMIZE_AFTER {
            // Many new rows arrive as many FTS5 segments, and every query
            // opens an iterator per term per segment: merge them into one
            // (0.4 s for 100,000 memories).
            conn.execute("INSERT INTO fts(fts) VALUES ('optimize')", [])?;
        }
        update.elapsed = started.elapsed();
        tracing::debug!(
            check_ms = checked.as_secs_f64() * 1e3,
            index_ms = (indexed - checked).as_secs_f64() * 1e3,
            commit_ms = (update.elapsed - indexed).as_secs_f64() * 1e3,
            "search index update phases"
        );
        tracing::info!(
            branches = update.branches,
            added = update.added,
            removed = update.removed,
            ms = update.elapsed.as_secs_f64() * 1e3,
            "search index updated"
        );
        Ok(update)
    }

    /// Applies the differences between two trees of `owner`'s branch.
    #[allow(clippy::too_many_arguments)]
    fn index_changes(
        &self,
        tx: &Connection,
        branch_row: i64,
        owner: &PublicKey,
        old: Option<&Tree>,
        new: &Tree,
        reader: Option<&Identity>,
        update: &mut IndexUpdate,
    ) -> Result<(), Fail> {
        let mut added: Vec<(String, Oid)> = Vec::new();
        for ch in self.diff_trees(old, new)? {
            match ch {
                Change::Added { id, blob, .. } => added.push((id, blob)),
                Change::Modified { path } => {
                    // Not a valid history (verify reports it); index what is there now.
                    update.removed += delete_path(tx, branch_row, &path)?;
                    if let Ok(e) = new.get_path(Path::new(&path)) {
                        let id = path
                            .rsplit('/')
                            .next()
                            .and_then(|f| f.strip_suffix(".json"))
                            .unwrap_or_default()
                            .to_string();
                        added.push((id, e.id()));
                    }
                }
                Change::Deleted { path } => update.removed += delete_path(tx, branch_row, &path)?,
                Change::Foreign { .. } => update.skipped += 1,
            }
        }
        let mut ins_doc = tx.prepare(
            "INSERT OR REPLACE INTO docs(branch, id, blob, t, kind, tags, conf)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut ins_fts =
            tx.prepare("INSERT INTO fts(rowid, content, tags) VALUES (?1, ?2, ?3)")?;
        let mut del_fts = tx.prepare("DELETE FROM fts WHERE rowid = ?1")?;
        let mut old_row = tx.prepare("SELECT rowid FROM docs WHERE branch = ?1 AND id = ?2")?;
        let fresh = old.is_none();
        let mut insert =
            |chunk: &[(String, Oid)], docs: Vec<Result<Doc, String>>| -> Result<(), Fail> {
                for ((id, _), doc) in chunk.iter().zip(docs) {
                    let doc = match doc {
                        Ok(d) => d,
                        Err(reason) => {
                            tracing::debug!(branch = %owner.short(12), id, reason, "not indexed");
                            update.skipped += 1;
                            continue;
                        }
                    };
                    if !fresh {
                        if let Some(r) = old_row
                            .query_row(params![branch_row, doc.id], |r| r.get::<_, i64>(0))
                            .optional()?
                        {
                            del_fts.execute([r])?;
                        }
                    }
                    ins_doc.execute(params![
                        branch_row,
                        doc.id,
                        doc.blob.to_string(),
                        doc.t,
                        doc.kind.as_str(),
                        tag_key(&doc.tags),
                        doc.confidence
                    ])?;
                    let row = tx.last_insert_rowid();
                    ins_fts.execute(params![row, doc.text, doc.tags.join(" ")])?;
                    update.added += 1;
                }
                Ok(())
            };
        if added.len() < 2 * PARSE_CHUNK {
            return insert(
                &added,
                parse_docs(self.path(), self.git(), owner, &added, reader),
            );
        }
        // Many files: one thread reads and parses the next chunk while this
        // one inserts the previous.
        let (send, recv) = std::sync::mpsc::sync_channel::<Vec<Result<Doc, String>>>(2);
        let path = self.path();
        let added = &added;
        std::thread::scope(|s| {
            // Owned here, so an insert error drops it and the parser stops.
            let recv = recv;
            s.spawn(move || {
                let repo = Repository::open_bare(path);
                let owner_hex = owner.to_hex();
                for chunk in added.chunks(PARSE_CHUNK) {
                    let docs = chunk
                        .iter()
                        .map(|(id, blob)| match &repo {
                            Ok(r) => parse_doc(r, owner, &owner_hex, id, *blob, reader),
                            Err(e) => Err(e.to_string()),
                        })
                        .collect();
                    if send.send(docs).is_err() {
                        break;
                    }
                }
            });
            for (chunk, docs) in added.chunks(PARSE_CHUNK).zip(recv.iter()) {
                insert(chunk, docs)?;
            }
            Ok(())
        })
    }

    /// Ranks the matches (with the filter), then reads and verifies hits
    /// in rank order until `limit` are found.
    ///
    /// Two steps: the ranking query reads only rowids and scores, so the
    /// snippet and the text are computed for the rows actually read. (FTS5's
    /// own `ORDER BY rank` with configured weights took twice as long as
    /// ranking by `bm25()` with the same weights, and joining `docs` for
    /// every match when no filter needs it cost another 40 %.)
    fn search_in(
        &self,
        conn: &Connection,
        fts: &str,
        filter: &Filter,
        reader: Option<&Identity>,
        update: IndexUpdate,
    ) -> Result<SearchResult, Fail> {
        let needs_docs = !filter.kinds.is_empty()
            || !filter.authors.is_empty()
            || !filter.tags.is_empty()
            || filter.since.is_some()
            || filter.min_confidence.is_some();
        let mut sql = format!("SELECT fts.rowid, {RANK} AS score FROM fts");
        if needs_docs {
            sql.push_str(
                " JOIN docs d ON d.rowid = fts.rowid JOIN branches b ON b.rowid = d.branch",
            );
        }
        sql.push_str(" WHERE fts MATCH ?1");
        let mut args: Vec<rusqlite::types::Value> = vec![fts.to_string().into()];
        let mut arg = |v: rusqlite::types::Value| {
            args.push(v);
            format!("?{}", args.len())
        };
        if !filter.kinds.is_empty() {
            let list: Vec<String> = filter
                .kinds
                .iter()
                .map(|k| arg(k.as_str().to_string().into()))
                .collect();
            sql.push_str(&format!(" AND d.kind IN ({})", list.join(", ")));
        }
        if !filter.authors.is_empty() {
            let list: Vec<String> = filter
                .authors
                .iter()
                .map(|a| arg(a.to_hex().into()))
                .collect();
            sql.push_str(&format!(" AND b.owner IN ({})", list.join(", ")));
        }
        for t in &filter.tags {
            let p = arg(format!("\x1f{t}\x1f").into());
            sql.push_str(&format!(" AND instr(d.tags, {p}) > 0"));
        }
        if let Some(since) = filter.since {
            let p = arg(micros(since).into());
            sql.push_str(&format!(" AND d.t >= {p}"));
        }
        if let Some(min) = filter.min_confidence {
            let p = arg(min.into());
            sql.push_str(&format!(" AND d.conf >= {p}"));
        }
        sql.push_str(" ORDER BY score, fts.rowid");
        let page_arg = arg(0i64.into());
        let offset_arg = arg(0i64.into());
        sql.push_str(&format!(" LIMIT {page_arg} OFFSET {offset_arg}"));
        let (page_i, offset_i) = (args.len() - 2, args.len() - 1);
        let mut rank_stmt = conn.prepare(&sql)?;
        let mut row_stmt = conn.prepare(
            "SELECT b.owner, d.id, d.blob, snippet(fts, 0, '**', '**', '…', ?2),
                    fts.content, fts.tags
             FROM fts JOIN docs d ON d.rowid = fts.rowid JOIN branches b ON b.rowid = d.branch
             WHERE fts MATCH ?1 AND fts.rowid = ?3",
        )?;

        let want = filter.limit.unwrap_or(usize::MAX);
        let mut result = SearchResult {
            update,
            ..SearchResult::default()
        };
        // Candidates a page: a few more than needed, as some may fail
        // verification or the filter; more pages only if they did.
        let mut page = want.saturating_add(16).min(i64::MAX as usize);
        let mut offset = 0usize;
        loop {
            args[page_i] = (page as i64).into();
            args[offset_i] = (offset as i64).into();
            let ranked: Vec<(i64, f64)> = rank_stmt
                .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            let full_page = ranked.len() == page;
            let mut batch: Vec<Candidate> = Vec::new();
            for (rowid, rank) in ranked {
                let mut rows = row_stmt.query(rusqlite::params![fts, SNIPPET_TOKENS, rowid])?;
                if let Some(r) = rows.next()? {
                    batch.push(Candidate {
                        owner: r.get(0)?,
                        id: r.get(1)?,
                        blob: r.get(2)?,
                        score: -rank,
                        snippet: r.get(3)?,
                        content: r.get(4)?,
                        tags: r.get(5)?,
                    });
                }
                let need = (want - result.hits.len()).clamp(1, VERIFY_CHUNK);
                if batch.len() >= need {
                    self.verify_candidates(std::mem::take(&mut batch), filter, reader, &mut result);
                    if result.hits.len() >= want {
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                self.verify_candidates(batch, filter, reader, &mut result);
            }
            if result.hits.len() >= want || !full_page {
                break;
            }
            offset += page;
            page = page.saturating_mul(2).min(i64::MAX as usize);
        }
        result.hits.truncate(want);
        Ok(result)
    }

    fn verify_candidates(
        &self,
        batch: Vec<Candidate>,
        filter: &Filter,
        reader: Option<&Identity>,
        result: &mut SearchResult,
    ) {
        let mut parsed = Vec::new();
        let mut kept = Vec::new();
        for c in batch {
            let warn = |reason: String| Warning {
                path: format!("users/{}:{}", c.owner, memory_path_safe(&c.id)),
                reason,
            };
            let owner: Option<PublicKey> = c.owner.parse().ok();
            let um = Oid::from_str(&c.blob)
                .map_err(StoreError::from)
                .and_then(|b| self.read_blob(b, MAX_MEMORY_FILE_BYTES))
                .and_then(|d| UnverifiedMemory::from_json(&d));
            match um {
                Ok(m) if m.id == c.id && Some(m.author) == owner => {
                    parsed.push(m);
                    kept.push(c);
                }
                Ok(_) => result
                    .warnings
                    .push(warn("the search index does not match the file".into())),
                Err(e) => result.warnings.push(warn(e.to_string())),
            }
        }
        for (r, c) in UnverifiedMemory::verify_many(parsed).into_iter().zip(kept) {
            let warn = |reason: String| Warning {
                path: format!("users/{}:{}", c.owner, memory_path_safe(&c.id)),
                reason,
            };
            let vm = match r {
                Ok(vm) => vm,
                Err(e) => {
                    result.warnings.push(warn(e.to_string()));
                    continue;
                }
            };
            // The index must not put words in a real memory's mouth.
            let text = indexed_text(vm.stored_content(), vm.is_private(), vm.author(), reader);
            if text.as_deref() != Some(c.content.as_str()) || vm.tags().join(" ") != c.tags {
                result.warnings.push(warn(
                    "the search index does not match the memory (run `mmogit reindex`)".into(),
                ));
                continue;
            }
            if !filter.matches(vm.record()) {
                continue;
            }
            result.hits.push(SearchHit {
                memory: vm,
                score: c.score,
                snippet: c.snippet,
            });
        }
    }
}

/// A row of the index, not trusted yet.
struct Candidate {
    owner: String,
    id: String,
    blob: String,
    score: f64,
    snippet: String,
    content: String,
    tags: String,
}

fn memory_path_safe(id: &str) -> String {
    if id.len() >= 2 && id.is_char_boundary(2) {
        memory_path(id)
    } else {
        format!("memories/{id}")
    }
}

fn stored_tips(conn: &Connection) -> Result<HashMap<String, (i64, String)>, Fail> {
    let mut stmt = conn.prepare("SELECT owner, rowid, tip FROM branches")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn delete_branch_docs(tx: &Connection, branch_row: i64) -> Result<usize, Fail> {
    tx.execute(
        "DELETE FROM fts WHERE rowid IN (SELECT rowid FROM docs WHERE branch = ?1)",
        [branch_row],
    )?;
    Ok(tx.execute("DELETE FROM docs WHERE branch = ?1", [branch_row])?)
}

/// Drops the entries under `path` (a memory file, a shard or `memories`).
fn delete_path(tx: &Connection, branch_row: i64, path: &str) -> Result<usize, Fail> {
    let cond = if let Some(file) = path.strip_prefix("memories/").filter(|p| p.contains('/')) {
        let id = file
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".json"))
            .unwrap_or_default();
        ("id = ?2", id.to_string())
    } else if let Some(shard) = path.strip_prefix("memories/") {
        ("substr(id, 1, 2) = ?2", shard.to_string())
    } else if path == "memories" {
        ("?2 = ?2", String::new())
    } else {
        return Ok(0);
    };
    tx.execute(
        &format!(
            "DELETE FROM fts WHERE rowid IN (SELECT rowid FROM docs WHERE branch = ?1 AND {})",
            cond.0
        ),
        params![branch_row, cond.1],
    )?;
    Ok(tx.execute(
        &format!("DELETE FROM docs WHERE branch = ?1 AND {}", cond.0),
        params![branch_row, cond.1],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_always_quoted() {
        assert_eq!(fts_query("rust borrow").unwrap(), r#""rust" OR "borrow""#);
        assert_eq!(
            fts_query(r#"the "borrow checker" ok"#).unwrap(),
            r#""the" OR "borrow checker" OR "ok""#
        );
        assert_eq!(
            fts_query("NEAR(a b) OR c* -d col:x").unwrap(),
            r#""NEAR(a" OR "b)" OR "OR" OR "c*" OR "-d" OR "col:x""#
        );
        assert_eq!(fts_query("a\"\"b").unwrap(), r#""a" OR "b""#);
        assert!(matches!(fts_query("  "), Err(StoreError::InvalidQuery(_))));
        assert!(matches!(
            fts_query("!! ?"),
            Err(StoreError::InvalidQuery(_))
        ));
        assert!(matches!(
            fts_query("\"\""),
            Err(StoreError::InvalidQuery(_))
        ));
        assert!(matches!(
            fts_query("open \"phrase"),
            Err(StoreError::InvalidQuery(_))
        ));
    }
}
