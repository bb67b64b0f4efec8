//! The session vectors of docs/PROTOCOL.md (section 10): one whole version 2
//! session with fixed keys and fixed randomness, byte for byte on the wire.
//! Ed25519 is deterministic, the Hello nonces are arguments, and the other
//! random values (ephemeral keys, the authentication Ping) come from the
//! session's generator, so fixed inputs give fixed bytes. They are kept in
//! `tests/data/session_vectors.json` (remade with `MMOGIT_WRITE_VECTORS=1`),
//! checked here against a fresh run and against the document, and remade
//! by an independent implementation in `tests/data/check_session_vectors.py`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mmogit_identity::Identity;
use mmogit_proto::noise::{Handshake, Step, Transport};
use mmogit_proto::{
    compute_session_id, signed_bytes, Event, MsgType, RawMessage, Role, Session, SessionConfig,
};
use serde_json::{json, Value};

struct FillRng(u8);
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

fn cfg(port: Option<u16>) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        versions: vec![2],
        agent: "mmogit/0.1.0".into(),
        listen_port: port,
        capabilities: vec![],
        ..SessionConfig::default()
    })
}

/// Runs the session, returning every vector.
fn session() -> Value {
    let now = Instant::now();
    let ik = Arc::new(Identity::from_secret_bytes(&[1u8; 32]));
    let ak = Arc::new(Identity::from_secret_bytes(&[2u8; 32]));
    let mut i = Session::initiator(
        ik.clone(),
        cfg(None),
        Some(ak.public_key()),
        [0x11; 32],
        Box::new(FillRng(0x33)),
        now,
    );
    let mut a = Session::acceptor(
        ak.clone(),
        cfg(Some(7420)),
        [0x22; 32],
        Box::new(FillRng(0x44)),
        now,
    );
    assert!(a.poll_transmit().is_none(), "the acceptor speaks second");
    let m1 = i.poll_transmit().unwrap();
    a.handle_input(now, &m1).unwrap();
    let m2 = a.poll_transmit().unwrap();
    i.handle_input(now, &m2).unwrap();
    let m3 = i.poll_transmit().unwrap();
    let i_hello = i.poll_transmit().unwrap();
    a.handle_input(now, &m3).unwrap();
    let a_hello = a.poll_transmit().unwrap();
    a.handle_input(now, &i_hello).unwrap();
    i.handle_input(now, &a_hello).unwrap();
    let ping = i.poll_transmit().unwrap();
    a.handle_input(now, &ping).unwrap();
    assert!(matches!(
        a.poll_event(),
        Some(Event::AuthorizationRequired(_))
    ));
    a.accept(now).unwrap();
    let pong = a.poll_transmit().unwrap();
    i.handle_input(now, &pong).unwrap();
    assert!(i.is_established() && a.is_established());

    let h = *i.handshake_hash().unwrap();
    assert_eq!(a.handshake_hash(), Some(&h));
    // The same handshake by hand, with the same ephemeral keys, gives the
    // same channel: it decrypts the frames, as the document shows them.
    let (mut hi, f1) = Handshake::initiator(&ik, Some(&ak.public_key()), [0x33; 32]);
    assert_eq!(f1, m1);
    let mut hr = Handshake::responder(&ak, true, [0x44; 32]);
    let Step::Continue(r2) = hr.handle_input(&f1).unwrap() else {
        panic!("message 2")
    };
    assert_eq!(r2, m2);
    let Step::Done(r3) = hi.handle_input(&r2).unwrap() else {
        panic!("message 3")
    };
    assert_eq!(r3, m3);
    assert!(matches!(hr.handle_input(&r3).unwrap(), Step::Done(_)));
    let (mut ti, mut tr) = (hi.into_transport().unwrap(), hr.into_transport().unwrap());
    assert_eq!(*ti.handshake_hash(), h);
    let open = |t: &mut Transport, wire: &[u8]| {
        let mut out = vec![];
        t.decrypt(wire, &mut out).unwrap();
        out
    };
    let i_hello_frame = open(&mut tr, &i_hello);
    let a_hello_frame = open(&mut ti, &a_hello);
    let ping_frame = open(&mut tr, &ping);
    let pong_frame = open(&mut ti, &pong);
    let payload = |f: &[u8]| RawMessage::from_body(&f[4..]).unwrap().payload;
    let (i_hello_payload, a_hello_payload) = (payload(&i_hello_frame), payload(&a_hello_frame));
    let sid = compute_session_id(&h, &i_hello_payload, &a_hello_payload);
    assert_eq!(i.session_id(), Some(&sid));
    assert_eq!(a.session_id(), Some(&sid));
    let signed = signed_bytes(&sid, Role::Initiator, 0, MsgType::Ping, &[0x33; 32]);
    let sig = ik.sign(&signed);
    json!({
        "initiator_seed": hex::encode([1u8; 32]),
        "acceptor_seed": hex::encode([2u8; 32]),
        "initiator_public_key": ik.public_key().to_hex(),
        "acceptor_public_key": ak.public_key().to_hex(),
        "initiator_ephemeral": hex::encode([0x33u8; 32]),
        "acceptor_ephemeral": hex::encode([0x44u8; 32]),
        "initiator_nonce": hex::encode([0x11u8; 32]),
        "acceptor_nonce": hex::encode([0x22u8; 32]),
        "message_1": hex::encode(&m1),
        "message_2": hex::encode(&m2),
        "message_3": hex::encode(&m3),
        "handshake_hash": hex::encode(h),
        "initiator_hello_frame": hex::encode(&i_hello_frame),
        "initiator_hello_wire": hex::encode(&i_hello),
        "acceptor_hello_frame": hex::encode(&a_hello_frame),
        "acceptor_hello_wire": hex::encode(&a_hello),
        "session_id": hex::encode(sid),
        "ping_signed_bytes": hex::encode(&signed),
        "ping_signature": sig.to_hex(),
        "ping_frame": hex::encode(&ping_frame),
        "ping_wire": hex::encode(&ping),
        "pong_frame": hex::encode(&pong_frame),
        "pong_wire": hex::encode(&pong),
    })
}

fn data() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/session_vectors.json")
}

#[test]
fn session_vectors() {
    let got = session();
    if std::env::var_os("MMOGIT_WRITE_VECTORS").is_some() {
        std::fs::write(data(), serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(data()).unwrap()).unwrap();
    assert_eq!(got, want, "the session no longer makes the recorded bytes");
    // Every value is printed in the document.
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/PROTOCOL.md"),
    )
    .unwrap();
    let doc: String = doc.split_whitespace().collect();
    for (k, v) in want.as_object().unwrap() {
        let v = v.as_str().unwrap();
        assert!(doc.contains(v), "docs/PROTOCOL.md lacks {k} = {v}");
    }
}
