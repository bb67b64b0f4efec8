//! Verification of whole branch histories: what `mmogit verify` runs and what
//! every incoming branch must pass before its ref moves.

use git2::Oid;
use mmogit_identity::PublicKey;
use serde::Serialize;

use crate::memory::{UnverifiedMemory, MAX_MEMORY_FILE_BYTES};
use crate::repo::{Change, Store};
use crate::StoreError;

/// One thing wrong with a branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `users/<pubkey>`
    pub branch: String,
    /// The commit that introduced it (hex), when known.
    pub commit: Option<String>,
    /// The file concerned, when there is one.
    pub path: Option<String>,
    /// The memory id concerned, when known.
    pub memory: Option<String>,
    pub reason: String,
}

/// The outcome of verifying one or more branches.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub branches: usize,
    pub commits: usize,
    /// Memories that verified.
    pub memories: usize,
    pub problems: Vec<Problem>,
    /// Refs keeping refused rewritten histories (`refs/mmogit/evidence/…`):
    /// not problems of this repository, but signs that an author's branch
    /// was rewritten somewhere.
    pub evidence: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A memory file a commit adds, not checked yet.
struct Added {
    commit: Oid,
    path: String,
    id: String,
    blob: Oid,
}

/// Checks added memory files: each parses, is named by its id, is authored
/// by `owner` and its signature verifies (batched). One result per file.
fn check_added(
    repo: &git2::Repository,
    added: &[Added],
    owner: &PublicKey,
) -> Vec<Result<(), String>> {
    let mut out: Vec<Result<(), String>> = Vec::with_capacity(added.len());
    let mut parsed = Vec::new();
    let mut parsed_at = Vec::new();
    for a in added {
        match crate::repo::read_blob(repo, a.blob, MAX_MEMORY_FILE_BYTES)
            .and_then(|d| UnverifiedMemory::from_json(&d))
        {
            Err(e) => out.push(Err(e.to_string())),
            Ok(m) if m.id != a.id => out.push(Err(format!(
                "file name does not match the memory id {}",
                m.id
            ))),
            Ok(m) if m.author != *owner => out.push(Err(format!(
                "memory by {} on a branch it does not own",
                m.author
            ))),
            Ok(m) => {
                parsed_at.push(out.len());
                out.push(Ok(()));
                parsed.push(m);
            }
        }
    }
    for (i, r) in parsed_at
        .into_iter()
        .zip(UnverifiedMemory::verify_many(parsed))
    {
        if let Err(e) = r {
            out[i] = Err(e.to_string());
        }
    }
    out
}

impl Store {
    /// Verifies every `users/*` branch from its root.
    pub fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        for (name, tip, why) in self.invalid_branches()? {
            report.branches += 1;
            report.problems.push(Problem {
                branch: name
                    .strip_prefix("refs/heads/")
                    .unwrap_or(&name)
                    .to_string(),
                commit: tip.map(|t| t.to_string()),
                path: None,
                memory: None,
                reason: format!("the branch is not named by a valid public key: {why}"),
            });
        }
        report.evidence = self.evidence_refs()?.into_iter().map(|(n, _)| n).collect();
        for (owner, tip) in self.branches()? {
            let r = self.verify_history(&owner, tip, None)?;
            report.branches += 1;
            report.commits += r.commits;
            report.memories += r.memories;
            report.problems.extend(r.problems);
        }
        Ok(report)
    }

    /// Verifies the commits of `owner`'s branch from `tip` back to `base`
    /// (exclusive; `None` = the root): every commit has at most one parent,
    /// only adds memory files (never changes or deletes one), every added
    /// memory parses, is named by its id, is authored by `owner`, and its
    /// signature verifies; and `base`, when given, is an ancestor of `tip`.
    pub fn verify_history(
        &self,
        owner: &PublicKey,
        tip: Oid,
        base: Option<Oid>,
    ) -> Result<VerifyReport, StoreError> {
        let repo = self.git();
        let branch = format!("users/{}", owner.to_hex());
        let mut report = VerifyReport {
            branches: 1,
            ..Default::default()
        };
        let problem = |commit: Option<Oid>,
                       path: Option<String>,
                       memory: Option<String>,
                       reason: String| Problem {
            branch: branch.clone(),
            commit: commit.map(|c| c.to_string()),
            path,
            memory,
            reason,
        };
        // 1. Walk the commits and diff their trees (one thread); memory
        // files to check are collected, everything else is a problem now.
        let mut added: Vec<Added> = Vec::new();
        let mut cur = Some(tip);
        let mut reached_base = base.is_none();
        while let Some(oid) = cur {
            if Some(oid) == base {
                reached_base = true;
                break;
            }
            let commit = match repo.find_commit(oid) {
                Ok(c) => c,
                Err(e) => {
                    report.problems.push(problem(
                        Some(oid),
                        None,
                        None,
                        format!("missing commit: {e}"),
                    ));
                    break;
                }
            };
            report.commits += 1;
            if commit.parent_count() > 1 {
                report.problems.push(problem(
                    Some(oid),
                    None,
                    None,
                    "merge commit: a memory branch must be a single line of history".into(),
                ));
            }
            let parent = if commit.parent_count() > 0 {
                Some(commit.parent(0)?)
            } else {
                None
            };
            let parent_tree = parent.as_ref().map(|p| p.tree()).transpose()?;
            for ch in self.diff_trees(parent_tree.as_ref(), &commit.tree()?)? {
                match ch {
                    Change::Added { path, id, blob } => added.push(Added {
                        commit: oid,
                        path,
                        id,
                        blob,
                    }),
                    Change::Modified { path } => report.problems.push(problem(
                        Some(oid),
                        Some(path),
                        None,
                        "a memory file was changed; memories may only be added".into(),
                    )),
                    Change::Deleted { path } => report.problems.push(problem(
                        Some(oid),
                        Some(path),
                        None,
                        "a memory file was deleted; memories may only be added".into(),
                    )),
                    Change::Foreign { path, reason } => {
                        report
                            .problems
                            .push(problem(Some(oid), Some(path), None, reason))
                    }
                }
            }
            cur = parent.map(|p| p.id());
        }
        if !reached_base {
            report.problems.push(problem(
                Some(tip),
                None,
                None,
                format!(
                    "history was rewritten: the new tip does not descend from {}",
                    base.map(|b| b.to_string()).unwrap_or_default()
                ),
            ));
        }
        // 2. Read, parse and check every added memory, signatures batched,
        // on all cores (each thread with its own handle on the repository).
        let results: Vec<Result<(), String>> =
            crate::repo::par_parts(repo, &added, 256, |r, part| check_added(r, part, owner))?
                .into_iter()
                .flatten()
                .collect();
        for (a, r) in added.iter().zip(results) {
            match r {
                Ok(()) => report.memories += 1,
                Err(reason) => report.problems.push(problem(
                    Some(a.commit),
                    Some(a.path.clone()),
                    Some(a.id.clone()),
                    reason,
                )),
            }
        }
        Ok(report)
    }
}
