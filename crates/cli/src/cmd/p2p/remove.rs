//! `mmogit p2p remove`: forget a peer (and its git remote).

use std::process::ExitCode;

use super::update_peers;
use crate::Ctx;

/// Forget a peer: it is no longer trusted, and its git remote is removed.
/// Memories already replicated from it stay (they are signed; remove nothing).
///
/// Example: `mmogit p2p remove bob` or `mmogit p2p remove 3fa9c21b`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The peer: its name, public key, or a unique key prefix (≥ 8 hex)
    pub peer: String,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let rec = update_peers(ctx, |store| {
        let rec = store.remove(&args.peer)?;
        if let Some(remote) = &rec.git_remote {
            ctx.home.open_store()?.remove_remote(remote)?;
        }
        Ok(rec)
    })?;
    println!("removed {}", rec.pubkey);
    Ok(ExitCode::SUCCESS)
}
