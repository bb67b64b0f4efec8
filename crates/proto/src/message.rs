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

/// Most entries in any list of a MemoryRequest, MemoryResponse `tips` or
/// `have` (a frame bounds them anyway; this bounds the work).
pub const MAX_LIST: usize = 4096;
/// Most memories in one MemoryResponse.
pub const MAX_MEMORIES_PER_RESPONSE: usize = 10_000;
/// Largest chunk of bundle bytes in one GitBundle: 7 MiB, so that the frame
/// (one layer of base64 around the binary payload) stays under 10 MiB.
pub const MAX_BUNDLE_CHUNK: usize = 7 * 1024 * 1024;
/// Largest GitBundle header (the JSON before the chunk bytes).
pub const MAX_BUNDLE_HEADER: usize = 4096;

/// A branch and its tip: `{"author":"<64 hex>","tip":"<40 hex commit>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BranchTip {
    /// Owner of the branch `users/<author>`, 64 lowercase hex.
    pub author: String,
    /// The commit id of the tip, 40 lowercase hex.
    pub tip: String,
}

impl BranchTip {
    fn validate(&self) -> Result<(), String> {
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(&self.author, 64) {
            return Err("author must be 64 lowercase hex".into());
        }
        if !hex(&self.tip, 40) {
            return Err("tip must be 40 lowercase hex".into());
        }
        Ok(())
    }
}

/// The sync part of a MemoryRequest: "send me a bundle of what is new".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Every `users/*` branch the requester holds, with its tip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub have: Vec<BranchTip>,
    /// The largest bundle the requester accepts, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_transfer: Option<u64>,
}

/// MemoryRequest: a query for memories (filters), or with `sync` a request
/// for a git bundle of what is new. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRequest {
    /// Chosen by the requester, echoed in the answer (MemoryResponse `id`,
    /// GitBundle `transfer_id`).
    #[serde(default)]
    pub id: u64,
    /// Only memories by these authors (hex public keys); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
    /// Only memories of these types; empty = any.
    #[serde(default, alias = "kinds", skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Only memories carrying all of these tags; empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Only memories created at or after this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// At most this many memories in all (over every page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Opaque cursor from a previous MemoryResponse, to continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Present: a sync request (the filters are ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncRequest>,
}

impl MemoryRequest {
    /// Checks list sizes and formats.
    pub fn validate(&self) -> Result<(), String> {
        if self.authors.len() > MAX_LIST || self.types.len() > 64 || self.tags.len() > 64 {
            return Err("too many filter values".into());
        }
        if self
            .authors
            .iter()
            .chain(&self.types)
            .chain(&self.tags)
            .any(|s| s.len() > 128)
        {
            return Err("filter value longer than 128 bytes".into());
        }
        if self.since.as_ref().is_some_and(|s| s.len() > 64)
            || self.cursor.as_ref().is_some_and(|s| s.len() > 512)
        {
            return Err("since or cursor too long".into());
        }
        if let Some(s) = &self.sync {
            if s.have.len() > MAX_LIST {
                return Err(format!("more than {MAX_LIST} branches in have"));
            }
            for t in &s.have {
                t.validate()?;
            }
        }
        Ok(())
    }
}

/// Where a sync transfer stands, in a MemoryResponse answering a sync request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferInfo {
    /// The GitBundle `transfer_id` of the chunks that follow.
    pub transfer_id: String,
    /// Size of the whole bundle in bytes.
    pub total_size: u64,
    /// SHA-256 of the whole bundle, 64 lowercase hex.
    pub sha256: String,
    /// Number of GitBundle chunks that follow.
    pub chunks: u64,
    /// Commits in the bundle (over all branches).
    pub commits: u64,
}

/// The receiver's outcome of a transfer, sent back to the sender.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestSummary {
    /// The transfer this is about.
    pub transfer_id: String,
    /// Memories accepted.
    pub memories: u64,
    /// Branches that moved.
    pub branches: u64,
    /// Why branches were refused or the transfer failed (short texts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

/// MemoryResponse: the answer to a MemoryRequest (`id` echoed), or with
/// `id` null an unsolicited announce of the sender's `tips`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryResponse {
    /// The request answered; null for an announce or an ingest summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Signed memory records (query answers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memories: Vec<serde_json::Value>,
    /// Present when more memories follow: send it back in a MemoryRequest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The sender's `users/*` tips (announce; "nothing new" sync answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tips: Option<Vec<BranchTip>>,
    /// A sync answer: this bundle follows as GitBundle chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferInfo>,
    /// The request was refused or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The outcome of a transfer the receiver of this message sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingested: Option<IngestSummary>,
}

