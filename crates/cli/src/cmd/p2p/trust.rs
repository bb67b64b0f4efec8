//! `mmogit p2p pending | accept | block`: decide about keys that asked to connect.

use std::process::ExitCode;

use mmogit::api::{PeerSource, PeerStore, PeerStoreError, TrustState};
use mmogit_identity::PublicKey;

use super::add::PeerJson;
use super::{load_peers, update_peers, when};
use crate::output::print_json;
use crate::Ctx;

/// List keys that connected to `serve` but are not trusted yet.
///
/// Example: `mmogit p2p pending --json`
#[derive(clap::Args, Debug)]
pub struct PendingArgs {
    /// Print a JSON array of peer records
    #[arg(long)]
    pub json: bool,
}

/// Trust a pending (or blocked) peer: its next connection is served.
///
/// Example: `mmogit p2p accept 3fa9c21b`
#[derive(clap::Args, Debug)]
pub struct AcceptArgs {
    /// The peer: its public key, a unique prefix (≥ 8 hex) or its name
    pub peer: String,
    /// A name for the peer
    #[arg(long)]
    pub name: Option<String>,
}

/// Block a key: refused before any work beyond verifying its Hello, and not recorded again.
///
/// Example: `mmogit p2p block 3fa9c21b`
#[derive(clap::Args, Debug)]
pub struct BlockArgs {
    /// The peer: its public key (may be unknown yet), a unique prefix (≥ 8 hex) or its name
    pub peer: String,
}

pub fn pending(ctx: &Ctx, args: PendingArgs) -> anyhow::Result<ExitCode> {
    let store = load_peers(ctx)?;
    let pending: Vec<_> = store
        .list()
        .into_iter()
        .filter(|r| r.trust == TrustState::Pending)
        .collect();
    if args.json {
        let out: Vec<PeerJson> = pending.iter().map(|r| PeerJson::new(r)).collect();
        print_json(&out)?;
    } else if pending.is_empty() {
        if !ctx.quiet {
            eprintln!("no pending peers");
        }
    } else {
        for r in pending {
            println!(
                "{}  from {}  last seen {}",
                r.pubkey,
                r.addresses.last().map(String::as_str).unwrap_or("-"),
                when(r.last_seen)
            );
        }
        if !ctx.quiet {
            eprintln!(
                "accept one with `mmogit p2p accept <key prefix>`, or `mmogit p2p block <key>`"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn accept(ctx: &Ctx, args: AcceptArgs) -> anyhow::Result<ExitCode> {
    let rec = update_peers(ctx, |store| {
        let rec = store.trust(&args.peer)?.clone();
        if args.name.is_some() {
            store.add(rec.pubkey, args.name, Vec::new(), rec.source);
        }
        Ok(rec)
    })?;
    println!("trusted {}", rec.pubkey);
    Ok(ExitCode::SUCCESS)
}

pub fn block(ctx: &Ctx, args: BlockArgs) -> anyhow::Result<ExitCode> {
    let pk = update_peers(ctx, |store| block_in(store, &args.peer))?;
    println!("blocked {pk}");
    Ok(ExitCode::SUCCESS)
}

fn block_in(store: &mut PeerStore, peer: &str) -> anyhow::Result<PublicKey> {
    Ok(match store.set_blocked(peer) {
        Ok(r) => r.pubkey,
        Err(PeerStoreError::NotFound(_)) => {
            // A key we have never seen can be blocked ahead of time.
            let pk = super::parse_pubkey(peer).map_err(|e| {
                crate::exit::Exit::new(
                    crate::exit::code::USAGE,
                    format!("no known peer matches `{peer}` and it is not a full key: {e}"),
                )
            })?;
            store.add(pk, None, Vec::new(), PeerSource::Manual);
            store.set_blocked(&pk.to_hex())?.pubkey
        }
        Err(e) => return Err(e.into()),
    })
}
