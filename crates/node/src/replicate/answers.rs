//! Answers from our store (blocking; run on a blocking thread): our tips,
//! what a peer lacks, the bundle answering a pull, a page of a query, and
//! the summary of an ingest.

use std::str::FromStr;

use mmogit_identity::PublicKey;
use mmogit_proto::{BranchTip, IngestSummary, MemoryRequest, MemoryResponse, SyncRequest};
use mmogit_store::Oid;
use mmogit_store::{
    Bundle, BundleError, Filter, IngestReport, IngestStatus, MemoryType, RecallKey, Store,
};

use super::error::ReplicateError;
use super::{ReplicatorConfig, QUERY_MAX_MATCHES, QUERY_PAGE, QUERY_PAGE_BYTES};

/// Opens the store at `repo`.
pub(crate) fn open(repo: &std::path::Path) -> Result<Store, ReplicateError> {
    Ok(Store::open(repo)?)
}

/// Runs `f` on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReplicateError> + Send + 'static,
) -> Result<T, ReplicateError> {
    tokio::task::spawn_blocking(f).await?
}

/// Every branch tip we hold.
pub(crate) fn tips_of(store: &Store) -> Result<Vec<BranchTip>, ReplicateError> {
    Ok(store
        .branches()?
        .into_iter()
        .map(|(pk, oid)| BranchTip {
            author: pk.to_hex(),
            tip: oid.to_string(),
        })
        .collect())
}

/// The tips we show peers (pull answers, announces): every branch, or only
/// our own with `serve_own_only`.
pub(crate) fn served_tips(
    cfg: &ReplicatorConfig,
    store: &Store,
) -> Result<Vec<BranchTip>, ReplicateError> {
    let mut tips = tips_of(store)?;
    if cfg.serve_own_only {
        let me = cfg.me.to_hex();
        tips.retain(|t| t.author == me);
    }
    Ok(tips)
}

/// Parses wire tips; malformed entries are dropped.
pub fn parse_tips(tips: &[BranchTip]) -> Vec<(PublicKey, Oid)> {
    tips.iter()
        .filter_map(|t| Some((t.author.parse().ok()?, Oid::from_str(&t.tip).ok()?)))
        .collect()
}

/// The tips of `theirs` we lack: one we do not have, or that is not an
/// ancestor of (or equal to) our tip of that branch. Malformed tips are
/// left out.
pub(crate) fn lacking(store: &Store, theirs: Vec<BranchTip>) -> Vec<BranchTip> {
    theirs
        .into_iter()
        .filter(|t| {
            let (Ok(pk), Ok(tip)) = (t.author.parse::<PublicKey>(), Oid::from_str(&t.tip)) else {
                return false;
            };
            match store.tip(&pk).ok().flatten() {
                Some(ours) => !store.includes(ours, tip),
                None => true,
            }
        })
        .collect()
}

/// Whether a peer whose tips are `theirs` lacks any of `ours`.
pub(crate) fn peer_lacks(
    store: &Store,
    ours: &[(PublicKey, Oid)],
    theirs: &[(PublicKey, Oid)],
) -> bool {
    ours.iter()
        .any(|(pk, tip)| match theirs.iter().find(|(k, _)| k == pk) {
            None => true,
            Some((_, t)) => !store.includes(*t, *tip),
        })
}

/// What to answer a sync request with.
pub(crate) enum SyncAnswer {
    NothingNew(Vec<BranchTip>),
    Bundle(Bundle, Vec<BranchTip>),
    Refused(String),
}

/// The answer to a pull: a bundle of what `req.have` lacks (of the branches
/// of `authors` only, when the pull names some), or nothing new, or a
/// refusal when the bundle would pass the transfer limit.
pub(crate) fn answer_sync(
    cfg: &ReplicatorConfig,
    req: &SyncRequest,
    authors: &[String],
) -> Result<SyncAnswer, ReplicateError> {
    let store = open(&cfg.repo)?;
    let mut tips = served_tips(cfg, &store)?;
    if !authors.is_empty() {
        // The answer's tips too are those of the branches asked for.
        tips.retain(|t| authors.contains(&t.author));
    }
    let have = parse_tips(&req.have);
    // Keys that do not parse name no branch we could hold.
    let mut only: Option<Vec<PublicKey>> =
        (!authors.is_empty()).then(|| authors.iter().filter_map(|a| a.parse().ok()).collect());
    if cfg.serve_own_only {
        only = Some(match only {
            Some(asked) if !asked.contains(&cfg.me) => Vec::new(),
            _ => vec![cfg.me],
        });
    }
    if only.as_ref().is_some_and(Vec::is_empty) {
        return Ok(SyncAnswer::NothingNew(tips));
    }
    let limit = req.max_transfer.unwrap_or(u64::MAX).min(cfg.max_transfer);
    match store.build_bundle(&have, only.as_deref(), limit) {
        Ok(None) => Ok(SyncAnswer::NothingNew(tips)),
        Ok(Some(b)) => Ok(SyncAnswer::Bundle(b, tips)),
        Err(BundleError::TooLarge { limit, .. }) => Ok(SyncAnswer::Refused(format!(
            "transfer refused: the bundle exceeds the limit of {limit} bytes"
        ))),
        Err(BundleError::Store(e)) => Err(e.into()),
    }
}

