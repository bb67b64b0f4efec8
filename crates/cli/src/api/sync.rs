//! Sync with trusted peers: fetch, verify, accept, send (`mmogit sync`).
//!
//! Per peer: what it holds of `users/*` arrives in quarantine, is verified
//! and accepted when it verifies (`Store::accept_incoming`, the same gate for
//! every transport), then our own branch goes to it. Peers with an ip:port
//! address are synced directly over P2P; peers with a git remote through
//! git (also the fallback when the address does not answer). The outcome of
//! each run is kept in `<home>/sync-state.json` ([`SyncState`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use mmogit_identity::{Identity, PublicKey};
use mmogit_node::{PeerRecord, TrustState};
use mmogit_store::{IngestStatus, Store, EVIDENCE_PREFIX};
use serde::{Deserialize, Serialize};

use super::agent::Agent;
use super::error::{Error, Result};

/// Which peers to sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SyncTarget {
    /// Every trusted peer with a git remote or an address.
    #[default]
    All,
    /// One trusted peer: its name, a key prefix (at least 8 hex) or its key.
    Peer(String),
}

/// Limits of a sync.
#[derive(Debug, Clone, Copy)]
pub struct SyncOptions {
    /// Time limit of each git command and of each wait for a P2P peer (default 60 s).
    pub timeout: Duration,
    /// Largest bundle received or sent over P2P in one transfer (default 1 GiB).
    pub max_transfer: u64,
    /// Throttle P2P sending to this many bytes per second (default none).
    pub max_rate: Option<u64>,
    /// Time limit of the whole exchange with one P2P peer (default 1 hour).
    pub deadline: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            timeout: Duration::from_secs(60),
            max_transfer: mmogit_node::replicate::DEFAULT_MAX_TRANSFER,
            max_rate: None,
            deadline: Duration::from_secs(3600),
        }
    }
}

/// What a running sync reports (for progress displays).
#[derive(Debug)]
pub enum SyncProgress<'a> {
    /// A step with `peer`: "connecting to ...", "fetching", "pushing"...
    Step {
        /// The peer being synced.
        peer: &'a PeerRecord,
        /// What is happening.
        step: &'a str,
    },
    /// Bytes of a P2P transfer with `peer`.
    Transfer {
        /// The peer being synced.
        peer: &'a PeerRecord,
        /// "receiving" or "sending".
        what: &'a str,
        /// Bytes so far.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// The sync of one peer is over (ok or not).
    Done(&'a PeerSyncResult),
}

/// One refused branch problem (a forged or rewritten memory or history).
#[derive(Serialize, Debug, Clone)]
pub struct Refusal {
    /// `users/<64 hex>`
    pub branch: String,
    /// Why it was refused.
    pub reason: String,
    /// The memory concerned, when known.
    pub memory: Option<String>,
    /// The file concerned, when known.
    pub path: Option<String>,
    /// The commit concerned, when known.
    pub commit: Option<String>,
    /// Where a refused rewritten history is kept (`refs/mmogit/evidence/...`).
    pub evidence: Option<String>,
}

/// The outcome of syncing one peer (an element of `mmogit sync --json`).
#[derive(Serialize, Debug, Clone)]
pub struct PeerSyncResult {
    /// The peer's key (64 hex).
    pub peer: String,
    /// The peer's name, if it has one.
    pub name: Option<String>,
    /// `git` or `p2p`.
    pub via: &'static str,
    /// Memories accepted.
    pub received: usize,
    /// Branches that moved.
    pub branches: usize,
    /// Commits (git) or memories (P2P) of our branch sent.
    pub sent: usize,
    /// Everything refused, one entry per problem.
    pub refused: Vec<Refusal>,
    /// Set when our push was not accepted (not fatal).
    pub push_error: Option<String>,
    /// Set when the peer could not be synced.
    pub error: Option<String>,
    /// A remark, e.g. why a peer was skipped.
    pub note: Option<String>,
    /// How long it took.
    pub elapsed_ms: u64,
}

impl PeerSyncResult {
    fn new(rec: &PeerRecord, via: &'static str) -> PeerSyncResult {
        PeerSyncResult {
            peer: rec.pubkey.to_hex(),
            name: rec.name.clone(),
            via,
            received: 0,
            branches: 0,
            sent: 0,
            refused: Vec::new(),
            push_error: None,
            error: None,
            note: None,
            elapsed_ms: 0,
        }
    }

    /// Whether the peer was skipped (see `note`).
    pub fn skipped(&self) -> bool {
        self.note.is_some() && self.error.is_none() && self.via == "p2p"
    }

    /// `ok`, `refused`, `failed` or `skipped`.
    pub fn outcome(&self) -> &'static str {
        if !self.refused.is_empty() {
            "refused"
        } else if self.error.is_some() {
            "failed"
        } else if self.skipped() {
            "skipped"
        } else {
            "ok"
        }
    }
}

