//! `mmogit verify`: check every memory on every branch.

use std::process::ExitCode;

use mmogit::api::VerifyReport;

use crate::exit::code;
use crate::output::print_json;
use crate::Ctx;

/// Verify every memory on every branch: signature, id, author owns the
/// branch, files only added (never changed or deleted). Exits 4 naming each
/// bad memory.
///
/// Example: `mmogit verify --json`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the report as JSON: {ok, branches, commits, memories, problems: [...], evidence: [...]}
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Out<'a> {
    ok: bool,
    #[serde(flatten)]
    report: &'a VerifyReport,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let store = ctx.home.open_store()?;
    let started = std::time::Instant::now();
    let report = store.verify_all()?;
    let elapsed = started.elapsed();
    if args.json {
        print_json(&Out {
            ok: report.is_ok(),
            report: &report,
        })?;
    } else {
        for p in &report.problems {
            let mut line = format!("BAD {}", p.branch);
            if let Some(path) = &p.path {
                line.push_str(&format!(":{path}"));
            }
            if let Some(c) = &p.commit {
                line.push_str(&format!(" (commit {})", &c[..12.min(c.len())]));
            }
            println!("{line}: {}", p.reason);
        }
        for ev in &report.evidence {
            println!("EVIDENCE {ev}: a rewritten history of this author was refused and kept");
        }
        if !ctx.quiet {
            eprintln!(
                "{} in {} on {} checked in {:.2?}: {}",
                plural(report.memories, "memory"),
                plural(report.commits, "commit"),
                plural(report.branches, "branch"),
                elapsed,
                if report.is_ok() {
                    "all verified".to_string()
                } else {
                    plural(report.problems.len(), "problem")
                }
            );
        }
    }
    if report.is_ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        if !args.json {
            eprintln!(
                "error: verification failed: {} problems",
                report.problems.len()
            );
        }
        Ok(ExitCode::from(code::VERIFICATION_FAILED))
    }
}

fn plural(n: usize, word: &str) -> String {
    match (n, word) {
        (1, w) => format!("1 {w}"),
        (n, "memory") => format!("{n} memories"),
        (n, "branch") => format!("{n} branches"),
        (n, w) => format!("{n} {w}s"),
    }
}
