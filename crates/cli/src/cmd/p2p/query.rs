//! `mmogit p2p query`: ask a peer for memories, verified one by one.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mmogit::api::{connect_to_peer, query_peer, Filter, MemoryType};
use mmogit_identity::PublicKey;

use super::{parse_pubkey, resolve_target, runtime};
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
        authors.push(ctx.home.resolve_author(a, Some(&me))?);
    }
    let filter = Filter {
        kinds: args.kinds.clone(),
        tags: args.filter.tags.clone(),
        authors,
        since: args.filter.since,
        limit: args.filter.limit,
        ..Filter::default()
    };
    let timeout = args.timeout;
    let id = identity.clone();
    let out = runtime()?.block_on(async move {
        let mut conn = connect_to_peer(&addr, id, expected, timeout).await?;
        let out = query_peer(&mut conn, &filter, timeout).await;
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
