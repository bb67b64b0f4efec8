//! Message types and their payloads.
//!
//! Every payload is carried as bytes (base64 in the frame). Hello, Bye,
//! MemoryRequest, MemoryResponse and GitBundle payloads are UTF-8 JSON objects;
//! Ping and Pong payloads are raw bytes (at most 64).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::ProtoError;

/// Protocol name carried in Hello.
pub const PROTOCOL_NAME: &str = "mmogit";
/// Size of the Hello nonce.
pub const NONCE_LEN: usize = 32;
/// Largest Ping/Pong payload.
pub const MAX_PING_LEN: usize = 64;

/// The message types. Their wire names are the variant names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    Hello,
    Ping,
    Pong,
    MemoryRequest,
    MemoryResponse,
    GitBundle,
    Bye,
}

impl MsgType {
    /// All types, in wire-name order of the spec.
    pub const ALL: [MsgType; 7] = [
        MsgType::Hello,
        MsgType::Ping,
        MsgType::Pong,
        MsgType::MemoryRequest,
        MsgType::MemoryResponse,
        MsgType::GitBundle,
        MsgType::Bye,
    ];

    /// The `msg_type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            MsgType::Hello => "Hello",
            MsgType::Ping => "Ping",
            MsgType::Pong => "Pong",
            MsgType::MemoryRequest => "MemoryRequest",
            MsgType::MemoryResponse => "MemoryResponse",
            MsgType::GitBundle => "GitBundle",
            MsgType::Bye => "Bye",
        }
    }

    /// Parses a `msg_type` string (case-sensitive).
    pub fn parse(s: &str) -> Result<Self, ProtoError> {
        MsgType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let mut shown = s.to_string();
                if shown.len() > 64 {
                    let mut cut = 64;
                    while !shown.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    shown.truncate(cut);
                }
                ProtoError::UnknownMessageType(shown)
            })
    }
}

impl std::fmt::Display for MsgType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hello: the first message of each side, signed over
/// `"mmogit-hello-v1\0" || payload bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always `"mmogit"`.
    pub protocol: String,
    /// Protocol versions the sender supports.
    pub versions: Vec<u32>,
    /// Sender's Ed25519 public key, 64 lowercase hex characters.
    pub pubkey: String,
    /// 32 fresh random bytes, base64.
    pub nonce: String,
    /// Software name and version, e.g. `"mmogit/0.1.0"`.
    pub agent: String,
    /// TCP port the sender accepts connections on, if any.
    pub listen_port: Option<u16>,
    /// Optional features the sender supports.
    pub capabilities: Vec<String>,
}

/// Limits on Hello fields.
pub const MAX_VERSIONS: usize = 16;
pub const MAX_AGENT_LEN: usize = 128;
pub const MAX_CAPABILITIES: usize = 32;
pub const MAX_CAPABILITY_LEN: usize = 64;
/// Largest Bye reason accepted (longer reasons are cut when sent).
pub const MAX_REASON_LEN: usize = 512;

impl Hello {
    /// Checks field limits and formats (not the signature).
    pub fn validate(&self) -> Result<(), ProtoError> {
        let bad = |reason: &str| ProtoError::InvalidPayload {
            msg_type: "Hello",
            reason: reason.to_string(),
        };
        if self.protocol != PROTOCOL_NAME {
            let mut p = self.protocol.clone();
            p.truncate(p.char_indices().nth(32).map(|(i, _)| i).unwrap_or(p.len()));
            return Err(ProtoError::WrongProtocol(p));
        }
        if self.versions.is_empty() || self.versions.len() > MAX_VERSIONS {
            return Err(bad("versions must list 1 to 16 versions"));
        }
        if self.agent.len() > MAX_AGENT_LEN {
            return Err(bad("agent longer than 128 bytes"));
        }
        if self.capabilities.len() > MAX_CAPABILITIES
            || self
                .capabilities
                .iter()
                .any(|c| c.len() > MAX_CAPABILITY_LEN)
        {
            return Err(bad("too many or too long capabilities"));
        }
        self.nonce_bytes()?;
        Ok(())
    }

