//! The task driving one authenticated session, inbound or outbound:
//! registration (one session per peer), heartbeats and timeouts (in the
//! session), RTT probes, data messages to the handler, messages queued by
//! `NodeHandle::send_to`, close requests from the registry and shutdown.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmogit_identity::PublicKey;
use mmogit_proto::{reasons, CloseReason, Event, Message, PeerInfo};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::conn::{Conn, Wake};
use crate::event::NodeEvent;
use crate::inbox::{Inbound, Reply};
use crate::queue::{SessionTx, SEND_QUEUE};
use crate::registry::{Direction, SessionCtl, DUPLICATE_SESSION};
use crate::shared::Shared;

/// How a session ended, for the dialer.
pub(crate) enum Ended {
    /// Closed at once: another session with the peer is kept.
    Duplicate,
    /// It was registered and has now ended.
    Closed,
}

pub(crate) fn close_text(r: CloseReason) -> String {
    match r {
        CloseReason::Local(s) => format!("closed by us: {s}"),
        CloseReason::Remote(s) => format!("peer said bye: {s}"),
        CloseReason::Error(e) => format!("error: {e}"),
        CloseReason::Eof => "connection closed".into(),
    }
}

async fn handle_message(
    conn: &mut Conn,
    shared: &Shared,
    pk: &PublicKey,
    addr: SocketAddr,
    m: Message,
    reply: &SessionTx,
) {
    if let Some(inbox) = &shared.inbox {
        let inbound = Inbound {
            peer: *pk,
            msg: m,
            reply: Reply::new(*pk, reply.clone()),
        };
        match tokio::time::timeout(shared.config.frame_timeout, inbox.send(inbound)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => debug!(%addr, peer = %pk.short(12), "inbox closed; message dropped"),
            Err(_) => {
                warn!(%addr, peer = %pk.short(12), "inbox full for too long; closing the session");
                conn.session.close(
                    Instant::now(),
                    "protocol error: peer sends faster than we can process",
                );
            }
        }
        return;
    }
    match &shared.handler {
        Some(h) => {
            for reply in h.handle(pk, m) {
                if let Err(e) = conn.session.send(Instant::now(), reply) {
                    warn!(%addr, peer = %pk.short(12), error = %e, "cannot send reply");
                }
            }
        }
        None => {
            debug!(%addr, peer = %pk.short(12), msg_type = %m.msg_type(), "no handler; message dropped")
        }
    }
}

