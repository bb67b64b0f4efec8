//! Verified ingest: the one gate every incoming memory passes, whatever the
//! transport (a git remote, a path, a bundle received from a peer).
//!
//! 1. [`Store::fetch_into_quarantine`] runs `git fetch` of the source's
//!    `users/*` branches into `refs/quarantine/<tag>/users/*`, never into
//!    `refs/heads`.
//! 2. [`Store::accept_incoming`] verifies each incoming branch from the tip we
//!    hold to the new tip ([`Store::verify_history`]) and only then moves
//!    `refs/heads/users/<key>` with a compare-and-swap. A branch with any
//!    problem does not move at all. A rewritten history (the new tip does not
//!    descend from ours) is refused and kept as evidence under
//!    `refs/mmogit/evidence/<key>/<unix time>`.
//!
//! A crash at any point leaves `refs/heads/*` as it was: before the final
//! compare-and-swap nothing is written but the quarantine (a repository of
//! its own, see `quarantine.rs`) and the objects moved in from it; a
//! quarantine left by a killed ingest is removed by the next one.
//!
//! The sending side for peers that are not git remotes is
//! [`Store::build_bundle`] (bundle.rs): a v2 git bundle of our branches
//! minus what the peer already has, which [`Store::ingest_bundle`] (or
//! `fetch_into_quarantine`, given the file) takes in.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use git2::{ErrorCode, Oid};
use mmogit_identity::PublicKey;

use crate::quarantine::Quarantine;
use crate::repo::{branch_name, Store, WriteLock, BRANCH_PREFIX};
use crate::verify::Problem;
use crate::StoreError;

/// Namespace of fetched, not yet verified branches.
pub const QUARANTINE_PREFIX: &str = "refs/quarantine/";
/// Namespace of refused rewritten histories: `<prefix><key>/<unix time>`.
pub const EVIDENCE_PREFIX: &str = "refs/mmogit/evidence/";
/// Evidence refs kept per author at most; later rewritten histories of the
/// same author are refused without being kept.
pub const MAX_EVIDENCE_PER_AUTHOR: usize = 16;
const MAX_CAS_ATTEMPTS: u32 = 20;

/// What happened to one incoming branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestStatus {
    /// Verified; our branch moved to the new tip.
    Accepted,
    /// Nothing new: the incoming tip is ours, or an ancestor of ours.
    Unchanged,
    /// Verification found problems (see `problems`); our branch did not move.
    Refused,
    /// Not verified or not applied for another reason (see `error`), e.g. the
    /// branch kept moving under us; our branch did not move by this ingest.
    Failed,
}

impl IngestStatus {
    /// `accepted`, `unchanged`, `refused` or `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            IngestStatus::Accepted => "accepted",
            IngestStatus::Unchanged => "unchanged",
            IngestStatus::Refused => "refused",
            IngestStatus::Failed => "failed",
        }
    }
}

/// The outcome for one incoming branch.
#[derive(Debug, Clone)]
pub struct BranchIngest {
    /// Owner of the branch.
    pub author: PublicKey,
    /// Our tip before the ingest (None: we did not have the branch).
    pub old: Option<Oid>,
    /// The incoming tip.
    pub new: Oid,
    pub status: IngestStatus,
    /// Memories added to our branch (0 unless accepted).
    pub memories_added: usize,
    /// Commits added to our branch (0 unless accepted).
    pub commits_added: usize,
    /// Why it was refused (empty unless refused).
    pub problems: Vec<Problem>,
    /// The evidence ref keeping a refused rewritten history, if any.
    pub evidence: Option<String>,
    /// Why it failed (None unless failed).
    pub error: Option<String>,
}

/// What [`Store::fetch_into_quarantine`] brought in, held in its
/// quarantine until accepted (dropping it deletes the quarantine).
#[derive(Debug, Default)]
pub struct Incoming {
    /// The branches named by a valid key, with their tips, sorted by key.
    pub tips: Vec<(PublicKey, Oid)>,
    /// Refs under `users/` refused for their name (not a valid key).
    pub refused: Vec<Problem>,
    pub(crate) quarantine: Option<Quarantine>,
}

/// The outcome of [`Store::accept_incoming`], one entry per incoming branch.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    pub branches: Vec<BranchIngest>,
}

impl IngestReport {
    /// Branches with status `s`.
    pub fn with_status(&self, s: IngestStatus) -> impl Iterator<Item = &BranchIngest> {
        self.branches.iter().filter(move |b| b.status == s)
    }

    /// Memories added over all accepted branches.
    pub fn memories_added(&self) -> usize {
        self.branches.iter().map(|b| b.memories_added).sum()
    }

