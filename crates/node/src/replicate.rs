//! Memory exchange and replication over the peer protocol.
//!
//! * Queries: a MemoryRequest with filters is answered with verified
//!   memories, a page per MemoryResponse, with a cursor for more.
//! * Pull: a MemoryRequest with `sync.have` (the requester's branch tips) is
//!   answered with a MemoryResponse carrying `transfer` (size, SHA-256,
//!   chunk count) followed by GitBundle chunks of a bundle of what is new
//!   (built in process), or with `tips` alone when nothing is new. The
//!   receiver writes the chunks to a file in the repository, checks size and
//!   hash, indexes the pack and runs the verified-ingest gate; it then sends
//!   back an `ingested` summary.
//! * Live: [`Replicator::run`] polls our `users/*` tips every
//!   `poll_interval` and announces changed tips (MemoryResponse with `id`
//!   null and `tips`) to every peer session; a node that receives an
//!   announce of tips it lacks pulls. Accepted tips change ours, so the next
//!   poll announces them onward (A → B → C).
//!
//! Between two nodes at most one bundle flows at a time: a node that is
//! sending a bundle to a peer does not pull from it until done, and when
//! two pull requests cross, the node with the lower key answers after its
//! own pull completes (so two large writes never block each other).

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use git2::Oid;
use mmogit_identity::PublicKey;
use mmogit_proto::{
    BranchTip, GitBundle, MemoryResponse, Message, SyncRequest, TransferInfo, MAX_BUNDLE_CHUNK,
};
pub use mmogit_proto::{IngestSummary, MemoryRequest};
use mmogit_store::{
    Bundle, BundleError, BundleWriter, Filter, IngestReport, IngestStatus, MemoryType, RecallKey,
    Store,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::client::Connection;
use crate::error::NodeError;
use crate::inbox::{Inbound, Reply};
use crate::shared::NodeSender;

/// Largest bundle bytes per GitBundle chunk (7 MiB).
pub const MAX_CHUNK: usize = MAX_BUNDLE_CHUNK;
/// Default largest transfer: 1 GiB.
pub const DEFAULT_MAX_TRANSFER: u64 = 1 << 30;
/// Most memories per query page.
pub const QUERY_PAGE: usize = 500;
/// Query pages stay under this many bytes of JSON (the frame limit is 10 MiB
/// after base64).
const QUERY_PAGE_BYTES: usize = 6 * 1024 * 1024;
/// A query that more memories match than this is answered with an error
/// (each match is sorted): narrow it with authors, types, tags or since.
pub const QUERY_MAX_MATCHES: usize = 1_000_000;
/// Queries of one peer answered at once; more are refused with `busy`.
pub const MAX_CONCURRENT_QUERIES: usize = 4;
/// A query is worked on only when at most this many messages wait in the
/// session's queue.
const QUERY_QUEUED_AT_MOST: usize = 2;
/// How long a send may wait for room in a session's queue (only in tasks
/// of one session: the replicator's own loop never waits on a session).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `msg` on `reply` from a task of its own, so that a peer whose
/// queue is full (it stopped reading) holds up no other peer.
fn send_later(reply: &Reply, msg: Message) {
    let reply = reply.clone();
    tokio::spawn(async move {
        if let Err(e) = reply.send(msg, SEND_TIMEOUT).await {
            debug!(peer = %reply.peer().short(12), error = %e, "message not sent");
        }
    });
}

/// Replication settings.
#[derive(Debug, Clone)]
pub struct ReplicatorConfig {
    /// The bare memory repository.
    pub repo: PathBuf,
    /// Our key.
    pub me: PublicKey,
    /// Serve only our own branch (default: every `users/*` branch we hold).
    pub serve_own_only: bool,
    /// Largest bundle sent or received (default 1 GiB).
    pub max_transfer: u64,
    /// Sending rate limit in bytes per second (default none).
    pub max_rate: Option<u64>,
    /// Bundle bytes per GitBundle chunk (default and maximum 7 MiB).
    pub chunk_size: usize,
    /// How often our tips are polled for announces (default 100 ms).
    pub poll_interval: Duration,
    /// A pull with no progress for this long is abandoned (default 60 s).
    pub transfer_timeout: Duration,
    /// A pull still running after this long is abandoned, progress or not
    /// (default 1 hour: 1 GiB at 300 KB/s).
    pub transfer_deadline: Duration,
    /// Bundle bytes taken from one peer per day (default 1 GiB): a transfer
    /// that would go past it is refused. Relayed memories count against the
    /// peer that sent them.
    pub quota_bytes: u64,
    /// Memories accepted from one peer per day (default 1,000,000): once
    /// reached, that peer is not pulled from until the day is over.
    pub quota_memories: u64,
}

/// Length of a quota period.
pub const QUOTA_PERIOD: Duration = Duration::from_secs(24 * 3600);

impl ReplicatorConfig {
    pub fn new(repo: PathBuf, me: PublicKey) -> ReplicatorConfig {
        ReplicatorConfig {
            repo,
            me,
            serve_own_only: false,
            max_transfer: DEFAULT_MAX_TRANSFER,
            max_rate: None,
            chunk_size: MAX_BUNDLE_CHUNK,
            poll_interval: Duration::from_millis(100),
            transfer_timeout: Duration::from_secs(60),
            transfer_deadline: Duration::from_secs(3600),
            quota_bytes: 1 << 30,
            quota_memories: 1_000_000,
        }
    }

    fn chunk(&self) -> usize {
        self.chunk_size.clamp(1, MAX_BUNDLE_CHUNK)
    }
}

/// Something that happened, for logs and tests.
#[derive(Debug, Clone)]
pub enum ReplicationEvent {
    /// A bundle from `peer` went through the ingest gate.
    Ingested {
        peer: PublicKey,
        memories: usize,
        branches: usize,
        refused: Vec<String>,
    },
    /// A pull from `peer` failed (transfer refused, bad hash, timeout...).
    PullFailed { peer: PublicKey, reason: String },
    /// We sent a bundle to `peer`.
    Sent {
        peer: PublicKey,
        bytes: u64,
        commits: u64,
    },
}

// ---- shared helpers (node and client) -------------------------------------

fn tips_of(store: &Store) -> Result<Vec<BranchTip>, NodeError> {
    Ok(store
        .branches()
        .map_err(store_err)?
        .into_iter()
        .map(|(pk, oid)| BranchTip {
            author: pk.to_hex(),
            tip: oid.to_string(),
        })
        .collect())
}

/// The tips we show peers (pull answers, announces): every branch, or only
/// our own with `serve_own_only`.
fn served_tips(cfg: &ReplicatorConfig, store: &Store) -> Result<Vec<BranchTip>, NodeError> {
    let mut tips = tips_of(store)?;
    if cfg.serve_own_only {
        let me = cfg.me.to_hex();
        tips.retain(|t| t.author == me);
    }
    Ok(tips)
}

fn store_err(e: impl std::fmt::Display) -> NodeError {
    NodeError::Protocol(format!("store: {e}"))
}

/// Parses wire tips; malformed entries are dropped.
pub fn parse_tips(tips: &[BranchTip]) -> Vec<(PublicKey, Oid)> {
    tips.iter()
        .filter_map(|t| Some((t.author.parse().ok()?, Oid::from_str(&t.tip).ok()?)))
        .collect()
}

/// Whether `theirs` holds a tip we lack: one we do not have, or that is not
/// an ancestor of (or equal to) our tip of that branch.
fn lacking(store: &Store, theirs: &[(PublicKey, Oid)]) -> bool {
    theirs
        .iter()
        .any(|(pk, t)| match store.tip(pk).ok().flatten() {
            Some(ours) => !store.includes(ours, *t),
            None => true,
        })
}

fn open(repo: &std::path::Path) -> Result<Store, NodeError> {
    Store::open(repo).map_err(store_err)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Protocol(format!("worker failed: {e}")))?
}

