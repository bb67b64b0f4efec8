//! Printing memories for people and for scripts.

use std::io::Write;

use mmogit::api::VerifiedMemory;
use mmogit_identity::Identity;
use serde::Serialize;

/// The JSON shape of a memory in `recall --json`, `show --json` and `remember --json`.
#[derive(Serialize)]
pub struct MemoryJson<'a> {
    pub id: &'a str,
    pub author: String,
    pub created_at: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Readable text; null when private and not ours.
    pub content: Option<String>,
    pub tags: &'a [String],
    pub confidence: Option<f64>,
    pub private: bool,
    /// True when the content is private and could not be decrypted here.
    pub encrypted: bool,
    pub signature: String,
    /// Always true: unverifiable memories are never printed as memories.
    pub verified: bool,
    /// The branch it was read from.
    pub branch: String,
}

impl<'a> MemoryJson<'a> {
    pub fn new(m: &'a VerifiedMemory, reader: Option<&Identity>) -> MemoryJson<'a> {
        let content = m.readable_content(reader);
        MemoryJson {
            id: m.id(),
            author: m.author().to_hex(),
            created_at: m.created_at(),
            kind: m.kind().as_str(),
            encrypted: content.is_none(),
            content,
            tags: m.tags(),
            confidence: m.confidence(),
            private: m.is_private(),
            signature: m.record().signature.to_hex(),
            verified: true,
            branch: format!("users/{}", m.author().to_hex()),
        }
    }
}

/// Writes `value` as pretty JSON and a newline on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Human form of a memory: a header line, then the content indented.
pub fn print_human(
    out: &mut impl Write,
    m: &VerifiedMemory,
    reader: Option<&Identity>,
) -> std::io::Result<()> {
    let mut header = format!(
        "{}  {:<12} {}  id {}",
        m.created_at(),
        m.kind().as_str(),
        m.author().short(12),
        &m.id()[..12]
    );
    if !m.tags().is_empty() {
        header.push_str(&format!("  #{}", m.tags().join(" #")));
    }
    if let Some(c) = m.confidence() {
        header.push_str(&format!("  confidence {c:.2}"));
    }
    if m.is_private() {
        header.push_str("  [private]");
    }
    writeln!(out, "{header}")?;
    match m.readable_content(reader) {
        Some(text) => {
            for line in text.lines() {
                writeln!(out, "    {line}")?;
            }
        }
        None => writeln!(
            out,
            "    <encrypted: private memory of {}>",
            m.author().short(12)
        )?,
    }
    writeln!(out)
}
