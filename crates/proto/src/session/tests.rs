use super::*;
use crate::message::{MemoryRequest, MemoryResponse};
use crate::noise::NoiseError;
use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};

/// Fills every byte with one value: deterministic Ping payloads.
pub(crate) struct FillRng(pub u8);
impl rand::RngCore for FillRng {
    fn next_u32(&mut self) -> u32 {
        u32::from_ne_bytes([self.0; 4])
    }
    fn next_u64(&mut self) -> u64 {
        u64::from_ne_bytes([self.0; 8])
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(self.0)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        dest.fill(self.0);
        Ok(())
    }
}

fn id(n: u8) -> Arc<Identity> {
    Arc::new(Identity::from_secret_bytes(&[n; 32]))
}

fn cfg() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        agent: "mmogit/test".into(),
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(20),
        heartbeat_interval: Duration::from_secs(4),
        frame_timeout: Duration::from_secs(3),
        ..SessionConfig::default()
    })
}

struct Pair {
    i: Session,
    a: Session,
    now: Instant,
    i_events: Vec<Event>,
    a_events: Vec<Event>,
    /// Whether the acceptor authorizes every key.
    auto_accept: bool,
    /// Every byte that went over the wire each way.
    ia_wire: Vec<Vec<u8>>,
    ai_wire: Vec<Vec<u8>>,
}

impl Pair {
    fn new(i_key: u8, a_key: u8, expected: Option<PublicKey>) -> Pair {
        Self::with(i_key, a_key, expected, cfg(), cfg(), [0x22; 32])
    }

    fn with(
        i_key: u8,
        a_key: u8,
        expected: Option<PublicKey>,
        icfg: Arc<SessionConfig>,
        acfg: Arc<SessionConfig>,
        a_nonce: [u8; 32],
    ) -> Pair {
        let now = Instant::now();
        Pair {
            i: Session::initiator(
                id(i_key),
                icfg,
                expected,
                [0x11; 32],
                Box::new(FillRng(0x33)),
                now,
            ),
            a: Session::acceptor(id(a_key), acfg, a_nonce, Box::new(FillRng(0x44)), now),
            now,
            i_events: vec![],
            a_events: vec![],
            auto_accept: true,
            ia_wire: vec![],
            ai_wire: vec![],
        }
    }

    /// Moves bytes both ways until quiet, through the real channel;
    /// returns the frames (plaintext, handshake messages left out) sent
    /// i→a and a→i.
    fn run(&mut self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(f) = self.i.poll_transmit() {
                let _ = self.a.handle_input(self.now, &f);
                self.ia_wire.push(f);
                moved = true;
            }
            while let Some(f) = self.a.poll_transmit() {
                let _ = self.i.handle_input(self.now, &f);
                self.ai_wire.push(f);
                moved = true;
            }
            while let Some(e) = self.i.poll_event() {
                self.i_events.push(e);
            }
            while let Some(e) = self.a.poll_event() {
                if self.auto_accept && matches!(e, Event::AuthorizationRequired(_)) {
                    self.a.accept(self.now).unwrap();
                    moved = true;
                }
                self.a_events.push(e);
            }
            if !moved {
                break;
            }
        }
        (self.i.take_sent_log(), self.a.take_sent_log())
    }

    /// Runs the Noise handshake only: both channels are up and each side's
    /// Hello is queued, not sent.
    fn noise(&mut self) {
        loop {
            let mut moved = false;
            while self.i.next_is_raw() {
                let b = self.i.poll_transmit().unwrap();
                self.a.handle_input(self.now, &b).unwrap();
                moved = true;
            }
            while self.a.next_is_raw() {
                let b = self.a.poll_transmit().unwrap();
                self.i.handle_input(self.now, &b).unwrap();
                moved = true;
            }
            if !moved {
                break;
            }
        }
        assert!(self.i.handshake_hash().is_some() && self.a.handshake_hash().is_some());
    }
}

/// An acceptor (key `me`) whose Noise handshake (XK) with a hand-driven
/// initiator of key `peer` is complete: it awaits a Hello, which the test
/// writes by hand (through the returned transport, or with
/// `handle_plain`). Its own Hello has been taken.
fn channel_acceptor(me: u8, peer: u8) -> (Session, Transport) {
    let now = Instant::now();
    let mut a = Session::acceptor(id(me), cfg(), [0; 32], Box::new(FillRng(1)), now);
    let (mut hs, first) = Handshake::initiator(&id(peer), Some(&id(me).public_key()), [5; 32]);
    a.handle_input(now, &first).unwrap();
    let second = a.poll_transmit().unwrap();
    let Step::Done(third) = hs.handle_input(&second).unwrap() else {
        panic!("XK: the initiator finishes on the second message")
    };
    a.handle_input(now, &third).unwrap();
    let mut t = hs.into_transport().unwrap();
    // Its Hello, decrypted like a peer would.
    let mut hello = vec![];
    t.decrypt(&a.poll_transmit().unwrap(), &mut hello).unwrap();
    assert!(RawMessage::from_body(&hello[4..]).unwrap().msg_type == MsgType::Hello);
    (a, t)
}

/// An initiator (key `me`) that dialled a hand-driven acceptor of key
/// `peer` (XK); the Noise handshake is complete and its Hello taken.
fn channel_initiator(me: u8, peer: u8) -> (Session, Transport) {
    let now = Instant::now();
    let mut i = Session::initiator(
        id(me),
        cfg(),
        Some(id(peer).public_key()),
        [0; 32],
        Box::new(FillRng(1)),
        now,
    );
    let mut hs = Handshake::responder(&id(peer), false, [6; 32]);
    let Step::Continue(second) = hs.handle_input(&i.poll_transmit().unwrap()).unwrap() else {
        panic!("XK: the responder answers the first message")
    };
    i.handle_input(now, &second).unwrap();
    let third = i.poll_transmit().unwrap();
    assert!(matches!(hs.handle_input(&third).unwrap(), Step::Done(_)));
    let mut t = hs.into_transport().unwrap();
    let mut hello = vec![];
    t.decrypt(&i.poll_transmit().unwrap(), &mut hello).unwrap();
    assert!(RawMessage::from_body(&hello[4..]).unwrap().msg_type == MsgType::Hello);
    (i, t)
}

