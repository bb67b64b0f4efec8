//! What version 2's Noise layer costs, in process, beside what version 1
//! already pays in the same run: the XK handshake (both sides, one core)
//! beside one Ed25519 signature and verification (a v1 message's cost), and
//! transport throughput (encrypt + decrypt of a 10 MiB frame stream) beside
//! plain copying of the same bytes.
//!
//! `cargo run --release -p mmogit-proto --example bench_noise`

use std::time::{Duration, Instant};

use mmogit_identity::Identity;
use mmogit_proto::noise::{Handshake, Step, Transport};

/// A fresh ephemeral key, as the node draws one per connection.
fn fresh() -> [u8; 32] {
    let mut e = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut e);
    e
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn handshake(a: &Identity, b: &Identity) -> (Transport, Transport) {
    let (mut i, first) = Handshake::initiator(a, Some(&b.public_key()), fresh());
    let mut r = Handshake::responder(b, true, fresh());
    let Ok(Step::Continue(m2)) = r.handle_input(&first) else {
        panic!("message 2")
    };
    let Ok(Step::Done(m3)) = i.handle_input(&m2) else {
        panic!("message 3")
    };
    let Ok(Step::Done(_)) = r.handle_input(&m3) else {
        panic!("done")
    };
    (i.into_transport().unwrap(), r.into_transport().unwrap())
}

fn main() {
    let (a, b) = (
        Identity::from_secret_bytes(&[1; 32]),
        Identity::from_secret_bytes(&[2; 32]),
    );
    let runs = 300;
    let mut hs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let _ = handshake(&a, &b);
        hs.push(t.elapsed());
    }
    let mut sv = Vec::with_capacity(runs);
    let msg = [7u8; 200];
    for _ in 0..runs {
        let t = Instant::now();
        let sig = a.sign(&msg);
        a.public_key().verify(&msg, &sig).unwrap();
        sv.push(t.elapsed());
    }
    println!("mmogit noise bench (in process, release, one core)");
    println!(
        "XK handshake, both sides (3 messages, 3 DH each side): median {:?} over {runs}",
        median(hs)
    );
    println!(
        "baseline, same run: one Ed25519 sign + verify (what each v1 message costs): median {:?}",
        median(sv)
    );

    let (mut ti, mut tr) = handshake(&a, &b);
    let size = 10 << 20;
    let plain = vec![0x5au8; size];
    let rounds = 10;
    let mut noise = Vec::with_capacity(rounds);
    let mut copy = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut wire = Vec::with_capacity(size + size / 4000);
        ti.encrypt(&plain, &mut wire).unwrap();
        let mut out = Vec::with_capacity(size);
        tr.decrypt(&wire, &mut out).unwrap();
        noise.push(t.elapsed());
        assert_eq!(out.len(), size);
        let t = Instant::now();
        let mut c1 = Vec::with_capacity(size);
        c1.extend_from_slice(std::hint::black_box(&plain));
        let mut c2 = Vec::with_capacity(size);
        c2.extend_from_slice(std::hint::black_box(&c1));
        std::hint::black_box(&c2);
        copy.push(t.elapsed());
        assert_eq!(c2.len(), size);
    }
    let mbps = |d: Duration| size as f64 / d.as_secs_f64() / (1 << 20) as f64;
    let (n, c) = (median(noise), median(copy));
    println!(
        "transport, 10 MiB encrypted and decrypted: median {:?} = {:.0} MiB/s",
        n,
        mbps(n)
    );
    println!(
        "baseline, same run: the same bytes copied twice: median {:?} = {:.0} MiB/s",
        c,
        mbps(c)
    );
    // Small messages one by one (a pipelined Ping/Pong's shape).
    let small = [3u8; 200];
    let n_small = 100_000;
    let t = Instant::now();
    let mut wire = Vec::new();
    let mut out = Vec::new();
    for _ in 0..n_small {
        wire.clear();
        out.clear();
        ti.encrypt(&small, &mut wire).unwrap();
        tr.decrypt(&wire, &mut out).unwrap();
    }
    let per = t.elapsed() / n_small;
    println!("transport, 200-byte messages one by one, encrypted and decrypted: {per:?} each");
    println!(
        "Transport struct: {} bytes inline (snow's boxed cipher states and the receive buffer come on top; measured per idle connection once the node speaks v2)",
        std::mem::size_of::<Transport>()
    );
}
