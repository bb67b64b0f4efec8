//! `mmogit remember`: sign a memory and commit it to our branch.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use mmogit::api::{Agent, MemoryType, NewMemory, MAX_CONTENT_BYTES};

use crate::output::{print_json, MemoryJson};
use crate::Ctx;

/// Remember something: a signed memory on your branch.
///
/// Example: `mmogit remember --type learning --tag rust "Borrowck prevents data races"`
/// or `echo "long text" | mmogit remember -`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// observation, learning, relationship, task, experience, reflection, question or message
    #[arg(long = "type", short = 't', default_value = "observation", value_parser = parse_type)]
    pub kind: MemoryType,
    /// A tag (repeat for several)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// How sure you are, from 0 to 1
    #[arg(long, value_name = "0..1")]
    pub confidence: Option<f64>,
    /// Encrypt the content so that only this identity can read it (still signed and replicable)
    #[arg(long)]
    pub private: bool,
    /// Print the stored memory as JSON
    #[arg(long)]
    pub json: bool,
    /// The content, or - to read it from stdin
    pub content: String,
}

pub fn parse_type(s: &str) -> Result<MemoryType, String> {
    s.parse::<MemoryType>().map_err(|e| e.to_string())
}

/// Reads `-` from stdin (at most the content limit, plus one byte to detect more).
pub fn content_arg(s: &str) -> anyhow::Result<String> {
    if s != "-" {
        return Ok(s.to_string());
    }
    let mut buf = String::new();
    std::io::stdin()
        .lock()
        .take(MAX_CONTENT_BYTES as u64 + 1)
        .read_to_string(&mut buf)
        .context("reading the content from stdin")?;
    Ok(buf.trim_end_matches('\n').to_string())
}

/// Signs and stores one memory; prints it.
pub fn write_memory(ctx: &Ctx, new: NewMemory, json: bool) -> anyhow::Result<ExitCode> {
    let agent = Agent::open(ctx.home.clone())?;
    let id = agent.identity()?;
    let m = agent.remember(new)?;
    if json {
        print_json(&MemoryJson::new(&m, Some(id)))?;
    } else {
        println!("{}", m.id());
        if !ctx.quiet {
            eprintln!(
                "remembered {} on users/{}",
                m.kind(),
                id.public_key().short(12)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let content = content_arg(&args.content)?;
    write_memory(
        ctx,
        NewMemory {
            kind: args.kind,
            content,
            tags: args.tags,
            confidence: args.confidence,
            private: args.private,
        },
        args.json,
    )
}
