//! `mmogit p2p status`: which peers `serve` is connected to, and how it goes.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use mmogit::api::{Agent, PeerStatus, TrustState};
use serde::Serialize;

use super::load_peers;
use crate::output::print_json;
use crate::Ctx;

/// Per peer: connected or not, address, last seen, round trip time, current backoff, last error.
///
/// Reads what a running `mmogit serve` publishes (status.json in the home)
/// together with the peer list.
///
/// Example: `mmogit p2p status --json`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print {"serving", "pid", "listen_addr", "peers": [...]} as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PeerOut {
    pubkey: String,
    name: Option<String>,
    trust: TrustState,
    connected: bool,
    direction: Option<String>,
    addr: Option<String>,
    last_seen: Option<String>,
    rtt_ms: Option<f64>,
    backoff_ms: Option<u64>,
    next_attempt: Option<String>,
    failures: u32,
    last_error: Option<String>,
}

#[derive(Serialize)]
struct Out {
    serving: bool,
    pid: Option<u32>,
    listen_addr: Option<String>,
    peers: Vec<PeerOut>,
}

fn ms_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let store = load_peers(ctx)?;
    let status = match Agent::open_reader(ctx.home.clone()).serve_status() {
        Ok(s) if s.is_live() => Some(s),
        Ok(_) => None,
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", ctx.home.status_path().display());
            None
        }
    };
    let live: Vec<PeerStatus> = status.as_ref().map(|s| s.peers.clone()).unwrap_or_default();
    let mut peers = Vec::new();
    for rec in store.list() {
        let st = live.iter().find(|p| p.pubkey == rec.pubkey);
        peers.push(PeerOut {
            pubkey: rec.pubkey.to_hex(),
            name: rec.name.clone(),
            trust: rec.trust,
            connected: st.is_some_and(|s| s.connected),
            direction: st
                .and_then(|s| s.direction)
                .map(|d| format!("{d:?}").to_lowercase()),
            addr: st
                .and_then(|s| s.addr.clone())
                .or_else(|| rec.addresses.last().cloned()),
            last_seen: st
                .and_then(|s| s.last_seen_ms)
                .map(ms_time)
                .or_else(|| rec.last_seen.map(|s| super::when(Some(s)))),
            rtt_ms: st.and_then(|s| s.rtt_us).map(|us| us as f64 / 1000.0),
            backoff_ms: st.and_then(|s| s.backoff_ms),
            next_attempt: st.and_then(|s| s.next_attempt_ms).map(ms_time),
            failures: st.map_or(0, |s| s.failures),
            last_error: st
                .and_then(|s| s.last_error.clone())
                .or_else(|| rec.last_error.clone()),
        });
    }
    let out = Out {
        serving: status.is_some(),
        pid: status.as_ref().map(|s| s.pid),
        listen_addr: status.as_ref().map(|s| s.listen_addr.clone()),
        peers,
    };
    if args.json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    match &status {
        Some(s) => println!("serve is running (pid {}) on {}", s.pid, s.listen_addr),
        None => println!("serve is not running: no live sessions (start it with `mmogit serve`)"),
    }
    for p in &out.peers {
        let state = if p.connected {
            format!(
                "connected {}{}",
                p.direction.as_deref().unwrap_or(""),
                p.rtt_ms
                    .map(|r| format!(", rtt {r:.2} ms"))
                    .unwrap_or_default()
            )
        } else {
            match (&p.next_attempt, p.backoff_ms) {
                (Some(n), Some(b)) => format!(
                    "disconnected, retry at {n} (backoff {:.0} s)",
                    b as f64 / 1000.0
                ),
                _ => "disconnected".to_string(),
            }
        };
        println!(
            "{}  {:<8} {:<10} {:<22} last seen {:<20} {}{}",
            &p.pubkey[..12],
            format!("{:?}", p.trust).to_lowercase(),
            p.name.as_deref().unwrap_or("-"),
            p.addr.as_deref().unwrap_or("-"),
            p.last_seen.as_deref().unwrap_or("never"),
            state,
            p.last_error
                .as_deref()
                .map(|e| format!("  (last error: {e})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
