//! Outbound connections.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmogit_identity::{Identity, PublicKey};
use mmogit_proto::{Event, Message, PeerInfo, Session, SessionConfig};
use rand::RngCore;
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::conn::Conn;
use crate::error::NodeError;

/// Most data messages kept while waiting for something else (e.g. a Pong).
const MAX_INBOX: usize = 1024;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Resolving and TCP connect (default 10 s).
    pub connect_timeout: Duration,
    /// Handshake after TCP connect (default 10 s).
    pub handshake_timeout: Duration,
    /// Waiting for the answer to a request such as Ping (default 30 s).
    pub request_timeout: Duration,
    /// Close when nothing was received for this long while we wait (default 30 s).
    pub idle_timeout: Duration,
    /// Heartbeat interval (default 30 s, at most idle_timeout / 2).
    pub heartbeat_interval: Duration,
    /// A started frame must complete within this; a write fails when the
    /// peer takes none of it for this long (default 30 s). Once a node
    /// drives the session, `NodeConfig::send_timeout` applies instead.
    pub frame_timeout: Duration,
    /// Hello `agent` string.
    pub agent: String,
    /// Hello `listen_port`: where we accept connections, if we do.
    pub listen_port: Option<u16>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(30),
            agent: SessionConfig::default().agent,
            listen_port: None,
        }
    }
}

/// An authenticated connection to a peer.
pub struct Connection {
    conn: Conn,
    peer: PeerInfo,
    addr: SocketAddr,
    session_id: [u8; 32],
    handshake_rtt: Duration,
    request_timeout: Duration,
    inbox: VecDeque<Message>,
}

/// Connects to `addr` (`host:port`), runs the handshake and returns once
/// both sides are authenticated. With `expected_pubkey`, a peer with another
/// key is refused ([`NodeError::WrongPubkey`]).
pub async fn connect(
    addr: &str,
    identity: Arc<Identity>,
    expected_pubkey: Option<PublicKey>,
    config: &ClientConfig,
) -> Result<Connection, NodeError> {
    connect_inner(addr, identity, expected_pubkey, config, true).await
}

/// [`connect`]; with `log` false failures are left to the caller to log
/// (the dialer logs them with the peer and its backoff).
pub(crate) async fn connect_inner(
    addr: &str,
    identity: Arc<Identity>,
    expected_pubkey: Option<PublicKey>,
    config: &ClientConfig,
    log: bool,
) -> Result<Connection, NodeError> {
    let unreachable = |source| NodeError::Unreachable {
        addr: addr.to_string(),
        source,
    };
    let t = config.connect_timeout;
    let resolved: Vec<SocketAddr> = tokio::time::timeout(t, tokio::net::lookup_host(addr))
        .await
        .map_err(|_| NodeError::Timeout(format!("resolving {addr}")))?
        .map_err(unreachable)?
        .collect();
    let mut last_err = None;
    let mut stream = None;
    for sa in resolved {
        match tokio::time::timeout(t, TcpStream::connect(sa)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last_err = Some(unreachable(e)),
            Err(_) => last_err = Some(NodeError::Timeout(format!("connecting to {sa}"))),
        }
    }
    let stream = match stream {
        Some(s) => s,
        None => {
            let err = last_err.unwrap_or_else(|| {
                unreachable(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no address found",
                ))
            });
            if log {
                // The caller reports the error; logging it here too would say it twice.
                debug!(%addr, error = %err, "connect failed");
            }
            return Err(err);
        }
    };
    let peer_addr = stream.peer_addr()?;
    let _ = stream.set_nodelay(true);
    handshake(stream, peer_addr, identity, expected_pubkey, config, log).await
}

async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    identity: Arc<Identity>,
    expected: Option<PublicKey>,
    config: &ClientConfig,
    log: bool,
) -> Result<Connection, NodeError> {
    let session_config = Arc::new(SessionConfig {
        agent: config.agent.clone(),
        listen_port: config.listen_port,
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
        heartbeat_interval: config.heartbeat_interval,
        frame_timeout: config.frame_timeout,
        ..SessionConfig::default()
    });
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let start = Instant::now();
    let session = Session::initiator(
        identity,
        session_config,
        expected,
        nonce,
        Box::new(rand::rngs::OsRng),
        start,
    );
    let mut conn = Conn::new(stream, session, config.frame_timeout);
    loop {
        conn.flush().await?;
        while let Some(ev) = conn.session.poll_event() {
            match ev {
                Event::Authenticated { peer, session_id } => {
                    let rtt = start.elapsed();
                    if log {
                        info!(%addr, peer = %peer.pubkey.short(12), agent = %peer.agent, rtt_us = rtt.as_micros() as u64, "connected");
                    }
                    return Ok(Connection {
                        conn,
                        peer,
                        addr,
                        session_id,
                        handshake_rtt: rtt,
                        request_timeout: config.request_timeout,
                        inbox: VecDeque::new(),
                    });
                }
                Event::Closed(reason) => {
                    conn.finish(Duration::from_secs(1)).await;
                    let mut err = NodeError::from_close(reason);
                    if let NodeError::NotAuthorized { peer } = &mut err {
                        *peer = conn.session.peer().map(|p| p.pubkey);
                    }
                    let who = conn.session.peer().map(|p| p.pubkey.short(12));
                    if log {
                        debug!(%addr, peer = who.as_deref().unwrap_or("-"), error = %err, "handshake failed");
                    }
                    return Err(err);
                }
                _ => {}
            }
        }
        // Bounded by the session's handshake timeout.
        conn.wait(None, None).await?;
    }
}

