//! The quarantine object store: incoming objects are written apart from the
//! repository and move in only when something of them is accepted, as git's
//! receive quarantine does.
//!
//! A quarantine is a bare repository at `<repo>/mmogit-quarantine/<tag>`
//! whose `objects/info/alternates` names the repository's object directory:
//! through it the incoming objects and ours are read together (fetch
//! negotiation, verification), while everything written (a fetched or
//! indexed pack, loose objects) lands in the quarantine. Its refs are the
//! incoming tips. No ref of the repository ever points into a quarantine:
//! before a branch or an evidence ref moves, the quarantine's objects are
//! moved into the repository (packs first, each `.idx` after its `.pack`,
//! then loose objects), and a quarantine is deleted when its ingest ends,
//! whatever the outcome. A refused transfer leaves no object behind.
//!
//! While in use a quarantine holds an exclusive lock on `<tag>.lock` beside
//! it; a quarantine whose lock is free was left by an ingest that was killed
//! and is removed by the next one.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use git2::Repository;

use crate::repo::Store;
use crate::StoreError;

/// Folder of the quarantines inside the repository's git directory.
pub const QUARANTINE_DIR: &str = "mmogit-quarantine";

/// An incoming object store being verified. Deleted when dropped.
pub struct Quarantine {
    store: Store,
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    migrated: std::cell::Cell<bool>,
}

impl std::fmt::Debug for Quarantine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Quarantine({})", self.dir.display())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Creates the quarantine `tag` (1–64 letters, digits, `-`, `_`),
    /// removing first any quarantine left by a killed ingest.
    pub(crate) fn create_quarantine(&self, tag: &str) -> Result<Quarantine, StoreError> {
        let root = self.path().join(QUARANTINE_DIR);
        fs::create_dir_all(&root).map_err(io(&root))?;
        let (_, removed) = sweep(&root);
        if removed > 0 {
            tracing::info!(removed, "removed quarantines of interrupted ingests");
        }
        let dir = root.join(tag);
        let lock_path = root.join(format!("{tag}.lock"));
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        // Blocks only while a cleanup looks at it (or, were a tag reused,
        // until the other ingest ends and has removed its quarantine).
        lock.lock().map_err(io(&lock_path))?;
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        let mut opts = git2::RepositoryInitOptions::new();
        opts.bare(true).mkpath(true);
        Repository::init_opts(&dir, &opts)?;
        let objects = fs::canonicalize(self.path().join("objects"))
            .map_err(io(&self.path().join("objects")))?;
        let info = dir.join("objects").join("info");
        fs::create_dir_all(&info).map_err(io(&info))?;
        let alternates = info.join("alternates");
        fs::write(&alternates, format!("{}\n", objects.display())).map_err(io(&alternates))?;
        // Opened after the alternates file exists, so its object database
        // reads ours too.
        let store = Store::open(&dir)?;
        Ok(Quarantine {
            store,
            dir,
            lock_path,
            _lock: lock,
            migrated: std::cell::Cell::new(false),
        })
    }

    /// The quarantines on disk (in use or abandoned), by tag.
    pub fn quarantines(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.path().join(QUARANTINE_DIR)) else {
            return Vec::new();
        };
        let mut out: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        out.sort();
        out
    }
}

/// Removes the quarantines under `root` whose lock is free (left by a
/// killed ingest) and counts those in use. Returns (live, removed).
pub(crate) fn sweep(root: &Path) -> (usize, usize) {
    let Ok(rd) = fs::read_dir(root) else {
        return (0, 0);
    };
    let (mut live, mut removed) = (0, 0);
    for e in rd.filter_map(|e| e.ok()) {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        let lock_path = path.with_extension("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path);
        match lock {
            Ok(lock) if lock.try_lock().is_ok() => {
                if fs::remove_dir_all(&path).is_ok() {
                    let _ = fs::remove_file(&lock_path);
                    removed += 1;
                }
            }
            // Held by a running ingest (or unreadable: keep it, to be safe).
            _ => live += 1,
        }
    }
    (live, removed)
}

impl Quarantine {
    /// The quarantine as a store: reads its objects and the repository's.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Moves the quarantine's objects into `into`'s object directory (once).
    /// Packs move before loose objects, each pack's index after its data, so
    /// a reader of `into` never sees an index without its pack.
    pub(crate) fn migrate(&self, into: &Store) -> Result<(), StoreError> {
        if self.migrated.get() {
            return Ok(());
        }
        let src = self.dir.join("objects");
        let dst = into.path().join("objects");
        let src_pack = src.join("pack");
        let dst_pack = dst.join("pack");
        fs::create_dir_all(&dst_pack).map_err(io(&dst_pack))?;
        let mut packs: Vec<PathBuf> = match fs::read_dir(&src_pack) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        };
        // .pack, then .rev, then .idx; other files (.keep, temporaries) stay.
        let rank = |p: &PathBuf| match p.extension().and_then(|e| e.to_str()) {
            Some("pack") => Some(0),
            Some("rev") => Some(1),
            Some("idx") => Some(2),
            _ => None,
        };
        packs.retain(|p| rank(p).is_some());
        packs.sort_by_key(|p| rank(p));
        let mut synced = Vec::new();
        for p in packs {
            let to = dst_pack.join(p.file_name().expect("a file in a directory"));
            move_file(&p, &to)?;
        }
        if let Ok(rd) = fs::read_dir(&src) {
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    continue;
                }
                let to_dir = dst.join(&*name);
                fs::create_dir_all(&to_dir).map_err(io(&to_dir))?;
                for o in fs::read_dir(e.path())
                    .map_err(io(&e.path()))?
                    .filter_map(|o| o.ok())
                {
                    move_file(&o.path(), &to_dir.join(o.file_name()))?;
                }
                synced.push(to_dir);
            }
        }
        // The renames are entries of these directories: durable before a
        // ref points at the objects (the files themselves were fsynced when
        // written, by libgit2 or by git with core.fsync).
        crate::repo::sync_object_dirs(into.path())?;
        for d in &synced {
            crate::repo::sync_dir(d)?;
        }
        into.git().odb()?.refresh()?;
        self.migrated.set(true);
        Ok(())
    }
}

/// Renames `from` to `to`; an existing `to` has the same content (object
/// and pack names are hashes of it) and is kept.
fn move_file(from: &Path, to: &Path) -> Result<(), StoreError> {
    if to.exists() {
        let _ = fs::remove_file(from);
        return Ok(());
    }
    fs::rename(from, to).map_err(io(from))
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a quarantine");
        }
        let _ = fs::remove_file(&self.lock_path);
    }
}
