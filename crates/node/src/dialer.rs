//! Background tasks: the peer-store refresh and dialer, and the status
//! file writer.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mmogit_identity::PublicKey;
use mmogit_proto::reasons;
use tracing::{debug, info, warn};

use crate::client::{connect_inner, ClientConfig};
use crate::discovery::DialCandidate;
use crate::peer_session::{drive, Ended};
use crate::peers::{FileStamp, PeerStore, TrustState};
use crate::registry::{DialJob, Direction};
use crate::shared::Shared;

/// Most status-file writes: one per this interval.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(500);
/// The status file is rewritten at least this often while running.
const STATUS_REFRESH: Duration = Duration::from_secs(5);
/// Nodes found on the LAN that the dialer remembers.
const RECENT_FOUND: usize = 64;
/// How often the peer store's stamp (size, times, inode: one `stat`) is
/// checked; a change is read at once, so a block or remove made by any
/// process ends the key's sessions within about this long.
const STORE_POLL: Duration = Duration::from_millis(250);

fn load_store(path: PathBuf) -> Result<PeerStore, String> {
    PeerStore::load(&path).map_err(|e| e.to_string())
}

fn update_store(path: PathBuf, f: impl FnOnce(&mut PeerStore) + Send + 'static) {
    let result = PeerStore::update(&path, |s| {
        f(s);
        Ok::<(), crate::peers::PeerStoreError>(())
    });
    if let Err(e) = result {
        warn!(error = %e, "cannot update the peer store");
    }
}

/// Reads the peer store when it changed (its stamp is checked every
/// [`STORE_POLL`]), when woken, and at least every `dial_refresh`; after
/// each read closes the sessions, peer or client, of keys no longer
/// trusted and, with `dial_trusted`, dials the trusted peers that are due.
pub(crate) async fn run(
    shared: Arc<Shared>,
    path: PathBuf,
    found: tokio::sync::mpsc::Receiver<DialCandidate>,
) {
    let mut last_load_error: Option<String> = None;
    let mut found = Some(found);
    // Trusted keys as of the last load: LAN discovery hands us any node it
    // finds, and only these are ever dialled.
    let mut trusted: HashSet<PublicKey> = HashSet::new();
    // Nodes found lately, looked at again after each load of the store: one
    // found before the store was read, or trusted after it was found, is
    // dialled then.
    let mut recent: VecDeque<DialCandidate> = VecDeque::new();
    let mut load = true;
    let mut stamp: Option<FileStamp> = None;
    let mut last_full = tokio::time::Instant::now();
    loop {
        if load {
            let p = path.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                // The stamp is taken before the read: a save in between is
                // read again at the next poll, never missed.
                let st = FileStamp::of(&p);
                (st, load_store(p))
            })
            .await
            .unwrap_or_else(|e| (None, Err(e.to_string())));
            stamp = loaded.0;
            last_full = tokio::time::Instant::now();
            match loaded.1 {
                Ok(store) => {
                    last_load_error = None;
                    trusted = store
                        .list()
                        .into_iter()
                        .filter(|r| r.trust == TrustState::Trusted)
                        .map(|r| r.pubkey)
                        .collect();
                    for c in &recent {
                        offer_found(&shared, &trusted, c);
                    }
                    for k in shared
                        .registry
                        .set_trusted(trusted.clone(), reasons::NOT_AUTHORIZED)
                    {
                        info!(peer = %k.short(12), "peer no longer trusted in the peer store; disconnecting");
                    }
                    if shared.config.dial_trusted {
                        let targets = store
                            .list()
                            .into_iter()
                            .filter(|r| r.trust == TrustState::Trusted)
                            .map(|r| (r.pubkey, r.addresses.clone()))
                            .collect();
                        for job in shared
                            .registry
                            .plan_dials(targets, shared.config.max_outbound)
                        {
                            shared.tracker.spawn(dial_one(shared.clone(), job));
                        }
                    }
                }
                Err(e) => {
                    if last_load_error.as_deref() != Some(e.as_str()) {
                        warn!(error = %e, "cannot read the peer store; keeping current sessions");
                    }
                    last_load_error = Some(e);
                }
            }
        }
        load = false;
        let refresh = last_full + shared.config.dial_refresh;
        let next = match shared.registry.next_due() {
            Some(t) if t < refresh => t,
            _ => refresh,
        };
        let poll = tokio::time::Instant::now() + STORE_POLL;
        let next_found = async {
            match found.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep_until(next) => load = true,
            _ = tokio::time::sleep_until(poll), if poll < next => {
                // One stat: cheap enough to do inline.
                load = FileStamp::of(&path) != stamp;
            }
            _ = shared.registry.dial_wake.notified() => load = true,
            c = next_found => match c {
                Some(c) => {
                    offer_found(&shared, &trusted, &c);
                    recent.retain(|r| r.announced != c.announced);
                    recent.push_back(c);
                    if recent.len() > RECENT_FOUND {
                        recent.pop_front();
                    }
                }
                None => found = None,
            },
        }
    }
    debug!("dialer stopped");
}

