//! Arbitrary bytes, split at a data-chosen point, into the frame decoder and
//! envelope parser: must never panic nor buffer more than was fed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmogit_proto::{FrameDecoder, Message, RawMessage};

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    let mut d = FrameDecoder::default();
    for chunk in data.chunks(split) {
        let mut input = chunk;
        loop {
            match d.decode(&mut input) {
                Ok(Some(body)) => {
                    if let Ok(raw) = RawMessage::from_body(&body) {
                        let _ = Message::decode_payload(raw.msg_type, &raw.payload);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.buffered() <= data.len());
    }
    let _ = d.finish();
});
