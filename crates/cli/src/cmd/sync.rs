//! `mmogit sync`: exchange memories with trusted peers.
//!
//! Per peer: fetch its `users/*` branches into quarantine, verify and accept
//! what verifies (`Store::accept_incoming`, the same gate for every
//! transport), then push our own branch. Peers reached through a git remote
//! use [`sync_git`]; peers with only an ip:port address go to [`sync_p2p`].
//! The outcome of each run is kept in `<home>/sync-state.json` for
//! `mmogit sync --status`.

use std::cell::RefCell;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use mmogit::api::{Agent, PeerRecord, PeerSyncResult, SyncOptions, SyncProgress, SyncTarget};

use crate::exit::code;
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
    /// Time limit of the whole exchange with one P2P peer, however it
    /// progresses (a peer that trickles data cannot hold a sync forever)
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
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

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    if args.status {
        return status(ctx, &args);
    }
    let agent = Agent::open(ctx.home.clone())?;
    agent.store()?;
    let target = match &args.peer {
        Some(p) => SyncTarget::Peer(p.clone()),
        None => SyncTarget::All,
    };
    if agent.sync_peers(&target).map_err(usage_exit)?.is_empty() {
        if args.json {
            print_json(&Vec::<PeerSyncResult>::new())?;
        } else if !ctx.quiet {
            eprintln!(
                "no trusted peer to sync with: add one with `mmogit p2p add <git url | ip:port>`"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opts = SyncOptions {
        timeout: args.timeout,
        max_transfer: args.max_transfer,
        max_rate: args.max_rate,
        deadline: args.deadline,
    };
    let spinner = (ctx.progress && !args.json).then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    // The transfer bar of the peer being synced (long transfers only).
    let bar: RefCell<Option<indicatif::ProgressBar>> = RefCell::new(None);
    let on_progress = |p: SyncProgress| match p {
        SyncProgress::Step { peer, step } => {
            if let Some(s) = &spinner {
                s.set_message(format!("{}: {step}", peer_label(peer)));
            }
        }
        SyncProgress::Transfer {
            peer,
            what,
            done,
            total,
        } => {
            if !ctx.progress {
                return;
            }
            let mut bar = bar.borrow_mut();
            let b = bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::hidden();
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            });
            if total >= 4 << 20 && b.is_hidden() {
                b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            b.set_length(total);
            b.set_position(done);
            b.set_message(format!("{}: {what}", peer_label(peer)));
        }
        SyncProgress::Done(r) => {
            if let Some(b) = bar.borrow_mut().take() {
                b.finish_and_clear();
            }
            if !args.json {
                let print = || print_human(r);
                match &spinner {
                    Some(s) => s.suspend(print),
                    None => print(),
                }
            }
        }
    };
    let results = agent
        .sync_blocking(&target, &opts, &on_progress)
        .map_err(usage_exit)?;
    if let Some(s) = spinner {
        s.finish_and_clear();
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

/// An API usage error keeps its exit code; others pass through.
fn usage_exit(e: mmogit::Error) -> anyhow::Error {
    match e {
        mmogit::Error::Usage(m) => crate::exit::Exit::new(code::USAGE, m).into(),
        e => e.into(),
    }
}

fn peer_label(rec: &PeerRecord) -> String {
    match &rec.name {
        Some(n) => format!("{n} ({})", rec.pubkey.short(12)),
        None => rec.pubkey.short(12),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn print_human(r: &PeerSyncResult) {
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

fn status(ctx: &Ctx, args: &Args) -> anyhow::Result<ExitCode> {
    let agent = Agent::open(ctx.home.clone())?;
    let target = match &args.peer {
        Some(p) => SyncTarget::Peer(p.clone()),
        None => SyncTarget::All,
    };
    let out = agent
        .sync_status(&target, args.timeout)
        .map_err(usage_exit)?;
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
        for ev in &s.evidence {
            println!("  evidence of a rewritten history: {ev}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