/// A node found on the LAN: when its key (announced, or recognised from
/// its private tag) is trusted and we have no session with it, its
/// address is dialled next. Anything else is only a candidate: ignored here.
fn offer_found(shared: &Shared, trusted: &HashSet<PublicKey>, c: &DialCandidate) {
    if !shared.config.dial_trusted {
        return;
    }
    let Some(pk) = c
        .announced
        .resolve(trusted.iter(), std::time::SystemTime::now())
    else {
        return;
    };
    if !trusted.contains(&pk) {
        debug!(peer = %pk.short(12), "found on the LAN, not trusted: not dialling");
        return;
    }
    if let Some(addr) = c.addrs.first() {
        if shared.registry.offer_address(&pk, addr.to_string()) {
            info!(peer = %pk.short(12), %addr, "trusted peer found on the LAN; dialling it there");
        }
    }
}

async fn dial_one(shared: Arc<Shared>, job: DialJob) {
    let c = &shared.config;
    let cfg = ClientConfig {
        connect_timeout: c.dial_timeout,
        handshake_timeout: c.handshake_timeout,
        request_timeout: c.idle_timeout,
        idle_timeout: c.idle_timeout,
        heartbeat_interval: c.heartbeat_interval,
        frame_timeout: c.frame_timeout,
        agent: c.agent.clone(),
        listen_port: Some(shared.local_addr.port()),
    };
    let pk = job.pubkey;
    debug!(peer = %pk.short(12), addr = %job.addr, "dialling");
    let result = tokio::select! {
        _ = shared.cancel.cancelled() => {
            shared.registry.dial_finished(&pk, Ok(()));
            return;
        }
        r = connect_inner(&job.addr, shared.identity.clone(), Some(pk), &cfg, false) => r,
    };
    match result {
        Ok(connection) => {
            let (conn, info, addr, rtt, inbox) = connection.into_parts();
            if let Some(path) = shared.config.peers_path.clone() {
                // An address found by discovery is kept once the handshake
                // proved the key there.
                let found_at = job.discovered.then(|| job.addr.clone());
                tokio::task::spawn_blocking(move || {
                    update_store(path, move |s| s.record_seen(&pk, found_at))
                });
            }
            if let Ended::Duplicate = drive(
                conn,
                info,
                addr,
                Direction::Outbound,
                shared.clone(),
                inbox,
                Some(rtt),
            )
            .await
            {
                shared.registry.dial_finished(&pk, Ok(()));
            }
        }
        Err(e) => {
            let text = e.to_string();
            let delay = shared.registry.dial_finished(&pk, Err(text.clone()));
            warn!(
                peer = %pk.short(12),
                addr = %job.addr,
                error = %text,
                retry_in_ms = delay.map(|d| d.as_millis() as u64),
                "dial failed"
            );
            if let Some(path) = shared.config.peers_path.clone() {
                tokio::task::spawn_blocking(move || {
                    update_store(path, move |s| s.record_error(&pk, &text))
                });
            }
        }
    }
}

/// Writes the status file now.
pub(crate) async fn write_status_now(shared: &Shared, path: &Path, running: bool) {
    let status = shared.status(running);
    let p = path.to_path_buf();
    let r = tokio::task::spawn_blocking(move || crate::status::write_status(&p, &status)).await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(path = %path.display(), error = %e, "cannot write the status file"),
        Err(e) => warn!(error = %e, "status writer failed"),
    }
}

/// Rewrites the status file on every change (at most every
/// [`STATUS_DEBOUNCE`]) and at least every [`STATUS_REFRESH`].
pub(crate) async fn status_writer(shared: Arc<Shared>, path: PathBuf) {
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = shared.registry.changed.notified() => {}
            _ = tokio::time::sleep(STATUS_REFRESH) => {}
        }
        write_status_now(&shared, &path, true).await;
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep(STATUS_DEBOUNCE) => {}
        }
    }
}
