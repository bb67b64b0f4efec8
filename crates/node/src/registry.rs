//! The session registry: the shell around [`Sessions`] (the decisions
//! about sessions and dials, in `service::sessions`). It holds the I/O side
//! of each live session, keyed by session id (its send queue and control
//! handle), reads the clocks, carries out what `Sessions` decides (closing
//! the session the duplicate rule drops, probing the one it keeps, closing
//! the sessions of keys no longer trusted) and wakes the dialer and the
//! status writer. Everything here is synchronous and short; the lock is
//! never held across an await.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mmogit_identity::PublicKey;
use tokio::sync::Notify;

use crate::queue::SessionTx;
pub(crate) use crate::service::sessions::{
    DialJob, DialParams, Direction, PeerStatus, DUPLICATE_SESSION,
};
use crate::service::sessions::{Registered, Sessions};

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

/// The I/O side of a live session.
struct Handles {
    /// The send queue (peer sessions only).
    tx: Option<SessionTx>,
    ctl: Arc<SessionCtl>,
}

pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Something the status file shows changed.
    pub changed: Notify,
    /// The dialer should look again (a session ended, dial_now()).
    pub dial_wake: Notify,
}

/// The decisions and the handles of the sessions they keep, under one lock,
/// so that no session slips between a decision and its handles.
struct Inner {
    sessions: Sessions,
    /// Live sessions, peer and client, by session id.
    handles: HashMap<u64, Handles>,
}

/// Now on tokio's clock (which a test may pause), as a std `Instant`.
fn clock_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Registry {
    pub fn new(ours: PublicKey, params: DialParams) -> Registry {
        Registry {
            // The shell may use randomness; the decisions take it as a seed.
            inner: Mutex::new(Inner {
                sessions: Sessions::new(ours, params, rand::random::<u64>()),
                handles: HashMap::new(),
            }),
            changed: Notify::new(),
            dial_wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut inner = self.lock();
        let decided =
            inner
                .sessions
                .register(peer, direction, addr, clock_now(), SystemTime::now());
        let (id, recheck) = match decided {
            Registered::Kept { kept } => {
                if let Some(h) = inner.handles.get(&kept) {
                    h.ctl.probe();
                }
                return Err(());
            }
            Registered::New {
                id,
                displaced,
                recheck,
                woke,
            } => {
                if let Some(h) = displaced.and_then(|old| inner.handles.remove(&old)) {
                    h.ctl.close(DUPLICATE_SESSION);
                }
                (id, recheck || woke)
            }
        };
        inner.handles.insert(id, Handles { tx: Some(tx), ctl });
        drop(inner);
        if recheck {
            self.dial_wake.notify_one();
        }
        self.changed.notify_one();
        Ok(id)
    }

    /// Registers an authenticated client session (inbound, no listen port):
    /// it is closed like a peer session when its key stops being trusted,
    /// but it neither displaces nor loses to any other session.
    pub fn register_client(&self, peer: PublicKey, ctl: Arc<SessionCtl>) -> u64 {
        let mut inner = self.lock();
        let (id, recheck) = inner.sessions.register_client(peer);
        inner.handles.insert(id, Handles { tx: None, ctl });
        drop(inner);
        if recheck {
            self.dial_wake.notify_one();
        }
        id
    }

    /// The client session `id` of `peer` ended.
    pub fn unregister_client(&self, peer: &PublicKey, id: u64) {
        let mut inner = self.lock();
        inner.sessions.unregister_client(peer, id);
        inner.handles.remove(&id);
    }

    /// Client sessions open.
    pub fn client_sessions(&self) -> usize {
        self.lock().sessions.client_sessions()
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
        let mut inner = self.lock();
        let was_registered =
            inner
                .sessions
                .unregister(peer, id, error, superseded, clock_now(), SystemTime::now());
        if !was_registered {
            return false;
        }
        inner.handles.remove(&id);
        drop(inner);
        self.changed.notify_one();
        self.dial_wake.notify_one();
        true
    }

    /// Notes traffic from the peer (no status write by itself).
    pub fn seen(&self, peer: &PublicKey, rtt: Option<Duration>) {
        self.lock().sessions.seen(peer, rtt, SystemTime::now());
    }

    /// The sender of the peer's session.
    pub fn sender(&self, peer: &PublicKey) -> Option<SessionTx> {
        let inner = self.lock();
        let id = inner.sessions.session(peer)?;
        inner.handles.get(&id)?.tx.clone()
    }

    /// The peer store now trusts exactly `trusted`: closes every session,
    /// peer or client, of any other key, and remembers the set for sessions
    /// registered later (see [`Registry::register`]). One lock for both, so
    /// no session slips between them. Returns the keys closed (one per
    /// session).
    pub fn set_trusted(&self, trusted: HashSet<PublicKey>, reason: &str) -> Vec<PublicKey> {
        let mut inner = self.lock();
        let to_close = inner.sessions.set_trusted(trusted);
        to_close
            .into_iter()
            .map(|c| {
                if let Some(h) = inner.handles.get(&c.id) {
                    h.ctl.close(reason);
                }
                c.pubkey
            })
            .collect()
    }

    /// Authenticated sessions open.
    pub fn sessions(&self) -> usize {
        self.lock().sessions.sessions()
    }

    /// Updates the set of peers to dial (trusted, with addresses, in the
    /// peer store) and returns the dials due now, at most `max_outbound`
    /// outbound at once.
    pub fn plan_dials(
        &self,
        targets: Vec<(PublicKey, Vec<String>)>,
        max_outbound: usize,
    ) -> Vec<DialJob> {
        let plan = self
            .lock()
            .sessions
            .plan_dials(targets, max_outbound, clock_now());
        if plan.changed {
            self.changed.notify_one();
        }
        plan.jobs
    }

    /// LAN discovery found `peer` (already checked to be trusted) at
    /// `addr`: unless a session is open, it is dialled there next, before
    /// its stored addresses and without waiting for its backoff. The same
    /// address is taken again at most every 30 s. Returns whether the
    /// dialer should look now.
    pub fn offer_address(&self, peer: &PublicKey, addr: String) -> bool {
        let look = self.lock().sessions.offer_address(peer, addr, clock_now());
        if look {
            self.dial_wake.notify_one();
        }
        look
    }

    /// A dial finished: `Err` with the error text when it failed (the
    /// backoff grows), `Ok` when it produced a session or lost to another
    /// session by the duplicate rule. Returns the delay to the next attempt
    /// on failure.
    pub fn dial_finished(&self, peer: &PublicKey, result: Result<(), String>) -> Option<Duration> {
        let delay = self
            .lock()
            .sessions
            .dial_finished(peer, result, clock_now());
        self.changed.notify_one();
        self.dial_wake.notify_one();
        delay
    }

    /// When the dialer must look again at the latest.
    pub fn next_due(&self) -> Option<tokio::time::Instant> {
        self.lock()
            .sessions
            .next_due()
            .map(tokio::time::Instant::from_std)
    }

    /// The status of every tracked peer, ordered by key.
    pub fn snapshot(&self) -> Vec<PeerStatus> {
        self.lock()
            .sessions
            .snapshot(clock_now(), SystemTime::now())
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