impl Connection {
    /// The driven connection and what the handshake learned, for the node's
    /// session task. Data messages already read are returned too.
    pub(crate) fn into_parts(self) -> (Conn, PeerInfo, SocketAddr, Duration, VecDeque<Message>) {
        (
            self.conn,
            self.peer,
            self.addr,
            self.handshake_rtt,
            self.inbox,
        )
    }

    /// The peer's public key.
    pub fn peer_pubkey(&self) -> PublicKey {
        self.peer.pubkey
    }

    /// What the peer said in its Hello.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The session id (SHA-256 over the Noise handshake hash and both Hellos).
    pub fn session_id(&self) -> &[u8; 32] {
        &self.session_id
    }

    /// The Noise protocol of the encrypted channel
    /// (`Noise_XK_25519_ChaChaPoly_BLAKE2s` when we dialled a known key).
    pub fn channel(&self) -> &'static str {
        self.conn
            .session
            .pattern()
            .map_or("none", mmogit_proto::noise::Pattern::name)
    }

    /// Time from TCP connected to authenticated (the Noise handshake, the
    /// Hellos and the authentication Ping: 2.5 round trips, plus signing,
    /// verifying and the X25519 work).
    pub fn handshake_rtt(&self) -> Duration {
        self.handshake_rtt
    }

    /// Sends a signed Ping with a random payload and waits for its Pong;
    /// returns the round-trip time.
    pub async fn ping(&mut self) -> Result<Duration, NodeError> {
        let mut payload = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut payload);
        let start = Instant::now();
        self.conn.session.send_ping(start, &payload)?;
        let deadline = start + self.request_timeout;
        self.wait_for(
            deadline,
            |ev| matches!(ev, Event::Pong(p) if p[..] == payload[..]),
        )
        .await?;
        let rtt = start.elapsed();
        debug!(addr = %self.addr, peer = %self.peer.pubkey.short(12), rtt_us = rtt.as_micros() as u64, "ping");
        Ok(rtt)
    }

    /// Sends `count` Pings keeping up to `window` in flight and waits for all
    /// Pongs; returns the total time. For measuring throughput.
    pub async fn ping_pipelined(
        &mut self,
        count: usize,
        window: usize,
    ) -> Result<Duration, NodeError> {
        let start = Instant::now();
        let deadline = start + self.request_timeout;
        let window = window.max(1);
        let (mut sent, mut received) = (0usize, 0usize);
        while received < count {
            while sent < count && sent - received < window {
                self.conn
                    .session
                    .send_ping(Instant::now(), &(sent as u64).to_be_bytes())?;
                sent += 1;
            }
            self.conn.flush().await?;
            let mut got = 0;
            while let Some(ev) = self.conn.session.poll_event() {
                match ev {
                    Event::Pong(_) => got += 1,
                    other => self.other_event(other)?,
                }
            }
            received += got;
            if received >= count {
                break;
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Timeout("waiting for Pongs".into()));
            }
            self.conn.wait(Some(deadline), None).await?;
        }
        Ok(start.elapsed())
    }

    /// Sends a data message (MemoryRequest, MemoryResponse, GitBundle).
    pub async fn send(&mut self, msg: Message) -> Result<(), NodeError> {
        self.conn.session.send(Instant::now(), msg)?;
        self.conn.flush().await
    }

    /// The next data message from the peer, within the request timeout.
    pub async fn recv(&mut self) -> Result<Message, NodeError> {
        if let Some(m) = self.inbox.pop_front() {
            return Ok(m);
        }
        let deadline = Instant::now() + self.request_timeout;
        let mut got = None;
        self.wait_for(deadline, |ev| {
            if let Event::Message(m) = ev {
                got = Some(m.clone());
                true
            } else {
                false
            }
        })
        .await?;
        Ok(got.expect("wait_for matched a message"))
    }

    /// Sends Bye with `reason` and closes the connection.
    pub async fn close(mut self, reason: &str) -> Result<(), NodeError> {
        self.conn.session.close(Instant::now(), reason);
        let r = self.conn.flush().await;
        self.conn.finish(Duration::from_secs(1)).await;
        debug!(addr = %self.addr, peer = %self.peer.pubkey.short(12), reason, "closed");
        r
    }

    /// Handles events until `matches` accepts one or `deadline` passes.
    async fn wait_for(
        &mut self,
        deadline: Instant,
        mut matches: impl FnMut(&Event) -> bool,
    ) -> Result<(), NodeError> {
        loop {
            self.conn.flush().await?;
            while let Some(ev) = self.conn.session.poll_event() {
                if matches(&ev) {
                    return Ok(());
                }
                self.other_event(ev)?;
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Timeout("waiting for the peer's answer".into()));
            }
            self.conn.wait(Some(deadline), None).await?;
        }
    }

    fn other_event(&mut self, ev: Event) -> Result<(), NodeError> {
        match ev {
            Event::Message(m) => {
                if self.inbox.len() >= MAX_INBOX {
                    return Err(NodeError::Protocol(
                        "too many unread messages from peer".into(),
                    ));
                }
                self.inbox.push_back(m);
                Ok(())
            }
            Event::Closed(reason) => {
                let err = NodeError::from_close(reason);
                debug!(addr = %self.addr, peer = %self.peer.pubkey.short(12), error = %err, "connection closed");
                Err(err)
            }
            _ => Ok(()),
        }
    }
}
