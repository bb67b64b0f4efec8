//! The `mmogit` command.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod exit;
mod output;

/// Sovereign, verifiable memory for AI agents: Ed25519-signed memories in git.
#[derive(Parser, Debug)]
#[command(name = "mmogit", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Home directory (key file, memory repository, peers) [default: $MMOGIT_HOME or ~/.mmogit]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// More logging on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr, no progress
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Init(cmd::init::Args),
    Whoami(cmd::whoami::Args),
    Remember(cmd::remember::Args),
    Post(cmd::post::Args),
    Recall(cmd::recall::Args),
    Reindex(cmd::reindex::Args),
    Show(cmd::show::Args),
    Verify(cmd::verify::Args),
    Import(cmd::import::Args),
    Gc(cmd::gc::Args),
    Serve(cmd::serve::Args),
    P2p(cmd::p2p::Args),
    Sync(cmd::sync::Args),
    Mcp(cmd::mcp::Args),
}

/// What every command gets besides its own arguments.
pub struct Ctx {
    pub home: mmogit::Home,
    pub quiet: bool,
    /// Whether progress bars may be drawn (stderr is a terminal, not quiet).
    pub progress: bool,
}

fn init_logging(verbose: u8, quiet: bool, daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        // A server logs one line per peer event by default.
        (false, 0) if daemon => "info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    exit::quiet_broken_pipe_panics();
    let cli = Cli::parse();
    init_logging(
        cli.verbose,
        cli.quiet,
        matches!(cli.command, Command::Serve(_)),
    );
    let home = match mmogit::Home::resolve(cli.home.clone()) {
        Ok(h) => h,
        Err(e) => return exit::report(&anyhow::Error::from(e), cli.verbose),
    };
    let ctx = Ctx {
        home,
        quiet: cli.quiet,
        progress: !cli.quiet && std::io::stderr().is_terminal(),
    };
    let res = match cli.command {
        Command::Init(a) => cmd::init::run(&ctx, a),
        Command::Whoami(a) => cmd::whoami::run(&ctx, a),
        Command::Remember(a) => cmd::remember::run(&ctx, a),
        Command::Post(a) => cmd::post::run(&ctx, a),
        Command::Recall(a) => cmd::recall::run(&ctx, a),
        Command::Reindex(a) => cmd::reindex::run(&ctx, a),
        Command::Show(a) => cmd::show::run(&ctx, a),
        Command::Verify(a) => cmd::verify::run(&ctx, a),
        Command::Import(a) => cmd::import::run(&ctx, a),
        Command::Gc(a) => cmd::gc::run(&ctx, a),
        Command::Serve(a) => cmd::serve::run(&ctx, a),
        Command::P2p(a) => cmd::p2p::run(&ctx, a),
        Command::Sync(a) => cmd::sync::run(&ctx, a),
        Command::Mcp(a) => cmd::mcp::run(&ctx, a),
    };
    match res {
        Ok(code) => code,
        Err(e) => exit::report(&e, cli.verbose),
    }
}
