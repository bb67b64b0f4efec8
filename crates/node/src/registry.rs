//! The session registry: at most one authenticated session per peer key,
//! shared by inbound and outbound sessions, plus what the dialer knows about
//! each peer (backoff, next attempt, last error). Client sessions (inbound,
//! no listen port announced) are tracked too, apart from the peer sessions
//! and not subject to the one-session rule, so that a trust change ends
//! them as well. Everything here is synchronous and short; the lock is
//! never held across an await.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mmogit_identity::PublicKey;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::backoff::{Backoff, DialSchedule};
use crate::queue::SessionTx;

/// The Bye reason of the session closed by the duplicate-session rule.
pub const DUPLICATE_SESSION: &str = "duplicate session";

/// Most peers tracked without a session or a dial schedule (e.g. inbound
/// peers under a permissive trust policy); the oldest are forgotten.
const MAX_IDLE_ENTRIES: usize = 1024;

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

/// Requests to a session task from outside it.
#[derive(Default)]
pub(crate) struct SessionCtl {
    close: Mutex<Option<String>>,
    probe: AtomicBool,
    pub notify: Notify,
}

impl SessionCtl {
    pub fn close(&self, reason: &str) {
        let mut c = self.close.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_none() {
            *c = Some(reason.to_string());
        }
        drop(c);
        self.notify.notify_one();
    }