impl MemoryResponse {
    /// Checks list sizes and formats.
    pub fn validate(&self) -> Result<(), String> {
        if self.memories.len() > MAX_MEMORIES_PER_RESPONSE {
            return Err("too many memories".into());
        }
        if let Some(t) = &self.tips {
            if t.len() > MAX_LIST {
                return Err(format!("more than {MAX_LIST} tips"));
            }
            for x in t {
                x.validate()?;
            }
        }
        if self.error.as_ref().is_some_and(|e| e.len() > 4096)
            || self.cursor.as_ref().is_some_and(|c| c.len() > 512)
        {
            return Err("error or cursor too long".into());
        }
        if let Some(i) = &self.ingested {
            if i.refused.len() > 256 || i.refused.iter().any(|r| r.len() > 4096) {
                return Err("too many or too long refusals".into());
            }
        }
        Ok(())
    }
}

/// GitBundle: one chunk of a git bundle transfer. The payload is binary:
/// `u32be(len(header)) || header || data`, where `header` is the JSON of
/// the fields other than `data` (at most 4 KiB) and `data` the raw chunk
/// bytes (at most 7 MiB).
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
    /// This chunk's bytes.
    #[serde(skip)]
    pub data: Vec<u8>,
}

impl GitBundle {
    fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(self).expect("header serializes");
        let mut out = Vec::with_capacity(4 + header.len() + self.data.len());
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.data);
        out
    }

    fn decode(payload: &[u8]) -> Result<GitBundle, String> {
        if payload.len() < 4 {
            return Err("shorter than its header length".into());
        }
        let n = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
        if n > MAX_BUNDLE_HEADER || 4 + n > payload.len() {
            return Err("bad header length".into());
        }
        let mut g: GitBundle =
            serde_json::from_slice(&payload[4..4 + n]).map_err(|e| e.to_string())?;
        let data = &payload[4 + n..];
        if data.len() > MAX_BUNDLE_CHUNK {
            return Err(format!(
                "chunk of {} bytes, at most {MAX_BUNDLE_CHUNK}",
                data.len()
            ));
        }
        if g.transfer_id.is_empty() || g.transfer_id.len() > 64 {
            return Err("transfer_id must be 1-64 bytes".into());
        }
        if g.sha256.len() != 64 || !g.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256 must be 64 hex".into());
        }
        g.data = data.to_vec();
        Ok(g)
    }
}

