//! Frame codec: `[u32 big-endian length][JSON NetworkMessage]`.
//!
//! [`FrameDecoder`] accepts bytes split anywhere (one byte at a time works),
//! rejects a declared length of 0 or above the limit from the 4 header bytes
//! alone, before allocating anything, and grows its body buffer only as bytes
//! actually arrive (a declared 10 MiB frame that never comes costs nothing).
//! The buffer is handed out with the frame, so an idle decoder holds no heap.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::ProtoError;
use crate::message::MsgType;

/// Largest frame body accepted or sent: 10 MiB.
pub const MAX_FRAME_LEN: usize = 10 * 1024 * 1024;
/// Largest frame body accepted before the session is authenticated (the
/// Hello and the authentication Ping/Pong): 4 KiB. A stranger can make us
/// hold at most this much per connection.
pub const PRE_AUTH_MAX_FRAME_LEN: usize = 4096;
/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// The JSON object inside every frame: exactly these three fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkMessage {
    /// One of the message type names (`"Hello"`, `"Ping"`, ...).
    pub msg_type: String,
    /// The payload bytes, base64 (standard alphabet, padded).
    pub payload: String,
    /// The 64-byte Ed25519 signature, base64 (standard alphabet, padded).
    pub signature: String,
}

/// A frame whose envelope has been checked: known type, decoded payload and
/// 64-byte signature. The signature is not verified here (that needs the
/// session state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub msg_type: MsgType,
    pub payload: Vec<u8>,
    pub signature: [u8; 64],
}

impl RawMessage {
    /// Parses a frame body (the bytes after the length header).
    pub fn from_body(body: &[u8]) -> Result<Self, ProtoError> {
        let nm: NetworkMessage =
            serde_json::from_slice(body).map_err(|e| ProtoError::InvalidJson(e.to_string()))?;
        let msg_type = MsgType::parse(&nm.msg_type)?;
        let payload = B64
            .decode(nm.payload.as_bytes())
            .map_err(|_| ProtoError::InvalidBase64 { field: "payload" })?;
        let sig = B64
            .decode(nm.signature.as_bytes())
            .map_err(|_| ProtoError::InvalidBase64 { field: "signature" })?;
        let signature: [u8; 64] = sig
            .as_slice()
            .try_into()
            .map_err(|_| ProtoError::BadSignatureEncoding)?;
        Ok(RawMessage {
            msg_type,
            payload,
            signature,
        })
    }

    /// Encodes a complete frame: header and JSON body.
    pub fn to_frame(&self) -> Result<Vec<u8>, ProtoError> {
        encode_frame(self.msg_type, &self.payload, &self.signature)
    }
}

