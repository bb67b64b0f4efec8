//! `mmogit init`: create or recover the identity, create the repository.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::Context;
use mmogit_identity::Identity;
use serde::Serialize;

use crate::exit::{code, Exit};
use crate::output::print_json;
use crate::Ctx;

/// Create an identity (Ed25519 key and 24-word recovery phrase) and a memory repository.
///
/// Example: `mmogit init`, or `mmogit init --recover < phrase.txt`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Restore the identity from its 24-word recovery phrase (from --phrase or stdin)
    #[arg(long)]
    pub recover: bool,
    /// The recovery phrase, with --recover (stdin is safer: it stays out of shell history)
    #[arg(long, requires = "recover", value_name = "WORDS")]
    pub phrase: Option<String>,
    /// Replace an existing identity (the memory repository is kept)
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON (includes the recovery phrase when one is created)
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Out {
    pubkey: String,
    home: String,
    repo: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_phrase: Option<String>,
    recovered: bool,
}

fn read_phrase(args: &Args) -> anyhow::Result<String> {
    if let Some(p) = &args.phrase {
        return Ok(p.clone());
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Enter your 24-word recovery phrase, then press Enter:");
        let mut line = String::new();
        stdin.read_line(&mut line)?;
        return Ok(line);
    }
    let mut s = String::new();
    stdin
        .lock()
        .take(64 * 1024)
        .read_to_string(&mut s)
        .context("reading the recovery phrase from stdin")?;
    Ok(s)
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let home = &ctx.home;
    if home.is_initialized() && !args.force {
        let existing = Identity::load(&home.key_path())
            .map(|i| format!(" (identity {})", i.public_key().short(12)))
            .unwrap_or_default();
        return Err(Exit::new(
            code::FAILURE,
            format!(
                "{} is already initialized{existing}; `mmogit init --force` replaces the identity (the memory repository is kept)",
                home.root().display()
            ),
        )
        .into());
    }
    let (identity, phrase) = if args.recover {
        let words = read_phrase(&args)?;
        (Identity::from_phrase(&words)?, None)
    } else {
        let (id, phrase) = Identity::generate();
        (id, Some(phrase))
    };
    home.create_dir()?;
    if args.force && home.is_initialized() {
        tracing::warn!("replacing the identity in {}", home.key_path().display());
    }
    identity
        .save(&home.key_path(), args.force)
        .with_context(|| format!("writing the key file {}", home.key_path().display()))?;
    home.init_repo(&identity.public_key())?;

    let pk = identity.public_key();
    if args.json {
        print_json(&Out {
            pubkey: pk.to_hex(),
            home: home.root().display().to_string(),
            repo: home.repo_path().display().to_string(),
            recovery_phrase: phrase.as_ref().map(|p| p.as_str().to_string()),
            recovered: args.recover,
        })?;
    } else {
        println!("public key: {pk}");
        println!("home:       {}", home.root().display());
        if let Some(p) = &phrase {
            println!();
            println!(
                "Recovery phrase (write it down and keep it offline; it is shown only this once):"
            );
            println!();
            let words: Vec<&str> = p.as_str().split(' ').collect();
            for (row, chunk) in words.chunks(6).enumerate() {
                let line: Vec<String> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, w)| format!("{:>2}. {w:<9}", row * 6 + i + 1))
                    .collect();
                println!("  {}", line.join(" ").trim_end());
            }
            println!();
            println!("Restore it with `mmogit init --recover`.");
        } else {
            println!("identity recovered from the phrase");
        }
    }
    Ok(ExitCode::SUCCESS)
}
