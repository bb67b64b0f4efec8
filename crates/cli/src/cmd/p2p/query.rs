//! `mmogit p2p query`: ask a peer for memories, verified one by one.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mmogit_identity::PublicKey;
use mmogit_node::replicate::{query_peer, since_string, MemoryRequest};
use mmogit_store::MemoryType;

use super::{client_config, parse_pubkey, resolve_target, runtime};
use crate::cmd::recall::FilterArgs;
use crate::cmd::remember::parse_type;
use crate::output::{print_human, print_json, MemoryJson};
use crate::Ctx;

/// Ask a peer for memories matching filters; every memory is verified
/// (signature and id) before it is shown.
///
/// Pages through the peer's answers with its cursor until --limit or the end.
///
/// Example: `mmogit p2p query bob --tag rust --since 3d --limit 20 --json`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ip:port, or a known peer (name or key prefix)
    pub peer: String,
    /// Refuse unless the peer proves this key
    #[arg(long, value_parser = parse_pubkey, value_name = "HEX")]
    pub pubkey: Option<PublicKey>,
    /// Only memories of this type (repeat: any of them)
    #[arg(long = "type", short = 't', value_parser = parse_type)]
    pub kinds: Vec<MemoryType>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Give up after this long (connect, handshake, each page)
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let identity = Arc::new(ctx.home.load_identity()?);
    let me = identity.public_key();
    let (addr, expected) = resolve_target(ctx, &args.peer, args.pubkey)?;
    let mut authors = Vec::new();
    for a in &args.filter.authors {
        authors.push(ctx.home.resolve_author(a, Some(&me))?.to_hex());
    }
    let req = MemoryRequest {
        authors,
        types: args.kinds.iter().map(|k| k.as_str().to_string()).collect(),
        tags: args.filter.tags.clone(),
        since: args.filter.since.map(since_string),
        limit: args
            .filter
            .limit
            .map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        ..Default::default()
    };
    let cfg = client_config(args.timeout);
    let timeout = args.timeout;
    let id = identity.clone();
    let out = runtime()?.block_on(async move {
        let mut conn = mmogit_node::connect(&addr, id, expected, &cfg).await?;
        let out = query_peer(&mut conn, req, timeout).await;
        let _ = conn.close("done").await;
        out
    })?;
    for (id, reason) in &out.rejected {
        tracing::warn!("refused memory {id} from the peer: {reason}");
        if !ctx.quiet {
            eprintln!("warning: refused memory {id}: {reason}");
        }
    }
    if args.filter.json {
        let v: Vec<MemoryJson> = out
            .memories
            .iter()
            .map(|m| MemoryJson::new(m, Some(&identity)))
            .collect();
        print_json(&v)?;
    } else {
        let mut o = std::io::stdout().lock();
        for m in &out.memories {
            print_human(&mut o, m, Some(&identity))?;
        }
        o.flush()?;
        if out.memories.is_empty() && !ctx.quiet {
            eprintln!("no memories match");
        }
    }
    if !out.rejected.is_empty() {
        return Ok(ExitCode::from(crate::exit::code::VERIFICATION_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}
