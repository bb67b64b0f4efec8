//! `mmogit import`: bulk-create memories from a JSON Lines file.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use mmogit::api::{MemoryType, NewMemory, VerifiedMemory};
use serde::Deserialize;

use crate::exit::{code, Exit};
use crate::output::print_json;
use crate::Ctx;

/// Import memories from a JSON Lines file, signed by this identity, one commit per batch.
///
/// Each line: {"content": "...", "type": "learning", "tags": ["a"], "confidence": 0.9, "private": false}
/// (only content is required). Every line is checked before anything is written.
///
/// Example: `mmogit import notes.jsonl` or `cat notes.jsonl | mmogit import -`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file, or - for stdin
    pub file: PathBuf,
    /// Memories per commit
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Print {"imported", "commits", "tip"} as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    content: String,
    #[serde(rename = "type", default = "default_type")]
    kind: MemoryType,
    #[serde(default)]
    tags: Vec<String>,
    confidence: Option<f64>,
    #[serde(default)]
    private: bool,
}

fn default_type() -> MemoryType {
    MemoryType::Observation
}

fn bad(name: &str, i: usize, e: String) -> Exit {
    Exit::new(
        code::USAGE,
        format!("{name}:{}: {e}; nothing was imported", i + 1),
    )
}

#[derive(serde::Serialize)]
struct Out {
    imported: usize,
    commits: usize,
    tip: Option<String>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let id = ctx.home.load_identity()?;
    let store = ctx.home.open_store()?;
    let reader: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("opening {}", args.file.display()))?,
        ))
    };
    let name = args.file.display().to_string();
    let mut lines: Vec<(usize, Line)> = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line).map_err(|e| bad(&name, i, e.to_string()))?;
        lines.push((i, l));
    }
    // Signing is the expensive part: spread it over the cores.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let per = lines.len().div_ceil(threads).max(1);
    let signed: Vec<Result<Vec<VerifiedMemory>, Exit>> = std::thread::scope(|s| {
        let handles: Vec<_> = lines
            .chunks(per)
            .map(|part| {
                let (id, name) = (&id, &name);
                s.spawn(move || {
                    part.iter()
                        .map(|(i, l)| {
                            VerifiedMemory::create(
                                id,
                                NewMemory {
                                    kind: l.kind,
                                    content: l.content.clone(),
                                    tags: l.tags.clone(),
                                    confidence: l.confidence,
                                    private: l.private,
                                },
                            )
                            .map_err(|e| bad(name, *i, e.to_string()))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("signing thread panicked"))
            .collect()
    });
    let mut memories = Vec::with_capacity(lines.len());
    for part in signed {
        memories.extend(part?);
    }
    let bar = if ctx.progress && !args.json {
        let b = indicatif::ProgressBar::new(memories.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} memories ({per_sec}, {eta} left)",
            )
            .expect("valid template"),
        );
        Some(b)
    } else {
        None
    };
    let tip = store.import(&id, &memories, args.batch, |n| {
        if let Some(b) = &bar {
            b.set_position(n as u64);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let commits = memories.len().div_ceil(args.batch.max(1));
    if args.json {
        print_json(&Out {
            imported: memories.len(),
            commits,
            tip: tip.map(|t| t.to_string()),
        })?;
    } else if !ctx.quiet {
        eprintln!("imported {} memories in {commits} commits", memories.len());
    }
    Ok(ExitCode::SUCCESS)
}