/// `frame` encrypted by `t`, as the peer would send it.
fn sealed(t: &mut Transport, frame: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    t.encrypt(frame, &mut out).unwrap();
    out
}

fn bye_reason(frames: &[Vec<u8>]) -> Option<String> {
    frames.iter().find_map(|f| {
        let raw = RawMessage::from_body(&f[4..]).ok()?;
        match Message::decode_payload(raw.msg_type, &raw.payload).ok()? {
            Message::Bye(b) => Some(b.reason),
            _ => None,
        }
    })
}

fn closed_error(events: &[Event]) -> Option<ProtoError> {
    events.iter().find_map(|e| match e {
        Event::Closed(CloseReason::Error(err)) => Some(err.clone()),
        _ => None,
    })
}

#[test]
fn full_handshake_then_messages() {
    let mut p = Pair::new(1, 2, Some(id(2).public_key()));
    let (ia, ai) = p.run();
    // Hello + Ping one way, Hello + Pong the other.
    assert_eq!((ia.len(), ai.len()), (2, 2));
    assert!(p.i.is_established() && p.a.is_established());
    assert_eq!(p.i.session_id(), p.a.session_id());
    assert!(
        matches!(&p.a_events[0], Event::AuthorizationRequired(peer) if peer.pubkey == id(1).public_key())
    );
    assert!(
        matches!(&p.i_events[0], Event::Authenticated { peer, .. } if peer.pubkey == id(2).public_key() && peer.version == 2)
    );
    assert!(
        matches!(&p.a_events[1], Event::Authenticated { peer, .. } if peer.agent == "mmogit/test")
    );

    let req = Message::MemoryRequest(MemoryRequest {
        limit: Some(5),
        ..Default::default()
    });
    p.i.send(p.now, req.clone()).unwrap();
    p.a.send(p.now, Message::MemoryResponse(MemoryResponse::default()))
        .unwrap();
    p.i.send_ping(p.now, b"abc").unwrap();
    p.a.send_ping(p.now, b"xyz").unwrap();
    p.run();
    assert!(p.a_events.contains(&Event::Message(req)));
    assert!(p.i_events.contains(&Event::Pong(b"abc".to_vec())));
    assert!(p.a_events.contains(&Event::Pong(b"xyz".to_vec())));
    assert!(p
        .i_events
        .iter()
        .any(|e| matches!(e, Event::Message(Message::MemoryResponse(_)))));

    // Bye from either side closes both.
    p.a.close(p.now, "shutting down");
    p.run();
    assert!(p.i.is_closed() && p.a.is_closed());
    assert!(p
        .i_events
        .contains(&Event::Closed(CloseReason::Remote("shutting down".into()))));
    assert!(p
        .a_events
        .contains(&Event::Closed(CloseReason::Local("shutting down".into()))));
    assert_eq!(p.i.send_ping(p.now, b"x"), Err(ProtoError::Closed));
    assert_eq!(p.i.poll_timeout(), None);
}

#[test]
fn no_send_before_authentication() {
    let mut p = Pair::new(1, 2, None);
    assert_eq!(
        p.i.send(p.now, Message::MemoryRequest(Default::default())),
        Err(ProtoError::NotEstablished)
    );
    assert_eq!(p.i.send_ping(p.now, b""), Err(ProtoError::NotEstablished));
    assert!(p.i.send(p.now, Message::Pong(vec![])).is_err());
    assert!(p.i.send(p.now, Message::Hello(test_hello())).is_err());
}

fn test_hello() -> Hello {
    Hello {
        protocol: "mmogit".into(),
        versions: vec![2],
        pubkey: id(9).public_key().to_hex(),
        nonce: B64.encode([0u8; 32]),
        agent: "x".into(),
        listen_port: None,
        capabilities: vec![],
    }
}

#[test]
fn untrusted_key_gets_not_authorized() {
    let mut p = Pair::new(1, 2, None);
    p.auto_accept = false;
    // Noise, Hellos, then the Ping reaches the acceptor.
    p.run();
    assert!(matches!(
        p.a_events.last(),
        Some(Event::AuthorizationRequired(_))
    ));
    p.a.reject(p.now, reasons::NOT_AUTHORIZED);
    let (_, ai) = p.run();
    assert_eq!(bye_reason(&ai).as_deref(), Some("not authorized"));
    assert_eq!(ai.len(), 1, "no Pong for an untrusted key");
    assert!(p.i.is_closed());
    assert_eq!(
        p.i_events.last(),
        Some(&Event::Closed(CloseReason::Remote("not authorized".into())))
    );
}

#[test]
fn a_wrong_expected_key_gets_no_answer() {
    // XK to key 3, but key 2 answers: it cannot read the first message,
    // so it sends nothing at all and closes.
    let mut p = Pair::new(1, 2, Some(id(3).public_key()));
    p.run();
    assert!(p.ai_wire.is_empty(), "not one byte back");
    assert!(matches!(
        closed_error(&p.a_events),
        Some(ProtoError::Noise(NoiseError::Decrypt(_)))
    ));
    assert!(!p.i.is_established() && !p.a.is_established());
    p.i.handle_eof(p.now);
    assert_eq!(
        p.i.poll_event(),
        Some(Event::Closed(CloseReason::Error(
            ProtoError::KeyNotProven {
                expected: id(3).public_key().to_hex()
            }
        )))
    );
    assert!(ProtoError::WrongPubkey {
        expected: "a".into(),
        got: "b".into()
    }
    .to_string()
    .contains("possible impersonation"));
}

