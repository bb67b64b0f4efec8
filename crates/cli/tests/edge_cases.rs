//! Ed25519 edge cases as memories, through every path that verifies one.
//!
//! The twelve published cases of ed25519-speccheck ("Taming the many
//! EdDSAs") sign fixed messages; `crates/identity/tests/edge_cases.rs` runs
//! them through the key parser, the single check and the batch. Here the same
//! kinds of signature are made over a memory's signing bytes (computed from
//! docs/MEMORY_FORMAT.md, not with our own code) by someone who may hold no
//! secret: weak keys, mixed-order keys and nonces, `s >= L`, non-canonical
//! encodings. Each memory must get the same verdict from the single check,
//! from a batch (alone, and mixed among valid memories), from `mmogit sync`
//! out of a git remote, from `mmogit verify` on a repository that already
//! holds it, and from `mmogit recall`.

mod common;

use common::{git, git_env, shared_remote, SharedRemote, TestHome};
use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT as B, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use mmogit_store::UnverifiedMemory;
use sha2::{Digest, Sha256, Sha512};

const CREATED: &str = "2026-12-01T12:00:00.000000Z";

/// `docs/MEMORY_FORMAT.md`, "Signing bytes": type `observation`, no tags,
/// no confidence, not private.
fn signing_bytes(author: &[u8; 32], content: &str) -> Vec<u8> {
    let mut out = b"mmogit-memory-v1\0".to_vec();
    out.extend_from_slice(&1u32.to_be_bytes());
    for field in [
        &author[..],
        CREATED.as_bytes(),
        b"observation",
        content.as_bytes(),
    ] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&0u32.to_be_bytes()); // no tags
    out.push(0); // no confidence
    out.push(0); // not private
    out
}

fn wide(h: &[u8]) -> Scalar {
    let mut w = [0u8; 64];
    w.copy_from_slice(h);
    Scalar::from_bytes_mod_order_wide(&w)
}

fn scalar(label: &str) -> Scalar {
    wide(&Sha512::digest(label.as_bytes()))
}

fn hram(r: &[u8; 32], a: &[u8; 32], msg: &[u8]) -> Scalar {
    wide(
        &Sha512::new()
            .chain_update(r)
            .chain_update(a)
            .chain_update(msg)
            .finalize(),
    )
}

/// How a case's key, nonce and `s` are made. `a` is the secret scalar,
/// when there is one.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Honest,
    /// Key = the identity point, R = identity, s = 0: the forgery of the
    /// report, under a key nobody holds.
    WeakIdentityKey,
    /// Key of order 8, R of order 4, s = 0.
    WeakOrder8Key,
    /// Key = the identity encoded with y = p + 1.
    NonCanonicalKey,
    /// Key aB + T (mixed order), R of small order, s = k·a.
    MixedKeySmallR,
    /// Key aB + T, R = rB + T', s = r + k·a, where only the cofactored
    /// equation holds.
    MixedKeyMixedR,
    /// Honest key, R = rB + T (torsion in the nonce), s = r + k·a.
    TorsionInR,
    /// An honest signature with s + L in place of s.
    SPlusL,
    /// R bytes that decode to no point.
    ROffCurve,
    /// R = the identity with its x sign bit set (non-canonical), s = k·a.
    NonCanonicalR,
    /// Honest key, R = identity, s = 0.
    ZeroSignature,
}

/// The verdict of our rule for each kind (docs/MEMORY_FORMAT.md).
const CASES: [(Kind, bool); 11] = [
    (Kind::Honest, true),
    (Kind::WeakIdentityKey, false),
    (Kind::WeakOrder8Key, false),
    (Kind::NonCanonicalKey, false),
    (Kind::MixedKeySmallR, true),
    (Kind::MixedKeyMixedR, true),
    (Kind::TorsionInR, true),
    (Kind::SPlusL, false),
    (Kind::ROffCurve, false),
    (Kind::NonCanonicalR, true),
    (Kind::ZeroSignature, false),
];

struct Crafted {
    author: String,
    id: String,
    json: String,
}

fn le(s: &Scalar) -> [u8; 32] {
    s.to_bytes()
}

