use super::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// A fresh ephemeral key, as the node draws one per connection.
fn fresh() -> [u8; 32] {
    let mut e = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut e);
    e
}

fn id(n: u8) -> Identity {
    Identity::from_secret_bytes(&[n; 32])
}

/// Runs a handshake to the end, delivering each side's bytes to the other
/// in one piece. Returns both transports.
fn complete(mut i: Handshake, first: Vec<u8>, mut r: Handshake) -> (Transport, Transport) {
    let mut to_r = first;
    loop {
        let to_i = match r.handle_input(&std::mem::take(&mut to_r)).unwrap() {
            Step::Continue(b) => b,
            Step::Done(b) => {
                assert!(b.is_empty());
                return (i.into_transport().unwrap(), r.into_transport().unwrap());
            }
        };
        match i.handle_input(&to_i).unwrap() {
            Step::Continue(b) => to_r = b,
            Step::Done(b) => {
                let Step::Done(rest) = r.handle_input(&b).unwrap() else {
                    panic!("the responder finishes on the last message")
                };
                assert!(rest.is_empty());
                return (i.into_transport().unwrap(), r.into_transport().unwrap());
            }
        }
    }
}

/// Delivers `bytes` to `t` in random pieces.
fn deliver(t: &mut Transport, bytes: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut out = vec![];
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rng.gen_range(1..=rest.len().min(70_000));
        t.decrypt(&rest[..n], &mut out).unwrap();
        rest = &rest[n..];
    }
    assert_eq!(t.buffered(), 0);
    out
}

#[test]
fn xk_with_the_right_key_gives_both_sides_one_channel() {
    let (a, b) = (id(1), id(2));
    let (i, first) = Handshake::initiator(&a, Some(&b.public_key()), fresh());
    assert_eq!(first[2], Pattern::Xk as u8);
    let (mut ti, mut tr) = complete(i, first, Handshake::responder(&b, true, fresh()));
    assert_eq!(ti.handshake_hash(), tr.handshake_hash());
    assert!(ti.is_peer(&b.public_key()) && tr.is_peer(&a.public_key()));
    assert!(!tr.is_peer(&b.public_key()));
    // A 10 MiB frame stream, split and delivered in random pieces, both ways.
    let mut rng = StdRng::seed_from_u64(5);
    let mut big = vec![0u8; 10 << 20];
    rng.fill_bytes(&mut big);
    let mut wire = vec![];
    ti.encrypt(&big, &mut wire).unwrap();
    assert_eq!(
        wire.len(),
        big.len() + big.len().div_ceil(MAX_PLAINTEXT) * (2 + TAG_LEN)
    );
    assert_eq!(deliver(&mut tr, &wire, &mut rng), big);
    let mut back = vec![];
    tr.encrypt(b"pong", &mut back).unwrap();
    assert_eq!(deliver(&mut ti, &back, &mut rng), b"pong");
}

#[test]
fn transport_data_in_the_same_read_as_the_last_handshake_message_is_kept() {
    let (a, b) = (id(1), id(2));
    let (mut i, first) = Handshake::initiator(&a, Some(&b.public_key()), fresh());
    let mut r = Handshake::responder(&b, true, fresh());
    let Step::Continue(m2) = r.handle_input(&first).unwrap() else {
        panic!()
    };
    let Step::Done(mut m3) = i.handle_input(&m2).unwrap() else {
        panic!()
    };
    let mut ti = i.into_transport().unwrap();
    ti.encrypt(b"hello", &mut m3).unwrap();
    assert!(matches!(r.handle_input(&m3).unwrap(), Step::Done(b) if b.is_empty()));
    let mut tr = r.into_transport().unwrap();
    let mut out = vec![];
    tr.decrypt(&[], &mut out).unwrap();
    assert_eq!(out, b"hello");
}

#[test]
fn xk_for_another_key_gets_nothing_back() {
    // The initiator dials B's address believing it is C: B cannot decrypt
    // the first message and answers nothing.
    let (a, b, c) = (id(1), id(2), id(3));
    let (_, first) = Handshake::initiator(&a, Some(&c.public_key()), fresh());
    let mut r = Handshake::responder(&b, false, fresh());
    assert!(matches!(
        r.handle_input(&first),
        Err(NoiseError::Decrypt(_))
    ));
}

#[test]
fn a_hidden_node_refuses_first_contact_and_an_open_one_reveals_its_key() {
    let (a, b) = (id(1), id(2));
    let (_, first) = Handshake::initiator(&a, None, fresh());
    assert_eq!(first[2], Pattern::Xx as u8);
    let mut hidden = Handshake::responder(&b, true, fresh());
    assert_eq!(hidden.handle_input(&first), Err(NoiseError::Hidden));
    let (i, first) = Handshake::initiator(&a, None, fresh());
    let (ti, tr) = complete(i, first, Handshake::responder(&b, false, fresh()));
    assert!(ti.is_peer(&b.public_key()));
    assert!(tr.is_peer(&a.public_key()));
}

