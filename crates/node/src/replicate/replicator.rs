//! The replicator task: drives the [`Replication`] machine with the node's
//! sessions, runs its store work on blocking threads, sends bundles and
//! answers queries in tasks of their own, and feeds the results back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmogit_identity::PublicKey;
use mmogit_proto::{MemoryRequest, MemoryResponse, Message, MAX_BUNDLE_CHUNK};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::answers::{
    answer_query, answer_sync, blocking, lacking, open, served_tips, summary, tips_of, SyncAnswer,
};
use super::error::ReplicateError;
use super::transfer::{ingest_tag, send_bundle, ChunkSink, Incoming};
use super::{ReplicatorConfig, QUERY_QUEUED_AT_MOST, SEND_TIMEOUT};
use crate::inbox::{Inbound, Reply};
use crate::service::replication::{
    IfFull, Input, Io, JobId, Outcome, Replication, ReplicationEvent, SessionId, Work,
};
use crate::shared::NodeSender;

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

/// A node session as a sink of bundle chunks: few chunks queued at once.
impl ChunkSink for &Reply {
    async fn put(&mut self, m: Message) -> Result<(), crate::NodeError> {
        let err = |e: crate::queue::SendError| crate::NodeError::Protocol(e.to_string());
        self.wait_queued_at_most(1, SEND_TIMEOUT)
            .await
            .map_err(err)?;
        self.send(m, SEND_TIMEOUT).await.map_err(err)
    }
}

/// Serves queries and sync requests, pulls what peers announce, and
/// announces our tips: the I/O of [`Replication`].
pub struct Replicator {
    cfg: Arc<ReplicatorConfig>,
    core: Replication,
    /// The sessions the machine knows, by the id given to each.
    sessions: Vec<(SessionId, Reply)>,
    next_session: SessionId,
    /// Each peer's incoming transfer (its file).
    incoming: HashMap<PublicKey, Incoming>,
    events: Option<mpsc::UnboundedSender<ReplicationEvent>>,
    /// Work that ends in a task of its own reports here.
    done_tx: mpsc::Sender<Input>,
    done_rx: mpsc::Receiver<Input>,
}

