//! Replication decisions: announce our tips, pull what a peer announces that
//! we lack, serve what peers pull, answer queries, and keep one bundle
//! flowing between two nodes at a time.
//!
//! [`Replication`] is a state machine. Each [`Input`] is handled at a time
//! `now` the caller gives; what to do comes out as [`Io`] actions. Store work
//! (reading tips, opening and writing an incoming transfer, the verified
//! ingest) is an action whose result comes back as [`Input::Done`]; sending a
//! bundle and answering a query are actions whose end comes back as
//! [`Input::Served`] and [`Input::Answered`]. A session is named by a
//! [`SessionId`] the caller chooses; the caller reports one that closed.
//!
//! Rules (see `docs/PROTOCOL.md`, section 2, "Live replication"):
//! * every poll, our served tips go to each connected peer whose session has
//!   not had these tips yet (never waiting on a full queue: a peer whose
//!   queue is full hears them on a later poll);
//! * an announce of a tip we lack starts a pull, unless a pull or a send
//!   with that peer runs: then the pull waits for it;
//! * a sync request is served at once unless we are sending to that peer, or
//!   our pull from it runs and our key is the lower one (two crossing
//!   requests: the lower key answers after its own pull); such a request
//!   waits (at most 4 per peer);
//! * a pull with no progress for `transfer_timeout`, or running longer than
//!   `transfer_deadline`, is abandoned; nothing of it is applied;
//! * a peer's transfers count against its daily quota of bytes and
//!   memories; at most [`MAX_CONCURRENT_QUERIES`] queries per peer run at
//!   once, more are answered `busy`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use mmogit_identity::PublicKey;
use mmogit_proto::{
    BranchTip, GitBundle, IngestSummary, MemoryRequest, MemoryResponse, Message, SyncRequest,
    TransferInfo,
};
use tracing::{debug, info, warn};

/// Queries of one peer answered at once; more are refused with `busy`.
pub const MAX_CONCURRENT_QUERIES: usize = 4;
/// Length of a quota period.
pub const QUOTA_PERIOD: Duration = Duration::from_secs(24 * 3600);
/// Sync requests of one peer kept waiting while a transfer with it runs.
pub const MAX_DEFERRED: usize = 4;
/// Most authors named in a targeted pull; an announce naming more (a first
/// announce of a large store) is pulled whole.
pub const MAX_TARGETED_AUTHORS: usize = 256;

/// Most tips remembered of what one peer showed it holds.
pub const MAX_HAS: usize = 4096;

/// Which branches a pull asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// Everything the peer holds that we lack.
    All,
    /// Only these authors' branches (hex keys): what the peer announced.
    Authors(BTreeSet<String>),
}

impl Want {
    fn of(tips: &[BranchTip]) -> Want {
        let authors: BTreeSet<String> = tips.iter().map(|t| t.author.clone()).collect();
        if authors.is_empty() || authors.len() > MAX_TARGETED_AUTHORS {
            Want::All
        } else {
            Want::Authors(authors)
        }
    }

    fn merge(self, other: Want) -> Want {
        match (self, other) {
            (Want::Authors(mut a), Want::Authors(b)) => {
                a.extend(b);
                if a.len() > MAX_TARGETED_AUTHORS {
                    Want::All
                } else {
                    Want::Authors(a)
                }
            }
            _ => Want::All,
        }
    }
}

/// A session, as the caller names it.
pub type SessionId = u64;
/// A piece of store work, to match its result.
pub type JobId = u64;

/// The limits replication decides with.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Our key (breaks the tie of two crossing pulls).
    pub me: PublicKey,
    /// Largest bundle received.
    pub max_transfer: u64,
    /// A pull with no progress for this long is abandoned.
    pub transfer_timeout: Duration,
    /// A pull running longer than this is abandoned, progress or not.
    pub transfer_deadline: Duration,
    /// Bundle bytes taken from one peer per quota period.
    pub quota_bytes: u64,
    /// Memories accepted from one peer per quota period.
    pub quota_memories: u64,
}

/// Something that happened, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Store work for the caller to run (on a blocking thread), answered with
/// [`Input::Done`] and the matching [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// The tips we show peers → [`Outcome::Tips`].
    ServedTips,
    /// Our tips (the `have` of a pull), of these authors only when given
    /// (a targeted pull) → [`Outcome::Tips`].
    OurTips(Option<Vec<String>>),
    /// Which of these tips of a peer we lack → [`Outcome::Lacking`].
    Lacking(Vec<BranchTip>),
    /// Open the incoming transfer of `peer` (its checks, its file) →
    /// [`Outcome::Started`].
    Start(TransferInfo),
    /// Write one chunk of `peer`'s incoming transfer → [`Outcome::Chunk`].
    Chunk(GitBundle),
    /// Check and ingest `peer`'s complete transfer → [`Outcome::Ingested`].
    Ingest,
}

/// The result of a [`Work`]; an `Err` is a store failure or a refusal, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Tips(Result<Vec<BranchTip>, String>),
    /// Answers [`Work::ServedTips`] when the store can tell that nothing
    /// moved since its last answer (the simulator's store; a node reads
    /// them).
    Unchanged,
    /// The tips we lack, of those asked about.
    Lacking(Result<Vec<BranchTip>, String>),
    Started(Result<(), String>),
    /// Ok(true) when the transfer is complete.
    Chunk(Result<bool, String>),
    Ingested(Result<IngestSummary, String>),
}

/// What to do when a message cannot be queued at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfFull {
    /// Drop it.
    Drop,
    /// An announce: report it ([`Input::NotQueued`]), it is sent again later.
    Announce,
    /// The pull request `id`: report it, the pull is tried again later.
    Pull(u64),
}

/// What the node should do.
// Actions are carried out as they come; the outbox holds a handful.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Io {
    /// Queue `msg` on `session` now, never waiting; when its queue is full
    /// (or it closed) and `if_full` is not `Drop`, report
    /// [`Input::NotQueued`].
    Send {
        peer: PublicKey,
        session: SessionId,
        msg: Message,
        if_full: IfFull,
    },
    /// Queue `msg` on `session`, waiting for room apart from everything else.
    SendLater {
        peer: PublicKey,
        session: SessionId,
        msg: Message,
    },
    /// Run store work for `peer`; report [`Input::Done`].
    Work {
        job: JobId,
        peer: PublicKey,
        work: Work,
    },
    /// Drop `peer`'s incoming transfer, if any (its file goes with it).
    Discard { peer: PublicKey },
    /// Answer the sync request `req` on `session` (build the bundle, send
    /// the transfer and its chunks); report [`Input::Served`].
    Serve {
        peer: PublicKey,
        session: SessionId,
        req: MemoryRequest,
    },
    /// Answer the query `req` on `session`; report [`Input::Answered`].
    Answer {
        peer: PublicKey,
        session: SessionId,
        req: MemoryRequest,
    },
    /// Something to report.
    Event(ReplicationEvent),
}

