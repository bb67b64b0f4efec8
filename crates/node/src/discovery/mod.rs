//! LAN discovery: announcing this node and finding others on the local
//! network (mDNS / DNS-SD, service type [`SERVICE_TYPE`]).
//!
//! A node found this way is only a *candidate*: nothing is synced with it
//! and nothing is dialled unless its key is already trusted in the peer
//! store, and then the handshake still proves the key. Records are matched
//! by the key in their TXT record, never by instance or host name.
//!
//! The transport is behind the [`Discovery`] trait: [`MdnsDiscovery`] for
//! the real network, [`MemoryNetwork`] for tests. Everything that reads the
//! records ([`parse_record`], [`CandidateTable`]) is shared, so hostile
//! records are handled the same way whatever brought them.
//!
//! TXT record (see `docs/PROTOCOL.md`, section "LAN discovery"):
//!
//! | key | value |
//! | --- | --- |
//! | `v` | protocol versions spoken, comma-separated decimal (`2`) |
//! | `pk` | the node's public key, 64 lowercase hex |
//! | `tag` | instead of `pk` (private mode): [`private_tag`], 32 lowercase hex |

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use mmogit_identity::PublicKey;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod mdns;
mod memory;

pub use mdns::MdnsDiscovery;
pub use memory::{MemoryDiscovery, MemoryNetwork};

/// The DNS-SD service type mmogit nodes announce.
pub const SERVICE_TYPE: &str = "_mmogit._tcp.local.";
/// TXT key: protocol versions.
pub const TXT_VERSIONS: &str = "v";
/// TXT key: public key (64 hex).
pub const TXT_PUBKEY: &str = "pk";
/// TXT key: private tag (32 hex).
pub const TXT_TAG: &str = "tag";
/// Bytes of a private tag (HMAC-SHA256 truncated).
pub const TAG_LEN: usize = 16;
/// Context string of the private tag.
pub const TAG_CONTEXT: &[u8] = b"mmogit-mdns-tag-v1\0";
/// Records whose TXT strings add up to more than this are ignored.
pub const MAX_TXT_BYTES: usize = 1024;
/// Records with more TXT strings than this are ignored.
pub const MAX_TXT_ENTRIES: usize = 32;
/// Addresses kept per record.
pub const MAX_ADDRS: usize = 16;
/// Most versions in `v`.
pub const MAX_VERSIONS: usize = 16;
/// Default cap of the candidate table.
pub const DEFAULT_TABLE_CAP: usize = 1024;
/// Default lifetime of a candidate not seen again (the TXT record TTL of
/// mDNS, 75 minutes; the mDNS layer reports expiry earlier by itself).
pub const DEFAULT_TABLE_TTL: Duration = Duration::from_secs(75 * 60);
/// Events queued between a [`Discovery`] and its reader; more are dropped.
pub const EVENT_QUEUE: usize = 1024;

/// Errors of a discovery implementation.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("mDNS: {0}")]
    Mdns(String),
    #[error("discovery is shut down")]
    Closed,
}

/// A service as a discovery transport saw it, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawService {
    /// The DNS-SD instance full name (only used to match a later removal).
    pub instance: String,
    /// Addresses with the announced port.
    pub addrs: Vec<SocketAddr>,
    /// TXT strings as key and optional value, in record order.
    pub txt: Vec<(String, Option<Vec<u8>>)>,
}

/// What a [`Discovery`] reports while browsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A service was resolved (again: addresses may have changed).
    Found(RawService),
    /// The instance of that full name is gone (goodbye or TTL expiry).
    Removed(String),
}

/// How a node identifies itself in its announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Announced {
    /// Its public key, for anyone to see.
    Key(PublicKey),
    /// A private tag only those who know the key can recognise.
    Tag([u8; TAG_LEN]),
}

impl Announced {
    /// The key, when announced or when the tag matches one of `known`
    /// (today's or yesterday's tag, by the clock at `now`).
    pub fn resolve<'a>(
        &self,
        known: impl IntoIterator<Item = &'a PublicKey>,
        now: SystemTime,
    ) -> Option<PublicKey> {
        match self {
            Announced::Key(k) => Some(*k),
            Announced::Tag(t) => known.into_iter().find(|k| tag_matches(t, k, now)).copied(),
        }
    }
}

/// What this node announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    pub pubkey: PublicKey,
    /// The TCP port the node listens on.
    pub port: u16,
    pub versions: Vec<u32>,
    /// Announce a private tag instead of the key.
    pub private: bool,
}

impl Advertisement {
    /// The identity as announced now.
    pub fn announced(&self, now: SystemTime) -> Announced {
        if self.private {
            Announced::Tag(private_tag(&self.pubkey, utc_day(now)))
        } else {
            Announced::Key(self.pubkey)
        }
    }