    /// Commits added over all accepted branches.
    pub fn commits_added(&self) -> usize {
        self.branches.iter().map(|b| b.commits_added).sum()
    }

    /// True when no branch was refused and none failed.
    pub fn is_ok(&self) -> bool {
        self.branches
            .iter()
            .all(|b| matches!(b.status, IngestStatus::Accepted | IngestStatus::Unchanged))
    }
}

/// Exit status and output of a git command.
struct GitOutput {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl GitOutput {
    fn stderr_text(&self) -> String {
        let s = String::from_utf8_lossy(&self.stderr);
        let s = s.trim();
        if s.is_empty() {
            format!("git exited with {}", self.status)
        } else {
            // Keep the message to a few lines.
            s.lines().take(8).collect::<Vec<_>>().join("; ")
        }
    }
}

impl Store {
    /// The tips the other side says it has that are commits we hold, sorted
    /// and without duplicates: what a bundle for it may leave out.
    pub(crate) fn known_commits(&self, have: &[(PublicKey, Oid)]) -> Vec<Oid> {
        let repo = self.git();
        let mut known: Vec<Oid> = have
            .iter()
            .map(|(_, oid)| *oid)
            .filter(|oid| repo.find_commit(*oid).is_ok())
            .collect();
        known.sort();
        known.dedup();
        known
    }
}

pub(crate) fn check_tag(tag: &str) -> Result<(), StoreError> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Git(git2::Error::from_str(&format!(
            "invalid quarantine tag {tag:?}: use 1-64 letters, digits, - or _"
        ))))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn reader_thread(
    mut r: impl Read + Send + 'static,
) -> std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let res = r.read_to_end(&mut buf).map(|_| buf);
        let _ = tx.send(res);
    });
    rx
}

impl Store {
    /// [`Store::run_git`] without input, failing when git does.
    pub(crate) fn git_checked(
        &self,
        what: &str,
        args: &[OsString],
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let out = self.run_git(what, args, None, timeout)?;
        if !out.status.success() {
            return Err(StoreError::GitCommand {
                command: what.to_string(),
                message: out.stderr_text(),
            });
        }
        Ok(())
    }

    /// Runs `git --git-dir <repo> <args>`, killing it after `timeout`.
    /// `what` names the command in errors. Never prompts for credentials.
    fn run_git(
        &self,
        what: &str,
        args: &[OsString],
        stdin: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<GitOutput, StoreError> {
        run_git_in(Some(self.path()), what, args, stdin, timeout)
    }

    /// Refs under `refs/quarantine/`: where versions before the quarantine
    /// object store kept incoming tips; left by an interrupted ingest of
    /// such a version and removed by [`Store::clean_incoming`].
    pub fn quarantine_refs(&self) -> Result<Vec<(String, Oid)>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .git()
            .references_glob(&format!("{QUARANTINE_PREFIX}*"))?
        {
            let r = r?;
            if let (Some(name), Some(oid)) = (r.name(), r.target()) {
                out.push((name.to_string(), oid));
            }
        }
        Ok(out)
    }