/// What happens to the node.
// A message is most of an input; inputs are handled one at a time, never
// stored in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A poll: `connected` are the peers with a peer session now, and it.
    Tick {
        connected: Vec<(PublicKey, SessionId)>,
    },
    /// A replication message from `peer` on `session`.
    Received {
        peer: PublicKey,
        session: SessionId,
        msg: Message,
    },
    /// A session ended.
    Closed(SessionId),
    /// Store work finished.
    Done { job: JobId, outcome: Outcome },
    /// A message could not be queued (`closed`: the session is gone).
    NotQueued {
        peer: PublicKey,
        session: SessionId,
        what: IfFull,
        closed: bool,
    },
    /// A sync request of `peer` was answered; `sent` is (bytes, commits)
    /// when a bundle went out.
    Served {
        peer: PublicKey,
        sent: Option<(u64, u64)>,
    },
    /// A query of `peer` was answered.
    Answered { peer: PublicKey },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The request is out; no transfer announced yet.
    Requested,
    /// Chunks are coming.
    Receiving,
    /// The whole bundle is being verified and ingested.
    Ingesting,
}

/// A pull of ours from one peer.
#[derive(Debug)]
struct Pull {
    id: u64,
    session: SessionId,
    started: Instant,
    last_progress: Instant,
    stage: Stage,
    transfer_id: String,
    /// What it asks for.
    want: Want,
}

#[derive(Debug, Default)]
struct PeerState {
    pull: Option<Pull>,
    /// Sending a bundle to this peer.
    sending: bool,
    /// Their sync requests waiting for our transfer with them to end.
    deferred: VecDeque<(MemoryRequest, SessionId)>,
    /// An announce arrived while busy: pull again when idle, on this
    /// session, what it named.
    want_pull: Option<(SessionId, Want)>,
    /// Tips this peer announced (author → tip, on this session) that a
    /// pull from another peer is fetching now: looked at again when that
    /// pull ends, and pulled from here only if still lacking (the lazy
    /// path that recovers a pull that failed).
    parked: Option<(SessionId, BTreeMap<String, String>)>,
    /// A pull being prepared (our tips are being read): what it will ask.
    starting: Option<Want>,
    /// The version of our tips announced to this peer, and on which
    /// session: a peer one version behind hears only what changed; a peer
    /// that reconnected (or fell further behind) hears everything again.
    announced: Option<(SessionId, u64)>,
    /// Tips this peer showed it holds (its announces and pull answers)
    /// since our last announce to it: not announced back.
    has: BTreeMap<String, String>,
}

impl PeerState {
    /// A pull from this peer is running or being prepared, or we are
    /// sending to it.
    fn busy(&self) -> bool {
        self.pull.is_some() || self.sending || self.starting.is_some()
    }

    /// Keeps announced `tips` to look at again when a pull ends.
    fn park(&mut self, session: SessionId, tips: Vec<BranchTip>) {
        let parked = match &mut self.parked {
            Some((s, p)) if *s == session => p,
            other => &mut other.insert((session, BTreeMap::new())).1,
        };
        for t in tips {
            parked.insert(t.author, t.tip);
        }
    }

    /// Pull `want` on `session` once the transfer running with this peer
    /// ends (merged with what is already waiting).
    fn defer_pull(&mut self, session: SessionId, want: Want) {
        self.want_pull = Some(match self.want_pull.take() {
            Some((_, w)) => (session, w.merge(want)),
            None => (session, want),
        });
    }
}

/// What one peer sent us in the current quota period (a restart starts a
/// new period).
#[derive(Debug, Default)]
struct Quota {
    since: Option<Instant>,
    bytes: u64,
    memories: u64,
    /// The refusal was logged this period.
    warned: bool,
}

impl Quota {
    /// Starts a new period when the current one is over.
    fn roll(&mut self, now: Instant) -> &mut Quota {
        if self
            .since
            .is_none_or(|s| now.saturating_duration_since(s) >= QUOTA_PERIOD)
        {
            *self = Quota {
                since: Some(now),
                ..Quota::default()
            };
        }
        self
    }

    /// Why nothing more is taken from this peer this period, if so.
    fn exhausted(&mut self, now: Instant, p: &Policy) -> Option<String> {
        let q = self.roll(now);
        if q.memories >= p.quota_memories {
            Some(format!(
                "daily quota reached: {} memories accepted from this peer (limit {})",
                q.memories, p.quota_memories
            ))
        } else if q.bytes >= p.quota_bytes {
            Some(format!(
                "daily quota reached: {} bytes received from this peer (limit {})",
                q.bytes, p.quota_bytes
            ))
        } else {
            None
        }
    }
}

/// Why a piece of store work was asked for.
#[derive(Debug)]
enum Job {
    Announce(Vec<(PublicKey, SessionId)>),
    Lacking(PublicKey, SessionId),
    PullTips(PublicKey, SessionId, Want),
    Start(PublicKey, u64, u64, String),
    Chunk(PublicKey, u64, SessionId),
    Ingest(PublicKey, u64, SessionId, String),
}

/// The replication state machine; see the module documentation.
pub struct Replication {
    policy: Policy,
    peers: BTreeMap<PublicKey, PeerState>,
    /// What each peer sent us this quota period (kept across its sessions:
    /// a reconnect does not start a new period).
    quotas: BTreeMap<PublicKey, Quota>,
    /// Each peer's queries being answered now (kept across its sessions).
    queries: BTreeMap<PublicKey, usize>,
    jobs: BTreeMap<JobId, Job>,
    next_pull: u64,
    next_job: JobId,
    outbox: VecDeque<Io>,
    /// The peer sessions of the last poll: new memories are announced to
    /// them as soon as they are in, not at the next poll.
    connected: Vec<(PublicKey, SessionId)>,
    /// Our tips as last read (sorted by author), their version (it grows
    /// when they change) and what changed in the last version: the work of
    /// an announce is done once per poll, not once per peer.
    tips: Vec<BranchTip>,
    version: u64,
    changed: Vec<BranchTip>,
}

impl Replication {
    pub fn new(policy: Policy) -> Replication {
        Replication {
            policy,
            peers: BTreeMap::new(),
            quotas: BTreeMap::new(),
            queries: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_pull: 1,
            next_job: 1,
            outbox: VecDeque::new(),
            connected: Vec::new(),
            tips: Vec::new(),
            version: 0,
            changed: Vec::new(),
        }
    }

    /// Whether `t` is our tip of its author, as last read.
    fn holds_tip(&self, t: &BranchTip) -> bool {
        self.tips
            .binary_search_by(|o| o.author.cmp(&t.author))
            .is_ok_and(|i| self.tips[i].tip == t.tip)
    }

    /// The next action, oldest first.
    pub fn next_io(&mut self) -> Option<Io> {
        self.outbox.pop_front()
    }

