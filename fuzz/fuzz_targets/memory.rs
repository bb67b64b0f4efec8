//! Memory records: arbitrary bytes into `UnverifiedMemory::from_json` and
//! `verify` must never panic; and a memory signed from fuzzer-chosen fields
//! must verify after a JSON round trip, while any one-byte change to its file
//! is refused or parses to the very same record (no second valid form).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use mmogit_identity::Identity;
use mmogit_store::{MemoryType, NewMemory, UnverifiedMemory, VerifiedMemory};

fn identity() -> &'static Identity {
    static I: OnceLock<Identity> = OnceLock::new();
    I.get_or_init(|| Identity::from_secret_bytes(&[7; 32]))
}

fn raw(data: &[u8]) {
    if let Ok(m) = UnverifiedMemory::from_json(data) {
        let _ = m.check_without_signature();
        if let Ok(v) = m.clone().verify() {
            // What verifies re-serializes to a record that verifies again.
            let again = UnverifiedMemory::from_json(&v.to_json()).expect("own JSON parses");
            assert_eq!(again, m);
            again.verify().expect("own JSON verifies");
        }
        let _ = UnverifiedMemory::verify_many(vec![m]);
    }
}

fn structured(data: &[u8]) {
    // Layout: kind, flags, confidence byte, flip position (2 bytes), flip xor,
    // then content and tags separated by 0xff.
    if data.len() < 6 {
        return;
    }
    let kind = MemoryType::ALL[data[0] as usize % MemoryType::ALL.len()];
    let private = data[1] & 1 == 1;
    let confidence = (data[1] & 2 == 2).then(|| data[2] as f64 / 255.0);
    let flip_at = u16::from_be_bytes([data[3], data[4]]) as usize;
    let flip = data[5];
    let mut parts = data[6..].split(|b| *b == 0xff);
    let content = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let tags: Vec<String> = parts
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let created = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_000);
    let new = NewMemory {
        kind,
        content,
        tags,
        confidence,
        private,
    };
    let Ok(v) = VerifiedMemory::create_at(identity(), new, created) else {
        return; // fields over a limit are refused at creation
    };
    let json = v.to_json();
    let parsed = UnverifiedMemory::from_json(&json).expect("signed memory parses");
    assert_eq!(&parsed, v.record());
    parsed.clone().verify().expect("signed memory verifies");
    if flip != 0 && !json.is_empty() {
        let mut bad = json.clone();
        let i = flip_at % bad.len();
        bad[i] ^= flip;
        if let Ok(m) = UnverifiedMemory::from_json(&bad) {
            if m.clone().verify().is_ok() {
                assert_eq!(m, parsed, "a changed file verified as another record");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, rest)) => structured(rest),
        Some((_, rest)) => raw(rest),
        None => {}
    }
});