#[test]
fn hello_signed_by_another_key_is_refused() {
    // A Hello carrying key 1 but signed by key 3.
    let hello = Hello {
        pubkey: id(1).public_key().to_hex(),
        ..test_hello()
    };
    let payload = Message::Hello(hello).encode_payload();
    let sig = id(3).sign(&hello_signed_bytes(&payload));
    let frame = encode_frame(MsgType::Hello, &payload, &sig.to_bytes()).unwrap();
    let (mut a, mut t) = channel_acceptor(2, 1);
    assert_eq!(
        a.handle_input(Instant::now(), &sealed(&mut t, &frame)),
        Err(ProtoError::BadSignature { msg_type: "Hello" })
    );
    assert!(a.is_closed());
    assert!(a.poll_transmit().is_none(), "no session id, so no Bye");
}

#[test]
fn the_hello_key_must_be_the_key_of_the_channel() {
    // Key 1 opened the channel; a Hello for key 3, correctly signed by
    // key 3 (replayed from elsewhere, say), is refused before anything.
    let hello = Hello {
        pubkey: id(3).public_key().to_hex(),
        ..test_hello()
    };
    let payload = Message::Hello(hello).encode_payload();
    let sig = id(3).sign(&hello_signed_bytes(&payload));
    let frame = encode_frame(MsgType::Hello, &payload, &sig.to_bytes()).unwrap();
    let (mut a, mut t) = channel_acceptor(2, 1);
    assert_eq!(
        a.handle_input(Instant::now(), &sealed(&mut t, &frame)),
        Err(ProtoError::ChannelKeyMismatch)
    );
    assert!(a.poll_transmit().is_none());
    // The same from the acceptor's side, seen by an initiator.
    let (mut i, mut t) = channel_initiator(1, 2);
    assert_eq!(
        i.handle_input(Instant::now(), &sealed(&mut t, &frame)),
        Err(ProtoError::ChannelKeyMismatch)
    );
    assert!(!i.is_established());
}

#[test]
fn a_hidden_acceptor_answers_no_first_contact_and_an_open_one_does() {
    let hidden = Arc::new(SessionConfig {
        hidden: true,
        ..(*cfg()).clone()
    });
    let mut p = Pair::with(1, 2, None, cfg(), hidden.clone(), [0x22; 32]);
    p.run();
    assert!(p.ai_wire.is_empty(), "not one byte back");
    assert_eq!(
        closed_error(&p.a_events),
        Some(ProtoError::Noise(NoiseError::Hidden))
    );
    // The initiator, cut off, says what probably happened.
    p.i.handle_eof(p.now);
    let ev = p.i.poll_event();
    assert_eq!(
        ev,
        Some(Event::Closed(CloseReason::Error(
            ProtoError::ClosedWithoutKey
        )))
    );
    assert!(ProtoError::ClosedWithoutKey
        .to_string()
        .contains("--pubkey"));
    // With the key, the hidden node answers.
    let mut p = Pair::with(1, 2, Some(id(2).public_key()), cfg(), hidden, [0x22; 32]);
    p.run();
    assert!(p.i.is_established() && p.a.is_established());
    assert_eq!(p.i.pattern(), Some(Pattern::Xk));
    // Without, an open node introduces itself.
    let mut p = Pair::new(1, 2, None);
    p.run();
    assert!(p.i.is_established());
    assert_eq!(p.a.pattern(), Some(Pattern::Xx));
    assert_eq!(p.i.peer().unwrap().pubkey, id(2).public_key());
}

#[test]
fn version_mismatch_names_both_sides() {
    let later = Arc::new(SessionConfig {
        versions: vec![3, 4],
        ..(*cfg()).clone()
    });
    let mut p = Pair::with(1, 2, None, cfg(), later, [0x22; 32]);
    let (ia, ai) = p.run();
    let want = ProtoError::VersionMismatch {
        ours: vec![2],
        theirs: vec![3, 4],
    };
    assert_eq!(closed_error(&p.i_events), Some(want));
    assert_eq!(
        bye_reason(&ia).as_deref(),
        Some("version mismatch: we support [2], you support [3, 4]")
    );
    assert_eq!(
        bye_reason(&ai).as_deref(),
        Some("version mismatch: we support [3, 4], you support [2]")
    );
    // Highest common version wins.
    let many = Arc::new(SessionConfig {
        versions: vec![1, 2, 5],
        ..(*cfg()).clone()
    });
    let some = Arc::new(SessionConfig {
        versions: vec![5, 2, 9],
        ..(*cfg()).clone()
    });
    let mut p = Pair::with(1, 2, None, many, some, [0x22; 32]);
    p.run();
    assert_eq!(p.i.peer().unwrap().version, 5);
    assert_eq!(p.a.peer().unwrap().version, 5);
}

#[test]
fn a_replayed_connection_gets_nothing_usable() {
    let mut p1 = Pair::new(1, 2, None);
    p1.run();
    assert!(p1.a.is_established());
    // Everything the initiator sent, replayed to the same acceptor key
    // with a fresh ephemeral key: the first message is answered (anyone
    // who knows the key gets that far), the third does not decrypt.
    let t0 = Instant::now();
    let mut a2 = Session::acceptor(id(2), cfg(), [0x99; 32], Box::new(FillRng(5)), t0);
    a2.handle_input(t0, &p1.ia_wire[0]).unwrap();
    let r = a2.handle_input(t0, &p1.ia_wire[1..].concat());
    assert!(
        matches!(r, Err(ProtoError::Noise(NoiseError::Decrypt(_)))),
        "{r:?}"
    );
    let out: Vec<_> = std::iter::from_fn(|| a2.poll_transmit()).collect();
    assert_eq!(out.len(), 1, "only the handshake's second message");
    assert!(out[0].len() <= 2 + noise::MAX_HANDSHAKE_MESSAGE);
    let events: Vec<Event> = std::iter::from_fn(|| a2.poll_event()).collect();
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::AuthorizationRequired(_))));

    // The first message alone: answered, then the handshake times out.
    let mut a3 = Session::acceptor(id(2), cfg(), [0x99; 32], Box::new(FillRng(5)), t0);
    a3.handle_input(t0, &p1.ia_wire[0]).unwrap();
    assert!(!a3.is_established());
    let deadline = a3.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + Duration::from_secs(5));
    a3.handle_timeout(deadline);
    assert!(a3.is_closed());
    let events: Vec<Event> = std::iter::from_fn(|| a3.poll_event()).collect();
    assert_eq!(
        events,
        vec![Event::Closed(CloseReason::Error(
            ProtoError::HandshakeTimeout
        ))]
    );
}

