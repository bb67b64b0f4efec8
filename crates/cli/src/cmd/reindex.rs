//! `mmogit reindex`: rebuild the index (recall's and search's) from every branch.

use std::process::ExitCode;

use serde::Serialize;

use crate::output::print_json;
use crate::Ctx;

/// Rebuild the index (used by `recall` and `recall --query`) from scratch.
///
/// The index is derived data (`memories.git/mmogit/search.sqlite`): it is kept
/// up to date on every recall and rebuilt by itself when missing or corrupt,
/// so this is only needed to start afresh. Example: `mmogit reindex --json`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print `{"memories", "branches", "skipped", "elapsed_ms", "per_second", "path"}`
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    memories: usize,
    branches: usize,
    skipped: usize,
    elapsed_ms: f64,
    per_second: f64,
    path: String,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    // Without an identity nothing private is indexed.
    let me = ctx.home.load_identity().ok();
    let store = ctx.home.open_store()?;
    let u = store.reindex_search(me.as_ref())?;
    let secs = u.elapsed.as_secs_f64();
    let report = Report {
        memories: u.added,
        branches: u.branches,
        skipped: u.skipped,
        elapsed_ms: secs * 1e3,
        per_second: if secs > 0.0 {
            u.added as f64 / secs
        } else {
            0.0
        },
        path: store.search_index_path().display().to_string(),
    };
    if args.json {
        print_json(&report)?;
    } else if !ctx.quiet {
        println!(
            "indexed {} memories from {} branches in {:.0} ms ({:.0}/s){}",
            report.memories,
            report.branches,
            report.elapsed_ms,
            report.per_second,
            if report.skipped > 0 {
                format!("; {} files skipped (run `mmogit verify`)", report.skipped)
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
