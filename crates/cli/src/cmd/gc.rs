//! `mmogit gc`: repack the memory repository and drop what nothing reaches.

use std::process::ExitCode;
use std::time::Duration;

use mmogit::api::GcReport;

use crate::output::print_json;
use crate::Ctx;

/// Repository maintenance: repack every pack and loose object into one pack,
/// and drop objects no ref reaches once older than the grace period.
///
/// Waits for and holds the repository's write lock, so it never runs beside
/// `remember`, `import`, `sync` or an ingest by `serve`. Every branch and
/// every evidence ref keeps its objects; while an ingest is running nothing
/// is dropped. `serve` runs it on a schedule (`--gc-interval`).
///
/// Example: `mmogit gc --json`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep unreachable objects younger than this (e.g. 14days, 1h, 0s)
    #[arg(long, default_value = "14days", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Time limit of each git command
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the report as JSON: {before: {packs, loose, bytes}, after: {...}, pruned, grace_secs, live_quarantines, abandoned_quarantines, elapsed_ms}
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let store = ctx.home.open_store()?;
    let report = store.gc(args.grace, args.timeout)?;
    if args.json {
        print_json(&report)?;
    } else if !ctx.quiet {
        eprintln!("{}", summary(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line: what the repository looked like before and after.
pub fn summary(r: &GcReport) -> String {
    let mut line = format!(
        "gc: {} packs and {} loose objects ({}) -> {} packs and {} loose objects ({}) in {:.2?}",
        r.before.packs,
        r.before.loose,
        mib(r.before.bytes),
        r.after.packs,
        r.after.loose,
        mib(r.after.bytes),
        r.elapsed
    );
    if r.live_quarantines > 0 {
        line.push_str(&format!(
            "; {} ingest(s) running: nothing unreachable dropped",
            r.live_quarantines
        ));
    }
    if r.abandoned_quarantines > 0 {
        line.push_str(&format!(
            "; removed {} quarantine(s) of interrupted ingests",
            r.abandoned_quarantines
        ));
    }
    line
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