    /// Handles one input at `now`; the actions it leads to wait in the
    /// outbox ([`Replication::next_io`]).
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Tick { connected } => self.on_tick(now, connected),
            Input::Received { peer, session, msg } => self.on_message(now, peer, session, msg),
            Input::Closed(session) => self.on_closed(now, session),
            Input::Done { job, outcome } => match self.jobs.remove(&job) {
                Some(j) => self.on_done(now, j, outcome),
                None => debug!(job, "result of no pending work"),
            },
            Input::NotQueued {
                peer,
                session,
                what,
                closed,
            } => self.on_not_queued(peer, session, what, closed),
            Input::Served { peer, sent } => {
                if let Some((bytes, commits)) = sent {
                    info!(peer = %peer.short(12), bytes, commits, "bundle sent");
                    self.emit(ReplicationEvent::Sent {
                        peer,
                        bytes,
                        commits,
                    });
                }
                if let Some(st) = self.peers.get_mut(&peer) {
                    st.sending = false;
                }
                self.after_pull(now, peer);
            }
            Input::Answered { peer } => {
                if let Some(n) = self.queries.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    fn emit(&mut self, e: ReplicationEvent) {
        self.outbox.push_back(Io::Event(e));
    }

    fn work(&mut self, peer: PublicKey, work: Work, why: Job) {
        let job = self.next_job;
        self.next_job += 1;
        self.jobs.insert(job, why);
        self.outbox.push_back(Io::Work { job, peer, work });
    }

    fn send(&mut self, peer: PublicKey, session: SessionId, msg: Message, if_full: IfFull) {
        self.outbox.push_back(Io::Send {
            peer,
            session,
            msg,
            if_full,
        });
    }

    fn on_tick(&mut self, now: Instant, mut connected: Vec<(PublicKey, SessionId)>) {
        connected.sort();
        connected.dedup_by_key(|(k, _)| *k);
        // Abandon stalled pulls.
        let p = &self.policy;
        let mut failed = vec![];
        for (pk, st) in self.peers.iter_mut() {
            if let Some(pull) = &st.pull {
                let reason =
                    if now.saturating_duration_since(pull.last_progress) > p.transfer_timeout {
                        "no progress"
                    } else if now.saturating_duration_since(pull.started) > p.transfer_deadline {
                        "over the transfer deadline"
                    } else {
                        continue;
                    };
                st.pull = None;
                st.announced = None;
                failed.push((*pk, reason));
            }
        }
        for (peer, reason) in failed {
            warn!(peer = %peer.short(12), reason, "pull abandoned; nothing applied");
            self.outbox.push_back(Io::Discard { peer });
            self.emit(ReplicationEvent::PullFailed {
                peer,
                reason: reason.into(),
            });
            self.after_pull(now, peer);
        }
        // Pulls put off because the session's queue was full.
        let due: Vec<PublicKey> = self
            .peers
            .iter()
            .filter(|(_, st)| st.pull.is_none() && !st.sending && st.want_pull.is_some())
            .map(|(k, _)| *k)
            .collect();
        for peer in due {
            self.after_pull(now, peer);
        }
        // Parked tips whose reason went away without a pull ending (a pull
        // that never started) are looked at again within a poll.
        self.unpark();
        self.peers.retain(|k, st| {
            connected.iter().any(|(c, _)| c == k) || st.pull.is_some() || st.sending
        });
        self.quotas.retain(|_, q| {
            q.since
                .is_some_and(|s| now.saturating_duration_since(s) < QUOTA_PERIOD)
        });
        self.queries.retain(|_, n| *n > 0);
        self.connected = connected.clone();
        if !connected.is_empty() {
            self.work(self.policy.me, Work::ServedTips, Job::Announce(connected));
        }
    }

    /// Announces to each peer the tips it has not heard on its session:
    /// all of them on a new session, then only those that changed.
    fn announce(&mut self, tips: Option<Vec<BranchTip>>, connected: Vec<(PublicKey, SessionId)>) {
        // Kept sorted by author (looked up by the announces that come in).
        let tips = tips.map(|mut t| {
            if !t.is_sorted_by(|a, b| a.author <= b.author) {
                t.sort_by(|a, b| a.author.cmp(&b.author));
            }
            t
        });
        if let Some(tips) = tips.filter(|t| *t != self.tips) {
            self.changed = tips
                .iter()
                .filter(|t| !self.holds_tip(t))
                .cloned()
                .collect();
            self.version += 1;
            self.tips = tips;
        }
        let version = self.version;
        for (peer, session) in connected {
            let st = self.peers.entry(peer).or_default();
            let mut delta = match st.announced {
                Some((s, v)) if s == session && v == version => continue,
                Some((s, v)) if s == session && v + 1 == version => self.changed.clone(),
                _ => self.tips.clone(),
            };
            st.announced = Some((session, version));
            let has = std::mem::take(&mut st.has);
            delta.retain(|t| has.get(&t.author) != Some(&t.tip));
            if delta.is_empty() {
                continue;
            }
            debug!(peer = %peer.short(12), branches = delta.len(), "announcing tips");
            let msg = Message::MemoryResponse(MemoryResponse {
                tips: Some(delta),
                ..Default::default()
            });
            self.send(peer, session, msg, IfFull::Announce);
        }
    }

    fn on_closed(&mut self, now: Instant, session: SessionId) {
        let mut ended = vec![];
        for (pk, st) in self.peers.iter_mut() {
            if st.want_pull.as_ref().is_some_and(|(s, _)| *s == session) {
                st.want_pull = None;
            }
            if st.parked.as_ref().is_some_and(|(s, _)| *s == session) {
                st.parked = None;
            }
            if st.announced.as_ref().is_some_and(|(s, _)| *s == session) {
                st.announced = None;
                st.has.clear();
            }
            st.deferred.retain(|(_, s)| *s != session);
            if st.pull.as_ref().is_some_and(|p| p.session == session) {
                st.pull = None;
                ended.push(*pk);
            }
        }
        // The peer restarted or the link dropped: a new session pulls afresh.
        for peer in ended {
            warn!(peer = %peer.short(12), reason = "session closed", "pull abandoned; nothing applied");
            self.outbox.push_back(Io::Discard { peer });
            self.emit(ReplicationEvent::PullFailed {
                peer,
                reason: "session closed".into(),
            });
            self.after_pull(now, peer);
        }
    }

    fn on_not_queued(&mut self, peer: PublicKey, session: SessionId, what: IfFull, closed: bool) {
        let Some(st) = self.peers.get_mut(&peer) else {
            return;
        };
        match what {
            IfFull::Drop => {}
            IfFull::Announce => {
                if st.announced.as_ref().is_some_and(|(s, _)| *s == session) {
                    st.announced = None;
                }
            }
            IfFull::Pull(id) => {
                if let Some(pull) = st.pull.take_if(|p| p.id == id) {
                    if !closed {
                        debug!(peer = %peer.short(12), "pull put off: the session's queue is full");
                        st.want_pull = Some((session, pull.want));
                    }
                }
            }
        }
    }

    fn on_message(&mut self, now: Instant, peer: PublicKey, session: SessionId, msg: Message) {
        match msg {
            Message::MemoryRequest(req) if req.sync.is_some() => {
                let me = self.policy.me;
                let st = self.peers.entry(peer).or_default();
                let crossing = st.pull.is_some() && me < peer;
                if crossing || st.sending {
                    if st.deferred.len() < MAX_DEFERRED {
                        st.deferred.push_back((req, session));
                    }
                } else {
                    self.start_send(peer, session, req);
                }
            }
            Message::MemoryRequest(req) => {
                let running = self.queries.entry(peer).or_default();
                if *running >= MAX_CONCURRENT_QUERIES {
                    debug!(peer = %peer.short(12), "query refused: too many at once");
                    let busy = MemoryResponse {
                        id: Some(req.id),
                        error: Some(format!(
                            "busy: at most {MAX_CONCURRENT_QUERIES} queries at once"
                        )),
                        ..Default::default()
                    };
                    // Only if there is room now: a peer flooding queries it
                    // does not read gets no work per query.
                    self.send(peer, session, Message::MemoryResponse(busy), IfFull::Drop);
                    return;
                }
                *running += 1;
                self.outbox.push_back(Io::Answer { peer, session, req });
            }
            Message::MemoryResponse(r) => self.on_response(now, peer, session, r),
            Message::GitBundle(g) => self.on_chunk(peer, session, g),
            other => debug!(peer = %peer.short(12), msg_type = %other.msg_type(), "ignored"),
        }
    }

    fn start_send(&mut self, peer: PublicKey, session: SessionId, req: MemoryRequest) {
        self.peers.entry(peer).or_default().sending = true;
        self.outbox.push_back(Io::Serve { peer, session, req });
    }

    fn on_response(
        &mut self,
        now: Instant,
        peer: PublicKey,
        session: SessionId,
        r: MemoryResponse,
    ) {
        if let Some(s) = &r.ingested {
            if s.refused.is_empty() {
                debug!(peer = %peer.short(12), memories = s.memories, "peer accepted our bundle");
            } else {
                warn!(peer = %peer.short(12), refused = ?s.refused, "peer refused part of our bundle");
            }
            return;
        }
        if let Some(tips) = &r.tips {
            let st = self.peers.entry(peer).or_default();
            if st.announced.as_ref().is_some_and(|(s, _)| *s == session) {
                // Bounded: a peer that announces ever new authors while we
                // announce nothing fills it no further (it only saves bytes).
                for t in tips {
                    if st.has.len() >= MAX_HAS && !st.has.contains_key(&t.author) {
                        break;
                    }
                    st.has.insert(t.author.clone(), t.tip.clone());
                }
            }
        }
        let Some(id) = r.id else {
            // An announce. Tips that are ours already (as last read) need
            // no look in the store: in a mesh every peer announces each new
            // memory, and all but the first announce name what we hold.
            if let Some(mut tips) = r.tips {
                tips.retain(|t| !self.holds_tip(t));
                if !tips.is_empty() {
                    self.work(peer, Work::Lacking(tips), Job::Lacking(peer, session));
                }
            }
            return;
        };
        let st = self.peers.entry(peer).or_default();
        let Some(pull) = st.pull.as_mut().filter(|p| p.id == id) else {
            debug!(peer = %peer.short(12), id, "answer to no pending request");
            return;
        };
        if let Some(e) = r.error {
            warn!(peer = %peer.short(12), error = %e, "pull refused by peer");
            self.emit(ReplicationEvent::PullFailed { peer, reason: e });
            self.finish_pull(now, peer);
            return;
        }
        match r.transfer {
            Some(info) if pull.stage == Stage::Requested => {
                pull.last_progress = now;
                let total = info.total_size;
                if total > self.policy.max_transfer {
                    let reason = format!(
                        "transfer refused: {total} bytes declared, the limit is {}",
                        self.policy.max_transfer
                    );
                    self.fail_pull(now, peer, reason);
                    return;
                }
                let left = self
                    .policy
                    .quota_bytes
                    .saturating_sub(self.quotas.entry(peer).or_default().roll(now).bytes);
                if total > left {
                    let reason = format!(
                        "over the daily quota: a transfer of {total} bytes, {left} bytes left for this peer"
                    );
                    self.fail_pull(now, peer, reason);
                    return;
                }
                let transfer_id = info.transfer_id.clone();
                self.work(
                    peer,
                    Work::Start(info),
                    Job::Start(peer, id, total, transfer_id),
                );
            }
            Some(_) => {
                self.outbox.push_back(Io::Discard { peer });
                self.emit(ReplicationEvent::PullFailed {
                    peer,
                    reason: "second transfer for one request".into(),
                });
                self.finish_pull(now, peer);
            }
            None => {
                debug!(peer = %peer.short(12), "nothing new from peer");
                self.finish_pull(now, peer);
            }
        }
    }

    fn on_chunk(&mut self, peer: PublicKey, session: SessionId, g: GitBundle) {
        let Some(pull) = self.peers.get(&peer).and_then(|s| s.pull.as_ref()) else {
            debug!(peer = %peer.short(12), "chunk of no transfer; dropped");
            return;
        };
        if pull.stage != Stage::Receiving {
            debug!(peer = %peer.short(12), "chunk outside its transfer; dropped");
            return;
        }
        let id = pull.id;
        self.work(peer, Work::Chunk(g), Job::Chunk(peer, id, session));
    }

    fn pull_mut(&mut self, peer: &PublicKey, id: u64) -> Option<&mut Pull> {
        self.peers
            .get_mut(peer)
            .and_then(|s| s.pull.as_mut())
            .filter(|p| p.id == id)
    }

    fn on_done(&mut self, now: Instant, job: Job, outcome: Outcome) {
        match (job, outcome) {
            (Job::Announce(connected), Outcome::Tips(tips)) => match tips {
                Ok(tips) => self.announce(Some(tips), connected),
                Err(e) => debug!(error = %e, "cannot read our tips"),
            },
            (Job::Announce(connected), Outcome::Unchanged) => self.announce(None, connected),
            (Job::Lacking(peer, session), Outcome::Lacking(lacks)) => {
                // Only what we lack is pulled: naming a branch we are
                // ahead on would bring all of it again.
                let tips = lacks.unwrap_or_default();
                if tips.is_empty() {
                    return;
                }
                let st = self.peers.entry(peer).or_default();
                if st.busy() {
                    // Busy with this peer: looked at again (still lacking?
                    // pulled from elsewhere meanwhile?) when that ends.
                    st.park(session, tips);
                    return;
                }
                let Some(want) = self.park_covered(peer, session, tips) else {
                    return;
                };
                self.start_pull(now, peer, session, want);
            }
            (Job::PullTips(peer, session, want), Outcome::Tips(have)) => {
                if let Some(st) = self.peers.get_mut(&peer) {
                    st.starting = None;
                }
                let have = match have {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(error = %e, "cannot read our tips");
                        return;
                    }
                };
                let st = self.peers.entry(peer).or_default();
                if st.pull.is_some() || st.sending {
                    st.defer_pull(session, want);
                    return;
                }
                let id = self.next_pull;
                self.next_pull += 1;
                // A targeted pull names the authors announced and shows
                // only our tips of theirs: the request stays small however
                // many branches we hold, and the answer holds only them.
                let (authors, have) = match &want {
                    Want::All => (Vec::new(), have),
                    Want::Authors(a) => (
                        a.iter().cloned().collect(),
                        have.into_iter().filter(|t| a.contains(&t.author)).collect(),
                    ),
                };
                st.pull = Some(Pull {
                    id,
                    session,
                    started: now,
                    last_progress: now,
                    stage: Stage::Requested,
                    transfer_id: String::new(),
                    want,
                });
                debug!(peer = %peer.short(12), id, authors = authors.len(), "pulling");
                let req = Message::MemoryRequest(MemoryRequest {
                    id,
                    authors,
                    sync: Some(SyncRequest {
                        have,
                        max_transfer: Some(self.policy.max_transfer),
                    }),
                    ..Default::default()
                });
                self.send(peer, session, req, IfFull::Pull(id));
            }
            (Job::Start(peer, id, total, transfer_id), Outcome::Started(r)) => {
                if self.pull_mut(&peer, id).is_none() {
                    self.outbox.push_back(Io::Discard { peer });
                    return;
                }
                match r {
                    Ok(()) => {
                        self.quotas.entry(peer).or_default().roll(now).bytes += total;
                        if let Some(p) = self.pull_mut(&peer, id) {
                            p.stage = Stage::Receiving;
                            p.last_progress = now;
                            p.transfer_id = transfer_id;
                        }
                    }
                    Err(reason) => {
                        warn!(peer = %peer.short(12), %reason, "transfer refused");
                        self.emit(ReplicationEvent::PullFailed { peer, reason });
                        self.finish_pull(now, peer);
                    }
                }
            }
            (Job::Chunk(peer, id, session), Outcome::Chunk(r)) => {
                let Some(p) = self.pull_mut(&peer, id) else {
                    self.outbox.push_back(Io::Discard { peer });
                    return;
                };
                p.last_progress = now;
                let transfer_id = p.transfer_id.clone();
                match r {
                    Ok(false) => {}
                    Ok(true) => {
                        p.stage = Stage::Ingesting;
                        self.work(
                            peer,
                            Work::Ingest,
                            Job::Ingest(peer, id, session, transfer_id),
                        );
                    }
                    Err(reason) => {
                        self.outbox.push_back(Io::SendLater {
                            peer,
                            session,
                            msg: refused_summary(id.to_string(), reason.clone()),
                        });
                        self.fail_pull(now, peer, reason);
                    }
                }
            }
            (Job::Ingest(peer, id, session, transfer_id), Outcome::Ingested(r)) => {
                let still = self.pull_mut(&peer, id).is_some();
                match r {
                    Ok(s) => {
                        self.quotas.entry(peer).or_default().roll(now).memories += s.memories;
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
                        // What came in goes on at once, not at the next poll.
                        if s.memories > 0 && !self.connected.is_empty() {
                            let connected = self.connected.clone();
                            self.work(self.policy.me, Work::ServedTips, Job::Announce(connected));
                        }
                        self.outbox.push_back(Io::SendLater {
                            peer,
                            session,
                            msg: Message::MemoryResponse(MemoryResponse {
                                ingested: Some(s),
                                ..Default::default()
                            }),
                        });
                    }
                    Err(reason) => {
                        warn!(peer = %peer.short(12), %reason, "transfer failed; nothing applied");
                        self.emit(ReplicationEvent::PullFailed {
                            peer,
                            reason: reason.clone(),
                        });
                        self.outbox.push_back(Io::SendLater {
                            peer,
                            session,
                            msg: refused_summary(transfer_id, reason),
                        });
                    }
                }
                if still {
                    self.finish_pull(now, peer);
                }
            }
            (job, outcome) => debug!(?job, ?outcome, "work answered with another outcome"),
        }
    }