    pub fn probe(&self) {
        self.probe.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    pub fn take_close(&self) -> Option<String> {
        self.close.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub fn take_probe(&self) -> bool {
        self.probe.swap(false, Ordering::Relaxed)
    }
}

struct Live {
    id: u64,
    direction: Direction,
    addr: SocketAddr,
    since: SystemTime,
    tx: SessionTx,
    ctl: Arc<SessionCtl>,
}

#[derive(Default)]
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

/// Most discovered addresses waiting per peer.
const MAX_FOUND: usize = 4;
/// The same discovered address wakes the dialer at most this often.
const REOFFER_AFTER: Duration = Duration::from_secs(30);

/// Dial settings the registry needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DialParams {
    pub base: Duration,
    pub cap: Duration,
    pub healthy: Duration,
}

pub(crate) struct Registry {
    ours: PublicKey,
    params: DialParams,
    inner: Mutex<Inner>,
    /// Something the status file shows changed.
    pub changed: Notify,
    /// The dialer should look again (a session ended, dial_now()).
    pub dial_wake: Notify,
}

struct Inner {
    peers: HashMap<PublicKey, Entry>,
    /// Client sessions by key: (session id, its control handle).
    clients: HashMap<PublicKey, Vec<(u64, Arc<SessionCtl>)>>,
    /// The keys trusted in the peer store as last read (None before the
    /// first read, or without a peer store).
    trusted: Option<HashSet<PublicKey>>,
    next_id: u64,
}

/// One dial the dialer should start.
pub(crate) struct DialJob {
    pub pubkey: PublicKey,
    pub addr: String,
    /// The address came from LAN discovery (stored on success).
    pub discovered: bool,
}

/// Now on tokio's clock (which a test may pause), as a std `Instant`.
fn clock_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn instant_to_unix_ms(t: Instant) -> u64 {
    let now = clock_now();
    let wall = SystemTime::now();
    let wall_t = if t >= now {
        wall.checked_add(t - now)
    } else {
        wall.checked_sub(now - t)
    };
    wall_t.map(unix_ms).unwrap_or(0)
}

impl Registry {
    pub fn new(ours: PublicKey, params: DialParams) -> Registry {
        Registry {
            ours,
            params,
            inner: Mutex::new(Inner {
                peers: HashMap::new(),
                clients: HashMap::new(),
                trusted: None,
                next_id: 1,
            }),
            changed: Notify::new(),
            dial_wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_schedule(&self) -> DialSchedule {
        DialSchedule::new(
            Backoff::new(self.params.base, self.params.cap),
            self.params.healthy,
        )
    }

    /// Registers an authenticated session; `Err` when the duplicate rule
    /// keeps the session already registered (which is then probed, so a
    /// dead one is noticed soon).
    pub fn register(
        &self,
        peer: PublicKey,
        direction: Direction,
        addr: SocketAddr,
        tx: SessionTx,
        ctl: Arc<SessionCtl>,
    ) -> Result<u64, ()> {
        let now = clock_now();
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let e = inner.peers.entry(peer).or_default();
        if direction == Direction::Outbound {
            // The dial that made this session is over, whatever happens next.
            e.dialing = false;
        }
        if let Some(old) = &e.session {
            if !new_session_wins(&self.ours, &peer, old.direction, direction) {
                old.ctl.probe();
                return Err(());
            }
            old.ctl.close(DUPLICATE_SESSION);
        }
        e.session = Some(Live {
            id,
            direction,
            addr,
            since: SystemTime::now(),
            tx,
            ctl,
        });
        e.direction = Some(direction);
        e.last_addr = Some(addr.to_string());
        e.last_seen = Some(SystemTime::now());
        e.last_error = None;
        e.touched = Some(now);
        if let Some(d) = &mut e.dial {
            d.connected(now);
        }
        let recheck = Self::untrusted(&inner, &peer);
        drop(inner);
        if recheck {
            self.dial_wake.notify_one();
        }
        self.changed.notify_one();
        Ok(id)
    }

    /// True when the peer store as last read does not trust `peer`: the
    /// session was authorized on an older view (or by a policy that does not
    /// use the store) and the dialer must read the store again now, then
    /// close it if it is still not trusted. Without this, a session
    /// authorized just before a block and registered just after the refresh
    /// that applied it would stay open until the next change.
    fn untrusted(inner: &Inner, peer: &PublicKey) -> bool {
        inner.trusted.as_ref().is_some_and(|t| !t.contains(peer))
    }

    /// Registers an authenticated client session (inbound, no listen port):
    /// it is closed like a peer session when its key stops being trusted,
    /// but it neither displaces nor loses to any other session.
    pub fn register_client(&self, peer: PublicKey, ctl: Arc<SessionCtl>) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.clients.entry(peer).or_default().push((id, ctl));
        let recheck = Self::untrusted(&inner, &peer);
        drop(inner);
        if recheck {
            self.dial_wake.notify_one();
        }
        id
    }

    /// The client session `id` of `peer` ended.
    pub fn unregister_client(&self, peer: &PublicKey, id: u64) {
        let mut inner = self.lock();
        if let Some(v) = inner.clients.get_mut(peer) {
            v.retain(|(i, _)| *i != id);
            if v.is_empty() {
                inner.clients.remove(peer);
            }
        }
    }

    /// Client sessions open.
    pub fn client_sessions(&self) -> usize {
        self.lock().clients.values().map(Vec::len).sum()
    }

    /// The session `id` ended (`superseded`: by the duplicate-session rule).
    /// Returns true when it was the registered one.
    pub fn unregister(
        &self,
        peer: &PublicKey,
        id: u64,
        error: Option<String>,
        superseded: bool,
    ) -> bool {
        let now = clock_now();
        let mut inner = self.lock();
        let Some(e) = inner.peers.get_mut(peer) else {
            return false;
        };
        if e.session.as_ref().map(|s| s.id) != Some(id) {
            return false;
        }
        e.session = None;
        e.last_seen = Some(SystemTime::now());
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
                d.disconnected_with(now, rand::random::<f64>());
            }
        }
        Self::prune(&mut inner);
        drop(inner);
        self.changed.notify_one();
        self.dial_wake.notify_one();
        true
    }

    fn prune(inner: &mut Inner) {
        let idle =
            |e: &Entry| e.session.is_none() && e.dial.is_none() && !e.dialing && e.found.is_empty();
        let n = inner.peers.values().filter(|e| idle(e)).count();
        if n <= MAX_IDLE_ENTRIES {
            return;
        }
        let mut idle_keys: Vec<(Option<Instant>, PublicKey)> = inner
            .peers
            .iter()
            .filter(|(_, e)| idle(e))
            .map(|(k, e)| (e.touched, *k))
            .collect();
        idle_keys.sort_by_key(|(t, _)| *t);
        for (_, k) in idle_keys.into_iter().take(n - MAX_IDLE_ENTRIES) {
            inner.peers.remove(&k);
        }
    }

    /// Notes traffic from the peer (no status write by itself).
    pub fn seen(&self, peer: &PublicKey, rtt: Option<Duration>) {
        let mut inner = self.lock();
        if let Some(e) = inner.peers.get_mut(peer) {
            e.last_seen = Some(SystemTime::now());
            if rtt.is_some() {
                e.rtt = rtt;
            }
        }
    }

