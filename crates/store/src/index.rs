//! The index: derived, untrusted metadata and text of every memory on every
//! branch, in one SQLite file (`memories.git/mmogit/search.sqlite`, mode
//! 0600), never on a branch and never synced. [`Store::recall`] reads it so
//! that `recall --limit 20` reads and verifies 20 memories instead of all of
//! them; [`Store::search`] ranks its full-text part (FTS5).
//!
//! It follows the branch tips: it stores the tip each branch was indexed at,
//! and before every recall or search the commits since that tip (first
//! parents) are walked and the memory files they add are read, nothing
//! else. A branch whose indexed tip is no longer in its history (rewritten,
//! moved back) or no longer exists is indexed again from its root. Memories
//! are indexed as they were added: a file changed or deleted afterwards (not
//! a valid history: `verify` reports it) keeps its first version, which
//! recall still reads and verifies. A missing file is built; a corrupt one is
//! deleted (with a log line) and built again; one that cannot be written (a
//! read-only repository) is replaced by a temporary one in memory. The tips
//! and what was indexed for them change in one transaction, and a recall or
//! search reads the index in one snapshot whose tips are the branch tips it
//! saw (brought up to date again when another process moved it in between,
//! up to four times while the branches keep moving), so neither a crash nor
//! another process (a `sync`, a `remember`, a concurrent recall updating the
//! index) makes it answer from a half-updated index, or from one older than
//! the branches it read.
//!
//! Nothing in the index is trusted. Every memory recall or search returns is
//! read from git and verified (signature, id, the author owns the branch);
//! for a search hit the text that was indexed must be exactly the verified
//! memory's text, so the index can neither invent a memory nor put words in
//! a real one. Files on a branch that cannot be memories of that branch are
//! kept in the index as the reason why, for recall to report.
//!
//! Private memories: the reader's own are indexed decrypted (the index is the
//! reader's, in the reader's home); anyone else's are indexed by their tags
//! and metadata only, never their content. A recall indexes no text at all
//! (it needs none, and has no key for the reader's private memories): the
//! next search indexes the text of what recalls indexed, so a recall costs
//! what the metadata costs. An index of another reader is deleted by a
//! search; one of nobody (built by a recall) is taken over.
//!
//! Versions before this one also kept a JSON recall index
//! (`mmogit/recall-index.json`); it is deleted whenever this index is built
//! from nothing (which an upgrade does, the layout having changed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use git2::{Oid, Repository};
use mmogit_identity::{Identity, PublicKey, Signature};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use serde::Deserialize;

use crate::memory::{memory_path, parse_time, MemoryType, UnverifiedMemory, MAX_MEMORY_FILE_BYTES};
use crate::repo::{read_blob, Change, Store};
use crate::StoreError;

/// Bumped whenever the layout of the index changes; an index of another
/// version is rebuilt.
const SCHEMA_VERSION: &str = "3";

/// Memories added in one index update from which the FTS5 index is merged
/// into one segment afterwards (a full build, a large import or sync).
const OPTIMIZE_AFTER: usize = 5_000;

/// Memory files parsed per batch while (re)indexing.
const PARSE_CHUNK: usize = 2048;

/// How many times a recall or search brings the index up to date when
/// other processes keep moving the branches in between; after that it
/// answers from the last update (every memory is still verified).
const MAX_ROUNDS: usize = 4;

/// The JSON recall index of earlier versions, deleted when this one is built.
const LEGACY_RECALL_INDEX: &str = "recall-index.json";

/// Work done to bring the index up to date with the branch tips.
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

impl IndexUpdate {
    fn absorb(&mut self, u: IndexUpdate) {
        self.rebuilt |= u.rebuilt;
        self.branches += u.branches;
        self.added += u.added;
        self.removed += u.removed;
        self.skipped += u.skipped;
    }
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// Whose index: who may read the private memories indexed in it.
#[derive(Clone, Copy)]
pub(crate) enum Reader<'a> {
    /// A search: this identity (None: nobody). An index of another reader
    /// is deleted; one of nobody is taken over.
    Is(Option<&'a Identity>),
    /// A recall: whoever the index is for (nobody if it is built now). New
    /// memories are indexed without their text until a search.
    Any,
}

/// Errors inside the index code: SQLite ones may mean a corrupt file.
pub(crate) enum Fail {
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