/// Recommended GitBundle chunk: 7 MiB.
pub const GIT_BUNDLE_CHUNK: usize = MAX_BUNDLE_CHUNK;

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
            Message::GitBundle(m) => m.encode(),
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
            MsgType::MemoryRequest => {
                let m: MemoryRequest = json(msg_type, payload)?;
                m.validate().map_err(|reason| ProtoError::InvalidPayload {
                    msg_type: "MemoryRequest",
                    reason,
                })?;
                Message::MemoryRequest(m)
            }
            MsgType::MemoryResponse => {
                let m: MemoryResponse = json(msg_type, payload)?;
                m.validate().map_err(|reason| ProtoError::InvalidPayload {
                    msg_type: "MemoryResponse",
                    reason,
                })?;
                Message::MemoryResponse(m)
            }
            MsgType::GitBundle => {
                Message::GitBundle(GitBundle::decode(payload).map_err(|reason| {
                    ProtoError::InvalidPayload {
                        msg_type: "GitBundle",
                        reason,
                    }
                })?)
            }
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
    fn empty_fields_are_left_out_and_still_read_when_present() {
        let tip = BranchTip {
            author: "ab".repeat(32),
            tip: "cd".repeat(20),
        };
        let announce = Message::MemoryResponse(MemoryResponse {
            tips: Some(vec![tip.clone()]),
            ..Default::default()
        });
        let p = announce.encode_payload();
        assert_eq!(
            String::from_utf8(p.clone()).unwrap(),
            format!(
                r#"{{"tips":[{{"author":"{}","tip":"{}"}}]}}"#,
                tip.author, tip.tip
            )
        );
        let pull = Message::MemoryRequest(MemoryRequest {
            id: 7,
            sync: Some(SyncRequest::default()),
            ..Default::default()
        });
        assert_eq!(pull.encode_payload(), br#"{"id":7,"sync":{}}"#);
        // A sender that writes every field (null, [], false) is read the same.
        let full = format!(
            r#"{{"id":null,"memories":[],"cursor":null,"tips":[{{"author":"{}","tip":"{}"}}],"transfer":null,"error":null,"ingested":null}}"#,
            tip.author, tip.tip
        );
        let m = Message::decode_payload(MsgType::MemoryResponse, full.as_bytes()).unwrap();
        assert_eq!(m, announce);
        let full = br#"{"id":7,"authors":[],"types":[],"tags":[],"since":null,"limit":null,"cursor":null,"sync":{"have":[],"max_transfer":null}}"#;
        let m = Message::decode_payload(MsgType::MemoryRequest, full).unwrap();
        assert_eq!(m, pull);
    }

    #[test]
    fn payloads_round_trip() {
        let msgs = vec![
            Message::Ping(vec![1, 2, 3]),
            Message::Pong(vec![]),
            Message::MemoryRequest(MemoryRequest {
                id: 7,
                authors: vec!["ab".repeat(32)],
                types: vec!["learning".into()],
                limit: Some(100),
                cursor: Some("c1".into()),
                ..Default::default()
            }),
            Message::MemoryRequest(MemoryRequest {
                id: 8,
                sync: Some(SyncRequest {
                    have: vec![BranchTip {
                        author: "ab".repeat(32),
                        tip: "cd".repeat(20),
                    }],
                    max_transfer: Some(1 << 30),
                }),
                ..Default::default()
            }),
            Message::MemoryResponse(MemoryResponse {
                id: Some(7),
                memories: vec![serde_json::json!({"id": "x", "content": "hi"})],
                cursor: Some("10".into()),
                ..Default::default()
            }),
            Message::MemoryResponse(MemoryResponse {
                tips: Some(vec![BranchTip {
                    author: "ab".repeat(32),
                    tip: "cd".repeat(20),
                }]),
                ..Default::default()
            }),
            Message::MemoryResponse(MemoryResponse {
                id: Some(8),
                transfer: Some(TransferInfo {
                    transfer_id: "8".into(),
                    total_size: 10,
                    sha256: "00".repeat(32),
                    chunks: 1,
                    commits: 2,
                }),
                ..Default::default()
            }),
            Message::MemoryResponse(MemoryResponse {
                ingested: Some(IngestSummary {
                    transfer_id: "8".into(),
                    memories: 3,
                    branches: 1,
                    refused: vec!["users/ab: bad signature".into()],
                }),
                ..Default::default()
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
        // GitBundle: binary payload, header length first.
        let g = Message::GitBundle(GitBundle {
            transfer_id: "t".into(),
            index: 0,
            total_size: 3,
            sha256: "ab".repeat(32),
            data: vec![1, 2, 3],
        });
        let p = g.encode_payload();
        assert_eq!(&p[p.len() - 3..], &[1, 2, 3]);
        assert_eq!(Message::decode_payload(MsgType::GitBundle, &p).unwrap(), g);
        assert!(Message::decode_payload(MsgType::MemoryRequest, b"{}").is_ok());
    }

    #[test]
    fn sync_payloads_refuse_malformed_input() {
        let bad = |t: MsgType, p: &[u8]| Message::decode_payload(t, p).is_err();
        // Old field name still accepted.
        let r = Message::decode_payload(MsgType::MemoryRequest, br#"{"kinds":["task"]}"#).unwrap();
        assert!(matches!(r, Message::MemoryRequest(m) if m.types == ["task"]));
        assert!(bad(MsgType::MemoryRequest, b"{"));
        assert!(bad(MsgType::MemoryRequest, br#"{"limit":-1}"#));
        assert!(bad(
            MsgType::MemoryRequest,
            br#"{"sync":{"have":[{"author":"x","tip":"y"}]}}"#
        ));
        let many = serde_json::to_vec(&MemoryRequest {
            authors: vec!["a".into(); MAX_LIST + 1],
            ..Default::default()
        })
        .unwrap();
        assert!(bad(MsgType::MemoryRequest, &many));
        assert!(bad(MsgType::MemoryResponse, br#"{"memories":5}"#));
        assert!(bad(
            MsgType::MemoryResponse,
            br#"{"tips":[{"author":"AB","tip":"00"}]}"#
        ));
        // GitBundle: truncated, header length past the end, bad JSON, bad hash.
        assert!(bad(MsgType::GitBundle, &[0, 0]));
        assert!(bad(MsgType::GitBundle, &[0, 0, 0, 200, b'{']));
        assert!(bad(MsgType::GitBundle, &[0, 0, 0, 1, b'{']));
        let g = GitBundle {
            transfer_id: "t".into(),
            index: 0,
            total_size: 1,
            sha256: "zz".repeat(32),
            data: vec![1],
        };
        assert!(bad(MsgType::GitBundle, &g.encode()));
        let empty_id = GitBundle {
            transfer_id: String::new(),
            sha256: "00".repeat(32),
            ..g.clone()
        };
        assert!(bad(MsgType::GitBundle, &empty_id.encode()));
        let big = GitBundle {
            sha256: "00".repeat(32),
            data: vec![0; MAX_BUNDLE_CHUNK + 1],
            ..g.clone()
        };
        assert!(bad(MsgType::GitBundle, &big.encode()));
    }

    #[test]
    fn largest_chunk_fits_a_frame() {
        let g = Message::GitBundle(GitBundle {
            transfer_id: "x".repeat(64),
            index: u64::MAX,
            total_size: u64::MAX,
            sha256: "00".repeat(32),
            data: vec![0xff; MAX_BUNDLE_CHUNK],
        });
        let payload = g.encode_payload();
        // Envelope: base64 of the payload, a 88-character signature, field names.
        let body = payload.len().div_ceil(3) * 4 + 88 + 64;
        assert!(body <= crate::MAX_FRAME_LEN, "{body}");
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
