//! The X25519 form of an identity (issue 17: protocol version 2 over Noise
//! uses it as the static key), checked against libsodium.
//!
//! `data/x25519_vectors.json` was written by `data/make_x25519_vectors.py`
//! with PyNaCl (libsodium's `crypto_sign_seed_keypair`,
//! `crypto_sign_ed25519_pk_to_curve25519`, `crypto_sign_ed25519_sk_to_curve25519`);
//! docs/PROTOCOL.md section 13 quotes its first case.

use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::montgomery::MontgomeryPoint;
use mmogit_identity::{Identity, PublicKey};
use rand::{RngCore, SeedableRng};

struct Vector {
    name: String,
    seed: [u8; 32],
    ed25519_public: String,
    x25519_secret: String,
    x25519_public: String,
}

fn vectors() -> Vec<Vector> {
    let raw: serde_json::Value =
        serde_json::from_str(include_str!("data/x25519_vectors.json")).unwrap();
    raw.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            Vector {
                name: s("name"),
                seed: hex::decode(s("ed25519_seed")).unwrap().try_into().unwrap(),
                ed25519_public: s("ed25519_public"),
                x25519_secret: s("x25519_secret"),
                x25519_public: s("x25519_public"),
            }
        })
        .collect()
}

#[test]
fn libsodium_vectors() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 8);
    for v in &vectors {
        let name = &v.name;
        let id = Identity::from_secret_bytes(&v.seed);
        assert_eq!(id.public_key().to_hex(), v.ed25519_public, "{name}");

        // The secret side: libsodium's sk_to_curve25519.
        let secret = id.x25519_secret();
        assert_eq!(hex::encode(*secret), v.x25519_secret, "{name}");
        // ed25519-dalek's scalar bytes (unclamped), clamped, are the same.
        let mut dalek = ed25519_dalek::SigningKey::from_bytes(&v.seed).to_scalar_bytes();
        dalek[0] &= 248;
        dalek[31] &= 127;
        dalek[31] |= 64;
        assert_eq!(dalek, *secret, "{name}");

        // The public side, from nothing but the peer's 64 hex characters.
        let peer: PublicKey = v.ed25519_public.parse().unwrap();
        assert_eq!(hex::encode(peer.to_x25519()), v.x25519_public, "{name}");
        assert_eq!(id.public_key().to_x25519(), peer.to_x25519(), "{name}");

        // X25519(secret, 9) is the public form, both ways of writing it.
        let by_base = MontgomeryPoint::mul_base_clamped(*secret);
        assert_eq!(hex::encode(by_base.to_bytes()), v.x25519_public, "{name}");
        let by_ladder = curve25519_dalek::constants::X25519_BASEPOINT.mul_clamped(*secret);
        assert_eq!(by_ladder, by_base, "{name}");
    }
}

#[test]
fn secret_and_public_forms_agree_on_random_seeds() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut prev: Option<Identity> = None;
    for _ in 0..200 {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let id = Identity::from_secret_bytes(&seed);
        let secret = id.x25519_secret();
        assert_eq!(secret[0] & 7, 0);
        assert_eq!(secret[31] & 0xc0, 0x40);
        assert_eq!(
            MontgomeryPoint::mul_base_clamped(*secret).to_bytes(),
            id.public_key().to_x25519(),
            "seed {}",
            hex::encode(seed)
        );
        // Two identities reach one shared secret from each other's Ed25519
        // key alone: the Diffie-Hellman a Noise handshake performs.
        if let Some(other) = prev {
            let ours = MontgomeryPoint(other.public_key().to_x25519()).mul_clamped(*secret);
            let theirs =
                MontgomeryPoint(id.public_key().to_x25519()).mul_clamped(*other.x25519_secret());
            assert_eq!(ours, theirs);
            assert_ne!(ours.to_bytes(), [0u8; 32]);
        }
        prev = Some(id);
    }
}

/// A key with a small torsion component (`P + T`, accepted by the key parser
/// as ZIP-215 accepts it) has its own X25519 form, but clamped scalars are
/// multiples of 8: the shared secret is that of `P`, never all zero.
#[test]
fn torsion_component_does_not_reach_the_shared_secret() {
    let id = Identity::from_secret_bytes(&[7u8; 32]);
    let p = CompressedEdwardsY(*id.public_key().as_bytes())
        .decompress()
        .unwrap();
    let other = Identity::from_secret_bytes(&[9u8; 32]);
    let their_secret = other.x25519_secret();
    let expected = MontgomeryPoint(id.public_key().to_x25519()).mul_clamped(*their_secret);
    for t in &EIGHT_TORSION[1..] {
        let mixed = PublicKey::from_bytes((p + t).compress().as_bytes())
            .expect("mixed-order keys are accepted (ZIP-215)");
        let shared = MontgomeryPoint(mixed.to_x25519()).mul_clamped(*their_secret);
        assert_eq!(shared, expected);
    }
    // And P, -P have one X25519 form (the map forgets the sign of x).
    let minus = PublicKey::from_bytes((-p).compress().as_bytes()).unwrap();
    assert_ne!(minus, id.public_key());
    assert_eq!(minus.to_x25519(), id.public_key().to_x25519());
}