    /// The file cannot be created or written (read-only repository, full
    /// disk): an index in memory does instead.
    fn is_unwritable(&self) -> bool {
        match self {
            Fail::Store(StoreError::Io { .. }) => true,
            Fail::Sql(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    ErrorCode::ReadOnly
                        | ErrorCode::CannotOpen
                        | ErrorCode::PermissionDenied
                        | ErrorCode::DiskFull
                        | ErrorCode::SystemIoFailure
                )
            ),
            Fail::Store(_) => false,
        }
    }

    pub(crate) fn into_store(self, path: &Path) -> StoreError {
        match self {
            Fail::Store(e) => e,
            Fail::Sql(e) => StoreError::SearchIndex(format!("{}: {e}", path.display())),
        }
    }
}

/// The memory record as the indexer reads it first: no key parsing
/// (nothing here is trusted; memories are verified when they are returned).
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
    signature: Signature,
}

/// What is indexed as a memory's searchable text.
enum Text {
    /// This text (decrypted for the reader's own private memories, empty
    /// for other private ones).
    Indexed(String),
    /// Indexed by a recall, which needs no text (and has no key to decrypt
    /// the reader's private memories): the next search indexes it.
    Pending,
    /// The reader's own private memory that does not decrypt: recalled,
    /// never found by a search.
    Unreadable,
}

/// One memory file, ready to be inserted.
struct Doc {
    id: String,
    blob: Oid,
    t: i64,
    kind: MemoryType,
    tags: Vec<String>,
    confidence: Option<f64>,
    private: bool,
    text: Text,
}

/// What text an update indexes, for whom.
#[derive(Clone, Copy)]
struct TextFor<'a> {
    /// The index's reader (hex), empty for nobody.
    reader: &'a str,
    /// Its key, when this update has it.
    key: Option<&'a Identity>,
    /// A recall's update: no text at all (recall does not need it); the
    /// next search indexes it.
    deferred: bool,
}

impl TextFor<'_> {
    fn text(&self, content: &str, private: bool, owner_hex: &str) -> Text {
        if self.deferred {
            return Text::Pending;
        }
        if !private {
            return Text::Indexed(content.to_string());
        }
        if self.reader.is_empty() || owner_hex != self.reader {
            return Text::Indexed(String::new());
        }
        match self.key {
            None => Text::Pending,
            Some(k) => match decrypt(content, k) {
                Some(t) => Text::Indexed(t),
                None => Text::Unreadable,
            },
        }
    }
}

fn decrypt(content: &str, key: &Identity) -> Option<String> {
    use base64::Engine;
    let ct = base64::engine::general_purpose::STANDARD
        .decode(content)
        .ok()?;
    String::from_utf8(key.decrypt_private(&ct).ok()?).ok()
}

/// Tags as stored for filtering: `\x1f` around each (tags have no control characters).
pub(crate) fn tag_key(tags: &[String]) -> String {
    let mut s = String::from("\x1f");
    for t in tags {
        s.push_str(t);
        s.push('\x1f');
    }
    s
}

/// Microseconds since the Unix epoch (truncated toward it).
pub(crate) fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_micros().min(i64::MAX as u128) as i64),
    }
}

/// The text of a memory as it is indexed for `reader`.
pub(crate) fn indexed_text(
    content: &str,
    private: bool,
    author: &PublicKey,
    reader: Option<&Identity>,
) -> Option<String> {
    if !private {
        return Some(content.to_string());
    }
    match reader {
        Some(r) if r.public_key() == *author => decrypt(content, r),
        _ => Some(String::new()),
    }
}

