//! The client side of replication (`mmogit sync`, `mmogit p2p query`): a
//! sync in three steps on an open connection (pull, push, the peer's
//! verdict), and a paged query whose every memory is verified.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mmogit_identity::PublicKey;
use mmogit_proto::{BranchTip, MemoryResponse, Message, SyncRequest, MAX_BUNDLE_CHUNK};
pub use mmogit_proto::{IngestSummary, MemoryRequest};
use mmogit_store::IngestReport;

use super::answers::{
    answer_sync, blocking, open, parse_tips, peer_lacks, summary, tips_of, SyncAnswer,
};
use super::error::ReplicateError;
use super::transfer::{ingest_tag, send_bundle, ChunkSink, Incoming};
use super::ReplicatorConfig;
use crate::client::Connection;
use crate::error::NodeError;

impl ChunkSink for Connection {
    async fn put(&mut self, m: Message) -> Result<(), NodeError> {
        self.send(m).await
    }
}

/// Settings of a client sync.
#[derive(Debug, Clone)]
pub struct ClientSync {
    pub repo: PathBuf,
    pub me: PublicKey,
    pub max_transfer: u64,
    pub max_rate: Option<u64>,
    pub chunk_size: usize,
    /// Bound on each wait for the peer (messages unrelated to the sync do
    /// not extend it).
    pub timeout: Duration,
    /// Bound on the whole sync, pull and push.
    pub deadline: Duration,
}

/// What a client sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    /// Our ingest of what the peer sent (None: nothing new).
    pub received: Option<IngestReport>,
    /// Why our pull failed, if it did (nothing applied).
    pub pull_error: Option<String>,
    /// Bytes received.
    pub bytes_received: u64,
    /// The peer's summary of what we sent (None: nothing to send).
    pub sent: Option<IngestSummary>,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Why our push failed, if it did.
    pub push_error: Option<String>,
}

/// Progress callback: (what, bytes done, bytes total).
pub type ProgressFn<'a> = &'a dyn Fn(&str, u64, u64);

/// Exchanges memories both ways on an open connection: pulls what is new
/// from the peer (verified ingest), then offers ours (announce) and answers
/// the peer's pull, then waits for the peer's verdict on what we sent. Each
/// direction runs alone, so two large writes never block each other.
pub async fn sync_connection(
    conn: &mut Connection,
    cfg: &ClientSync,
    progress: ProgressFn<'_>,
) -> Result<SyncOutcome, ReplicateError> {
    let mut out = SyncOutcome::default();
    let overall = Instant::now() + cfg.deadline;
    let pulled = pull(conn, cfg, progress, overall, &mut out).await?;
    if out.pull_error.is_some() {
        return Ok(out);
    }
    if let Some(transfer) = push(conn, cfg, progress, overall, pulled, &mut out).await? {
        await_verdict(conn, cfg, overall, &transfer, &mut out).await?;
    }
    Ok(out)
}

/// What the pull step learnt for the push step.
struct Pulled {
    /// The peer's tips as it last told them.
    their_tips: Option<Vec<BranchTip>>,
    /// Pull requests of the peer that arrived meanwhile.
    pending: Vec<MemoryRequest>,
}