/// What to answer a sync request with.
enum SyncAnswer {
    NothingNew(Vec<BranchTip>),
    Bundle(Bundle, Vec<BranchTip>),
    Refused(String),
}

fn answer_sync(cfg: &ReplicatorConfig, req: &SyncRequest) -> Result<SyncAnswer, NodeError> {
    let store = open(&cfg.repo)?;
    let tips = served_tips(cfg, &store)?;
    let have = parse_tips(&req.have);
    let only = [cfg.me];
    let limit = req.max_transfer.unwrap_or(u64::MAX).min(cfg.max_transfer);
    match store.build_bundle(&have, cfg.serve_own_only.then_some(&only[..]), limit) {
        Ok(None) => Ok(SyncAnswer::NothingNew(tips)),
        Ok(Some(b)) => Ok(SyncAnswer::Bundle(b, tips)),
        Err(BundleError::TooLarge { limit, .. }) => Ok(SyncAnswer::Refused(format!(
            "transfer refused: the bundle exceeds the limit of {limit} bytes"
        ))),
        Err(BundleError::Store(e)) => Err(store_err(e)),
    }
}

/// Paces sending to `rate` bytes per second.
struct Throttle {
    rate: Option<u64>,
    start: Instant,
    sent: u64,
}

impl Throttle {
    fn new(rate: Option<u64>) -> Throttle {
        Throttle {
            rate: rate.filter(|r| *r > 0),
            start: Instant::now(),
            sent: 0,
        }
    }

    async fn take(&mut self, bytes: usize) {
        self.sent += bytes as u64;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.sent as f64 / rate as f64);
            let elapsed = self.start.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
    }
}

/// The messages answering sync request `id` with `bundle`: the transfer
/// announcement, then the chunks (made lazily).
fn bundle_messages(
    id: u64,
    bundle: Arc<Bundle>,
    tips: Vec<BranchTip>,
    chunk: usize,
) -> impl Iterator<Item = Message> {
    let total = bundle.bytes.len();
    let chunks = total.div_ceil(chunk).max(1);
    let transfer_id = id.to_string();
    let head = Message::MemoryResponse(MemoryResponse {
        id: Some(id),
        tips: Some(tips),
        transfer: Some(TransferInfo {
            transfer_id: transfer_id.clone(),
            total_size: total as u64,
            sha256: bundle.sha256.clone(),
            chunks: chunks as u64,
            commits: bundle.commits as u64,
        }),
        ..Default::default()
    });
    std::iter::once(head).chain((0..chunks).map(move |i| {
        let data = bundle.bytes[i * chunk..((i + 1) * chunk).min(total)].to_vec();
        Message::GitBundle(GitBundle {
            transfer_id: transfer_id.clone(),
            index: i as u64,
            total_size: total as u64,
            sha256: bundle.sha256.clone(),
            data,
        })
    }))
}

/// A bundle being received.
pub struct Incoming {
    transfer_id: String,
    next: u64,
    chunks: u64,
    total: u64,
    sha256: String,
    writer: Option<BundleWriter>,
    last_progress: Instant,
}

static TRANSFER_SEQ: AtomicU64 = AtomicU64::new(0);