#[test]
fn signed_frames_are_bound_to_their_noise_channel() {
    // Two sessions with the same keys and the same Hellos (same nonces)
    // differ only in their Noise handshakes: their session ids differ, so
    // a frame signed in one is refused in the other even when an attacker
    // who could read it re-encrypts it for the other channel.
    let mut p1 = Pair::new(1, 2, None);
    let (ia1, _) = p1.run();
    let mut p2 = Pair::with(1, 2, None, cfg(), cfg(), [0x22; 32]);
    p2.a = Session::acceptor(id(2), cfg(), [0x22; 32], Box::new(FillRng(0x45)), p2.now);
    p2.noise();
    assert_ne!(p1.a.handshake_hash(), p2.a.handshake_hash());
    // The Hello is the same bytes in both.
    let hello2 = p2.i.poll_plain().unwrap();
    assert_eq!(hello2, ia1[0]);
    p2.a.handle_plain(p2.now, &ia1[0]).unwrap();
    assert_ne!(p1.a.session_id(), p2.a.session_id());
    // Session 1's authentication Ping, in session 2.
    let err = p2.a.handle_plain(p2.now, &ia1[1]).unwrap_err();
    assert_eq!(err, ProtoError::BadSignature { msg_type: "Ping" });
    let events: Vec<Event> = std::iter::from_fn(|| p2.a.poll_event()).collect();
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::AuthorizationRequired(_))));
}

#[test]
fn a_tampered_or_replayed_transport_byte_closes_the_session() {
    // Any byte of the ciphertext or its tag (bytes 0-1 are the length).
    for k in [2usize, 3, 10, 40, usize::MAX] {
        let mut p = established();
        p.i.send_ping(p.now, b"1").unwrap();
        let mut f = p.i.poll_transmit().unwrap();
        let k = k.min(f.len() - 1);
        f[k] ^= 0x20;
        let r = p.a.handle_input(p.now, &f);
        assert!(matches!(r, Err(ProtoError::Noise(_))), "byte {k}: {r:?}");
        assert!(p.a.is_closed());
        assert!(!std::iter::from_fn(|| p.a.poll_event()).any(|e| matches!(e, Event::Pong(_))));
    }
    // The same message twice: the second does not decrypt (its nonce is spent).
    let mut p = established();
    p.i.send_ping(p.now, b"1").unwrap();
    let f = p.i.poll_transmit().unwrap();
    p.a.handle_input(p.now, &f).unwrap();
    assert!(matches!(
        p.a.handle_input(p.now, &f),
        Err(ProtoError::Noise(NoiseError::Decrypt(_)))
    ));
}

fn established() -> Pair {
    let mut p = Pair::new(1, 2, None);
    p.run();
    assert!(p.i.is_established() && p.a.is_established());
    p
}

#[test]
fn reordered_frames_fail() {
    let mut p = established();
    p.i.send_ping(p.now, b"1").unwrap();
    p.i.send_ping(p.now, b"2").unwrap();
    let f1 = p.i.poll_plain().unwrap();
    let f2 = p.i.poll_plain().unwrap();
    let _ = f1;
    assert_eq!(
        p.a.handle_plain(p.now, &f2),
        Err(ProtoError::BadSignature { msg_type: "Ping" })
    );
    assert!(p.a.is_closed());
}

#[test]
fn duplicated_frame_fails() {
    let mut p = established();
    p.i.send_ping(p.now, b"1").unwrap();
    let f1 = p.i.poll_plain().unwrap();
    p.a.handle_plain(p.now, &f1).unwrap();
    assert_eq!(
        p.a.handle_plain(p.now, &f1),
        Err(ProtoError::BadSignature { msg_type: "Ping" })
    );
}

#[test]
fn frame_signed_by_someone_else_or_tampered_fails() {
    let mut p = established();
    let sid = *p.i.session_id().unwrap();
    // Correct bytes, wrong signer.
    let payload = b"hi";
    let sig = id(7).sign(&signed_bytes(
        &sid,
        Role::Initiator,
        1,
        MsgType::Ping,
        payload,
    ));
    let frame = encode_frame(MsgType::Ping, payload, &sig.to_bytes()).unwrap();
    assert!(matches!(
        p.a.handle_plain(p.now, &frame),
        Err(ProtoError::BadSignature { .. })
    ));

    // Tampered signature.
    let mut p = established();
    p.i.send_ping(p.now, b"1").unwrap();
    let f = p.i.poll_plain().unwrap();
    let mut raw = RawMessage::from_body(&f[4..]).unwrap();
    raw.signature[3] ^= 1;
    assert!(matches!(
        p.a.handle_plain(p.now, &raw.to_frame().unwrap()),
        Err(ProtoError::BadSignature { .. })
    ));

    // Wrong role byte: the acceptor's own signature reflected back.
    let mut p = established();
    p.a.send_ping(p.now, b"r").unwrap();
    let f = p.a.poll_plain().unwrap();
    assert!(matches!(
        p.a.handle_plain(p.now, &f),
        Err(ProtoError::BadSignature { .. })
    ));

    // Missing signature.
    let mut p = established();
    let body = br#"{"msg_type":"Ping","payload":"","signature":""}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    assert_eq!(
        p.a.handle_plain(p.now, &frame),
        Err(ProtoError::BadSignatureEncoding)
    );
    let out: Vec<_> = std::iter::from_fn(|| p.a.poll_plain()).collect();
    assert!(bye_reason(&out).unwrap().starts_with("protocol error"));
}

