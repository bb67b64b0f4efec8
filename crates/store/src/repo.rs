//! The git repository: branches, in-process object writes, tree comparison.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{ErrorCode, ObjectType, Oid, Repository, Tree};
use mmogit_identity::{Identity, PublicKey};

use crate::memory::VerifiedMemory;
use crate::StoreError;

/// Every author's branch is `users/<64 hex pubkey>`.
pub const BRANCH_PREFIX: &str = "refs/heads/users/";
const MAX_CAS_ATTEMPTS: u32 = 200;

/// Full ref name of an author's branch.
pub fn branch_name(author: &PublicKey) -> String {
    format!("{BRANCH_PREFIX}{}", author.to_hex())
}

/// The author of a `refs/heads/users/<hex>` ref, if it is one.
pub fn parse_branch_name(refname: &str) -> Option<PublicKey> {
    refname.strip_prefix(BRANCH_PREFIX)?.parse().ok()
}

/// Most objects libgit2 indexes from one incoming pack. A 1 GiB transfer
/// (the largest) of real memories holds well under 4 million objects (a
/// memory is a blob, a commit and two trees at most, each over 100 bytes
/// packed); the indexer keeps about 100 bytes per object.
pub const MAX_PACK_OBJECTS: usize = 4_000_000;
/// Largest object, as declared or as a delta's result, libgit2 accepts from
/// an incoming pack: a memory file is at most 512 KiB and the largest tree
/// of a million memories about 320 KiB; a delta claiming gigabytes is refused
/// before anything is allocated for it.
pub const MAX_PACK_OBJECT_SIZE: usize = 16 << 20;

/// Sets libgit2's process-wide limits on incoming packs (once).
fn set_pack_limits() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use libgit2_sys as raw;
        raw::init();
        // SAFETY: libgit2 is initialised; with these two options
        // git_libgit2_opts reads exactly one size_t vararg.
        unsafe {
            raw::git_libgit2_opts(
                raw::GIT_OPT_SET_PACK_MAX_OBJECTS as std::ffi::c_int,
                MAX_PACK_OBJECTS as libc_size_t,
            );
            raw::git_libgit2_opts(
                raw::GIT_OPT_SET_PACK_MAX_OBJECT_SIZE as std::ffi::c_int,
                MAX_PACK_OBJECT_SIZE as libc_size_t,
            );
        }
    });
}

#[allow(non_camel_case_types)]
type libc_size_t = usize;

/// A memory repository (bare git repository).
pub struct Store {
    repo: Repository,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

/// One difference between a commit's tree and its parent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A memory file that the parent did not have.
    Added { path: String, id: String, blob: Oid },
    /// A file whose content changed.
    Modified { path: String },
    /// A file the parent had and this tree has not.
    Deleted { path: String },
    /// Something that is not a memory file where only memory files may be.
    Foreign { path: String, reason: String },
}

/// Environment variable that turns fsync off (see `durable_writes`): for
/// benchmarks that compare with and without it in one run, never for use.
pub const NO_FSYNC_ENV: &str = "MMOGIT_BENCH_NO_FSYNC";

/// Makes every libgit2 write of this process durable before it returns:
/// loose objects and packs (with their index) are fsynced and so is their
/// directory after the rename into place; ref files likewise (libgit2's
/// `GIT_OPT_ENABLE_FSYNC_GITDIR`, process-wide). Directories libgit2 creates
/// without syncing their parent (a new `objects/xx`, `refs/heads/users`)
/// are synced by [`sync_object_dirs`] and [`sync_ref_dirs`]. Called by
/// every way of opening a store. `MMOGIT_BENCH_NO_FSYNC=1` turns it off, for
/// the benchmark that measures what it costs.
pub(crate) fn durable_writes() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var_os(NO_FSYNC_ENV).is_some_and(|v| v == "1") {
            tracing::warn!("{NO_FSYNC_ENV}=1: writes are not fsynced (benchmarks only)");
            return false;
        }
        // Initialises libgit2 (the option below is a plain global).
        git2::opts::enable_caching(true);
        // SAFETY: GIT_OPT_ENABLE_FSYNC_GITDIR takes one int argument.
        let rc = unsafe {
            libgit2_sys::git_libgit2_opts(
                libgit2_sys::GIT_OPT_ENABLE_FSYNC_GITDIR as std::ffi::c_int,
                1 as std::ffi::c_int,
            )
        };
        if rc != 0 {
            tracing::warn!(rc, "libgit2 refused to enable fsync");
            return false;
        }
        true
    })
}