/// Encodes a complete frame (header + JSON body) for the given parts.
pub fn encode_frame(
    msg_type: MsgType,
    payload: &[u8],
    signature: &[u8; 64],
) -> Result<Vec<u8>, ProtoError> {
    let nm = NetworkMessage {
        msg_type: msg_type.as_str().to_string(),
        payload: B64.encode(payload),
        signature: B64.encode(signature),
    };
    let body = serde_json::to_vec(&nm).expect("NetworkMessage serializes");
    if body.len() > MAX_FRAME_LEN {
        return Err(ProtoError::MessageTooLarge {
            msg_type: msg_type.as_str(),
            len: body.len(),
        });
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Incremental frame decoder.
#[derive(Debug)]
pub struct FrameDecoder {
    max_len: usize,
    header: [u8; HEADER_LEN],
    header_have: u8,
    /// Declared body length once the header is complete.
    need: Option<usize>,
    body: Vec<u8>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder refusing bodies longer than `max_len` (at most [`MAX_FRAME_LEN`]).
    pub fn new(max_len: usize) -> Self {
        FrameDecoder {
            max_len: max_len.min(MAX_FRAME_LEN),
            header: [0; HEADER_LEN],
            header_have: 0,
            need: None,
            body: Vec::new(),
        }
    }

    /// Consumes bytes from the front of `input` until one frame body is
    /// complete, and returns it; `Ok(None)` once `input` is exhausted without
    /// completing a frame. Call again with the rest of `input` for more.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, ProtoError> {
        {
            let need = match self.need {
                Some(n) => n,
                None => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let take = (HEADER_LEN - self.header_have as usize).min(input.len());
                    let start = self.header_have as usize;
                    self.header[start..start + take].copy_from_slice(&input[..take]);
                    *input = &input[take..];
                    self.header_have += take as u8;
                    if (self.header_have as usize) < HEADER_LEN {
                        return Ok(None);
                    }
                    let len = u32::from_be_bytes(self.header) as usize;
                    if len == 0 {
                        return Err(ProtoError::EmptyFrame);
                    }
                    if len > self.max_len {
                        return Err(ProtoError::FrameTooLarge {
                            len: len as u64,
                            max: self.max_len,
                        });
                    }
                    self.need = Some(len);
                    len
                }
            };
            let missing = need - self.body.len();
            let take = missing.min(input.len());
            if take > 0 {
                // Grows only by what has actually arrived.
                self.body.extend_from_slice(&input[..take]);
                *input = &input[take..];
            }
            if self.body.len() == need {
                self.need = None;
                self.header_have = 0;
                return Ok(Some(std::mem::take(&mut self.body)));
            }
            Ok(None)
        }
    }

    /// Changes the largest body accepted from the next frame header on (at
    /// most [`MAX_FRAME_LEN`]).
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len.min(MAX_FRAME_LEN);
    }

    /// True while a frame has started (some header or body bytes buffered).
    pub fn in_frame(&self) -> bool {
        self.header_have > 0
    }

    /// Bytes currently buffered (header and body).
    pub fn buffered(&self) -> usize {
        self.header_have as usize + self.body.len()
    }

    /// Heap capacity held by the decoder.
    pub fn capacity(&self) -> usize {
        self.body.capacity()
    }

    /// Call at end of stream: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), ProtoError> {
        if !self.in_frame() {
            return Ok(());
        }
        let need = self.need.map(|n| HEADER_LEN + n).unwrap_or(HEADER_LEN);
        Err(ProtoError::Truncated {
            have: self.buffered(),
            need,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body_of(frame: &[u8]) -> &[u8] {
        &frame[HEADER_LEN..]
    }

    #[test]
    fn refuses_4gib_without_allocating() {
        let mut d = FrameDecoder::default();
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let err = d.decode(&mut input).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::FrameTooLarge {
                len: 4294967295,
                ..
            }
        ));
        assert_eq!(d.capacity(), 0);
        // Just over the limit is refused too, exactly the limit is accepted.
        let mut d = FrameDecoder::default();
        let hdr = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(d.decode(&mut &hdr[..]).is_err());
        let mut d = FrameDecoder::default();
        let hdr = (MAX_FRAME_LEN as u32).to_be_bytes();
        assert_eq!(d.decode(&mut &hdr[..]).unwrap(), None);
        assert_eq!(
            d.capacity(),
            0,
            "nothing allocated before body bytes arrive"
        );
    }

    #[test]
    fn refuses_length_zero() {
        let mut d = FrameDecoder::default();
        assert_eq!(
            d.decode(&mut &[0u8, 0, 0, 0][..]).unwrap_err(),
            ProtoError::EmptyFrame
        );
    }

    #[test]
    fn truncated_then_eof() {
        let frame = encode_frame(MsgType::Ping, b"abc", &[7; 64]).unwrap();
        let mut d = FrameDecoder::default();
        let mut input = &frame[..frame.len() - 1];
        assert_eq!(d.decode(&mut input).unwrap(), None);
        assert_eq!(
            d.finish().unwrap_err(),
            ProtoError::Truncated {
                have: frame.len() - 1,
                need: frame.len()
            }
        );
        let mut d = FrameDecoder::default();
        d.decode(&mut &frame[..2]).unwrap();
        assert!(matches!(
            d.finish(),
            Err(ProtoError::Truncated { have: 2, need: 4 })
        ));
        let mut d = FrameDecoder::default();
        assert!(d.finish().is_ok());
        assert_eq!(
            d.decode(&mut &frame[..]).unwrap().as_deref(),
            Some(body_of(&frame))
        );
        assert!(d.finish().is_ok());
        assert_eq!(d.capacity(), 0, "buffer released after the frame");
    }

    #[test]
    fn garbage_and_unknown_type() {
        assert!(matches!(
            RawMessage::from_body(b"not json"),
            Err(ProtoError::InvalidJson(_))
        ));
        assert!(matches!(
            RawMessage::from_body(br#"{"msg_type":"Ping","payload":"","signature":"","x":1}"#),
            Err(ProtoError::InvalidJson(_))
        ));
        assert!(matches!(
            RawMessage::from_body(br#"{"msg_type":"Ping","payload":""}"#),
            Err(ProtoError::InvalidJson(_))
        ));
        assert!(matches!(
            RawMessage::from_body(br#"{"msg_type":"Gossip","payload":"","signature":""}"#),
            Err(ProtoError::UnknownMessageType(t)) if t == "Gossip"
        ));
        assert!(matches!(
            RawMessage::from_body(br#"{"msg_type":"Ping","payload":"!!","signature":""}"#),
            Err(ProtoError::InvalidBase64 { field: "payload" })
        ));
        assert!(matches!(
            RawMessage::from_body(br#"{"msg_type":"Ping","payload":"","signature":"AAAA"}"#),
            Err(ProtoError::BadSignatureEncoding)
        ));
        assert!(matches!(
            RawMessage::from_body(br#"{"msg_type":"Ping","payload":[1,2],"signature":""}"#),
            Err(ProtoError::InvalidJson(_))
        ));
    }

    #[test]
    fn wire_format_is_three_string_fields() {
        let frame = encode_frame(MsgType::Pong, &[1, 2, 3], &[0; 64]).unwrap();
        let body = std::str::from_utf8(body_of(&frame)).unwrap();
        assert_eq!(
            body,
            format!(
                r#"{{"msg_type":"Pong","payload":"AQID","signature":"{}"}}"#,
                B64.encode([0u8; 64])
            )
        );
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
            body.len()
        );
    }

    fn arb_msg() -> impl Strategy<Value = RawMessage> {
        (
            prop::sample::select(MsgType::ALL.to_vec()),
            prop::collection::vec(any::<u8>(), 0..300),
            prop::array::uniform32(any::<u8>()),
            prop::array::uniform32(any::<u8>()),
        )
            .prop_map(|(t, p, s1, s2)| {
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(&s1);
                sig[32..].copy_from_slice(&s2);
                RawMessage {
                    msg_type: t,
                    payload: p,
                    signature: sig,
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip(msgs in prop::collection::vec(arb_msg(), 1..5), chunk in 1usize..64) {
            let mut stream = Vec::new();
            for m in &msgs {
                stream.extend(m.to_frame().unwrap());
            }
            let mut d = FrameDecoder::default();
            let mut out = Vec::new();
            for c in stream.chunks(chunk) {
                let mut input = c;
                while let Some(body) = d.decode(&mut input).unwrap() {
                    out.push(RawMessage::from_body(&body).unwrap());
                }
                prop_assert!(input.is_empty());
            }
            prop_assert!(d.finish().is_ok());
            prop_assert_eq!(out, msgs);
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2000), split in 1usize..100) {
            let mut d = FrameDecoder::default();
            'outer: for c in data.chunks(split) {
                let mut input = c;
                loop {
                    match d.decode(&mut input) {
                        Ok(Some(body)) => { let _ = RawMessage::from_body(&body); }
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
            prop_assert!(d.capacity() <= 4 * 2000);
        }
    }

    #[test]
    fn every_split_point_of_several_frames() {
        let msgs: Vec<RawMessage> = (0..4u8)
            .map(|i| RawMessage {
                msg_type: MsgType::ALL[i as usize % MsgType::ALL.len()],
                payload: vec![i; i as usize * 7],
                signature: [i; 64],
            })
            .collect();
        let stream: Vec<u8> = msgs.iter().flat_map(|m| m.to_frame().unwrap()).collect();
        for a in 0..=stream.len() {
            for b in [a, (a + 1).min(stream.len()), (a + 97).min(stream.len())] {
                let mut d = FrameDecoder::default();
                let mut out = Vec::new();
                for part in [&stream[..a], &stream[a..b], &stream[b..]] {
                    let mut input = part;
                    while let Some(body) = d.decode(&mut input).unwrap() {
                        out.push(RawMessage::from_body(&body).unwrap());
                    }
                }
                assert_eq!(out, msgs, "split at {a},{b}");
            }
        }
        // One byte at a time.
        let mut d = FrameDecoder::default();
        let mut out = Vec::new();
        for byte in &stream {
            let mut input = std::slice::from_ref(byte);
            while let Some(body) = d.decode(&mut input).unwrap() {
                out.push(RawMessage::from_body(&body).unwrap());
            }
        }
        assert_eq!(out, msgs);
    }
}