/// Frames the session queued, as (type, payload) pairs.
fn sent(s: &mut Session) -> Vec<(MsgType, Vec<u8>)> {
    std::iter::from_fn(|| s.poll_plain())
        .map(|f| {
            let raw = RawMessage::from_body(&f[4..]).unwrap();
            (raw.msg_type, raw.payload)
        })
        .collect()
}

/// `n` Pings from the initiator, their frames concatenated.
fn pings(p: &mut Pair, n: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| {
            p.i.send_ping(p.now, &[k]).unwrap();
            p.i.poll_plain().unwrap()
        })
        .collect()
}

#[test]
fn frames_arriving_together_are_verified_together_and_answered_in_order() {
    let mut p = established();
    let mut frames = pings(&mut p, 20);
    p.i.send(
        p.now,
        Message::MemoryRequest(MemoryRequest {
            id: 9,
            ..Default::default()
        }),
    )
    .unwrap();
    frames.push(p.i.poll_plain().unwrap());
    frames.extend(pings(&mut p, 3));
    p.a.handle_plain(p.now, &frames.concat()).unwrap();
    assert_eq!(p.a.batch_verified_frames(), 24);
    let out = sent(&mut p.a);
    let payloads: Vec<Vec<u8>> = out.iter().map(|(_, pl)| pl.clone()).collect();
    let expected: Vec<Vec<u8>> = (0..20u8).chain(0..3).map(|k| vec![k]).collect();
    assert!(out.iter().all(|(t, _)| *t == MsgType::Pong));
    assert_eq!(payloads, expected);
    let events: Vec<Event> = std::iter::from_fn(|| p.a.poll_event()).collect();
    assert!(matches!(&events[..], [Event::Message(Message::MemoryRequest(r))] if r.id == 9));
    // The sequence numbers moved on: the next frames still verify, alone or together.
    let more = pings(&mut p, 2);
    p.a.handle_plain(p.now, &more.concat()).unwrap();
    let one = pings(&mut p, 1);
    p.a.handle_plain(p.now, &one[0]).unwrap();
    assert_eq!(sent(&mut p.a).len(), 3);
    assert_eq!(p.a.batch_verified_frames(), 26);
    assert!(p.a.is_established());
}

#[test]
fn a_bad_frame_among_frames_that_arrive_together() {
    // Tampered, reordered, duplicated or foreign-signed: the frames before
    // it are processed as if they came alone, nothing after it is.
    type Corrupt = fn(&mut Pair, Vec<Vec<u8>>) -> Vec<Vec<u8>>;
    let cases: Vec<(&str, Corrupt)> = vec![
        ("tampered", |_, mut f| {
            let mut raw = RawMessage::from_body(&f[3][4..]).unwrap();
            raw.signature[10] ^= 0x40;
            f[3] = raw.to_frame().unwrap();
            f
        }),
        ("reordered", |_, mut f| {
            f.swap(3, 4);
            f
        }),
        ("duplicated", |_, mut f| {
            f[3] = f[2].clone();
            f
        }),
        ("foreign", |p, mut f| {
            let sid = *p.i.session_id().unwrap();
            let seq = p.i.send_seq - 3;
            let sig = id(7).sign(&signed_bytes(
                &sid,
                Role::Initiator,
                seq,
                MsgType::Ping,
                &[3],
            ));
            f[3] = encode_frame(MsgType::Ping, &[3], &sig.to_bytes()).unwrap();
            f
        }),
    ];
    for (name, corrupt) in cases {
        let mut p = established();
        let frames = pings(&mut p, 6);
        let frames = corrupt(&mut p, frames);
        let r = p.a.handle_plain(p.now, &frames.concat());
        assert!(
            matches!(r, Err(ProtoError::BadSignature { .. })),
            "{name}: {r:?}"
        );
        let out = sent(&mut p.a);
        let pongs: Vec<&Vec<u8>> = out
            .iter()
            .filter(|(t, _)| *t == MsgType::Pong)
            .map(|(_, pl)| pl)
            .collect();
        assert_eq!(pongs, [&vec![0u8], &vec![1], &vec![2]], "{name}");
        assert_eq!(out.last().unwrap().0, MsgType::Bye, "{name}");
        assert!(p.a.is_closed(), "{name}");
    }
}

#[test]
fn frames_after_bye_hello_or_garbage_in_the_same_input_are_not_processed() {
    // Bye in the middle: the session closes there (what it had queued for a
    // peer that left is dropped) and the frame after it is not looked at.
    let mut p = established();
    let mut frames = pings(&mut p, 1);
    p.i.close(p.now, "done");
    frames.push(p.i.poll_plain().unwrap());
    let stray = {
        let mut q = established();
        pings(&mut q, 1).remove(0)
    };
    frames.push(stray);
    p.a.handle_plain(p.now, &frames.concat()).unwrap();
    assert_eq!(sent(&mut p.a), vec![]);
    let events: Vec<Event> = std::iter::from_fn(|| p.a.poll_event()).collect();
    assert!(
        matches!(&events[..], [Event::Closed(CloseReason::Remote(r))] if r == "done"),
        "{events:?}"
    );

    // A Hello after two good Pings.
    let mut p = established();
    let mut frames = pings(&mut p, 2);
    let hello = Message::Hello(test_hello()).encode_payload();
    let sig = id(1).sign(&hello_signed_bytes(&hello));
    frames.push(encode_frame(MsgType::Hello, &hello, &sig.to_bytes()).unwrap());
    frames.extend(pings(&mut p, 1));
    let r = p.a.handle_plain(p.now, &frames.concat());
    assert!(
        matches!(
            r,
            Err(ProtoError::UnexpectedMessage {
                msg_type: "Hello",
                ..
            })
        ),
        "{r:?}"
    );
    let pongs = sent(&mut p.a)
        .iter()
        .filter(|(t, _)| *t == MsgType::Pong)
        .count();
    assert_eq!(pongs, 2);

    // Garbage JSON after two good Pings, and a frame header over the limit.
    for tail in [&b"\x00\x00\x00\x03{{{"[..], &[0xff, 0xff, 0xff, 0xff][..]] {
        let mut p = established();
        let mut input = pings(&mut p, 2).concat();
        input.extend_from_slice(tail);
        assert!(p.a.handle_plain(p.now, &input).is_err());
        let pongs = sent(&mut p.a)
            .iter()
            .filter(|(t, _)| *t == MsgType::Pong)
            .count();
        assert_eq!(pongs, 2);
        assert!(p.a.is_closed());
    }
}