/// fsyncs directory `dir`, so that the names created in it (a renamed
/// object, pack or ref, a new subdirectory) survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    if !durable_writes() {
        return Ok(());
    }
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::File::open(dir).map_err(io)?.sync_all().map_err(io)
}

/// Syncs `objects/` and `objects/pack/` (new fan-out directories and packs
/// are entries there), before a ref points at what was written.
pub(crate) fn sync_object_dirs(git_dir: &Path) -> Result<(), StoreError> {
    let objects = git_dir.join("objects");
    sync_dir(&objects)?;
    sync_dir(&objects.join("pack"))
}

/// Whether the directory that holds `refname` exists (when it does not, the
/// ref's write creates it: call [`sync_ref_dirs`] after).
pub(crate) fn ref_dir_exists(git_dir: &Path, refname: &str) -> bool {
    git_dir.join(refname).parent().is_some_and(|d| d.is_dir())
}

/// Syncs the directories above the one holding `refname`, from `refs/`
/// down (libgit2 syncs only the ref's own directory, which a first write
/// may have created, e.g. `refs/heads/users/`).
pub(crate) fn sync_ref_dirs(git_dir: &Path, refname: &str) -> Result<(), StoreError> {
    let mut dir = git_dir.to_path_buf();
    let parts: Vec<&str> = refname.split('/').collect();
    for p in &parts[..parts.len().saturating_sub(2)] {
        dir.push(p);
        sync_dir(&dir)?;
    }
    Ok(())
}

