//! `mmogit sync`: exchange memories with trusted peers.
//!
//! Per peer: fetch its `users/*` branches into quarantine, verify and accept
//! what verifies (`Store::accept_incoming`, the same gate for every
//! transport), then push our own branch. Peers reached through a git remote
//! use [`sync_git`]; peers with only an ip:port address go to [`sync_p2p`].
//! The outcome of each run is kept in `<home>/sync-state.json` for
//! `mmogit sync --status`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use mmogit_identity::PublicKey;
use mmogit_node::{PeerRecord, TrustState};
use mmogit_store::{IngestStatus, Store};
use serde::{Deserialize, Serialize};

use super::p2p::{load_peers, when};
use crate::exit::{code, Exit};
use crate::output::print_json;
use crate::Ctx;

/// Exchange memories with trusted peers: fetch, verify, accept, push.
///
/// For every trusted peer with a git remote (added with `mmogit p2p add <git
/// url>`), or only the one named by --peer: fetches its users/* branches
/// into quarantine, verifies every new commit (only additions, every memory
/// signed by the owner of its branch, history not rewritten) and moves a
/// branch only when all of it verifies; then pushes your own branch. Exits 4
/// when something was refused as forged, 1 when a peer could not be synced.
///
/// Examples: `mmogit sync`, `mmogit sync --peer bob --json`, `mmogit sync --status`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this peer: its name, a key prefix (at least 8 hex) or its full key
    #[arg(long, value_name = "PEER")]
    pub peer: Option<String>,
    /// Show when each peer last synced and whether it is behind (nothing is fetched)
    #[arg(long)]
    pub status: bool,
    /// Print a JSON array with one result per peer
    #[arg(long)]
    pub json: bool,
    /// Time limit of each git command (fetch, push, ls-remote) and of each
    /// wait for a P2P peer
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Largest bundle received or sent over P2P in one transfer (e.g. 1G)
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub max_transfer: u64,
    /// Throttle P2P sending to this many bytes per second (e.g. 10M)
    #[arg(long, value_parser = parse_size, value_name = "BYTES/S")]
    pub max_rate: Option<u64>,
}

/// A size: bytes, or with a suffix K, M, G (powers of 1024; `B` and `iB` allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mul) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512K, 10M, 1G)"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("`{s}` must be more than 0"));
    }
    Ok((n * mul as f64).min(u64::MAX as f64) as u64)
}

/// P2P transfer settings from the command line.
#[derive(Debug, Clone, Copy)]
struct P2pLimits {
    max_transfer: u64,
    max_rate: Option<u64>,
}

/// One refused branch problem, as printed and in `--json`.
#[derive(Serialize, Debug, Clone)]
pub struct Refusal {
    /// `users/<64 hex>`
    pub branch: String,
    pub reason: String,
    /// The memory concerned, when known.
    pub memory: Option<String>,
    pub path: Option<String>,
    pub commit: Option<String>,
    /// Where a refused rewritten history is kept (`refs/mmogit/evidence/...`).
    pub evidence: Option<String>,
}

/// The outcome of syncing one peer (an element of `sync --json`).
#[derive(Serialize, Debug, Clone)]
pub struct PeerResult {
    /// The peer's key (64 hex).
    pub peer: String,
    pub name: Option<String>,
    /// `git` or `p2p`.
    pub via: &'static str,
    /// Memories accepted.
    pub received: usize,
    /// Branches that moved.
    pub branches: usize,
    /// Commits of our branch pushed.
    pub sent: usize,
    /// Everything refused, one entry per problem.
    pub refused: Vec<Refusal>,
    /// Set when our push was not accepted (not fatal).
    pub push_error: Option<String>,
    /// Set when the peer could not be synced.
    pub error: Option<String>,
    /// A remark, e.g. why a peer was skipped.
    pub note: Option<String>,
    pub elapsed_ms: u64,
}