#[test]
fn scanners_get_an_error_and_no_bytes() {
    let b = id(2);
    let mut rng = StdRng::seed_from_u64(9);
    // Random bytes, a v1 Hello frame, an empty first frame, an unknown
    // pattern, a frame longer than a handshake message.
    let mut random = vec![0u8; 200];
    rng.fill_bytes(&mut random);
    // A version 1 frame: [u32 BE length][JSON].
    let json = br#"{"msg_type":"Hello","payload":{},"signature":""}"#;
    let mut v1 = (json.len() as u32).to_be_bytes().to_vec();
    v1.extend_from_slice(json);
    let cases: Vec<Vec<u8>> = vec![
        random,
        v1,
        vec![0, 0],
        vec![0, 3, 7, 1, 2],
        vec![0xff, 0xff, 1],
    ];
    for bytes in cases {
        let mut r = Handshake::responder(&b, true, fresh());
        let res = r.handle_input(&bytes);
        assert!(res.is_err(), "{bytes:?}: {res:?}");
    }
    // Nothing at all: no output while waiting.
    let mut r = Handshake::responder(&b, true, fresh());
    assert_eq!(r.handle_input(&[]).unwrap(), Step::Continue(vec![]));
}

#[test]
fn a_man_in_the_middle_completes_neither_handshake() {
    // M holds its own keys. A dials B's key but reaches M: M cannot read
    // A's first message. If M dials B under its own key and relays, B
    // authenticates M, not A, and A's handshake (bound to B's key) does
    // not finish with M's messages.
    let (a, b, m) = (id(1), id(2), id(6));
    let (mut ia, first_a) = Handshake::initiator(&a, Some(&b.public_key()), fresh());
    let mut rm = Handshake::responder(&m, false, fresh());
    assert!(rm.handle_input(&first_a).is_err());
    // M answers A as if it were B, from a handshake of its own with B.
    let (_, first_m) = Handshake::initiator(&m, Some(&b.public_key()), fresh());
    let mut rb = Handshake::responder(&b, true, fresh());
    let Step::Continue(m2) = rb.handle_input(&first_m).unwrap() else {
        panic!()
    };
    assert!(
        ia.handle_input(&m2).is_err(),
        "A takes no answer meant for M"
    );
}

#[test]
fn a_replayed_first_message_gets_nothing_usable() {
    let (a, b, e) = (id(1), id(2), id(7));
    let (_, first) = Handshake::initiator(&a, Some(&b.public_key()), fresh());
    let mut r1 = Handshake::responder(&b, true, fresh());
    let Step::Continue(_) = r1.handle_input(&first).unwrap() else {
        panic!()
    };
    // Replayed to a fresh responder, the message gets an answer (Noise XK
    // cannot tell), but the replayer cannot finish: it lacks A's keys.
    let mut r2 = Handshake::responder(&b, true, fresh());
    let Step::Continue(m2) = r2.handle_input(&first).unwrap() else {
        panic!()
    };
    assert!(!m2.is_empty());
    let (_, forged) = Handshake::initiator(&e, Some(&b.public_key()), fresh());
    assert!(r2.handle_input(&forged[..]).is_err());
}

#[test]
fn a_changed_replayed_or_dropped_transport_message_ends_the_channel() {
    let (a, b) = (id(1), id(2));
    let (i, first) = Handshake::initiator(&a, Some(&b.public_key()), fresh());
    let (mut ti, tr) = complete(i, first, Handshake::responder(&b, true, fresh()));
    let mut m1 = vec![];
    ti.encrypt(b"first", &mut m1).unwrap();
    let mut m2 = vec![];
    ti.encrypt(b"second", &mut m2).unwrap();
    // Each byte flipped in turn.
    for k in 0..m1.len() {
        let (i2, f2) = Handshake::initiator(&a, Some(&b.public_key()), fresh());
        let (mut t1, mut t2) = complete(i2, f2, Handshake::responder(&b, true, fresh()));
        let mut m = vec![];
        t1.encrypt(b"first", &mut m).unwrap();
        m[k] ^= 0x40;
        let mut out = vec![];
        let r = t2.decrypt(&m, &mut out);
        assert!(r.is_err() || t2.buffered() > 0, "byte {k}");
        assert!(out.is_empty(), "byte {k}");
    }
    // Replayed, or the one before it dropped.
    let mut out = vec![];
    let mut tr2 = tr;
    tr2.decrypt(&m1, &mut out).unwrap();
    assert!(tr2.decrypt(&m1, &mut out).is_err(), "a replay");
    let (i3, f3) = Handshake::initiator(&a, Some(&b.public_key()), fresh());
    let (mut t1, mut t2) = complete(i3, f3, Handshake::responder(&b, true, fresh()));
    let mut skip = vec![];
    t1.encrypt(b"one", &mut skip).unwrap();
    let mut next = vec![];
    t1.encrypt(b"two", &mut next).unwrap();
    assert!(t2.decrypt(&next, &mut vec![]).is_err(), "one dropped");
}

