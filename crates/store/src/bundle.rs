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
use crate::sync::{IngestReport, QUARANTINE_PREFIX};
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
    /// indexes its pack into our object database, points
    /// `refs/quarantine/<tag>/users/<key>` at its tips and runs
    /// [`Store::accept_incoming`]. A header that is not a v2 bundle, a
    /// prerequisite we lack, a ref that is not `users/<key>` or a damaged
    /// pack fail with nothing applied (a ref moves only after verification).
    pub fn ingest_bundle(&self, path: &Path, tag: &str) -> Result<IngestReport, StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let (prereqs, tips) = read_header(&mut r)?;
        let repo = self.git();
        for p in &prereqs {
            if repo.find_commit(*p).is_err() {
                return Err(bad(format!(
                    "the bundle needs commit {p}, which this repository lacks"
                )));
            }
        }
        let odb = repo.odb()?;
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
        let prefix = format!("{QUARANTINE_PREFIX}{tag}/users/");
        for (pk, oid) in &tips {
            repo.reference(
                &format!("{prefix}{}", pk.to_hex()),
                *oid,
                true,
                "incoming bundle",
            )?;
        }
        self.accept_incoming(tag, &tips)
    }
}

/// Reads and checks a bundle header; leaves `r` at the pack.
/// The objects the commits bring that their first parents do not have:
/// each commit, and the trees and blobs of its tree that differ from its
/// parent's (all of them for a root commit). Memory branches only add
/// files, so this is exactly what is new.
fn new_objects(repo: &git2::Repository, commits: &[Oid]) -> Result<Vec<Oid>, BundleError> {
    // Each commit is diffed against its own parent, so long histories are
    // split over the cores (each thread with its own repository handle)
    // and the lists joined in order without repeats.
    let threads = if commits.len() < 8 {
        1
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8)
    };
    if threads == 1 {
        return new_objects_of(repo, commits);
    }
    let chunk = commits.len().div_ceil(threads);
    let git_dir = repo.path().to_path_buf();
    let parts: Vec<Result<Vec<Oid>, BundleError>> = std::thread::scope(|s| {
        let handles: Vec<_> = commits
            .chunks(chunk)
            .map(|part| {
                let git_dir = &git_dir;
                s.spawn(move || new_objects_of(&git2::Repository::open(git_dir)?, part))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bundle thread panicked"))
            .collect()
    });
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in parts {
        out.extend(p?.into_iter().filter(|o| seen.insert(*o)));
    }
    Ok(out)
}

fn new_objects_of(repo: &git2::Repository, commits: &[Oid]) -> Result<Vec<Oid>, BundleError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &c in commits {
        let commit = repo.find_commit(c)?;
        out.push(c);
        let tree = commit.tree()?;
        let parent_tree = if commit.parent_count() > 0 {
            Some(commit.parent(0)?.tree()?)
        } else {
            None
        };
        if parent_tree.as_ref().map(|t| t.id()) != Some(tree.id()) && seen.insert(tree.id()) {
            out.push(tree.id());
            tree_diff(repo, &tree, parent_tree.as_ref(), &mut out, &mut seen)?;
        }
    }
    Ok(out)
}

fn tree_diff(
    repo: &git2::Repository,
    new: &git2::Tree,
    old: Option<&git2::Tree>,
    out: &mut Vec<Oid>,
    seen: &mut std::collections::HashSet<Oid>,
) -> Result<(), BundleError> {
    for e in new.iter() {
        let old_e = old.and_then(|o| o.get_name_bytes(e.name_bytes()));
        if old_e.as_ref().map(|o| o.id()) == Some(e.id()) || !seen.insert(e.id()) {
            continue;
        }
        out.push(e.id());
        if e.kind() == Some(git2::ObjectType::Tree) {
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

/// Appends a version 2 pack of `objects` (whole objects, zlib, no deltas:
/// memory files are small and unique, so a delta search costs far more
/// than it saves) to `out`, refusing to grow past `max_size`.
fn write_pack(
    repo: &git2::Repository,
    objects: &[Oid],
    out: &mut Vec<u8>,
    max_size: u64,
) -> Result<(), BundleError> {
    use sha1::Digest as _;
    let start = out.len();
    out.extend_from_slice(b"PACK");
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(&(objects.len() as u32).to_be_bytes());
    // Entries are independent: compress them on all cores, each thread
    // with its own handle on the repository, and append them in order.
    let threads = if objects.len() < 2048 {
        1
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8)
    };
    // Bytes of the bundle so far, over all threads, against `max_size`.
    let total = std::sync::atomic::AtomicU64::new(out.len() as u64);
    // Objects stored whole in our packs are copied as they are (no
    // inflating and compressing again). Finding them reads every pack
    // index, so only for large bundles.
    let raw = (objects.len() >= 2048).then(|| RawEntries::locate(repo.path(), objects));
    if threads == 1 {
        pack_entries(repo, objects, raw.as_ref(), out, &total, max_size)?;
    } else {
        let chunk = objects.len().div_ceil(threads);
        let git_dir = repo.path().to_path_buf();
        let parts: Vec<Result<Vec<u8>, BundleError>> = std::thread::scope(|s| {
            let handles: Vec<_> = objects
                .chunks(chunk)
                .map(|part| {
                    let (git_dir, total, raw) = (&git_dir, &total, raw.as_ref());
                    s.spawn(move || {
                        let repo = git2::Repository::open(git_dir)?;
                        let mut buf = Vec::new();
                        pack_entries(&repo, part, raw, &mut buf, total, max_size)?;
                        Ok(buf)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("pack thread panicked"))
                .collect()
        });
        for p in parts {
            out.extend_from_slice(&p?);
        }
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
    objects: &[Oid],
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
    for oid in objects {
        let before = out.len();
        if raw.as_mut().is_some_and(|r| r.append(oid, out)) {
            account((out.len() - before) as u64)?;
            continue;
        }
        let obj = odb.read(*oid)?;
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
    }
    Ok(())
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
        let tmp = tempfile::tempdir().unwrap();
        let a = Store::open_or_init(&tmp.path().join("a.git")).unwrap();
        let b = Store::open_or_init(&tmp.path().join("b.git")).unwrap();
        let ida = Identity::from_secret_bytes(&[1; 32]);
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

    #[test]
    fn bad_bundles_apply_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Store::open_or_init(&tmp.path().join("a.git")).unwrap();
        let b = Store::open_or_init(&tmp.path().join("b.git")).unwrap();
        let c = Store::open_or_init(&tmp.path().join("c.git")).unwrap();
        let ida = Identity::from_secret_bytes(&[1; 32]);
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
}