impl PeerResult {
    fn new(rec: &PeerRecord, via: &'static str) -> PeerResult {
        PeerResult {
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

    fn skipped(&self) -> bool {
        self.note.is_some() && self.error.is_none() && self.via == "p2p"
    }

    /// `ok`, `refused`, `failed` or `skipped`.
    fn outcome(&self) -> &'static str {
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

/// What to tell the spinner.
type Progress<'a> = &'a dyn Fn(&str);

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    if args.status {
        return status(ctx, &args);
    }
    let identity = std::sync::Arc::new(ctx.home.load_identity()?);
    let store = ctx.home.open_store()?;
    let peers = select_peers(ctx, args.peer.as_deref())?;
    let limits = P2pLimits {
        max_transfer: args.max_transfer,
        max_rate: args.max_rate,
    };
    if peers.is_empty() {
        if args.json {
            print_json(&Vec::<PeerResult>::new())?;
        } else if !ctx.quiet {
            eprintln!(
                "no trusted peer to sync with: add one with `mmogit p2p add <git url | ip:port>`"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let spinner = (ctx.progress && !args.json).then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    let mut state = SyncState::load(&state_path(ctx));
    let mut results = Vec::new();
    for rec in &peers {
        let label = peer_label(rec);
        let progress = |step: &str| {
            if let Some(s) = &spinner {
                s.set_message(format!("{label}: {step}"));
            }
        };
        let started = Instant::now();
        let mut r = sync_peer(&store, &identity, rec, args.timeout, limits, &progress, ctx);
        r.elapsed_ms = started.elapsed().as_millis() as u64;
        if !r.skipped() {
            state.record(&r);
        }
        if !args.json {
            let print = || print_human(&r);
            match &spinner {
                Some(s) => s.suspend(print),
                None => print(),
            }
        }
        results.push(r);
    }
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    if let Err(e) = state.save() {
        tracing::warn!("could not save the sync state: {e:#}");
    }
    if args.json {
        print_json(&results)?;
    }
    let refused: usize = results.iter().map(|r| r.refused.len()).sum();
    let failed = results
        .iter()
        .filter(|r| r.error.is_some() || (args.peer.is_some() && r.skipped()))
        .count();
    if refused > 0 {
        if !args.json {
            eprintln!(
                "error: verification failed: {refused} problem(s); the refused branches did not move"
            );
        }
        Ok(ExitCode::from(code::VERIFICATION_FAILED))
    } else if failed > 0 {
        if !args.json {
            eprintln!("error: {failed} peer(s) could not be synced");
        }
        Ok(ExitCode::from(code::FAILURE))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// Trusted peers that have a git remote or an address, or the one named.
fn select_peers(ctx: &Ctx, query: Option<&str>) -> anyhow::Result<Vec<PeerRecord>> {
    let peers = load_peers(ctx)?;
    match query {
        Some(q) => {
            let rec = peers.get(q)?;
            if rec.trust != TrustState::Trusted {
                return Err(Exit::new(
                    code::USAGE,
                    format!(
                        "peer {} is {:?}, not trusted: `mmogit p2p accept {}` first",
                        rec.pubkey.short(12),
                        rec.trust,
                        rec.pubkey.short(12)
                    )
                    .to_lowercase(),
                )
                .into());
            }
            if rec.git_remote.is_none() && rec.git_url.is_none() && rec.addresses.is_empty() {
                return Err(Exit::new(
                    code::USAGE,
                    format!(
                        "peer {} has no git remote and no address",
                        rec.pubkey.short(12)
                    ),
                )
                .into());
            }
            Ok(vec![rec.clone()])
        }
        None => Ok(peers
            .list()
            .into_iter()
            .filter(|r| r.trust == TrustState::Trusted)
            .filter(|r| r.git_remote.is_some() || r.git_url.is_some() || !r.addresses.is_empty())
            .cloned()
            .collect()),
    }
}

fn peer_label(rec: &PeerRecord) -> String {
    match &rec.name {
        Some(n) => format!("{n} ({})", rec.pubkey.short(12)),
        None => rec.pubkey.short(12),
    }
}

/// Syncs one peer: directly over P2P when it has an address and answers,
/// else through its git remote.
fn sync_peer(
    store: &Store,
    identity: &std::sync::Arc<mmogit_identity::Identity>,
    rec: &PeerRecord,
    timeout: Duration,
    limits: P2pLimits,
    progress: Progress,
    ctx: &Ctx,
) -> PeerResult {
    let has_git = rec.git_remote.is_some() || rec.git_url.is_some();
    if !rec.addresses.is_empty() {
        let r = sync_p2p(store, identity, rec, timeout, limits, progress, ctx);
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
    let mut r = PeerResult::new(rec, "git");
    if let Err(e) = sync_git(
        store,
        &identity.public_key(),
        rec,
        timeout,
        progress,
        &mut r,
    ) {
        r.error = Some(format!("{e:#}"));
    }
    r
}

/// Prefix of the error of a P2P peer that could not be reached.
const UNREACHABLE: &str = "unreachable";

/// Direct P2P sync: one session, we pull what is new (verified ingest), then
/// the peer pulls what it lacks of ours.
fn sync_p2p(
    store: &Store,
    identity: &std::sync::Arc<mmogit_identity::Identity>,
    rec: &PeerRecord,
    timeout: Duration,
    limits: P2pLimits,
    progress: Progress,
    ctx: &Ctx,
) -> PeerResult {
    use mmogit_node::replicate::{sync_connection, ClientSync};
    let mut r = PeerResult::new(rec, "p2p");
    let cfg = ClientSync {
        repo: store.path().to_path_buf(),
        me: identity.public_key(),
        max_transfer: limits.max_transfer,
        max_rate: limits.max_rate,
        chunk_size: mmogit_node::replicate::MAX_CHUNK,
        timeout,
    };
    let bar = (ctx.progress).then(|| {
        let b = indicatif::ProgressBar::hidden();
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let label = peer_label(rec);
    let on_progress = |what: &str, done: u64, total: u64| {
        progress(&format!("{what} {done}/{total} bytes"));
        if let Some(b) = &bar {
            // Only long transfers get a bar.
            if total >= 4 << 20 && b.is_hidden() {
                b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            b.set_length(total);
            b.set_position(done);
            b.set_message(format!("{label}: {what}"));
        }
    };
    let mut last_err = None;
    let addrs: Vec<&String> = rec.addresses.iter().rev().collect();
    let outcome = super::p2p::runtime()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                for addr in addrs {
                    progress(&format!("connecting to {addr}"));
                    let conn = mmogit_node::connect(
                        addr,
                        identity.clone(),
                        Some(rec.pubkey),
                        &super::p2p::client_config(timeout),
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
    if let Some(b) = bar {
        b.finish_and_clear();
    }
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
fn push_refusals(r: &mut PeerResult, report: &mmogit_store::IngestReport) {
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

/// The URL of a peer's git remote, repairing the remote from peers.json
/// when it was removed from the repository.
fn git_source(store: &Store, rec: &PeerRecord) -> anyhow::Result<String> {
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
    progress: Progress,
    r: &mut PeerResult,
) -> anyhow::Result<()> {
    let url = git_source(store, rec)?;
    let tag = format!("sync-{}-{}", rec.pubkey.short(8), std::process::id());
    progress("fetching");
    let incoming = store.fetch_into_quarantine(&url, &tag, timeout)?;
    progress("verifying");
    let report = store.accept_incoming(&tag, &incoming)?;
    r.received = report.memories_added();
    r.branches = report.with_status(IngestStatus::Accepted).count();
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
        let theirs = incoming
            .iter()
            .find(|(pk, _)| pk == me)
            .map(|(_, oid)| *oid);
        let is_ancestor = match theirs {
            None => true,
            Some(t) => t == ours || store.git().graph_descendant_of(ours, t).unwrap_or(false),
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

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn print_human(r: &PeerResult) {
    let label = match &r.name {
        Some(n) => format!("{n} ({})", &r.peer[..12]),
        None => r.peer[..12].to_string(),
    };
    let secs = r.elapsed_ms as f64 / 1000.0;
    let mut out = std::io::stdout().lock();
    if r.skipped() {
        let _ = writeln!(out, "{label}: {}", r.note.as_deref().unwrap_or(""));
        return;
    }
    let mut line = format!(
        "{label} via {}: received {} on {}, sent {}",
        r.via,
        plural(r.received, "memory", "memories"),
        plural(r.branches, "branch", "branches"),
        plural(r.sent, "commit", "commits"),
    );
    if !r.refused.is_empty() {
        let mut branches: Vec<&str> = r.refused.iter().map(|x| x.branch.as_str()).collect();
        branches.dedup();
        line.push_str(&format!(
            ", REFUSED {} ({})",
            plural(branches.len(), "branch", "branches"),
            plural(r.refused.len(), "problem", "problems")
        ));
    }
    if let Some(e) = &r.error {
        line.push_str(&format!(", FAILED: {e}"));
    }
    line.push_str(&format!(", {secs:.2}s"));
    let _ = writeln!(out, "{line}");
    for x in &r.refused {
        let mut what = x.branch.clone();
        if let Some(m) = &x.memory {
            what.push_str(&format!(" memory {m}"));
        } else if let Some(p) = &x.path {
            what.push_str(&format!(" {p}"));
        }
        if let Some(c) = &x.commit {
            what.push_str(&format!(" (commit {})", &c[..12.min(c.len())]));
        }
        let _ = writeln!(out, "  refused {what}: {}", x.reason);
        if let Some(ev) = &x.evidence {
            let _ = writeln!(out, "  kept as evidence: {ev}");
        }
    }
    if let Some(p) = &r.push_error {
        let _ = writeln!(out, "  {p}");
    }
}

// ---- sync --status --------------------------------------------------------

#[derive(Serialize)]
struct StatusJson {
    peer: String,
    name: Option<String>,
    via: &'static str,
    /// RFC 3339, or null when never synced.
    last_sync: Option<String>,
    /// `ok`, `refused` or `failed` of the last sync.
    outcome: Option<String>,
    last_error: Option<String>,
    /// `yes`, `no` or `unknown` (unreachable, or direct P2P).
    behind: &'static str,
    /// The peer has commits we do not hold (null when unknown).
    incoming: Option<bool>,
    /// Our branch has commits the peer does not hold (null when unknown).
    outgoing: Option<bool>,
    /// Why `behind` is unknown.
    note: Option<String>,
}

fn status(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let me = ctx.home.load_identity()?.public_key();
    let store = ctx.home.open_store()?;
    let peers = select_peers(ctx, args.peer.as_deref())?;
    let state = SyncState::load(&state_path(ctx));
    let mut out = Vec::new();
    for rec in &peers {
        let last = state.peers.get(&rec.pubkey.to_hex());
        let mut s = StatusJson {
            peer: rec.pubkey.to_hex(),
            name: rec.name.clone(),
            via: "git",
            last_sync: last.map(|l| when(Some(l.last_sync))),
            outcome: last.map(|l| l.outcome.clone()),
            last_error: last.and_then(|l| l.error.clone()),
            behind: "unknown",
            incoming: None,
            outgoing: None,
            note: None,
        };
        if rec.git_remote.is_none() && rec.git_url.is_none() {
            s.via = "p2p";
            s.note = Some("direct P2P peer: run `mmogit sync` to exchange".into());
        } else {
            let tips = git_source(&store, rec).and_then(|url| {
                store
                    .remote_tips(&url, args.timeout)
                    .map_err(anyhow::Error::from)
            });
            let compared = tips.and_then(|remote| {
                // Incoming: the peer holds a tip that we neither have nor
                // have gone past. Outgoing: our branch is ahead of the peer's.
                let repo = store.git();
                let mut incoming = false;
                for (pk, theirs) in &remote {
                    let ours = store.tip(pk)?;
                    let held = ours == Some(*theirs)
                        || (repo.find_commit(*theirs).is_ok()
                            && ours.is_some_and(|o| {
                                repo.graph_descendant_of(o, *theirs).unwrap_or(false)
                            }));
                    incoming |= !held;
                }
                let outgoing = match store.tip(&me)? {
                    None => false,
                    Some(ours) => match remote.iter().find(|(pk, _)| *pk == me) {
                        None => true,
                        Some((_, theirs)) => {
                            *theirs != ours
                                && repo.find_commit(*theirs).is_ok()
                                && repo.graph_descendant_of(ours, *theirs).unwrap_or(false)
                        }
                    },
                };
                Ok((incoming, outgoing))
            });
            match compared {
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
    if args.json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if out.is_empty() && !ctx.quiet {
        eprintln!(
            "no trusted peer to sync with: add one with `mmogit p2p add <git url | ip:port>`"
        );
    }
    for s in &out {
        let label = match &s.name {
            Some(n) => format!("{n} ({})", &s.peer[..12]),
            None => s.peer[..12].to_string(),
        };
        let last = match (&s.last_sync, &s.outcome) {
            (Some(t), Some(o)) => format!("last sync {t} ({o})"),
            _ => "never synced".into(),
        };
        let behind = match (s.behind, s.incoming, s.outgoing) {
            ("yes", Some(true), Some(true)) => "behind: yes (commits to fetch and to send)".into(),
            ("yes", Some(true), _) => "behind: yes (the peer holds commits you do not)".into(),
            ("yes", _, _) => "behind: yes (the peer lacks commits of your branch)".into(),
            (b, _, _) => format!("behind: {b}"),
        };
        let note = s
            .note
            .as_deref()
            .map(|n| format!("; {n}"))
            .unwrap_or_default();
        println!("{label} via {}: {last}, {behind}{note}", s.via);
    }
    Ok(ExitCode::SUCCESS)
}

// ---- sync-state.json ------------------------------------------------------

fn state_path(ctx: &Ctx) -> PathBuf {
    ctx.home.root().join("sync-state.json")
}

/// The last sync of one peer.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct PeerState {
    /// Unix seconds.
    last_sync: u64,
    via: String,
    outcome: String,
    received: usize,
    sent: usize,
    refused: usize,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    push_error: Option<String>,
}

/// `<home>/sync-state.json`: `{"version": 1, "peers": {"<key>": PeerState}}`.
#[derive(Serialize, Deserialize, Debug)]
struct SyncState {
    version: u32,
    peers: BTreeMap<String, PeerState>,
    #[serde(skip)]
    path: PathBuf,
}

impl SyncState {
    /// Loads the state; a missing or unreadable file is a fresh state (it is
    /// only a record of past runs).
    fn load(path: &Path) -> SyncState {
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

    fn record(&mut self, r: &PeerResult) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.peers.insert(
            r.peer.clone(),
            PeerState {
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
    fn save(&self) -> anyhow::Result<()> {
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