#[test]
fn garbage_unknown_type_and_out_of_order_messages() {
    let body = br#"{"msg_type":"Gossip","payload":"","signature":""}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    let (mut a, _) = channel_acceptor(2, 1);
    assert!(matches!(
        a.handle_plain(Instant::now(), &frame),
        Err(ProtoError::UnknownMessageType(_))
    ));

    let (mut a, _) = channel_acceptor(2, 1);
    assert!(matches!(
        a.handle_plain(Instant::now(), b"\0\0\0\x05hello"),
        Err(ProtoError::InvalidJson(_))
    ));

    // Something other than Hello first.
    let mut p = established();
    p.i.send_ping(p.now, b"1").unwrap();
    let ping = p.i.poll_plain().unwrap();
    let (mut a, _) = channel_acceptor(2, 1);
    assert!(matches!(
        a.handle_plain(Instant::now(), &ping),
        Err(ProtoError::UnexpectedMessage { .. })
    ));

    // A correctly signed MemoryRequest instead of the authentication Ping.
    let mut p = Pair::new(1, 2, None);
    p.noise();
    let hello_i = p.i.poll_plain().unwrap();
    p.a.handle_plain(p.now, &hello_i).unwrap();
    let sid = *p.a.session_id().unwrap();
    let payload = Message::MemoryRequest(Default::default()).encode_payload();
    let sig = id(1).sign(&signed_bytes(
        &sid,
        Role::Initiator,
        0,
        MsgType::MemoryRequest,
        &payload,
    ));
    let frame = encode_frame(MsgType::MemoryRequest, &payload, &sig.to_bytes()).unwrap();
    assert!(matches!(
        p.a.handle_plain(p.now, &frame),
        Err(ProtoError::UnexpectedMessage { .. })
    ));

    // A second Hello.
    let mut p = established();
    let mut q = Pair::new(1, 2, None);
    q.noise();
    let hello = q.i.poll_plain().unwrap();
    assert!(matches!(
        p.a.handle_plain(p.now, &hello),
        Err(ProtoError::UnexpectedMessage { .. })
    ));
}

#[test]
fn heartbeat_idle_and_frame_timeouts() {
    let mut p = established();
    let t = p.now;
    // keepalive = min(4 s, 20 s / 2) = 4 s after the last send.
    let due = p.i.poll_timeout().unwrap();
    assert_eq!(due, t + Duration::from_secs(4));
    p.i.handle_timeout(t + Duration::from_secs(3));
    assert!(p.i.poll_transmit().is_none());
    p.now = due;
    p.i.handle_timeout(due);
    let hb = p.i.poll_transmit().unwrap();
    // A 151-byte frame, its 2-byte length and 16-byte tag.
    assert_eq!(hb.len(), 151 + 18, "heartbeat Ping size on the wire");
    p.a.handle_input(p.now, &hb).unwrap();
    let pong = p.a.poll_transmit().unwrap();
    p.i.handle_input(p.now, &pong).unwrap();
    assert!(matches!(p.i.poll_event(), Some(Event::Pong(x)) if x.len() == 8));

    // Idle: nothing received for 20 s closes (heartbeats keep going meanwhile).
    let mut p = established();
    let t = p.now;
    let mut now = t;
    for _ in 0..10 {
        now = p.i.poll_timeout().unwrap();
        p.i.handle_timeout(now);
        if p.i.is_closed() {
            break;
        }
    }
    assert_eq!(now, t + Duration::from_secs(20));
    assert!(p.i.is_closed());
    let out: Vec<_> = std::iter::from_fn(|| p.i.poll_plain()).collect();
    assert_eq!(bye_reason(&out).as_deref(), Some("idle timeout"));

    // Slow sender: one byte a second never completes a frame within 3 s.
    let mut p = established();
    p.i.send_ping(p.now, b"slow").unwrap();
    let f = p.i.poll_transmit().unwrap();
    let mut now = p.now;
    for (k, b) in f.iter().enumerate() {
        now = p.now + Duration::from_secs(k as u64);
        if let Some(due) = p.a.poll_timeout() {
            if due <= now {
                p.a.handle_timeout(now);
            }
        }
        if p.a.is_closed() {
            break;
        }
        p.a.handle_input(now, std::slice::from_ref(b)).unwrap();
    }
    assert!(p.a.is_closed());
    assert!(now <= p.now + Duration::from_secs(4));
    let events: Vec<_> = std::iter::from_fn(|| p.a.poll_event()).collect();
    assert!(events.contains(&Event::Closed(CloseReason::Error(ProtoError::FrameTimeout))));
}

#[test]
fn eof_mid_frame_is_truncation() {
    let mut p = established();
    p.i.send_ping(p.now, b"1").unwrap();
    let f = p.i.poll_transmit().unwrap();
    p.a.handle_input(p.now, &f[..10]).unwrap();
    p.a.handle_eof(p.now);
    let events: Vec<_> = std::iter::from_fn(|| p.a.poll_event()).collect();
    assert!(matches!(
        events.last(),
        Some(Event::Closed(CloseReason::Error(
            ProtoError::Truncated { .. }
        )))
    ));
    let mut p = established();
    p.a.handle_eof(p.now);
    assert_eq!(p.a.poll_event(), Some(Event::Closed(CloseReason::Eof)));
}