    fn start_pull(&mut self, now: Instant, peer: PublicKey, session: SessionId, want: Want) {
        let quota = self.quotas.entry(peer).or_default();
        if let Some(reason) = quota.exhausted(now, &self.policy) {
            if !std::mem::replace(&mut quota.warned, true) {
                warn!(peer = %peer.short(12), %reason, "not pulling");
            }
            self.emit(ReplicationEvent::PullFailed { peer, reason });
            return;
        }
        // Seen as in flight from now on, before our tips are read.
        self.peers.entry(peer).or_default().starting = Some(want.clone());
        let only = match &want {
            Want::All => None,
            Want::Authors(a) => Some(a.iter().cloned().collect()),
        };
        self.work(
            peer,
            Work::OurTips(only),
            Job::PullTips(peer, session, want),
        );
    }

    fn fail_pull(&mut self, now: Instant, peer: PublicKey, reason: String) {
        warn!(peer = %peer.short(12), %reason, "transfer failed; nothing applied");
        // The partial transfer (its temporary file) goes before anyone hears.
        if let Some(st) = self.peers.get_mut(&peer) {
            st.pull = None;
        }
        self.outbox.push_back(Io::Discard { peer });
        self.emit(ReplicationEvent::PullFailed { peer, reason });
        self.finish_pull(now, peer);
    }

