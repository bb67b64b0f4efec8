//! `mmogit whoami`: the identity of this home.

use std::process::ExitCode;

use serde::Serialize;

use crate::output::print_json;
use crate::Ctx;

/// Show this home's public key and paths.
///
/// Example: `mmogit whoami --json | jq -r .pubkey`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print {"pubkey", "home", "repo"} as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Out {
    pubkey: String,
    home: String,
    repo: String,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let id = ctx.home.load_identity()?;
    let out = Out {
        pubkey: id.public_key().to_hex(),
        home: ctx.home.root().display().to_string(),
        repo: ctx.home.repo_path().display().to_string(),
    };
    if args.json {
        print_json(&out)?;
    } else {
        println!("{}", out.pubkey);
        if ctx.progress {
            eprintln!("home {}  repo {}", out.home, out.repo);
        }
    }
    Ok(ExitCode::SUCCESS)
}