#[test]
fn idle_session_holds_no_buffers() {
    let mut p = established();
    p.i.send_ping(p.now, b"x").unwrap();
    p.run();
    assert_eq!(p.a.buffered_input(), 0);
    assert_eq!(p.a.events.capacity(), 0);
}

#[test]
fn frame_sizes() {
    let mut p = established();
    // Frame, then its length and tag on the wire.
    p.i.send_ping(p.now, &[0; 32]).unwrap();
    assert_eq!(p.i.poll_transmit().unwrap().len(), 183 + 18);
    p.i.send_ping(p.now, &[]).unwrap();
    assert_eq!(p.i.poll_transmit().unwrap().len(), 139 + 18);
}

/// Returns whether the session ever authenticated.
fn feed_random(s: &mut Session, data: &[u8], split: usize) -> bool {
    let now = Instant::now();
    let mut authenticated = false;
    for c in data.chunks(split) {
        let _ = s.handle_input(now, c);
        while s.poll_transmit().is_some() {}
        while let Some(e) = s.poll_event() {
            if matches!(e, Event::AuthorizationRequired(_)) {
                let _ = s.accept(now);
            }
            authenticated |= matches!(e, Event::Authenticated { .. });
        }
    }
    s.handle_eof(now);
    assert!(s.is_closed());
    authenticated
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Bounded stand-in for the fuzz targets: random bytes at random split
    /// points into fresh and established sessions never panic.
    #[test]
    fn random_bytes_into_sessions(data in prop::collection::vec(any::<u8>(), 0..1500), split in 1usize..200, seed in any::<u64>()) {
        let mut a = Session::acceptor(id(2), cfg(), [0; 32], Box::new(StdRng::seed_from_u64(seed)), Instant::now());
        feed_random(&mut a, &data, split);
        let mut i = Session::initiator(id(1), cfg(), None, [0; 32], Box::new(StdRng::seed_from_u64(seed)), Instant::now());
        feed_random(&mut i, &data, split);
        let mut p = established();
        feed_random(&mut p.a, &data, split);
    }

    /// A valid stream with random bytes flipped never panics and never
    /// authenticates anything it should not.
    #[test]
    fn mutated_handshake(pos in 0usize..400, bit in 0u8..8, split in 1usize..64) {
        let mut p = Pair::new(1, 2, None);
        p.run();
        let mut stream: Vec<u8> = p.ia_wire.concat();
        let pos = pos % stream.len();
        stream[pos] ^= 1 << bit;
        let mut a2 = Session::acceptor(id(2), cfg(), [0x22; 32], Box::new(FillRng(0x44)), p.now);
        a2.poll_transmit();
        prop_assert!(!feed_random(&mut a2, &stream, split));
    }
}

#[test]
fn hello_with_a_weak_key_is_refused_before_any_signature_check() {
    // Under the identity point as key, R = identity and s = 0 verify for any
    // message: a Hello claiming it needs no secret. The key is refused.
    let hello = Hello {
        pubkey: format!("01{}", "0".repeat(62)),
        ..test_hello()
    };
    let payload = Message::Hello(hello).encode_payload();
    let mut forged = [0u8; 64];
    forged[0] = 1;
    let frame = encode_frame(MsgType::Hello, &payload, &forged).unwrap();
    let (mut a, mut t) = channel_acceptor(2, 1);
    let err = a
        .handle_input(Instant::now(), &sealed(&mut t, &frame))
        .unwrap_err();
    assert!(
        matches!(&err, ProtoError::InvalidPayload { reason, .. } if reason.contains("small order")),
        "{err:?}"
    );
    assert!(a.is_closed());
    assert!(a
        .poll_event()
        .is_none_or(|e| !matches!(e, Event::AuthorizationRequired(_))));
}

fn big_bundle(n: usize) -> Message {
    Message::GitBundle(crate::message::GitBundle {
        transfer_id: "t".into(),
        index: 0,
        total_size: n as u64,
        sha256: "0".repeat(64),
        data: vec![7; n],
    })
}

#[test]
fn before_authentication_a_frame_is_at_most_4_kib() {
    for role in [Role::Acceptor, Role::Initiator] {
        let mk = || match role {
            Role::Acceptor => channel_acceptor(2, 1),
            Role::Initiator => channel_initiator(1, 2),
        };
        // The largest allowed frame, nearly all sent, then a stall: the
        // session holds no more than the frame.
        let (mut s, mut t) = mk();
        let mut partial = (PRE_AUTH_MAX_FRAME_LEN as u32).to_be_bytes().to_vec();
        partial.extend(vec![b'x'; PRE_AUTH_MAX_FRAME_LEN - 1]);
        s.handle_input(Instant::now(), &sealed(&mut t, &partial))
            .unwrap();
        assert!(!s.is_closed());
        assert!(s.buffered_input() <= 2 * PRE_AUTH_MAX_FRAME_LEN, "{role:?}");
        // One byte more is refused from the header alone, before any body.
        let (mut s, mut t) = mk();
        let hdr = (PRE_AUTH_MAX_FRAME_LEN as u32 + 1).to_be_bytes();
        let err = s
            .handle_input(Instant::now(), &sealed(&mut t, &hdr))
            .unwrap_err();
        assert!(
            matches!(err, ProtoError::FrameTooLarge { max, .. } if max == PRE_AUTH_MAX_FRAME_LEN)
        );
        assert!(s.is_closed());
        // So is a 10 MiB declaration (what used to hold 10 MiB per socket).
        let (mut s, mut t) = mk();
        let hdr = (MAX_FRAME_LEN as u32).to_be_bytes();
        assert!(s
            .handle_input(Instant::now(), &sealed(&mut t, &hdr))
            .is_err());
        assert_eq!(s.buffered_input(), 0);
        // A transport message longer than one such frame is refused from
        // its 2-byte length, before it is buffered or decrypted.
        let (mut s, _) = mk();
        let len = (PRE_AUTH_MAX_NOISE_MESSAGE as u16 + 1).to_be_bytes();
        let err = s.handle_input(Instant::now(), &len).unwrap_err();
        assert!(
            matches!(err, ProtoError::Noise(NoiseError::TooLong { max, .. }) if max == PRE_AUTH_MAX_NOISE_MESSAGE),
            "{err:?}"
        );
    }
    // In the handshake, a message is at most 129 bytes.
    let mut a = Session::acceptor(id(2), cfg(), [0; 32], Box::new(FillRng(1)), Instant::now());
    let err = a.handle_input(Instant::now(), &[0xff, 0xff]).unwrap_err();
    assert!(matches!(err, ProtoError::Noise(NoiseError::TooLong { .. })));
    assert!(a.poll_transmit().is_none());
}

