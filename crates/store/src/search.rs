//! Full-text search: ranked recall (BM25, SQLite FTS5) over every branch,
//! from the full-text part of the index (see `index.rs`).
//!
//! Nothing in the index is trusted. Every hit is read from git and verified
//! (signature, id, the author owns the branch) before it is returned, and the
//! text that was indexed for it must be exactly the verified memory's text,
//! so the index can neither invent a memory nor put words in a real one.

use git2::Oid;
use mmogit_identity::{Identity, PublicKey};
use rusqlite::Connection;

use crate::index::{indexed_text, memory_path_safe, micros, Fail, IndexUpdate, Reader};
use crate::memory::{UnverifiedMemory, VerifiedMemory, MAX_MEMORY_FILE_BYTES};
use crate::query::{Filter, Warning};
use crate::repo::Store;
use crate::StoreError;

/// Tokens around the matched words in a snippet.
const SNIPPET_TOKENS: i32 = 16;
/// How candidates are read and verified together.
const VERIFY_CHUNK: usize = 64;

/// The ranking: BM25, tags weighing half as much as the content.
const RANK: &str = "bm25(fts, 1.0, 0.5)";

/// A ranked search: `text` is words and "quoted phrases"; `filter` narrows
/// the memories as in [`Store::recall`] (its `limit` bounds the hits).
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub text: String,
    pub filter: Filter,
}

/// One memory found by [`Store::search`].
#[derive(Debug, Clone)]
pub struct SearchHit {
    /// Read from git and verified.
    pub memory: VerifiedMemory,
    /// BM25 relevance (higher is better; only comparable within one search).
    pub score: f64,
    /// A short extract of the content around the matched words, marked with
    /// `**`; empty when the content is private and not the reader's.
    pub snippet: String,
}

/// What [`Store::search`] found.
#[derive(Debug, Default)]
pub struct SearchResult {
    /// Best first.
    pub hits: Vec<SearchHit>,
    /// Index entries whose memory could not be read or verified, or whose
    /// indexed text did not match the memory; they are never returned.
    pub warnings: Vec<Warning>,
    /// What bringing the index up to date took.
    pub update: IndexUpdate,
}

/// Turns user text into a safe FTS5 query: every word and every "quoted
/// phrase" becomes a quoted FTS5 string (so no user text is ever FTS5
/// syntax), joined with OR; BM25 ranks memories with more of them, and
/// rarer ones, first. Words without any letter or digit are dropped.
///
/// Errors: an unterminated `"`, or nothing left to search for.
pub fn fts_query(text: &str) -> Result<String, StoreError> {
    let mut terms: Vec<String> = Vec::new();
    let mut push = |t: &str| {
        let t = t.trim();
        if t.chars().any(char::is_alphanumeric) {
            terms.push(format!("\"{}\"", t.replace('"', "\"\"")));
        }
    };
    let mut rest = text;
    loop {
        match rest.find('"') {
            None => {
                rest.split_whitespace().for_each(&mut push);
                break;
            }
            Some(open) => {
                rest[..open].split_whitespace().for_each(&mut push);
                let after = &rest[open + 1..];
                let Some(close) = after.find('"') else {
                    return Err(StoreError::InvalidQuery(format!(
                        "unterminated phrase in `{text}`: close it with \""
                    )));
                };
                push(&after[..close]);
                rest = &after[close + 1..];
            }
        }
    }
    if terms.is_empty() {
        return Err(StoreError::InvalidQuery(format!(
            "`{text}` has no words to search for"
        )));
    }
    Ok(terms.join(" OR "))
}

impl Store {
    /// Ranked full-text search over every `users/*` branch (BM25, best
    /// first), combined with `query.filter`. The index is brought up to date
    /// with the branch tips first. Every hit is read from git and verified
    /// before it is returned; index entries that do not verify are reported
    /// as warnings. `reader` is the home's identity: its own private
    /// memories are searchable, nobody else's content is.
    ///
    /// Errors: [`StoreError::InvalidQuery`] for a query with nothing to
    /// search for or an unterminated phrase.
    pub fn search(
        &self,
        query: &SearchQuery,
        reader: Option<&Identity>,
    ) -> Result<SearchResult, StoreError> {
        let fts = fts_query(&query.text)?;
        self.with_index(Reader::Is(reader), |conn, update| {
            self.search_in(conn, &fts, &query.filter, reader, update)
        })
    }