    /// The sender of the peer's session.
    pub fn sender(&self, peer: &PublicKey) -> Option<SessionTx> {
        self.lock()
            .peers
            .get(peer)
            .and_then(|e| e.session.as_ref())
            .map(|s| s.tx.clone())
    }

    /// Closes every session, peer or client, whose key `keep` rejects;
    /// returns their keys (one per session).
    fn close_unless(
        inner: &Inner,
        keep: impl Fn(&PublicKey) -> bool,
        reason: &str,
    ) -> Vec<PublicKey> {
        let mut closed = vec![];
        for (k, e) in inner.peers.iter() {
            if let Some(s) = &e.session {
                if !keep(k) {
                    s.ctl.close(reason);
                    closed.push(*k);
                }
            }
        }
        for (k, sessions) in inner.clients.iter() {
            if !keep(k) {
                for (_, ctl) in sessions {
                    ctl.close(reason);
                    closed.push(*k);
                }
            }
        }
        closed
    }

    /// The peer store now trusts exactly `trusted`: closes every session,
    /// peer or client, of any other key, and remembers the set for sessions
    /// registered later (see [`Registry::register`]). One lock for both, so
    /// no session slips between them. Returns the keys closed.
    pub fn set_trusted(&self, trusted: HashSet<PublicKey>, reason: &str) -> Vec<PublicKey> {
        let mut inner = self.lock();
        let closed = Self::close_unless(&inner, |k| trusted.contains(k), reason);
        inner.trusted = Some(trusted);
        closed
    }

    /// Authenticated sessions open.
    pub fn sessions(&self) -> usize {
        self.lock()
            .peers
            .values()
            .filter(|e| e.session.is_some())
            .count()
    }

    /// Outbound sessions plus dials in flight.
    fn outbound_load(inner: &Inner) -> usize {
        inner
            .peers
            .values()
            .filter(|e| {
                e.dialing
                    || e.session
                        .as_ref()
                        .is_some_and(|s| s.direction == Direction::Outbound)
            })
            .count()
    }

