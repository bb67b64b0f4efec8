//! Who is served: the [`TrustPolicy`] trait, and [`PeerStoreTrust`], the
//! standard policy, deciding from `peers.json` and recording unknown keys
//! as pending, bounded and without a disk write on most handshakes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mmogit_identity::PublicKey;
use tracing::{debug, info, warn};

use crate::peers::{FileStamp, PeerStore, PeerStoreError, TrustState};

/// Decides whether an authenticated inbound peer is served.
pub trait TrustPolicy: Send + Sync + 'static {
    /// Called once per inbound connection, after the peer proved its key.
    fn authorize(&self, pubkey: &PublicKey, addr: SocketAddr) -> bool;

    /// Writes out what the policy keeps in memory (e.g. keys seen lately).
    /// The node calls it from a blocking thread about every second while
    /// running, and once more at shutdown. Default: nothing.
    fn flush(&self) {}
}

impl<F: Fn(&PublicKey, SocketAddr) -> bool + Send + Sync + 'static> TrustPolicy for F {
    fn authorize(&self, pubkey: &PublicKey, addr: SocketAddr) -> bool {
        self(pubkey, addr)
    }
}

/// Most pending keys kept by default (see [`PeerStoreTrust::with_max_pending`]).
pub const DEFAULT_MAX_PENDING: usize = 256;

/// A key's `last_seen` in the file is brought up to date at most this often.
const SEEN_RESOLUTION: u64 = 60;

/// The cached view of the file is read again after this long even when its
/// stamp did not change (a stamp can, rarely, repeat).
const CACHE_MAX_AGE: Duration = Duration::from_secs(2);

/// A handshake writes what is pending itself only when nothing was written
/// for this long; otherwise the node's periodic flush (as often) does.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// The standard policy: serves the keys Trusted in `peers.json`, refuses
/// Blocked ones and records unknown ones as Pending. A file that cannot be
/// read refuses everyone (fails closed).
///
/// Each handshake checks the file's stamp (one `stat`) and reads the file
/// again only when it changed, so `accept` and `block` take effect at once
/// without a restart. Unknown keys and contact times are kept in memory and
/// written in one locked read-change-write ([`PeerStore::update`]) that
/// never overwrites a concurrent change (a key blocked or trusted meanwhile
/// keeps that state): at once by a handshake that finds nothing written for
/// a second (so a lone attempt is listed by `p2p pending` as soon as it is
/// refused), else by [`TrustPolicy::flush`] (about every second while the
/// node runs, and at shutdown). So at most about one write a second,
/// however many keys knock. A key's contact time is written at most once a
/// minute, so a key that handshakes again and again costs no disk write.
///
/// Pending keys are bounded ([`DEFAULT_MAX_PENDING`] by default): beyond
/// that the least recently seen are dropped, from memory and from the file.
pub struct PeerStoreTrust {
    path: PathBuf,
    max_pending: usize,
    state: Mutex<State>,
    writes: AtomicU64,
}

struct Cache {
    stamp: Option<FileStamp>,
    read_at: Instant,
    /// Trust state and last contact (Unix seconds) of every key in the file.
    keys: HashMap<PublicKey, (TrustState, Option<u64>)>,
    pending: usize,
}

struct Seen {
    seq: u64,
    addr: String,
}

#[derive(Default)]
struct State {
    cache: Option<Cache>,
    /// Untrusted keys seen since start, most recent `max_pending` only.
    pending: HashMap<PublicKey, Seen>,
    /// The same keys by recency (sequence number → key).
    order: BTreeMap<u64, PublicKey>,
    next_seq: u64,
    /// Pending keys to write at the next flush.
    dirty: HashSet<PublicKey>,
    /// Trusted keys whose contact time to write at the next flush.
    seen: HashSet<PublicKey>,
    /// When the last flush started.
    last_flush: Option<Instant>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl State {
    /// The cached view of the file, read again when it changed.
    fn view(&mut self, path: &std::path::Path) -> Result<&Cache, PeerStoreError> {
        let stamp = FileStamp::of(path);
        let fresh = self
            .cache
            .as_ref()
            .is_some_and(|c| c.stamp == stamp && c.read_at.elapsed() < CACHE_MAX_AGE);
        if !fresh {
            self.cache = None;
            let store = PeerStore::load(path)?;
            let keys: HashMap<_, _> = store
                .list()
                .into_iter()
                .map(|r| (r.pubkey, (r.trust, r.last_seen)))
                .collect();
            let pending = keys
                .values()
                .filter(|(t, _)| *t == TrustState::Pending)
                .count();
            self.cache = Some(Cache {
                stamp,
                read_at: Instant::now(),
                keys,
                pending,
            });
        }
        Ok(self.cache.as_ref().expect("just set"))
    }

    /// Notes an untrusted key; returns true when it is new to this process.
    fn note_pending(&mut self, pk: PublicKey, addr: String, max: usize, stale: bool) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        let new = match self.pending.get_mut(&pk) {
            Some(s) => {
                self.order.remove(&s.seq);
                s.seq = seq;
                s.addr = addr;
                false
            }
            None => {
                self.pending.insert(pk, Seen { seq, addr });
                true
            }
        };
        self.order.insert(seq, pk);
        if stale {
            self.dirty.insert(pk);
        }
        while self.pending.len() > max.max(1) {
            let (_, old) = self.order.pop_first().expect("order mirrors pending");
            self.pending.remove(&old);
            self.dirty.remove(&old);
        }
        new
    }
}