    /// The instance label (also used as host label): `mmogit-` and the
    /// first 16 hex characters of the key, or of the tag in private mode,
    /// so two nodes never share one (mDNS would rename or merge them).
    pub fn instance_label(&self, now: SystemTime) -> String {
        match self.announced(now) {
            Announced::Key(k) => format!("mmogit-{}", k.short(16)),
            Announced::Tag(t) => format!("mmogit-{}", &hex::encode(t)[..16]),
        }
    }

    /// TXT strings, in order.
    pub fn txt(&self, now: SystemTime) -> Vec<(String, String)> {
        let v = self
            .versions
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let id = match self.announced(now) {
            Announced::Key(k) => (TXT_PUBKEY.to_string(), k.to_hex()),
            Announced::Tag(t) => (TXT_TAG.to_string(), hex::encode(t)),
        };
        vec![(TXT_VERSIONS.to_string(), v), id]
    }
}

/// Days since the Unix epoch, UTC.
pub fn utc_day(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

/// The private tag of `pubkey` on UTC day `day`:
/// `HMAC-SHA256(key = the 32 public key bytes, msg = "mmogit-mdns-tag-v1\0" || u64be(day))`,
/// first 16 bytes.
pub fn private_tag(pubkey: &PublicKey, day: u64) -> [u8; TAG_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pubkey.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(TAG_CONTEXT);
    mac.update(&day.to_be_bytes());
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&full[..TAG_LEN]);
    tag
}

/// Whether `tag` is `pubkey`'s tag of today or of yesterday (UTC, by `now`).
pub fn tag_matches(tag: &[u8; TAG_LEN], pubkey: &PublicKey, now: SystemTime) -> bool {
    let day = utc_day(now);
    *tag == private_tag(pubkey, day) || (day > 0 && *tag == private_tag(pubkey, day - 1))
}

/// A checked record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub instance: String,
    pub announced: Announced,
    /// Best first: IPv4, then IPv6, loopback last; at most [`MAX_ADDRS`].
    pub addrs: Vec<SocketAddr>,
    pub versions: Vec<u32>,
}

/// Checks a raw record: TXT size and shape, versions, key or tag,
/// addresses. The error says why it was ignored.
pub fn parse_record(raw: &RawService) -> Result<Found, String> {
    if raw.instance.is_empty() || raw.instance.len() > 255 {
        return Err(format!("instance name of {} bytes", raw.instance.len()));
    }
    if raw.txt.len() > MAX_TXT_ENTRIES {
        return Err(format!("{} TXT strings", raw.txt.len()));
    }
    let size: usize = raw
        .txt
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len() + 1))
        .sum();
    if size > MAX_TXT_BYTES {
        return Err(format!("TXT record of {size} bytes"));
    }
    // RFC 6763 6.4: the first occurrence of a key counts.
    let get = |key: &str| {
        raw.txt
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_deref().unwrap_or_default())
    };
    let text = |key: &str| -> Result<Option<&str>, String> {
        get(key)
            .map(|b| std::str::from_utf8(b).map_err(|_| format!("TXT {key} is not UTF-8")))
            .transpose()
    };
    let versions: Vec<u32> = match text(TXT_VERSIONS)? {
        None => return Err("no TXT v (versions)".into()),
        Some(s) => s
            .split(',')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("bad TXT v {:?}", truncate(s)))?,
    };
    if versions.is_empty() || versions.len() > MAX_VERSIONS {
        return Err(format!("{} versions", versions.len()));
    }
    let announced = match (text(TXT_PUBKEY)?, text(TXT_TAG)?) {
        (Some(pk), None) => {
            if pk.len() != 64 || !pk.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("bad TXT pk {:?}", truncate(pk)));
            }
            let key = pk
                .to_ascii_lowercase()
                .parse::<PublicKey>()
                .map_err(|e| format!("bad TXT pk: {e}"))?;
            Announced::Key(key)
        }
        (None, Some(tag)) => {
            let mut t = [0u8; TAG_LEN];
            if tag.len() != TAG_LEN * 2 || hex::decode_to_slice(tag, &mut t).is_err() {
                return Err(format!("bad TXT tag {:?}", truncate(tag)));
            }
            Announced::Tag(t)
        }
        (Some(_), Some(_)) => return Err("both TXT pk and tag".into()),
        (None, None) => return Err("neither TXT pk nor tag".into()),
    };
    let mut addrs: Vec<SocketAddr> = raw
        .addrs
        .iter()
        .filter(|a| a.port() != 0 && usable_ip(a.ip()))
        .copied()
        .collect();
    addrs.sort_by_key(|a| (a.ip().is_loopback(), a.is_ipv6(), *a));
    addrs.dedup();
    addrs.truncate(MAX_ADDRS);
    if addrs.is_empty() {
        return Err("no usable address".into());
    }
    Ok(Found {
        instance: raw.instance.clone(),
        announced,
        addrs,
        versions,
    })
}