/// One line per refused problem or failure of an ingest.
pub fn refusals(report: &IngestReport) -> Vec<String> {
    let mut out = Vec::new();
    for b in &report.branches {
        match b.status {
            IngestStatus::Refused => {
                for p in &b.problems {
                    let what = p
                        .memory
                        .as_deref()
                        .map(|m| format!(" memory {m}"))
                        .unwrap_or_default();
                    out.push(format!("{}{what}: {}", p.branch, p.reason));
                }
            }
            IngestStatus::Failed => out.push(format!(
                "users/{}: {}",
                b.author.to_hex(),
                b.error.as_deref().unwrap_or("failed")
            )),
            _ => {}
        }
    }
    out
}

pub(crate) fn summary(transfer_id: &str, report: &IngestReport) -> IngestSummary {
    IngestSummary {
        transfer_id: transfer_id.to_string(),
        memories: report.memories_added() as u64,
        branches: report.with_status(IngestStatus::Accepted).count() as u64,
        refused: refusals(report).into_iter().take(256).collect(),
    }
}

// ---- queries --------------------------------------------------------------

/// Answers a query (blocking): verified memories matching the filters,
/// newest first, one page; the cursor is the offset of the next page. With
/// `serve_own_only`, only our own memories match.
pub(crate) fn answer_query(cfg: &ReplicatorConfig, req: &MemoryRequest) -> MemoryResponse {
    let mut resp = MemoryResponse {
        id: Some(req.id),
        ..Default::default()
    };
    let fail = |mut r: MemoryResponse, e: String| {
        r.error = Some(e);
        r
    };
    let mut filter = Filter::default();
    for a in &req.authors {
        match a.parse::<PublicKey>() {
            Ok(pk) => filter.authors.push(pk),
            Err(_) => return fail(resp, format!("bad author {a:?}: 64 hex expected")),
        }
    }
    for t in &req.types {
        match MemoryType::from_str(t) {
            Ok(k) => filter.kinds.push(k),
            Err(_) => return fail(resp, format!("unknown type {t:?}")),
        }
    }
    if cfg.serve_own_only {
        // No author asked means every author: here, only us. Other authors
        // asked for match nothing (an empty list would mean every author).
        if filter.authors.is_empty() {
            filter.authors.push(cfg.me);
        } else if !filter.authors.contains(&cfg.me) {
            return resp;
        } else {
            filter.authors = vec![cfg.me];
        }
    }
    filter.tags = req.tags.clone();
    if let Some(s) = &req.since {
        match mmogit_store::parse_time(s) {
            Ok(t) => filter.since = Some(t),
            Err(_) => return fail(resp, format!("bad since {s:?}: RFC 3339 expected")),
        }
    }
    // The cursor: how many memories earlier pages carried, and the recall
    // key of the last one (resuming costs O(page), not O(offset)).
    let (offset, after) = match &req.cursor {
        None => (0, None),
        Some(c) => match c
            .split_once(':')
            .and_then(|(n, k)| Some((n.parse::<usize>().ok()?, k.parse::<RecallKey>().ok()?)))
        {
            Some((n, k)) => (n, Some(k)),
            None => return fail(resp, "bad cursor".into()),
        },
    };
    let wanted = req.limit.map(|l| l as usize).unwrap_or(usize::MAX);
    if offset >= wanted {
        return resp;
    }
    let store = match Store::open(&cfg.repo) {
        Ok(s) => s,
        Err(e) => return fail(resp, e.to_string()),
    };
    filter.after = after;
    filter.max_matches = Some(QUERY_MAX_MATCHES);
    filter.limit = Some((wanted - offset).min(QUERY_PAGE + 1));
    let found = match store.recall(&filter) {
        Ok(r) => r,
        Err(e) => return fail(resp, e.to_string()),
    };
    let mut bytes = 0;
    let mut n = 0;
    for m in found.memories.iter().take(QUERY_PAGE) {
        let json = m.to_json();
        let v: serde_json::Value = match serde_json::from_slice(&json) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if n > 0 && bytes + json.len() > QUERY_PAGE_BYTES {
            break;
        }
        bytes += json.len();
        n += 1;
        resp.memories.push(v);
    }
    if found.memories.len() > n && offset + n < wanted {
        resp.cursor = Some(format!("{}:{}", offset + n, found.keys[n - 1]));
    }
    resp
}
