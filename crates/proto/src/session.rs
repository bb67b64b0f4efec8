//! Handshake and session state machine, sans-IO.
//!
//! The driver feeds received bytes with [`Session::handle_input`], writes out
//! every frame from [`Session::poll_transmit`], reacts to
//! [`Session::poll_event`], and calls [`Session::handle_timeout`] when
//! [`Session::poll_timeout`] passes. Randomness (Hello nonce, Ping payloads)
//! and time are injected, so the whole protocol is deterministic under test.
//!
//! Sequence (see docs/PROTOCOL.md):
//! ```text
//! initiator                                  acceptor
//!   Hello(I)  ─────────────┐    ┌─────────── Hello(A)      (both at once)
//!                          └──┐ │
//!   verify Hello(A) <─────────┼─┘            verify Hello(I)
//!   session id                └────────────> session id
//!   Ping(seq 0) ──────────────────────────>  verify: initiator is live
//!                                            authorize pubkey?
//!                       <──────────────────  Pong(seq 0)  or  Bye "not authorized"
//!   verify: authenticated
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use mmogit_identity::{Identity, PublicKey, Signature};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::codec::{
    encode_frame, FrameDecoder, RawMessage, HEADER_LEN, MAX_FRAME_LEN, PRE_AUTH_MAX_FRAME_LEN,
};
use crate::error::ProtoError;
use crate::message::{
    reasons, Bye, Hello, Message, MsgType, MAX_PING_LEN, MAX_REASON_LEN, NONCE_LEN, PROTOCOL_NAME,
};
use crate::noise::{self, Handshake, Pattern, Step, Transport};

/// Domain of the Hello signature.
pub const HELLO_DOMAIN: &[u8] = b"mmogit-hello-v1\0";
/// Domain of the session id hash (version 2: it covers the Noise
/// handshake hash too).
pub const SESSION_DOMAIN: &[u8] = b"mmogit-session-v2\0";
/// Domain of every signature after Hello.
pub const MSG_DOMAIN: &[u8] = b"mmogit-msg-v1\0";
/// Protocol versions this implementation speaks.
pub const PROTOCOL_VERSIONS: &[u32] = &[2];
/// Longest Noise transport message accepted before the peer is authorized:
/// one pre-authentication frame, its header and the tag.
pub const PRE_AUTH_MAX_NOISE_MESSAGE: usize = PRE_AUTH_MAX_FRAME_LEN + HEADER_LEN + noise::TAG_LEN;
/// Length of the authentication Ping payload.
pub const AUTH_PING_LEN: usize = 32;
/// Length of heartbeat Ping payloads.
pub const HEARTBEAT_PING_LEN: usize = 8;

/// Which end of the connection a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Opened the connection.
    Initiator,
    /// Accepted the connection.
    Acceptor,
}

impl Role {
    /// The role byte in signed messages: 0x01 initiator, 0x02 acceptor.
    pub fn byte(self) -> u8 {
        match self {
            Role::Initiator => 0x01,
            Role::Acceptor => 0x02,
        }
    }

    /// The other side.
    pub fn peer(self) -> Role {
        match self {
            Role::Initiator => Role::Acceptor,
            Role::Acceptor => Role::Initiator,
        }
    }
}

/// Session parameters.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Versions offered in Hello (highest common one is used).
    pub versions: Vec<u32>,
    /// Hello `agent` string.
    pub agent: String,
    /// Hello `listen_port`.
    pub listen_port: Option<u16>,
    /// Hello `capabilities`.
    pub capabilities: Vec<String>,
    /// The handshake must be complete within this time from creation.
    pub handshake_timeout: Duration,
    /// The session closes when nothing has been received for this long.
    pub idle_timeout: Duration,
    /// A heartbeat Ping is sent when nothing has been sent for
    /// `min(heartbeat_interval, idle_timeout / 2)`.
    pub heartbeat_interval: Duration,
    /// A frame that has started must be complete within this time.
    pub frame_timeout: Duration,
    /// Largest frame body accepted once the session is established (at most
    /// 10 MiB); before that, at most [`PRE_AUTH_MAX_FRAME_LEN`].
    pub max_frame_len: usize,
    /// Acceptor: refuse a first contact from someone who does not know our
    /// key (the Noise XX pattern); only XK, which proves it, is answered.
    pub hidden: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            versions: PROTOCOL_VERSIONS.to_vec(),
            agent: format!("mmogit/{}", env!("CARGO_PKG_VERSION")),
            listen_port: None,
            capabilities: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(30),
            max_frame_len: MAX_FRAME_LEN,
            hidden: false,
        }
    }
}

impl SessionConfig {
    /// The effective heartbeat interval.
    pub fn keepalive(&self) -> Duration {
        self.heartbeat_interval.min(self.idle_timeout / 2)
    }
}

/// What a session knows about its peer after a verified Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub pubkey: PublicKey,
    /// Negotiated protocol version.
    pub version: u32,
    pub agent: String,
    pub listen_port: Option<u16>,
    pub capabilities: Vec<String>,
}