/// Step 1: asks for what is new and ingests it (verified, all or nothing).
/// A refusal or a bad transfer is `out.pull_error`; a broken connection or
/// our store failing is an error.
async fn pull(
    conn: &mut Connection,
    cfg: &ClientSync,
    progress: ProgressFn<'_>,
    overall: Instant,
    out: &mut SyncOutcome,
) -> Result<Pulled, ReplicateError> {
    let peer = conn.peer_pubkey();
    let repo = cfg.repo.clone();
    {
        let repo = repo.clone();
        blocking(move || Ok(open(&repo)?.clean_incoming()?)).await?;
    }
    let have = {
        let repo = repo.clone();
        blocking(move || tips_of(&open(&repo)?)).await?
    };
    conn.send(Message::MemoryRequest(MemoryRequest {
        id: 1,
        sync: Some(SyncRequest {
            have,
            max_transfer: Some(cfg.max_transfer),
        }),
        ..Default::default()
    }))
    .await?;
    let mut pulled = Pulled {
        their_tips: None,
        pending: Vec::new(),
    };
    let mut incoming: Option<Incoming> = None;
    // Each wait ends at the earlier of the overall deadline and `timeout`
    // after the last progress: other messages do not extend it.
    let until = |progress: Instant| (progress + cfg.timeout).min(overall);
    let mut progress_at = Instant::now();
    loop {
        let m = recv_until(conn, until(progress_at), overall).await?;
        match m {
            Message::MemoryResponse(r) if r.id == Some(1) => {
                progress_at = Instant::now();
                if r.tips.is_some() {
                    pulled.their_tips = r.tips.clone();
                }
                if let Some(e) = r.error {
                    out.pull_error = Some(e);
                    break;
                }
                let Some(info) = r.transfer else { break };
                let repo = repo.clone();
                let max = cfg.max_transfer;
                match blocking(move || Ok(Incoming::start(&repo, &info, max, MAX_BUNDLE_CHUNK)))
                    .await?
                {
                    Ok(i) => {
                        progress("receiving", 0, i.total);
                        incoming = Some(i);
                    }
                    Err(e) => {
                        out.pull_error = Some(e);
                        break;
                    }
                }
            }
            Message::GitBundle(g) => {
                let Some(mut inc) = incoming.take() else {
                    return Err(NodeError::Protocol("chunk of no transfer".into()).into());
                };
                progress_at = Instant::now();
                let len = g.data.len() as u64;
                let (inc, r) = tokio::task::spawn_blocking(move || {
                    let r = inc.chunk(&g);
                    (inc, r)
                })
                .await?;
                out.bytes_received += len;
                match r {
                    Ok(false) => {
                        progress("receiving", out.bytes_received, inc.total);
                        incoming = Some(inc);
                    }
                    Ok(true) => {
                        progress("verifying", out.bytes_received, inc.total);
                        let transfer_id = inc.transfer_id.clone();
                        let repo = repo.clone();
                        let tag = ingest_tag(&peer);
                        let report =
                            tokio::task::spawn_blocking(move || inc.ingest(&repo, &tag)).await?;
                        let s = match &report {
                            Ok(rep) => summary(&transfer_id, rep),
                            Err(e) => IngestSummary {
                                transfer_id,
                                refused: vec![e.clone()],
                                ..Default::default()
                            },
                        };
                        conn.send(Message::MemoryResponse(MemoryResponse {
                            ingested: Some(s),
                            ..Default::default()
                        }))
                        .await?;
                        match report {
                            Ok(rep) => out.received = Some(rep),
                            Err(e) => out.pull_error = Some(e),
                        }
                        break;
                    }
                    Err(e) => {
                        out.pull_error = Some(e);
                        break;
                    }
                }
            }
            Message::MemoryRequest(r) if r.sync.is_some() && pulled.pending.len() < 4 => {
                pulled.pending.push(r)
            }
            Message::MemoryResponse(r)
                if r.id.is_none() && r.ingested.is_none() && r.tips.is_some() =>
            {
                pulled.their_tips = r.tips;
            }
            _ => {}
        }
    }
    Ok(pulled)
}

