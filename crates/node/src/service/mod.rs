//! The node's decisions without I/O: who to dial and when, one session per
//! peer, trust changes, and replication (announce → pull → relay, defer while
//! a pull runs, quotas). Inputs go in with the time they happen at; what the
//! node should do comes out as [`Io`] actions. Time and randomness are inputs
//! (the caller's clock, a seeded RNG): the same inputs and seed give the same
//! actions, which is what lets a test or a simulator run many nodes in one
//! process with a virtual clock.
//!
//! The tokio shell (the dialer, the session driver, the replicator task)
//! feeds these machines and carries out their actions: it moves bytes, runs
//! store work on blocking threads, and reports the results back as inputs.

pub mod replication;
pub(crate) mod sessions;

pub use sessions::DialParams;

pub mod sim;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use mmogit_identity::PublicKey;
use mmogit_proto::{reasons, Message};

use replication::{Policy, Replication, SessionId};
use sessions::{Direction, Registered, Sessions, DUPLICATE_SESSION};

/// What a node's service is told.
// A message is most of an input; inputs are handled one at a time.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The peer store as read now: the trusted keys and their addresses
    /// (most recent last).
    PeerStore(Vec<(PublicKey, Vec<String>)>),
    /// A dial of `peer` failed.
    DialFailed { peer: PublicKey, error: String },
    /// A connection (`conn`, the shell's name for it) authenticated `peer`.
    Connected {
        peer: PublicKey,
        direction: Direction,
        addr: SocketAddr,
        conn: SessionId,
    },
    /// Connection `conn` ended (`error`: why, when the peer or the network
    /// ended it; `superseded`: closed by the duplicate-session rule).
    Disconnected {
        peer: PublicKey,
        conn: SessionId,
        error: Option<String>,
        superseded: bool,
    },
    /// A data message from `peer` on `conn`.
    Received {
        peer: PublicKey,
        conn: SessionId,
        msg: Message,
    },
    /// The answer to a replication action (work done, a message not queued,
    /// a request served, a query answered).
    Replication(replication::Input),
    /// Time passed: poll tips, start due dials.
    Tick,
}

/// What a node's service asks of its shell.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Io {
    /// Open a connection to `peer` at `addr` (report `Connected` or `DialFailed`).
    Dial { peer: PublicKey, addr: String },
    /// Close connection `conn`, saying `reason`.
    Close { conn: SessionId, reason: String },
    /// Read the peer store again and report it (`PeerStore`).
    ReadPeerStore,
    /// Send a `Tick` at `at` at the latest (a dial falls due).
    WakeAt(Instant),
    /// A replication action.
    Replication(replication::Io),
}

/// Settings of a node's service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub dial: DialParams,
    pub max_outbound: usize,
    pub replication: Policy,
}

/// One node's decisions: `Sessions` (dials, one session per peer, trust)
/// and [`Replication`] fed from one stream of inputs, their actions in one
/// outbox. Time is an input (`now` of each [`Service::handle`]; the wall
/// clock is `wall0` plus the time since `t0`), randomness a seed.
pub struct Service {
    cfg: ServiceConfig,
    sessions: Sessions,
    replication: Replication,
    t0: Instant,
    wall0: SystemTime,
    /// The peer store as last read.
    targets: Vec<(PublicKey, Vec<String>)>,
    /// Open connections: peer and the registered session id, if any.
    conns: BTreeMap<SessionId, (PublicKey, Option<u64>)>,
    /// Registered session id → connection.
    by_session: BTreeMap<u64, SessionId>,
    next_wake: Option<Instant>,
    outbox: VecDeque<Io>,
}

impl Service {
    pub fn new(cfg: ServiceConfig, seed: u64, t0: Instant, wall0: SystemTime) -> Service {
        Service {
            sessions: Sessions::new(cfg.replication.me, cfg.dial, seed),
            replication: Replication::new(cfg.replication.clone()),
            cfg,
            t0,
            wall0,
            targets: Vec::new(),
            conns: BTreeMap::new(),
            by_session: BTreeMap::new(),
            next_wake: None,
            outbox: VecDeque::new(),
        }
    }

