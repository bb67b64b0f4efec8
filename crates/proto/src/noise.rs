//! Version 2's encrypted channel, without I/O: a Noise handshake, then
//! Noise transport messages that carry the frame stream (`codec.rs`, which
//! does not depend on this module).
//!
//! * Patterns: [`PROTOCOL_XK`] when the initiator knows the responder's key
//!   (the usual case: `p2p add --pubkey`, a git-URL peer's branch, an mDNS
//!   record), [`PROTOCOL_XX`] for a first contact without a key, which a
//!   node may refuse (`hidden`). Both use the X25519 form of the agents'
//!   Ed25519 identities as static keys ([`mmogit_identity::Identity::x25519_secret`]).
//! * Wire: every Noise message is sent as `[u16 BE length][message]`. The
//!   first one of a connection is preceded, inside its frame, by one byte
//!   naming the pattern ([`Pattern`]). The prologue is `"mmogit/2"` followed
//!   by that byte, so changing it breaks the handshake.
//! * After the handshake, the plaintext of the transport messages is the
//!   stream of `[u32 BE length][JSON]` frames (`codec.rs`), split into
//!   pieces of at most [`MAX_PLAINTEXT`] bytes; the receiver decrypts each
//!   message and feeds the bytes to the frame decoder.
//!
//! Nothing is sent to a peer whose first message does not decrypt: with XK
//! that is anyone who does not know our key, so a scanner learns nothing.
//! The specification is section 14 of `docs/PROTOCOL.md`.

use mmogit_identity::{Identity, PublicKey};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState, TransportState};
use zeroize::Zeroizing;

/// The pattern when the initiator knows the responder's key.
pub const PROTOCOL_XK: &str = "Noise_XK_25519_ChaChaPoly_BLAKE2s";
/// The pattern of a first contact without the responder's key.
pub const PROTOCOL_XX: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// The prologue, before the pattern byte.
pub const PROLOGUE: &[u8] = b"mmogit/2";
/// Largest Noise message (the Noise specification's limit).
pub const MAX_NOISE_MESSAGE: usize = 65_535;
/// Bytes a transport message adds to its plaintext (the ChaChaPoly tag).
pub const TAG_LEN: usize = 16;
/// Largest plaintext of one transport message.
pub const MAX_PLAINTEXT: usize = MAX_NOISE_MESSAGE - TAG_LEN;
/// Largest handshake message accepted (they carry no payload: 96 bytes at
/// most); anything longer is refused before any work is done.
pub const MAX_HANDSHAKE_MESSAGE: usize = 128;

/// The handshake pattern, as its byte on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// `Noise_XK`: the initiator knows the responder's key.
    Xk = 1,
    /// `Noise_XX`: it does not.
    Xx = 2,
}

impl Pattern {
    /// The Noise protocol name (e.g. `Noise_XK_25519_ChaChaPoly_BLAKE2s`).
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Xk => PROTOCOL_XK,
            Pattern::Xx => PROTOCOL_XX,
        }
    }

    fn from_byte(b: u8) -> Option<Pattern> {
        match b {
            1 => Some(Pattern::Xk),
            2 => Some(Pattern::Xx),
            _ => None,
        }
    }
}

/// Why a Noise handshake or transport failed. A responder answers none of
/// them: it closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    /// The first byte names no pattern we speak.
    #[error("unknown handshake pattern {0}")]
    UnknownPattern(u8),
    /// An XX first contact at a node that accepts only peers that know it.
    #[error("first contact without our key refused (hidden node)")]
    Hidden,
    /// A message longer than its limit.
    #[error("noise message of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    /// A message did not decrypt or authenticate (wrong key, tampering,
    /// replay, garbage).
    #[error("noise message does not decrypt: {0}")]
    Decrypt(String),
    /// Bytes after the handshake's last message, or a message out of turn.
    #[error("noise handshake out of order")]
    OutOfOrder,
    /// The responder's static key is not the one the initiator dialled
    /// (XX) or not a key at all.
    #[error("the peer's static key is not the expected one")]
    WrongStatic,
}

fn decrypt_err(e: snow::Error) -> NoiseError {
    NoiseError::Decrypt(e.to_string())
}

