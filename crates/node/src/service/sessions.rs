//! Sessions and dials: at most one authenticated session per peer key,
//! shared by inbound and outbound sessions, plus what the dialer knows about
//! each peer (backoff, next attempt, addresses, last error). Client sessions
//! (inbound, no listen port announced) are tracked too, apart from the peer
//! sessions and not subject to the one-session rule, so that a trust change
//! ends them as well.
//!
//! [`Sessions`] only decides: it holds no connection, channel or lock and
//! reads no clock. Each input comes with the time it happens at (`now` on
//! the monotonic clock, `wall` on the wall clock where the status shows it)
//! and the jitter of the backoff comes from an RNG seeded at creation, so
//! the same inputs and seed give the same outputs. What to do comes back
//! as plain data: session ids to close or probe, dials to start, the delay
//! to the next attempt. The registry, a module above this one, is the shell
//! that holds each session's sender and control handle, keyed by session
//! id, and carries these out.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mmogit_identity::PublicKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::backoff::{Backoff, DialSchedule};

/// The Bye reason of the session closed by the duplicate-session rule.
pub const DUPLICATE_SESSION: &str = "duplicate session";

/// Most peers tracked without a session or a dial schedule (e.g. inbound
/// peers under a permissive trust policy); the oldest are forgotten.
const MAX_IDLE_ENTRIES: usize = 1024;

/// Most discovered addresses waiting per peer.
const MAX_FOUND: usize = 4;
/// The same discovered address wakes the dialer at most this often.
const REOFFER_AFTER: Duration = Duration::from_secs(30);

/// Who opened the TCP connection of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// The peer connected to us.
    #[serde(rename = "in")]
    Inbound,
    /// We connected to the peer.
    #[serde(rename = "out")]
    Outbound,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "in",
            Direction::Outbound => "out",
        })
    }
}

/// The duplicate-session rule (docs/PROTOCOL.md, "One session per peer").
/// With an authenticated session to `peer` already registered, returns true
/// when the `new` session replaces the `existing` one:
///
/// * different directions (both sides dialled at once): the session whose
///   TCP connection was opened by the peer with the lower public key bytes
///   survives; both sides compute the same answer;
/// * same direction (the initiator reconnected while its old session was
///   still open here): the newer session survives.
pub fn new_session_wins(
    ours: &PublicKey,
    peer: &PublicKey,
    existing: Direction,
    new: Direction,
) -> bool {
    if existing == new {
        return true;
    }
    let (new_initiator, old_initiator) = match new {
        Direction::Outbound => (ours, peer),
        Direction::Inbound => (peer, ours),
    };
    new_initiator.as_bytes() < old_initiator.as_bytes()
}

/// A peer as the node sees it. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's public key (64 hex characters in JSON).
    pub pubkey: PublicKey,
    /// An authenticated session is open.
    pub connected: bool,
    /// Direction of the open session (or of the last one).
    pub direction: Option<Direction>,
    /// Socket address of the open session, else the last address dialled.
    pub addr: Option<String>,
    /// When the open session was authenticated.
    pub connected_since_ms: Option<u64>,
    /// Last time anything was received from the peer.
    pub last_seen_ms: Option<u64>,
    /// Last measured round-trip time (Ping → Pong), in microseconds.
    pub rtt_us: Option<u64>,
    /// Delay the next failed attempt will wait, un-jittered (dialled peers only).
    pub backoff_ms: Option<u64>,
    /// When the dialer will try next (dialled peers without a session only).
    pub next_attempt_ms: Option<u64>,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// The last dial or session error.
    pub last_error: Option<String>,
}

/// Dial settings.
#[derive(Debug, Clone, Copy)]
pub struct DialParams {
    /// The first backoff delay.
    pub base: Duration,
    /// The longest backoff delay.
    pub cap: Duration,
    /// A session lasting this long resets the backoff.
    pub healthy: Duration,
}

/// One dial the dialer should start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DialJob {
    pub pubkey: PublicKey,
    pub addr: String,
    /// The address came from LAN discovery (stored on success).
    pub discovered: bool,
}

/// What [`Sessions::plan_dials`] decided.
#[derive(Debug, Default)]
pub(crate) struct DialPlan {
    /// The dials to start now.
    pub jobs: Vec<DialJob>,
    /// Something the status shows changed.
    pub changed: bool,
}

/// What [`Sessions::register`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registered {
    /// The new session is registered under `id`.
    New {
        id: u64,
        /// The session it replaced: close it with [`DUPLICATE_SESSION`].
        displaced: Option<u64>,
        /// The peer store as last read does not trust the key (see
        /// [`Sessions::set_trusted`]): the dialer must read it again now.
        recheck: bool,
        /// Dials that were failing are due now (the network came back):
        /// the dialer should look now.
        woke: bool,
    },
    /// The duplicate rule keeps the registered session `kept`: the new one
    /// is to be closed, and `kept` probed so that a dead one is noticed soon.
    Kept { kept: u64 },
}

/// A session to close (see [`Sessions::set_trusted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ToClose {
    pub pubkey: PublicKey,
    pub id: u64,
    /// A client session (else the peer session).
    pub client: bool,
}

/// The open peer session.
#[derive(Debug, Clone, Copy)]
struct Live {
    id: u64,
    direction: Direction,
    addr: SocketAddr,
    since: SystemTime,
}