impl Incoming {
    /// Checks the announced transfer against `max` and opens its file in
    /// the repository's incoming directory.
    fn start(
        repo: &std::path::Path,
        info: &TransferInfo,
        max: u64,
        chunk_max: usize,
    ) -> Result<Incoming, String> {
        if info.total_size > max {
            return Err(format!(
                "transfer refused: {} bytes declared, the limit is {max}",
                info.total_size
            ));
        }
        if info.total_size == 0 {
            return Err("transfer refused: empty bundle".into());
        }
        let min_chunks = info.total_size.div_ceil(chunk_max as u64);
        if info.chunks < min_chunks || info.chunks > info.total_size {
            return Err(format!(
                "transfer refused: {} chunks cannot carry {} bytes",
                info.chunks, info.total_size
            ));
        }
        if info.sha256.len() != 64 || !info.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("transfer refused: bad sha256".into());
        }
        let seq = TRANSFER_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = repo
            .join(mmogit_store::INCOMING_DIR)
            .join(format!("{}-{seq}.bundle", std::process::id()));
        let writer = BundleWriter::create(path, info.total_size, &info.sha256)
            .map_err(|e| format!("cannot store the transfer: {e}"))?;
        Ok(Incoming {
            transfer_id: info.transfer_id.clone(),
            next: 0,
            chunks: info.chunks,
            total: info.total_size,
            sha256: info.sha256.to_ascii_lowercase(),
            writer: Some(writer),
            last_progress: Instant::now(),
        })
    }

    /// Takes one chunk (blocking file write). Ok(true) when complete.
    fn chunk(&mut self, g: &GitBundle) -> Result<bool, String> {
        if g.transfer_id != self.transfer_id {
            return Err(format!("chunk of unknown transfer {:?}", g.transfer_id));
        }
        if g.index != self.next || g.index >= self.chunks {
            return Err(format!(
                "chunk {} out of order (expected {})",
                g.index, self.next
            ));
        }
        if g.total_size != self.total || !g.sha256.eq_ignore_ascii_case(&self.sha256) {
            return Err("chunk declares another size or hash than its transfer".into());
        }
        let w = self.writer.as_mut().ok_or("transfer already finished")?;
        w.write(&g.data).map_err(|e| e.to_string())?;
        self.next += 1;
        self.last_progress = Instant::now();
        if w.complete() {
            if self.next != self.chunks {
                return Err("fewer chunks than announced".into());
            }
            return Ok(true);
        }
        if self.next == self.chunks {
            return Err(format!(
                "all {} chunks arrived but only {} of {} bytes",
                self.chunks,
                w.written(),
                self.total
            ));
        }
        Ok(false)
    }

    /// Checks size and hash, then ingests (blocking).
    fn ingest(mut self, repo: &std::path::Path, tag: &str) -> Result<IngestReport, String> {
        let w = self.writer.take().ok_or("transfer already finished")?;
        let path = w.finish().map_err(|e| e.to_string())?;
        let result = open(repo)
            .map_err(|e| e.to_string())
            .and_then(|s| s.ingest_bundle(&path, tag).map_err(|e| e.to_string()));
        let _ = std::fs::remove_file(&path);
        result
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

fn summary(transfer_id: &str, report: &IngestReport) -> IngestSummary {
    IngestSummary {
        transfer_id: transfer_id.to_string(),
        memories: report.memories_added() as u64,
        branches: report.with_status(IngestStatus::Accepted).count() as u64,
        refused: refusals(report).into_iter().take(256).collect(),
    }
}

fn ingest_tag(peer: &PublicKey) -> String {
    format!(
        "p2p-{}-{}-{}",
        peer.short(8),
        std::process::id(),
        TRANSFER_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

// ---- queries --------------------------------------------------------------

/// Answers a query (blocking): verified memories matching the filters,
/// newest first, one page; the cursor is the offset of the next page. With
/// `serve_own_only`, only our own memories match.
fn answer_query(cfg: &ReplicatorConfig, req: &MemoryRequest) -> MemoryResponse {
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

/// Decrements a counter when dropped.
struct CountGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// ---- the node side --------------------------------------------------------

/// A pull of ours from one peer.
struct Pull {
    id: u64,
    incoming: Option<Incoming>,
    started: Instant,
    /// The session the chunks come on: when it closes, the pull is over.
    session: Reply,
}

#[derive(Default)]
struct PeerState {
    pull: Option<Pull>,
    /// Sending a bundle to this peer.
    sending: bool,
    /// Their pull requests waiting for our pull to finish.
    deferred: Vec<(MemoryRequest, Reply)>,
    /// An announce arrived while busy: pull again when idle.
    want_pull: Option<Reply>,
    /// Tips last announced to this peer, and on which session: a peer that
    /// reconnected (e.g. restarted) between two ticks must hear them again.
    announced: Option<(Reply, Vec<BranchTip>)>,
}

/// What one peer sent us in the current quota period (in memory: a restart
/// starts a new period).
#[derive(Default)]
struct Quota {
    since: Option<Instant>,
    bytes: u64,
    memories: u64,
    /// The refusal was logged this period.
    warned: bool,
}

impl Quota {
    /// Starts a new period when the current one is over.
    fn roll(&mut self) -> &mut Quota {
        if self.since.is_none_or(|s| s.elapsed() >= QUOTA_PERIOD) {
            *self = Quota {
                since: Some(Instant::now()),
                ..Quota::default()
            };
        }
        self
    }

    /// Why nothing more is taken from this peer this period, if so.
    fn exhausted(&mut self, cfg: &ReplicatorConfig) -> Option<String> {
        let q = self.roll();
        if q.memories >= cfg.quota_memories {
            Some(format!(
                "daily quota reached: {} memories accepted from this peer (limit {})",
                q.memories, cfg.quota_memories
            ))
        } else if q.bytes >= cfg.quota_bytes {
            Some(format!(
                "daily quota reached: {} bytes received from this peer (limit {})",
                q.bytes, cfg.quota_bytes
            ))
        } else {
            None
        }
    }
}

/// An ingest finished: peer, pull id, outcome, the session, transfer id.
type IngestDone = (PublicKey, u64, Result<IngestReport, String>, Reply, String);

enum Done {
    Sent(PublicKey),
    Ingested(Box<IngestDone>),
}

/// Serves queries and sync requests, pulls what peers announce, and
/// announces our tips.
pub struct Replicator {
    cfg: Arc<ReplicatorConfig>,
    peers: HashMap<PublicKey, PeerState>,
    /// What each peer sent us this quota period (kept across its sessions:
    /// a reconnect does not start a new period).
    quotas: HashMap<PublicKey, Quota>,
    /// Each peer's queries being answered now (kept across its sessions).
    queries: HashMap<PublicKey, Arc<std::sync::atomic::AtomicUsize>>,
    next_id: u64,
    events: Option<mpsc::UnboundedSender<ReplicationEvent>>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
}

impl Replicator {
    pub fn new(cfg: ReplicatorConfig) -> Replicator {
        let (done_tx, done_rx) = mpsc::channel(64);
        Replicator {
            cfg: Arc::new(cfg),
            peers: HashMap::new(),
            quotas: HashMap::new(),
            queries: HashMap::new(),
            next_id: 1,
            events: None,
            done_tx,
            done_rx,
        }
    }

    /// Reports what happens on `tx` (for tests and logs).
    pub fn with_events(mut self, tx: mpsc::UnboundedSender<ReplicationEvent>) -> Replicator {
        self.events = Some(tx);
        self
    }

    fn emit(&self, e: ReplicationEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// Runs until the node stops: handles `inbox` (give the sending side to
    /// [`crate::Node::with_inbox`]) and announces our tips to `node`'s peers.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Inbound>, node: NodeSender) {
        {
            let repo = self.cfg.repo.clone();
            let cleaned = blocking(move || open(&repo)?.clean_incoming().map_err(store_err)).await;
            match cleaned {
                Ok(n) if n > 0 => info!(files = n, "removed what an interrupted transfer left"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot clean the incoming directory"),
            }
        }
        let mut tick = tokio::time::interval(self.cfg.poll_interval.max(Duration::from_millis(5)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = node.stopped() => break,
                m = inbox.recv() => match m {
                    Some(m) => self.on_message(m).await,
                    None => break,
                },
                Some(d) = self.done_rx.recv() => self.on_done(d).await,
                _ = tick.tick() => self.on_tick(&node).await,
            }
        }
        debug!("replicator stopped");
    }

    async fn on_tick(&mut self, node: &NodeSender) {
        // Abandon stalled pulls, and pulls whose session closed (the peer
        // restarted or the link dropped: a new session pulls afresh).
        let timeout = self.cfg.transfer_timeout;
        let mut failed = vec![];
        for (pk, st) in self.peers.iter_mut() {
            if let Some(p) = &st.pull {
                let last = p
                    .incoming
                    .as_ref()
                    .map(|i| i.last_progress)
                    .unwrap_or(p.started);
                let reason = if p.session.is_closed() {
                    "session closed"
                } else if last.elapsed() > timeout {
                    "no progress"
                } else if p.started.elapsed() > self.cfg.transfer_deadline {
                    "over the transfer deadline"
                } else {
                    continue;
                };
                st.pull = None;
                failed.push((*pk, reason));
            }
        }
        for (pk, reason) in failed {
            warn!(peer = %pk.short(12), reason, "pull abandoned; nothing applied");
            self.emit(ReplicationEvent::PullFailed {
                peer: pk,
                reason: reason.into(),
            });
            // A peer still connected on a new session is pulled from again.
            if let Some(st) = self.peers.get_mut(&pk) {
                if st.want_pull.as_ref().is_some_and(|r| r.is_closed()) {
                    st.want_pull = None;
                }
                st.announced = None;
            }
            self.after_pull(pk).await;
        }
        // Pulls put off because the session's queue was full.
        let due: Vec<PublicKey> = self
            .peers
            .iter()
            .filter(|(_, st)| st.pull.is_none() && !st.sending && st.want_pull.is_some())
            .map(|(k, _)| *k)
            .collect();
        for pk in due {
            self.after_pull(pk).await;
        }
        let connected = node.connected();
        self.peers
            .retain(|k, st| connected.contains(k) || st.pull.is_some() || st.sending);
        self.quotas
            .retain(|_, q| q.since.is_some_and(|s| s.elapsed() < QUOTA_PERIOD));
        self.queries
            .retain(|_, n| Arc::strong_count(n) > 1 || n.load(Ordering::Acquire) > 0);
        if connected.is_empty() {
            return;
        }
        let cfg = self.cfg.clone();
        let tips = match blocking(move || served_tips(&cfg, &open(&cfg.repo)?)).await {
            Ok(t) => t,
            Err(e) => {
                debug!(error = %e, "cannot read our tips");
                return;
            }
        };
        for pk in connected {
            let st = self.peers.entry(pk).or_default();
            let Some(reply) = node.session(&pk) else {
                continue;
            };
            if let Some((r, t)) = &st.announced {
                if r.same_session(&reply) && *t == tips {
                    continue;
                }
            }
            let msg = Message::MemoryResponse(MemoryResponse {
                tips: Some(tips.clone()),
                ..Default::default()
            });
            // Never wait here: a busy session (or a peer that stopped
            // reading) gets the announce on a later tick.
            if reply.try_send(msg).is_ok() {
                st.announced = Some((reply, tips.clone()));
                debug!(peer = %pk.short(12), branches = tips.len(), "announced tips");
            }
        }
    }

    async fn on_message(&mut self, m: Inbound) {
        let Inbound { peer, msg, reply } = m;
        match msg {
            Message::MemoryRequest(req) if req.sync.is_some() => {
                let st = self.peers.entry(peer).or_default();
                let crossing = st.pull.is_some() && self.cfg.me.as_bytes() < peer.as_bytes();
                if crossing || st.sending {
                    st.deferred.push((req, reply));
                    st.deferred.truncate(4);
                } else {
                    self.start_send(peer, req, reply);
                }
            }
            Message::MemoryRequest(req) => {
                let cfg = self.cfg.clone();
                // At most MAX_CONCURRENT_QUERIES per peer: a peer cannot
                // fill the blocking pool with queries.
                let running = self.queries.entry(peer).or_default().clone();
                if running.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT_QUERIES {
                    running.fetch_sub(1, Ordering::AcqRel);
                    debug!(peer = %peer.short(12), "query refused: too many at once");
                    let busy = MemoryResponse {
                        id: Some(req.id),
                        error: Some(format!(
                            "busy: at most {MAX_CONCURRENT_QUERIES} queries at once"
                        )),
                        ..Default::default()
                    };
                    // Only if there is room now: a peer flooding queries it
                    // does not read gets no task per query.
                    let _ = reply.try_send(Message::MemoryResponse(busy));
                    return;
                }
                tokio::spawn(async move {
                    let _running = CountGuard(running);
                    // Work only once the session's queue is nearly empty: a
                    // peer that stops reading makes us hold at most a few
                    // answers (up to 6 MiB each), not a queue full of them.
                    if reply
                        .wait_queued_at_most(QUERY_QUEUED_AT_MOST, SEND_TIMEOUT)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let id = req.id;
                    let resp = tokio::task::spawn_blocking(move || answer_query(&cfg, &req))
                        .await
                        .unwrap_or_else(|e| MemoryResponse {
                            id: Some(id),
                            error: Some(format!("query failed: {e}")),
                            ..Default::default()
                        });
                    let _ = reply
                        .send(Message::MemoryResponse(resp), SEND_TIMEOUT)
                        .await;
                });
            }
            Message::MemoryResponse(r) => self.on_response(peer, r, reply).await,
            Message::GitBundle(g) => self.on_chunk(peer, g, reply).await,
            other => debug!(peer = %peer.short(12), msg_type = %other.msg_type(), "ignored"),
        }
    }

    fn start_send(&mut self, peer: PublicKey, req: MemoryRequest, reply: Reply) {
        self.peers.entry(peer).or_default().sending = true;
        let cfg = self.cfg.clone();
        let done = self.done_tx.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let sent = serve_sync(&cfg, req, &reply).await;
            match sent {
                Ok(Some((bytes, commits))) => {
                    info!(peer = %peer.short(12), bytes, commits, "bundle sent");
                    if let Some(tx) = events {
                        let _ = tx.send(ReplicationEvent::Sent {
                            peer,
                            bytes,
                            commits,
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(peer = %peer.short(12), error = %e, "sync request not served"),
            }
            let _ = done.send(Done::Sent(peer)).await;
        });
    }

    async fn on_response(&mut self, peer: PublicKey, r: MemoryResponse, reply: Reply) {
        if let Some(s) = &r.ingested {
            if s.refused.is_empty() {
                debug!(peer = %peer.short(12), memories = s.memories, "peer accepted our bundle");
            } else {
                warn!(peer = %peer.short(12), refused = ?s.refused, "peer refused part of our bundle");
            }
            return;
        }
        let Some(id) = r.id else {
            // An announce.
            if let Some(tips) = &r.tips {
                self.on_announce(peer, parse_tips(tips), reply).await;
            }
            return;
        };
        let repo = self.cfg.repo.clone();
        let max = self.cfg.max_transfer;
        let st = self.peers.entry(peer).or_default();
        let Some(pull) = st.pull.as_mut().filter(|p| p.id == id) else {
            debug!(peer = %peer.short(12), id, "answer to no pending request");
            return;
        };
        if let Some(e) = r.error {
            warn!(peer = %peer.short(12), error = %e, "pull refused by peer");
            self.emit(ReplicationEvent::PullFailed { peer, reason: e });
            self.finish_pull(peer).await;
            return;
        }
        match r.transfer {
            Some(info) if pull.incoming.is_none() => {
                let total = info.total_size;
                let quota = self.quotas.entry(peer).or_default();
                let left = self.cfg.quota_bytes.saturating_sub(quota.roll().bytes);
                let started =
                    blocking(move || Ok(Incoming::start(&repo, &info, max, MAX_BUNDLE_CHUNK)))
                        .await
                        .and_then(|r| r.map_err(NodeError::Protocol))
                        .and_then(|inc| {
                            if total > left {
                                Err(NodeError::Protocol(format!(
                                    "over the daily quota: a transfer of {total} bytes, {left} bytes left for this peer"
                                )))
                            } else {
                                Ok(inc)
                            }
                        });
                match started {
                    Ok(inc) => {
                        self.quotas.entry(peer).or_default().bytes += total;
                        pull.incoming = Some(inc)
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        warn!(peer = %peer.short(12), %reason, "transfer refused");
                        self.emit(ReplicationEvent::PullFailed { peer, reason });
                        self.finish_pull(peer).await;
                    }
                }
            }
            Some(_) => {
                self.emit(ReplicationEvent::PullFailed {
                    peer,
                    reason: "second transfer for one request".into(),
                });
                self.finish_pull(peer).await;
            }
            None => {
                // Nothing new.
                debug!(peer = %peer.short(12), "nothing new from peer");
                self.finish_pull(peer).await;
            }
        }
    }

    async fn on_announce(&mut self, peer: PublicKey, tips: Vec<(PublicKey, Oid)>, reply: Reply) {
        let repo = self.cfg.repo.clone();
        let lacks = blocking(move || Ok(lacking(&open(&repo)?, &tips)))
            .await
            .unwrap_or(false);
        if !lacks {
            return;
        }
        let st = self.peers.entry(peer).or_default();
        if st.pull.is_some() || st.sending {
            st.want_pull = Some(reply);
            return;
        }
        self.start_pull(peer, reply).await;
    }

    async fn start_pull(&mut self, peer: PublicKey, reply: Reply) {
        let quota = self.quotas.entry(peer).or_default();
        if let Some(reason) = quota.exhausted(&self.cfg) {
            if !std::mem::replace(&mut quota.warned, true) {
                warn!(peer = %peer.short(12), %reason, "not pulling");
            }
            self.emit(ReplicationEvent::PullFailed { peer, reason });
            return;
        }
        let repo = self.cfg.repo.clone();
        let have = match blocking(move || tips_of(&open(&repo)?)).await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "cannot read our tips");
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let req = Message::MemoryRequest(MemoryRequest {
            id,
            sync: Some(SyncRequest {
                have,
                max_transfer: Some(self.cfg.max_transfer),
            }),
            ..Default::default()
        });
        // Never wait on one peer here: with its queue full, pull on a later tick.
        if let Err(e) = reply.try_send(req) {
            if !reply.is_closed() {
                debug!(peer = %peer.short(12), error = %e, "pull put off");
                self.peers.entry(peer).or_default().want_pull = Some(reply);
            }
            return;
        }
        debug!(peer = %peer.short(12), id, "pulling");
        self.peers.entry(peer).or_default().pull = Some(Pull {
            id,
            incoming: None,
            started: Instant::now(),
            session: reply,
        });
    }

    async fn on_chunk(&mut self, peer: PublicKey, g: GitBundle, reply: Reply) {
        let st = self.peers.entry(peer).or_default();
        let Some(pull) = st.pull.as_mut() else {
            debug!(peer = %peer.short(12), "chunk of no transfer; dropped");
            return;
        };
        let Some(mut inc) = pull.incoming.take() else {
            debug!(peer = %peer.short(12), "chunk before its transfer; dropped");
            return;
        };
        let id = pull.id;
        let res = tokio::task::spawn_blocking(move || {
            let r = inc.chunk(&g);
            (inc, r)
        })
        .await;
        let (inc, r) = match res {
            Ok(x) => x,
            Err(e) => {
                self.fail_pull(peer, format!("worker failed: {e}")).await;
                return;
            }
        };
        match r {
            Ok(false) => {
                if let Some(p) = self.peers.get_mut(&peer).and_then(|s| s.pull.as_mut()) {
                    p.incoming = Some(inc);
                }
            }
            Ok(true) => {
                let repo = self.cfg.repo.clone();
                let done = self.done_tx.clone();
                let transfer_id = inc.transfer_id.clone();
                tokio::spawn(async move {
                    let tag = ingest_tag(&peer);
                    let report = tokio::task::spawn_blocking(move || inc.ingest(&repo, &tag))
                        .await
                        .unwrap_or_else(|e| Err(format!("worker failed: {e}")));
                    let _ = done
                        .send(Done::Ingested(Box::new((
                            peer,
                            id,
                            report,
                            reply,
                            transfer_id,
                        ))))
                        .await;
                });
            }
            Err(reason) => {
                drop(inc);
                send_later(
                    &reply,
                    Message::MemoryResponse(MemoryResponse {
                        ingested: Some(IngestSummary {
                            transfer_id: id.to_string(),
                            refused: vec![reason.clone()],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                );
                self.fail_pull(peer, reason).await;
            }
        }
    }

    async fn fail_pull(&mut self, peer: PublicKey, reason: String) {
        warn!(peer = %peer.short(12), %reason, "transfer failed; nothing applied");
        // Drop the partial transfer (its temporary file) before telling anyone.
        if let Some(st) = self.peers.get_mut(&peer) {
            st.pull = None;
        }
        self.emit(ReplicationEvent::PullFailed { peer, reason });
        self.finish_pull(peer).await;
    }

    async fn on_done(&mut self, d: Done) {
        match d {
            Done::Sent(peer) => {
                if let Some(st) = self.peers.get_mut(&peer) {
                    st.sending = false;
                }
                self.after_pull(peer).await;
            }
            Done::Ingested(b) => {
                let (peer, id, report, reply, transfer_id) = *b;
                let still = self
                    .peers
                    .get(&peer)
                    .and_then(|s| s.pull.as_ref())
                    .is_some_and(|p| p.id == id);
                match report {
                    Ok(report) => {
                        let s = summary(&transfer_id, &report);
                        self.quotas.entry(peer).or_default().roll().memories += s.memories;
                        if s.refused.is_empty() {
                            info!(peer = %peer.short(12), memories = s.memories, branches = s.branches, "accepted memories");
                        } else {
                            warn!(peer = %peer.short(12), memories = s.memories, refused = ?s.refused, "refused incoming memories");
                        }
                        self.emit(ReplicationEvent::Ingested {
                            peer,
                            memories: s.memories as usize,
                            branches: s.branches as usize,
                            refused: s.refused.clone(),
                        });
                        send_later(
                            &reply,
                            Message::MemoryResponse(MemoryResponse {
                                ingested: Some(s),
                                ..Default::default()
                            }),
                        );
                    }
                    Err(reason) => {
                        warn!(peer = %peer.short(12), %reason, "transfer failed; nothing applied");
                        self.emit(ReplicationEvent::PullFailed {
                            peer,
                            reason: reason.clone(),
                        });
                        send_later(
                            &reply,
                            Message::MemoryResponse(MemoryResponse {
                                ingested: Some(IngestSummary {
                                    transfer_id,
                                    refused: vec![reason],
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                        );
                    }
                }
                if still {
                    self.finish_pull(peer).await;
                }
            }
        }
    }

    async fn finish_pull(&mut self, peer: PublicKey) {
        if let Some(st) = self.peers.get_mut(&peer) {
            st.pull = None;
        }
        self.after_pull(peer).await;
    }

    /// Serves deferred requests, then pulls again if an announce came meanwhile.
    async fn after_pull(&mut self, peer: PublicKey) {
        let Some(st) = self.peers.get_mut(&peer) else {
            return;
        };
        if st.pull.is_some() || st.sending {
            return;
        }
        if !st.deferred.is_empty() {
            let (req, reply) = st.deferred.remove(0);
            self.start_send(peer, req, reply);
            return;
        }
        if let Some(reply) = st.want_pull.take() {
            if !reply.is_closed() {
                self.start_pull(peer, reply).await;
            }
        }
    }
}

/// Answers one sync request on `reply`; Some((bytes, commits)) when a
/// bundle was sent.
async fn serve_sync(
    cfg: &Arc<ReplicatorConfig>,
    req: MemoryRequest,
    reply: &Reply,
) -> Result<Option<(u64, u64)>, NodeError> {
    let id = req.id;
    let sync = req.sync.unwrap_or_default();
    let c = cfg.clone();
    let answer = blocking(move || answer_sync(&c, &sync)).await;
    let send_err = |e: crate::queue::SendError| NodeError::Protocol(e.to_string());
    match answer {
        Ok(SyncAnswer::NothingNew(tips)) => {
            let m = Message::MemoryResponse(MemoryResponse {
                id: Some(id),
                tips: Some(tips),
                ..Default::default()
            });
            reply.send(m, SEND_TIMEOUT).await.map_err(send_err)?;
            Ok(None)
        }
        Ok(SyncAnswer::Refused(e)) | Err(NodeError::Protocol(e)) => {
            let m = Message::MemoryResponse(MemoryResponse {
                id: Some(id),
                error: Some(e.clone()),
                ..Default::default()
            });
            reply.send(m, SEND_TIMEOUT).await.map_err(send_err)?;
            Err(NodeError::Protocol(e))
        }
        Err(e) => Err(e),
        Ok(SyncAnswer::Bundle(b, tips)) => {
            let bytes = b.bytes.len() as u64;
            let commits = b.commits as u64;
            let mut throttle = Throttle::new(cfg.max_rate);
            for m in bundle_messages(id, Arc::new(b), tips, cfg.chunk()) {
                let len = match &m {
                    Message::GitBundle(g) => g.data.len(),
                    _ => 0,
                };
                // Few chunks in memory at once.
                reply
                    .wait_queued_at_most(1, SEND_TIMEOUT)
                    .await
                    .map_err(send_err)?;
                reply.send(m, SEND_TIMEOUT).await.map_err(send_err)?;
                throttle.take(len).await;
            }
            Ok(Some((bytes, commits)))
        }
    }
}

// ---- the client side (`mmogit sync`, `mmogit p2p query`) -------------------

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
/// the peer's pull. Each direction runs alone, so two large writes never
/// block each other.
pub async fn sync_connection(
    conn: &mut Connection,
    cfg: &ClientSync,
    progress: ProgressFn<'_>,
) -> Result<SyncOutcome, NodeError> {
    let peer = conn.peer_pubkey();
    let mut out = SyncOutcome::default();
    let repo = cfg.repo.clone();
    {
        let repo = repo.clone();
        blocking(move || open(&repo)?.clean_incoming().map_err(store_err)).await?;
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
    let mut their_tips: Option<Vec<BranchTip>> = None;
    let mut pending: Vec<MemoryRequest> = Vec::new();
    let mut incoming: Option<Incoming> = None;
    let overall = Instant::now() + cfg.deadline;
    // Each wait ends at the earlier of the overall deadline and `timeout`
    // after the last progress: other messages do not extend it.
    let until = |progress: Instant| (progress + cfg.timeout).min(overall);
    let mut progress_at = Instant::now();
    // 1. Pull.
    loop {
        let m = recv_until(conn, until(progress_at), overall).await?;
        match m {
            Message::MemoryResponse(r) if r.id == Some(1) => {
                progress_at = Instant::now();
                if r.tips.is_some() {
                    their_tips = r.tips.clone();
                }
                if let Some(e) = r.error {
                    out.pull_error = Some(e);
                    break;
                }
                match r.transfer {
                    Some(info) => {
                        let repo = repo.clone();
                        let max = cfg.max_transfer;
                        match blocking(move || {
                            Ok(Incoming::start(&repo, &info, max, MAX_BUNDLE_CHUNK))
                        })
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
                    None => break,
                }
            }
            Message::GitBundle(g) => {
                let Some(mut inc) = incoming.take() else {
                    return Err(NodeError::Protocol("chunk of no transfer".into()));
                };
                progress_at = Instant::now();
                let len = g.data.len() as u64;
                let (inc, r) = tokio::task::spawn_blocking(move || {
                    let r = inc.chunk(&g);
                    (inc, r)
                })
                .await
                .map_err(|e| NodeError::Protocol(format!("worker failed: {e}")))?;
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
                        let report = tokio::task::spawn_blocking(move || inc.ingest(&repo, &tag))
                            .await
                            .map_err(|e| NodeError::Protocol(format!("worker failed: {e}")))?;
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
            Message::MemoryRequest(r) if r.sync.is_some() && pending.len() < 4 => pending.push(r),
            Message::MemoryResponse(r)
                if r.id.is_none() && r.ingested.is_none() && r.tips.is_some() =>
            {
                their_tips = r.tips;
            }
            _ => {}
        }
    }
    if out.pull_error.is_some() {
        return Ok(out);
    }
    // 2. Push: does the peer lack anything of ours?
    let ours = {
        let repo = repo.clone();
        blocking(move || tips_of(&open(&repo)?)).await?
    };
    let theirs = parse_tips(their_tips.as_deref().unwrap_or(&[]));
    let peer_lacks = {
        let repo = repo.clone();
        let ours_p = parse_tips(&ours);
        blocking(move || {
            let store = open(&repo)?;
            Ok(ours_p.iter().any(|(pk, tip)| {
                match theirs.iter().find(|(k, _)| k == pk).map(|(_, t)| *t) {
                    None => true,
                    Some(t) => !store.includes(t, *tip),
                }
            }))
        })
        .await?
    };
    if !peer_lacks && pending.is_empty() {
        return Ok(out);
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
    let sent_transfer: Option<String>;
    let deadline = (Instant::now() + cfg.timeout).min(overall);
    loop {
        let req = match pending.pop() {
            Some(r) => r,
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    out.push_error = Some("the peer did not ask for our memories".into());
                    return Ok(out);
                }
                match recv(conn, left).await {
                    Ok(Message::MemoryRequest(r)) if r.sync.is_some() => r,
                    Ok(_) => continue,
                    Err(NodeError::Timeout(_)) => {
                        out.push_error = Some("the peer did not ask for our memories".into());
                        return Ok(out);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let id = req.id;
        let sync = req.sync.unwrap_or_default();
        let c = rcfg.clone();
        let answer = blocking(move || answer_sync(&c, &sync)).await?;
        match answer {
            SyncAnswer::NothingNew(tips) => {
                conn.send(Message::MemoryResponse(MemoryResponse {
                    id: Some(id),
                    tips: Some(tips),
                    ..Default::default()
                }))
                .await?;
                return Ok(out);
            }
            SyncAnswer::Refused(e) => {
                conn.send(Message::MemoryResponse(MemoryResponse {
                    id: Some(id),
                    error: Some(e.clone()),
                    ..Default::default()
                }))
                .await?;
                out.push_error = Some(e);
                return Ok(out);
            }
            SyncAnswer::Bundle(b, tips) => {
                let total = b.bytes.len() as u64;
                let mut throttle = Throttle::new(cfg.max_rate);
                for m in bundle_messages(id, Arc::new(b), tips, rcfg.chunk()) {
                    let len = match &m {
                        Message::GitBundle(g) => g.data.len(),
                        _ => 0,
                    };
                    conn.send(m).await?;
                    out.bytes_sent += len as u64;
                    progress("sending", out.bytes_sent, total);
                    throttle.take(len).await;
                }
                sent_transfer = Some(id.to_string());
                break;
            }
        }
    }
    // 3. The peer's verdict on what we sent.
    let deadline = (Instant::now() + cfg.timeout).min(overall);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match recv(conn, left.max(Duration::from_millis(1))).await {
            Ok(Message::MemoryResponse(r)) => {
                if let Some(s) = r.ingested {
                    if Some(&s.transfer_id) == sent_transfer.as_ref() {
                        out.sent = Some(s);
                        return Ok(out);
                    }
                }
            }
            Ok(_) => {}
            Err(NodeError::Timeout(_)) => {
                out.push_error = Some("the peer did not confirm what we sent".into());
                return Ok(out);
            }
            Err(e) => return Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;
    use mmogit_identity::Identity;

    /// A node of key 1 (trusting nobody) with a replicator over an empty
    /// repository, and the replicator's inbox to feed it messages directly.
    async fn replicator() -> (tempfile::TempDir, crate::NodeHandle, mpsc::Sender<Inbound>) {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo.git");
        Store::open_or_init(&repo).unwrap();
        let me = Arc::new(Identity::from_secret_bytes(&[1; 32]));
        let node = crate::Node::new(
            me.clone(),
            crate::NodeConfig {
                listen_addr: "127.0.0.1:0".parse().unwrap(),
                ..crate::NodeConfig::default()
            },
            Arc::new(|_: &PublicKey, _: std::net::SocketAddr| false),
        )
        .start()
        .await
        .unwrap();
        let (inbox_tx, inbox_rx) = mpsc::channel(16);
        let cfg = ReplicatorConfig::new(repo, me.public_key());
        tokio::spawn(Replicator::new(cfg).run(inbox_rx, node.sender()));
        (dir, node, inbox_tx)
    }

    /// A session handle whose peer stopped reading: its queue is full and
    /// nothing drains it (the receiver is returned to keep it open).
    fn stalled(peer: PublicKey) -> (Reply, mpsc::Receiver<Box<Message>>) {
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(Box::new(Message::Ping(vec![0; 8]))).unwrap();
        (Reply::new(peer, tx), rx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_session_does_not_hold_up_the_replicator() {
        // S announces a tip we lack while its queue is full: the pull
        // request cannot be queued. Before, the replicator waited up to
        // 30 s for room, and H's query waited behind it.
        let (_dir, node, inbox_tx) = replicator().await;
        let s_key = Identity::from_secret_bytes(&[3; 32]).public_key();
        let h_key = Identity::from_secret_bytes(&[2; 32]).public_key();

        let (s_reply, _s_rx) = stalled(s_key);
        let announce = Message::MemoryResponse(MemoryResponse {
            tips: Some(vec![BranchTip {
                author: s_key.to_hex(),
                tip: "1".repeat(40),
            }]),
            ..Default::default()
        });
        inbox_tx
            .send(Inbound {
                peer: s_key,
                msg: announce,
                reply: s_reply,
            })
            .await
            .unwrap();

        let (h_tx, mut h_rx) = mpsc::channel(64);
        let query = Message::MemoryRequest(MemoryRequest {
            id: 7,
            ..Default::default()
        });
        let t = Instant::now();
        inbox_tx
            .send(Inbound {
                peer: h_key,
                msg: query,
                reply: Reply::new(h_key, h_tx),
            })
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(2), h_rx.recv())
            .await
            .expect("the healthy peer is answered while the other is stalled")
            .unwrap();
        assert!(
            matches!(*answer, Message::MemoryResponse(ref r) if r.id == Some(7)),
            "{answer:?}"
        );
        eprintln!(
            "healthy peer answered in {:.1} ms with a stalled peer's pull pending",
            t.elapsed().as_secs_f64() * 1000.0
        );
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_of_a_peer_that_does_not_read_are_not_answered_into_its_queue() {
        // Its queue already holds 3 messages and nobody reads them: its
        // queries wait (at most 4 of them, the rest `busy` only while there
        // is room), so the queue does not fill with answers of up to 6 MiB.
        // Once it reads again, the answers come.
        let (_dir, node, inbox_tx) = replicator().await;
        let p_key = Identity::from_secret_bytes(&[2; 32]).public_key();
        let (tx, mut rx) = mpsc::channel(crate::queue::SEND_QUEUE);
        for _ in 0..3 {
            tx.try_send(Box::new(Message::Ping(vec![0; 8]))).unwrap();
        }
        for id in 1..=20u64 {
            inbox_tx
                .send(Inbound {
                    peer: p_key,
                    msg: Message::MemoryRequest(MemoryRequest {
                        id,
                        ..Default::default()
                    }),
                    reply: Reply::new(p_key, tx.clone()),
                })
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut answers = 0;
        let mut busy = 0;
        let mut queued = Vec::new();
        while let Ok(m) = rx.try_recv() {
            queued.push(m);
        }
        for m in &queued {
            if let Message::MemoryResponse(r) = &**m {
                match &r.error {
                    Some(e) if e.starts_with("busy") => busy += 1,
                    _ => answers += 1,
                }
            }
        }
        assert_eq!(answers, 0, "no answer queued while the peer did not read");
        assert_eq!(busy, 16, "the other 16 refused at once");
        // Reading again (the queue is empty now): the 4 waiting are answered.
        let mut got = 0;
        while got < 4 {
            let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("answers once the peer reads")
                .unwrap();
            if matches!(&*m, Message::MemoryResponse(r) if r.error.is_none()) {
                got += 1;
            }
        }
        node.shutdown().await;
    }
}
