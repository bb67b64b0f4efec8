//! `mmogit p2p ...`: peers and direct connections.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use mmogit::api::PeerStore;
use mmogit_identity::PublicKey;

use crate::Ctx;

pub mod add;
pub mod connect;
pub mod discover;
pub mod list;
pub mod ping;
pub mod query;
pub mod remove;
pub mod status;
pub mod trust;

/// Manage peers and talk to them directly.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: P2p,
}

#[derive(clap::Subcommand, Debug)]
pub enum P2p {
    Add(add::Args),
    List(list::Args),
    Remove(remove::Args),
    Pending(trust::PendingArgs),
    Accept(trust::AcceptArgs),
    Block(trust::BlockArgs),
    Connect(connect::Args),
    Discover(discover::Args),
    Ping(ping::Args),
    Query(query::Args),
    Status(status::Args),
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        P2p::Add(a) => add::run(ctx, a),
        P2p::List(a) => list::run(ctx, a),
        P2p::Remove(a) => remove::run(ctx, a),
        P2p::Pending(a) => trust::pending(ctx, a),
        P2p::Accept(a) => trust::accept(ctx, a),
        P2p::Block(a) => trust::block(ctx, a),
        P2p::Connect(a) => connect::run(ctx, a),
        P2p::Discover(a) => discover::run(ctx, a),
        P2p::Ping(a) => ping::run(ctx, a),
        P2p::Query(a) => query::run(ctx, a),
        P2p::Status(a) => status::run(ctx, a),
    }
}

/// A single-threaded runtime for client commands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Loads peers.json of the home.
pub fn load_peers(ctx: &Ctx) -> anyhow::Result<PeerStore> {
    Ok(PeerStore::load(&ctx.home.peers_path())?)
}

/// Changes peers.json of the home under its lock (re-read, change, write:
/// see [`PeerStore::update`]), so a concurrent `serve` or CLI loses nothing.
pub fn update_peers<T>(
    ctx: &Ctx,
    change: impl FnOnce(&mut PeerStore) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    PeerStore::update(&ctx.home.peers_path(), change)
}

pub use mmogit::api::is_address;

/// Where to connect and which key to expect: an address (with an optional
/// expected key), or a known peer (its newest address and its key).
pub fn resolve_target(
    ctx: &Ctx,
    target: &str,
    pubkey: Option<PublicKey>,
) -> anyhow::Result<(String, Option<PublicKey>)> {
    if is_address(target) {
        return Ok((target.to_string(), pubkey));
    }
    let store = load_peers(ctx)?;
    let rec = store.get(target)?;
    let addr = rec.addresses.last().cloned().ok_or_else(|| {
        crate::exit::Exit::new(
            crate::exit::code::USAGE,
            format!(
                "peer {} has no known address; give one as ip:port",
                rec.pubkey.short(12)
            ),
        )
    })?;
    if let Some(pk) = pubkey {
        if pk != rec.pubkey {
            return Err(crate::exit::Exit::new(
                crate::exit::code::USAGE,
                format!("--pubkey {} is not the key of peer {target}", pk.short(12)),
            )
            .into());
        }
    }
    Ok((addr, Some(rec.pubkey)))
}

/// A public key argument: 64 hex characters.
pub fn parse_pubkey(s: &str) -> Result<PublicKey, String> {
    s.to_ascii_lowercase()
        .parse::<PublicKey>()
        .map_err(|e| match s.len() {
            64 => e.to_string(),
            _ => format!("{e} (give all 64 hex characters)"),
        })
}

/// Formats unix seconds as RFC 3339, or "never".
pub fn when(secs: Option<u64>) -> String {
    match secs {
        Some(s) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
                .to_string()
        }
        None => "never".into(),
    }
}