impl Replicator {
    pub fn new(cfg: ReplicatorConfig) -> Replicator {
        let (done_tx, done_rx) = mpsc::channel(64);
        Replicator {
            core: Replication::new(cfg.policy()),
            cfg: Arc::new(cfg),
            sessions: Vec::new(),
            next_session: 1,
            incoming: HashMap::new(),
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

    /// Runs until the node stops: handles `inbox` (give the sending side to
    /// [`crate::Node::with_inbox`]) and announces our tips to `node`'s peers.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Inbound>, node: NodeSender) {
        {
            let repo = self.cfg.repo.clone();
            let cleaned = blocking(move || Ok(open(&repo)?.clean_incoming()?)).await;
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
                    Some(Inbound { peer, msg, reply }) => {
                        let session = self.session_id(reply);
                        self.feed(Input::Received { peer, session, msg }).await;
                    }
                    None => break,
                },
                Some(d) = self.done_rx.recv() => self.feed(d).await,
                _ = tick.tick() => self.on_tick(&node).await,
            }
        }
        debug!("replicator stopped");
    }

    /// The id of `reply`'s session (a new one for a session not seen yet).
    fn session_id(&mut self, reply: Reply) -> SessionId {
        if let Some((id, _)) = self.sessions.iter().find(|(_, r)| r.same_session(&reply)) {
            return *id;
        }
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.push((id, reply));
        id
    }

    fn reply(&self, session: SessionId) -> Option<&Reply> {
        self.sessions
            .iter()
            .find(|(id, _)| *id == session)
            .map(|(_, r)| r)
    }

    async fn on_tick(&mut self, node: &NodeSender) {
        let closed: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, r)| r.is_closed())
            .map(|(id, _)| *id)
            .collect();
        self.sessions.retain(|(_, r)| !r.is_closed());
        for id in closed {
            self.feed(Input::Closed(id)).await;
        }
        let mut connected = Vec::new();
        for pk in node.connected() {
            if let Some(reply) = node.session(&pk) {
                connected.push((pk, self.session_id(reply)));
            }
        }
        self.feed(Input::Tick { connected }).await;
    }

    /// Hands `input` to the machine and carries out what it asks, feeding
    /// back the results of work done inline.
    async fn feed(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            self.core.handle(Instant::now(), input);
            while let Some(io) = self.core.next_io() {
                if let Some(back) = self.execute(io).await {
                    inputs.push_back(back);
                }
            }
        }
    }

    async fn execute(&mut self, io: Io) -> Option<Input> {
        match io {
            Io::Send {
                peer,
                session,
                msg,
                if_full,
            } => {
                let reply = self.reply(session);
                if reply.is_some_and(|r| r.try_send(msg).is_ok()) || if_full == IfFull::Drop {
                    return None;
                }
                Some(Input::NotQueued {
                    peer,
                    session,
                    what: if_full,
                    closed: reply.is_none_or(|r| r.is_closed()),
                })
            }
            Io::SendLater { session, msg, .. } => {
                if let Some(r) = self.reply(session) {
                    send_later(r, msg);
                }
                None
            }
            Io::Work { job, peer, work } => self.work(job, peer, work).await,
            Io::Discard { peer } => {
                self.incoming.remove(&peer);
                None
            }
            Io::Serve { peer, session, req } => {
                if let Some(reply) = self.reply(session).cloned() {
                    let cfg = self.cfg.clone();
                    let done = self.done_tx.clone();
                    tokio::spawn(async move {
                        let sent = match serve_sync(&cfg, req, &reply).await {
                            Ok(sent) => sent,
                            Err(e) => {
                                warn!(peer = %peer.short(12), error = %e, "sync request not served");
                                None
                            }
                        };
                        let _ = done.send(Input::Served { peer, sent }).await;
                    });
                    None
                } else {
                    Some(Input::Served { peer, sent: None })
                }
            }
            Io::Answer { peer, session, req } => {
                if let Some(reply) = self.reply(session).cloned() {
                    let cfg = self.cfg.clone();
                    let done = self.done_tx.clone();
                    tokio::spawn(async move {
                        answer(cfg, req, reply).await;
                        let _ = done.send(Input::Answered { peer }).await;
                    });
                    None
                } else {
                    Some(Input::Answered { peer })
                }
            }
            Io::Event(e) => {
                if let Some(tx) = &self.events {
                    let _ = tx.send(e);
                }
                None
            }
        }
    }

    /// Runs store work: inline (on a blocking thread), except the ingest,
    /// which reports when done.
    async fn work(&mut self, job: JobId, peer: PublicKey, work: Work) -> Option<Input> {
        let cfg = self.cfg.clone();
        let text = |e: ReplicateError| e.to_string();
        let outcome = match work {
            Work::ServedTips => Outcome::Tips(
                blocking(move || served_tips(&cfg, &open(&cfg.repo)?))
                    .await
                    .map_err(text),
            ),
            Work::OurTips(only) => Outcome::Tips(
                blocking(move || {
                    let mut tips = tips_of(&open(&cfg.repo)?)?;
                    if let Some(only) = only {
                        tips.retain(|t| only.contains(&t.author));
                    }
                    Ok(tips)
                })
                .await
                .map_err(text),
            ),
            Work::Lacking(tips) => Outcome::Lacking(
                blocking(move || Ok(lacking(&open(&cfg.repo)?, tips)))
                    .await
                    .map_err(text),
            ),
            Work::Start(info) => {
                let max = cfg.max_transfer;
                let started =
                    blocking(move || Ok(Incoming::start(&cfg.repo, &info, max, MAX_BUNDLE_CHUNK)))
                        .await
                        .map_err(text)
                        .and_then(|r| r);
                Outcome::Started(started.map(|inc| {
                    self.incoming.insert(peer, inc);
                }))
            }
            Work::Chunk(g) => match self.incoming.remove(&peer) {
                None => Outcome::Chunk(Err("chunk of no transfer".into())),
                Some(mut inc) => {
                    let res = tokio::task::spawn_blocking(move || {
                        let r = inc.chunk(&g);
                        (inc, r)
                    })
                    .await;
                    match res {
                        Ok((inc, r)) => {
                            if r.is_ok() {
                                self.incoming.insert(peer, inc);
                            }
                            Outcome::Chunk(r)
                        }
                        Err(e) => Outcome::Chunk(Err(format!("worker failed: {e}"))),
                    }
                }
            },
            Work::Ingest => {
                let Some(inc) = self.incoming.remove(&peer) else {
                    return Some(Input::Done {
                        job,
                        outcome: Outcome::Ingested(Err("transfer already finished".into())),
                    });
                };
                let done = self.done_tx.clone();
                tokio::spawn(async move {
                    let transfer_id = inc.transfer_id.clone();
                    let tag = ingest_tag(&peer);
                    let report = tokio::task::spawn_blocking(move || inc.ingest(&cfg.repo, &tag))
                        .await
                        .unwrap_or_else(|e| Err(format!("worker failed: {e}")));
                    let outcome = Outcome::Ingested(report.map(|r| summary(&transfer_id, &r)));
                    let _ = done.send(Input::Done { job, outcome }).await;
                });
                return None;
            }
        };
        Some(Input::Done { job, outcome })
    }
}