/// Why a session closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it, sending Bye with this reason.
    Local(String),
    /// The peer sent Bye with this reason.
    Remote(String),
    /// A protocol error (a Bye was sent when a session id existed).
    Error(ProtoError),
    /// The byte stream ended without Bye.
    Eof,
}

/// What the driver must react to.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Acceptor only: the initiator proved it holds `peer.pubkey` in this
    /// session. Call [`Session::accept`] or [`Session::reject`].
    AuthorizationRequired(PeerInfo),
    /// The handshake is complete; messages may flow.
    Authenticated {
        peer: PeerInfo,
        session_id: [u8; 32],
    },
    /// A Pong answering one of our Pings.
    Pong(Vec<u8>),
    /// A MemoryRequest, MemoryResponse or GitBundle.
    Message(Message),
    /// The session is closed; flush `poll_transmit` and close the connection.
    Closed(CloseReason),
}

/// Most plaintext bytes of frames put together in one transport message:
/// one pre-authorization frame with its header, which every peer accepts
/// in any state.
const COALESCE_MAX: usize = PRE_AUTH_MAX_FRAME_LEN + HEADER_LEN;

/// Something queued for the peer.
enum Out {
    /// Noise handshake bytes, sent as they are.
    Raw(Vec<u8>),
    /// A frame, encrypted when it is taken (so transport nonces follow the
    /// order of the wire).
    Frame(Vec<u8>),
}

/// The encrypted channel under the frames.
enum Channel {
    /// The Noise handshake is running; nothing but its messages flows.
    Handshake(Box<Handshake>),
    /// Frames flow inside Noise transport messages.
    Transport(Box<Transport>),
    /// Torn down (the handshake failed).
    Gone,
}

#[derive(Debug)]
enum State {
    /// The Noise handshake has not finished.
    AwaitChannel,
    AwaitHello,
    /// Initiator: waiting for the Pong to our authentication Ping.
    AwaitPong {
        ping: Vec<u8>,
    },
    /// Acceptor: waiting for the initiator's authentication Ping.
    AwaitPing,
    /// Acceptor: the Ping verified; waiting for accept()/reject().
    AwaitDecision {
        ping: Vec<u8>,
    },
    Established,
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitChannel => "in the Noise handshake",
            State::AwaitHello => "awaiting Hello",
            State::AwaitPong { .. } => "awaiting the authentication Pong",
            State::AwaitPing => "awaiting the authentication Ping",
            State::AwaitDecision { .. } => "awaiting authorization",
            State::Established => "established",
            State::Closed => "closed",
        }
    }
}

/// One side of one connection.
pub struct Session {
    role: Role,
    identity: Arc<Identity>,
    config: Arc<SessionConfig>,
    expected: Option<PublicKey>,
    rng: Box<dyn RngCore + Send>,
    channel: Channel,
    decoder: FrameDecoder,
    state: State,
    /// Our Hello payload, kept until the session id is computed.
    own_hello: Vec<u8>,
    peer: Option<PeerInfo>,
    session_id: Option<[u8; 32]>,
    send_seq: u64,
    recv_seq: u64,
    /// Frames whose signatures were checked in a batch (the rest one by one).
    batch_verified: u64,
    transmit: VecDeque<Out>,
    /// Tests: every frame sent, in plaintext.
    #[cfg(test)]
    sent_log: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    created: Instant,
    last_recv: Instant,
    last_send: Instant,
    frame_started: Option<Instant>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("state", &self.state.name())
            .field("peer", &self.peer.as_ref().map(|p| p.pubkey.short(12)))
            .finish()
    }
}

/// The bytes a Hello signature covers: `"mmogit-hello-v1\0" || payload`.
pub fn hello_signed_bytes(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HELLO_DOMAIN.len() + payload.len());
    v.extend_from_slice(HELLO_DOMAIN);
    v.extend_from_slice(payload);
    v
}

/// Session id: `SHA-256("mmogit-session-v2\0" || h || u32be(len(I)) || I || u32be(len(A)) || A)`
/// over the Noise handshake hash `h` (32 bytes) and the initiator's and
/// acceptor's Hello payload bytes, as received. Every signature after Hello
/// covers it, so a signed message belongs to one Noise channel only.
pub fn compute_session_id(
    handshake_hash: &[u8; 32],
    initiator_hello: &[u8],
    acceptor_hello: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SESSION_DOMAIN);
    h.update(handshake_hash);
    h.update((initiator_hello.len() as u32).to_be_bytes());
    h.update(initiator_hello);
    h.update((acceptor_hello.len() as u32).to_be_bytes());
    h.update(acceptor_hello);
    h.finalize().into()
}