impl Agent {
    /// The trusted peers `target` designates that can be synced (with a git
    /// remote or an address). A named peer that is not trusted or has
    /// neither is a usage error; `All` may give none.
    pub fn sync_peers(&self, target: &SyncTarget) -> Result<Vec<PeerRecord>> {
        let peers = self.peers()?;
        match target {
            SyncTarget::Peer(q) => {
                let rec = peers.get(q)?;
                if rec.trust != TrustState::Trusted {
                    return Err(Error::Usage(
                        format!(
                            "peer {} is {:?}, not trusted: `mmogit p2p accept {}` first",
                            rec.pubkey.short(12),
                            rec.trust,
                            rec.pubkey.short(12)
                        )
                        .to_lowercase(),
                    ));
                }
                if rec.git_remote.is_none() && rec.git_url.is_none() && rec.addresses.is_empty() {
                    return Err(Error::Usage(format!(
                        "peer {} has no git remote and no address",
                        rec.pubkey.short(12)
                    )));
                }
                Ok(vec![rec.clone()])
            }
            SyncTarget::All => Ok(peers
                .list()
                .into_iter()
                .filter(|r| r.trust == TrustState::Trusted)
                .filter(|r| {
                    r.git_remote.is_some() || r.git_url.is_some() || !r.addresses.is_empty()
                })
                .cloned()
                .collect()),
        }
    }

    /// Syncs `target` (see [`sync_blocking`](Agent::sync_blocking)) on a
    /// blocking thread, so that it may be awaited on any runtime.
    pub async fn sync(&self, target: SyncTarget, opts: SyncOptions) -> Result<Vec<PeerSyncResult>> {
        let agent = self.clone();
        tokio::task::spawn_blocking(move || agent.sync_blocking(&target, &opts, &|_| {}))
            .await
            .map_err(|e| Error::Other(format!("sync task: {e}")))?
    }

    /// Syncs `target` peer by peer and returns one result per peer (a peer
    /// that fails or refuses something does not stop the others; look at
    /// `error` and `refused`), reporting progress to `progress`. Records
    /// the outcomes in `sync-state.json`. Blocks: do not call it from async
    /// code (use [`sync`](Agent::sync)).
    pub fn sync_blocking(
        &self,
        target: &SyncTarget,
        opts: &SyncOptions,
        progress: &dyn Fn(SyncProgress),
    ) -> Result<Vec<PeerSyncResult>> {
        let identity = self.identity()?.clone();
        let store = self.store()?;
        let peers = self.sync_peers(target)?;
        let mut state = SyncState::load(&self.sync_state_path());
        let mut results = Vec::new();
        for rec in &peers {
            let started = Instant::now();
            let mut r = sync_peer(&store, &identity, rec, opts, progress);
            r.elapsed_ms = started.elapsed().as_millis() as u64;
            if !r.skipped() {
                state.record(&r);
            }
            progress(SyncProgress::Done(&r));
            results.push(r);
        }
        if !peers.is_empty() {
            if let Err(e) = state.save() {
                tracing::warn!("could not save the sync state: {e:#}");
            }
        }
        Ok(results)
    }

    /// Where the outcome of past syncs is kept.
    pub fn sync_state_path(&self) -> PathBuf {
        self.home().root().join("sync-state.json")
    }

    /// When each peer of `target` last synced and whether it is behind
    /// (`mmogit sync --status`): nothing is fetched, git remotes are only
    /// listed (each within `timeout`); direct P2P peers are `unknown`.
    pub fn sync_status(
        &self,
        target: &SyncTarget,
        timeout: Duration,
    ) -> Result<Vec<PeerSyncStatus>> {
        let me = self.identity()?.public_key();
        let store = self.store()?;
        let peers = self.sync_peers(target)?;
        let state = SyncState::load(&self.sync_state_path());
        let evidence = store.evidence_refs()?;
        let mut out = Vec::new();
        for rec in &peers {
            let last = state.peers.get(&rec.pubkey.to_hex());
            let ev_prefix = format!("{EVIDENCE_PREFIX}{}/", rec.pubkey.to_hex());
            let mut s = PeerSyncStatus {
                peer: rec.pubkey.to_hex(),
                name: rec.name.clone(),
                via: "git",
                last_sync: last.map(|l| rfc3339(l.last_sync)),
                outcome: last.map(|l| l.outcome.clone()),
                last_error: last.and_then(|l| l.error.clone()),
                behind: "unknown",
                incoming: None,
                outgoing: None,
                note: None,
                evidence: evidence
                    .iter()
                    .filter(|(name, _)| name.starts_with(&ev_prefix))
                    .map(|(name, _)| name.clone())
                    .collect(),
            };
            if rec.git_remote.is_none() && rec.git_url.is_none() {
                s.via = "p2p";
                s.note = Some("direct P2P peer: run `mmogit sync` to exchange".into());
            } else {
                match compare_with_remote(&store, &me, rec, timeout) {
                    Ok((incoming, outgoing)) => {
                        s.incoming = Some(incoming);
                        s.outgoing = Some(outgoing);
                        s.behind = if incoming || outgoing { "yes" } else { "no" };
                    }
                    Err(e) => s.note = Some(format!("unreachable: {e:#}")),
                }
            }
            out.push(s);
        }
        Ok(out)
    }
}