/// Answers query `req` on `reply` once the session's queue is nearly empty:
/// a peer that stops reading makes us hold at most a few answers (up to
/// 6 MiB each), not a queue full of them.
async fn answer(cfg: Arc<ReplicatorConfig>, req: MemoryRequest, reply: Reply) {
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
}

/// Answers one sync request on `reply`; Some((bytes, commits)) when a
/// bundle was sent.
async fn serve_sync(
    cfg: &Arc<ReplicatorConfig>,
    req: MemoryRequest,
    reply: &Reply,
) -> Result<Option<(u64, u64)>, ReplicateError> {
    let id = req.id;
    let sync = req.sync.unwrap_or_default();
    let authors = req.authors;
    let c = cfg.clone();
    let answer = match blocking(move || answer_sync(&c, &sync, &authors)).await {
        Ok(a) => a,
        Err(e) => {
            warn!(peer = %reply.peer().short(12), error = %e, "cannot answer a sync request");
            SyncAnswer::Refused(format!("cannot answer: {e}"))
        }
    };
    let send_err = |e: crate::queue::SendError| crate::NodeError::Protocol(e.to_string());
    match answer {
        SyncAnswer::NothingNew(tips) => {
            let m = Message::MemoryResponse(MemoryResponse {
                id: Some(id),
                tips: Some(tips),
                ..Default::default()
            });
            reply.send(m, SEND_TIMEOUT).await.map_err(send_err)?;
            Ok(None)
        }
        SyncAnswer::Refused(e) => {
            let m = Message::MemoryResponse(MemoryResponse {
                id: Some(id),
                error: Some(e.clone()),
                ..Default::default()
            });
            reply.send(m, SEND_TIMEOUT).await.map_err(send_err)?;
            debug!(peer = %reply.peer().short(12), reason = %e, "sync request refused");
            Ok(None)
        }
        SyncAnswer::Bundle(b, tips) => {
            let mut sink = reply;
            let sent =
                send_bundle(&mut sink, id, b, tips, cfg.chunk(), cfg.max_rate, |_, _| {}).await?;
            Ok(Some(sent))
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use mmogit_identity::Identity;
    use mmogit_proto::BranchTip;
    use mmogit_store::Store;

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
