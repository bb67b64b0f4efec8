//! Signature verification cost per signature: our rule (ZIP-215, single and
//! batched) beside ed25519-dalek's `verify_strict`, the check used before, on
//! the same signatures in the same run.
//!
//! `cargo run --release -p mmogit-identity --example bench_verify`

use std::time::Instant;

use ed25519_dalek::{Signer, SigningKey};
use mmogit_identity::{verify_batch, Identity, PublicKey, Signature};

const N: usize = 4096;

fn main() {
    let ids: Vec<Identity> = (0..16u8)
        .map(|i| Identity::from_secret_bytes(&[i + 1; 32]))
        .collect();
    let msgs: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("message {i} {}", "x".repeat(150)).into_bytes())
        .collect();
    let signer = |i: usize| &ids[i % ids.len()];
    let sigs: Vec<Signature> = (0..N).map(|i| signer(i).sign(&msgs[i])).collect();
    let keys: Vec<PublicKey> = (0..N).map(|i| signer(i).public_key()).collect();
    let dalek_keys: Vec<SigningKey> = (0..16u8)
        .map(|i| SigningKey::from_bytes(&[i + 1; 32]))
        .collect();
    let dalek_sigs: Vec<ed25519_dalek::Signature> =
        (0..N).map(|i| dalek_keys[i % 16].sign(&msgs[i])).collect();
    assert_eq!(dalek_sigs[0].to_bytes(), sigs[0].to_bytes());

    for round in 0..3 {
        let t = Instant::now();
        for i in 0..N {
            dalek_keys[i % 16]
                .verifying_key()
                .verify_strict(&msgs[i], &dalek_sigs[i])
                .unwrap();
        }
        let strict = t.elapsed().as_secs_f64() * 1e6 / N as f64;
        let t = Instant::now();
        for i in 0..N {
            keys[i].verify(&msgs[i], &sigs[i]).unwrap();
        }
        let single = t.elapsed().as_secs_f64() * 1e6 / N as f64;
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        let mut batched = Vec::new();
        for size in [8usize, 64] {
            let t = Instant::now();
            for c in 0..N / size {
                let r = c * size..(c + 1) * size;
                verify_batch(&refs[r.clone()], &sigs[r.clone()], &keys[r]).unwrap();
            }
            batched.push(t.elapsed().as_secs_f64() * 1e6 / N as f64);
        }
        let t = Instant::now();
        for k in &keys {
            std::hint::black_box(PublicKey::from_bytes(k.as_bytes()).unwrap());
        }
        let parse_cached = t.elapsed().as_secs_f64() * 1e6 / N as f64;
        println!(
            "round {round}: µs per signature: dalek verify_strict (before) {strict:.1} | ours single {single:.1} | batch of 8 {:.1} | batch of 64 {:.1} | key parse (alternating keys) {parse_cached:.1}",
            batched[0], batched[1]
        );
    }
}
