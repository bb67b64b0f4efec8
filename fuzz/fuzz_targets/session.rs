//! Arbitrary bytes into acceptor and initiator sessions: raw on the wire
//! (the Noise handshake decoder), and inside a real encrypted channel after
//! a verified Hello and after authentication (the frame decoder and the
//! signed-message paths): must never panic.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mmogit_identity::Identity;
use mmogit_proto::{Event, Session, SessionConfig};
use rand::{rngs::StdRng, SeedableRng};

fn feed(s: &mut Session, data: &[u8], split: usize, now: Instant) {
    for chunk in data.chunks(split) {
        let _ = s.handle_input(now, chunk);
        while s.poll_transmit().is_some() {}
        while let Some(e) = s.poll_event() {
            if matches!(e, Event::AuthorizationRequired(_)) {
                let _ = s.accept(now);
            }
        }
    }
    s.handle_timeout(now + Duration::from_secs(60));
    s.handle_eof(now);
}

struct Fixed {
    cfg: Arc<SessionConfig>,
    a_id: Arc<Identity>,
    i_id: Arc<Identity>,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| Fixed {
        cfg: Arc::new(SessionConfig::default()),
        a_id: Arc::new(Identity::from_secret_bytes(&[2; 32])),
        i_id: Arc::new(Identity::from_secret_bytes(&[1; 32])),
    })
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    let now = Instant::now();
    let f = fixed();
    let (cfg, a_id, i_id) = (f.cfg.clone(), f.a_id.clone(), f.i_id.clone());

    let mut a = Session::acceptor(
        a_id.clone(),
        cfg.clone(),
        [0; 32],
        Box::new(StdRng::seed_from_u64(1)),
        now,
    );
    feed(&mut a, data, split, now);

    let mut i = Session::initiator(
        i_id.clone(),
        cfg.clone(),
        None,
        [0; 32],
        Box::new(StdRng::seed_from_u64(2)),
        now,
    );
    feed(&mut i, data, split, now);

    // Inside a real channel: an acceptor that completed the Noise handshake
    // and verified a real Hello, then one whose session is established.
    // The fuzz bytes travel encrypted by the initiator's channel, as if it
    // had written them, so they reach the frame decoder and the signed paths.
    for establish in [false, true] {
        let mut real_i = Session::initiator(
            i_id.clone(),
            cfg.clone(),
            Some(a_id.public_key()),
            [3; 32],
            Box::new(StdRng::seed_from_u64(3)),
            now,
        );
        let mut a2 = Session::acceptor(
            a_id.clone(),
            cfg.clone(),
            [4; 32],
            Box::new(StdRng::seed_from_u64(4)),
            now,
        );
        // Message 1, 2, 3 and the initiator's Hello; established: the rest.
        for _ in 0..if establish { 8 } else { 2 } {
            while let Some(b) = real_i.poll_transmit() {
                let _ = a2.handle_input(now, &b);
            }
            while let Some(e) = a2.poll_event() {
                if matches!(e, Event::AuthorizationRequired(_)) {
                    let _ = a2.accept(now);
                }
            }
            if !establish && a2.peer().is_some() {
                break;
            }
            while let Some(b) = a2.poll_transmit() {
                let _ = real_i.handle_input(now, &b);
            }
        }
        for chunk in data.chunks(split) {
            if real_i.send_raw_for_tests(now, chunk).is_err() {
                break;
            }
            while let Some(b) = real_i.poll_transmit() {
                let _ = a2.handle_input(now, &b);
            }
            while a2.poll_transmit().is_some() {}
            while let Some(e) = a2.poll_event() {
                if matches!(e, Event::AuthorizationRequired(_)) {
                    let _ = a2.accept(now);
                }
            }
        }
        a2.handle_timeout(now + Duration::from_secs(60));
        a2.handle_eof(now);
    }
});