/// Whether the git remote of `rec` holds commits we lack (incoming: a tip
/// that we neither have nor have gone past), and whether our branch is
/// ahead of the peer's copy (outgoing).
fn compare_with_remote(
    store: &Store,
    me: &PublicKey,
    rec: &PeerRecord,
    timeout: Duration,
) -> anyhow::Result<(bool, bool)> {
    let url = git_source(store, rec)?;
    let remote = store.remote_tips(&url, timeout)?;
    let mut incoming = false;
    for (pk, theirs) in &remote {
        let held = store.tip(pk)?.is_some_and(|o| store.includes(o, *theirs));
        incoming |= !held;
    }
    let outgoing = match store.tip(me)? {
        None => false,
        Some(ours) => match remote.iter().find(|(pk, _)| pk == me) {
            None => true,
            Some((_, theirs)) => *theirs != ours && store.includes(ours, *theirs),
        },
    };
    Ok((incoming, outgoing))
}

/// Unix seconds as RFC 3339.
fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// How one peer stands (an element of `mmogit sync --status --json`).
#[derive(Serialize, Debug, Clone)]
pub struct PeerSyncStatus {
    /// The peer's key (64 hex).
    pub peer: String,
    /// The peer's name, if it has one.
    pub name: Option<String>,
    /// `git` or `p2p`.
    pub via: &'static str,
    /// RFC 3339, or None when never synced.
    pub last_sync: Option<String>,
    /// `ok`, `refused` or `failed` of the last sync.
    pub outcome: Option<String>,
    /// Why the last sync failed.
    pub last_error: Option<String>,
    /// `yes`, `no` or `unknown` (unreachable, or direct P2P).
    pub behind: &'static str,
    /// The peer has commits we do not hold (None when unknown).
    pub incoming: Option<bool>,
    /// Our branch has commits the peer does not hold (None when unknown).
    pub outgoing: Option<bool>,
    /// Why `behind` is unknown.
    pub note: Option<String>,
    /// Evidence refs kept of rewritten histories of this peer's branch.
    pub evidence: Vec<String>,
}

/// Syncs one peer: directly over P2P when it has an address and answers,
/// else through its git remote.
fn sync_peer(
    store: &Store,
    identity: &Arc<Identity>,
    rec: &PeerRecord,
    opts: &SyncOptions,
    progress: &dyn Fn(SyncProgress),
) -> PeerSyncResult {
    let has_git = rec.git_remote.is_some() || rec.git_url.is_some();
    if !rec.addresses.is_empty() {
        let r = sync_p2p(store, identity, rec, opts, progress);
        let unreachable = r
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with(UNREACHABLE));
        if !(has_git && unreachable) {
            return r;
        }
        tracing::info!(
            peer = %rec.pubkey.short(12),
            "P2P address not reachable; syncing through the git remote"
        );
    }
    let mut r = PeerSyncResult::new(rec, "git");
    let step = |s: &str| progress(SyncProgress::Step { peer: rec, step: s });
    if let Err(e) = sync_git(
        store,
        &identity.public_key(),
        rec,
        opts.timeout,
        &step,
        &mut r,
    ) {
        r.error = Some(format!("{e:#}"));
    }
    r
}

/// Prefix of the error of a P2P peer that could not be reached.
const UNREACHABLE: &str = "unreachable";

/// Client settings with one timeout for connecting, the handshake and each request.
pub(crate) fn client_config(timeout: Duration) -> mmogit_node::ClientConfig {
    mmogit_node::ClientConfig {
        connect_timeout: timeout,
        handshake_timeout: timeout,
        request_timeout: timeout,
        ..mmogit_node::ClientConfig::default()
    }
}