fn usable_ip(ip: IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()))
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The discovery transport.
pub trait Discovery: Send + Sync + 'static {
    /// Announces this node; a second call replaces the announcement.
    fn advertise(&self, ad: &Advertisement) -> Result<(), DiscoveryError>;
    /// Starts browsing for [`SERVICE_TYPE`]: found and removed records
    /// arrive on the receiver (at most [`EVENT_QUEUE`] queued; more are
    /// dropped) until [`Discovery::shutdown`].
    fn browse(&self) -> Result<mpsc::Receiver<DiscoveryEvent>, DiscoveryError>;
    /// Withdraws the announcement (a goodbye, so others drop it at once)
    /// and stops browsing. Blocks for about a second at most.
    fn shutdown(&self);
}

/// Lets through a few log lines per window and counts the rest.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    start: Option<Instant>,
    count: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(per_window: u32, window: Duration) -> Self {
        LogLimiter {
            per_window,
            window,
            start: None,
            count: 0,
            suppressed: 0,
        }
    }

    /// `Some(lines suppressed since the last one let through)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let new_window = match self.start {
            Some(s) => now.duration_since(s) >= self.window,
            None => true,
        };
        if new_window {
            self.start = Some(now);
            self.count = 0;
        }
        if self.count < self.per_window {
            self.count += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

struct Entry {
    found: Found,
    last: Instant,
}

/// A node found on the LAN, merged over its instances (by the announced
/// key or tag, never by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub announced: Announced,
    pub addrs: Vec<SocketAddr>,
    pub versions: Vec<u32>,
    pub instances: Vec<String>,
}

/// The nodes found so far: bounded ([`DEFAULT_TABLE_CAP`] instances, the
/// least recently seen evicted first), expiring ([`DEFAULT_TABLE_TTL`]),
/// ourselves filtered out, malformed records ignored with rate-limited logs.
pub struct CandidateTable {
    ours: Option<PublicKey>,
    cap: usize,
    ttl: Duration,
    entries: HashMap<String, Entry>,
    log: LogLimiter,
    ignored: u64,
}

impl CandidateTable {
    /// `ours`: our key, to filter our own announcement.
    pub fn new(ours: Option<PublicKey>) -> Self {
        Self::with_limits(ours, DEFAULT_TABLE_CAP, DEFAULT_TABLE_TTL)
    }

    pub fn with_limits(ours: Option<PublicKey>, cap: usize, ttl: Duration) -> Self {
        CandidateTable {
            ours,
            cap: cap.max(1),
            ttl,
            entries: HashMap::new(),
            log: LogLimiter::new(5, Duration::from_secs(60)),
            ignored: 0,
        }
    }

    /// Instances held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Malformed records ignored so far.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    fn is_ours(&self, a: &Announced, now: SystemTime) -> bool {
        match (a, &self.ours) {
            (Announced::Key(k), Some(o)) => k == o,
            (Announced::Tag(t), Some(o)) => tag_matches(t, o, now),
            _ => false,
        }
    }

    /// Takes one event; returns the record when it is new or its
    /// addresses or versions changed (what a dialer may act on).
    pub fn apply(&mut self, ev: DiscoveryEvent, now: Instant) -> Option<Found> {
        self.expire(now);
        match ev {
            DiscoveryEvent::Removed(instance) => {
                if self.entries.remove(&instance).is_some() {
                    debug!(%instance, "mDNS: node gone");
                }
                None
            }
            DiscoveryEvent::Found(raw) => {
                let found = match parse_record(&raw) {
                    Ok(f) => f,
                    Err(why) => {
                        self.ignored += 1;
                        if let Some(suppressed) = self.log.allow(now) {
                            let from = raw.addrs.first().map(|a| a.ip().to_string());
                            warn!(
                                instance = %truncate(&raw.instance),
                                from = from.as_deref().unwrap_or("-"),
                                reason = %why,
                                suppressed,
                                "mDNS: ignoring malformed record"
                            );
                        }
                        return None;
                    }
                };
                if self.is_ours(&found.announced, SystemTime::now()) {
                    return None;
                }
                if let Some(e) = self.entries.get_mut(&found.instance) {
                    e.last = now;
                    if e.found == found {
                        return None;
                    }
                    e.found = found.clone();
                    return Some(found);
                }
                if self.entries.len() >= self.cap {
                    if let Some(oldest) = self
                        .entries
                        .iter()
                        .min_by_key(|(_, e)| e.last)
                        .map(|(k, _)| k.clone())
                    {
                        self.entries.remove(&oldest);
                    }
                    if let Some(suppressed) = self.log.allow(now) {
                        warn!(
                            cap = self.cap,
                            suppressed, "mDNS: candidate table full; evicting the oldest"
                        );
                    }
                }
                self.entries.insert(
                    found.instance.clone(),
                    Entry {
                        found: found.clone(),
                        last: now,
                    },
                );
                Some(found)
            }
        }
    }

    /// Drops entries not seen for the TTL.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last) < ttl);
    }

    /// The nodes, merged by announced key or tag, addresses de-duplicated;
    /// ordered by key or tag.
    pub fn candidates(&self) -> Vec<Candidate> {
        let mut by: HashMap<Announced, Candidate> = HashMap::new();
        for e in self.entries.values() {
            let c = by.entry(e.found.announced).or_insert_with(|| Candidate {
                announced: e.found.announced,
                addrs: vec![],
                versions: e.found.versions.clone(),
                instances: vec![],
            });
            for a in &e.found.addrs {
                if !c.addrs.contains(a) {
                    c.addrs.push(*a);
                }
            }
            c.instances.push(e.found.instance.clone());
        }
        let mut v: Vec<Candidate> = by.into_values().collect();
        for c in &mut v {
            c.addrs
                .sort_by_key(|a| (a.ip().is_loopback(), a.is_ipv6(), *a));
            c.addrs.truncate(MAX_ADDRS);
            c.instances.sort();
        }
        v.sort_by_key(|c| match c.announced {
            Announced::Key(k) => (0, k.to_hex()),
            Announced::Tag(t) => (1, hex::encode(t)),
        });
        v
    }
}