/// Reads and parses one memory file for the index; Err is why it cannot be
/// a memory of `owner`'s branch (the reasons recall reports).
fn parse_doc(
    repo: &Repository,
    owner: &PublicKey,
    owner_hex: &str,
    id: &str,
    blob: Oid,
    text: TextFor<'_>,
) -> Result<Doc, String> {
    let data = read_blob(repo, blob, MAX_MEMORY_FILE_BYTES).map_err(|e| e.to_string())?;
    let doc = |id: String, t, kind, content: &str, tags, confidence, private| Doc {
        text: text.text(content, private, owner_hex),
        id,
        blob,
        t: micros(t),
        kind,
        tags,
        confidence,
        private,
    };
    // The common case without parsing the key.
    if let Ok(m) = serde_json::from_slice::<RawMemory>(&data) {
        if m.id == id && m.author == owner_hex {
            if let Ok(t) = parse_time(&m.created_at) {
                let c = &m.content;
                return Ok(doc(m.id, t, m.kind, c, m.tags, m.confidence, m.private));
            }
        }
    }
    let m = UnverifiedMemory::from_json(&data).map_err(|e| e.to_string())?;
    if m.id != id {
        return Err(format!("file name does not match the memory id {}", m.id));
    }
    if m.author != *owner {
        return Err(format!(
            "memory by {} on a branch it does not own",
            m.author
        ));
    }
    let t = parse_time(&m.created_at).map_err(|e| e.to_string())?;
    let c = &m.content;
    Ok(doc(m.id, t, m.kind, c, m.tags, m.confidence, m.private))
}

/// Parses `items` (id, blob) on up to 2 threads, each with its own handle on
/// the repository. Results are in input order.
fn parse_docs(
    repo_path: &Path,
    main: &Repository,
    owner: &PublicKey,
    items: &[(String, Oid)],
    text: TextFor<'_>,
) -> Vec<Result<Doc, String>> {
    let owner_hex = owner.to_hex();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(2);
    let one = |repo: &Repository, part: &[(String, Oid)]| -> Vec<Result<Doc, String>> {
        part.iter()
            .map(|(id, blob)| parse_doc(repo, owner, &owner_hex, id, *blob, text))
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
             private INTEGER NOT NULL DEFAULT 0,
             pending INTEGER NOT NULL DEFAULT 0,
             UNIQUE(branch, id));
         CREATE INDEX IF NOT EXISTS docs_recall ON docs(t DESC, id);
         CREATE INDEX IF NOT EXISTS docs_pending ON docs(branch) WHERE pending = 1;
         CREATE TABLE IF NOT EXISTS bad(
             rowid INTEGER PRIMARY KEY,
             branch INTEGER NOT NULL,
             path TEXT NOT NULL,
             reason TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS bad_branch ON bad(branch);
         CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
             content, tags, tokenize = 'porter unicode61 remove_diacritics 2');",
    )
}

/// The settings of every connection.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(30))?;
    // Deleted rows (a private memory's decrypted text among them) are
    // overwritten, not left in free pages.
    conn.execute_batch(
        // WAL with synchronous=NORMAL: no fsync per transaction, but the
        // WAL is synced before each checkpoint, so a power loss can only
        // lose the last updates (and the tips they were made for: they are
        // redone), never leave a damaged index. (With OFF a power loss could
        // leave one that looks whole and silently misses memories.) Every
        // memory is checked in git anyway.
        "PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY; PRAGMA secure_delete=ON;",
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
    // Switching a new file to WAL takes it whole, and SQLite answers a
    // second connection doing the same at that moment "database is locked"
    // at once, busy timeout or not (four queries of one peer, or a recall
    // beside a search, on a repository without an index yet): wait and try
    // again, as the busy timeout would.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
    configure(&conn)?;
    Ok(conn)
}