/// Direct P2P sync: one session, we pull what is new (verified ingest), then
/// the peer pulls what it lacks of ours.
fn sync_p2p(
    store: &Store,
    identity: &Arc<Identity>,
    rec: &PeerRecord,
    opts: &SyncOptions,
    progress: &dyn Fn(SyncProgress),
) -> PeerSyncResult {
    use mmogit_node::replicate::{sync_connection, ClientSync};
    let mut r = PeerSyncResult::new(rec, "p2p");
    let timeout = opts.timeout;
    let cfg = ClientSync {
        repo: store.path().to_path_buf(),
        me: identity.public_key(),
        max_transfer: opts.max_transfer,
        max_rate: opts.max_rate,
        chunk_size: mmogit_node::replicate::MAX_CHUNK,
        timeout,
        deadline: opts.deadline,
    };
    let step = |s: &str| progress(SyncProgress::Step { peer: rec, step: s });
    let on_progress = |what: &str, done: u64, total: u64| {
        step(&format!("{what} {done}/{total} bytes"));
        progress(SyncProgress::Transfer {
            peer: rec,
            what,
            done,
            total,
        });
    };
    let mut last_err = None;
    let addrs: Vec<&String> = rec.addresses.iter().rev().collect();
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                for addr in addrs {
                    step(&format!("connecting to {addr}"));
                    let conn = mmogit_node::connect(
                        addr,
                        identity.clone(),
                        Some(rec.pubkey),
                        &client_config(timeout),
                    )
                    .await;
                    let mut conn = match conn {
                        Ok(c) => c,
                        Err(
                            e @ (mmogit_node::NodeError::Unreachable { .. }
                            | mmogit_node::NodeError::Timeout(_)),
                        ) => {
                            last_err = Some(format!("{UNREACHABLE}: {e}"));
                            continue;
                        }
                        Err(e) => return Err(e.to_string()),
                    };
                    let out = sync_connection(&mut conn, &cfg, &on_progress).await;
                    let _ = conn.close("done").await;
                    return out.map_err(|e| e.to_string());
                }
                Err(last_err
                    .take()
                    .unwrap_or_else(|| format!("{UNREACHABLE}: no address")))
            })
        });
    match outcome {
        Err(e) => r.error = Some(e),
        Ok(out) => {
            if let Some(rep) = &out.received {
                r.received = rep.memories_added();
                r.branches = rep.with_status(IngestStatus::Accepted).count();
                push_refusals(&mut r, rep);
                let failed: Vec<String> = rep
                    .with_status(IngestStatus::Failed)
                    .map(|b| {
                        format!(
                            "users/{}: {}",
                            b.author.short(12),
                            b.error.as_deref().unwrap_or("failed")
                        )
                    })
                    .collect();
                if !failed.is_empty() {
                    r.error = Some(failed.join("; "));
                }
            }
            if let Some(e) = out.pull_error {
                r.error = Some(e);
            }
            if let Some(s) = &out.sent {
                r.sent = s.memories as usize;
                if !s.refused.is_empty() {
                    r.push_error = Some(format!("the peer refused: {}", s.refused.join("; ")));
                }
            }
            if let Some(e) = out.push_error {
                r.push_error = Some(e);
            }
        }
    }
    r
}

/// Adds the problems of refused branches to `r.refused`.
fn push_refusals(r: &mut PeerSyncResult, report: &mmogit_store::IngestReport) {
    for b in report.with_status(IngestStatus::Refused) {
        for p in &b.problems {
            r.refused.push(Refusal {
                branch: p.branch.clone(),
                reason: p.reason.clone(),
                memory: p
                    .memory
                    .clone()
                    .or_else(|| p.path.as_deref().and_then(memory_id_of_path)),
                path: p.path.clone(),
                commit: p.commit.clone(),
                evidence: b.evidence.clone(),
            });
        }
    }
}

/// The URL of a peer's git remote, repairing the remote from `peers.json`
/// when it was removed from the repository.
pub fn git_source(store: &Store, rec: &PeerRecord) -> anyhow::Result<String> {
    if let Some(remote) = &rec.git_remote {
        if let Some(url) = store.remote_url(remote)? {
            return Ok(url);
        }
        if let Some(url) = &rec.git_url {
            store.set_remote(remote, url)?;
        }
    }
    rec.git_url.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "git remote {} is missing and no URL is known: add the peer again",
            rec.git_remote.as_deref().unwrap_or("?")
        )
    })
}

