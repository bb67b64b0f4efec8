//! Repository maintenance: many small packs (one per `remember`, per import
//! batch, per ingest) and loose objects (an import's trees and commits) are
//! repacked into one pack, and objects nothing points at are dropped once older than a grace
//! period.
//!
//! [`Store::gc`] runs system git (`git repack -d -l --cruft`, then `git
//! prune`) while holding the repository write lock that every writer of
//! objects and refs takes (`remember`, `import`, an ingest moving its
//! quarantine in, an evidence ref): it never runs beside one. Every ref is
//! kept with its objects: `users/*` branches, evidence refs, anything else.
//! A live quarantine (an ingest fetching or verifying; its objects are its
//! own, read beside ours) is never removed, and while one is live nothing
//! unreachable is dropped at all: the ingest may rely on any object of ours.

use std::ffi::OsString;
use std::fs;
use std::time::{Duration, Instant};

use crate::quarantine::QUARANTINE_DIR;
use crate::repo::{Store, WriteLock};
use crate::StoreError;

/// Unreachable objects younger than this are kept by default (git's own
/// default for `gc.pruneExpire`).
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(14 * 24 * 3600);
/// [`Store::consolidate_packs`] rolls packs up past this many.
pub const AUTO_CONSOLIDATE_PACKS: usize = 50;
/// Time limit of each git command of [`Store::gc`] by default.
pub const DEFAULT_GC_TIMEOUT: Duration = Duration::from_secs(3600);

/// How the object directory looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ObjectCounts {
    /// Packs (`objects/pack/*.pack`).
    pub packs: usize,
    /// Loose objects (`objects/xx/*`).
    pub loose: usize,
    /// Bytes of packs, their indexes and loose objects.
    pub bytes: u64,
}

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub before: ObjectCounts,
    pub after: ObjectCounts,
    /// Unreachable objects older than the grace period were dropped (false
    /// when a live quarantine kept everything).
    pub pruned: bool,
    /// Grace period, seconds.
    pub grace_secs: u64,
    /// Quarantines of running ingests seen (kept, and nothing pruned).
    pub live_quarantines: usize,
    /// Quarantines left by killed ingests, removed.
    pub abandoned_quarantines: usize,
    /// Wall time, including waiting for the write lock.
    #[serde(rename = "elapsed_ms", serialize_with = "as_millis")]
    pub elapsed: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Store {
    /// Counts packs and loose objects (a directory listing; cheap).
    pub fn object_counts(&self) -> ObjectCounts {
        let mut c = ObjectCounts::default();
        let objects = self.path().join("objects");
        let Ok(rd) = fs::read_dir(&objects) else {
            return c;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == "pack" {
                for p in fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    let n = p.file_name();
                    let n = n.to_string_lossy();
                    if n.ends_with(".pack") {
                        c.packs += 1;
                    }
                    if n.ends_with(".pack") || n.ends_with(".idx") {
                        c.bytes += p.metadata().map(|m| m.len()).unwrap_or(0);
                    }
                }
            } else if name.len() == 2 && is_hex(&name) {
                for o in fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    let n = o.file_name();
                    if n.len() == 38 && is_hex(&n.to_string_lossy()) {
                        c.loose += 1;
                        c.bytes += o.metadata().map(|m| m.len()).unwrap_or(0);
                    }
                }
            }
        }
        c
    }

    /// Repacks every pack and loose object into one pack and drops objects
    /// no ref reaches that are older than `grace` (see the module
    /// documentation), holding the repository write lock throughout. Each
    /// git command is killed after `timeout` (what it had not finished is
    /// left as it was: git replaces packs only once the new one is whole).
    pub fn gc(&self, grace: Duration, timeout: Duration) -> Result<GcReport, StoreError> {
        let started = Instant::now();
        let _lock = WriteLock::acquire(self.git())?;
        let before = self.object_counts();
        let (live, abandoned) = crate::quarantine::sweep(&self.path().join(QUARANTINE_DIR));
        let expire = if live > 0 {
            tracing::info!(
                live,
                "an ingest is running: repacking without dropping anything"
            );
            "never".to_string()
        } else {
            format!("{}.seconds.ago", grace.as_secs())
        };
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let expiration = format!("--cruft-expiration={expire}");
        // -l: only our objects (we borrow none); --cruft: unreachable objects
        // go to a cruft pack with their ages, those older than the grace
        // period are dropped; -d: the packs and loose objects now in the new
        // pack are deleted.
        self.git_checked(
            "git repack",
            &args(&["repack", "-d", "-l", "-q", "--cruft", &expiration]),
            timeout,
        )?;
        if live == 0 {
            // Loose unreachable objects the repack left (younger ones are in
            // the cruft pack; this catches what was written as loose
            // between listing and packing).
            self.git_checked(
                "git prune",
                &args(&["prune", &format!("--expire={expire}")]),
                timeout,
            )?;
        }
        crate::repo::sync_object_dirs(self.path())?;
        self.git().odb()?.refresh()?;
        let after = self.object_counts();
        Ok(GcReport {
            before,
            after,
            pruned: live == 0,
            grace_secs: grace.as_secs(),
            live_quarantines: live,
            abandoned_quarantines: abandoned,
            elapsed: started.elapsed(),
        })
    }

    /// Packs in `objects/pack` (one directory listing).
    pub fn pack_count(&self) -> usize {
        fs::read_dir(self.path().join("objects").join("pack"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Rolls small packs up when there are more than
    /// [`AUTO_CONSOLIDATE_PACKS`] (each `remember` writes one): `git repack
    /// -d -l --geometric=2`, which merges only packs that are small next to
    /// the others (a few tens of milliseconds most of the time; the whole
    /// pack rarely), drops nothing, and holds the write lock like
    /// [`Store::gc`]. Where no `serve` runs its scheduled gc, this keeps the
    /// number of packs logarithmic instead of one per memory. Returns
    /// whether it repacked.
    pub fn consolidate_packs(&self) -> Result<bool, StoreError> {
        if self.pack_count() <= AUTO_CONSOLIDATE_PACKS {
            return Ok(false);
        }
        let _lock = WriteLock::acquire(self.git())?;
        if self.pack_count() <= AUTO_CONSOLIDATE_PACKS {
            return Ok(false);
        }
        let args: Vec<OsString> = ["repack", "-d", "-l", "-q", "--geometric=2"]
            .iter()
            .map(OsString::from)
            .collect();
        self.git_checked("git repack --geometric", &args, DEFAULT_GC_TIMEOUT)?;
        crate::repo::sync_object_dirs(self.path())?;
        self.git().odb()?.refresh()?;
        Ok(true)
    }

    /// Whether [`Store::gc`] is worth running: more than `packs` packs or
    /// more than `loose` loose objects.
    pub fn needs_gc(&self, packs: usize, loose: usize) -> bool {
        let c = self.object_counts();
        c.packs > packs || c.loose > loose
    }
}