/// Opens the index for `reader`. An index of another schema version, or
/// (for a search) built for another reader whose decrypted memories must
/// not stay, is deleted first. Returns whether the index starts empty.
fn open_for(path: &Path, reader: Reader<'_>) -> Result<(Connection, bool), Fail> {
    let conn = open_db(path)?;
    if !has_table(&conn, "meta")? {
        return Ok((conn, true));
    }
    let stored = meta(&conn, "reader")?.unwrap_or_default();
    let reader_ok = match reader {
        Reader::Any => true,
        Reader::Is(r) => stored.is_empty() || stored == reader_key(r),
    };
    if meta(&conn, "version")?.as_deref() == Some(SCHEMA_VERSION) && reader_ok {
        return Ok((conn, false));
    }
    drop(conn);
    tracing::info!(path = %path.display(), "index is for another reader or version; rebuilding it");
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

/// Whether the index answers for `branches` as `reader` wants it: its
/// version, its reader, nothing left to decrypt (a search), and the tip of
/// every branch (no more, no fewer).
fn is_current(
    conn: &Connection,
    branches: &[(PublicKey, Oid)],
    reader: Reader<'_>,
) -> Result<bool, Fail> {
    if !has_table(conn, "meta")? || meta(conn, "version")?.as_deref() != Some(SCHEMA_VERSION) {
        return Ok(false);
    }
    if let Reader::Is(r) = reader {
        if meta(conn, "reader")?.unwrap_or_default() != reader_key(r) {
            return Ok(false);
        }
        let pending: bool = conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM docs WHERE pending = 1)",
            [],
            |r| r.get(0),
        )?;
        if pending {
            return Ok(false);
        }
    }
    let stored = stored_tips(conn)?;
    Ok(stored.len() == branches.len()
        && branches.iter().all(|(pk, tip)| {
            stored
                .get(&pk.to_hex())
                .is_some_and(|(_, t)| *t == tip.to_string())
        }))
}

impl Store {
    /// Where the index of this repository lives (recall's and search's).
    pub fn search_index_path(&self) -> PathBuf {
        self.path().join("mmogit").join("search.sqlite")
    }

    /// Brings the index up to date with the branch tips (what every search
    /// does first) and says what that took.
    pub fn update_search_index(
        &self,
        reader: Option<&Identity>,
    ) -> Result<IndexUpdate, StoreError> {
        self.with_index(Reader::Is(reader), |_, update| Ok(update))
    }

    /// Deletes the index and builds it again from every branch (what
    /// `mmogit reindex` does).
    pub fn reindex_search(&self, reader: Option<&Identity>) -> Result<IndexUpdate, StoreError> {
        remove_index_files(&self.search_index_path());
        let mut u = self.update_search_index(reader)?;
        u.rebuilt = true;
        Ok(u)
    }

    /// Opens the index, brings it up to date with the branch tips and runs
    /// `f` on it in one read snapshot whose tips are those branch tips. A
    /// corrupt index is deleted and rebuilt once; one that cannot be
    /// written is built in memory.
    pub(crate) fn with_index<T>(
        &self,
        reader: Reader<'_>,
        f: impl Fn(&Connection, IndexUpdate) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let path = self.search_index_path();
        let on_disk = || -> Result<T, Fail> {
            let (conn, fresh) = open_for(&path, reader)?;
            if fresh {
                let legacy = self.path().join("mmogit").join(LEGACY_RECALL_INDEX);
                if std::fs::remove_file(&legacy).is_ok() {
                    tracing::info!(path = %legacy.display(), "removed the recall index of an earlier version");
                }
            }
            self.answer(conn, fresh, reader, &f)
        };
        let in_memory = |why: &Fail| -> Result<T, StoreError> {
            tracing::warn!(
                path = %path.display(),
                error = %match why { Fail::Sql(e) => e.to_string(), Fail::Store(e) => e.to_string() },
                "cannot write the index; using a temporary one in memory"
            );
            let conn = Connection::open_in_memory()
                .and_then(|c| configure(&c).map(|_| c))
                .map_err(|e| Fail::Sql(e).into_store(&path))?;
            self.answer(conn, true, reader, &f)
                .map_err(|e| e.into_store(&path))
        };
        match on_disk() {
            Ok(v) => Ok(v),
            Err(e) if e.is_corrupt() => {
                let Fail::Sql(err) = &e else { unreachable!() };
                tracing::warn!(
                    path = %path.display(),
                    error = %err,
                    "index is corrupt; deleting and rebuilding it"
                );
                remove_index_files(&path);
                match on_disk() {
                    Ok(v) => Ok(v),
                    Err(e) if e.is_unwritable() => in_memory(&e),
                    Err(e) => Err(e.into_store(&path)),
                }
            }
            Err(e) if e.is_unwritable() => in_memory(&e),
            Err(e) => Err(e.into_store(&path)),
        }
    }

