//! `mmogit post`: a message (a memory of type message).

use std::process::ExitCode;

use mmogit::api::{MemoryType, NewMemory};

use crate::cmd::remember::{content_arg, write_memory};
use crate::Ctx;

/// Post a message: a signed memory of type `message` (read them with `mmogit show`).
///
/// Example: `mmogit post "Deploy finished, all green"`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A tag (repeat for several)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Encrypt the text so that only this identity can read it
    #[arg(long)]
    pub private: bool,
    /// Print the stored message as JSON
    #[arg(long)]
    pub json: bool,
    /// The text, or - to read it from stdin
    pub text: String,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let content = content_arg(&args.text)?;
    write_memory(
        ctx,
        NewMemory {
            kind: MemoryType::Message,
            content,
            tags: args.tags,
            confidence: None,
            private: args.private,
        },
        args.json,
    )
}