    /// Fetches every `users/*` branch of `source` (a git URL, a remote name,
    /// a path or a bundle file) into a new quarantine object store (see
    /// `quarantine.rs`): the objects land there, not in the repository, and
    /// no ref of the repository changes. Returns the incoming branch tips,
    /// holding the quarantine until [`Store::accept_incoming`] (or until
    /// dropped, which deletes it). Refs whose name is not `users/<valid key>`
    /// (not hex, or a weak key) are returned as refused. `tag`: 1–64
    /// letters, digits, `-` or `_`, unique among concurrent ingests.
    pub fn fetch_into_quarantine(
        &self,
        source: &str,
        tag: &str,
        timeout: Duration,
    ) -> Result<Incoming, StoreError> {
        check_tag(tag)?;
        // A remote name means nothing inside the quarantine: use its URL.
        let url = match self.remote_url(source) {
            Ok(Some(u)) => u,
            _ => source.to_string(),
        };
        let q = self.create_quarantine(tag)?;
        let prefix = BRANCH_PREFIX.to_string();
        let refspec = format!("+{BRANCH_PREFIX}*:{BRANCH_PREFIX}*");
        let args: Vec<OsString> = [
            "-c",
            "fetch.fsckObjects=true",
            "fetch",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--quiet",
            "--",
            &url,
            &refspec,
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let what = format!("git fetch {source}");
        let out = q.store().run_git(&what, &args, None, timeout)?;
        if !out.status.success() {
            return Err(StoreError::GitCommand {
                command: what,
                message: out.stderr_text(),
            });
        }
        let (tips, bad) = q.store().branches_under(&prefix)?;
        let mut refused = Vec::new();
        for (name, oid, why) in bad {
            tracing::warn!(
                source,
                refname = name,
                reason = why,
                "refusing incoming ref that is not users/<valid public key>"
            );
            let branch = name.strip_prefix(&prefix).unwrap_or(&name);
            refused.push(Problem {
                branch: format!("users/{branch}"),
                commit: oid.map(|o| o.to_string()),
                path: None,
                memory: None,
                reason: format!("the branch is not named by a valid public key: {why}"),
            });
        }
        Ok(Incoming {
            tips,
            refused,
            quarantine: Some(q),
        })
    }

    /// Verifies and applies incoming branch tips (from
    /// [`Store::fetch_into_quarantine`] or a bundle). Per branch: unchanged
    /// when the tip is ours or an ancestor of ours; otherwise the commits
    /// from our tip to the new one are verified ([`Store::verify_history`],
    /// reading the quarantine and the repository), and only when there is no
    /// problem do the quarantine's objects move into the repository and
    /// `refs/heads/users/<key>` move, by compare-and-swap. A rewritten
    /// history is refused and kept under `refs/mmogit/evidence/<key>/<unix
    /// time>`. Our own branch follows the same rules. Afterwards the
    /// quarantine is deleted: what was refused leaves no object behind
    /// (unless it shares a pack with what was accepted).
    pub fn accept_incoming(&self, incoming: Incoming) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let Some(q) = incoming.quarantine else {
            return Ok(report);
        };
        for &(author, new) in &incoming.tips {
            report.branches.push(self.accept_branch(&q, author, new)?);
        }
        drop(q);
        Ok(report)
    }

