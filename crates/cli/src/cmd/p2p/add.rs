//! `mmogit p2p add`: trust a peer by address (after a handshake) or by git URL.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use mmogit::api::{Agent, PeerRecord, PeerSource, Peering, TrustState};
use mmogit_identity::PublicKey;
use serde::Serialize;

use super::{is_address, parse_pubkey, runtime};
use crate::exit::{code, Exit};
use crate::output::print_json;
use crate::Ctx;

/// Trust a peer, by address or by git URL.
///
/// With ip:port: connects, completes the handshake and shows the peer's key;
/// with --pubkey the key must match (else: possible impersonation, refused);
/// without it you confirm the key (or pass --yes).
///
/// With a git URL: adds git remote `peer_<8 hex>` to your memory repository,
/// used by `mmogit sync`; the key is learned from the remote's single
/// `users/<key>` branch, or given with --pubkey.
///
/// Examples: `mmogit p2p add 192.0.2.10:7420 --pubkey <64 hex> --name bob`,
/// `mmogit p2p add https://example.org/bob/memories.git`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ip:port of the peer's `mmogit serve`, or the URL (or path) of its git repository
    pub target: String,
    /// The key the peer must have (64 hex)
    #[arg(long, value_parser = parse_pubkey, value_name = "HEX")]
    pub pubkey: Option<PublicKey>,
    /// A name for the peer (usable instead of its key)
    #[arg(long)]
    pub name: Option<String>,
    /// Trust the key the peer shows without asking
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Give up connecting after this long
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the peer record as JSON
    #[arg(long)]
    pub json: bool,
}

/// The JSON form of a peer record in `p2p add/list --json`.
#[derive(Serialize)]
pub struct PeerJson<'a> {
    pub pubkey: String,
    pub name: Option<&'a str>,
    pub trust: TrustState,
    pub source: PeerSource,
    pub addresses: &'a [String],
    pub git_url: Option<&'a str>,
    pub git_remote: Option<&'a str>,
    pub added_at: String,
    pub last_seen: Option<String>,
    pub last_error: Option<&'a str>,
}

impl<'a> PeerJson<'a> {
    pub fn new(r: &'a PeerRecord) -> PeerJson<'a> {
        PeerJson {
            pubkey: r.pubkey.to_hex(),
            name: r.name.as_deref(),
            trust: r.trust,
            source: r.source,
            addresses: &r.addresses,
            git_url: r.git_url.as_deref(),
            git_remote: r.git_remote.as_deref(),
            added_at: super::when(Some(r.added_at)),
            last_seen: r.last_seen.map(|s| super::when(Some(s))),
            last_error: r.last_error.as_deref(),
        }
    }
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let agent = Agent::open(ctx.home.clone())?;
    let mut peering =
        Peering::new(ctx.home.clone(), agent.identity()?.clone()).timeout(args.timeout);
    if let Some(n) = &args.name {
        peering = peering.name(n.clone());
    }
    let probe = runtime()?.block_on(peering.probe(&args.target, args.pubkey));
    let address = is_address(&args.target) && !args.target.contains('/');
    let probe = probe.map_err(|e| probe_error(e, &args.target, address))?;
    if probe.is_git() {
        if let Some(n) = &probe.note {
            eprintln!("note: {n}");
        }
    } else if args.pubkey.is_none() {
        confirm(&probe.pubkey, &args.target, args.yes)?;
    }
    let added = peering.trust(&probe)?;
    let rec = &added.record;
    if !probe.is_git() {
        if let Some(n) = &added.note {
            eprintln!("note: {n}");
        }
    }
    if args.json {
        print_json(&PeerJson::new(rec))?;
    } else if probe.is_git() {
        let remote = rec.git_remote.as_deref().unwrap_or_default();
        println!(
            "trusted {} via git remote {remote} ({})",
            rec.pubkey, args.target
        );
    } else {
        let rtt = added
            .rtt
            .map(|r| format!(", authenticated in {:.2} ms", r.as_secs_f64() * 1000.0))
            .unwrap_or_default();
        println!("trusted {} at {}{rtt}", rec.pubkey, args.target);
    }
    Ok(ExitCode::SUCCESS)
}

/// The command's words for a probe that failed: which option to use, and
/// which peer was being added when its address failed.
fn probe_error(e: mmogit::Error, target: &str, address: bool) -> anyhow::Error {
    match e {
        mmogit::Error::KeyNeeded { found, .. } if found.is_empty() => Exit::new(
            code::USAGE,
            format!("{target} has no users/<key> branch: pass the peer's key with --pubkey"),
        )
        .into(),
        mmogit::Error::KeyNeeded { found, .. } => {
            let list: Vec<String> = found.iter().map(|k| k.to_hex()).collect();
            Exit::new(
                code::USAGE,
                format!(
                    "{target} holds several agents' branches; choose one with --pubkey: {}",
                    list.join(", ")
                ),
            )
            .into()
        }
        mmogit::Error::OwnKey { git: true, .. } => Exit::new(
            code::USAGE,
            format!("{target} is this agent's own branch: pass --pubkey for another"),
        )
        .into(),
        mmogit::Error::OwnKey { git: false, .. } => {
            Exit::new(code::USAGE, format!("{target} is this agent itself")).into()
        }
        e if address => anyhow::Error::from(e).context(format!("adding peer {target}")),
        e => e.into(),
    }
}

fn confirm(pk: &PublicKey, what: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Exit::new(
            code::USAGE,
            format!(
                "{what} has key {pk}; check it with its owner, then run again with --pubkey {pk} (or --yes)"
            ),
        )
        .into());
    }
    eprintln!("{what} has key\n  {pk}\nCheck it with its owner. Trust it? [y/N] ");
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Exit::new(code::FAILURE, "not trusted: nothing changed").into())
    }
}