/// Drives an authenticated session until it ends.
pub(crate) async fn drive(
    mut conn: Conn,
    info: PeerInfo,
    addr: SocketAddr,
    direction: Direction,
    shared: Arc<Shared>,
    inbox: VecDeque<Message>,
    rtt: Option<Duration>,
) -> Ended {
    let pk = info.pubkey;
    let who = pk.short(12);
    // From here on a peer that takes none of our data for the send timeout
    // is dropped (before, the frame timeout bounds the handshake's writes).
    conn.write_timeout = shared.config.send_timeout;
    let (tx, mut rx) = mpsc::channel::<Box<Message>>(SEND_QUEUE);
    let reply_tx = tx.clone();
    let ctl = Arc::new(SessionCtl::default());
    // A peer session is one with a node: outbound, or inbound from an
    // initiator that announced a listen port. Other inbound connections are
    // clients (e.g. a one-off `p2p ping`): served and tracked apart, so
    // they never displace or lose to the peer session, but are closed all
    // the same when their key stops being trusted.
    let is_peer_session = direction == Direction::Outbound || info.listen_port.is_some();
    let mut client_id = None;
    let registered = if is_peer_session {
        shared
            .registry
            .register(pk, direction, addr, tx, ctl.clone())
            .map(Some)
    } else {
        client_id = Some(shared.registry.register_client(pk, ctl.clone()));
        Ok(None)
    };
    let id = match registered {
        Ok(id) => id,
        Err(()) => {
            info!(%addr, peer = %who, %direction, "duplicate session closed; keeping the other one");
            conn.session.close(Instant::now(), DUPLICATE_SESSION);
            Box::pin(conn.finish(shared.config.frame_timeout.min(Duration::from_secs(2)))).await;
            return Ended::Duplicate;
        }
    };
    if rtt.is_some() && id.is_some() {
        shared.registry.seen(&pk, rtt);
    }
    let kind = if id.is_some() { "peer" } else { "client" };
    info!(%addr, peer = %who, agent = %info.agent, version = info.version, %direction, kind, "peer connected");
    shared.emit(NodeEvent::PeerConnected { pubkey: pk, addr });
    for m in inbox {
        Box::pin(handle_message(&mut conn, &shared, &pk, addr, m, &reply_tx)).await;
    }
    let keepalive = shared
        .session_config
        .keepalive()
        .max(Duration::from_millis(10));
    // First RTT probe right away (it also tells a dead peer soon).
    let mut next_probe = Instant::now();
    let mut probe: Option<([u8; 8], Instant)> = None;
    let mut shutting_down = false;
    let mut rx_open = true;
    let (reason, remote_error): (String, bool) = 'conn: loop {
        let now = Instant::now();
        if now >= next_probe && conn.session.is_established() {
            let payload: [u8; 8] = rand::random();
            if conn.session.send_ping(now, &payload).is_ok() {
                probe = Some((payload, now));
            }
            next_probe = now + keepalive;
        }
        if let Err(e) = conn.flush().await {
            if crate::conn::is_not_reading(&e) {
                let n = shared.slow_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(%addr, peer = %who, %direction, send_timeout = ?shared.config.send_timeout, total_dropped = n,
                    "peer is not reading: closing the session (other sessions go on)");
            }
            break 'conn (format!("write failed: {e}"), true);
        }
        while let Some(ev) = conn.session.poll_event() {
            match ev {
                Event::Pong(p) => {
                    if let Some((sent, at)) = probe {
                        if p[..] == sent[..] {
                            probe = None;
                            if id.is_some() {
                                shared.registry.seen(&pk, Some(at.elapsed()));
                            }
                        }
                    }
                }
                Event::Message(m) => {
                    Box::pin(handle_message(&mut conn, &shared, &pk, addr, m, &reply_tx)).await
                }
                Event::Closed(r) => {
                    let remote = !matches!(r, CloseReason::Local(_));
                    Box::pin(conn.finish(shared.config.frame_timeout.min(Duration::from_secs(2))))
                        .await;
                    break 'conn (close_text(r), remote);
                }
                Event::AuthorizationRequired(_) | Event::Authenticated { .. } => {}
            }
        }
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.session.close(Instant::now(), reasons::SHUTTING_DOWN);
            }
            _ = ctl.notify.notified() => {
                if let Some(r) = ctl.take_close() {
                    info!(%addr, peer = %who, %direction, reason = %r, "closing session");
                    conn.session.close(Instant::now(), &r);
                }
                if ctl.take_probe() {
                    next_probe = Instant::now();
                }
            }
            m = rx.recv(), if rx_open && !shutting_down => match m {
                Some(m) => {
                    let t = m.msg_type();
                    if let Err(e) = conn.session.send(Instant::now(), *m) {
                        warn!(%addr, peer = %who, msg_type = %t, error = %e, "cannot send message");
                    }
                }
                None => rx_open = false,
            },
            w = conn.wait(Some(next_probe), None) => match w {
                Ok(Wake::Input) if id.is_some() => shared.registry.seen(&pk, None),
                Ok(_) => {}
                Err(e) => {
                    break 'conn (format!("read failed: {e}"), true);
                }
            },
        }
    };
    if let Some(c) = client_id {
        shared.registry.unregister_client(&pk, c);
    }
    let registered = id.is_some_and(|id| {
        shared.registry.unregister(
            &pk,
            id,
            remote_error.then(|| reason.clone()),
            reason.ends_with(DUPLICATE_SESSION),
        )
    });
    info!(%addr, peer = %who, %direction, %reason, current = registered, "peer disconnected");
    shared.emit(NodeEvent::PeerDisconnected {
        pubkey: pk,
        addr,
        reason,
    });
    Ended::Closed
}
