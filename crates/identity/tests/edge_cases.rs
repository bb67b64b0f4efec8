//! Published Ed25519 edge cases through every verification path.
//!
//! `data/speccheck_cases.json` is `cases.json` of the public repository
//! novifinancial/ed25519-speccheck (commit 6551933, Apache-2.0), the twelve
//! cases of "Taming the many EdDSAs" (Chalkias, Garillot, Nikolaenko, 2020):
//! small-order keys and nonces, mixed-order points, `s >= L`, non-canonical
//! encodings of `R` and `A`. Each one must get the same verdict from the
//! key parser + single check, from a batch of itself alone, and from a batch
//! where it is mixed among valid signatures; the verdicts are pinned and
//! listed in docs/MEMORY_FORMAT.md.

use mmogit_identity::{verify_batch, Identity, PublicKey, Signature};

struct Case {
    msg: Vec<u8>,
    key: [u8; 32],
    sig: Signature,
}

fn cases() -> Vec<Case> {
    let raw: serde_json::Value =
        serde_json::from_str(include_str!("data/speccheck_cases.json")).unwrap();
    raw.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let h = |k: &str| hex::decode(c[k].as_str().unwrap()).unwrap();
            Case {
                msg: h("message"),
                key: h("pub_key").try_into().unwrap(),
                sig: Signature::from_slice(&h("signature")).unwrap(),
            }
        })
        .collect()
}

/// The verdicts of our rule (keys: canonical, not of small order; then
/// ZIP-215), case by case. docs/MEMORY_FORMAT.md has the same table.
const EXPECTED: [bool; 12] = [
    false, // 0: small-order A, small-order R, s = 0: weak key
    false, // 1: small-order A, mixed-order R: weak key
    true,  // 2: mixed-order A, small-order R
    true,  // 3: mixed-order A and R, both equations hold
    true,  // 4: mixed-order A and R, only the cofactored equation holds
    true,  // 5: as 4, k not reduced before the cofactor
    false, // 6: s >= L
    false, // 7: s >> L
    false, // 8: non-canonical R that does not decode to a point
    true,  // 9: non-canonical R encoding of a point (ZIP-215 accepts it)
    false, // 10: non-canonical A: refused as a key
    false, // 11: non-canonical A: refused as a key
];

fn single(c: &Case) -> bool {
    PublicKey::from_bytes(&c.key).is_ok_and(|k| k.verify(&c.msg, &c.sig).is_ok())
}

fn batch(items: &[(&[u8], Signature, PublicKey)]) -> bool {
    let msgs: Vec<&[u8]> = items.iter().map(|i| i.0).collect();
    let sigs: Vec<Signature> = items.iter().map(|i| i.1).collect();
    let keys: Vec<PublicKey> = items.iter().map(|i| i.2).collect();
    verify_batch(&msgs, &sigs, &keys).is_ok()
}

#[test]
fn every_published_edge_case_gets_one_verdict_on_every_path() {
    let honest: Vec<(Identity, Vec<u8>)> = (0..4u8)
        .map(|i| (Identity::from_secret_bytes(&[i + 1; 32]), vec![i; 40]))
        .collect();
    let valid: Vec<(&[u8], Signature, PublicKey)> = honest
        .iter()
        .map(|(id, m)| (m.as_slice(), id.sign(m), id.public_key()))
        .collect();
    assert!(batch(&valid));

    let mut verdicts = Vec::new();
    for (i, c) in cases().iter().enumerate() {
        let alone = single(c);
        match PublicKey::from_bytes(&c.key) {
            Ok(key) => {
                let item = (c.msg.as_slice(), c.sig, key);
                assert_eq!(batch(&[item]), alone, "case {i}: batch of one");
                // Repeated (the batch groups signatures by key) and mixed
                // among valid signatures, at the front, middle and end.
                assert_eq!(batch(&[item, item, item]), alone, "case {i}: repeated");
                for at in [0, 2, 4] {
                    let mut mixed = valid.clone();
                    mixed.insert(at, item);
                    for _ in 0..8 {
                        assert_eq!(batch(&mixed), alone, "case {i}: mixed at {at}");
                    }
                }
            }
            // A refused key never reaches a signature check on any path.
            Err(_) => assert!(!alone),
        }
        verdicts.push(alone);
    }
    assert_eq!(verdicts, EXPECTED);
}

/// The eight points of small order, canonical encodings (from curve25519-dalek's
/// EIGHT_TORSION), and non-canonical encodings of some of them.
const SMALL_ORDER: [&str; 8] = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
];
const NON_CANONICAL: [&str; 4] = [
    // (-0, 1): the identity with the sign bit set.
    "0100000000000000000000000000000000000000000000000000000000000080",
    // y = p + 1 = 1 (mod p): the identity again.
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    // (-0, -1), order 2.
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    // y = p = 0 (mod p), an order-4 point.
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];

#[test]
fn weak_and_non_canonical_keys_are_refused_from_bytes_hex_and_json() {
    for h in SMALL_ORDER.iter().chain(&NON_CANONICAL) {
        let bytes: [u8; 32] = hex::decode(h).unwrap().try_into().unwrap();
        let e = PublicKey::from_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("invalid public key"), "{h}: {e}");
        assert!(h.parse::<PublicKey>().is_err(), "{h}");
        assert!(serde_json::from_str::<PublicKey>(&format!("\"{h}\"")).is_err());
    }
    let weak = PublicKey::from_bytes(&[0u8; 32]);
    let weak = weak.unwrap_err().to_string();
    assert!(weak.contains("small order"), "{weak}");
    // A real key still parses, from the cache and without it.
    let id = Identity::from_secret_bytes(&[9; 32]);
    let again = PublicKey::from_bytes(id.public_key().as_bytes()).unwrap();
    assert_eq!(again, id.public_key());
    let sig = id.sign(b"m");
    again.verify(b"m", &sig).unwrap();
}
