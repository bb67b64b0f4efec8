//! Git bundles built and read in process (libgit2), for peer-to-peer sync:
//! no git process on either side.
//!
//! A bundle is the standard v2 format, so `git bundle verify` / `git fetch`
//! accept it too:
//!
//! ```text
//! # v2 git bundle\n
//! -<oid>\n                      one per prerequisite (a commit the receiver has)
//! <oid> refs/heads/users/<key>\n one per branch carried
//! \n
//! <pack>
//! ```
//!
//! The sender ([`Store::build_bundle`]) packs the commits of our `users/*`
//! branches that the receiver lacks (a revwalk hiding the receiver's tips)
//! with the trees and blobs each adds to its parent, written straight from
//! the object database without a delta search (libgit2's PackBuilder spent
//! nearly all its time there: 5 s for 10,000 memories, 0.2 s for 10). The receiver ([`Store::ingest_bundle`])
//! checks the header, indexes the pack into the object database, points
//! quarantine refs at the incoming tips and runs the verified-ingest gate
//! ([`Store::accept_incoming`]): refs move only after verification.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use git2::Oid;
use mmogit_identity::PublicKey;
use sha2::{Digest, Sha256};

use crate::packidx::RawEntries;
use crate::repo::{branch_name, parse_branch_name, Store};
use crate::sync::IngestReport;
use crate::StoreError;

/// First line of every bundle.
pub const BUNDLE_SIGNATURE: &[u8] = b"# v2 git bundle\n";
/// Largest bundle header accepted (prerequisites and refs).
pub const MAX_BUNDLE_HEADER_BYTES: usize = 4 * 1024 * 1024;
/// Directory inside the repository for transfers being received.
pub const INCOMING_DIR: &str = "mmogit-incoming";