#[test]
fn once_established_large_frames_pass_even_in_the_same_input_as_the_pong() {
    let mut p = Pair::new(1, 2, None);
    p.noise();
    let f = p.i.poll_transmit().unwrap(); // initiator Hello
    p.a.handle_input(p.now, &f).unwrap();
    let f = p.a.poll_transmit().unwrap(); // acceptor Hello
    p.i.handle_input(p.now, &f).unwrap();
    let ping = p.i.poll_transmit().unwrap();
    p.a.handle_input(p.now, &ping).unwrap();
    while let Some(e) = p.a.poll_event() {
        if matches!(e, Event::AuthorizationRequired(_)) {
            p.a.accept(p.now).unwrap();
        }
    }
    assert!(p.a.is_established());
    // The acceptor's Pong and a 1 MiB message reach the initiator in one read.
    p.a.send(p.now, big_bundle(1 << 20)).unwrap();
    let mut input = Vec::new();
    while let Some(f) = p.a.poll_transmit() {
        input.extend(f);
    }
    assert!(input.len() > 1 << 20);
    p.i.handle_input(p.now, &input).unwrap();
    assert!(p.i.is_established());
    let mut got_bundle = false;
    while let Some(e) = p.i.poll_event() {
        if let Event::Message(Message::GitBundle(b)) = e {
            got_bundle = b.data.len() == 1 << 20;
        }
    }
    assert!(got_bundle);
    // And the other way.
    p.i.send(p.now, big_bundle(2 << 20)).unwrap();
    let f = p.i.poll_transmit().unwrap();
    p.a.handle_input(p.now, &f).unwrap();
    assert!(p.a.is_established());
}

#[test]
fn the_largest_hello_fits_the_pre_authentication_limit() {
    let mut versions = vec![u32::MAX; crate::message::MAX_VERSIONS];
    versions[0] = 2;
    let hello = Hello {
        protocol: "mmogit".into(),
        versions,
        pubkey: id(9).public_key().to_hex(),
        nonce: B64.encode([0xffu8; 32]),
        agent: "a".repeat(crate::message::MAX_AGENT_LEN),
        listen_port: Some(u16::MAX),
        capabilities: vec![
            "c".repeat(crate::message::MAX_CAPABILITY_LEN);
            crate::message::MAX_CAPABILITIES
        ],
    };
    let payload = Message::Hello(hello).encode_payload();
    let sig = id(9).sign(&hello_signed_bytes(&payload));
    let frame = encode_frame(MsgType::Hello, &payload, &sig.to_bytes()).unwrap();
    assert!(
        frame.len() - 4 <= PRE_AUTH_MAX_FRAME_LEN,
        "{} bytes",
        frame.len() - 4
    );
    // It is one transport message, under the limit before authorization.
    let (mut a, mut t) = channel_acceptor(2, 9);
    let wire = sealed(&mut t, &frame);
    assert!(wire.len() - 2 <= PRE_AUTH_MAX_NOISE_MESSAGE);
    a.handle_input(Instant::now(), &wire).unwrap();
    assert!(!a.is_closed());
    eprintln!("largest Hello frame body: {} bytes", frame.len() - 4);
}

#[test]
fn small_frames_queued_together_share_one_transport_message() {
    // Twenty Pings queued at once: one transport message, within what a
    // peer accepts before authorization.
    let mut p = established();
    for k in 0..20u8 {
        p.i.send_ping(p.now, &[k]).unwrap();
    }
    let wire = p.i.poll_transmit().unwrap();
    assert!(p.i.poll_transmit().is_none(), "one write");
    let len = u16::from_be_bytes([wire[0], wire[1]]) as usize;
    assert_eq!(wire.len(), 2 + len, "one transport message");
    assert!(len <= PRE_AUTH_MAX_NOISE_MESSAGE);
    p.a.handle_input(p.now, &wire).unwrap();
    assert_eq!(p.a.batch_verified_frames(), 20);
    p.run();
    let pongs = p
        .i_events
        .iter()
        .filter(|e| matches!(e, Event::Pong(_)))
        .count();
    assert_eq!(pongs, 20);

    // The acceptor's Pong and the small messages after it reach an
    // initiator that is not authenticated yet in one message: accepted.
    let mut p = Pair::new(1, 2, None);
    p.auto_accept = false;
    p.run();
    p.a.accept(p.now).unwrap();
    for _ in 0..10 {
        p.a.send(p.now, Message::MemoryResponse(MemoryResponse::default()))
            .unwrap();
    }
    let wire = p.a.poll_transmit().unwrap();
    assert!(p.a.poll_transmit().is_none());
    assert!(!p.i.is_established());
    p.i.handle_input(p.now, &wire).unwrap();
    assert!(p.i.is_established());
    let responses = std::iter::from_fn(|| p.i.poll_event())
        .filter(|e| matches!(e, Event::Message(Message::MemoryResponse(_))))
        .count();
    assert_eq!(responses, 10);
}