/// The bytes every post-Hello signature covers:
/// `"mmogit-msg-v1\0" || session_id (32) || role byte || u64be(seq)
///  || u32be(len(msg_type)) || msg_type || u32be(len(payload)) || payload`.
pub fn signed_bytes(
    session_id: &[u8; 32],
    sender: Role,
    seq: u64,
    msg_type: MsgType,
    payload: &[u8],
) -> Vec<u8> {
    let t = msg_type.as_str().as_bytes();
    let mut v = Vec::with_capacity(MSG_DOMAIN.len() + 32 + 1 + 8 + 4 + t.len() + 4 + payload.len());
    v.extend_from_slice(MSG_DOMAIN);
    v.extend_from_slice(session_id);
    v.push(sender.byte());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&(t.len() as u32).to_be_bytes());
    v.extend_from_slice(t);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn cut_reason(mut s: String) -> String {
    if s.len() > MAX_REASON_LEN {
        let mut cut = MAX_REASON_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The Bye reason sent for a local protocol error.
pub fn bye_reason_for(err: &ProtoError) -> String {
    cut_reason(match err {
        ProtoError::BadSignature { .. } => reasons::BAD_SIGNATURE.to_string(),
        ProtoError::WrongPubkey { .. } => reasons::WRONG_PUBKEY.to_string(),
        ProtoError::VersionMismatch { ours, theirs } => format!(
            "{}: we support {ours:?}, you support {theirs:?}",
            reasons::VERSION_MISMATCH
        ),
        ProtoError::HandshakeTimeout => reasons::HANDSHAKE_TIMEOUT.to_string(),
        ProtoError::IdleTimeout => reasons::IDLE_TIMEOUT.to_string(),
        ProtoError::FrameTimeout => reasons::FRAME_TIMEOUT.to_string(),
        other => format!("{}: {other}", reasons::PROTOCOL_ERROR),
    })
}

impl Session {
    /// The side that opened the connection. With `expected_pubkey` the
    /// channel is Noise XK to that key (only its holder can answer), and
    /// the acceptor's Hello must carry it ([`ProtoError::WrongPubkey`]
    /// otherwise); without, Noise XX, which a hidden node refuses. The
    /// first handshake message is queued at once; the ephemeral key is
    /// drawn from `rng`.
    pub fn initiator(
        identity: Arc<Identity>,
        config: Arc<SessionConfig>,
        expected_pubkey: Option<PublicKey>,
        nonce: [u8; NONCE_LEN],
        rng: Box<dyn RngCore + Send>,
        now: Instant,
    ) -> Session {
        Self::new(
            Role::Initiator,
            identity,
            config,
            expected_pubkey,
            nonce,
            rng,
            now,
        )
    }

    /// The side that accepted the connection. Nothing is sent until the
    /// initiator's first handshake message proves it may talk to us.
    pub fn acceptor(
        identity: Arc<Identity>,
        config: Arc<SessionConfig>,
        nonce: [u8; NONCE_LEN],
        rng: Box<dyn RngCore + Send>,
        now: Instant,
    ) -> Session {
        Self::new(Role::Acceptor, identity, config, None, nonce, rng, now)
    }

    fn new(
        role: Role,
        identity: Arc<Identity>,
        config: Arc<SessionConfig>,
        expected: Option<PublicKey>,
        nonce: [u8; NONCE_LEN],
        mut rng: Box<dyn RngCore + Send>,
        now: Instant,
    ) -> Session {
        let hello = Hello {
            protocol: PROTOCOL_NAME.to_string(),
            versions: config.versions.clone(),
            pubkey: identity.public_key().to_hex(),
            nonce: B64.encode(nonce),
            agent: config.agent.clone(),
            listen_port: config.listen_port,
            capabilities: config.capabilities.clone(),
        };
        let payload = Message::Hello(hello).encode_payload();
        let mut ephemeral = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut ephemeral[..]);
        let mut transmit = VecDeque::new();
        let handshake = match role {
            Role::Initiator => {
                let (hs, first) = Handshake::initiator(&identity, expected.as_ref(), *ephemeral);
                transmit.push_back(Out::Raw(first));
                hs
            }
            Role::Acceptor => Handshake::responder(&identity, config.hidden, *ephemeral),
        };
        Session {
            role,
            channel: Channel::Handshake(Box::new(handshake)),
            decoder: FrameDecoder::new(config.max_frame_len.min(PRE_AUTH_MAX_FRAME_LEN)),
            identity,
            config,
            expected,
            rng,
            state: State::AwaitChannel,
            own_hello: payload,
            peer: None,
            session_id: None,
            send_seq: 0,
            recv_seq: 0,
            batch_verified: 0,
            transmit,
            #[cfg(test)]
            sent_log: Vec::new(),
            events: VecDeque::new(),
            created: now,
            last_recv: now,
            last_send: now,
            frame_started: None,
        }
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer, once its Hello verified.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// The session id, once both Hellos are known.
    /// (Version 2: it covers the Noise handshake hash.)
    pub fn session_id(&self) -> Option<&[u8; 32]> {
        self.session_id.as_ref()
    }

    /// True once authenticated and until closed.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// True once closed (Bye sent or received, error, EOF).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Heap bytes held for input: the frame decoder's and the channel's
    /// (0 between frames).
    pub fn buffered_input(&self) -> usize {
        self.decoder.capacity() + self.transport().map_or(0, Transport::buffered)
    }

    /// The Noise pattern of the channel, once the handshake is done
    /// ([`Pattern::Xk`] when the initiator knew the acceptor's key).
    pub fn pattern(&self) -> Option<Pattern> {
        self.transport().map(Transport::pattern)
    }

    /// The Noise handshake hash, once the channel is up.
    pub fn handshake_hash(&self) -> Option<&[u8; 32]> {
        self.transport().map(Transport::handshake_hash)
    }

    fn transport(&self) -> Option<&Transport> {
        match &self.channel {
            Channel::Transport(t) => Some(t),
            _ => None,
        }
    }

    /// The next bytes to write, whole (a handshake message, or the
    /// transport messages of one frame, or of several small frames queued
    /// together).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let out = self.transmit.pop_front();
        if self.transmit.is_empty() && self.transmit.capacity() > 4 {
            self.transmit = VecDeque::new();
        }
        let mut frame = match out? {
            Out::Raw(bytes) => return Some(bytes),
            Out::Frame(frame) => frame,
        };
        #[cfg(test)]
        self.sent_log.push(frame.clone());
        // Small frames queued together go out in one transport message
        // (a message costs ~3.5 µs of ChaChaPoly set-up whatever its size:
        // as much again as a Ping's own bytes). At most one pre-authorization
        // frame's worth, so a peer not yet authenticated accepts it.
        while let Some(Out::Frame(next)) = self.transmit.front() {
            if frame.len() + next.len() > COALESCE_MAX {
                break;
            }
            let Some(Out::Frame(next)) = self.transmit.pop_front() else {
                unreachable!("just looked");
            };
            #[cfg(test)]
            self.sent_log.push(next.clone());
            frame.extend_from_slice(&next);
        }
        let Channel::Transport(t) = &mut self.channel else {
            return None;
        };
        let pieces = frame.len().div_ceil(noise::MAX_PLAINTEXT).max(1);
        let mut wire = Vec::with_capacity(frame.len() + pieces * (2 + noise::TAG_LEN));
        // Fails only when 2^64 messages have been sent.
        t.encrypt(&frame, &mut wire).ok()?;
        Some(wire)
    }

    /// How many received frames had their signatures checked in a batch
    /// (frames that arrived together on an established session) rather
    /// than one by one. For statistics and tests.
    pub fn batch_verified_frames(&self) -> u64 {
        self.batch_verified
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        if self.events.is_empty() && self.events.capacity() > 0 {
            // Idle sessions hold no event buffer.
            self.events = VecDeque::new();
        }
        e
    }

    /// Feeds received bytes (any split). On error the session is closed, a
    /// signed Bye is queued when a session id exists, and `Closed(Error)` is
    /// queued as an event; the error is returned too. A failed Noise
    /// handshake sends nothing at all.
    pub fn handle_input(&mut self, now: Instant, mut data: &[u8]) -> Result<(), ProtoError> {
        if self.is_closed() || data.is_empty() {
            return Ok(());
        }
        self.last_recv = now;
        if let Channel::Handshake(hs) = &mut self.channel {
            match hs.handle_input(data) {
                Err(e) => return self.fail(now, ProtoError::Noise(e)),
                Ok(Step::Continue(out)) => {
                    // A handshake message that has started must be
                    // complete within the frame timeout, like a frame.
                    let partial = hs.buffered() > 0;
                    self.push_raw(now, out);
                    if !partial {
                        self.frame_started = None;
                    } else if self.frame_started.is_none() {
                        self.frame_started = Some(now);
                    }
                    return Ok(());
                }
                Ok(Step::Done(out)) => {
                    self.push_raw(now, out);
                    if let Err(e) = self.open_channel(now) {
                        return self.fail(now, e);
                    }
                }
            }
            // What followed the last handshake message is in the transport.
            data = &[];
        }
        let Channel::Transport(t) = &mut self.channel else {
            return Ok(());
        };
        t.push(data);
        let mut plain = Vec::new();
        while !self.is_closed() {
            let established = self.is_established();
            let Channel::Transport(t) = &mut self.channel else {
                break;
            };
            // Until the peer is authorized, one small message at a time:
            // the limit rises only once the handshake is done.
            let (max, count) = if established {
                (noise::MAX_NOISE_MESSAGE, usize::MAX)
            } else {
                (PRE_AUTH_MAX_NOISE_MESSAGE, 1)
            };
            t.set_max_message(max);
            plain.clear();
            match t.decrypt_buffered(&mut plain, count) {
                Err(e) => return self.fail(now, ProtoError::Noise(e)),
                Ok(0) => break,
                Ok(_) => self.on_plain(now, &plain)?,
            }
        }
        let partial = self.transport().is_some_and(|t| t.buffered() > 0);
        if (partial || self.decoder.in_frame()) && self.frame_started.is_none() {
            self.frame_started = Some(now);
        }
        Ok(())
    }

    /// Queues handshake bytes as they are (they are their own protection).
    fn push_raw(&mut self, now: Instant, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.transmit.push_back(Out::Raw(bytes));
            self.last_send = now;
        }
    }

    /// The Noise handshake is complete: switch to transport messages and
    /// send our Hello inside them.
    fn open_channel(&mut self, now: Instant) -> Result<(), ProtoError> {
        let Channel::Handshake(hs) = std::mem::replace(&mut self.channel, Channel::Gone) else {
            return Err(ProtoError::InvalidSend("a second handshake"));
        };
        let t = hs.into_transport().map_err(ProtoError::Noise)?;
        self.channel = Channel::Transport(Box::new(t));
        self.state = State::AwaitHello;
        self.frame_started = None;
        let sig = self.identity.sign(&hello_signed_bytes(&self.own_hello));
        let frame = encode_frame(MsgType::Hello, &self.own_hello, &sig.to_bytes())?;
        self.push_frame(now, frame)
    }

    /// Queues a frame for the channel (encrypted by [`Session::poll_transmit`]).
    fn push_frame(&mut self, now: Instant, frame: Vec<u8>) -> Result<(), ProtoError> {
        if !matches!(self.channel, Channel::Transport(_)) {
            return Err(ProtoError::NotEstablished);
        }
        self.transmit.push_back(Out::Frame(frame));
        self.last_send = now;
        Ok(())
    }

    /// Tests: the next queued frame in plaintext, taken without encrypting
    /// it (deliver it with [`Session::handle_plain`], which skips
    /// decryption, so both channel ends stay in step).
    #[cfg(test)]
    pub(crate) fn poll_plain(&mut self) -> Option<Vec<u8>> {
        match self.transmit.pop_front()? {
            Out::Frame(f) => Some(f),
            Out::Raw(_) => panic!("handshake bytes queued: use poll_transmit"),
        }
    }

    /// Tests: whether the next queued bytes belong to the Noise handshake.
    #[cfg(test)]
    pub(crate) fn next_is_raw(&self) -> bool {
        matches!(self.transmit.front(), Some(Out::Raw(_)))
    }

    /// Tests: frames sent so far through [`Session::poll_transmit`], in
    /// plaintext.
    #[cfg(test)]
    pub(crate) fn take_sent_log(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.sent_log)
    }

    /// Tests: plaintext frame bytes as if they had come out of the channel.
    #[cfg(test)]
    pub(crate) fn handle_plain(&mut self, now: Instant, data: &[u8]) -> Result<(), ProtoError> {
        assert!(matches!(self.channel, Channel::Transport(_)));
        if self.is_closed() || data.is_empty() {
            return Ok(());
        }
        self.last_recv = now;
        self.on_plain(now, data)?;
        if self.decoder.in_frame() && self.frame_started.is_none() {
            self.frame_started = Some(now);
        }
        Ok(())
    }

    /// Hostile-peer tests: sends `bytes` inside the channel as they are,
    /// unsigned and unchecked (a forged frame, a cut one, garbage). Nothing
    /// else uses it; a peer can only harm its own session with it.
    #[doc(hidden)]
    pub fn send_raw_for_tests(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ProtoError> {
        self.push_frame(now, bytes.to_vec())
    }

    /// Frames of decrypted bytes.
    fn on_plain(&mut self, now: Instant, mut data: &[u8]) -> Result<(), ProtoError> {
        // Every frame completed by this input, then the first decoding error
        // (if any): frames before the error are processed first, as if they
        // had arrived alone.
        // Until the session is established frames are taken one at a time:
        // the frame limit rises (pre-authentication 4 KiB, then
        // `max_frame_len`) only once the handshake is done.
        while !data.is_empty() && !self.is_closed() {
            let one_at_a_time = !self.is_established();
            let mut bodies = Vec::new();
            let mut decode_error = None;
            loop {
                match self.decoder.decode(&mut data) {
                    Ok(Some(body)) => {
                        bodies.push(body);
                        if one_at_a_time {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        decode_error = Some(e);
                        break;
                    }
                }
            }
            if !bodies.is_empty() {
                self.frame_started = None;
            }
            if let Err(e) = self.on_frames(now, bodies) {
                return self.fail(now, e);
            }
            if let Some(e) = decode_error {
                if !self.is_closed() {
                    return self.fail(now, e);
                }
            }
        }
        Ok(())
    }

    /// The stream ended. A frame cut short is an error; otherwise the session
    /// closes with [`CloseReason::Eof`] (nothing if already closed).
    pub fn handle_eof(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        if let Channel::Handshake(_) = &self.channel {
            // An initiator cut off in the handshake: with XK, the peer
            // could not read our first message (not the key we dialled);
            // without a key, most likely a node that is hidden.
            if self.role == Role::Initiator {
                let err = match &self.expected {
                    Some(k) => ProtoError::KeyNotProven {
                        expected: k.to_hex(),
                    },
                    None => ProtoError::ClosedWithoutKey,
                };
                let _ = self.fail(now, err);
                return;
            }
        }
        if let Some(t) = self.transport() {
            if t.buffered() > 0 {
                let _ = self.fail(
                    now,
                    ProtoError::Truncated {
                        have: t.buffered(),
                        need: t.buffered() + 1,
                    },
                );
                return;
            }
        }
        if let Err(e) = self.decoder.finish() {
            let _ = self.fail(now, e);
            return;
        }
        self.state = State::Closed;
        self.transmit.clear();
        self.events.push_back(Event::Closed(CloseReason::Eof));
    }

    /// When [`Session::handle_timeout`] must next be called (None when closed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        let mut t = self.last_recv + self.config.idle_timeout;
        if self.is_established() {
            t = t.min(self.last_send + self.config.keepalive());
        } else {
            t = t.min(self.created + self.config.handshake_timeout);
        }
        if let Some(fs) = self.frame_started {
            t = t.min(fs + self.config.frame_timeout);
        }
        Some(t)
    }

    /// Fires due timers: handshake, frame and idle timeouts close the
    /// session; an idle established session sends a heartbeat Ping.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        if !self.is_established() && now >= self.created + self.config.handshake_timeout {
            let _ = self.fail(now, ProtoError::HandshakeTimeout);
            return;
        }
        if let Some(fs) = self.frame_started {
            if now >= fs + self.config.frame_timeout {
                let _ = self.fail(now, ProtoError::FrameTimeout);
                return;
            }
        }
        if now >= self.last_recv + self.config.idle_timeout {
            let _ = self.fail(now, ProtoError::IdleTimeout);
            return;
        }
        if self.is_established() && now >= self.last_send + self.config.keepalive() {
            let mut p = vec![0u8; HEARTBEAT_PING_LEN];
            self.rng.fill_bytes(&mut p);
            if let Err(e) = self.send_signed(now, MsgType::Ping, &p) {
                let _ = self.fail(now, e);
            }
        }
    }

    /// Acceptor: authorize the peer of an [`Event::AuthorizationRequired`].
    pub fn accept(&mut self, now: Instant) -> Result<(), ProtoError> {
        let ping = match std::mem::replace(&mut self.state, State::Closed) {
            State::AwaitDecision { ping } => ping,
            other => {
                self.state = other;
                return Err(ProtoError::InvalidSend("accept outside authorization"));
            }
        };
        if let Err(e) = self.send_signed(now, MsgType::Pong, &ping) {
            return self.fail(now, e);
        }
        self.establish();
        Ok(())
    }

    /// Acceptor: refuse the peer; sends Bye with `reason` (use
    /// [`reasons::NOT_AUTHORIZED`]) and closes.
    pub fn reject(&mut self, now: Instant, reason: &str) {
        self.close(now, reason);
    }

    /// Sends a Ping with `payload` (at most 64 bytes); the answer comes as
    /// [`Event::Pong`].
    pub fn send_ping(&mut self, now: Instant, payload: &[u8]) -> Result<(), ProtoError> {
        if payload.len() > MAX_PING_LEN {
            return Err(ProtoError::InvalidPayload {
                msg_type: "Ping",
                reason: format!("{} bytes, at most {MAX_PING_LEN}", payload.len()),
            });
        }
        self.check_established()?;
        self.send_signed(now, MsgType::Ping, payload)
    }

    /// Sends a message on an established session. Ping goes through
    /// [`Session::send_ping`], Bye through [`Session::close`]; Hello and Pong
    /// are the session's own business.
    pub fn send(&mut self, now: Instant, msg: Message) -> Result<(), ProtoError> {
        match msg {
            Message::Hello(_) => Err(ProtoError::InvalidSend("Hello")),
            Message::Pong(_) => Err(ProtoError::InvalidSend("Pong")),
            Message::Ping(p) => self.send_ping(now, &p),
            Message::Bye(b) => {
                self.check_not_closed()?;
                self.close(now, &b.reason);
                Ok(())
            }
            other => {
                self.check_established()?;
                let payload = other.encode_payload();
                self.send_signed(now, other.msg_type(), &payload)
            }
        }
    }

    /// Closes the session: queues Bye with `reason` when a session id exists
    /// (otherwise there is nothing to sign it with) and `Closed(Local)`.
    pub fn close(&mut self, now: Instant, reason: &str) {
        if self.is_closed() {
            return;
        }
        let reason = cut_reason(reason.to_string());
        if self.session_id.is_some() {
            let payload = Message::Bye(Bye {
                reason: reason.clone(),
            })
            .encode_payload();
            let _ = self.send_signed(now, MsgType::Bye, &payload);
        }
        self.state = State::Closed;
        self.events
            .push_back(Event::Closed(CloseReason::Local(reason)));
    }

    fn check_not_closed(&self) -> Result<(), ProtoError> {
        if self.is_closed() {
            Err(ProtoError::Closed)
        } else {
            Ok(())
        }
    }

    fn check_established(&self) -> Result<(), ProtoError> {
        self.check_not_closed()?;
        if !self.is_established() {
            return Err(ProtoError::NotEstablished);
        }
        Ok(())
    }

    fn establish(&mut self) {
        self.state = State::Established;
        self.decoder.set_max_len(self.config.max_frame_len);
        let peer = self.peer.clone().expect("peer known once Hello verified");
        let session_id = self
            .session_id
            .expect("session id known once Hello verified");
        self.events
            .push_back(Event::Authenticated { peer, session_id });
    }

    fn fail(&mut self, now: Instant, err: ProtoError) -> Result<(), ProtoError> {
        if !self.is_closed() {
            if self.session_id.is_some() {
                let payload = Message::Bye(Bye {
                    reason: bye_reason_for(&err),
                })
                .encode_payload();
                let _ = self.send_signed(now, MsgType::Bye, &payload);
            }
            self.state = State::Closed;
            self.events
                .push_back(Event::Closed(CloseReason::Error(err.clone())));
        }
        Err(err)
    }

    fn send_signed(
        &mut self,
        now: Instant,
        msg_type: MsgType,
        payload: &[u8],
    ) -> Result<(), ProtoError> {
        let sid = self.session_id.ok_or(ProtoError::NotEstablished)?;
        let seq = self.send_seq;
        let next = seq.checked_add(1).ok_or(ProtoError::SequenceExhausted)?;
        let sig = self
            .identity
            .sign(&signed_bytes(&sid, self.role, seq, msg_type, payload));
        let frame = encode_frame(msg_type, payload, &sig.to_bytes())?;
        self.send_seq = next;
        self.push_frame(now, frame)
    }

    /// Processes complete frames in order, stopping when the session closes.
    /// On an established session, a run of two or more signed frames is
    /// verified as one batch (about twice as fast per signature); if the
    /// batch fails, the same frames are verified one by one, so every frame
    /// before the bad one is processed exactly as it would have been alone.
    fn on_frames(&mut self, now: Instant, bodies: Vec<Vec<u8>>) -> Result<(), ProtoError> {
        let mut bodies = bodies.into_iter().peekable();
        while let Some(body) = bodies.next() {
            if self.is_closed() {
                break;
            }
            let raw = RawMessage::from_body(&body)?;
            if !self.is_established() || raw.msg_type == MsgType::Hello || bodies.peek().is_none() {
                self.on_raw(now, raw)?;
                continue;
            }
            // A run of signed frames: this one and the ones that follow,
            // up to one that does not parse or is a Hello (handled alone).
            let mut run = vec![raw];
            let mut rest = None;
            for body in bodies.by_ref() {
                match RawMessage::from_body(&body) {
                    Ok(r) if r.msg_type != MsgType::Hello => run.push(r),
                    other => {
                        rest = Some(other);
                        break;
                    }
                }
            }
            if self.verify_run(&run) {
                self.batch_verified += run.len() as u64;
                for raw in run {
                    if self.is_closed() {
                        return Ok(());
                    }
                    self.recv_seq = self
                        .recv_seq
                        .checked_add(1)
                        .ok_or(ProtoError::SequenceExhausted)?;
                    self.on_verified(now, raw)?;
                }
            } else {
                for raw in run {
                    if self.is_closed() {
                        return Ok(());
                    }
                    self.on_raw(now, raw)?;
                }
            }
            match rest {
                Some(_) if self.is_closed() => break,
                Some(r) => self.on_raw(now, r?)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Batch-verifies a run of frames of an established session against
    /// the sequence numbers they must carry (the next ones expected).
    fn verify_run(&self, run: &[RawMessage]) -> bool {
        let sid = self.session_id.expect("session id exists after Hello");
        let peer_key = self.peer.as_ref().expect("peer exists after Hello").pubkey;
        let mut signed = Vec::with_capacity(run.len());
        for (i, raw) in run.iter().enumerate() {
            let Some(seq) = self.recv_seq.checked_add(i as u64) else {
                return false;
            };
            signed.push(signed_bytes(
                &sid,
                self.role.peer(),
                seq,
                raw.msg_type,
                &raw.payload,
            ));
        }
        let messages: Vec<&[u8]> = signed.iter().map(Vec::as_slice).collect();
        let signatures: Vec<Signature> = run
            .iter()
            .map(|r| Signature::from_bytes(&r.signature))
            .collect();
        let keys = vec![peer_key; run.len()];
        mmogit_identity::verify_batch(&messages, &signatures, &keys).is_ok()
    }

    fn on_raw(&mut self, now: Instant, raw: RawMessage) -> Result<(), ProtoError> {
        if matches!(self.state, State::AwaitHello) {
            if raw.msg_type != MsgType::Hello {
                return Err(ProtoError::UnexpectedMessage {
                    msg_type: raw.msg_type.as_str(),
                    state: self.state.name(),
                });
            }
            return self.on_hello(now, raw);
        }
        if raw.msg_type == MsgType::Hello {
            return Err(ProtoError::UnexpectedMessage {
                msg_type: "Hello",
                state: self.state.name(),
            });
        }
        // Verify before looking inside the payload.
        let sid = self.session_id.expect("session id exists after Hello");
        let peer_key = self.peer.as_ref().expect("peer exists after Hello").pubkey;
        let signed = signed_bytes(
            &sid,
            self.role.peer(),
            self.recv_seq,
            raw.msg_type,
            &raw.payload,
        );
        peer_key
            .verify(&signed, &Signature::from_bytes(&raw.signature))
            .map_err(|_| ProtoError::BadSignature {
                msg_type: raw.msg_type.as_str(),
            })?;
        self.recv_seq = self
            .recv_seq
            .checked_add(1)
            .ok_or(ProtoError::SequenceExhausted)?;
        self.on_verified(now, raw)
    }

    /// A frame whose signature was verified (its sequence number counted).
    fn on_verified(&mut self, now: Instant, raw: RawMessage) -> Result<(), ProtoError> {
        let msg = Message::decode_payload(raw.msg_type, &raw.payload)?;
        if let Message::Bye(b) = msg {
            self.state = State::Closed;
            self.transmit.clear();
            self.events
                .push_back(Event::Closed(CloseReason::Remote(b.reason)));
            return Ok(());
        }
        let unexpected = |state: &State, t: MsgType| ProtoError::UnexpectedMessage {
            msg_type: t.as_str(),
            state: state.name(),
        };
        match (&self.state, msg) {
            (State::AwaitPong { ping }, Message::Pong(p)) => {
                if *ping != p {
                    return Err(ProtoError::PongMismatch);
                }
                self.establish();
            }
            (State::AwaitPing, Message::Ping(p)) => {
                let peer = self.peer.clone().expect("peer exists after Hello");
                self.state = State::AwaitDecision { ping: p };
                self.events.push_back(Event::AuthorizationRequired(peer));
            }
            (State::Established, Message::Ping(p)) => {
                self.send_signed(now, MsgType::Pong, &p)?;
            }
            (State::Established, Message::Pong(p)) => self.events.push_back(Event::Pong(p)),
            (State::Established, m) => self.events.push_back(Event::Message(m)),
            (state, m) => return Err(unexpected(state, m.msg_type())),
        }
        Ok(())
    }

    fn on_hello(&mut self, now: Instant, raw: RawMessage) -> Result<(), ProtoError> {
        let hello = match Message::decode_payload(MsgType::Hello, &raw.payload)? {
            Message::Hello(h) => h,
            _ => unreachable!("decode_payload(Hello) yields Hello"),
        };
        let pubkey: PublicKey = hello
            .pubkey
            .parse()
            .map_err(|e| ProtoError::InvalidPayload {
                msg_type: "Hello",
                reason: format!("pubkey: {e}"),
            })?;
        // The key in the Hello must be the one the Noise handshake
        // authenticated: its holder is at the other end of this channel.
        let t = self.transport().ok_or(ProtoError::NotEstablished)?;
        if !t.is_peer(&pubkey) {
            return Err(ProtoError::ChannelKeyMismatch);
        }
        let h = *t.handshake_hash();
        pubkey
            .verify(
                &hello_signed_bytes(&raw.payload),
                &Signature::from_bytes(&raw.signature),
            )
            .map_err(|_| ProtoError::BadSignature { msg_type: "Hello" })?;
        let own = std::mem::take(&mut self.own_hello);
        let sid = match self.role {
            Role::Initiator => compute_session_id(&h, &own, &raw.payload),
            Role::Acceptor => compute_session_id(&h, &raw.payload, &own),
        };
        self.session_id = Some(sid);
        if let Some(expected) = self.expected {
            if expected != pubkey {
                return Err(ProtoError::WrongPubkey {
                    expected: expected.to_hex(),
                    got: pubkey.to_hex(),
                });
            }
        }
        let version = self
            .config
            .versions
            .iter()
            .filter(|v| hello.versions.contains(v))
            .max()
            .copied()
            .ok_or_else(|| ProtoError::VersionMismatch {
                ours: self.config.versions.clone(),
                theirs: hello.versions.clone(),
            })?;
        self.peer = Some(PeerInfo {
            pubkey,
            version,
            agent: hello.agent,
            listen_port: hello.listen_port,
            capabilities: hello.capabilities,
        });
        match self.role {
            Role::Initiator => {
                let mut ping = vec![0u8; AUTH_PING_LEN];
                self.rng.fill_bytes(&mut ping);
                self.send_signed(now, MsgType::Ping, &ping)?;
                self.state = State::AwaitPong { ping };
            }
            Role::Acceptor => self.state = State::AwaitPing,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
