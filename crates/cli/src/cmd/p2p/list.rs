//! `mmogit p2p list`: every known peer and its trust state.

use std::process::ExitCode;

use super::add::PeerJson;
use super::{load_peers, when};
use crate::output::print_json;
use crate::Ctx;

/// List known peers: trusted, pending and blocked.
///
/// Example: `mmogit p2p list --json`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print a JSON array of peer records
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let store = load_peers(ctx)?;
    let peers = store.list();
    if args.json {
        let out: Vec<PeerJson> = peers.iter().map(|r| PeerJson::new(r)).collect();
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if peers.is_empty() {
        if !ctx.quiet {
            eprintln!("no peers yet: add one with `mmogit p2p add <ip:port | git url>`");
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12}  {:<8}  {:<7}  {:<12}  {:<22}  LAST SEEN",
        "KEY", "TRUST", "SOURCE", "NAME", "ADDRESS / GIT"
    );
    for r in peers {
        let place = r
            .addresses
            .last()
            .cloned()
            .or_else(|| r.git_remote.clone())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<12}  {:<8}  {:<7}  {:<12}  {:<22}  {}",
            r.pubkey.short(12),
            format!("{:?}", r.trust).to_lowercase(),
            format!("{:?}", r.source).to_lowercase(),
            r.name.as_deref().unwrap_or("-"),
            place,
            when(r.last_seen)
        );
    }
    Ok(ExitCode::SUCCESS)
}