impl Store {
    /// Opens an existing repository.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        set_pack_limits();
        durable_writes();
        match Repository::open_bare(path) {
            Ok(repo) => Ok(Store {
                repo,
                path: path.to_path_buf(),
            }),
            Err(e) if e.code() == ErrorCode::NotFound => {
                Err(StoreError::NoRepository(path.to_path_buf()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the repository, creating an empty bare one if there is none.
    /// Never touches an existing repository's content.
    pub fn open_or_init(path: &Path) -> Result<Store, StoreError> {
        set_pack_limits();
        durable_writes();
        if path.join("HEAD").exists() {
            return Self::open(path);
        }
        let mut opts = git2::RepositoryInitOptions::new();
        opts.bare(true).mkpath(true).no_reinit(true);
        let repo = Repository::init_opts(path, &opts)?;
        Ok(Store {
            repo,
            path: path.to_path_buf(),
        })
    }

    /// Path of the repository.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The libgit2 handle, for the sync code.
    pub fn git(&self) -> &Repository {
        &self.repo
    }

    /// Points HEAD at `author`'s branch, so that `git clone` of this
    /// repository checks out the owner's memories.
    pub fn set_head_to(&self, author: &PublicKey) -> Result<(), StoreError> {
        self.repo.set_head(&branch_name(author))?;
        Ok(())
    }

    /// Adds git remote `name` for `url`, or points an existing one at `url`.
    pub fn set_remote(&self, name: &str, url: &str) -> Result<(), StoreError> {
        match self.repo.find_remote(name) {
            Ok(r) if r.url() == Some(url) => Ok(()),
            Ok(_) => Ok(self.repo.remote_set_url(name, url)?),
            Err(e) if e.code() == ErrorCode::NotFound => {
                self.repo.remote(name, url)?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes git remote `name` (and its remote-tracking refs); absent is fine.
    pub fn remove_remote(&self, name: &str) -> Result<(), StoreError> {
        match self.repo.remote_delete(name) {
            Ok(()) => Ok(()),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The URL of git remote `name`, if it exists.
    pub fn remote_url(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.repo.find_remote(name) {
            Ok(r) => Ok(r.url().map(str::to_string)),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every `users/*` branch with its tip. Refs under `users/` whose name is
    /// not a valid public key are skipped with a log line (and reported by
    /// [`Store::invalid_branches`]).
    pub fn branches(&self) -> Result<Vec<(PublicKey, Oid)>, StoreError> {
        let (out, bad) = self.branches_under(BRANCH_PREFIX)?;
        for (name, _, why) in bad {
            tracing::warn!(
                refname = name,
                reason = why,
                "ignoring ref that is not users/<pubkey>"
            );
        }
        Ok(out)
    }

    /// Refs under `refs/heads/users/` whose name is not a valid public key
    /// (e.g. a weak key: nobody holds its secret, anyone can sign for it),
    /// with their tips and why.
    pub fn invalid_branches(&self) -> Result<Vec<(String, Option<Oid>, String)>, StoreError> {
        Ok(self.branches_under(BRANCH_PREFIX)?.1)
    }

    /// The refs under `prefix` (which ends in `users/`), split into those
    /// named by a valid key (sorted by key) and the others, with the reason.
    #[allow(clippy::type_complexity)]
    pub(crate) fn branches_under(
        &self,
        prefix: &str,
    ) -> Result<(Vec<(PublicKey, Oid)>, Vec<(String, Option<Oid>, String)>), StoreError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for r in self.repo.references_glob(&format!("{prefix}*"))? {
            let r = r?;
            let Some(name) = r.name() else { continue };
            let key = name
                .strip_prefix(prefix)
                .unwrap_or(name)
                .parse::<PublicKey>()
                .map_err(|e| e.to_string());
            match (key, r.target()) {
                (Ok(pk), Some(oid)) => out.push((pk, oid)),
                (Ok(_), None) => bad.push((name.to_string(), None, "a symbolic ref".into())),
                (Err(e), oid) => bad.push((name.to_string(), oid, e)),
            }
        }
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok((out, bad))
    }

    /// Whether the history ending at `tip` includes `commit`: they are
    /// equal, or `tip` descends from it. False when either is unknown here.
    /// (Whether a branch is ahead of, behind or beside another: the one
    /// ancestry question replication and sync ask.)
    pub fn includes(&self, tip: Oid, commit: Oid) -> bool {
        tip == commit
            || (self.repo.find_commit(commit).is_ok()
                && self.repo.graph_descendant_of(tip, commit).unwrap_or(false))
    }

    /// The memories added on the `users/*` branches since the tips in
    /// `old` (a branch absent from `old` counts from its root), oldest
    /// first, each read from git and verified, and the current tips of all
    /// branches (to pass as `old` next time). Branches whose tip has not
    /// moved and the authors in `skip` are not looked at. A file added on a
    /// branch whose owner did not sign it, or that does not verify, is left
    /// out; a branch that cannot be read is logged and left out (its new
    /// tip is still returned, so it is not read again).
    ///
    /// What a running node reports as received after a transfer: it lists
    /// what other processes (a `sync`) brought in as well.
    pub fn added_since(
        &self,
        old: &HashMap<PublicKey, Oid>,
        skip: &[PublicKey],
    ) -> Result<(Vec<VerifiedMemory>, HashMap<PublicKey, Oid>), StoreError> {
        let branches = self.branches()?;
        let mut out = Vec::new();
        for (pk, tip) in &branches {
            if skip.contains(pk) || old.get(pk) == Some(tip) {
                continue;
            }
            match self.added_on_branch(pk, old.get(pk).copied(), *tip) {
                Ok(mut ms) => out.append(&mut ms),
                Err(e) => {
                    tracing::warn!(author = %pk.short(12), "cannot list received memories: {e}")
                }
            }
        }
        out.sort_by(|a, b| a.created_at().cmp(b.created_at()));
        Ok((out, branches.into_iter().collect()))
    }

    /// The memory files added between commits `old` (None: nothing) and
    /// `new` of `owner`'s branch, verified.
    fn added_on_branch(
        &self,
        owner: &PublicKey,
        old: Option<Oid>,
        new: Oid,
    ) -> Result<Vec<VerifiedMemory>, StoreError> {
        let new_tree = self.repo.find_commit(new)?.tree()?;
        let old_tree = match old {
            Some(o) => Some(self.repo.find_commit(o)?.tree()?),
            None => None,
        };
        let mut out = Vec::new();
        for ch in self.diff_trees(old_tree.as_ref(), &new_tree)? {
            let Change::Added { blob, id, .. } = ch else {
                continue;
            };
            let m = self
                .read_blob(blob, crate::MAX_MEMORY_FILE_BYTES)
                .and_then(|d| crate::UnverifiedMemory::from_json(&d))
                .and_then(|m| m.verify());
            match m {
                Ok(m) if m.id() == id && m.author() == owner => out.push(m),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Tip of `author`'s branch.
    pub fn tip(&self, author: &PublicKey) -> Result<Option<Oid>, StoreError> {
        match self.repo.refname_to_id(&branch_name(author)) {
            Ok(oid) => Ok(Some(oid)),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends memories signed by `identity` to its branch in one commit.
    /// Returns the new tip. Memories already on the branch are skipped (a
    /// commit is still made only if something is new).
    pub fn append(
        &self,
        identity: &Identity,
        memories: &[VerifiedMemory],
        message: &str,
    ) -> Result<Oid, StoreError> {
        append_to(&self.repo, identity, memories, message)
    }

    /// Bulk append in batches of `batch` memories, one commit per batch,
    /// written as packs (no loose object per memory). Returns the final tip.
    pub fn import(
        &self,
        identity: &Identity,
        memories: &[VerifiedMemory],
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Option<Oid>, StoreError> {
        check_owner(identity, memories)?;
        let _lock = WriteLock::acquire(&self.repo)?;
        let repo = &self.repo;
        let mut tip = None;
        let mut done = 0;
        for chunk in memories.chunks(batch.max(1)) {
            // Blobs go straight into one pack per batch (no delta search, no
            // loose file per memory); the few hundred trees and the commit
            // are ordinary loose objects.
            let jsons: Vec<Vec<u8>> = chunk.iter().map(|m| m.to_json()).collect();
            let oids = crate::pack::write_blob_pack(repo, &jsons)?;
            let blobs = blob_entries(chunk, &oids);
            let new_tip = append_objects(
                repo,
                identity,
                &blobs,
                &format!("import {} memories", chunk.len()),
            )?;
            if let Some((commit, old)) = new_tip {
                // The pack was synced when written; the trees and the
                // commit are loose (new fan-out directories in objects/).
                tip = Some(move_ref(
                    repo,
                    identity,
                    commit,
                    old,
                    &blobs,
                    &format!("import {} memories", chunk.len()),
                    &|_, _| sync_object_dirs(repo.path()),
                )?);
            }
            done += chunk.len();
            progress(done);
        }
        Ok(tip)
    }

    /// Reads a blob, bounded by `max` bytes.
    pub(crate) fn read_blob(&self, oid: Oid, max: usize) -> Result<Vec<u8>, StoreError> {
        read_blob(&self.repo, oid, max)
    }

    /// Differences from `old` (a parent's tree, or nothing) to `new`.
    pub(crate) fn diff_trees(
        &self,
        old: Option<&Tree>,
        new: &Tree,
    ) -> Result<Vec<Change>, StoreError> {
        diff_trees(&self.repo, old, new)
    }
}

fn is_hex_lower(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn subtree<'r>(
    repo: &'r Repository,
    tree: &Tree,
    name: &str,
) -> Result<Option<Tree<'r>>, StoreError> {
    match tree.get_name(name) {
        Some(e) if e.kind() == Some(ObjectType::Tree) => Ok(Some(repo.find_tree(e.id())?)),
        _ => Ok(None),
    }
}

pub(crate) fn diff_trees(
    repo: &Repository,
    old: Option<&Tree>,
    new: &Tree,
) -> Result<Vec<Change>, StoreError> {
    let mut out = Vec::new();
    for e in new.iter() {
        let name = e.name().unwrap_or("<non-utf8>");
        if name != "memories" || e.kind() != Some(ObjectType::Tree) {
            let known = old.and_then(|o| o.get_name(name)).map(|o| o.id()) == Some(e.id());
            if !known {
                out.push(Change::Foreign {
                    path: name.to_string(),
                    reason: "only the memories/ directory may be on a branch".into(),
                });
            }
        }
    }
    if let Some(old) = old {
        for e in old.iter() {
            let name = e.name().unwrap_or("<non-utf8>");
            if new.get_name(name).is_none() {
                out.push(Change::Deleted {
                    path: name.to_string(),
                });
            }
        }
    }
    let new_mem = subtree(repo, new, "memories")?;
    let old_mem = match old {
        Some(o) => subtree(repo, o, "memories")?,
        None => None,
    };
    if let (Some(n), Some(o)) = (&new_mem, &old_mem) {
        if n.id() == o.id() {
            return Ok(out);
        }
    }
    if let Some(new_mem) = &new_mem {
        for shard in new_mem.iter() {
            let sname = shard.name().unwrap_or("<non-utf8>").to_string();
            let old_entry = old_mem.as_ref().and_then(|o| o.get_name(&sname));
            if old_entry.as_ref().map(|e| e.id()) == Some(shard.id()) {
                continue;
            }
            if sname.len() != 2 || !is_hex_lower(&sname) || shard.kind() != Some(ObjectType::Tree) {
                out.push(Change::Foreign {
                    path: format!("memories/{sname}"),
                    reason: "expected a directory named by two lowercase hex digits".into(),
                });
                continue;
            }
            let new_shard = repo.find_tree(shard.id())?;
            let old_shard = match &old_entry {
                Some(e) if e.kind() == Some(ObjectType::Tree) => Some(repo.find_tree(e.id())?),
                _ => None,
            };
            for f in new_shard.iter() {
                let fname = f.name().unwrap_or("<non-utf8>");
                let path = format!("memories/{sname}/{fname}");
                let prev = old_shard
                    .as_ref()
                    .and_then(|o| o.get_name(fname))
                    .map(|e| e.id());
                if prev == Some(f.id()) {
                    continue;
                }
                if prev.is_some() {
                    out.push(Change::Modified { path });
                    continue;
                }
                let id = fname.strip_suffix(".json").unwrap_or("");
                if id.len() != 64
                    || !is_hex_lower(id)
                    || !id.starts_with(&sname)
                    || f.kind() != Some(ObjectType::Blob)
                {
                    out.push(Change::Foreign {
                        path,
                        reason: "expected a file <64 hex id>.json in the shard of its first two hex digits"
                            .into(),
                    });
                    continue;
                }
                out.push(Change::Added {
                    path,
                    id: id.to_string(),
                    blob: f.id(),
                });
            }
            if let Some(old_shard) = &old_shard {
                for f in old_shard.iter() {
                    let fname = f.name().unwrap_or("<non-utf8>");
                    if new_shard.get_name(fname).is_none() {
                        out.push(Change::Deleted {
                            path: format!("memories/{sname}/{fname}"),
                        });
                    }
                }
            }
        }
    }
    if let Some(old_mem) = &old_mem {
        for shard in old_mem.iter() {
            let sname = shard.name().unwrap_or("<non-utf8>");
            let gone = new_mem
                .as_ref()
                .map(|n| n.get_name(sname).is_none())
                .unwrap_or(true);
            if gone {
                out.push(Change::Deleted {
                    path: format!("memories/{sname}"),
                });
            }
        }
    }
    Ok(out)
}

/// Builds the commit for `memories` on top of the current tip. Returns the
/// new commit and the tip it was built on, or None when nothing is new.
/// `(shard, file name, blob)` of each memory.
type BlobEntry = (String, String, Oid);

fn blob_entries(memories: &[VerifiedMemory], oids: &[Oid]) -> Vec<BlobEntry> {
    memories
        .iter()
        .zip(oids)
        .map(|(m, oid)| (m.id()[..2].to_string(), format!("{}.json", m.id()), *oid))
        .collect()
}

fn check_owner(identity: &Identity, memories: &[VerifiedMemory]) -> Result<(), StoreError> {
    let author = identity.public_key();
    match memories.iter().find(|m| *m.author() != author) {
        Some(m) => Err(StoreError::InvalidMemory(format!(
            "memory {} is by {}, not by the branch owner {}",
            m.id(),
            m.author(),
            author
        ))),
        None => Ok(()),
    }
}

/// Builds the commit adding `blobs` on top of the current tip. Returns the
/// new commit and the tip it was built on, or None when nothing is new.
fn append_objects(
    repo: &Repository,
    identity: &Identity,
    blobs: &[BlobEntry],
    message: &str,
) -> Result<Option<(Oid, Option<Oid>)>, StoreError> {
    let author = identity.public_key();
    let refname = branch_name(&author);
    let tip = match repo.refname_to_id(&refname) {
        Ok(oid) => Some(oid),
        Err(e) if e.code() == ErrorCode::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    build_commit(repo, &author, tip, blobs, message).map(|c| c.map(|c| (c, tip)))
}

fn build_commit(
    repo: &Repository,
    author: &PublicKey,
    tip: Option<Oid>,
    blobs: &[BlobEntry],
    message: &str,
) -> Result<Option<Oid>, StoreError> {
    let parent = tip.map(|t| repo.find_commit(t)).transpose()?;
    let root = parent.as_ref().map(|p| p.tree()).transpose()?;
    let mem = match &root {
        Some(r) => subtree(repo, r, "memories")?,
        None => None,
    };
    let mut by_shard: BTreeMap<&str, Vec<(&str, Oid)>> = BTreeMap::new();
    for (shard, name, oid) in blobs {
        by_shard.entry(shard).or_default().push((name, *oid));
    }
    let mut mem_builder = repo.treebuilder(mem.as_ref())?;
    let mut changed = false;
    for (shard, files) in by_shard {
        let old = match &mem {
            Some(m) => subtree(repo, m, shard)?,
            None => None,
        };
        let mut sb = repo.treebuilder(old.as_ref())?;
        for (name, oid) in files {
            if sb.get(name)?.is_none() {
                sb.insert(name, oid, 0o100644)?;
                changed = true;
            }
        }
        let sid = sb.write()?;
        mem_builder.insert(shard, sid, 0o040000)?;
    }
    if !changed {
        return Ok(None);
    }
    let mem_id = mem_builder.write()?;
    let mut root_builder = repo.treebuilder(root.as_ref())?;
    root_builder.insert("memories", mem_id, 0o040000)?;
    let tree = repo.find_tree(root_builder.write()?)?;
    let sig = git2::Signature::now(
        &format!("mmogit {}", author.short(12)),
        &format!("{}@mmogit", author.to_hex()),
    )?;
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    Ok(Some(
        repo.commit(None, &sig, &sig, message, &tree, &parents)?,
    ))
}

/// Moves `identity`'s branch from `old` to `commit`; when another writer moved
/// it first, rebuilds the commit on the new tip and tries again.
/// Makes the objects of a commit just built (and its blobs) durable.
type Persist<'a> = dyn Fn(Oid, &[BlobEntry]) -> Result<(), StoreError> + 'a;

/// `persist` makes the objects just built durable; it runs before every
/// attempt to move the ref (a retry builds new objects).
fn move_ref(
    repo: &Repository,
    identity: &Identity,
    mut commit: Oid,
    mut old: Option<Oid>,
    blobs: &[BlobEntry],
    message: &str,
    persist: &Persist,
) -> Result<Oid, StoreError> {
    let refname = branch_name(&identity.public_key());
    remove_stale_ref_lock(repo, &refname);
    for attempt in 0..MAX_CAS_ATTEMPTS {
        // The objects first: a ref that survives a power loss must not
        // point at objects that did not.
        persist(commit, blobs)?;
        let new_dir = !ref_dir_exists(repo.path(), &refname);
        let res = match old {
            Some(o) => repo.reference_matching(&refname, commit, true, o, message),
            None => repo.reference(&refname, commit, false, message),
        };
        match res {
            Ok(_) => {
                if new_dir {
                    sync_ref_dirs(repo.path(), &refname)?;
                }
                return Ok(commit);
            }
            Err(e)
                if matches!(
                    e.code(),
                    ErrorCode::Modified | ErrorCode::Exists | ErrorCode::Locked
                ) =>
            {
                tracing::debug!(attempt, "branch moved under us, rebuilding the commit");
                if e.code() == ErrorCode::Locked {
                    std::thread::sleep(Duration::from_millis(1 + (attempt as u64 % 5)));
                }
                match append_objects(repo, identity, blobs, message)? {
                    Some((c, o)) => {
                        commit = c;
                        old = o;
                    }
                    // Someone else already wrote these same memories.
                    None => return Ok(repo.refname_to_id(&refname)?),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Contention {
        branch: refname,
        attempts: MAX_CAS_ATTEMPTS,
    })
}

/// An exclusive lock on the repository's writers (released on drop, also when
/// the process dies). The ref update is a compare-and-swap as well; the lock
/// makes concurrent writers queue instead of racing and retrying.
pub(crate) struct WriteLock(std::fs::File);

impl WriteLock {
    pub(crate) fn acquire(repo: &Repository) -> Result<WriteLock, StoreError> {
        let dir = repo.path().join("mmogit");
        let io = |e: std::io::Error| {
            StoreError::Git(git2::Error::from_str(&format!(
                "locking {}: {e}",
                dir.join("write.lock").display()
            )))
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("write.lock"))
            .map_err(io)?;
        f.lock().map_err(io)?;
        Ok(WriteLock(f))
    }
}

/// Removes `<refname>.lock` left by a writer that died (kill -9, power loss)
/// between locking the ref and renaming the lock into place: every mmogit
/// writer of a `users/*` branch holds [`WriteLock`] around its ref update,
/// so a ref lock file seen by the holder is stale. Without this, libgit2
/// would report the branch as locked forever. Call only with the lock held.
pub(crate) fn remove_stale_ref_lock(repo: &Repository, refname: &str) {
    let path = repo.path().join(format!("{refname}.lock"));
    if path.exists() {
        tracing::warn!(lock = %path.display(), "removing a stale ref lock left by a writer that died");
        let _ = std::fs::remove_file(&path);
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

pub(crate) fn append_to(
    repo: &Repository,
    identity: &Identity,
    memories: &[VerifiedMemory],
    message: &str,
) -> Result<Oid, StoreError> {
    check_owner(identity, memories)?;
    let _lock = WriteLock::acquire(repo)?;
    // The blob, trees and commit are built in memory (a mempack backend
    // in front of the object database, on a handle of our own so that it
    // never stays on the caller's) and written as one pack: two files to
    // fsync (pack and index) instead of five loose objects, each with its
    // directory. Repository maintenance (`Store::gc`) merges the packs.
    let repo = &Repository::open_bare(repo.path())?;
    let odb = repo.odb()?;
    let mempack = odb.add_new_mempack_backend(1000)?;
    let persist = |commit: Oid, blobs: &[BlobEntry]| -> Result<(), StoreError> {
        let new = new_objects(repo, commit, blobs)?;
        let objects: Vec<git2::OdbObject> =
            new.iter().map(|o| odb.read(*o)).collect::<Result<_, _>>()?;
        let raw: Vec<(ObjectType, &[u8])> = objects.iter().map(|o| (o.kind(), o.data())).collect();
        crate::pack::write_pack(repo, &raw)?;
        drop(objects);
        mempack.reset()?;
        Ok(())
    };
    let oids = memories
        .iter()
        .map(|m| repo.blob(&m.to_json()))
        .collect::<Result<Vec<_>, _>>()?;
    let blobs = blob_entries(memories, &oids);
    match append_objects(repo, identity, &blobs, message)? {
        Some((commit, old)) => move_ref(repo, identity, commit, old, &blobs, message, &persist),
        None => repo
            .refname_to_id(&branch_name(&identity.public_key()))
            .map_err(Into::into),
    }
}

/// The objects a commit made by [`build_commit`] adds: the commit, its root
/// tree, `memories/`, the shard trees of `blobs`, and the blobs.
fn new_objects(
    repo: &Repository,
    commit: Oid,
    blobs: &[BlobEntry],
) -> Result<Vec<Oid>, StoreError> {
    let c = repo.find_commit(commit)?;
    let root = c.tree()?;
    let mut out = vec![commit, root.id()];
    if let Some(mem) = subtree(repo, &root, "memories")? {
        out.push(mem.id());
        let mut shards: Vec<&str> = blobs.iter().map(|(s, _, _)| s.as_str()).collect();
        shards.sort();
        shards.dedup();
        for s in shards {
            if let Some(e) = mem.get_name(s) {
                out.push(e.id());
            }
        }
    }
    out.extend(blobs.iter().map(|(_, _, oid)| *oid));
    Ok(out)
}

/// Reads a blob of at most `max` bytes (the size is checked before reading).
pub(crate) fn read_blob(repo: &Repository, oid: Oid, max: usize) -> Result<Vec<u8>, StoreError> {
    let odb = repo.odb()?;
    let (size, kind) = odb.read_header(oid)?;
    if kind != ObjectType::Blob {
        return Err(StoreError::InvalidMemory(format!("{oid} is not a blob")));
    }
    if size > max {
        return Err(StoreError::InvalidMemory(format!(
            "memory file is {size} bytes, more than the limit of {max}"
        )));
    }
    let obj = odb.read(oid)?;
    let data = obj.data().to_vec();
    Ok(data)
}

/// Runs `f` over `items` split into contiguous parts, one per core (at most
/// 8) when there are at least `min` items, each part with its own handle on
/// `repo` (a `Repository` is not shared between threads); the results come
/// back in the order of the parts.
pub(crate) fn par_parts<T: Sync, R: Send>(
    repo: &Repository,
    items: &[T],
    min: usize,
    f: impl Fn(&Repository, &[T]) -> R + Sync,
) -> Result<Vec<R>, git2::Error> {
    let threads = if items.len() < min {
        1
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8)
    };
    if threads == 1 {
        return Ok(vec![f(repo, items)]);
    }
    let chunk = items.len().div_ceil(threads).max(1);
    let git_dir = repo.path();
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(move || Ok(f(&Repository::open(git_dir)?, part))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread panicked"))
            .collect()
    })
}