/// `s + L` as 32 little-endian bytes (still below 2^256).
fn plus_l(s: &Scalar) -> [u8; 32] {
    let l: [u8; 32] =
        hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
            .unwrap()
            .try_into()
            .unwrap();
    let (mut out, mut carry) = ([0u8; 32], 0u16);
    for i in 0..32 {
        let v = s.to_bytes()[i] as u16 + l[i] as u16 + carry;
        out[i] = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    out
}

fn craft(kind: Kind, n: usize) -> Crafted {
    let a = scalar(&format!("secret {n}"));
    let honest = B * a;
    let t = |i: usize| EIGHT_TORSION[i];
    for attempt in 0.. {
        let content = format!("edge case {kind:?} #{n}.{attempt}");
        let r = scalar(&format!("nonce {n} {attempt}"));
        let key: [u8; 32] = match kind {
            Kind::WeakIdentityKey => EdwardsPoint::default().compress().to_bytes(),
            Kind::WeakOrder8Key => t(1).compress().to_bytes(),
            Kind::NonCanonicalKey => {
                hex::decode("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
                    .unwrap()
                    .try_into()
                    .unwrap()
            }
            Kind::MixedKeySmallR | Kind::MixedKeyMixedR => (honest + t(1)).compress().to_bytes(),
            _ => honest.compress().to_bytes(),
        };
        let r_bytes: [u8; 32] = match kind {
            Kind::WeakIdentityKey | Kind::ZeroSignature => {
                EdwardsPoint::default().compress().to_bytes()
            }
            Kind::WeakOrder8Key => t(2).compress().to_bytes(),
            Kind::MixedKeySmallR => t(4).compress().to_bytes(),
            Kind::MixedKeyMixedR => (B * r + t(3)).compress().to_bytes(),
            Kind::TorsionInR => (B * r + t(2)).compress().to_bytes(),
            Kind::ROffCurve => {
                let mut y = [0u8; 32];
                y[0] = 2 + attempt as u8;
                if CompressedEdwardsY(y).decompress().is_some() {
                    continue;
                }
                y
            }
            Kind::NonCanonicalR => {
                let mut y = EdwardsPoint::default().compress().to_bytes();
                y[31] |= 0x80;
                y
            }
            _ => (B * r).compress().to_bytes(),
        };
        let msg = signing_bytes(&key, &content);
        let k = hram(&r_bytes, &key, &msg);
        let s: [u8; 32] = match kind {
            Kind::WeakIdentityKey | Kind::WeakOrder8Key | Kind::ZeroSignature => [0; 32],
            Kind::MixedKeySmallR | Kind::NonCanonicalR => le(&(k * a)),
            Kind::SPlusL => plus_l(&(r + k * a)),
            _ => le(&(r + k * a)),
        };
        if let Kind::MixedKeyMixedR = kind {
            // Keep only signatures that the cofactorless equation refuses.
            let lhs = B * Scalar::from_canonical_bytes(s).unwrap();
            let rhs = CompressedEdwardsY(r_bytes).decompress().unwrap()
                + CompressedEdwardsY(key).decompress().unwrap() * k;
            if lhs == rhs {
                continue;
            }
        }
        let mut sig = r_bytes.to_vec();
        sig.extend_from_slice(&s);
        let id = hex::encode(Sha256::digest(&msg));
        let json = serde_json::json!({
            "version": 1,
            "id": id,
            "author": hex::encode(key),
            "created_at": CREATED,
            "type": "observation",
            "content": content,
            "tags": [],
            "private": false,
            "signature": hex::encode(sig),
        });
        return Crafted {
            author: hex::encode(key),
            id,
            json: serde_json::to_string_pretty(&json).unwrap() + "\n",
        };
    }
    unreachable!()
}

fn honest_memories(n: usize) -> Vec<UnverifiedMemory> {
    (0..n)
        .map(|i| UnverifiedMemory::from_json(craft(Kind::Honest, 100 + i).json.as_bytes()).unwrap())
        .collect()
}

#[test]
fn crafted_memories_get_one_verdict_from_single_and_batch_checks() {
    for (n, (kind, expected)) in CASES.iter().enumerate() {
        let c = craft(*kind, n);
        // The single path: parse (the key) then verify.
        let single = UnverifiedMemory::from_json(c.json.as_bytes()).and_then(|m| m.verify());
        assert_eq!(single.is_ok(), *expected, "{kind:?}: single: {single:?}");
        let Ok(parsed) = UnverifiedMemory::from_json(c.json.as_bytes()) else {
            // A refused key never reaches a signature check on any path.
            continue;
        };
        let alone = UnverifiedMemory::verify_many(vec![parsed.clone()]);
        assert_eq!(alone[0].is_ok(), *expected, "{kind:?}: batch of one");
        for at in [0, 3, 6] {
            let mut batch = honest_memories(6);
            batch.insert(at, parsed.clone());
            let out = UnverifiedMemory::verify_many(batch);
            for (i, r) in out.iter().enumerate() {
                let want = if i == at { *expected } else { true };
                assert_eq!(r.is_ok(), want, "{kind:?} at {at}: item {i}: {r:?}");
            }
        }
    }
}

/// A bare repository with A's genuine branch (A synced to it) that B trusts.
fn remote_with_a() -> SharedRemote {
    let s = shared_remote();
    s.a.remember(&["a genuine memory"]);
    s.a.run(&["sync"]).ok();
    s
}

/// Writes `c` as the only memory of branch `users/<its author>` in `repo`,
/// with system git (as anyone with write access to a remote could).
fn plant(repo: &std::path::Path, c: &Crafted) {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("index");
    let env = [("GIT_INDEX_FILE", index.as_path())];
    let f = tmp.path().join("blob");
    std::fs::write(&f, &c.json).unwrap();
    let blob = git(repo, &["hash-object", "-w", f.to_str().unwrap()]);
    let path = format!("memories/{}/{}.json", &c.id[..2], c.id);
    let info = format!("100644,{blob},{path}");
    git_env(repo, &["update-index", "--add", "--cacheinfo", &info], &env);
    let tree = git_env(repo, &["write-tree"], &env);
    let commit = git(repo, &["commit-tree", &tree, "-m", "memory"]);
    let branch = format!("refs/heads/users/{}", c.author);
    git(repo, &["update-ref", &branch, &commit]);
}

fn recalled(home: &TestHome, id: &str) -> Option<serde_json::Value> {
    let r = home.run(&["recall", "--json", "--limit", "100"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
}

#[test]
fn crafted_memories_get_the_same_verdict_from_sync_verify_and_recall() {
    for (n, (kind, expected)) in CASES.iter().enumerate() {
        let c = craft(*kind, n);
        let shared = remote_with_a();
        let b = &shared.b;
        plant(&shared.remote, &c);

        // Through `mmogit sync` from the git remote.
        let r = b.run(&["sync", "--json"]);
        let v = r.json();
        let refused = v[0]["refused"].as_array().unwrap();
        let branch = format!("users/{}", c.author);
        if *expected {
            assert_eq!(r.code, 0, "{kind:?}: {}", r.stderr);
            assert!(refused.is_empty(), "{kind:?}: {refused:?}");
            assert_eq!(v[0]["received"], 2, "{kind:?}");
            let m = recalled(b, &c.id).unwrap_or_else(|| panic!("{kind:?}: not recalled"));
            assert_eq!(m["verified"], true);
        } else {
            assert_eq!(r.code, 4, "{kind:?}: {}\n{}", r.stdout, r.stderr);
            assert!(
                refused.iter().any(|p| p["branch"] == branch.as_str()),
                "{kind:?}: {refused:?}"
            );
            assert_eq!(v[0]["received"], 1, "{kind:?}: only A's memory");
            let heads = git(&b.repo(), &["for-each-ref", "refs/heads/"]);
            assert!(!heads.contains(&c.author), "{kind:?}: {heads}");
            assert!(recalled(b, &c.id).is_none(), "{kind:?}");
        }
        b.run(&["verify"]).ok();

        // Already in the repository (e.g. stored by an older version):
        // `verify` and `recall` judge it as the single check does.
        let fresh = TestHome::init();
        plant(&fresh.repo(), &c);
        let r = fresh.run(&["verify", "--json"]);
        if *expected {
            assert_eq!(r.code, 0, "{kind:?}: {}{}", r.stdout, r.stderr);
            assert_eq!(recalled(&fresh, &c.id).unwrap()["verified"], true);
        } else {
            assert_eq!(r.code, 4, "{kind:?}: {}{}", r.stdout, r.stderr);
            assert!(r.stdout.contains(&c.author), "{kind:?}: {}", r.stdout);
            assert!(recalled(&fresh, &c.id).is_none(), "{kind:?}");
        }
    }
}

#[test]
fn weak_keys_are_refused_as_peers_and_in_every_key_argument() {
    let h = TestHome::init();
    let weak = format!("01{}", "0".repeat(62));
    for args in [
        vec!["p2p", "add", "127.0.0.1:9", "--pubkey", &weak, "--yes"],
        vec!["p2p", "add", "/nonexistent.git", "--pubkey", &weak],
    ] {
        let err = h.run(&args).fails_with(2);
        assert!(err.contains("small order"), "{err}");
        assert!(!err.contains("give all 64"), "{err}");
    }
    assert!(!h.home.join("peers.json").exists() || !h.run(&["p2p", "list"]).ok().contains(&weak));
}