/// The vectors of `docs/PROTOCOL.md` section 14 (`tests/data/noise_vectors.json`):
/// fixed static and ephemeral keys, so every byte is reproducible by any
/// Noise library (`tests/data/check_noise_vectors.py` checks them with
/// another). On a mismatch the test prints what the code makes now.
#[test]
fn vectors() {
    let text = include_str!("../../tests/data/noise_vectors.json");
    let file: serde_json::Value = serde_json::from_str(text).unwrap();
    let made = make_vectors();
    assert_eq!(file.as_array().map(Vec::len), Some(2));
    assert!(
        file == made,
        "the vectors changed; now:\n{}",
        serde_json::to_string_pretty(&made).unwrap()
    );
}

/// The vectors: an XK and an XX handshake between the identities of seeds
/// 01…01 and 02…02 with ephemeral keys 11…11 / 22…22 and 33…33 / 44…44, and
/// the initiator's first transport message.
fn make_vectors() -> serde_json::Value {
    let mut cases = vec![];
    for (pattern, ie, re) in [("XK", 0x11u8, 0x22u8), ("XX", 0x33, 0x44)] {
        let (is, rs) = ([1u8; 32], [2u8; 32]);
        let (i, r) = (
            Identity::from_secret_bytes(&is),
            Identity::from_secret_bytes(&rs),
        );
        let rk = r.public_key();
        let (mut hi, m1) = Handshake::initiator(&i, (pattern == "XK").then_some(&rk), [ie; 32]);
        let mut hr = Handshake::responder(&r, false, [re; 32]);
        let Step::Continue(m2) = hr.handle_input(&m1).unwrap() else {
            panic!()
        };
        let Step::Done(m3) = hi.handle_input(&m2).unwrap() else {
            panic!()
        };
        hr.handle_input(&m3).unwrap();
        let mut ti = hi.into_transport().unwrap();
        let plain = "mmogit/2";
        let mut t1 = vec![];
        ti.encrypt(plain.as_bytes(), &mut t1).unwrap();
        cases.push(serde_json::json!({
            "pattern": pattern,
            "protocol": if pattern == "XK" { PROTOCOL_XK } else { PROTOCOL_XX },
            "initiator_seed": hex::encode(is),
            "initiator_static_x25519": hex::encode(i.public_key().to_x25519()),
            "initiator_ephemeral": hex::encode([ie; 32]),
            "responder_seed": hex::encode(rs),
            "responder_static_x25519": hex::encode(rk.to_x25519()),
            "responder_ephemeral": hex::encode([re; 32]),
            "prologue": hex::encode(super::prologue(if pattern == "XK" { Pattern::Xk } else { Pattern::Xx })),
            "message_1": hex::encode(&m1),
            "message_2": hex::encode(&m2),
            "message_3": hex::encode(&m3),
            "handshake_hash": hex::encode(ti.handshake_hash()),
            "transport_plaintext": plain,
            "transport_1": hex::encode(&t1),
        }));
    }
    serde_json::Value::Array(cases)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// The fuzz target's property on stable: junk at any split never panics,
    /// a hidden responder answers nothing, junk never becomes plaintext.
    #[test]
    fn junk_never_panics_and_a_refusal_sends_nothing(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        split in 1usize..64,
        hidden in proptest::prelude::any::<bool>(),
    ) {
        let b = id(2);
        let mut r = Handshake::responder(&b, hidden, fresh());
        for chunk in data.chunks(split) {
            match r.handle_input(chunk) {
                // An open node answers a well-formed XX first message (no
                // MAC to check); a hidden one never answers.
                Ok(Step::Continue(out)) => proptest::prop_assert!(!hidden || out.is_empty()),
                Ok(Step::Done(_)) => proptest::prop_assert!(false, "junk completed a handshake"),
                Err(_) => break,
            }
        }
        let (i, first) = Handshake::initiator(&id(1), Some(&b.public_key()), fresh());
        let (_, mut t) = complete(i, first, Handshake::responder(&b, true, fresh()));
        let mut out = vec![];
        for chunk in data.chunks(split) {
            if t.decrypt(chunk, &mut out).is_err() {
                break;
            }
        }
        proptest::prop_assert!(out.is_empty(), "junk decrypted to plaintext");
    }
}