/// Fetch into quarantine, accept what verifies, push our own branch.
fn sync_git(
    store: &Store,
    me: &PublicKey,
    rec: &PeerRecord,
    timeout: Duration,
    progress: &dyn Fn(&str),
    r: &mut PeerSyncResult,
) -> anyhow::Result<()> {
    let url = git_source(store, rec)?;
    let tag = format!("sync-{}-{}", rec.pubkey.short(8), std::process::id());
    progress("fetching");
    let mut incoming = store.fetch_into_quarantine(&url, &tag, timeout)?;
    progress("verifying");
    let theirs_tips = incoming.tips.clone();
    let refused_refs = std::mem::take(&mut incoming.refused);
    let report = store.accept_incoming(incoming)?;
    r.received = report.memories_added();
    r.branches = report.with_status(IngestStatus::Accepted).count();
    for p in &refused_refs {
        r.refused.push(Refusal {
            branch: p.branch.clone(),
            reason: p.reason.clone(),
            memory: None,
            path: None,
            commit: p.commit.clone(),
            evidence: None,
        });
    }
    push_refusals(r, &report);
    let mut failures = Vec::new();
    for b in report.with_status(IngestStatus::Failed) {
        failures.push(format!(
            "users/{}: {}",
            b.author.short(12),
            b.error.as_deref().unwrap_or("failed")
        ));
    }
    // Push our own branch when the peer lacks some of it.
    if let Some(ours) = store.tip(me)? {
        let theirs = theirs_tips
            .iter()
            .find(|(pk, _)| pk == me)
            .map(|(_, oid)| *oid);
        let is_ancestor = match theirs {
            None => true,
            Some(t) => store.includes(ours, t),
        };
        let missing = store.count_commits(ours, theirs)?;
        if missing > 0 {
            progress("pushing");
            match store.push_branch(&url, me, timeout) {
                Ok(()) => r.sent = missing,
                Err(e) => {
                    let why = if is_ancestor {
                        format!("{e}")
                    } else {
                        "the peer's copy of your branch does not descend from yours".into()
                    };
                    r.push_error = Some(format!("push not accepted: {why}"));
                }
            }
        }
    }
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// `memories/ab/<id>.json` → `<id>`.
fn memory_id_of_path(path: &str) -> Option<String> {
    let id = path.rsplit('/').next()?.strip_suffix(".json")?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

// ---- sync-state.json ------------------------------------------------------

/// The last sync of one peer.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PeerSyncState {
    /// Unix seconds.
    pub last_sync: u64,
    /// `git` or `p2p`.
    pub via: String,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// Memories accepted.
    pub received: usize,
    /// Commits or memories sent.
    pub sent: usize,
    /// Problems refused.
    pub refused: usize,
    /// Why the peer could not be synced.
    #[serde(default)]
    pub error: Option<String>,
    /// Why our push was not accepted.
    #[serde(default)]
    pub push_error: Option<String>,
}

/// `<home>/sync-state.json`: `{"version": 1, "peers": {"<key>": PeerSyncState}}`.
#[derive(Serialize, Deserialize, Debug)]
pub struct SyncState {
    /// Format version (1).
    pub version: u32,
    /// By peer key (64 hex).
    pub peers: BTreeMap<String, PeerSyncState>,
    #[serde(skip)]
    path: PathBuf,
}

impl SyncState {
    /// Loads the state; a missing or unreadable file is a fresh state (it is
    /// only a record of past runs).
    pub fn load(path: &Path) -> SyncState {
        let fresh = SyncState {
            version: 1,
            peers: BTreeMap::new(),
            path: path.to_path_buf(),
        };
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return fresh,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}; starting a new one", path.display());
                return fresh;
            }
        };
        match serde_json::from_slice::<SyncState>(&data) {
            Ok(mut s) if s.version == 1 => {
                s.path = path.to_path_buf();
                s
            }
            Ok(s) => {
                tracing::warn!(
                    "{} has unknown version {}; starting a new one",
                    path.display(),
                    s.version
                );
                fresh
            }
            Err(e) => {
                tracing::warn!("{} is corrupt ({e}); starting a new one", path.display());
                fresh
            }
        }
    }

    /// Records the outcome of a sync, now.
    pub fn record(&mut self, r: &PeerSyncResult) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.peers.insert(
            r.peer.clone(),
            PeerSyncState {
                last_sync: now,
                via: r.via.to_string(),
                outcome: r.outcome().to_string(),
                received: r.received,
                sent: r.sent,
                refused: r.refused.len(),
                error: r.error.clone(),
                push_error: r.push_error.clone(),
            },
        );
    }

    /// Writes the file atomically: temporary file, fsync, rename.
    pub fn save(&self) -> anyhow::Result<()> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".sync-state.json.tmp{}", std::process::id()));
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        let res = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", self.path.display()));
        }
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