#[derive(Debug, Default)]
struct Entry {
    session: Option<Live>,
    dial: Option<DialSchedule>,
    /// Addresses from the peer store (most recent last).
    addresses: Vec<String>,
    dialing: bool,
    direction: Option<Direction>,
    last_addr: Option<String>,
    last_seen: Option<SystemTime>,
    rtt: Option<Duration>,
    last_error: Option<String>,
    touched: Option<Instant>,
    /// Addresses found by LAN discovery, tried before the stored ones.
    found: VecDeque<String>,
    /// The last address offered by discovery, and when.
    offered: Option<(String, Instant)>,
}

impl Entry {
    /// Nothing to remember but history: may be forgotten.
    fn idle(&self) -> bool {
        self.session.is_none() && self.dial.is_none() && !self.dialing && self.found.is_empty()
    }
}

/// The sessions and dial schedules of one node, without I/O (see the
/// module doc).
pub(crate) struct Sessions {
    ours: PublicKey,
    params: DialParams,
    /// The backoff's jitter draws.
    rng: StdRng,
    /// By key, so that every walk over them goes in one order (keys are
    /// ordered by their bytes): the same inputs give the same outputs.
    peers: BTreeMap<PublicKey, Entry>,
    /// Client session ids by key.
    clients: BTreeMap<PublicKey, Vec<u64>>,
    /// The keys trusted in the peer store as last read (None before the
    /// first read, or without a peer store).
    trusted: Option<HashSet<PublicKey>>,
    next_id: u64,
    /// When failing dials were last woken because a peer that could not be
    /// reached came back (at most every [`WAKE_EVERY`]).
    woke: Option<Instant>,
}

/// Failing dials are woken early at most this often.
pub(crate) const WAKE_EVERY: Duration = Duration::from_secs(5);

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `t` on the wall clock, given that `now` is `wall`.
fn instant_to_unix_ms(t: Instant, now: Instant, wall: SystemTime) -> u64 {
    let wall_t = if t >= now {
        wall.checked_add(t - now)
    } else {
        wall.checked_sub(now - t)
    };
    wall_t.map(unix_ms).unwrap_or(0)
}

/// Addresses the dialer has been offered for a peer, newest last.
fn push_bounded(q: &mut VecDeque<String>, addr: String, cap: usize) {
    q.retain(|a| *a != addr);
    q.push_back(addr);
    while q.len() > cap {
        q.pop_front();
    }
}

impl Sessions {
    /// The sessions of the node `ours`; `seed` seeds the backoff's jitter.
    pub fn new(ours: PublicKey, params: DialParams, seed: u64) -> Sessions {
        Sessions {
            ours,
            params,
            rng: StdRng::seed_from_u64(seed),
            peers: BTreeMap::new(),
            clients: BTreeMap::new(),
            trusted: None,
            next_id: 1,
            woke: None,
        }
    }