    fn accept_branch(
        &self,
        q: &Quarantine,
        author: PublicKey,
        new: Oid,
    ) -> Result<BranchIngest, StoreError> {
        // Objects are read through the quarantine (which sees ours too);
        // refs are ours.
        let repo = q.store().git();
        let refname = branch_name(&author);
        let mut out = BranchIngest {
            author,
            old: None,
            new,
            status: IngestStatus::Unchanged,
            memories_added: 0,
            commits_added: 0,
            problems: Vec::new(),
            evidence: None,
            error: None,
        };
        let branch = format!("users/{}", author.to_hex());
        if repo.find_commit(new).is_err() {
            out.old = self.tip(&author)?;
            out.status = IngestStatus::Refused;
            out.problems.push(Problem {
                branch,
                commit: Some(new.to_string()),
                path: None,
                memory: None,
                reason: "the incoming tip is not a commit".into(),
            });
            return Ok(out);
        }
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let old = self.tip(&author)?;
            out.old = old;
            if old == Some(new) {
                out.status = IngestStatus::Unchanged;
                return Ok(out);
            }
            let rewritten = match old {
                Some(o) if repo.graph_descendant_of(o, new)? => {
                    // The source is behind us: nothing to take.
                    out.status = IngestStatus::Unchanged;
                    return Ok(out);
                }
                Some(o) => !repo.graph_descendant_of(new, o)?,
                None => false,
            };
            let verified = q.store().verify_history(&author, new, old)?;
            if !verified.is_ok() || rewritten {
                out.status = IngestStatus::Refused;
                out.problems = verified.problems;
                if rewritten {
                    if out.problems.is_empty() {
                        // verify_history reports it; make sure it is listed.
                        out.problems.push(Problem {
                            branch: branch.clone(),
                            commit: Some(new.to_string()),
                            path: None,
                            memory: None,
                            reason: "history was rewritten: the new tip does not descend from ours"
                                .into(),
                        });
                    }
                    out.evidence = self.keep_evidence(q, &author, new)?;
                }
                tracing::info!(
                    branch = %branch,
                    problems = out.problems.len(),
                    "incoming branch refused"
                );
                return Ok(out);
            }
            let msg = format!("sync: verified {} memories", verified.memories);
            let repo = self.git();
            // Writers queue on the repository lock; the compare-and-swap
            // below is the second guard. Moving the quarantine's objects in
            // is a write too: under the lock, repository maintenance
            // (`Store::gc`) never runs meanwhile.
            let lock = WriteLock::acquire(repo)?;
            crate::repo::remove_stale_ref_lock(repo, &refname);
            if self.tip(&author)? != old {
                drop(lock);
                tracing::debug!(attempt, branch = %branch, "branch moved while verifying, checking again");
                continue;
            }
            q.migrate(self)?;
            let new_dir = !crate::repo::ref_dir_exists(repo.path(), &refname);
            let res = match old {
                Some(o) => repo.reference_matching(&refname, new, true, o, &msg),
                None => repo.reference(&refname, new, false, &msg),
            };
            if res.is_ok() && new_dir {
                crate::repo::sync_ref_dirs(repo.path(), &refname)?;
            }
            drop(lock);
            match res {
                Ok(_) => {
                    out.status = IngestStatus::Accepted;
                    out.memories_added = verified.memories;
                    out.commits_added = verified.commits;
                    return Ok(out);
                }
                Err(e)
                    if matches!(
                        e.code(),
                        ErrorCode::Modified | ErrorCode::Exists | ErrorCode::Locked
                    ) =>
                {
                    tracing::debug!(attempt, branch = %branch, "branch moved during ingest, checking again");
                    std::thread::sleep(Duration::from_millis(2 + attempt as u64 * 5));
                }
                Err(e) => return Err(e.into()),
            }
        }
        out.status = IngestStatus::Failed;
        out.error = Some(format!(
            "branch {branch} kept moving (or stayed locked) during {MAX_CAS_ATTEMPTS} attempts; nothing applied"
        ));
        Ok(out)
    }

    /// Keeps a refused rewritten tip under
    /// `refs/mmogit/evidence/<key>/<unix time>`, when it is evidence: its
    /// whole history verifies as the branch owner's (every memory signed by
    /// them; junk or forgeries are not kept, so nobody else can make us
    /// store objects this way), and the author has fewer than
    /// [`MAX_EVIDENCE_PER_AUTHOR`] evidence refs. Its objects move in from
    /// the quarantine first.
    fn keep_evidence(
        &self,
        q: &Quarantine,
        author: &PublicKey,
        tip: Oid,
    ) -> Result<Option<String>, StoreError> {
        let prefix = format!("{EVIDENCE_PREFIX}{}/", author.to_hex());
        let kept = self
            .evidence_refs()?
            .into_iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .collect::<Vec<_>>();
        if let Some((name, _)) = kept.iter().find(|(_, t)| *t == tip) {
            return Ok(Some(name.clone()));
        }
        if kept.len() >= MAX_EVIDENCE_PER_AUTHOR {
            tracing::info!(author = %author.short(12), "rewritten history not kept: evidence limit reached");
            return Ok(None);
        }
        if !q.store().verify_history(author, tip, None)?.is_ok() {
            tracing::info!(author = %author.short(12), "rewritten history not kept: it does not verify");
            return Ok(None);
        }
        // Under the repository lock, as every write of objects and refs.
        let _lock = WriteLock::acquire(self.git())?;
        q.migrate(self)?;
        let base = format!("{prefix}{}", unix_now());
        for n in 0..1000 {
            let name = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            match self.git().refname_to_id(&name) {
                Ok(existing) if existing == tip => return Ok(Some(name)),
                Ok(_) => continue,
                Err(e) if e.code() == ErrorCode::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            match self
                .git()
                .reference(&name, tip, false, "refused rewritten history")
            {
                Ok(_) => {
                    crate::repo::sync_ref_dirs(self.git().path(), &name)?;
                    return Ok(Some(name));
                }
                Err(e) if e.code() == ErrorCode::Exists => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Git(git2::Error::from_str(
            "too many evidence refs for one second",
        )))
    }

    /// Evidence refs kept for refused rewritten histories, with their tips.
    pub fn evidence_refs(&self) -> Result<Vec<(String, Oid)>, StoreError> {
        let mut out = Vec::new();
        for r in self.git().references_glob(&format!("{EVIDENCE_PREFIX}*"))? {
            let r = r?;
            if let (Some(name), Some(oid)) = (r.name(), r.target()) {
                out.push((name.to_string(), oid));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The `users/*` branch tips of `source` (git URL, remote name or path),
    /// from `git ls-remote`. Refs that are not `users/<key>` are skipped.
    pub fn remote_tips(
        &self,
        source: &str,
        timeout: Duration,
    ) -> Result<Vec<(PublicKey, Oid)>, StoreError> {
        let args: Vec<OsString> = ["ls-remote", "--refs", "--", source, "refs/heads/users/*"]
            .iter()
            .map(OsString::from)
            .collect();
        let what = format!("git ls-remote {source}");
        let out = self.run_git(&what, &args, None, timeout)?;
        if !out.status.success() {
            return Err(StoreError::GitCommand {
                command: what,
                message: out.stderr_text(),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut tips: Vec<(PublicKey, Oid)> = text
            .lines()
            .filter_map(|l| {
                let (oid, name) = l.split_once('\t')?;
                Some((crate::parse_branch_name(name)?, Oid::from_str(oid).ok()?))
            })
            .collect();
        tips.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(tips)
    }

    /// Pushes `author`'s branch to the same branch of `dest` (git URL, remote
    /// name or path), never forcing. A refused push (the remote's branch is
    /// not an ancestor of ours) is a [`StoreError::GitCommand`].
    pub fn push_branch(
        &self,
        dest: &str,
        author: &PublicKey,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let name = branch_name(author);
        let refspec = format!("{name}:{name}");
        let args: Vec<OsString> = ["push", "--quiet", "--no-verify", "--", dest, &refspec]
            .iter()
            .map(OsString::from)
            .collect();
        let what = format!("git push {dest}");
        let out = self.run_git(&what, &args, None, timeout)?;
        if !out.status.success() {
            return Err(StoreError::GitCommand {
                command: what,
                message: out.stderr_text(),
            });
        }
        Ok(())
    }

    /// Commits reachable from `tip` and not from `base` (all of them when
    /// `base` is None or unknown here).
    pub fn count_commits(&self, tip: Oid, base: Option<Oid>) -> Result<usize, StoreError> {
        let repo = self.git();
        let mut walk = repo.revwalk()?;
        walk.push(tip)?;
        if let Some(b) = base {
            if repo.find_commit(b).is_ok() {
                walk.hide(b)?;
            }
        }
        let mut n = 0;
        for c in walk {
            c?;
            n += 1;
        }
        Ok(n)
    }
}

/// Runs `git [--git-dir <git_dir>] <args>`, killing it after `timeout`.
/// `what` names the command in errors. Never prompts for credentials.
/// Without a git dir, for what needs no repository (`ls-remote` of a URL).
fn run_git_in(
    git_dir: Option<&std::path::Path>,
    what: &str,
    args: &[OsString],
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<GitOutput, StoreError> {
    let mut cmd = Command::new("git");
    if let Some(dir) = git_dir {
        cmd.arg("--git-dir").arg(dir);
    }
    cmd.args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"])
        .args(["-c", "protocol.ext.allow=never"])
        // What git writes here (fetched objects, repacked packs) is
        // fsynced as libgit2's writes are (see `repo::durable_writes`).
        .args(["-c", "core.fsync=all", "-c", "core.fsyncMethod=fsync"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C");
    for v in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_NAMESPACE",
        "GIT_QUARANTINE_PATH",
    ] {
        cmd.env_remove(v);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| StoreError::GitCommand {
        command: what.to_string(),
        message: format!("cannot run git (is it installed?): {e}"),
    })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let out_rx = reader_thread(child.stdout.take().expect("piped stdout"));
    let err_rx = reader_thread(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let mut sleep = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StoreError::GitCommand {
                    command: what.to_string(),
                    message: format!("waiting for git: {e}"),
                });
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            tracing::warn!(command = what, ?timeout, "git killed after its time limit");
            return Err(StoreError::Timeout {
                command: what.to_string(),
                after: timeout,
            });
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(50));
    };
    // A grandchild (ssh, upload-pack) could keep a pipe open: wait a
    // little for the output, not forever.
    let grace = Duration::from_secs(5);
    let stdout = out_rx.recv_timeout(grace).ok().and_then(Result::ok);
    let stderr = err_rx
        .recv_timeout(grace)
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let Some(stdout) = stdout else {
        return Err(StoreError::GitCommand {
            command: what.to_string(),
            message: "could not read the output of git".into(),
        });
    };
    Ok(GitOutput {
        status,
        stdout,
        stderr,
    })
}

/// The authors of the `users/<key>` branches of the git repository at `url`
/// (a URL or a path), in key order, from `git ls-remote` run outside any
/// repository (for a peer's repository before it is a remote of ours).
/// Refs that are not `users/<key>` are skipped.
///
/// Errors: [`StoreError::RemoteUnreadable`] when git cannot read `url`,
/// [`StoreError::Timeout`] after `timeout` (git is killed), and
/// [`StoreError::GitCommand`] when git cannot be run at all.
pub fn remote_users(url: &str, timeout: Duration) -> Result<Vec<PublicKey>, StoreError> {
    let args: Vec<OsString> = ["ls-remote", "--refs", "--", url, "refs/heads/users/*"]
        .iter()
        .map(OsString::from)
        .collect();
    let out = run_git_in(None, &format!("git ls-remote {url}"), &args, None, timeout)?;
    if !out.status.success() {
        return Err(StoreError::RemoteUnreadable {
            remote: url.to_string(),
            message: out.stderr_text(),
        });
    }
    let mut users: Vec<PublicKey> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| crate::parse_branch_name(l.split('\t').nth(1)?))
        .collect();
    users.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(users)
}