/// Step 2: when the peer lacks anything of ours, announces our tips and
/// answers its pull. Returns the id of the transfer sent, if one was.
async fn push(
    conn: &mut Connection,
    cfg: &ClientSync,
    progress: ProgressFn<'_>,
    overall: Instant,
    pulled: Pulled,
    out: &mut SyncOutcome,
) -> Result<Option<String>, ReplicateError> {
    let Pulled {
        their_tips,
        mut pending,
    } = pulled;
    let repo = cfg.repo.clone();
    let ours = {
        let repo = repo.clone();
        blocking(move || tips_of(&open(&repo)?)).await?
    };
    let theirs = parse_tips(their_tips.as_deref().unwrap_or(&[]));
    let lacks = {
        let repo = repo.clone();
        let ours_p = parse_tips(&ours);
        blocking(move || Ok(peer_lacks(&open(&repo)?, &ours_p, &theirs))).await?
    };
    if !lacks && pending.is_empty() {
        return Ok(None);
    }
    if pending.is_empty() {
        conn.send(Message::MemoryResponse(MemoryResponse {
            tips: Some(ours),
            ..Default::default()
        }))
        .await?;
    }
    let rcfg = Arc::new(ReplicatorConfig {
        max_transfer: cfg.max_transfer,
        max_rate: cfg.max_rate,
        chunk_size: cfg.chunk_size,
        ..ReplicatorConfig::new(repo.clone(), cfg.me)
    });
    let deadline = (Instant::now() + cfg.timeout).min(overall);
    loop {
        let req = match pending.pop() {
            Some(r) => r,
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    out.push_error = Some("the peer did not ask for our memories".into());
                    return Ok(None);
                }
                match recv(conn, left).await {
                    Ok(Message::MemoryRequest(r)) if r.sync.is_some() => r,
                    Ok(_) => continue,
                    Err(NodeError::Timeout(_)) => {
                        out.push_error = Some("the peer did not ask for our memories".into());
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let id = req.id;
        let sync = req.sync.unwrap_or_default();
        let authors = req.authors;
        let c = rcfg.clone();
        match blocking(move || answer_sync(&c, &sync, &authors)).await? {
            SyncAnswer::NothingNew(tips) => {
                conn.send(Message::MemoryResponse(MemoryResponse {
                    id: Some(id),
                    tips: Some(tips),
                    ..Default::default()
                }))
                .await?;
                return Ok(None);
            }
            SyncAnswer::Refused(e) => {
                conn.send(Message::MemoryResponse(MemoryResponse {
                    id: Some(id),
                    error: Some(e.clone()),
                    ..Default::default()
                }))
                .await?;
                out.push_error = Some(e);
                return Ok(None);
            }
            SyncAnswer::Bundle(b, tips) => {
                let chunk = rcfg.chunk();
                let (bytes, _) =
                    send_bundle(conn, id, b, tips, chunk, cfg.max_rate, |done, total| {
                        progress("sending", done, total)
                    })
                    .await?;
                out.bytes_sent = bytes;
                return Ok(Some(id.to_string()));
            }
        }
    }
}

/// Step 3: the peer's summary of its ingest of transfer `transfer`.
async fn await_verdict(
    conn: &mut Connection,
    cfg: &ClientSync,
    overall: Instant,
    transfer: &str,
    out: &mut SyncOutcome,
) -> Result<(), ReplicateError> {
    let deadline = (Instant::now() + cfg.timeout).min(overall);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match recv(conn, left.max(Duration::from_millis(1))).await {
            Ok(Message::MemoryResponse(r)) => {
                if let Some(s) = r.ingested {
                    if s.transfer_id == transfer {
                        out.sent = Some(s);
                        return Ok(());
                    }
                }
            }
            Ok(_) => {}
            Err(NodeError::Timeout(_)) => {
                out.push_error = Some("the peer did not confirm what we sent".into());
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives the next message before `until`; a timeout names the overall
/// deadline when that is what ran out.
async fn recv_until(
    conn: &mut Connection,
    until: Instant,
    overall: Instant,
) -> Result<Message, NodeError> {
    let left = until.saturating_duration_since(Instant::now());
    match recv(conn, left.max(Duration::from_millis(1))).await {
        Err(NodeError::Timeout(_)) if until >= overall => Err(NodeError::Timeout(
            "the sync took longer than its deadline".into(),
        )),
        r => r,
    }
}

async fn recv(conn: &mut Connection, timeout: Duration) -> Result<Message, NodeError> {
    match tokio::time::timeout(timeout, conn.recv()).await {
        Ok(r) => r,
        Err(_) => Err(NodeError::Timeout("waiting for the peer".into())),
    }
}

/// Bounds of [`query_peer_with`] against a peer that answers forever,
/// slowly, or with junk.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Longest wait for one page; other messages arriving meanwhile do not
    /// extend it.
    pub page_timeout: Duration,
    /// Longest time for the whole query.
    pub deadline: Duration,
    /// Most pages.
    pub max_pages: usize,
    /// Most memories that fail verification before giving up.
    pub max_rejected: usize,
    /// Most bytes of memory records kept.
    pub max_bytes: usize,
}

impl QueryLimits {
    /// `page_timeout` per page; 10 minutes in all, 10,000 pages, 1,000
    /// rejected memories, 512 MiB of records.
    pub fn new(page_timeout: Duration) -> QueryLimits {
        QueryLimits {
            page_timeout,
            deadline: Duration::from_secs(600),
            max_pages: 10_000,
            max_rejected: 1_000,
            max_bytes: 512 << 20,
        }
    }
}

/// Queries a peer, page after page, until `limit` memories or no cursor,
/// within [`QueryLimits::new`]`(timeout)`. Every memory is verified
/// (signature and id); those that do not verify are returned apart with the
/// reason.
pub async fn query_peer(
    conn: &mut Connection,
    req: MemoryRequest,
    timeout: Duration,
) -> Result<QueryOutcome, NodeError> {
    query_peer_with(conn, req, &QueryLimits::new(timeout)).await
}

/// [`query_peer`] with explicit limits. Going past one is an error
/// (timeout, or protocol error naming the limit).
pub async fn query_peer_with(
    conn: &mut Connection,
    mut req: MemoryRequest,
    limits: &QueryLimits,
) -> Result<QueryOutcome, NodeError> {
    let mut out = QueryOutcome::default();
    let limit = req.limit.map(|l| l as usize).unwrap_or(usize::MAX);
    let deadline = Instant::now() + limits.deadline;
    let mut bytes = 0usize;
    for page in 1u64.. {
        if out.pages >= limits.max_pages {
            return Err(NodeError::Protocol(format!(
                "the peer sent {} pages, the limit",
                limits.max_pages
            )));
        }
        req.id = page;
        conn.send(Message::MemoryRequest(req.clone())).await?;
        let page_until = (Instant::now() + limits.page_timeout).min(deadline);
        let resp = loop {
            let left = page_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NodeError::Timeout(if page_until == deadline {
                    format!("the query took longer than {:?}", limits.deadline)
                } else {
                    "waiting for the peer".into()
                }));
            }
            match recv(conn, left).await? {
                Message::MemoryResponse(r) if r.id == Some(page) => break r,
                _ => continue,
            }
        };
        if let Some(e) = resp.error {
            return Err(NodeError::Protocol(format!(
                "the peer refused the query: {e}"
            )));
        }
        out.pages += 1;
        for v in resp.memories {
            if out.memories.len() >= limit {
                break;
            }
            let json = serde_json::to_vec(&v).unwrap_or_default();
            match mmogit_store::UnverifiedMemory::from_json(&json).and_then(|m| m.verify()) {
                Ok(m) => {
                    bytes += json.len();
                    if bytes > limits.max_bytes {
                        return Err(NodeError::Protocol(format!(
                            "the peer sent more than {} bytes of memories, the limit",
                            limits.max_bytes
                        )));
                    }
                    out.memories.push(m)
                }
                Err(e) => {
                    if out.rejected.len() >= limits.max_rejected {
                        return Err(NodeError::Protocol(format!(
                            "the peer sent more than {} memories that do not verify",
                            limits.max_rejected
                        )));
                    }
                    out.rejected.push((
                        v.get("id")
                            .and_then(|i| i.as_str())
                            .unwrap_or("?")
                            .chars()
                            .take(64)
                            .collect(),
                        e.to_string(),
                    ))
                }
            }
        }
        match resp.cursor {
            Some(c) if out.memories.len() < limit => req.cursor = Some(c),
            _ => break,
        }
    }
    Ok(out)
}

/// What [`query_peer`] got.
#[derive(Debug, Default)]
pub struct QueryOutcome {
    /// Verified memories, in the peer's order (newest first).
    pub memories: Vec<mmogit_store::VerifiedMemory>,
    /// Memories that did not verify: (id, reason).
    pub rejected: Vec<(String, String)>,
    /// Responses received.
    pub pages: usize,
}

/// RFC 3339 of `t`, for MemoryRequest `since`.
pub fn since_string(t: SystemTime) -> String {
    mmogit_store::format_time(t)
}
