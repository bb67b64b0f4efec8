//! `mmogit recall`: memories from every branch, newest first.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use mmogit::api::{Agent, Filter, MemoryType, RecallResult, SearchResult};
use serde::Serialize;

use crate::cmd::remember::parse_type;
use crate::output::{print_human, print_json, MemoryJson};
use crate::Ctx;

/// Filters shared by `recall` and `show`.
#[derive(clap::Args, Debug, Default)]
pub struct FilterArgs {
    /// Only memories with this tag (repeat: all of them)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only memories by this author: `me`, a public key, or a unique prefix of at least 8 hex
    #[arg(long = "author", value_name = "PUBKEY|me")]
    pub authors: Vec<String>,
    /// Only memories created since a time (RFC 3339, e.g. 2026-11-25T10:00:00Z) or a duration ago (30m, 2h, 3d)
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<SystemTime>,
    /// At most this many, the newest
    #[arg(long, short = 'n', value_name = "N")]
    pub limit: Option<usize>,
    /// Print a JSON array of memories
    #[arg(long)]
    pub json: bool,
}

/// Recall memories from every branch (yours and replicated ones), newest first,
/// or ranked by relevance with --query.
///
/// Example: `mmogit recall --tag rust --since 3d --limit 20 --json`
/// or `mmogit recall --query 'borrow "data race"' --limit 5`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Full-text search: words and "quoted phrases"; best matches first (BM25), with a score and a snippet
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub query: Option<String>,
    /// Only memories of this type (repeat: any of them)
    #[arg(long = "type", short = 't', value_parser = parse_type)]
    pub kinds: Vec<MemoryType>,
    /// Only memories with at least this confidence
    #[arg(long, value_name = "0..1")]
    pub min_confidence: Option<f64>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

pub fn parse_since(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    match humantime::parse_duration(s) {
        Ok(d) => SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("`{s}` reaches back before 1970")),
        Err(_) => Err(format!(
            "`{s}` is neither an RFC 3339 time (2026-11-25T10:00:00Z) nor a duration (30m, 2h, 3d)"
        )),
    }
}

/// Runs a recall and prints the result; warnings about unusable files go to stderr.
pub fn recall_and_print(
    ctx: &Ctx,
    args: &FilterArgs,
    kinds: Vec<MemoryType>,
    min_confidence: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let (filter, agent) = prepare(ctx, args, kinds, min_confidence)?;
    let me = agent.reader();
    let RecallResult {
        memories, warnings, ..
    } = agent.recall(&filter)?;
    for w in &warnings {
        tracing::warn!("skipping {}: {}", w.path, w.reason);
    }
    if args.json {
        let out: Vec<MemoryJson> = memories.iter().map(|m| MemoryJson::new(m, me)).collect();
        print_json(&out)?;
    } else {
        let mut out = std::io::stdout().lock();
        for m in &memories {
            print_human(&mut out, m, me)?;
        }
        out.flush()?;
        if memories.is_empty() && !ctx.quiet {
            eprintln!("no memories match");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The filter from the command line and the agent (with its identity, if any).
fn prepare(
    ctx: &Ctx,
    args: &FilterArgs,
    kinds: Vec<MemoryType>,
    min_confidence: Option<f64>,
) -> anyhow::Result<(Filter, Agent)> {
    if let Some(c) = min_confidence {
        if !(0.0..=1.0).contains(&c) {
            return Err(crate::exit::Exit::new(
                crate::exit::code::USAGE,
                format!("--min-confidence {c} is outside 0..1"),
            )
            .into());
        }
    }
    // Recall works without an identity (a read-only replica), but then
    // nothing private can be decrypted and `me` means nothing.
    let agent = Agent::open_reader(ctx.home.clone());
    let mut authors = Vec::new();
    for a in &args.authors {
        authors.push(agent.resolve_author(a)?);
    }
    let filter = Filter {
        kinds,
        tags: args.tags.clone(),
        authors,
        since: args.since,
        min_confidence,
        limit: args.limit,
        ..Filter::default()
    };
    Ok((filter, agent))
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    match args.query {
        Some(text) => search_and_print(ctx, text, &args.filter, args.kinds, args.min_confidence),
        None => recall_and_print(ctx, &args.filter, args.kinds, args.min_confidence),
    }
}

/// A memory in `recall --query --json`: the usual fields plus its rank.
#[derive(Serialize)]
struct HitJson<'a> {
    #[serde(flatten)]
    memory: MemoryJson<'a>,
    /// BM25 relevance, higher is better (comparable within one search only).
    score: f64,
    /// The content around the matched words, which are marked with `**`.
    snippet: &'a str,
}

/// Ranked full-text search, printed best first.
fn search_and_print(
    ctx: &Ctx,
    text: String,
    args: &FilterArgs,
    kinds: Vec<MemoryType>,
    min_confidence: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let (filter, agent) = prepare(ctx, args, kinds, min_confidence)?;
    let me = agent.reader();
    // The store logs the index update (-v).
    let SearchResult { hits, warnings, .. } = agent.search(text, filter)?;
    for w in &warnings {
        tracing::warn!("skipping {}: {}", w.path, w.reason);
    }
    if args.json {
        let out: Vec<HitJson> = hits
            .iter()
            .map(|h| HitJson {
                memory: MemoryJson::new(&h.memory, me),
                score: h.score,
                snippet: &h.snippet,
            })
            .collect();
        print_json(&out)?;
    } else {
        let mut out = std::io::stdout().lock();
        for h in &hits {
            write!(out, "score {:.3}  ", h.score)?;
            if !h.snippet.is_empty() {
                write!(out, "{}", h.snippet.replace('\n', " "))?;
            }
            writeln!(out)?;
            print_human(&mut out, &h.memory, me)?;
        }
        out.flush()?;
        if hits.is_empty() && !ctx.quiet {
            eprintln!("no memories match");
        }
    }
    Ok(ExitCode::SUCCESS)
}