    /// The next action, oldest first.
    pub fn next_io(&mut self) -> Option<Io> {
        self.outbox.pop_front()
    }

    /// The peers with a registered session, and its connection.
    pub fn connected(&self) -> Vec<(PublicKey, SessionId)> {
        self.by_session
            .values()
            .filter_map(|c| self.conns.get(c).map(|(pk, _)| (*pk, *c)))
            .collect()
    }

    fn wall(&self, now: Instant) -> SystemTime {
        self.wall0 + now.saturating_duration_since(self.t0)
    }

    fn close(&mut self, conn: SessionId, reason: &str) {
        self.outbox.push_back(Io::Close {
            conn,
            reason: reason.to_string(),
        });
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        let wall = self.wall(now);
        match input {
            Input::PeerStore(targets) => {
                let trusted: HashSet<PublicKey> = targets.iter().map(|(k, _)| *k).collect();
                // Every session the service registers is a peer session
                // (it has no client sessions), found by its id.
                for c in self.sessions.set_trusted(trusted) {
                    if let Some(conn) = self.by_session.get(&c.id).copied() {
                        self.close(conn, reasons::NOT_AUTHORIZED);
                    }
                }
                self.targets = targets;
                self.dial(now);
            }
            Input::DialFailed { peer, error } => {
                self.sessions.dial_finished(&peer, Err(error), now);
                self.dial(now);
            }
            Input::Connected {
                peer,
                direction,
                addr,
                conn,
            } => match self.sessions.register(peer, direction, addr, now, wall) {
                Registered::New {
                    id,
                    displaced,
                    recheck,
                    woke,
                } => {
                    self.conns.insert(conn, (peer, Some(id)));
                    self.by_session.insert(id, conn);
                    if let Some(old) = displaced.and_then(|d| self.by_session.remove(&d)) {
                        if let Some(e) = self.conns.get_mut(&old) {
                            e.1 = None;
                        }
                        self.close(old, DUPLICATE_SESSION);
                    }
                    if recheck {
                        self.outbox.push_back(Io::ReadPeerStore);
                    }
                    if woke {
                        self.dial(now);
                    }
                }
                Registered::Kept { .. } => {
                    if direction == Direction::Outbound {
                        self.sessions.dial_finished(&peer, Ok(()), now);
                    }
                    self.conns.insert(conn, (peer, None));
                    self.close(conn, DUPLICATE_SESSION);
                }
            },
            Input::Disconnected {
                peer,
                conn,
                error,
                superseded,
            } => {
                if let Some((_, Some(id))) = self.conns.remove(&conn) {
                    self.by_session.remove(&id);
                    self.sessions
                        .unregister(&peer, id, error, superseded, now, wall);
                }
                self.replicate(now, replication::Input::Closed(conn));
                self.dial(now);
            }
            Input::Received { peer, conn, msg } => {
                self.sessions.seen(&peer, None, wall);
                self.replicate(
                    now,
                    replication::Input::Received {
                        peer,
                        session: conn,
                        msg,
                    },
                );
            }
            Input::Replication(i) => self.replicate(now, i),
            Input::Tick => {
                let connected = self.connected();
                self.replicate(now, replication::Input::Tick { connected });
                self.dial(now);
            }
        }
    }

    fn replicate(&mut self, now: Instant, input: replication::Input) {
        self.replication.handle(now, input);
        while let Some(io) = self.replication.next_io() {
            self.outbox.push_back(Io::Replication(io));
        }
    }

    /// Starts the dials due at `now`, and asks to be woken for the next.
    fn dial(&mut self, now: Instant) {
        let plan = self
            .sessions
            .plan_dials(self.targets.clone(), self.cfg.max_outbound, now);
        for job in plan.jobs {
            self.outbox.push_back(Io::Dial {
                peer: job.pubkey,
                addr: job.addr,
            });
        }
        let next = self.sessions.next_due();
        if next != self.next_wake {
            self.next_wake = next;
            if let Some(t) = next {
                self.outbox.push_back(Io::WakeAt(t.max(now)));
            }
        }
    }
}