/// Splits complete `[u16 BE length][message]` frames off `buf`.
fn take_frame(buf: &mut Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, NoiseError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
    if len > max {
        return Err(NoiseError::TooLong { len, max });
    }
    if buf.len() < 2 + len {
        return Ok(None);
    }
    let frame = buf[2..2 + len].to_vec();
    buf.drain(..2 + len);
    Ok(Some(frame))
}

fn put_frame(out: &mut Vec<u8>, msg: &[u8]) {
    debug_assert!(msg.len() <= MAX_NOISE_MESSAGE);
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

/// A Noise handshake in progress, either side.
pub struct Handshake {
    /// None for a responder until the first message names the pattern.
    state: Option<HandshakeState>,
    pattern: Option<Pattern>,
    /// Bytes received and not yet a whole message.
    inbuf: Vec<u8>,
    /// Responder settings until the first message names the pattern.
    pending: Option<Responder>,
    /// The responder key an initiator dialled (checked against XX's).
    expected: Option<[u8; 32]>,
}

struct Responder {
    secret: Zeroizing<[u8; 32]>,
    hidden: bool,
    ephemeral: Zeroizing<[u8; 32]>,
}

/// The one random value a handshake needs is its ephemeral key; the caller
/// draws it (from the OS in the node, from a seeded generator in tests and
/// vectors), so the handshake itself is deterministic. snow asks its
/// resolver for a generator and takes exactly 32 bytes from it once.
struct Resolver {
    ephemeral: Zeroizing<[u8; 32]>,
}

/// Gives out the caller's ephemeral key once; any other request fails
/// (snow turns that into an error, never a weak key).
struct OneKey {
    key: Option<Zeroizing<[u8; 32]>>,
}

impl Random for OneKey {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        match self.key.take() {
            Some(k) if dest.len() == k.len() => {
                dest.copy_from_slice(&k[..]);
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(OneKey {
            key: Some(self.ephemeral.clone()),
        }))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn prologue(p: Pattern) -> Vec<u8> {
    let mut v = PROLOGUE.to_vec();
    v.push(p as u8);
    v
}

fn builder_state(
    p: Pattern,
    secret: &[u8; 32],
    remote: Option<&[u8; 32]>,
    ephemeral: &Zeroizing<[u8; 32]>,
    initiator: bool,
) -> HandshakeState {
    let params = p.name().parse().expect("a valid Noise protocol name");
    let pro = prologue(p);
    let resolver = Box::new(Resolver {
        ephemeral: ephemeral.clone(),
    });
    let mut b = Builder::with_resolver(params, resolver)
        .local_private_key(secret)
        .expect("a 32-byte key")
        .prologue(&pro)
        .expect("set once");
    if let Some(r) = remote {
        b = b.remote_public_key(r).expect("a 32-byte key");
    }
    if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
    .expect("every prerequisite given")
}

/// What [`Handshake::handle_input`] leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes (may be empty) and wait for more input.
    Continue(Vec<u8>),
    /// Send these bytes (may be empty); the handshake is complete: call
    /// [`Handshake::into_transport`] (bytes received after the last
    /// handshake message go on to the transport).
    Done(Vec<u8>),
}

impl Handshake {
    /// Starts a handshake as initiator: XK with `responder`'s key, XX
    /// without. Returns the first bytes to send. `ephemeral` is this
    /// handshake's ephemeral private key: 32 fresh random bytes, never
    /// used twice (a reused one gives away forward secrecy); tests and
    /// vectors pass fixed ones.
    pub fn initiator(
        me: &Identity,
        responder: Option<&PublicKey>,
        ephemeral: [u8; 32],
    ) -> (Handshake, Vec<u8>) {
        let ephemeral = Zeroizing::new(ephemeral);
        let secret = me.x25519_secret();
        let remote = responder.map(|k| k.to_x25519());
        let pattern = if remote.is_some() {
            Pattern::Xk
        } else {
            Pattern::Xx
        };
        let mut state = builder_state(pattern, &secret, remote.as_ref(), &ephemeral, true);
        let mut msg = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = state
            .write_message(&[], &mut msg)
            .expect("the first message fits");
        let mut first = vec![];
        let mut body = vec![pattern as u8];
        body.extend_from_slice(&msg[..n]);
        put_frame(&mut first, &body);
        let hs = Handshake {
            state: Some(state),
            pattern: Some(pattern),
            inbuf: vec![],
            pending: None,
            expected: remote,
        };
        (hs, first)
    }

    /// Waits for a handshake as responder. A `hidden` node refuses XX (a
    /// first contact from someone who does not know its key).
    /// `ephemeral` as for [`Handshake::initiator`].
    pub fn responder(me: &Identity, hidden: bool, ephemeral: [u8; 32]) -> Handshake {
        // No Noise state yet: it depends on the pattern the first message
        // names, and a connection that never sends one costs nothing more.
        Handshake {
            state: None,
            pattern: None,
            inbuf: vec![],
            pending: Some(Responder {
                secret: me.x25519_secret(),
                hidden,
                ephemeral: Zeroizing::new(ephemeral),
            }),
            expected: None,
        }
    }

    /// The pattern, once known.
    pub fn pattern(&self) -> Option<Pattern> {
        self.pattern
    }

    /// Bytes received and not yet a whole handshake message.
    pub fn buffered(&self) -> usize {
        self.inbuf.len()
    }

    /// Takes bytes from the peer. Any error means: close, send nothing.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<Step, NoiseError> {
        if self.is_finished() {
            return Err(NoiseError::OutOfOrder);
        }
        self.inbuf.extend_from_slice(bytes);
        // One byte of pattern on top of the first message.
        let max = MAX_HANDSHAKE_MESSAGE + usize::from(self.pending.is_some());
        let mut out = vec![];
        while let Some(mut frame) = take_frame(&mut self.inbuf, max)? {
            if let Some(r) = self.pending.take() {
                let Some((&b, rest)) = frame.split_first() else {
                    return Err(NoiseError::UnknownPattern(0));
                };
                let p = Pattern::from_byte(b).ok_or(NoiseError::UnknownPattern(b))?;
                if p == Pattern::Xx && r.hidden {
                    return Err(NoiseError::Hidden);
                }
                self.state = Some(builder_state(p, &r.secret, None, &r.ephemeral, false));
                self.pattern = Some(p);
                frame = rest.to_vec();
            }
            let state = self
                .state
                .as_mut()
                .expect("an initiator starts with its state, a responder's first frame makes it");
            if state.is_handshake_finished() || state.is_my_turn() {
                return Err(NoiseError::OutOfOrder);
            }
            let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
            state
                .read_message(&frame, &mut payload)
                .map_err(decrypt_err)?;
            if state.is_handshake_finished() {
                break;
            }
            if state.is_my_turn() {
                let mut msg = [0u8; MAX_HANDSHAKE_MESSAGE];
                let n = state.write_message(&[], &mut msg).map_err(decrypt_err)?;
                put_frame(&mut out, &msg[..n]);
                if state.is_handshake_finished() {
                    break;
                }
            }
        }
        if !self.is_finished() {
            return Ok(Step::Continue(out));
        }
        if let (Some(e), Some(state)) = (&self.expected, &self.state) {
            if state.get_remote_static() != Some(&e[..]) {
                return Err(NoiseError::WrongStatic);
            }
        }
        Ok(Step::Done(out))
    }

    fn is_finished(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(HandshakeState::is_handshake_finished)
    }

    /// The encrypted channel, once the handshake is complete.
    pub fn into_transport(self) -> Result<Transport, NoiseError> {
        let state = self.state.ok_or(NoiseError::OutOfOrder)?;
        let pattern = self.pattern.ok_or(NoiseError::OutOfOrder)?;
        let hash: [u8; 32] = state
            .get_handshake_hash()
            .try_into()
            .map_err(|_| NoiseError::OutOfOrder)?;
        let remote: [u8; 32] = state
            .get_remote_static()
            .and_then(|r| r.try_into().ok())
            .ok_or(NoiseError::WrongStatic)?;
        let state = state
            .into_transport_mode()
            .map_err(|_| NoiseError::OutOfOrder)?;
        // What came after the last handshake message is transport data.
        Ok(Transport {
            state,
            inbuf: self.inbuf,
            hash,
            remote,
            pattern,
            max_message: MAX_NOISE_MESSAGE,
        })
    }
}

/// An established Noise channel.
pub struct Transport {
    state: TransportState,
    inbuf: Vec<u8>,
    hash: [u8; 32],
    remote: [u8; 32],
    pattern: Pattern,
    /// Longest transport message accepted (ciphertext, tag included).
    max_message: usize,
}

impl Transport {
    /// Refuses transport messages longer than `max` bytes (ciphertext with
    /// its tag; at most [`MAX_NOISE_MESSAGE`]) from now on: a session keeps
    /// it small until the peer is authorized, so a stranger cannot make us
    /// buffer 64 KiB.
    pub fn set_max_message(&mut self, max: usize) {
        self.max_message = max.min(MAX_NOISE_MESSAGE);
    }

    /// The handshake hash `h`: both sides hold the same one, nobody else
    /// does. Version 2 binds the session id to it.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The handshake pattern the channel was made with.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// The peer's static X25519 key: the peer's Ed25519 key (from its
    /// Hello) must map to it ([`PublicKey::to_x25519`]).
    pub fn remote_static(&self) -> [u8; 32] {
        self.remote
    }

    /// Whether `key` is the identity the handshake authenticated.
    pub fn is_peer(&self, key: &PublicKey) -> bool {
        key.to_x25519() == self.remote
    }

    /// Encrypts `plain` (any length) into transport messages appended to
    /// `out`, each `[u16 BE length][ciphertext]`.
    pub fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        // Written in place after each length: no scratch buffer (a 64 KiB
        // one per call, or per connection, would cost more than the rest).
        for piece in plain.chunks(MAX_PLAINTEXT) {
            let len = piece.len() + TAG_LEN;
            out.extend_from_slice(&(len as u16).to_be_bytes());
            let at = out.len();
            out.resize(at + len, 0);
            let n = self
                .state
                .write_message(piece, &mut out[at..])
                .map_err(decrypt_err)?;
            debug_assert_eq!(n, len);
        }
        Ok(())
    }

    /// Takes bytes from the peer; appends the plaintext of every complete
    /// transport message to `out`. An error (tampering, a replayed or
    /// reordered message) ends the channel.
    pub fn decrypt(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        self.push(bytes);
        self.decrypt_buffered(out, usize::MAX).map(|_| ())
    }

    /// Keeps received bytes for [`Transport::decrypt_buffered`].
    pub fn push(&mut self, bytes: &[u8]) {
        self.inbuf.extend_from_slice(bytes);
    }

    /// Decrypts up to `max_messages` complete transport messages of the
    /// bytes received so far, appending their plaintext to `out`; returns
    /// how many. A session takes them one at a time until the peer is
    /// authorized, since the size limit changes then.
    pub fn decrypt_buffered(
        &mut self,
        out: &mut Vec<u8>,
        max_messages: usize,
    ) -> Result<usize, NoiseError> {
        // Walk the whole messages, then drop them from the buffer at once
        // (dropping each in turn would move the rest every time); each
        // plaintext is written in place at the end of `out`.
        let mut at = 0;
        let mut count = 0;
        let result = loop {
            if count == max_messages {
                break Ok(count);
            }
            let rest = &self.inbuf[at..];
            if rest.len() < 2 {
                break Ok(count);
            }
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            if len > self.max_message {
                break Err(NoiseError::TooLong {
                    len,
                    max: self.max_message,
                });
            }
            if rest.len() < 2 + len {
                break Ok(count);
            }
            if len < TAG_LEN {
                break Err(NoiseError::Decrypt("shorter than its tag".into()));
            }
            let start = out.len();
            out.resize(start + len - TAG_LEN, 0);
            match self
                .state
                .read_message(&rest[2..2 + len], &mut out[start..])
            {
                Ok(n) => out.truncate(start + n),
                Err(e) => {
                    out.truncate(start);
                    break Err(decrypt_err(e));
                }
            }
            at += 2 + len;
            count += 1;
        };
        self.inbuf.drain(..at);
        if self.inbuf.is_empty() {
            // An idle channel holds no input buffer.
            self.inbuf = Vec::new();
        }
        result
    }

    /// Bytes received and not yet a whole transport message.
    pub fn buffered(&self) -> usize {
        self.inbuf.len()
    }
}

#[cfg(test)]
mod tests;
