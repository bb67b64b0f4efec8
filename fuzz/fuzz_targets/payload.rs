//! Arbitrary bytes as the payload of every message type (Hello, Ping, Pong,
//! MemoryRequest, MemoryResponse, GitBundle, Bye): decoding must never panic,
//! and whatever decodes must re-encode to a payload that decodes to the same
//! message (no limit is enforced on one side only).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmogit_proto::{Message, MsgType};

fuzz_target!(|data: &[u8]| {
    // The first byte picks a type (or all of them); the rest is the payload.
    let (sel, payload) = match data.split_first() {
        Some((s, p)) => (*s as usize, p),
        None => (0, data),
    };
    let types: Vec<MsgType> = if sel < MsgType::ALL.len() {
        vec![MsgType::ALL[sel]]
    } else {
        MsgType::ALL.to_vec()
    };
    for t in types {
        if let Ok(m) = Message::decode_payload(t, payload) {
            assert_eq!(m.msg_type(), t);
            let again = m.encode_payload();
            let back = Message::decode_payload(t, &again).expect("re-encoded payload decodes");
            // MemoryResponse carries free JSON values (floats may not
            // round-trip bit for bit), so compare it through its encoding.
            if t == MsgType::MemoryResponse {
                assert_eq!(back.encode_payload(), again);
            } else {
                assert_eq!(back, m);
            }
        }
    }
});