    fn finish_pull(&mut self, now: Instant, peer: PublicKey) {
        if let Some(st) = self.peers.get_mut(&peer) {
            st.pull = None;
        }
        self.after_pull(now, peer);
    }

    /// What pulls from peers other than `peer` are fetching now: every
    /// author (a pull of everything), or these authors.
    fn in_flight_elsewhere(&self, peer: &PublicKey) -> (bool, BTreeSet<String>) {
        let mut authors = BTreeSet::new();
        for (k, st) in &self.peers {
            if k == peer {
                continue;
            }
            match st.pull.as_ref().map(|p| &p.want).or(st.starting.as_ref()) {
                Some(Want::All) => return (true, BTreeSet::new()),
                Some(Want::Authors(a)) => authors.extend(a.iter().cloned()),
                None => {}
            }
        }
        (false, authors)
    }

    /// Of the lacking `tips` `peer` announced, parks those whose authors a
    /// pull from another peer is fetching now (one transfer per memory,
    /// not one per peer that announced it); what is left to pull from
    /// `peer`, if anything.
    fn park_covered(
        &mut self,
        peer: PublicKey,
        session: SessionId,
        tips: Vec<BranchTip>,
    ) -> Option<Want> {
        let want = Want::of(&tips);
        let Want::Authors(asked) = want else {
            return Some(Want::All);
        };
        let (all, busy) = self.in_flight_elsewhere(&peer);
        let (park, rest): (Vec<BranchTip>, Vec<BranchTip>) = tips
            .into_iter()
            .partition(|t| all || busy.contains(&t.author));
        if !park.is_empty() {
            debug!(peer = %peer.short(12), parked = park.len(), "announced tips parked: pulled from another peer now");
            self.peers.entry(peer).or_default().park(session, park);
        }
        let rest: BTreeSet<String> = rest.into_iter().map(|t| t.author).collect();
        let rest: BTreeSet<String> = asked.intersection(&rest).cloned().collect();
        (!rest.is_empty()).then_some(Want::Authors(rest))
    }