    /// The decoded 32-byte nonce.
    pub fn nonce_bytes(&self) -> Result<[u8; NONCE_LEN], ProtoError> {
        let n = B64
            .decode(self.nonce.as_bytes())
            .map_err(|_| ProtoError::InvalidBase64 { field: "nonce" })?;
        n.as_slice()
            .try_into()
            .map_err(|_| ProtoError::InvalidPayload {
                msg_type: "Hello",
                reason: "nonce must be 32 bytes".into(),
            })
    }
}

/// Bye: the last message; either side may send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bye {
    pub reason: String,
}

/// Standard Bye reasons.
pub mod reasons {
    pub const NOT_AUTHORIZED: &str = "not authorized";
    pub const SHUTTING_DOWN: &str = "shutting down";
    pub const IDLE_TIMEOUT: &str = "idle timeout";
    pub const HANDSHAKE_TIMEOUT: &str = "handshake timeout";
    pub const FRAME_TIMEOUT: &str = "read timeout";
    pub const BAD_SIGNATURE: &str = "bad signature";
    pub const WRONG_PUBKEY: &str = "wrong pubkey";
    /// Prefix; followed by `": we support [..], you support [..]"`.
    pub const VERSION_MISMATCH: &str = "version mismatch";
    /// Prefix; followed by `": <detail>"`.
    pub const PROTOCOL_ERROR: &str = "protocol error";
    pub const CLOSED: &str = "closed";
}

/// MemoryRequest: ask the peer for memories (schema owned by the sync issue;
/// every field is optional so the request frames today).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRequest {
    /// Only memories by these authors (hex public keys); empty = any.
    #[serde(default)]
    pub authors: Vec<String>,
    /// Only memories of these kinds; empty = any.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only memories carrying all of these tags; empty = any.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only memories created at or after this RFC 3339 time.
    #[serde(default)]
    pub since: Option<String>,
    /// At most this many memories in one response.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Opaque cursor from a previous MemoryResponse, to continue.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// MemoryResponse: a page of memories (each a signed memory record as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryResponse {
    pub memories: Vec<serde_json::Value>,
    /// Present when more memories follow: send it back in a MemoryRequest.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// GitBundle: one chunk of a git bundle transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitBundle {
    /// Identifies the transfer; the same for all its chunks.
    pub transfer_id: String,
    /// Chunk index, from 0.
    pub index: u64,
    /// Size in bytes of the whole bundle.
    pub total_size: u64,
    /// SHA-256 of the whole bundle, 64 lowercase hex characters.
    pub sha256: String,
    /// This chunk's bytes, base64.
    #[serde(with = "b64_bytes")]
    pub data: Vec<u8>,
}

/// Recommended (and largest sensible) GitBundle chunk: 1 MiB.
pub const GIT_BUNDLE_CHUNK: usize = 1024 * 1024;

mod b64_bytes {
    use super::B64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    MemoryRequest(MemoryRequest),
    MemoryResponse(MemoryResponse),
    GitBundle(GitBundle),
    Bye(Bye),
}

