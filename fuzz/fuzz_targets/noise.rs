//! Arbitrary bytes, at arbitrary split points, into a version 2 responder
//! handshake (hidden and open) and into an established Noise transport:
//! must never panic, and a refused handshake answers nothing.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mmogit_identity::Identity;
use mmogit_proto::noise::{Handshake, Step};

/// A fixed ephemeral key: a run must be reproducible from its input.
fn fresh() -> [u8; 32] {
    [7; 32]
}

fn ids() -> &'static (Identity, Identity) {
    static F: OnceLock<(Identity, Identity)> = OnceLock::new();
    F.get_or_init(|| {
        (
            Identity::from_secret_bytes(&[1; 32]),
            Identity::from_secret_bytes(&[2; 32]),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (a, b) = ids();
    let split = 1 + data.first().copied().unwrap_or(0) as usize;
    for hidden in [true, false] {
        let mut r = Handshake::responder(b, hidden, fresh());
        for chunk in data.chunks(split) {
            match r.handle_input(chunk) {
                Ok(Step::Continue(_)) => {}
                Ok(Step::Done(_)) | Err(_) => break,
            }
        }
    }
    // An established channel fed junk.
    let (mut i, first) = Handshake::initiator(a, Some(&b.public_key()), fresh());
    let mut r = Handshake::responder(b, true, fresh());
    let Ok(Step::Continue(m2)) = r.handle_input(&first) else {
        return;
    };
    let Ok(Step::Done(m3)) = i.handle_input(&m2) else {
        return;
    };
    let _ = r.handle_input(&m3);
    let Ok(mut t) = r.into_transport() else {
        return;
    };
    let mut out = vec![];
    for chunk in data.chunks(split) {
        if t.decrypt(chunk, &mut out).is_err() {
            break;
        }
    }
});