    /// Parked tips whose pull elsewhere has ended are looked at again: if
    /// still lacking (that pull failed, or brought an older tip), they are
    /// pulled from the peer that announced them.
    fn unpark(&mut self) {
        let mut again = vec![];
        // Only peers with parked tips and idle: what is in flight elsewhere
        // is looked up for them alone.
        let waiting: Vec<PublicKey> = self
            .peers
            .iter()
            .filter(|(_, st)| st.parked.is_some() && !st.busy())
            .map(|(k, _)| *k)
            .collect();
        for k in waiting {
            let (all, busy) = self.in_flight_elsewhere(&k);
            if all {
                continue;
            }
            let st = self.peers.get_mut(&k).expect("a key of the map");
            let Some((session, parked)) = &mut st.parked else {
                continue;
            };
            let free: Vec<BranchTip> = parked
                .iter()
                .filter(|(a, _)| !busy.contains(*a))
                .map(|(a, t)| BranchTip {
                    author: a.clone(),
                    tip: t.clone(),
                })
                .collect();
            if free.is_empty() {
                continue;
            }
            for t in &free {
                parked.remove(&t.author);
            }
            let session = *session;
            if parked.is_empty() {
                st.parked = None;
            }
            again.push((k, session, free));
        }
        for (peer, session, tips) in again {
            self.work(peer, Work::Lacking(tips), Job::Lacking(peer, session));
        }
    }

    /// Serves a deferred request, or pulls again if an announce came
    /// meanwhile; tips parked for this pull are looked at again.
    fn after_pull(&mut self, now: Instant, peer: PublicKey) {
        self.unpark();
        let Some(st) = self.peers.get_mut(&peer) else {
            return;
        };
        if st.pull.is_some() || st.sending {
            return;
        }
        if let Some((req, session)) = st.deferred.pop_front() {
            self.start_send(peer, session, req);
            return;
        }
        if let Some((session, want)) = st.want_pull.take() {
            self.start_pull(now, peer, session, want);
        }
    }
}