impl PeerStoreTrust {
    pub fn new(path: PathBuf) -> Self {
        PeerStoreTrust {
            path,
            max_pending: DEFAULT_MAX_PENDING,
            state: Mutex::new(State::default()),
            writes: AtomicU64::new(0),
        }
    }

    /// Keep at most `max` pending keys (at least 1), the most recently seen.
    pub fn with_max_pending(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// Writes of the peer store this policy made so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TrustPolicy for PeerStoreTrust {
    fn authorize(&self, pubkey: &PublicKey, addr: SocketAddr) -> bool {
        let allowed = self.decide(pubkey, addr);
        let write_now = {
            let mut st = self.lock();
            let due = (!st.dirty.is_empty() || !st.seen.is_empty())
                && st.last_flush.is_none_or(|t| t.elapsed() >= WRITE_EVERY);
            if due {
                st.last_flush = Some(Instant::now());
            }
            due
        };
        if write_now {
            self.flush();
        }
        allowed
    }

    fn flush(&self) {
        self.write_out()
    }
}

impl PeerStoreTrust {
    fn decide(&self, pubkey: &PublicKey, addr: SocketAddr) -> bool {
        let mut st = self.lock();
        let (trust, last_seen) = match st.view(&self.path) {
            Ok(c) => c.keys.get(pubkey).copied().unzip(),
            Err(e) => {
                warn!(peer = %pubkey.short(12), %addr, error = %e, "cannot read peer store; refusing");
                return false;
            }
        };
        // The file's contact time is older than SEEN_RESOLUTION (or absent).
        let stale = last_seen
            .flatten()
            .is_none_or(|t| now_secs().saturating_sub(t) >= SEEN_RESOLUTION);
        match trust {
            Some(TrustState::Trusted) => {
                if stale {
                    st.seen.insert(*pubkey);
                }
                true
            }
            Some(TrustState::Blocked) => false,
            Some(TrustState::Pending) | None => {
                let stale = stale || trust.is_none();
                if st.note_pending(*pubkey, addr.to_string(), self.max_pending, stale) {
                    info!(peer = %pubkey.short(12), %addr, "untrusted peer recorded as pending");
                } else {
                    debug!(peer = %pubkey.short(12), %addr, "untrusted peer seen again");
                }
                false
            }
        }
    }