    /// Ranks the matches (with the filter), then reads and verifies hits
    /// in rank order until `limit` are found.
    ///
    /// Two steps: the ranking query reads only rowids and scores, so the
    /// snippet and the text are computed for the rows actually read. (FTS5's
    /// own `ORDER BY rank` with configured weights took twice as long as
    /// ranking by `bm25()` with the same weights, and joining `docs` for
    /// every match when no filter needs it cost another 40 %.)
    fn search_in(
        &self,
        conn: &Connection,
        fts: &str,
        filter: &Filter,
        reader: Option<&Identity>,
        update: IndexUpdate,
    ) -> Result<SearchResult, Fail> {
        let needs_docs = !filter.kinds.is_empty()
            || !filter.authors.is_empty()
            || !filter.tags.is_empty()
            || filter.since.is_some()
            || filter.min_confidence.is_some();
        let mut sql = format!("SELECT fts.rowid, {RANK} AS score FROM fts");
        if needs_docs {
            sql.push_str(
                " JOIN docs d ON d.rowid = fts.rowid JOIN branches b ON b.rowid = d.branch",
            );
        }
        sql.push_str(" WHERE fts MATCH ?1");
        let mut args: Vec<rusqlite::types::Value> = vec![fts.to_string().into()];
        let mut arg = |v: rusqlite::types::Value| {
            args.push(v);
            format!("?{}", args.len())
        };
        if !filter.kinds.is_empty() {
            let list: Vec<String> = filter
                .kinds
                .iter()
                .map(|k| arg(k.as_str().to_string().into()))
                .collect();
            sql.push_str(&format!(" AND d.kind IN ({})", list.join(", ")));
        }
        if !filter.authors.is_empty() {
            let list: Vec<String> = filter
                .authors
                .iter()
                .map(|a| arg(a.to_hex().into()))
                .collect();
            sql.push_str(&format!(" AND b.owner IN ({})", list.join(", ")));
        }
        for t in &filter.tags {
            let p = arg(format!("\x1f{t}\x1f").into());
            sql.push_str(&format!(" AND instr(d.tags, {p}) > 0"));
        }
        if let Some(since) = filter.since {
            let p = arg(micros(since).into());
            sql.push_str(&format!(" AND d.t >= {p}"));
        }
        if let Some(min) = filter.min_confidence {
            let p = arg(min.into());
            sql.push_str(&format!(" AND d.conf >= {p}"));
        }
        sql.push_str(" ORDER BY score, fts.rowid");
        let page_arg = arg(0i64.into());
        let offset_arg = arg(0i64.into());
        sql.push_str(&format!(" LIMIT {page_arg} OFFSET {offset_arg}"));
        let (page_i, offset_i) = (args.len() - 2, args.len() - 1);
        let mut rank_stmt = conn.prepare(&sql)?;
        let mut row_stmt = conn.prepare(
            "SELECT b.owner, d.id, d.blob, snippet(fts, 0, '**', '**', '…', ?2),
                    fts.content, fts.tags
             FROM fts JOIN docs d ON d.rowid = fts.rowid JOIN branches b ON b.rowid = d.branch
             WHERE fts MATCH ?1 AND fts.rowid = ?3",
        )?;

        let want = filter.limit.unwrap_or(usize::MAX);
        let mut result = SearchResult {
            update,
            ..SearchResult::default()
        };
        // Candidates a page: a few more than needed, as some may fail
        // verification or the filter; more pages only if they did.
        let mut page = want.saturating_add(16).min(i64::MAX as usize);
        let mut offset = 0usize;
        loop {
            args[page_i] = (page as i64).into();
            args[offset_i] = (offset as i64).into();
            let ranked: Vec<(i64, f64)> = rank_stmt
                .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            let full_page = ranked.len() == page;
            let mut batch: Vec<Candidate> = Vec::new();
            for (rowid, rank) in ranked {
                let mut rows = row_stmt.query(rusqlite::params![fts, SNIPPET_TOKENS, rowid])?;
                if let Some(r) = rows.next()? {
                    batch.push(Candidate {
                        owner: r.get(0)?,
                        id: r.get(1)?,
                        blob: r.get(2)?,
                        score: -rank,
                        snippet: r.get(3)?,
                        content: r.get(4)?,
                        tags: r.get(5)?,
                    });
                }
                let need = (want - result.hits.len()).clamp(1, VERIFY_CHUNK);
                if batch.len() >= need {
                    self.verify_candidates(std::mem::take(&mut batch), filter, reader, &mut result);
                    if result.hits.len() >= want {
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                self.verify_candidates(batch, filter, reader, &mut result);
            }
            if result.hits.len() >= want || !full_page {
                break;
            }
            offset += page;
            page = page.saturating_mul(2).min(i64::MAX as usize);
        }
        result.hits.truncate(want);
        Ok(result)
    }

    fn verify_candidates(
        &self,
        batch: Vec<Candidate>,
        filter: &Filter,
        reader: Option<&Identity>,
        result: &mut SearchResult,
    ) {
        let mut parsed = Vec::new();
        let mut kept = Vec::new();
        for c in batch {
            let warn = |reason: String| Warning {
                path: format!("users/{}:{}", c.owner, memory_path_safe(&c.id)),
                reason,
            };
            let owner: Option<PublicKey> = c.owner.parse().ok();
            let um = Oid::from_str(&c.blob)
                .map_err(StoreError::from)
                .and_then(|b| self.read_blob(b, MAX_MEMORY_FILE_BYTES))
                .and_then(|d| UnverifiedMemory::from_json(&d));
            match um {
                Ok(m) if m.id == c.id && Some(m.author) == owner => {
                    parsed.push(m);
                    kept.push(c);
                }
                Ok(_) => result
                    .warnings
                    .push(warn("the search index does not match the file".into())),
                Err(e) => result.warnings.push(warn(e.to_string())),
            }
        }
        for (r, c) in UnverifiedMemory::verify_many(parsed).into_iter().zip(kept) {
            let warn = |reason: String| Warning {
                path: format!("users/{}:{}", c.owner, memory_path_safe(&c.id)),
                reason,
            };
            let vm = match r {
                Ok(vm) => vm,
                Err(e) => {
                    result.warnings.push(warn(e.to_string()));
                    continue;
                }
            };
            // The index must not put words in a real memory's mouth.
            let text = indexed_text(vm.stored_content(), vm.is_private(), vm.author(), reader);
            if text.as_deref() != Some(c.content.as_str()) || vm.tags().join(" ") != c.tags {
                result.warnings.push(warn(
                    "the search index does not match the memory (run `mmogit reindex`)".into(),
                ));
                continue;
            }
            if !filter.matches(vm.record()) {
                continue;
            }
            result.hits.push(SearchHit {
                memory: vm,
                score: c.score,
                snippet: c.snippet,
            });
        }
    }
}

/// A row of the index, not trusted yet.
struct Candidate {
    owner: String,
    id: String,
    blob: String,
    score: f64,
    snippet: String,
    content: String,
    tags: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_always_quoted() {
        assert_eq!(fts_query("rust borrow").unwrap(), r#""rust" OR "borrow""#);
        assert_eq!(
            fts_query(r#"the "borrow checker" ok"#).unwrap(),
            r#""the" OR "borrow checker" OR "ok""#
        );
        assert_eq!(
            fts_query("NEAR(a b) OR c* -d col:x").unwrap(),
            r#""NEAR(a" OR "b)" OR "OR" OR "c*" OR "-d" OR "col:x""#
        );
        assert_eq!(fts_query("a\"\"b").unwrap(), r#""a" OR "b""#);
        assert!(matches!(fts_query("  "), Err(StoreError::InvalidQuery(_))));
        assert!(matches!(
            fts_query("!! ?"),
            Err(StoreError::InvalidQuery(_))
        ));
        assert!(matches!(
            fts_query("\"\""),
            Err(StoreError::InvalidQuery(_))
        ));
        assert!(matches!(
            fts_query("open \"phrase"),
            Err(StoreError::InvalidQuery(_))
        ));
    }
}