/// The `ingested` answer refusing transfer `transfer_id`.
fn refused_summary(transfer_id: String, reason: String) -> Message {
    Message::MemoryResponse(MemoryResponse {
        ingested: Some(IngestSummary {
            transfer_id,
            refused: vec![reason],
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmogit_identity::Identity;

    fn key(n: u8) -> PublicKey {
        Identity::from_secret_bytes(&[n; 32]).public_key()
    }

    fn policy(me: PublicKey) -> Policy {
        Policy {
            me,
            max_transfer: 1 << 20,
            transfer_timeout: Duration::from_secs(60),
            transfer_deadline: Duration::from_secs(3600),
            quota_bytes: 1 << 30,
            quota_memories: 1_000_000,
        }
    }

    fn drain(r: &mut Replication) -> Vec<Io> {
        std::iter::from_fn(|| r.next_io()).collect()
    }

    fn tip(author: &PublicKey, c: u8) -> BranchTip {
        BranchTip {
            author: author.to_hex(),
            tip: format!("{c:040x}"),
        }
    }

    /// Answers the one piece of work in `ios` with `outcome`.
    fn answer(r: &mut Replication, now: Instant, ios: &[Io], outcome: Outcome) -> Vec<Io> {
        let job = ios
            .iter()
            .find_map(|io| match io {
                Io::Work { job, .. } => Some(*job),
                _ => None,
            })
            .expect("work asked for");
        r.handle(now, Input::Done { job, outcome });
        drain(r)
    }

    /// `me` hears `peer` announce a tip it lacks, and sends pull #1.
    fn pulling(me: PublicKey, peer: PublicKey, now: Instant) -> Replication {
        let mut r = Replication::new(policy(me));
        hear(&mut r, now, peer, 7, vec![tip(&peer, 1)]);
        let ios = drain(&mut r);
        let ios = answer(&mut r, now, &ios, Outcome::Lacking(Ok(vec![tip(&peer, 1)])));
        let ios = answer(&mut r, now, &ios, Outcome::Tips(Ok(vec![])));
        assert!(
            matches!(&ios[..], [Io::Send { msg: Message::MemoryRequest(q), if_full: IfFull::Pull(1), .. }] if q.sync.is_some()),
            "{ios:?}"
        );
        r
    }

    fn sync_request(id: u64) -> Message {
        Message::MemoryRequest(MemoryRequest {
            id,
            sync: Some(SyncRequest::default()),
            ..Default::default()
        })
    }

    #[test]
    fn a_crossing_pull_is_answered_after_ours_by_the_lower_key() {
        let t = Instant::now();
        let (lo, hi) = {
            let (a, b) = (key(1), key(2));
            if a < b {
                (a, b)
            } else {
                (b, a)
            }
        };
        // The lower key defers the higher key's pull while its own runs...
        let mut r = pulling(lo, hi, t);
        r.handle(
            t,
            Input::Received {
                peer: hi,
                session: 7,
                msg: sync_request(9),
            },
        );
        assert_eq!(drain(&mut r), vec![], "deferred while our pull runs");
        // ... and serves it once its pull ends (here: nothing new).
        let nothing = Message::MemoryResponse(MemoryResponse {
            id: Some(1),
            tips: Some(vec![]),
            ..Default::default()
        });
        r.handle(
            t,
            Input::Received {
                peer: hi,
                session: 7,
                msg: nothing,
            },
        );
        let ios = drain(&mut r);
        assert!(
            matches!(&ios[..], [Io::Serve { req, session: 7, .. }] if req.id == 9),
            "{ios:?}"
        );
        // The higher key serves a crossing pull at once.
        let mut r = pulling(hi, lo, t);
        r.handle(
            t,
            Input::Received {
                peer: lo,
                session: 7,
                msg: sync_request(9),
            },
        );
        assert!(matches!(&drain(&mut r)[..], [Io::Serve { .. }]));
    }

    #[test]
    fn an_announce_during_a_send_is_pulled_after_it_and_a_full_queue_retries_on_the_next_poll() {
        let t = Instant::now();
        let (me, peer) = (key(1), key(2));
        let mut r = Replication::new(policy(me));
        r.handle(
            t,
            Input::Received {
                peer,
                session: 3,
                msg: sync_request(4),
            },
        );
        assert!(matches!(&drain(&mut r)[..], [Io::Serve { .. }]));
        hear(&mut r, t, peer, 3, vec![tip(&peer, 5)]);
        let ios = drain(&mut r);
        assert_eq!(
            answer(&mut r, t, &ios, Outcome::Lacking(Ok(vec![tip(&peer, 5)]))),
            vec![]
        );
        // The send ends: the announce is looked at again (still lacking?),
        // then the pull starts.
        r.handle(t, Input::Served { peer, sent: None });
        let ios = drain(&mut r);
        assert!(
            matches!(
                &ios[..],
                [Io::Work {
                    work: Work::Lacking(_),
                    ..
                }]
            ),
            "{ios:?}"
        );
        let ios = answer(&mut r, t, &ios, Outcome::Lacking(Ok(vec![tip(&peer, 5)])));
        let ios = answer(&mut r, t, &ios, Outcome::Tips(Ok(vec![])));
        let Some(Io::Send { if_full, .. }) = ios.first() else {
            panic!("{ios:?}")
        };
        // Its queue is full: the pull waits for the next poll.
        r.handle(
            t,
            Input::NotQueued {
                peer,
                session: 3,
                what: *if_full,
                closed: false,
            },
        );
        assert_eq!(drain(&mut r), vec![]);
        r.handle(
            t + Duration::from_millis(100),
            Input::Tick {
                connected: vec![(peer, 3)],
            },
        );
        let ios = drain(&mut r);
        assert!(
            ios.iter().any(|io| matches!(
                io,
                Io::Work {
                    work: Work::OurTips(_),
                    ..
                }
            )),
            "the pull is tried again: {ios:?}"
        );
    }

    #[test]
    fn a_stalled_pull_is_abandoned_and_its_transfer_discarded() {
        let t = Instant::now();
        let (me, peer) = (key(1), key(2));
        let mut r = pulling(me, peer, t);
        let later = t + Duration::from_secs(61);
        r.handle(
            later,
            Input::Tick {
                connected: vec![(peer, 7)],
            },
        );
        let ios = drain(&mut r);
        assert!(ios.contains(&Io::Discard { peer }), "{ios:?}");
        assert!(ios.contains(&Io::Event(ReplicationEvent::PullFailed {
            peer,
            reason: "no progress".into()
        })));
    }

    /// The announces in `ios`: (session, tips).
    fn announces(ios: &[Io]) -> Vec<(SessionId, Vec<BranchTip>)> {
        ios.iter()
            .filter_map(|io| match io {
                Io::Send {
                    session,
                    msg: Message::MemoryResponse(r),
                    if_full: IfFull::Announce,
                    ..
                } => Some((*session, r.tips.clone().unwrap_or_default())),
                _ => None,
            })
            .collect()
    }

    /// A poll with `connected` whose tips read as `tips`; the announces sent.
    fn poll(
        r: &mut Replication,
        now: Instant,
        connected: Vec<(PublicKey, SessionId)>,
        tips: Vec<BranchTip>,
    ) -> Vec<(SessionId, Vec<BranchTip>)> {
        r.handle(now, Input::Tick { connected });
        let ios = drain(r);
        announces(&answer(r, now, &ios, Outcome::Tips(Ok(tips))))
    }

    /// `peer` announces `tips` on `session`.
    fn hear(
        r: &mut Replication,
        now: Instant,
        peer: PublicKey,
        session: SessionId,
        tips: Vec<BranchTip>,
    ) {
        let msg = Message::MemoryResponse(MemoryResponse {
            tips: Some(tips),
            ..Default::default()
        });
        r.handle(now, Input::Received { peer, session, msg });
    }

    #[test]
    fn announces_carry_only_what_changed_and_a_new_session_hears_everything() {
        let t = Instant::now();
        let (me, peer, x, y) = (key(1), key(2), key(3), key(4));
        let mut r = Replication::new(policy(me));
        // Announced in the order of their authors.
        let sorted = |mut v: Vec<BranchTip>| {
            v.sort_by(|a, b| a.author.cmp(&b.author));
            v
        };
        let all = sorted(vec![tip(&me, 1), tip(&x, 1), tip(&y, 1)]);
        assert_eq!(
            poll(&mut r, t, vec![(peer, 5)], all.clone()),
            vec![(5, all.clone())]
        );
        // Nothing changed: nothing sent.
        assert_eq!(poll(&mut r, t, vec![(peer, 5)], all.clone()), vec![]);
        // One branch moved: only its tip goes.
        let moved = sorted(vec![tip(&me, 1), tip(&x, 2), tip(&y, 1)]);
        assert_eq!(
            poll(&mut r, t, vec![(peer, 5)], moved.clone()),
            vec![(5, vec![tip(&x, 2)])]
        );
        // The peer reconnected: everything again.
        assert_eq!(
            poll(&mut r, t, vec![(peer, 6)], moved.clone()),
            vec![(6, moved)]
        );
    }

    #[test]
    fn a_tip_a_peer_announced_to_us_is_not_announced_back_to_it() {
        let t = Instant::now();
        let (me, p, q, x) = (key(1), key(2), key(3), key(4));
        let mut r = Replication::new(policy(me));
        let before = vec![tip(&me, 1), tip(&x, 1)];
        poll(&mut r, t, vec![(p, 5), (q, 6)], before);
        // p tells us of x's new tip (we pull it; the pull is not answered
        // here), then it is ours: q hears of it, p does not.
        hear(&mut r, t, p, 5, vec![tip(&x, 2)]);
        drain(&mut r);
        let after = vec![tip(&me, 1), tip(&x, 2)];
        assert_eq!(
            poll(&mut r, t, vec![(p, 5), (q, 6)], after),
            vec![(6, vec![tip(&x, 2)])]
        );
    }

    #[test]
    fn an_announce_of_tips_we_hold_asks_the_store_nothing() {
        let t = Instant::now();
        let (me, p, x) = (key(1), key(2), key(4));
        let mut r = Replication::new(policy(me));
        poll(&mut r, t, vec![(p, 5)], vec![tip(&me, 1), tip(&x, 2)]);
        hear(&mut r, t, p, 5, vec![tip(&x, 2)]);
        assert_eq!(drain(&mut r), vec![], "x's tip 2 is ours: no lacking check");
        hear(&mut r, t, p, 5, vec![tip(&x, 2), tip(&x, 3)]);
        let ios = drain(&mut r);
        assert!(
            matches!(&ios[..], [Io::Work { work: Work::Lacking(l), .. }] if *l == vec![tip(&x, 3)]),
            "{ios:?}"
        );
    }

    #[test]
    fn what_a_peer_showed_it_holds_is_remembered_only_up_to_a_bound() {
        let t = Instant::now();
        let (me, p) = (key(1), key(2));
        let mut r = Replication::new(policy(me));
        poll(&mut r, t, vec![(p, 5)], vec![tip(&me, 1)]);
        // A trusted peer announces ever new (made-up) authors while our
        // tips stay the same: what we keep of it stays bounded.
        for round in 0..3u32 {
            let tips: Vec<BranchTip> = (0..4096u32)
                .map(|i| BranchTip {
                    author: format!("{:064x}", u64::from(round) << 32 | u64::from(i)),
                    tip: "ab".repeat(20),
                })
                .collect();
            hear(&mut r, t, p, 5, tips);
            drain(&mut r);
        }
        assert!(r.peers[&p].has.len() <= MAX_HAS);
    }

    #[test]
    fn a_pull_names_the_authors_announced_and_shows_only_their_tips() {
        let t = Instant::now();
        let (me, peer, x, y) = (key(1), key(2), key(3), key(4));
        let mut r = Replication::new(policy(me));
        hear(&mut r, t, peer, 7, vec![tip(&x, 2)]);
        let ios = drain(&mut r);
        let ios = answer(&mut r, t, &ios, Outcome::Lacking(Ok(vec![tip(&x, 2)])));
        let ours = vec![tip(&me, 9), tip(&x, 1), tip(&y, 4)];
        let ios = answer(&mut r, t, &ios, Outcome::Tips(Ok(ours)));
        let [Io::Send {
            msg: Message::MemoryRequest(q),
            ..
        }] = &ios[..]
        else {
            panic!("{ios:?}")
        };
        assert_eq!(q.authors, vec![x.to_hex()]);
        assert_eq!(q.sync.as_ref().unwrap().have, vec![tip(&x, 1)]);
        // Announces of many branches at once (a first announce of a large
        // store) are pulled whole.
        let many: Vec<BranchTip> = (0..=MAX_TARGETED_AUTHORS as u16)
            .map(|n| BranchTip {
                author: format!("{n:064x}"),
                tip: "00".repeat(20),
            })
            .collect();
        assert_eq!(Want::of(&many), Want::All);
        assert_eq!(Want::of(&many[..3]).merge(Want::All), Want::All);
    }

    #[test]
    fn memories_that_came_in_are_announced_at_once() {
        let t = Instant::now();
        let (me, peer, other) = (key(1), key(2), key(3));
        let mut r = pulling(me, peer, t);
        // The last poll saw both peers.
        r.handle(
            t,
            Input::Tick {
                connected: vec![(peer, 7), (other, 8)],
            },
        );
        let ios = drain(&mut r);
        answer(&mut r, t, &ios, Outcome::Tips(Ok(vec![])));
        let transfer = MemoryResponse {
            id: Some(1),
            transfer: Some(TransferInfo {
                transfer_id: "1".into(),
                total_size: 10,
                sha256: "00".repeat(32),
                chunks: 1,
                commits: 1,
            }),
            ..Default::default()
        };
        r.handle(
            t,
            Input::Received {
                peer,
                session: 7,
                msg: Message::MemoryResponse(transfer),
            },
        );
        let ios = drain(&mut r);
        answer(&mut r, t, &ios, Outcome::Started(Ok(())));
        r.handle(
            t,
            Input::Received {
                peer,
                session: 7,
                msg: Message::GitBundle(GitBundle {
                    transfer_id: "1".into(),
                    index: 0,
                    total_size: 10,
                    sha256: "00".repeat(32),
                    data: vec![0; 10],
                }),
            },
        );
        let ios = drain(&mut r);
        let ios = answer(&mut r, t, &ios, Outcome::Chunk(Ok(true)));
        let summary = IngestSummary {
            memories: 1,
            branches: 1,
            ..Default::default()
        };
        let ios = answer(&mut r, t, &ios, Outcome::Ingested(Ok(summary)));
        // Without waiting for a poll, our tips are read to announce them.
        let announce_work = ios.iter().any(|io| {
            matches!(
                io,
                Io::Work {
                    work: Work::ServedTips,
                    ..
                }
            )
        });
        assert!(announce_work, "{ios:?}");
        let sent = announces(&answer(
            &mut r,
            t,
            &ios,
            Outcome::Tips(Ok(vec![tip(&peer, 1)])),
        ));
        assert_eq!(sent.len(), 2, "both peers hear it: {sent:?}");
    }

    #[test]
    fn a_memory_being_pulled_from_one_peer_is_not_pulled_from_another_unless_that_fails() {
        let t = Instant::now();
        let (me, p1, p2, x) = (key(1), key(2), key(3), key(4));
        let mut r = Replication::new(policy(me));
        let hears = |r: &mut Replication, peer: PublicKey, session: SessionId| {
            hear(r, t, peer, session, vec![tip(&x, 2)]);
            let ios = drain(r);
            answer(r, t, &ios, Outcome::Lacking(Ok(vec![tip(&x, 2)])))
        };
        // p1 announces x's new tip: a pull from p1 starts.
        let ios = hears(&mut r, p1, 5);
        assert!(
            matches!(
                &ios[..],
                [Io::Work {
                    work: Work::OurTips(_),
                    ..
                }]
            ),
            "{ios:?}"
        );
        // p2 announces the same before that pull is even sent: parked.
        assert_eq!(hears(&mut r, p2, 6), vec![], "no second pull");
        let ios = answer(&mut r, t, &ios, Outcome::Tips(Ok(vec![tip(&x, 1)])));
        let [Io::Send {
            msg: Message::MemoryRequest(q),
            ..
        }] = &ios[..]
        else {
            panic!("{ios:?}")
        };
        assert_eq!(q.authors, vec![x.to_hex()]);
        // The pull from p1 fails: p2's announce is looked at again...
        r.handle(
            t,
            Input::Received {
                peer: p1,
                session: 5,
                msg: Message::MemoryResponse(MemoryResponse {
                    id: Some(q.id),
                    error: Some("busy".into()),
                    ..Default::default()
                }),
            },
        );
        let ios = drain(&mut r);
        let again = ios.iter().any(|io| {
            matches!(io, Io::Work { peer, work: Work::Lacking(tips), .. } if *peer == p2 && *tips == vec![tip(&x, 2)])
        });
        assert!(again, "{ios:?}");
        // ...and, still lacking, pulled from p2.
        let ios: Vec<Io> = ios
            .into_iter()
            .filter(|io| matches!(io, Io::Work { .. }))
            .collect();
        let ios = answer(&mut r, t, &ios, Outcome::Lacking(Ok(vec![tip(&x, 2)])));
        assert!(
            matches!(&ios[..], [Io::Work { peer, work: Work::OurTips(_), .. }] if *peer == p2),
            "{ios:?}"
        );
    }
}