/// A found node handed to the dialer: it dials only trusted keys.
#[derive(Debug, Clone)]
pub(crate) struct DialCandidate {
    pub announced: Announced,
    pub addrs: Vec<SocketAddr>,
}

/// Queue of candidates between discovery and the dialer.
pub(crate) const CANDIDATE_QUEUE: usize = 256;

/// The node's discovery task: announce, browse, hand new or moved nodes
/// that share a protocol version to the dialer, re-announce when the
/// private tag changes (UTC midnight), withdraw on shutdown.
pub(crate) async fn run(
    disc: Arc<dyn Discovery>,
    ad: Advertisement,
    cancel: CancellationToken,
    to_dialer: mpsc::Sender<DialCandidate>,
) {
    let private = ad.private;
    let mut day = utc_day(SystemTime::now());
    let d = disc.clone();
    let ad2 = ad.clone();
    match tokio::task::spawn_blocking(move || d.advertise(&ad2)).await {
        Ok(Ok(())) => info!(
            instance = %ad.instance_label(SystemTime::now()),
            port = ad.port,
            private,
            "mDNS: announcing {SERVICE_TYPE}"
        ),
        Ok(Err(e)) => warn!(error = %e, "mDNS: cannot announce"),
        Err(e) => warn!(error = %e, "mDNS: announce task failed"),
    }
    let mut events = match disc.browse() {
        Ok(rx) => Some(rx),
        Err(e) => {
            warn!(error = %e, "mDNS: cannot browse");
            None
        }
    };
    let mut table = CandidateTable::new(Some(ad.pubkey));
    let mut drop_log = LogLimiter::new(3, Duration::from_secs(60));
    let ours = ad.versions.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        let next = async {
            match events.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            ev = next => {
                let Some(ev) = ev else {
                    events = None;
                    continue;
                };
                let Some(found) = table.apply(ev, Instant::now()) else { continue };
                if !found.versions.iter().any(|v| ours.contains(v)) {
                    debug!(instance = %found.instance, versions = ?found.versions, "mDNS: no common protocol version");
                    continue;
                }
                debug!(instance = %found.instance, addrs = ?found.addrs, "mDNS: node found");
                let c = DialCandidate { announced: found.announced, addrs: found.addrs };
                if let Err(mpsc::error::TrySendError::Full(_)) = to_dialer.try_send(c) {
                    if let Some(suppressed) = drop_log.allow(Instant::now()) {
                        warn!(suppressed, "mDNS: dialer busy; dropping a found node");
                    }
                }
            }
            _ = tick.tick() => {
                table.expire(Instant::now());
                let today = utc_day(SystemTime::now());
                if private && today != day {
                    day = today;
                    let d = disc.clone();
                    let ad2 = ad.clone();
                    match tokio::task::spawn_blocking(move || d.advertise(&ad2)).await {
                        Ok(Ok(())) => info!("mDNS: new day, announcing the new private tag"),
                        Ok(Err(e)) => warn!(error = %e, "mDNS: cannot re-announce"),
                        Err(e) => warn!(error = %e, "mDNS: announce task failed"),
                    }
                }
            }
        }
    }
    let d = disc.clone();
    let _ = tokio::task::spawn_blocking(move || d.shutdown()).await;
    debug!("mDNS: stopped");
}