    fn new_schedule(&self) -> DialSchedule {
        DialSchedule::new(
            Backoff::new(self.params.base, self.params.cap),
            self.params.healthy,
        )
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// True when the peer store as last read does not trust `peer`: the
    /// session was authorized on an older view (or by a policy that does not
    /// use the store) and the dialer must read the store again now, then
    /// close it if it is still not trusted. Without this, a session
    /// authorized just before a block and registered just after the refresh
    /// that applied it would stay open until the next change.
    fn untrusted(&self, peer: &PublicKey) -> bool {
        self.trusted.as_ref().is_some_and(|t| !t.contains(peer))
    }

    /// An authenticated peer session with `peer` at `addr`, opened in
    /// `direction`, at `now` (`wall` on the wall clock): registered unless
    /// the duplicate rule keeps the one already registered.
    pub fn register(
        &mut self,
        peer: PublicKey,
        direction: Direction,
        addr: SocketAddr,
        now: Instant,
        wall: SystemTime,
    ) -> Registered {
        let id = self.take_id();
        let ours = self.ours;
        let e = self.peers.entry(peer).or_default();
        if direction == Direction::Outbound {
            // The dial that made this session is over, whatever happens next.
            e.dialing = false;
        }
        let mut displaced = None;
        if let Some(old) = &e.session {
            if !new_session_wins(&ours, &peer, old.direction, direction) {
                return Registered::Kept { kept: old.id };
            }
            displaced = Some(old.id);
        }
        e.session = Some(Live {
            id,
            direction,
            addr,
            since: wall,
        });
        e.direction = Some(direction);
        e.last_addr = Some(addr.to_string());
        e.last_seen = Some(wall);
        e.last_error = None;
        e.touched = Some(now);
        let was_failing = e.dial.as_ref().is_some_and(|d| d.failures() > 0);
        if let Some(d) = &mut e.dial {
            d.connected(now);
        }
        // A peer we could not reach is back: the network (or our link)
        // likely is, so dials that were failing go now instead of waiting
        // out their backoff (their failure counts stay).
        let woke = was_failing
            && self
                .woke
                .is_none_or(|t| now.saturating_duration_since(t) >= WAKE_EVERY)
            && self.wake_failing(now);
        Registered::New {
            id,
            displaced,
            recheck: self.untrusted(&peer),
            woke,
        }
    }

    /// Makes every failing dial due now; whether there was one.
    fn wake_failing(&mut self, now: Instant) -> bool {
        let mut any = false;
        for e in self.peers.values_mut() {
            if e.session.is_some() || e.dialing {
                continue;
            }
            if let Some(d) = e.dial.as_mut().filter(|d| d.failures() > 0) {
                d.wake();
                any = true;
            }
        }
        if any {
            self.woke = Some(now);
        }
        any
    }

    /// An authenticated client session (inbound, no listen port): it is
    /// closed like a peer session when its key stops being trusted, but it
    /// neither displaces nor loses to any other session. Returns its id and
    /// whether the dialer must read the peer store again (see
    /// [`Registered::New`]).
    pub fn register_client(&mut self, peer: PublicKey) -> (u64, bool) {
        let id = self.take_id();
        self.clients.entry(peer).or_default().push(id);
        (id, self.untrusted(&peer))
    }

    /// The client session `id` of `peer` ended.
    pub fn unregister_client(&mut self, peer: &PublicKey, id: u64) {
        if let Some(v) = self.clients.get_mut(peer) {
            v.retain(|i| *i != id);
            if v.is_empty() {
                self.clients.remove(peer);
            }
        }
    }

    /// Client sessions open.
    pub fn client_sessions(&self) -> usize {
        self.clients.values().map(Vec::len).sum()
    }

    /// The peer session `id` ended at `now` (`superseded`: closed by the
    /// duplicate-session rule; `error`: why, when the peer or the network
    /// ended it). Returns true when it was the registered one: the status
    /// changed and the dialer should look again.
    pub fn unregister(
        &mut self,
        peer: &PublicKey,
        id: u64,
        error: Option<String>,
        superseded: bool,
        now: Instant,
        wall: SystemTime,
    ) -> bool {
        let Some(e) = self.peers.get_mut(peer) else {
            return false;
        };
        if e.session.as_ref().map(|s| s.id) != Some(id) {
            return false;
        }
        e.session = None;
        e.last_seen = Some(wall);
        e.touched = Some(now);
        if superseded {
            if let Some(d) = &mut e.dial {
                d.superseded(now);
            }
        } else {
            if error.is_some() {
                e.last_error = error;
            }
            if let Some(d) = &mut e.dial {
                d.disconnected_with(now, self.rng.gen::<f64>());
            }
        }
        self.prune();
        true
    }

    /// Forgets the oldest idle peers beyond [`MAX_IDLE_ENTRIES`].
    fn prune(&mut self) {
        let n = self.peers.values().filter(|e| e.idle()).count();
        if n <= MAX_IDLE_ENTRIES {
            return;
        }
        let mut idle_keys: Vec<(Option<Instant>, [u8; 32])> = self
            .peers
            .iter()
            .filter(|(_, e)| e.idle())
            .map(|(k, e)| (e.touched, *k.as_bytes()))
            .collect();
        idle_keys.sort();
        let forget: HashSet<[u8; 32]> = idle_keys
            .into_iter()
            .take(n - MAX_IDLE_ENTRIES)
            .map(|(_, k)| k)
            .collect();
        self.peers.retain(|k, _| !forget.contains(k.as_bytes()));
    }

    /// Traffic from the peer at `wall`, with a round-trip time when one was
    /// measured.
    pub fn seen(&mut self, peer: &PublicKey, rtt: Option<Duration>, wall: SystemTime) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.last_seen = Some(wall);
            if rtt.is_some() {
                e.rtt = rtt;
            }
        }
    }

    /// The id of the peer's registered session.
    pub fn session(&self, peer: &PublicKey) -> Option<u64> {
        self.peers.get(peer)?.session.as_ref().map(|s| s.id)
    }

    /// Authenticated peer sessions open.
    pub fn sessions(&self) -> usize {
        self.peers.values().filter(|e| e.session.is_some()).count()
    }

    /// The peer store now trusts exactly `trusted`: returns every session,
    /// peer or client, of any other key, to be closed (peer sessions first,
    /// each part ordered by key, then id), and remembers the set for
    /// sessions registered later (see [`Registered::New`]). The sessions stay
    /// registered until they are unregistered.
    pub fn set_trusted(&mut self, trusted: HashSet<PublicKey>) -> Vec<ToClose> {
        // In key order (the maps'), peer sessions first, client ids in the
        // order they were given.
        let mut peers: Vec<ToClose> = self
            .peers
            .iter()
            .filter(|(k, _)| !trusted.contains(k))
            .filter_map(|(k, e)| {
                e.session.as_ref().map(|s| ToClose {
                    pubkey: *k,
                    id: s.id,
                    client: false,
                })
            })
            .collect();
        let clients: Vec<ToClose> = self
            .clients
            .iter()
            .filter(|(k, _)| !trusted.contains(k))
            .flat_map(|(k, ids)| {
                ids.iter().map(|id| ToClose {
                    pubkey: *k,
                    id: *id,
                    client: true,
                })
            })
            .collect();
        peers.extend(clients);
        self.trusted = Some(trusted);
        peers
    }

    /// Outbound sessions plus dials in flight.
    fn outbound_load(&self) -> usize {
        self.peers
            .values()
            .filter(|e| {
                e.dialing
                    || e.session
                        .as_ref()
                        .is_some_and(|s| s.direction == Direction::Outbound)
            })
            .count()
    }

    /// Updates the set of peers to dial (`targets`: trusted, with their
    /// addresses in the peer store, most recent last) and returns the dials
    /// due at `now`, at most `max_outbound` outbound at once counting the
    /// outbound sessions and the dials in flight. Each is in flight until
    /// [`Sessions::dial_finished`] or the [`Sessions::register`] of its
    /// outbound session.
    pub fn plan_dials(
        &mut self,
        targets: Vec<(PublicKey, Vec<String>)>,
        max_outbound: usize,
        now: Instant,
    ) -> DialPlan {
        let mut wanted: BTreeMap<PublicKey, Vec<String>> = BTreeMap::new();
        for (k, addrs) in targets {
            let found = self.peers.get(&k).is_some_and(|e| !e.found.is_empty());
            if k != self.ours && (!addrs.is_empty() || found) {
                wanted.insert(k, addrs);
            }
        }
        let mut changed = false;
        for (k, e) in self.peers.iter_mut() {
            if !wanted.contains_key(k) {
                e.found.clear();
                if e.dial.is_some() {
                    e.dial = None;
                    e.addresses.clear();
                    changed = true;
                }
            }
        }
        for (k, addrs) in &wanted {
            let sched = self.new_schedule();
            let e = self.peers.entry(*k).or_default();
            if e.dial.is_none() {
                let mut s = sched;
                if e.session.is_some() {
                    s.connected(now);
                }
                e.dial = Some(s);
                changed = true;
            }
            if e.addresses != *addrs {
                e.addresses = addrs.clone();
                if let Some(d) = &mut e.dial {
                    d.wake();
                }
                changed = true;
            }
        }
        self.prune();
        let mut budget = max_outbound.saturating_sub(self.outbound_load());
        let mut jobs = vec![];
        let due: Vec<PublicKey> = self
            .peers
            .iter()
            .filter(|(_, e)| {
                // A discovered address is tried at once, backoff or not.
                e.session.is_none()
                    && !e.dialing
                    && e.dial.as_ref().is_some_and(|d| {
                        !e.found.is_empty() || (!e.addresses.is_empty() && d.due(now))
                    })
            })
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if budget == 0 {
                break;
            }
            let e = self.peers.get_mut(&k).expect("key from the map");
            let failures = e.dial.as_ref().map(|d| d.failures()).unwrap_or(0) as usize;
            let n = e.addresses.len();
            // A discovered address first (newest), else the newest stored
            // address, then the others in turn.
            let (addr, discovered) = match e.found.pop_back() {
                Some(a) => (a, true),
                None => (e.addresses[n - 1 - failures % n].clone(), false),
            };
            e.dialing = true;
            e.last_addr = Some(addr.clone());
            budget -= 1;
            jobs.push(DialJob {
                pubkey: k,
                addr,
                discovered,
            });
            changed = true;
        }
        DialPlan { jobs, changed }
    }

    /// LAN discovery found `peer` (already checked to be trusted) at `addr`
    /// at `now`: unless a session is open, it is dialled there next, before
    /// its stored addresses and without waiting for its backoff. The same
    /// address is taken again at most every 30 s. Returns whether the
    /// dialer should look now.
    pub fn offer_address(&mut self, peer: &PublicKey, addr: String, now: Instant) -> bool {
        if *peer == self.ours {
            return false;
        }
        let e = self.peers.entry(*peer).or_default();
        if e.session.is_some() {
            return false;
        }
        if let Some((a, t)) = &e.offered {
            if *a == addr && now.saturating_duration_since(*t) < REOFFER_AFTER {
                return false;
            }
        }
        e.offered = Some((addr.clone(), now));
        e.touched = Some(now);
        push_bounded(&mut e.found, addr, MAX_FOUND);
        if let Some(d) = &mut e.dial {
            d.wake();
        }
        true
    }

    /// A dial of `peer` finished at `now`: `Err` with the error text when it
    /// failed (the backoff grows), `Ok` when it produced a session or lost
    /// to another session by the duplicate rule. Returns the delay to the
    /// next attempt on failure.
    pub fn dial_finished(
        &mut self,
        peer: &PublicKey,
        result: Result<(), String>,
        now: Instant,
    ) -> Option<Duration> {
        let e = self.peers.get_mut(peer)?;
        e.dialing = false;
        e.touched = Some(now);
        let Err(err) = result else {
            return None;
        };
        e.last_error = Some(err);
        let d = e.dial.as_mut()?;
        Some(d.failed_with(now, self.rng.gen::<f64>()))
    }

    /// When the dialer must look again at the latest.
    pub fn next_due(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter(|e| e.session.is_none() && !e.dialing)
            .filter_map(|e| e.dial.as_ref().and_then(|d| d.next_attempt()))
            .min()
    }

    /// The status of every tracked peer, ordered by key, at `now` (`wall`
    /// on the wall clock).
    pub fn snapshot(&self, now: Instant, wall: SystemTime) -> Vec<PeerStatus> {
        let mut v: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|(k, e)| PeerStatus {
                pubkey: *k,
                connected: e.session.is_some(),
                direction: e.session.as_ref().map(|s| s.direction).or(e.direction),
                addr: e
                    .session
                    .as_ref()
                    .map(|s| s.addr.to_string())
                    .or_else(|| e.last_addr.clone()),
                connected_since_ms: e.session.as_ref().map(|s| unix_ms(s.since)),
                last_seen_ms: e.last_seen.map(unix_ms),
                rtt_us: e.rtt.map(|d| d.as_micros() as u64),
                backoff_ms: e
                    .dial
                    .as_ref()
                    .map(|d| d.current_backoff().as_millis() as u64),
                next_attempt_ms: e
                    .dial
                    .as_ref()
                    .filter(|_| e.session.is_none() && !e.dialing)
                    .and_then(|d| d.next_attempt())
                    .map(|t| instant_to_unix_ms(t, now, wall)),
                failures: e.dial.as_ref().map(|d| d.failures()).unwrap_or(0),
                last_error: e.last_error.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.pubkey.as_bytes().cmp(b.pubkey.as_bytes()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmogit_identity::Identity;

    fn key(n: u8) -> PublicKey {
        Identity::from_secret_bytes(&[n; 32]).public_key()
    }

    /// The default dial settings: 1 s doubling up to 5 min; 10 s is healthy.
    const PARAMS: DialParams = DialParams {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
        healthy: Duration::from_secs(10),
    };

    /// A virtual clock: times are milliseconds after a start.
    struct Clock {
        start: Instant,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                start: Instant::now(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.start + Duration::from_millis(ms)
        }

        /// The wall clock at `t`.
        fn wall(&self, t: Instant) -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(1_700_000_000) + (t - self.start)
        }

        /// `t` in whole milliseconds after the start.
        fn ms(&self, t: Instant) -> u64 {
            (t - self.start).as_millis() as u64
        }
    }

    fn trusted(keys: &[PublicKey]) -> HashSet<PublicKey> {
        keys.iter().copied().collect()
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn status(s: &Sessions, peer: &PublicKey, now: Instant, clock: &Clock) -> PeerStatus {
        s.snapshot(now, clock.wall(now))
            .into_iter()
            .find(|p| p.pubkey == *peer)
            .expect("peer tracked")
    }

    #[test]
    fn duplicate_rule_is_symmetric() {
        for (a, b) in [(1u8, 2u8), (2, 1), (3, 9), (9, 3)] {
            let (ka, kb) = (key(a), key(b));
            let a_lower = ka.as_bytes() < kb.as_bytes();
            // On A: the connection A opened is Outbound, B's is Inbound.
            // Whichever registered first, A keeps the one opened by the lower key.
            let a_keeps_own_if_out_new =
                new_session_wins(&ka, &kb, Direction::Inbound, Direction::Outbound);
            let a_keeps_theirs_if_in_new =
                new_session_wins(&ka, &kb, Direction::Outbound, Direction::Inbound);
            assert_eq!(a_keeps_own_if_out_new, a_lower);
            assert_eq!(a_keeps_theirs_if_in_new, !a_lower);
            // On B the same connection (opened by A) is Inbound.
            let b_keeps_a_conn =
                new_session_wins(&kb, &ka, Direction::Outbound, Direction::Inbound);
            assert_eq!(b_keeps_a_conn, a_lower);
            // Same direction: the newer wins.
            assert!(new_session_wins(
                &ka,
                &kb,
                Direction::Inbound,
                Direction::Inbound
            ));
        }
    }

    /// The delay of the `n`th failure in a row (from 0) with the jitter draw
    /// `unit`, as backoff.rs documents it: base doubling up to the cap,
    /// times a factor in [0.8, 1.2], never above the cap.
    fn expected_delay(n: u32, unit: f64) -> Duration {
        let unjittered = PARAMS.base.saturating_mul(1 << n.min(20)).min(PARAMS.cap);
        unjittered
            .mul_f64(1.0 + Backoff::DEFAULT_JITTER * (2.0 * unit - 1.0))
            .min(PARAMS.cap)
    }

    #[test]
    fn a_peer_that_comes_back_wakes_the_other_failing_dials() {
        let clock = Clock::new();
        let (us, p, q, r) = (key(1), key(2), key(3), key(4));
        let targets = || {
            vec![
                (p, vec!["10.0.0.2:7420".to_string()]),
                (q, vec!["10.0.0.3:7420".to_string()]),
                (r, vec!["10.0.0.4:7420".to_string()]),
            ]
        };
        let mut s = Sessions::new(us, PARAMS, 3);
        s.set_trusted(trusted(&[p, q, r]));
        // Every dial fails, again and again, until each has failed 4 times.
        let mut now = clock.at(0);
        let failures = |s: &Sessions, now: Instant| {
            s.snapshot(now, clock.wall(now))
                .iter()
                .map(|st| st.failures)
                .min()
                .unwrap_or(0)
        };
        while failures(&s, now) < 4 {
            for job in s.plan_dials(targets(), 8, now).jobs {
                s.dial_finished(&job.pubkey, Err("timed out".into()), now);
            }
            now = s.next_due().expect("scheduled");
        }
        // Just before the next attempt: nobody is due.
        let now = now - Duration::from_millis(1);
        assert!(
            s.plan_dials(targets(), 8, now).jobs.is_empty(),
            "waiting out backoffs"
        );
        // p dials us (the cut healed): the others are dialled now.
        let reg = s.register(
            p,
            Direction::Inbound,
            sock("10.0.0.2:5000"),
            now,
            clock.wall(now),
        );
        assert!(matches!(reg, Registered::New { woke: true, .. }));
        let plan = s.plan_dials(targets(), 8, now);
        let mut dialled: Vec<PublicKey> = plan.jobs.iter().map(|j| j.pubkey).collect();
        dialled.sort();
        let mut want = vec![q, r];
        want.sort();
        assert_eq!(dialled, want);
        // They fail again: their backoff goes on growing (the failures were
        // kept), and a peer back again within WAKE_EVERY wakes nobody.
        for peer in [q, r] {
            let d = s
                .dial_finished(&peer, Err("timed out".into()), now)
                .unwrap();
            assert!(
                d >= Duration::from_secs(12),
                "the 5th failure waits 16 s ± 20 %: {d:?}"
            );
        }
        s.unregister(&p, 1, None, false, now, clock.wall(now));
        let again = now + Duration::from_secs(1);
        let reg = s.register(
            p,
            Direction::Inbound,
            sock("10.0.0.2:5001"),
            again,
            clock.wall(again),
        );
        assert!(matches!(reg, Registered::New { woke: false, .. }));
    }

    /// One trusted peer that refuses six dials, then holds a healthy
    /// session, then one that dies at once. Checks each attempt against the
    /// documented schedule drawn from the same seed, and returns the
    /// attempt times in milliseconds.
    fn dial_schedule(seed: u64) -> Vec<u64> {
        let clock = Clock::new();
        let (us, peer) = (key(1), key(2));
        let addr = "10.0.0.2:7420".to_string();
        let targets = || vec![(peer, vec![addr.clone()])];
        let job = DialJob {
            pubkey: peer,
            addr: addr.clone(),
            discovered: false,
        };
        let mut s = Sessions::new(us, PARAMS, seed);
        let mut draws = StdRng::seed_from_u64(seed);
        s.set_trusted(trusted(&[peer]));
        let mut attempts = vec![];

        // Dialled at once, then each failure waits the next delay.
        let mut now = clock.at(0);
        for n in 0..6 {
            if n > 0 {
                let due = s.next_due().expect("an attempt is scheduled");
                let early = s.plan_dials(targets(), 8, due - Duration::from_millis(1));
                assert!(early.jobs.is_empty(), "not dialled before it is due");
                now = due;
            }
            let plan = s.plan_dials(targets(), 8, now);
            assert_eq!(plan.jobs, vec![job.clone()]);
            assert!(s.plan_dials(targets(), 8, now).jobs.is_empty(), "in flight");
            assert_eq!(s.next_due(), None, "nothing to wait for while dialling");
            attempts.push(clock.ms(now));
            let delay = s.dial_finished(&peer, Err("connection refused".into()), now);
            let want = expected_delay(n, draws.gen::<f64>());
            assert_eq!(delay, Some(want));
            assert_eq!(s.next_due(), Some(now + want));
            let st = status(&s, &peer, now, &clock);
            assert_eq!(st.failures, n + 1);
            assert_eq!(st.backoff_ms, Some(1000 << (n + 1)));
            assert_eq!(st.last_error.as_deref(), Some("connection refused"));
            assert_eq!(
                st.next_attempt_ms,
                Some(1_700_000_000_000 + clock.ms(now + want))
            );
        }

        // The next dial works and the session lasts 10 s (healthy): the
        // backoff starts again from 1 s once it ends.
        now = s.next_due().unwrap();
        assert_eq!(s.plan_dials(targets(), 8, now).jobs, vec![job.clone()]);
        attempts.push(clock.ms(now));
        let Registered::New { id, displaced, .. } = s.register(
            peer,
            Direction::Outbound,
            sock("10.0.0.2:7420"),
            now,
            clock.wall(now),
        ) else {
            panic!("the only session is registered");
        };
        assert_eq!(displaced, None);
        let st = status(&s, &peer, now, &clock);
        assert!(st.connected);
        assert_eq!(st.last_error, None);
        assert_eq!(st.next_attempt_ms, None);
        assert_eq!(s.next_due(), None, "never dialled while connected");
        now += PARAMS.healthy;
        assert!(s.plan_dials(targets(), 8, now).jobs.is_empty());
        assert!(s.unregister(&peer, id, Some("reset".into()), false, now, clock.wall(now)));
        let want = expected_delay(0, draws.gen::<f64>());
        assert_eq!(s.next_due(), Some(now + want), "healthy: from base again");
        let st = status(&s, &peer, now, &clock);
        assert_eq!((st.failures, st.backoff_ms), (1, Some(2000)));
        assert_eq!(st.last_error.as_deref(), Some("reset"));

        // A session that dies at once counts as a failure: 2 s.
        now = s.next_due().unwrap();
        assert_eq!(s.plan_dials(targets(), 8, now).jobs, vec![job.clone()]);
        attempts.push(clock.ms(now));
        let Registered::New { id, .. } = s.register(
            peer,
            Direction::Outbound,
            sock("10.0.0.2:7420"),
            now,
            clock.wall(now),
        ) else {
            panic!("the only session is registered");
        };
        now += Duration::from_millis(300);
        assert!(s.unregister(&peer, id, None, false, now, clock.wall(now)));
        let want = expected_delay(1, draws.gen::<f64>());
        assert_eq!(s.next_due(), Some(now + want), "short: backoff grows");
        attempts.push(clock.ms(now + want));
        attempts
    }

    #[test]
    fn dials_back_off_on_the_seeded_schedule() {
        // Un-jittered: attempts at 0, 1, 3, 7, 15, 31 s, the one that works
        // at 63 s, then 1 s after its healthy session (10 s) ends, 2 s after
        // the short one (0.3 s). Seed 7 (rand 0.8's StdRng) draws factors
        // 0.81, 0.92, 0.86, 1.02, 0.91, 1.18, 0.87, 0.90:
        let times = dial_schedule(7);
        assert_eq!(
            times,
            [0, 812, 2657, 6086, 14222, 28766, 66540, 77410, 79516]
        );
        assert_eq!(dial_schedule(7), times, "same seed, same schedule");
        let other = dial_schedule(8);
        assert_ne!(other, times, "another seed, other jitter");
        assert_eq!(other.len(), times.len());
    }

    /// Which of the two connections of a simultaneous dial.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Conn {
        /// Opened by A.
        FromA,
        /// Opened by B.
        FromB,
    }

    /// One side of a simultaneous dial: registers both connections in
    /// `order` at `now` and returns the ids registered and the connections
    /// this side closes by the duplicate rule.
    fn register_both(
        s: &mut Sessions,
        peer: PublicKey,
        order: [(Conn, Direction); 2],
        now: Instant,
        clock: &Clock,
    ) -> (Vec<(Conn, u64)>, Vec<Conn>) {
        let mut ids: Vec<(Conn, u64)> = vec![];
        let mut closed = vec![];
        for (conn, direction) in order {
            match s.register(peer, direction, sock("10.0.0.9:1"), now, clock.wall(now)) {
                Registered::New { id, displaced, .. } => {
                    if let Some(old) = displaced {
                        let (c, _) = ids.iter().find(|(_, i)| *i == old).unwrap();
                        closed.push(*c);
                    }
                    ids.push((conn, id));
                }
                Registered::Kept { kept } => {
                    assert!(ids.iter().any(|(_, i)| *i == kept));
                    closed.push(conn);
                    if direction == Direction::Outbound {
                        // Our dial lost to the other session: not a failure.
                        assert_eq!(s.dial_finished(&peer, Ok(()), now), None);
                    }
                }
            }
        }
        (ids, closed)
    }

    #[test]
    fn simultaneous_dial_keeps_one_session_on_both_sides() {
        let clock = Clock::new();
        let now = clock.at(5_000);
        for (ka, kb) in [(key(1), key(2)), (key(2), key(1))] {
            // The connection opened by the lower key survives.
            let survivor = if ka.as_bytes() < kb.as_bytes() {
                Conn::FromA
            } else {
                Conn::FromB
            };
            for (a_out_first, b_out_first) in
                [(true, true), (true, false), (false, true), (false, false)]
            {
                let mut a = Sessions::new(ka, PARAMS, 1);
                let mut b = Sessions::new(kb, PARAMS, 2);
                a.set_trusted(trusted(&[kb]));
                b.set_trusted(trusted(&[ka]));
                // Each dials the other at the same time.
                let ja = a.plan_dials(vec![(kb, vec!["10.0.0.2:1".into()])], 8, now);
                let jb = b.plan_dials(vec![(ka, vec!["10.0.0.1:1".into()])], 8, now);
                assert_eq!((ja.jobs.len(), jb.jobs.len()), (1, 1));
                // FromA is outbound on A and inbound on B; FromB the reverse.
                let a_out = (Conn::FromA, Direction::Outbound);
                let a_in = (Conn::FromB, Direction::Inbound);
                let b_out = (Conn::FromB, Direction::Outbound);
                let b_in = (Conn::FromA, Direction::Inbound);
                let a_order = if a_out_first {
                    [a_out, a_in]
                } else {
                    [a_in, a_out]
                };
                let b_order = if b_out_first {
                    [b_out, b_in]
                } else {
                    [b_in, b_out]
                };
                let (a_ids, a_closed) = register_both(&mut a, kb, a_order, now, &clock);
                let (b_ids, b_closed) = register_both(&mut b, ka, b_order, now, &clock);
                // A connection closed on one side ends on the other with the
                // duplicate reason: superseded there.
                for (s, peer, ids, closed) in [
                    (&mut a, kb, &a_ids, &b_closed),
                    (&mut b, ka, &b_ids, &a_closed),
                ] {
                    for c in closed.iter() {
                        if let Some((_, id)) = ids.iter().find(|(conn, _)| conn == c) {
                            s.unregister(&peer, *id, None, true, now, clock.wall(now));
                        }
                    }
                }
                let kept = |s: &Sessions, peer: &PublicKey, ids: &[(Conn, u64)]| {
                    let id = s.session(peer).expect("a session survives");
                    ids.iter().find(|(_, i)| *i == id).unwrap().0
                };
                let case = format!("A out first: {a_out_first}, B out first: {b_out_first}");
                assert_eq!(kept(&a, &kb, &a_ids), survivor, "{case}");
                assert_eq!(kept(&b, &ka, &b_ids), survivor, "{case}");
                let mut all_closed = a_closed.clone();
                all_closed.extend(&b_closed);
                assert!(!all_closed.contains(&survivor), "{case}");
                assert!(!all_closed.is_empty(), "{case}: the other one is closed");
                assert_eq!((a.sessions(), b.sessions()), (1, 1));
                let (sa, sb) = (status(&a, &kb, now, &clock), status(&b, &ka, now, &clock));
                assert!(sa.connected && sb.connected);
                let pair = (sa.direction.unwrap(), sb.direction.unwrap());
                let want = match survivor {
                    Conn::FromA => (Direction::Outbound, Direction::Inbound),
                    Conn::FromB => (Direction::Inbound, Direction::Outbound),
                };
                assert_eq!(pair, want, "{case}");
                // Nobody dials again while the session is open.
                for (s, peer) in [(&mut a, kb), (&mut b, ka)] {
                    let later = now + Duration::from_secs(3600);
                    let plan = s.plan_dials(vec![(peer, vec!["10.0.0.3:1".into()])], 8, later);
                    assert!(plan.jobs.is_empty(), "{case}");
                    assert_eq!(s.next_due(), None, "{case}");
                }
            }
        }
    }

    #[test]
    fn a_blocked_peer_is_closed_and_no_longer_dialled() {
        let clock = Clock::new();
        let (us, blocked, kept) = (key(1), key(2), key(3));
        let mut s = Sessions::new(us, PARAMS, 3);
        let store = |keys: &[PublicKey]| -> Vec<(PublicKey, Vec<String>)> {
            keys.iter()
                .map(|k| (*k, vec![format!("10.0.0.{}:1", k.as_bytes()[0])]))
                .collect()
        };
        let mut now = clock.at(0);
        s.set_trusted(trusted(&[blocked, kept]));
        let plan = s.plan_dials(store(&[blocked, kept]), 8, now);
        assert_eq!(plan.jobs.len(), 2);
        let Registered::New { id, .. } = s.register(
            blocked,
            Direction::Outbound,
            sock("10.0.0.2:1"),
            now,
            clock.wall(now),
        ) else {
            panic!("registered");
        };
        s.dial_finished(&kept, Err("refused".into()), now);
        let (c1, _) = s.register_client(blocked);
        let (c2, _) = s.register_client(blocked);
        let (c3, _) = s.register_client(kept);
        assert_eq!((s.sessions(), s.client_sessions()), (1, 3));

        // The store blocks one key: its peer session and both its client
        // sessions are to be closed, the other key's client session not.
        now = clock.at(2_000);
        let closed = s.set_trusted(trusted(&[kept]));
        let close = |id, client| ToClose {
            pubkey: blocked,
            id,
            client,
        };
        assert_eq!(closed, [close(id, false), close(c1, true), close(c2, true)]);
        // The dialer then plans with the trusted keys of the store only.
        let plan = s.plan_dials(store(&[kept]), 8, now);
        assert!(plan.jobs.iter().all(|j| j.pubkey != blocked));
        // The closed sessions end (closed here: no remote error).
        assert!(s.unregister(&blocked, id, None, false, now, clock.wall(now)));
        s.unregister_client(&blocked, c1);
        s.unregister_client(&blocked, c2);
        assert_eq!((s.sessions(), s.client_sessions()), (0, 1));
        // Never dialled again: no schedule, nothing due, ever.
        let st = status(&s, &blocked, now, &clock);
        assert!(!st.connected);
        assert_eq!((st.backoff_ms, st.next_attempt_ms), (None, None));
        for ms in [2_000, 60_000, 3_600_000] {
            let t = clock.at(ms);
            let plan = s.plan_dials(store(&[kept]), 8, t);
            assert!(plan.jobs.iter().all(|j| j.pubkey != blocked));
            for j in plan.jobs {
                s.dial_finished(&j.pubkey, Err("refused".into()), t);
            }
        }
        // A session of the blocked key authorized on an older view makes
        // the dialer read the store again.
        now = clock.at(3_600_000);
        let Registered::New { recheck, .. } = s.register(
            blocked,
            Direction::Inbound,
            sock("10.0.0.2:2"),
            now,
            clock.wall(now),
        ) else {
            panic!("registered");
        };
        assert!(recheck);
        assert!(s.register_client(blocked).1);
        assert!(!s.register_client(kept).1);
        s.unregister_client(&kept, c3);
    }

    #[test]
    fn a_found_address_is_tried_before_the_stored_ones() {
        let clock = Clock::new();
        let (us, peer, lan_only) = (key(1), key(2), key(3));
        let mut s = Sessions::new(us, PARAMS, 4);
        let stored = vec!["10.0.0.2:1".to_string(), "10.0.0.3:1".to_string()];
        let targets = || vec![(peer, stored.clone()), (lan_only, vec![])];
        let job = |k, addr: &str, discovered| DialJob {
            pubkey: k,
            addr: addr.to_string(),
            discovered,
        };
        // The newest stored address first; it fails: back off ~1 s.
        let mut now = clock.at(0);
        let plan = s.plan_dials(targets(), 8, now);
        assert_eq!(plan.jobs, [job(peer, "10.0.0.3:1", false)]);
        s.dial_finished(&peer, Err("refused".into()), now);
        let due = s.next_due().unwrap();

        // Discovery finds it on the LAN: dialled there at once, backoff or not.
        now = clock.at(100);
        assert!(s.offer_address(&peer, "192.168.1.5:7420".into(), now));
        let plan = s.plan_dials(targets(), 8, now);
        assert_eq!(plan.jobs, [job(peer, "192.168.1.5:7420", true)]);
        now = clock.at(200);
        s.dial_finished(&peer, Err("refused".into()), now);
        // The same address again within 30 s is not taken.
        assert!(!s.offer_address(&peer, "192.168.1.5:7420".into(), now));
        assert!(s.plan_dials(targets(), 8, now).jobs.is_empty());
        // Back to the stored addresses, in turn, on the backoff.
        let next = s.next_due().unwrap();
        assert!(next > due);
        let plan = s.plan_dials(targets(), 8, next);
        assert_eq!(plan.jobs, [job(peer, "10.0.0.3:1", false)]);
        now = next;
        s.dial_finished(&peer, Err("refused".into()), now);
        let next = s.next_due().unwrap();
        let plan = s.plan_dials(targets(), 8, next);
        assert_eq!(plan.jobs, [job(peer, "10.0.0.2:1", false)]);
        now = next;
        s.dial_finished(&peer, Err("refused".into()), now);
        // After 30 s the same address is taken again, before the stored ones.
        now += REOFFER_AFTER;
        assert!(s.offer_address(&peer, "192.168.1.5:7420".into(), now));
        let plan = s.plan_dials(targets(), 8, now);
        assert_eq!(plan.jobs, [job(peer, "192.168.1.5:7420", true)]);

        // A trusted peer with no stored address is dialled where it was found.
        assert!(s.plan_dials(targets(), 8, now).jobs.is_empty());
        assert!(s.offer_address(&lan_only, "192.168.1.6:7420".into(), now));
        let plan = s.plan_dials(targets(), 8, now);
        assert_eq!(plan.jobs, [job(lan_only, "192.168.1.6:7420", true)]);
        // Its session opens: further offers are ignored.
        s.register(
            lan_only,
            Direction::Outbound,
            sock("192.168.1.6:7420"),
            now,
            clock.wall(now),
        );
        assert!(!s.offer_address(&lan_only, "192.168.1.7:7420".into(), now));
        // Nor is our own key ever dialled.
        assert!(!s.offer_address(&us, "192.168.1.8:7420".into(), now));
    }
}