/// A bundle built in memory by [`Store::build_bundle`].
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The whole bundle: header and pack.
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`, lowercase hex.
    pub sha256: String,
    /// Branches carried, with their tips.
    pub branches: Vec<(PublicKey, Oid)>,
    /// Commits the receiver must already have.
    pub prerequisites: Vec<Oid>,
    /// Commits in the pack.
    pub commits: usize,
}

/// Why a bundle was not built.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle would be {size} bytes, more than the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<git2::Error> for BundleError {
    fn from(e: git2::Error) -> Self {
        BundleError::Store(e.into())
    }
}

fn bad(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidBundle(msg.into())
}

impl Store {
    /// Directory for transfers being received (`<repo>/mmogit-incoming`).
    pub fn incoming_dir(&self) -> PathBuf {
        self.path().join(INCOMING_DIR)
    }

    /// Removes what an interrupted transfer left behind: files in
    /// [`Store::incoming_dir`] (except those named after another live
    /// process) and every quarantine ref (refs matter only between their
    /// creation and the ingest a few milliseconds later; objects they kept
    /// alive are still in the object database).
    pub fn clean_incoming(&self) -> Result<usize, StoreError> {
        let dir = self.incoming_dir();
        let mut n = 0;
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    // `<pid>-...`: keep the files of another live process
                    // (e.g. `serve` receiving while `sync` starts).
                    let pid = e
                        .file_name()
                        .to_str()
                        .and_then(|n| n.split('-').next()?.parse::<u32>().ok());
                    if let Some(pid) = pid {
                        if pid != std::process::id()
                            && Path::new("/proc").join(pid.to_string()).exists()
                        {
                            continue;
                        }
                    }
                    if std::fs::remove_file(e.path()).is_ok() {
                        n += 1;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        }
        for (name, _) in self.quarantine_refs()? {
            if let Ok(mut r) = self.git().find_reference(&name) {
                if r.delete().is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Builds a bundle of every `users/*` branch we hold (or only those of
    /// `only`) without what the receiver already has (`have`: its tips; a
    /// tip we do not know is ignored). None when nothing is new for it.
    /// Refuses (without building further) when it exceeds `max_size`.
    pub fn build_bundle(
        &self,
        have: &[(PublicKey, Oid)],
        only: Option<&[PublicKey]>,
        max_size: u64,
    ) -> Result<Option<Bundle>, BundleError> {
        let repo = self.git();
        let known = self.known_commits(have);
        let have_tip = |pk: &PublicKey| have.iter().find(|(k, _)| k == pk).map(|(_, o)| *o);
        let mut branches = Vec::new();
        for (pk, tip) in self.branches()? {
            if only.is_some_and(|o| !o.contains(&pk)) {
                continue;
            }
            if have_tip(&pk) == Some(tip) {
                continue;
            }
            // Nothing new when the receiver's tip descends from ours.
            if let Some(t) = have_tip(&pk) {
                if known.contains(&t) && repo.graph_descendant_of(t, tip).unwrap_or(false) {
                    continue;
                }
            }
            branches.push((pk, tip));
        }
        if branches.is_empty() {
            return Ok(None);
        }
        let mut walk = repo.revwalk()?;
        // Oldest first: a tree's previous version (its delta base) must
        // come before it in the pack.
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)?;
        for (_, tip) in &branches {
            walk.push(*tip)?;
        }
        for k in &known {
            walk.hide(*k)?;
        }
        let mut commits = Vec::new();
        for c in walk {
            commits.push(c?);
        }
        if commits.is_empty() {
            return Ok(None);
        }
        let mut header = Vec::with_capacity(64 + 110 * (branches.len() + known.len()));
        header.extend_from_slice(BUNDLE_SIGNATURE);
        for k in &known {
            header.extend_from_slice(format!("-{k}\n").as_bytes());
        }
        for (pk, tip) in &branches {
            header.extend_from_slice(format!("{tip} {}\n", branch_name(pk)).as_bytes());
        }
        header.push(b'\n');
        let objects = new_objects(repo, &commits)?;
        let mut bytes = header;
        write_pack(repo, &objects, &mut bytes, max_size)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(Some(Bundle {
            bytes,
            sha256,
            branches,
            prerequisites: known,
            commits: commits.len(),
        }))
    }

    /// Reads a bundle file (from [`Store::build_bundle`] or `git bundle`),
    /// indexes its pack into a new quarantine object store (see
    /// `quarantine.rs`) with the tips as its refs, and runs
    /// [`Store::accept_incoming`]. A header that is not a v2 bundle, a
    /// prerequisite we lack, a ref that is not `users/<key>` or a damaged
    /// pack fail with nothing applied and nothing kept (a ref moves and
    /// objects enter the repository only after verification). `tag` names
    /// the quarantine: unique among concurrent ingests.
    pub fn ingest_bundle(&self, path: &Path, tag: &str) -> Result<IngestReport, StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        crate::sync::check_tag(tag)?;
        let f = std::fs::File::open(path).map_err(io)?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let (prereqs, tips) = read_header(&mut r)?;
        for p in &prereqs {
            if self.git().find_commit(*p).is_err() {
                return Err(bad(format!(
                    "the bundle needs commit {p}, which this repository lacks"
                )));
            }
        }
        let q = self.create_quarantine(tag)?;
        {
            let odb = q.store().git().odb()?;
            let mut w = odb.packwriter()?;
            let mut buf = vec![0u8; 1 << 20];
            let mut any = false;
            loop {
                let n = r.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                any = true;
                w.write_all(&buf[..n])
                    .map_err(|e| bad(format!("damaged pack: {e}")))?;
            }
            if !any {
                return Err(bad("the bundle carries no pack"));
            }
            w.commit().map_err(|e| bad(format!("damaged pack: {e}")))?;
        }
        for (pk, oid) in &tips {
            q.store().git().reference(
                &crate::repo::branch_name(pk),
                *oid,
                true,
                "incoming bundle",
            )?;
        }
        self.accept_incoming(crate::sync::Incoming {
            tips,
            refused: Vec::new(),
            quarantine: Some(q),
        })
    }
}

/// Reads and checks a bundle header; leaves `r` at the pack.
/// The objects the commits bring that their first parents do not have:
/// each commit, and the trees and blobs of its tree that differ from its
/// parent's (all of them for a root commit). Memory branches only add
/// files, so this is exactly what is new.
fn new_objects(repo: &git2::Repository, commits: &[Oid]) -> Result<Vec<NewObject>, BundleError> {
    // Each commit is diffed against its own parent, so long histories are
    // split over the cores and the lists joined in order without repeats.
    let parts = crate::repo::par_parts(repo, commits, 8, new_objects_of)?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in parts {
        out.extend(p?.into_iter().filter(|o| seen.insert(o.0)));
    }
    Ok(out)
}

/// An object a bundle carries, and for a tree the version of it at the
/// same path in the parent commit (a good delta base: memory branches only
/// add files, so the two differ by a few entries).
type NewObject = (Oid, Option<Oid>);

fn new_objects_of(repo: &git2::Repository, commits: &[Oid]) -> Result<Vec<NewObject>, BundleError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &c in commits {
        let commit = repo.find_commit(c)?;
        out.push((c, None));
        let tree = commit.tree()?;
        let parent_tree = if commit.parent_count() > 0 {
            Some(commit.parent(0)?.tree()?)
        } else {
            None
        };
        if parent_tree.as_ref().map(|t| t.id()) != Some(tree.id()) && seen.insert(tree.id()) {
            out.push((tree.id(), parent_tree.as_ref().map(|t| t.id())));
            tree_diff(repo, &tree, parent_tree.as_ref(), &mut out, &mut seen)?;
        }
    }
    Ok(out)
}

fn tree_diff(
    repo: &git2::Repository,
    new: &git2::Tree,
    old: Option<&git2::Tree>,
    out: &mut Vec<NewObject>,
    seen: &mut std::collections::HashSet<Oid>,
) -> Result<(), BundleError> {
    for e in new.iter() {
        let old_e = old.and_then(|o| o.get_name_bytes(e.name_bytes()));
        if old_e.as_ref().map(|o| o.id()) == Some(e.id()) || !seen.insert(e.id()) {
            continue;
        }
        let is_tree = e.kind() == Some(git2::ObjectType::Tree);
        let base = old_e
            .as_ref()
            .filter(|o| is_tree && o.kind() == Some(git2::ObjectType::Tree))
            .map(|o| o.id());
        out.push((e.id(), base));
        if is_tree {
            let sub = repo.find_tree(e.id())?;
            let old_sub = match &old_e {
                Some(o) if o.kind() == Some(git2::ObjectType::Tree) => {
                    Some(repo.find_tree(o.id())?)
                }
                _ => None,
            };
            tree_diff(repo, &sub, old_sub.as_ref(), out, seen)?;
        }
    }
    Ok(())
}

/// Appends a version 2 pack of `objects` to `out`, refusing to grow past
/// `max_size`. Blobs and commits are whole objects (memory files are small
/// and unique: a delta search would cost far more than it saves); a tree
/// whose previous version is earlier in the pack is a delta against it
/// (one commit adds one memory file: a 7 KiB tree becomes a few dozen
/// bytes), chains at most [`MAX_DELTA_DEPTH`] long.
fn write_pack(
    repo: &git2::Repository,
    objects: &[NewObject],
    out: &mut Vec<u8>,
    max_size: u64,
) -> Result<(), BundleError> {
    use sha1::Digest as _;
    let start = out.len();
    out.extend_from_slice(b"PACK");
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(&(objects.len() as u32).to_be_bytes());
    // Bytes of the bundle so far, over all threads, against `max_size`.
    let total = std::sync::atomic::AtomicU64::new(out.len() as u64);
    // Objects stored whole in our packs are copied as they are (no
    // inflating and compressing again). Finding them reads every pack
    // index, so only for large bundles.
    let raw = (objects.len() >= 2048).then(|| {
        let oids: Vec<Oid> = objects.iter().map(|o| o.0).collect();
        RawEntries::locate(repo.path(), &oids)
    });
    // Entries are independent: they are compressed on all cores and
    // appended in order (a delta's base is always in its own part).
    let parts = crate::repo::par_parts(repo, objects, 2048, |repo, part| {
        let mut buf = Vec::new();
        pack_entries(repo, part, raw.as_ref(), &mut buf, &total, max_size).map(|()| buf)
    })?;
    for p in parts {
        out.extend_from_slice(&p?);
    }
    let trailer = sha1::Sha1::digest(&out[start..]);
    out.extend_from_slice(&trailer);
    if out.len() as u64 > max_size {
        return Err(BundleError::TooLarge {
            size: out.len() as u64,
            limit: max_size,
        });
    }
    Ok(())
}

/// Appends the pack entries of `objects` (header + zlib of each) to `out`,
/// adding what it appends to `total` and refusing to let `total` grow past
/// `max_size` (threads share it).
fn pack_entries(
    repo: &git2::Repository,
    objects: &[NewObject],
    raw: Option<&RawEntries>,
    out: &mut Vec<u8>,
    total: &std::sync::atomic::AtomicU64,
    max_size: u64,
) -> Result<(), BundleError> {
    let odb = repo.odb()?;
    let mut z = crate::pack::Deflater::new();
    let mut raw = raw.map(RawEntries::reader);
    let account = |added: u64| {
        let size = total.fetch_add(added, std::sync::atomic::Ordering::Relaxed) + added;
        if size > max_size {
            Err(BundleError::TooLarge {
                size,
                limit: max_size,
            })
        } else {
            Ok(())
        }
    };
    // Entries written so far: where, and how long their delta chain is.
    let mut written: std::collections::HashMap<Oid, (usize, u32)> =
        std::collections::HashMap::with_capacity(objects.len());
    for (oid, base) in objects {
        let before = out.len();
        if raw.as_mut().is_some_and(|r| r.append(oid, out)) {
            account((out.len() - before) as u64)?;
            written.insert(*oid, (before, 0));
            continue;
        }
        let obj = odb.read(*oid)?;
        if let Some((base_at, depth)) = base
            .and_then(|b| written.get(&b).copied())
            .filter(|&(_, depth)| depth < MAX_DELTA_DEPTH)
        {
            let base_obj = odb.read(base.expect("checked above"))?;
            let delta = make_delta(base_obj.data(), obj.data());
            if delta.len() + 32 < obj.data().len() {
                crate::pack::object_header(out, OBJ_OFS_DELTA, delta.len());
                encode_ofs(out, (before - base_at) as u64);
                z.append(&delta, out)
                    .map_err(|e| bad(format!("compressing: {e}")))?;
                account((out.len() - before) as u64)?;
                written.insert(*oid, (before, depth + 1));
                continue;
            }
        }
        let kind: u8 = match obj.kind() {
            git2::ObjectType::Commit => 1,
            git2::ObjectType::Tree => 2,
            git2::ObjectType::Blob => 3,
            git2::ObjectType::Tag => 4,
            _ => return Err(bad(format!("object {oid} has an unexpected type")).into()),
        };
        let data = obj.data();
        crate::pack::object_header(out, kind, data.len());
        z.append(data, out)
            .map_err(|e| bad(format!("compressing: {e}")))?;
        account((out.len() - before) as u64)?;
        written.insert(*oid, (before, 0));
    }
    Ok(())
}

/// Longest chain of tree deltas in a bundle (git's default `pack.depth`):
/// reading the last version applies at most this many.
const MAX_DELTA_DEPTH: u32 = 50;

/// Pack entry type of a delta against an earlier entry of the same pack.
const OBJ_OFS_DELTA: u8 = 6;

/// The distance back to an OFS_DELTA's base, in git's encoding (big-endian
/// base-128 where each continued byte adds one).
fn encode_ofs(out: &mut Vec<u8>, mut ofs: u64) {
    let mut buf = [0u8; 10];
    let mut pos = buf.len() - 1;
    buf[pos] = (ofs & 127) as u8;
    ofs >>= 7;
    while ofs != 0 {
        ofs -= 1;
        pos -= 1;
        buf[pos] = 128 | (ofs & 127) as u8;
        ofs >>= 7;
    }
    out.extend_from_slice(&buf[pos..]);
}

/// A git delta turning `base` into `target`: copy their common prefix,
/// insert what differs, copy their common suffix. For a tree that only
/// gained entries since `base` (memory branches only add files) that is
/// the whole difference.
fn make_delta(base: &[u8], target: &[u8]) -> Vec<u8> {
    fn size(d: &mut Vec<u8>, mut n: usize) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                d.push(b);
                return;
            }
            d.push(b | 0x80);
        }
    }
    fn copy(d: &mut Vec<u8>, mut offset: usize, mut len: usize) {
        while len > 0 {
            let n = len.min(0xffff);
            let at = d.len();
            d.push(0x80);
            for i in 0..4 {
                let b = (offset >> (8 * i)) as u8;
                if b != 0 {
                    d[at] |= 1 << i;
                    d.push(b);
                }
            }
            for i in 0..2 {
                let b = (n >> (8 * i)) as u8;
                if b != 0 {
                    d[at] |= 1 << (4 + i);
                    d.push(b);
                }
            }
            offset += n;
            len -= n;
        }
    }
    let prefix = base.iter().zip(target).take_while(|(a, b)| a == b).count();
    let room = base.len().min(target.len()) - prefix;
    let suffix = base
        .iter()
        .rev()
        .zip(target.iter().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    let mut d = Vec::with_capacity(32 + target.len() - prefix - suffix);
    size(&mut d, base.len());
    size(&mut d, target.len());
    copy(&mut d, 0, prefix);
    for chunk in target[prefix..target.len() - suffix].chunks(127) {
        d.push(chunk.len() as u8);
        d.extend_from_slice(chunk);
    }
    copy(&mut d, base.len() - suffix, suffix);
    d
}

/// Prerequisites and branch tips of a bundle header.
type Header = (Vec<Oid>, Vec<(PublicKey, Oid)>);

fn read_header(r: &mut impl BufRead) -> Result<Header, StoreError> {
    let mut read = 0usize;
    let mut line = Vec::with_capacity(128);
    let mut next_line = |r: &mut dyn BufRead, line: &mut Vec<u8>| -> Result<(), StoreError> {
        line.clear();
        let n = r
            .take(512)
            .read_until(b'\n', line)
            .map_err(|e| bad(format!("reading the bundle header: {e}")))?;
        read += n;
        if read > MAX_BUNDLE_HEADER_BYTES {
            return Err(bad("bundle header too large"));
        }
        if line.last() != Some(&b'\n') {
            return Err(bad("bundle header line too long or truncated"));
        }
        line.pop();
        Ok(())
    };
    next_line(r, &mut line)?;
    line.push(b'\n');
    if line != BUNDLE_SIGNATURE {
        return Err(bad("not a v2 git bundle"));
    }
    let mut prereqs = Vec::new();
    let mut tips: Vec<(PublicKey, Oid)> = Vec::new();
    loop {
        next_line(r, &mut line)?;
        if line.is_empty() {
            break;
        }
        let text = std::str::from_utf8(&line).map_err(|_| bad("bundle header is not UTF-8"))?;
        if let Some(rest) = text.strip_prefix('-') {
            let oid = rest.split(' ').next().unwrap_or("");
            prereqs.push(Oid::from_str(oid).map_err(|_| bad("bad prerequisite line"))?);
            continue;
        }
        let (oid, name) = text
            .split_once(' ')
            .ok_or_else(|| bad("bad ref line in the bundle header"))?;
        let oid = Oid::from_str(oid).map_err(|_| bad("bad object id in the bundle header"))?;
        let pk = parse_branch_name(name)
            .ok_or_else(|| bad(format!("bundle carries {name:?}, not users/<key>")))?;
        if tips.iter().any(|(k, _)| *k == pk) {
            return Err(bad(format!("bundle carries {name} twice")));
        }
        tips.push((pk, oid));
    }
    if tips.is_empty() {
        return Err(bad("the bundle carries no branch"));
    }
    tips.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok((prereqs, tips))
}

/// Receives a bundle in chunks into a file, hashing as it goes, and checks
/// the declared size and hash.
pub struct BundleWriter {
    path: PathBuf,
    file: Option<std::fs::File>,
    hasher: Sha256,
    written: u64,
    total: u64,
    sha256: String,
}

impl BundleWriter {
    /// Creates `path` for a bundle of `total` bytes with SHA-256 `sha256`.
    pub fn create(path: PathBuf, total: u64, sha256: &str) -> Result<BundleWriter, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let file = std::fs::File::create(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(BundleWriter {
            path,
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
            total,
            sha256: sha256.to_ascii_lowercase(),
        })
    }

    /// Appends a chunk; refuses one that goes past the declared size.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        if self.written + data.len() as u64 > self.total {
            return Err(bad(format!(
                "more data than the declared {} bytes",
                self.total
            )));
        }
        let f = self.file.as_mut().ok_or_else(|| bad("transfer closed"))?;
        f.write_all(data).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// All declared bytes arrived.
    pub fn complete(&self) -> bool {
        self.written == self.total
    }

    /// Checks size and hash; returns the path of the complete file.
    pub fn finish(mut self) -> Result<PathBuf, StoreError> {
        if !self.complete() {
            // Drop removes the file.
            return Err(bad(format!(
                "{} of {} bytes received",
                self.written, self.total
            )));
        }
        drop(self.file.take());
        let got = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if got != self.sha256 {
            let _ = std::fs::remove_file(&self.path);
            return Err(bad(format!(
                "SHA-256 mismatch: declared {}, received {got}",
                self.sha256
            )));
        }
        Ok(std::mem::take(&mut self.path))
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        if self.file.is_some() && !self.path.as_os_str().is_empty() {
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryType, NewMemory, VerifiedMemory};
    use mmogit_identity::Identity;

    fn mem(id: &Identity, n: usize) -> VerifiedMemory {
        VerifiedMemory::create(
            id,
            NewMemory {
                kind: MemoryType::Learning,
                content: format!("memory number {n}"),
                tags: vec!["t".into()],
                confidence: None,
                private: false,
            },
        )
        .unwrap()
    }

    /// A temporary directory with two empty stores `a` and `b`, and the
    /// identity that writes in `a`.
    fn two_stores() -> (tempfile::TempDir, Store, Store, Identity) {
        let tmp = tempfile::tempdir().unwrap();
        let a = Store::open_or_init(&tmp.path().join("a.git")).unwrap();
        let b = Store::open_or_init(&tmp.path().join("b.git")).unwrap();
        (tmp, a, b, Identity::from_secret_bytes(&[1; 32]))
    }

    fn write_file(dir: &Path, b: &Bundle) -> PathBuf {
        let p = dir.join("b.bundle");
        let mut w = BundleWriter::create(p.clone(), b.bytes.len() as u64, &b.sha256).unwrap();
        for c in b.bytes.chunks(1000) {
            w.write(c).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn full_then_incremental_bundle() {
        let (tmp, a, b, ida) = two_stores();
        for n in 0..5 {
            a.append(&ida, &[mem(&ida, n)], "m").unwrap();
        }
        let full = a.build_bundle(&[], None, u64::MAX).unwrap().unwrap();
        assert_eq!(full.commits, 5);
        assert!(full.bytes.starts_with(BUNDLE_SIGNATURE));
        let report = b
            .ingest_bundle(&write_file(tmp.path(), &full), "t1")
            .unwrap();
        assert!(report.is_ok());
        assert_eq!(report.memories_added(), 5);
        assert_eq!(
            b.tip(&ida.public_key()).unwrap(),
            a.tip(&ida.public_key()).unwrap()
        );
        assert!(b.quarantine_refs().unwrap().is_empty());
        // Nothing new.
        let have = b.branches().unwrap();
        assert!(a.build_bundle(&have, None, u64::MAX).unwrap().is_none());
        for n in 5..8 {
            a.append(&ida, &[mem(&ida, n)], "m").unwrap();
        }
        let inc = a.build_bundle(&have, None, u64::MAX).unwrap().unwrap();
        assert_eq!(inc.commits, 3);
        assert_eq!(inc.prerequisites.len(), 1);
        assert!(inc.bytes.len() < full.bytes.len());
        // A real bundle: system git agrees.
        let p = write_file(tmp.path(), &inc);
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(b.path())
            .args(["bundle", "verify", "-q"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = b.ingest_bundle(&p, "t2").unwrap();
        assert_eq!(report.memories_added(), 3);
        // Too large is refused.
        assert!(matches!(
            a.build_bundle(&[], None, 100),
            Err(BundleError::TooLarge { .. })
        ));
    }

    /// Counts the entries of each type in a bundle's pack (by indexing it
    /// with system git, which also checks every object and delta).
    fn pack_types(dir: &Path, b: &Bundle) -> (usize, usize) {
        let p = write_file(dir, b);
        let bytes = std::fs::read(&p).unwrap();
        let at = bytes.windows(4).position(|w| w == b"PACK").unwrap();
        let pack = dir.join("t.pack");
        std::fs::write(&pack, &bytes[at..]).unwrap();
        let out = std::process::Command::new("git")
            .args(["index-pack", "-v"])
            .arg(&pack)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new("git")
            .args(["verify-pack", "-v"])
            .arg(pack.with_extension("idx"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        // Delta entries have two more columns (depth, base).
        let entries: Vec<usize> = text
            .lines()
            .filter(|l| l.len() > 41 && l.as_bytes()[40] == b' ')
            .map(|l| l.split_whitespace().count())
            .collect();
        (
            entries.iter().filter(|&&n| n == 5).count(),
            entries.iter().filter(|&&n| n == 7).count(),
        )
    }

    #[test]
    fn trees_travel_as_deltas_against_their_previous_version() {
        let (tmp, a, b, ida) = two_stores();
        // One commit per memory, as `remember` makes them: each commit
        // rewrites the root, the 256-entry `memories` tree and one shard.
        for n in 0..120 {
            a.append(&ida, &[mem(&ida, n)], "m").unwrap();
        }
        let full = a.build_bundle(&[], None, u64::MAX).unwrap().unwrap();
        let (whole, deltas) = pack_types(tmp.path(), &full);
        // The 256-entry `memories` tree changes in every commit: all its
        // versions but the first and every 51st of a chain are deltas
        // (the tiny root trees and new shards are not worth one).
        assert!(deltas >= 119 - 2, "{whole} whole, {deltas} deltas");
        assert!(full.bytes.len() < 120 * 1500, "{} bytes", full.bytes.len());
        let report = b
            .ingest_bundle(&write_file(tmp.path(), &full), "t1")
            .unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.memories_added(), 120);
        assert!(b.verify_all().unwrap().is_ok());
        // An incremental bundle: its first trees' bases are not in it, so
        // they go whole; the later ones are deltas.
        let have = b.branches().unwrap();
        for n in 120..130 {
            a.append(&ida, &[mem(&ida, n)], "m").unwrap();
        }
        let inc = a.build_bundle(&have, None, u64::MAX).unwrap().unwrap();
        let (_, deltas) = pack_types(tmp.path(), &inc);
        assert!(deltas >= 9, "{deltas} deltas");
        let report = b
            .ingest_bundle(&write_file(tmp.path(), &inc), "t2")
            .unwrap();
        assert_eq!(report.memories_added(), 10);
        assert!(b.verify_all().unwrap().is_ok());
        // What the receiver stored serves a third store in turn.
        let c = Store::open_or_init(&tmp.path().join("c.git")).unwrap();
        let relay = b.build_bundle(&[], None, u64::MAX).unwrap().unwrap();
        let report = c
            .ingest_bundle(&write_file(tmp.path(), &relay), "t3")
            .unwrap();
        assert_eq!(report.memories_added(), 130);
    }

    #[test]
    fn deltas_rebuild_their_target() {
        // Applies a delta the way git does, for the cases make_delta meets.
        fn apply(base: &[u8], d: &[u8]) -> Vec<u8> {
            let mut i = 0;
            let mut size = || {
                let (mut n, mut shift) = (0usize, 0);
                loop {
                    let b = d[i];
                    i += 1;
                    n |= ((b & 0x7f) as usize) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        return n;
                    }
                }
            };
            assert_eq!(size(), base.len());
            let want = size();
            let mut out = Vec::new();
            while i < d.len() {
                let cmd = d[i];
                i += 1;
                if cmd & 0x80 != 0 {
                    let (mut off, mut n) = (0usize, 0usize);
                    for k in 0..4 {
                        if cmd & (1 << k) != 0 {
                            off |= (d[i] as usize) << (8 * k);
                            i += 1;
                        }
                    }
                    for k in 0..3 {
                        if cmd & (1 << (4 + k)) != 0 {
                            n |= (d[i] as usize) << (8 * k);
                            i += 1;
                        }
                    }
                    if n == 0 {
                        n = 0x10000;
                    }
                    out.extend_from_slice(&base[off..off + n]);
                } else {
                    out.extend_from_slice(&d[i..i + cmd as usize]);
                    i += cmd as usize;
                }
            }
            assert_eq!(out.len(), want);
            out
        }
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut inserted = big.clone();
        inserted.splice(70_000..70_000, b"new entry".iter().copied());
        let cases: Vec<(&[u8], &[u8])> = vec![
            (b"", b"abc"),
            (b"abc", b"abc"),
            (b"abcdef", b"abXYZcdef"),
            (b"abcdef", b"abc"),
            (b"aaaa", b"aaaaaa"),
            (&big, &inserted),
            (&inserted, &big),
        ];
        for (base, target) in cases {
            assert_eq!(apply(base, &make_delta(base, target)), target);
        }
        let mut ofs = Vec::new();
        encode_ofs(&mut ofs, 127);
        encode_ofs(&mut ofs, 128);
        encode_ofs(&mut ofs, 16_511);
        assert_eq!(ofs, [0x7f, 0x80, 0x00, 0xff, 0x7f]);
    }

    #[test]
    fn bad_bundles_apply_nothing() {
        let (tmp, a, b, ida) = two_stores();
        let c = Store::open_or_init(&tmp.path().join("c.git")).unwrap();
        a.append(&ida, &[mem(&ida, 0)], "m").unwrap();
        let have = a.branches().unwrap();
        a.append(&ida, &[mem(&ida, 1)], "m").unwrap();
        // Incremental bundle to a repository lacking the prerequisite.
        let inc = a.build_bundle(&have, None, u64::MAX).unwrap().unwrap();
        let p = write_file(tmp.path(), &inc);
        let e = c.ingest_bundle(&p, "t").unwrap_err();
        assert!(e.to_string().contains("lacks"), "{e}");
        assert!(c.branches().unwrap().is_empty());
        // Truncated pack.
        let full = a.build_bundle(&[], None, u64::MAX).unwrap().unwrap();
        let p = tmp.path().join("cut.bundle");
        std::fs::write(&p, &full.bytes[..full.bytes.len() - 30]).unwrap();
        assert!(b.ingest_bundle(&p, "t").is_err());
        assert!(b.branches().unwrap().is_empty());
        // Not a bundle.
        std::fs::write(&p, b"hello\n").unwrap();
        assert!(b.ingest_bundle(&p, "t").is_err());
        // Hash mismatch and overlong data.
        let mut w = BundleWriter::create(tmp.path().join("x"), 3, &"00".repeat(32)).unwrap();
        assert!(w.write(&[1, 2, 3, 4]).is_err());
        w.write(&[1, 2, 3]).unwrap();
        assert!(w.finish().unwrap_err().to_string().contains("SHA-256"));
    }

    /// A bundle whose pack is `entries` (type, raw body before zlib, and
    /// for an OFS delta the index of its base entry), claiming tip `tip`
    /// for `key`.
    fn crafted_bundle(
        key: &PublicKey,
        tip: Oid,
        entries: &[(u8, Vec<u8>, Option<usize>)],
    ) -> Vec<u8> {
        use sha1::Digest;
        let mut pack = b"PACK".to_vec();
        pack.extend_from_slice(&2u32.to_be_bytes());
        pack.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        let mut z = crate::pack::Deflater::new();
        let mut starts = Vec::new();
        for (kind, body, base) in entries {
            let start = pack.len();
            starts.push(start);
            crate::pack::object_header(&mut pack, *kind, body.len());
            if let Some(b) = base {
                encode_ofs(&mut pack, (start - starts[*b]) as u64);
            }
            z.append(body, &mut pack).unwrap();
        }
        let sum = sha1::Sha1::digest(&pack);
        pack.extend_from_slice(&sum);
        let mut out = format!(
            "# v2 git bundle\n{tip} refs/heads/users/{}\n\n",
            key.to_hex()
        )
        .into_bytes();
        out.extend_from_slice(&pack);
        out
    }

    #[test]
    fn a_delta_claiming_a_huge_object_is_refused_before_it_is_built() {
        // A 1-byte blob, then a delta on it whose header claims 2 GiB - 1:
        // libgit2 would allocate the result; its limit (16 MiB) refuses it.
        let (tmp, _a, b, ida) = two_stores();
        let mut delta = Vec::new();
        for mut n in [1usize, (1 << 31) - 1] {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    delta.push(byte);
                    break;
                }
                delta.push(byte | 0x80);
            }
        }
        delta.extend_from_slice(&[1, b'x']);
        let tip = Oid::from_str(&"ab".repeat(20)).unwrap();
        let bytes = crafted_bundle(
            &ida.public_key(),
            tip,
            &[(3, b"x".to_vec(), None), (OBJ_OFS_DELTA, delta, Some(0))],
        );
        let p = tmp.path().join("bomb.bundle");
        std::fs::write(&p, &bytes).unwrap();
        let e = b.ingest_bundle(&p, "bomb").unwrap_err().to_string();
        // libgit2's own words for its size limit.
        assert!(e.contains("overly large object"), "{e}");
        assert!(b.branches().unwrap().is_empty());
        assert!(b.quarantines().is_empty());
        assert_eq!(crate::repo::MAX_PACK_OBJECT_SIZE, 16 << 20);
    }
}