    /// Updates the index until a read snapshot of it answers for the
    /// current branch tips, then runs `f` in that snapshot.
    fn answer<T>(
        &self,
        mut conn: Connection,
        fresh: bool,
        reader: Reader<'_>,
        f: &impl Fn(&Connection, IndexUpdate) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let started = Instant::now();
        let mut update = IndexUpdate {
            rebuilt: fresh,
            ..IndexUpdate::default()
        };
        let mut round = 0;
        loop {
            let branches = self.branches()?;
            conn.execute_batch("BEGIN")?;
            let current = is_current(&conn, &branches, reader);
            if matches!(current, Ok(true)) || (round >= MAX_ROUNDS && current.is_ok()) {
                if round >= MAX_ROUNDS && !matches!(current, Ok(true)) {
                    tracing::info!("branches keep moving; answering from the last index update");
                }
                update.elapsed = started.elapsed();
                let r = f(&conn, update);
                let _ = conn.execute_batch("COMMIT");
                return r;
            }
            conn.execute_batch("ROLLBACK")?;
            current?;
            update.absorb(self.sync_index(&mut conn, &branches, reader)?);
            round += 1;
        }
    }

    /// Compares the indexed tip of every branch with `branches` and indexes
    /// what changed, in one write transaction.
    fn sync_index(
        &self,
        conn: &mut Connection,
        branches: &[(PublicKey, Oid)],
        reader: Reader<'_>,
    ) -> Result<IndexUpdate, Fail> {
        let started = Instant::now();
        let mut update = IndexUpdate::default();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !has_table(&tx, "meta")? {
            create_schema(&tx)?;
        }
        let version_ok = meta(&tx, "version")?.as_deref() == Some(SCHEMA_VERSION);
        let stored_reader = meta(&tx, "reader")?.unwrap_or_default();
        let (mut reader_hex, key) = match reader {
            Reader::Any => (stored_reader.clone(), None),
            Reader::Is(r) => (reader_key(r), r),
        };
        if !version_ok || (stored_reader != reader_hex && !stored_reader.is_empty()) {
            // Blank, or changed by another process since it was opened:
            // start from nothing (a recall: for nobody).
            tx.execute_batch(
                "DELETE FROM docs; DELETE FROM fts; DELETE FROM bad; DELETE FROM branches;",
            )?;
            if matches!(reader, Reader::Any) {
                reader_hex = String::new();
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('version', ?1), ('reader', ?2)",
                params![SCHEMA_VERSION, reader_hex],
            )?;
            // A blank index: this update is a full build.
            update.rebuilt = true;
        } else if stored_reader.is_empty() && !reader_hex.is_empty() {
            // Built by a recall (or for nobody): the reader's private
            // memories get their text now.
            tracing::info!("index taken over by its reader; decrypting their private memories");
            tx.execute(
                "UPDATE docs SET pending = 1 WHERE private = 1
                 AND branch IN (SELECT rowid FROM branches WHERE owner = ?1)",
                [&reader_hex],
            )?;
            tx.execute(
                "DELETE FROM fts WHERE rowid IN (SELECT rowid FROM docs WHERE pending = 1)",
                [],
            )?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'reader'",
                [&reader_hex],
            )?;
        }
        let text = TextFor {
            reader: &reader_hex,
            key,
            deferred: matches!(reader, Reader::Any),
        };
        self.sync_branches(&tx, branches, text, &mut update)?;
        if !text.deferred {
            index_pending_text(&tx, self.git(), text)?;
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
            index_ms = indexed.as_secs_f64() * 1e3,
            commit_ms = (update.elapsed - indexed).as_secs_f64() * 1e3,
            "index update phases"
        );
        tracing::info!(
            branches = update.branches,
            added = update.added,
            removed = update.removed,
            ms = update.elapsed.as_secs_f64() * 1e3,
            "index updated"
        );
        Ok(update)
    }

    /// Brings every branch's part of the index to its tip in `branches`
    /// and drops the parts of branches that are gone.
    fn sync_branches(
        &self,
        tx: &Connection,
        branches: &[(PublicKey, Oid)],
        text: TextFor<'_>,
        update: &mut IndexUpdate,
    ) -> Result<(), Fail> {
        let stored = stored_tips(tx)?;
        for (owner, tip) in branches {
            let key = owner.to_hex();
            let (branch_row, stop) = match stored.get(&key) {
                Some((_, t)) if *t == tip.to_string() => continue,
                Some((row, t)) => (*row, Oid::from_str(t).ok()),
                None => {
                    tx.execute("INSERT INTO branches(owner, tip) VALUES (?1, '')", [&key])?;
                    (tx.last_insert_rowid(), None)
                }
            };
            update.branches += 1;
            // First parents back to the indexed tip (or the root).
            let repo = self.git();
            let mut commits = Vec::new();
            let mut cur = Some(*tip);
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
            if !reached {
                // Rewritten (or the indexed tip is gone): the walk went
                // down to the root, so the branch is indexed again from it.
                tracing::info!(branch = %owner.short(12), "history changed; indexing the branch again");
                update.removed += delete_branch_docs(tx, branch_row)?;
            }
            let mut added: Vec<(String, Oid)> = Vec::new();
            for c in commits.iter().rev() {
                let parent_tree = if c.parent_count() > 0 {
                    Some(c.parent(0)?.tree()?)
                } else {
                    None
                };
                for ch in self.diff_trees(parent_tree.as_ref(), &c.tree()?)? {
                    match ch {
                        Change::Added { id, blob, .. } => added.push((id, blob)),
                        Change::Foreign { .. } => update.skipped += 1,
                        // Not a valid history (verify reports it): what was
                        // added stays as it was added.
                        Change::Modified { .. } | Change::Deleted { .. } => {}
                    }
                }
            }
            self.index_added(tx, branch_row, owner, &added, text, update)?;
            tx.execute(
                "UPDATE branches SET tip = ?1 WHERE rowid = ?2",
                params![tip.to_string(), branch_row],
            )?;
        }
        // Branches that no longer exist.
        for (key, (row, _)) in &stored {
            if !branches.iter().any(|(pk, _)| pk.to_hex() == *key) {
                update.branches += 1;
                update.removed += delete_branch_docs(tx, *row)?;
                tx.execute("DELETE FROM branches WHERE rowid = ?1", [row])?;
            }
        }
        Ok(())
    }

    /// Indexes the memory files `added` on `owner`'s branch, in the order
    /// they were added: the first file of an id stays (as recall has always
    /// shown the memory as it was added), a file that cannot be a memory of
    /// the branch is kept as why.
    fn index_added(
        &self,
        tx: &Connection,
        branch_row: i64,
        owner: &PublicKey,
        added: &[(String, Oid)],
        text: TextFor<'_>,
        update: &mut IndexUpdate,
    ) -> Result<(), Fail> {
        let mut ins_doc = tx.prepare(
            "INSERT OR IGNORE INTO docs(branch, id, blob, t, kind, tags, conf, private, pending)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut ins_fts =
            tx.prepare("INSERT INTO fts(rowid, content, tags) VALUES (?1, ?2, ?3)")?;
        let mut ins_bad =
            tx.prepare("INSERT INTO bad(branch, path, reason) VALUES (?1, ?2, ?3)")?;
        let mut insert =
            |chunk: &[(String, Oid)], docs: Vec<Result<Doc, String>>| -> Result<(), Fail> {
                for ((id, _), doc) in chunk.iter().zip(docs) {
                    let doc = match doc {
                        Ok(d) => d,
                        Err(reason) => {
                            tracing::debug!(branch = %owner.short(12), id, reason, "not indexed");
                            ins_bad.execute(params![branch_row, memory_path_safe(id), reason])?;
                            update.skipped += 1;
                            continue;
                        }
                    };
                    let inserted = ins_doc.execute(params![
                        branch_row,
                        doc.id,
                        doc.blob.to_string(),
                        doc.t,
                        doc.kind.as_str(),
                        tag_key(&doc.tags),
                        doc.confidence,
                        doc.private,
                        matches!(doc.text, Text::Pending),
                    ])?;
                    if inserted == 0 {
                        // Added again after a deletion: the first one stays.
                        continue;
                    }
                    let row = tx.last_insert_rowid();
                    if let Text::Indexed(t) = doc.text {
                        ins_fts.execute(params![row, t, doc.tags.join(" ")])?;
                    }
                    update.added += 1;
                }
                Ok(())
            };
        if added.len() < 2 * PARSE_CHUNK {
            return insert(
                added,
                parse_docs(self.path(), self.git(), owner, added, text),
            );
        }
        // Many files: one thread reads and parses the next chunk while this
        // one inserts the previous.
        let (send, recv) = std::sync::mpsc::sync_channel::<Vec<Result<Doc, String>>>(2);
        let path = self.path();
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
                            Ok(r) => parse_doc(r, owner, &owner_hex, id, *blob, text),
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
}

/// Indexes the text of the memories that recalls indexed without it (see
/// [`Text::Pending`]), reading them on every core.
fn index_pending_text(tx: &Connection, repo: &Repository, text: TextFor<'_>) -> Result<(), Fail> {
    let pending: Vec<(i64, String, String)> = tx
        .prepare(
            "SELECT d.rowid, b.owner, d.blob FROM docs d JOIN branches b ON b.rowid = d.branch
             WHERE d.pending = 1",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if pending.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let mut ins_fts = tx.prepare("INSERT INTO fts(rowid, content, tags) VALUES (?1, ?2, ?3)")?;
    let mut done = tx.prepare("UPDATE docs SET pending = 0 WHERE rowid = ?1")?;
    let read =
        |repo: &Repository, part: &[(i64, String, String)]| -> Vec<Option<(String, String)>> {
            part.iter()
                .map(|(_, owner, blob)| {
                    let data =
                        read_blob(repo, Oid::from_str(blob).ok()?, MAX_MEMORY_FILE_BYTES).ok()?;
                    let m: RawMemory = serde_json::from_slice(&data).ok()?;
                    match text.text(&m.content, m.private, owner) {
                        Text::Indexed(t) => Some((t, m.tags.join(" "))),
                        Text::Pending | Text::Unreadable => None,
                    }
                })
                .collect()
        };
    for chunk in pending.chunks(PARSE_CHUNK) {
        let texts = crate::repo::par_parts(repo, chunk, 256, read)?;
        for ((row, _, _), t) in chunk.iter().zip(texts.into_iter().flatten()) {
            if let Some((content, tags)) = t {
                ins_fts.execute(params![row, content, tags])?;
            }
            done.execute([row])?;
        }
    }
    tracing::debug!(
        n = pending.len(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "indexed the text that recalls left for search"
    );
    Ok(())
}

/// `memories/<2 hex>/<id>.json`, or what can be said of an id that cannot be one.
pub(crate) fn memory_path_safe(id: &str) -> String {
    if id.len() >= 2 && id.is_char_boundary(2) {
        memory_path(id)
    } else {
        format!("memories/{id}")
    }
}

pub(crate) fn stored_tips(conn: &Connection) -> Result<HashMap<String, (i64, String)>, Fail> {
    let mut stmt = conn.prepare("SELECT owner, rowid, tip FROM branches")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn delete_branch_docs(tx: &Connection, branch_row: i64) -> Result<usize, Fail> {
    tx.execute(
        "DELETE FROM fts WHERE rowid IN (SELECT rowid FROM docs WHERE branch = ?1)",
        [branch_row],
    )?;
    tx.execute("DELETE FROM bad WHERE branch = ?1", [branch_row])?;
    Ok(tx.execute("DELETE FROM docs WHERE branch = ?1", [branch_row])?)
}
