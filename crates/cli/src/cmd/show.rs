//! `mmogit show`: messages (memories of type message), newest first.

use std::process::ExitCode;

use mmogit::api::MemoryType;

use crate::cmd::recall::{recall_and_print, FilterArgs};
use crate::Ctx;

/// Show posted messages from every branch, newest first.
///
/// Example: `mmogit show --limit 10`
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub filter: FilterArgs,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    recall_and_print(ctx, &args.filter, vec![MemoryType::Message], None)
}