    /// Updates the set of peers to dial (trusted, with addresses, in the
    /// peer store) and returns the dials due now, at most `max_outbound`
    /// outbound at once.
    pub fn plan_dials(
        &self,
        targets: Vec<(PublicKey, Vec<String>)>,
        max_outbound: usize,
    ) -> Vec<DialJob> {
        let now = clock_now();
        let mut inner = self.lock();
        let mut wanted: HashMap<PublicKey, Vec<String>> = HashMap::new();
        for (k, addrs) in targets {
            let found = inner.peers.get(&k).is_some_and(|e| !e.found.is_empty());
            if k != self.ours && (!addrs.is_empty() || found) {
                wanted.insert(k, addrs);
            }
        }
        let mut changed = false;
        for (k, e) in inner.peers.iter_mut() {
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
            let e = inner.peers.entry(*k).or_default();
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
        Self::prune(&mut inner);
        let mut budget = max_outbound.saturating_sub(Self::outbound_load(&inner));
        let mut jobs = vec![];
        let mut due: Vec<PublicKey> = inner
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
        due.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for k in due {
            if budget == 0 {
                break;
            }
            let e = inner.peers.get_mut(&k).expect("key from the map");
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
        drop(inner);
        if changed {
            self.changed.notify_one();
        }
        jobs
    }

    /// LAN discovery found `peer` (already checked to be trusted) at
    /// `addr`: unless a session is open, it is dialled there next, before
    /// its stored addresses and without waiting for its backoff. The same
    /// address is taken again at most every 30 s. Returns whether the
    /// dialer should look now.
    pub fn offer_address(&self, peer: &PublicKey, addr: String) -> bool {
        if *peer == self.ours {
            return false;
        }
        let now = clock_now();
        let mut inner = self.lock();
        let e = inner.peers.entry(*peer).or_default();
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
        drop(inner);
        self.dial_wake.notify_one();
        true
    }

    /// A dial finished: `Err` with the error text when it failed (the
    /// backoff grows), `Ok` when it produced a session or lost to another
    /// session by the duplicate rule. Returns the delay to the next attempt
    /// on failure.
    pub fn dial_finished(&self, peer: &PublicKey, result: Result<(), String>) -> Option<Duration> {
        let now = clock_now();
        let mut inner = self.lock();
        let e = inner.peers.get_mut(peer)?;
        e.dialing = false;
        e.touched = Some(now);
        let mut delay = None;
        if let Err(err) = result {
            e.last_error = Some(err);
            if let Some(d) = &mut e.dial {
                delay = Some(d.failed_with(now, rand::random::<f64>()));
            }
        }
        drop(inner);
        self.changed.notify_one();
        self.dial_wake.notify_one();
        delay
    }

    /// When the dialer must look again at the latest.
    pub fn next_due(&self) -> Option<tokio::time::Instant> {
        self.lock()
            .peers
            .values()
            .filter(|e| e.session.is_none() && !e.dialing)
            .filter_map(|e| e.dial.as_ref().and_then(|d| d.next_attempt()))
            .min()
            .map(tokio::time::Instant::from_std)
    }

    /// The status of every tracked peer, ordered by key.
    pub fn snapshot(&self) -> Vec<PeerStatus> {
        let inner = self.lock();
        let mut v: Vec<PeerStatus> = inner
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
                    .map(instant_to_unix_ms),
                failures: e.dial.as_ref().map(|d| d.failures()).unwrap_or(0),
                last_error: e.last_error.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.pubkey.as_bytes().cmp(b.pubkey.as_bytes()));
        v
    }
}

/// Addresses the dialer has been offered for a peer, newest last.
fn push_bounded(q: &mut VecDeque<String>, addr: String, cap: usize) {
    q.retain(|a| *a != addr);
    q.push_back(addr);
    while q.len() > cap {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmogit_identity::Identity;

    fn key(n: u8) -> PublicKey {
        Identity::from_secret_bytes(&[n; 32]).public_key()
    }

    /// A registry for `us` with the default dial schedule.
    fn registry(us: PublicKey) -> Registry {
        Registry::new(
            us,
            DialParams {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(300),
                healthy: Duration::from_secs(10),
            },
        )
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

    #[tokio::test]
    async fn one_session_per_peer() {
        let (us, them) = (key(1), key(2));
        let us_lower = us.as_bytes() < them.as_bytes();
        let r = registry(us);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let c1 = Arc::new(SessionCtl::default());
        let id1 = r
            .register(them, Direction::Inbound, addr, tx.clone(), c1.clone())
            .unwrap();
        let c2 = Arc::new(SessionCtl::default());
        let second = r.register(them, Direction::Outbound, addr, tx.clone(), c2.clone());
        assert_eq!(second.is_ok(), us_lower);
        if us_lower {
            assert_eq!(c1.take_close().as_deref(), Some(DUPLICATE_SESSION));
            assert!(
                !r.unregister(&them, id1, None, true),
                "displaced, not registered"
            );
        } else {
            assert!(c1.take_probe(), "kept session is probed");
            assert!(c1.take_close().is_none());
        }
        assert_eq!(r.sessions(), 1);
        let s = r.snapshot();
        assert_eq!(s.len(), 1);
        assert!(s[0].connected);
    }

    #[tokio::test]
    async fn a_trust_change_closes_client_sessions_too() {
        let (us, them, other) = (key(1), key(2), key(3));
        let r = registry(us);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let peer = Arc::new(SessionCtl::default());
        r.register(them, Direction::Inbound, addr, tx, peer.clone())
            .unwrap();
        let clients: Vec<Arc<SessionCtl>> = (0..2).map(|_| Arc::default()).collect();
        let ids: Vec<u64> = clients
            .iter()
            .map(|c| r.register_client(them, c.clone()))
            .collect();
        let kept = Arc::new(SessionCtl::default());
        r.register_client(other, kept.clone());
        assert_eq!(r.client_sessions(), 3);
        let closed = r.set_trusted([other].into_iter().collect(), "not authorized");
        assert_eq!(closed, vec![them, them, them]);
        for c in clients.iter().chain([&peer]) {
            assert_eq!(c.take_close().as_deref(), Some("not authorized"));
        }
        assert!(kept.take_close().is_none());
        for id in ids {
            r.unregister_client(&them, id);
        }
        assert_eq!(r.client_sessions(), 1);
        // A session of an untrusted key registered after the change makes
        // the dialer read the store again.
        r.register_client(them, Arc::default());
        tokio::time::timeout(Duration::from_secs(1), r.dial_wake.notified())
            .await
            .expect("dialer woken");
    }
}