impl Message {
    /// The message's type.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Message::Hello(_) => MsgType::Hello,
            Message::Ping(_) => MsgType::Ping,
            Message::Pong(_) => MsgType::Pong,
            Message::MemoryRequest(_) => MsgType::MemoryRequest,
            Message::MemoryResponse(_) => MsgType::MemoryResponse,
            Message::GitBundle(_) => MsgType::GitBundle,
            Message::Bye(_) => MsgType::Bye,
        }
    }

    /// The payload bytes.
    pub fn encode_payload(&self) -> Vec<u8> {
        let json = |r: serde_json::Result<Vec<u8>>| r.expect("payload serializes");
        match self {
            Message::Hello(h) => json(serde_json::to_vec(h)),
            Message::Ping(p) | Message::Pong(p) => p.clone(),
            Message::MemoryRequest(m) => json(serde_json::to_vec(m)),
            Message::MemoryResponse(m) => json(serde_json::to_vec(m)),
            Message::GitBundle(m) => json(serde_json::to_vec(m)),
            Message::Bye(m) => json(serde_json::to_vec(m)),
        }
    }

    /// Decodes a payload of the given type, checking its limits.
    pub fn decode_payload(msg_type: MsgType, payload: &[u8]) -> Result<Message, ProtoError> {
        fn json<T: serde::de::DeserializeOwned>(
            t: MsgType,
            payload: &[u8],
        ) -> Result<T, ProtoError> {
            serde_json::from_slice(payload).map_err(|e| ProtoError::InvalidPayload {
                msg_type: t.as_str(),
                reason: e.to_string(),
            })
        }
        Ok(match msg_type {
            MsgType::Hello => {
                let h: Hello = json(msg_type, payload)?;
                h.validate()?;
                Message::Hello(h)
            }
            MsgType::Ping | MsgType::Pong => {
                if payload.len() > MAX_PING_LEN {
                    return Err(ProtoError::InvalidPayload {
                        msg_type: msg_type.as_str(),
                        reason: format!("{} bytes, at most {MAX_PING_LEN}", payload.len()),
                    });
                }
                if msg_type == MsgType::Ping {
                    Message::Ping(payload.to_vec())
                } else {
                    Message::Pong(payload.to_vec())
                }
            }
            MsgType::MemoryRequest => Message::MemoryRequest(json(msg_type, payload)?),
            MsgType::MemoryResponse => Message::MemoryResponse(json(msg_type, payload)?),
            MsgType::GitBundle => Message::GitBundle(json(msg_type, payload)?),
            MsgType::Bye => {
                let b: Bye = json(msg_type, payload)?;
                if b.reason.len() > MAX_REASON_LEN {
                    return Err(ProtoError::InvalidPayload {
                        msg_type: "Bye",
                        reason: "reason longer than 512 bytes".into(),
                    });
                }
                Message::Bye(b)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let msgs = vec![
            Message::Ping(vec![1, 2, 3]),
            Message::Pong(vec![]),
            Message::MemoryRequest(MemoryRequest {
                authors: vec!["ab".repeat(32)],
                limit: Some(100),
                cursor: Some("c1".into()),
                ..Default::default()
            }),
            Message::MemoryResponse(MemoryResponse {
                memories: vec![serde_json::json!({"id": "x", "content": "hi"})],
                cursor: None,
            }),
            Message::GitBundle(GitBundle {
                transfer_id: "t".into(),
                index: 0,
                total_size: 3,
                sha256: "00".repeat(32),
                data: vec![0, 255, 7],
            }),
            Message::Bye(Bye {
                reason: "shutting down".into(),
            }),
        ];
        for m in msgs {
            let p = m.encode_payload();
            assert_eq!(Message::decode_payload(m.msg_type(), &p).unwrap(), m);
        }
        // Binary data in GitBundle is a base64 string, never a number array.
        let g = Message::GitBundle(GitBundle {
            transfer_id: "t".into(),
            index: 0,
            total_size: 3,
            sha256: String::new(),
            data: vec![1, 2, 3],
        });
        let s = String::from_utf8(g.encode_payload()).unwrap();
        assert!(s.contains(r#""data":"AQID""#), "{s}");
        assert!(Message::decode_payload(MsgType::MemoryRequest, b"{}").is_ok());
    }

    #[test]
    fn payload_limits() {
        assert!(Message::decode_payload(MsgType::Ping, &[0; 65]).is_err());
        assert!(Message::decode_payload(MsgType::Ping, &[0; 64]).is_ok());
        let long = serde_json::to_vec(&Bye {
            reason: "x".repeat(600),
        })
        .unwrap();
        assert!(Message::decode_payload(MsgType::Bye, &long).is_err());
        assert!(Message::decode_payload(MsgType::Bye, b"[1]").is_err());
        assert_eq!(
            MsgType::parse(&"y".repeat(1000)).unwrap_err(),
            ProtoError::UnknownMessageType("y".repeat(64))
        );
    }
}
