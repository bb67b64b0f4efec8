//! `mmogit p2p add`: trust a peer by address (after a handshake) or by git URL.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mmogit_identity::PublicKey;
use mmogit_node::{NodeError, PeerRecord, PeerSource};
use serde::Serialize;

use super::{client_config, is_address, parse_pubkey, runtime, update_peers};
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
    pub trust: mmogit_node::TrustState,
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

/// Git remote name for a peer: `peer_<first 8 hex of its key>`.
pub fn remote_name(pk: &PublicKey) -> String {
    format!("peer_{}", pk.short(8))
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    if is_address(&args.target) && !args.target.contains('/') {
        add_address(ctx, args)
    } else {
        add_git(ctx, args)
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

fn add_address(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let identity = Arc::new(ctx.home.load_identity()?);
    let me = identity.public_key();
    let cfg = client_config(args.timeout);
    let addr = args.target.clone();
    let res = runtime()?.block_on(async {
        match mmogit_node::connect(&addr, identity, args.pubkey, &cfg).await {
            Ok(conn) => {
                let pk = conn.peer_pubkey();
                let rtt = conn.handshake_rtt();
                let _ = conn.close("bye").await;
                Ok((pk, Some(rtt), None))
            }
            Err(NodeError::NotAuthorized { peer: Some(pk) }) => Ok((pk, None, Some(
                format!("the peer does not trust you yet; it recorded your key as pending: its owner can run `mmogit p2p accept {}`", me.short(12)),
            ))),
            Err(e @ (NodeError::Unreachable { .. } | NodeError::Timeout(_))) => match args.pubkey {
                Some(pk) => Ok((pk, None, Some(format!("{e}; added anyway, `mmogit serve` keeps trying")))),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    });
    let (pk, rtt, note) = res.with_context(|| format!("adding peer {}", args.target))?;
    if pk == me {
        return Err(Exit::new(code::USAGE, format!("{} is this agent itself", args.target)).into());
    }
    if args.pubkey.is_none() {
        confirm(&pk, &args.target, args.yes)?;
    }
    let rec = update_peers(ctx, |store| {
        Ok(store
            .add(
                pk,
                args.name.clone(),
                vec![args.target.clone()],
                PeerSource::Manual,
            )
            .clone())
    })?;
    let rec = &rec;
    if let Some(n) = &note {
        eprintln!("note: {n}");
    }
    if args.json {
        print_json(&PeerJson::new(rec))?;
    } else {
        let rtt = rtt
            .map(|r| format!(", authenticated in {:.2} ms", r.as_secs_f64() * 1000.0))
            .unwrap_or_default();
        println!("trusted {} at {}{rtt}", pk, args.target);
    }
    Ok(ExitCode::SUCCESS)
}

fn add_git(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let me = ctx.home.load_identity()?.public_key();
    let store = ctx.home.open_store()?;
    let url = args.target.clone();
    let users = mmogit::api::remote_users(&url, args.timeout)?;
    let pk = match (args.pubkey, users.as_slice()) {
        (Some(pk), _) => {
            if !users.contains(&pk) {
                eprintln!("note: {url} has no branch users/{} yet", pk.short(12));
            }
            pk
        }
        (None, [one]) => *one,
        (None, []) => {
            return Err(Exit::new(
                code::USAGE,
                format!("{url} has no users/<key> branch: pass the peer's key with --pubkey"),
            )
            .into())
        }
        (None, many) => {
            let list: Vec<String> = many.iter().map(|k| k.to_hex()).collect();
            return Err(Exit::new(
                code::USAGE,
                format!(
                    "{url} holds several agents' branches; choose one with --pubkey: {}",
                    list.join(", ")
                ),
            )
            .into());
        }
    };
    if pk == me {
        return Err(Exit::new(
            code::USAGE,
            format!("{url} is this agent's own branch: pass --pubkey for another"),
        )
        .into());
    }
    let remote = remote_name(&pk);
    store.set_remote(&remote, &url)?;
    let rec = update_peers(ctx, |peers| {
        peers.add(pk, args.name.clone(), Vec::new(), PeerSource::Git);
        Ok(peers
            .set_git(&pk, Some(url.clone()), Some(remote.clone()))
            .expect("just added")
            .clone())
    })?;
    let rec = &rec;
    if args.json {
        print_json(&PeerJson::new(rec))?;
    } else {
        println!("trusted {pk} via git remote {remote} ({url})");
    }
    Ok(ExitCode::SUCCESS)
}
