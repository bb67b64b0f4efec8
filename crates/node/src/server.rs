//! The listener's side: the accept loop (rate limit, connection limits,
//! eviction of unauthenticated connections) and the handshake of each
//! inbound connection, handed to the session driver once authenticated.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmogit_identity::PublicKey;
use mmogit_proto::{reasons, Event, Session};
use rand::RngCore;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::conn::{Conn, Wake};
use crate::event::NodeEvent;
use crate::peer_session::{close_text, drive};
use crate::registry::Direction;
use crate::shared::Shared;

/// A slot in the connection limits, released on drop (or at once when the
/// connection is evicted).
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
    id: u64,
    /// Cancelled (under the limits lock) when the connection is evicted;
    /// its place is then already given up.
    evict: CancellationToken,
}

impl Slot {
    /// The peer authenticated: from now on this connection is never
    /// evicted. False when it was evicted already (e.g. while the trust
    /// policy was asked): its place is gone, so it must close.
    fn authenticated(&self) -> bool {
        let mut l = self.shared.limits.lock().unwrap_or_else(|e| e.into_inner());
        l.pending.remove(&self.id);
        !self.evict.is_cancelled()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut l = self.shared.limits.lock().unwrap_or_else(|e| e.into_inner());
        if self.evict.is_cancelled() {
            return;
        }
        l.pending.remove(&self.id);
        l.release(self.ip);
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // E.g. out of file descriptors: back off briefly.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(rate) = &shared.rate {
            let allowed = rate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .allow(addr.ip(), tokio::time::Instant::now().into_std());
            if !allowed {
                // Debug only: a flood must not flood the log too.
                shared.rate_limited.fetch_add(1, Ordering::Relaxed);
                debug!(%addr, "connection refused: rate limited");
                drop(stream);
                continue;
            }
        }
        let mut evicted = None;
        let admitted = {
            let mut l = shared.limits.lock().unwrap_or_else(|e| e.into_inner());
            let from_ip = l.per_ip.get(&addr.ip()).copied().unwrap_or(0);
            if from_ip >= shared.config.max_per_ip {
                Err("too many connections from this address")
            } else {
                if l.total >= shared.config.max_inbound {
                    // Full: the oldest connection that has not authenticated
                    // yet makes room (strangers holding slots through the
                    // handshake timeout cannot lock a trusted peer out).
                    // Authenticated sessions are never evicted.
                    if let Some((_, (old, since, token))) = l.pending.pop_first() {
                        token.cancel();
                        l.release(old.ip());
                        evicted = Some((old, since.elapsed()));
                    }
                }
                if l.total >= shared.config.max_inbound {
                    Err("too many connections")
                } else {
                    l.total += 1;
                    *l.per_ip.entry(addr.ip()).or_insert(0) += 1;
                    let id = l.next_id;
                    l.next_id += 1;
                    let evict = CancellationToken::new();
                    l.pending.insert(id, (addr, Instant::now(), evict.clone()));
                    Ok((id, evict))
                }
            }
        };
        if let Some((old, age)) = evicted {
            let n = shared.evicted.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(evicted = %old, age_ms = age.as_millis() as u64, for_addr = %addr, total_evicted = n,
                "inbound slots full: closed the oldest unauthenticated connection");
        }
        let (id, evict) = match admitted {
            Ok(x) => x,
            Err(reason) => {
                warn!(%addr, reason, "connection refused");
                drop(stream);
                shared.emit(NodeEvent::Refused {
                    addr,
                    pubkey: None,
                    reason: reason.into(),
                });
                continue;
            }
        };
        let slot = Slot {
            shared: shared.clone(),
            ip: addr.ip(),
            id,
            evict,
        };
        tracker.spawn(serve(stream, addr, shared.clone(), slot));
    }
    debug!("accept loop stopped");
}

/// Why an evicted connection ended.
const EVICTED: &str = "evicted: inbound slots full";

async fn serve(stream: TcpStream, addr: SocketAddr, shared: Arc<Shared>, slot: Slot) {
    let _ = stream.set_nodelay(true);
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let session = Session::acceptor(
        shared.identity.clone(),
        shared.session_config.clone(),
        nonce,
        Box::new(rand::rngs::OsRng),
        Instant::now(),
    );
    let mut conn = Conn::new(stream, session, shared.config.frame_timeout);
    let mut peer: Option<PublicKey> = None;
    let mut shutting_down = false;
    debug!(%addr, "inbound connection");
    let reason: String = 'conn: loop {
        if let Err(e) = conn.flush().await {
            break 'conn format!("write failed: {e}");
        }
        while let Some(ev) = conn.session.poll_event() {
            match ev {
                Event::AuthorizationRequired(info) => {
                    peer = Some(info.pubkey);
                    let policy = shared.policy.clone();
                    let pk = info.pubkey;
                    let allowed = tokio::task::spawn_blocking(move || policy.authorize(&pk, addr))
                        .await
                        .unwrap_or(false);
                    let now = Instant::now();
                    if allowed {
                        let _ = conn.session.accept(now);
                    } else {
                        warn!(%addr, peer = %pk.short(12), agent = %info.agent, "refused: not authorized");
                        conn.session.reject(now, reasons::NOT_AUTHORIZED);
                        shared.emit(NodeEvent::Refused {
                            addr,
                            pubkey: Some(pk),
                            reason: reasons::NOT_AUTHORIZED.into(),
                        });
                    }
                }
                Event::Authenticated { peer: info, .. } => {
                    if !slot.authenticated() {
                        break 'conn EVICTED.to_string();
                    }
                    // Events after this one stay queued in the session for
                    // the session task.
                    drive(
                        conn,
                        info,
                        addr,
                        Direction::Inbound,
                        shared,
                        VecDeque::new(),
                        None,
                    )
                    .await;
                    return;
                }
                Event::Pong(_) | Event::Message(_) => {}
                Event::Closed(r) => {
                    conn.finish(shared.config.frame_timeout.min(Duration::from_secs(2)))
                        .await;
                    break 'conn close_text(r);
                }
            }
        }
        let cancel = (!shutting_down).then_some(&shared.cancel);
        let woke = tokio::select! {
            biased;
            _ = slot.evict.cancelled() => break 'conn EVICTED.to_string(),
            w = conn.wait(None, cancel) => w,
        };
        match woke {
            Ok(Wake::Cancelled) => {
                shutting_down = true;
                conn.session.close(Instant::now(), reasons::SHUTTING_DOWN);
            }
            Ok(Wake::Input | Wake::Timer) => {}
            Err(e) => break 'conn format!("read failed: {e}"),
        }
    };
    let who = peer.map(|p| p.short(12)).unwrap_or_else(|| "-".into());
    if reason == EVICTED {
        // Logged (once per eviction) where it was decided.
        shared.emit(NodeEvent::Refused {
            addr,
            pubkey: peer,
            reason,
        });
    } else if !reason.contains(reasons::NOT_AUTHORIZED) {
        warn!(%addr, peer = %who, %reason, "handshake failed");
        shared.emit(NodeEvent::Refused {
            addr,
            pubkey: peer,
            reason,
        });
    }
}