    fn write_out(&self) {
        let (pending, seen, ranks) = {
            let mut st = self.lock();
            let over = st
                .cache
                .as_ref()
                .is_some_and(|c| c.pending > self.max_pending);
            if st.dirty.is_empty() && st.seen.is_empty() && !over {
                return;
            }
            st.last_flush = Some(Instant::now());
            let dirty = std::mem::take(&mut st.dirty);
            let pending: Vec<(PublicKey, String)> = dirty
                .iter()
                .filter_map(|k| st.pending.get(k).map(|s| (*k, s.addr.clone())))
                .collect();
            let seen = std::mem::take(&mut st.seen);
            let ranks: HashMap<PublicKey, u64> =
                st.pending.iter().map(|(k, s)| (*k, s.seq)).collect();
            (pending, seen, ranks)
        };
        let max = self.max_pending;
        let result = PeerStore::update_counted(&self.path, |s| {
            for (pk, addr) in &pending {
                // A key trusted or blocked meanwhile keeps that state.
                match s.get_key(pk).map(|r| r.trust) {
                    Some(TrustState::Trusted | TrustState::Blocked) => {}
                    _ => {
                        s.record_pending(*pk, Some(addr.clone()));
                    }
                }
            }
            for pk in &seen {
                if s.is_trusted(pk) {
                    s.record_seen(pk, None);
                }
            }
            // Least recently seen first: keys seen by this process rank
            // above the others, by their order of contact.
            let mut pend: Vec<((bool, u64, u64), PublicKey)> = s
                .list()
                .into_iter()
                .filter(|r| r.trust == TrustState::Pending)
                .map(|r| {
                    let rank = match ranks.get(&r.pubkey) {
                        Some(seq) => (true, *seq, 0),
                        None => (false, r.last_seen.unwrap_or(0), r.added_at),
                    };
                    (rank, r.pubkey)
                })
                .collect();
            if pend.len() > max {
                pend.sort_by_key(|(rank, _)| *rank);
                let extra = pend.len() - max;
                for (_, k) in &pend[..extra] {
                    s.remove_key(k);
                }
            }
            Ok::<(), PeerStoreError>(())
        });
        match result {
            Ok(((), wrote)) => {
                if wrote {
                    self.writes.fetch_add(1, Ordering::Relaxed);
                }
                // The file is within the bound now: read it afresh at the
                // next handshake rather than trimming again from an old view.
                self.lock().cache = None;
            }
            Err(e) => {
                warn!(error = %e, "cannot update the peer store; trying again later");
                let mut st = self.lock();
                st.dirty.extend(pending.into_iter().map(|(k, _)| k));
                st.seen.extend(seen);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::PeerSource;
    use mmogit_identity::Identity;

    fn key(n: u8) -> PublicKey {
        Identity::from_secret_bytes(&[n; 32]).public_key()
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    #[test]
    fn a_known_pending_key_costs_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        let t = PeerStoreTrust::new(path.clone());
        // The first key after a quiet second is written at once...
        assert!(!t.authorize(&key(1), addr()));
        assert_eq!(t.writes(), 1);
        let s = PeerStore::load(&path).unwrap();
        assert_eq!(s.get_key(&key(1)).unwrap().trust, TrustState::Pending);
        // ... the next ones within that second by the flush.
        assert!(!t.authorize(&key(2), addr()));
        assert_eq!(t.writes(), 1, "coalesced");
        assert!(PeerStore::load(&path).unwrap().get_key(&key(2)).is_none());
        t.flush();
        assert_eq!(t.writes(), 2);
        assert!(PeerStore::load(&path).unwrap().get_key(&key(2)).is_some());
        for _ in 0..20 {
            assert!(!t.authorize(&key(1), addr()));
            t.flush();
        }
        assert_eq!(
            t.writes(),
            2,
            "a pending key seen again is not written again"
        );
        // A new process (fresh memory) sees it pending in the file, seen lately.
        let t2 = PeerStoreTrust::new(path.clone());
        assert!(!t2.authorize(&key(1), addr()));
        t2.flush();
        assert_eq!(t2.writes(), 0);
    }

    #[test]
    fn flush_keeps_a_concurrent_block_and_trust() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        let t = PeerStoreTrust::new(path.clone());
        assert!(!t.authorize(&key(1), addr()));
        assert!(!t.authorize(&key(2), addr()));
        // Before the flush, another process decides about both keys.
        PeerStore::update(&path, |s| {
            s.add(key(1), None, vec![], PeerSource::Manual);
            s.add(key(2), None, vec![], PeerSource::Manual);
            s.set_blocked(&key(2).to_hex()).map(|_| ())
        })
        .unwrap();
        t.flush();
        let s = PeerStore::load(&path).unwrap();
        assert_eq!(s.get_key(&key(1)).unwrap().trust, TrustState::Trusted);
        assert_eq!(s.get_key(&key(2)).unwrap().trust, TrustState::Blocked);
        assert!(t.authorize(&key(1), addr()), "accepted at once");
        assert!(!t.authorize(&key(2), addr()));
    }

    #[test]
    fn pending_is_bounded_least_recently_seen_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        // An old file with more pending keys than the bound.
        PeerStore::update(&path, |s| {
            for n in 100..110 {
                s.record_pending(key(n), None);
            }
            Ok::<_, PeerStoreError>(())
        })
        .unwrap();
        let t = PeerStoreTrust::new(path.clone()).with_max_pending(4);
        for n in 1..=6 {
            assert!(!t.authorize(&key(n), addr()));
        }
        // Key 3 comes back: now more recent than 4, 5 and 6.
        assert!(!t.authorize(&key(3), addr()));
        t.flush();
        let s = PeerStore::load(&path).unwrap();
        let mut left: Vec<PublicKey> = s.list().into_iter().map(|r| r.pubkey).collect();
        left.sort_by_key(|k| k.to_hex());
        let mut want = vec![key(3), key(4), key(5), key(6)];
        want.sort_by_key(|k| k.to_hex());
        assert_eq!(left, want);
        // A new key drops the least recently seen: 4.
        assert!(!t.authorize(&key(7), addr()));
        t.flush();
        let s = PeerStore::load(&path).unwrap();
        let mut left: Vec<PublicKey> = s.list().into_iter().map(|r| r.pubkey).collect();
        left.sort_by_key(|k| k.to_hex());
        let mut want = vec![key(3), key(5), key(6), key(7)];
        want.sort_by_key(|k| k.to_hex());
        assert_eq!(left, want);
    }
}
