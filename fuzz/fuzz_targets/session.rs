//! Arbitrary bytes into acceptor and initiator sessions (fresh, and after a
//! real Hello so the signed-message path is reached): must never panic.
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

    // An acceptor that already verified a real initiator Hello.
    let mut real_i = Session::initiator(
        i_id,
        cfg.clone(),
        None,
        [3; 32],
        Box::new(StdRng::seed_from_u64(3)),
        now,
    );
    let hello = real_i.poll_transmit().unwrap();
    let mut a2 = Session::acceptor(a_id, cfg, [4; 32], Box::new(StdRng::seed_from_u64(4)), now);
    let _ = a2.handle_input(now, &hello);
    feed(&mut a2, data, split, now);
});
