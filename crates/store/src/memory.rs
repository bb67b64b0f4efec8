//! The memory record: schema, canonical signing bytes, creation and verification.
//!
//! A memory read from anywhere (a file, the network) is an [`UnverifiedMemory`].
//! The only way to get a [`VerifiedMemory`] is to check its id and signature
//! ([`UnverifiedMemory::verify`]) or to create and sign it ([`VerifiedMemory::create`]).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use mmogit_identity::{Identity, PublicKey, Signature};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// Version of the memory record format described in `docs/MEMORY_FORMAT.md`.
pub const FORMAT_VERSION: u32 = 1;
/// Domain separator that starts the signed bytes of every memory.
pub const SIGNING_DOMAIN: &[u8] = b"mmogit-memory-v1\0";
/// Largest content accepted, in bytes (after encryption and base64 for private ones).
pub const MAX_CONTENT_BYTES: usize = 256 * 1024;
/// Most tags on one memory.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 64;
/// Largest memory file accepted from a repository or the network.
pub const MAX_MEMORY_FILE_BYTES: usize = 512 * 1024;

/// What kind of memory this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryType {
    Observation,
    Learning,
    Relationship,
    Task,
    Experience,
    Reflection,
    Question,
    Message,
}

impl MemoryType {
    /// Every type, in the order of the documentation.
    pub const ALL: [MemoryType; 8] = [
        MemoryType::Observation,
        MemoryType::Learning,
        MemoryType::Relationship,
        MemoryType::Task,
        MemoryType::Experience,
        MemoryType::Reflection,
        MemoryType::Question,
        MemoryType::Message,
    ];

    /// The lowercase name used in JSON, the CLI and the signed bytes.
    pub fn as_str(&self) -> &'static str {
        match self {
            MemoryType::Observation => "observation",
            MemoryType::Learning => "learning",
            MemoryType::Relationship => "relationship",
            MemoryType::Task => "task",
            MemoryType::Experience => "experience",
            MemoryType::Reflection => "reflection",
            MemoryType::Question => "question",
            MemoryType::Message => "message",
        }
    }
}

impl fmt::Display for MemoryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemoryType {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        MemoryType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                StoreError::InvalidMemory(format!(
                    "unknown memory type `{s}` (expected one of: {})",
                    MemoryType::ALL.map(|t| t.as_str()).join(", ")
                ))
            })
    }
}

/// The JSON record exactly as stored in `memories/<2 hex>/<id>.json` and sent
/// over the network. Nothing about it is trusted until [`UnverifiedMemory::verify`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnverifiedMemory {
    pub version: u32,
    pub id: String,
    pub author: PublicKey,
    pub created_at: String,
    #[serde(rename = "type")]
    pub kind: MemoryType,
    pub content: String,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default)]
    pub private: bool,
    pub signature: Signature,
}

/// A memory whose id and signature have been checked. Cannot be built any other way.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedMemory(UnverifiedMemory);

/// The fields a new memory is made of, before signing.
#[derive(Debug, Clone)]
pub struct NewMemory {
    pub kind: MemoryType,
    pub content: String,
    pub tags: Vec<String>,
    pub confidence: Option<f64>,
    /// Encrypt the content so that only the author can read it.
    pub private: bool,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// The exact bytes that are hashed (id) and signed (signature), see
/// `docs/MEMORY_FORMAT.md`: the domain, then every field but id and signature
/// in a fixed order, strings and byte strings prefixed with their u32
/// big-endian length.
#[allow(clippy::too_many_arguments)]
pub fn signing_bytes(
    version: u32,
    author: &PublicKey,
    created_at: &str,
    kind: MemoryType,
    content: &str,
    tags: &[String],
    confidence: Option<f64>,
    private: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        SIGNING_DOMAIN.len() + 64 + created_at.len() + content.len() + tags.len() * 16 + 32,
    );
    out.extend_from_slice(SIGNING_DOMAIN);
    out.extend_from_slice(&version.to_be_bytes());
    put_bytes(&mut out, author.as_bytes());
    put_bytes(&mut out, created_at.as_bytes());
    put_bytes(&mut out, kind.as_str().as_bytes());
    put_bytes(&mut out, content.as_bytes());
    out.extend_from_slice(&(tags.len() as u32).to_be_bytes());
    for t in tags {
        put_bytes(&mut out, t.as_bytes());
    }
    match confidence {
        None => out.push(0),
        Some(c) => {
            out.push(1);
            out.extend_from_slice(&c.to_bits().to_be_bytes());
        }
    }
    out.push(private as u8);
    out
}

/// Formats a time as RFC 3339 UTC with microseconds, e.g. `2026-11-25T13:28:23.123456Z`.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// Parses an RFC 3339 UTC time (`Z` suffix).
pub fn parse_time(s: &str) -> Result<SystemTime, StoreError> {
    humantime::parse_rfc3339(s).map_err(|e| {
        StoreError::InvalidMemory(format!("created_at `{s}` is not RFC 3339 UTC: {e}"))
    })
}

fn check_fields(content: &str, tags: &[String], confidence: Option<f64>) -> Result<(), StoreError> {
    let bad = |m: String| Err(StoreError::InvalidMemory(m));
    if content.trim().is_empty() {
        return bad("content is empty".into());
    }
    if content.len() > MAX_CONTENT_BYTES {
        return bad(format!(
            "content is {} bytes, more than the limit of {MAX_CONTENT_BYTES}",
            content.len()
        ));
    }
    if tags.len() > MAX_TAGS {
        return bad(format!(
            "{} tags, more than the limit of {MAX_TAGS}",
            tags.len()
        ));
    }
    for t in tags {
        if t.is_empty() || t.len() > MAX_TAG_BYTES {
            return bad(format!("tag `{t}` must be 1 to {MAX_TAG_BYTES} bytes"));
        }
        if t.chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == ',')
        {
            return bad(format!(
                "tag `{}` contains white space, a comma or a control character",
                t.escape_debug()
            ));
        }
    }
    if let Some(c) = confidence {
        if !c.is_finite() || !(0.0..=1.0).contains(&c) {
            return bad(format!("confidence {c} is outside 0..1"));
        }
    }
    Ok(())
}

impl VerifiedMemory {
    /// Signs a new memory by `identity`, created now.
    pub fn create(identity: &Identity, new: NewMemory) -> Result<VerifiedMemory, StoreError> {
        Self::create_at(identity, new, SystemTime::now())
    }

    /// Signs a new memory by `identity` with a given creation time (for tests and vectors).
    pub fn create_at(
        identity: &Identity,
        new: NewMemory,
        created: SystemTime,
    ) -> Result<VerifiedMemory, StoreError> {
        check_fields(&new.content, &new.tags, new.confidence)?;
        let content = if new.private {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .encode(identity.encrypt_private(new.content.as_bytes()))
        } else {
            new.content
        };
        let author = identity.public_key();
        let created_at = format_time(created);
        let bytes = signing_bytes(
            FORMAT_VERSION,
            &author,
            &created_at,
            new.kind,
            &content,
            &new.tags,
            new.confidence,
            new.private,
        );
        let id = hex::encode(Sha256::digest(&bytes));
        let signature = identity.sign(&bytes);
        let m = UnverifiedMemory {
            version: FORMAT_VERSION,
            id,
            author,
            created_at,
            kind: new.kind,
            content,
            tags: new.tags,
            confidence: new.confidence,
            private: new.private,
            signature,
        };
        check_fields(&m.content, &m.tags, m.confidence)?;
        Ok(VerifiedMemory(m))
    }

    /// The verified record.
    pub fn record(&self) -> &UnverifiedMemory {
        &self.0
    }

    /// 64 hex id.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Author public key.
    pub fn author(&self) -> &PublicKey {
        &self.0.author
    }

    /// Creation time as written in the record.
    pub fn created_at(&self) -> &str {
        &self.0.created_at
    }

    /// Creation time parsed (verification guarantees it parses).
    pub fn created_time(&self) -> SystemTime {
        parse_time(&self.0.created_at).unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The memory type.
    pub fn kind(&self) -> MemoryType {
        self.0.kind
    }

    /// Tags.
    pub fn tags(&self) -> &[String] {
        &self.0.tags
    }

    /// Confidence, if given.
    pub fn confidence(&self) -> Option<f64> {
        self.0.confidence
    }

    /// Whether the content is encrypted to the author.
    pub fn is_private(&self) -> bool {
        self.0.private
    }

    /// The content as stored: plain text, or base64 ciphertext when private.
    pub fn stored_content(&self) -> &str {
        &self.0.content
    }

    /// The readable content: plain text, or the decrypted text when private and
    /// `reader` is the author. `None` when private and not readable.
    pub fn readable_content(&self, reader: Option<&Identity>) -> Option<String> {
        if !self.0.private {
            return Some(self.0.content.clone());
        }
        let reader = reader?;
        if reader.public_key() != self.0.author {
            return None;
        }
        use base64::Engine;
        let ct = base64::engine::general_purpose::STANDARD
            .decode(&self.0.content)
            .ok()?;
        let pt = reader.decrypt_private(&ct).ok()?;
        String::from_utf8(pt).ok()
    }

    /// The JSON file content (pretty, trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(&self.0).expect("memory serializes");
        v.push(b'\n');
        v
    }

    /// Path of this memory inside a branch: `memories/<2 hex>/<id>.json`.
    pub fn path(&self) -> String {
        memory_path(&self.0.id)
    }
}

/// `memories/<first 2 hex of id>/<id>.json`.
pub fn memory_path(id: &str) -> String {
    format!("memories/{}/{}.json", &id[..2], id)
}

impl UnverifiedMemory {
    /// Parses a memory file (bounded in size).
    pub fn from_json(data: &[u8]) -> Result<UnverifiedMemory, StoreError> {
        if data.len() > MAX_MEMORY_FILE_BYTES {
            return Err(StoreError::InvalidMemory(format!(
                "memory file is {} bytes, more than the limit of {MAX_MEMORY_FILE_BYTES}",
                data.len()
            )));
        }
        serde_json::from_slice(data)
            .map_err(|e| StoreError::InvalidMemory(format!("not a memory record: {e}")))
    }

    /// The canonical bytes this record claims were signed.
    pub fn signing_bytes(&self) -> Vec<u8> {
        signing_bytes(
            self.version,
            &self.author,
            &self.created_at,
            self.kind,
            &self.content,
            &self.tags,
            self.confidence,
            self.private,
        )
    }

    /// Checks the fields, the id and the signature. Returns the bytes that were
    /// checked on success so callers can batch work.
    pub fn check_without_signature(&self) -> Result<Vec<u8>, StoreError> {
        if self.version != FORMAT_VERSION {
            return Err(StoreError::InvalidMemory(format!(
                "unsupported format version {}",
                self.version
            )));
        }
        parse_time(&self.created_at)?;
        check_fields(&self.content, &self.tags, self.confidence)?;
        let bytes = self.signing_bytes();
        let id = hex::encode(Sha256::digest(&bytes));
        if id != self.id {
            return Err(StoreError::InvalidMemory(format!(
                "id {} does not match its content (expected {id})",
                self.id
            )));
        }
        Ok(bytes)
    }

    /// Verifies id and signature; the only way (besides signing) to a [`VerifiedMemory`].
    pub fn verify(self) -> Result<VerifiedMemory, StoreError> {
        let bytes = self.check_without_signature()?;
        self.author.verify(&bytes, &self.signature).map_err(|_| {
            StoreError::InvalidMemory(format!("memory {}: signature does not verify", self.id))
        })?;
        Ok(VerifiedMemory(self))
    }

    /// Verifies many memories, batching the signature checks. Returns one
    /// result per input, in order.
    pub fn verify_many(items: Vec<UnverifiedMemory>) -> Vec<Result<VerifiedMemory, StoreError>> {
        let checked: Vec<Result<Vec<u8>, StoreError>> =
            items.iter().map(|m| m.check_without_signature()).collect();
        let ok_idx: Vec<usize> = (0..items.len()).filter(|&i| checked[i].is_ok()).collect();
        let batch_ok = if ok_idx.is_empty() {
            true
        } else {
            let msgs: Vec<&[u8]> = ok_idx
                .iter()
                .map(|&i| checked[i].as_ref().unwrap().as_slice())
                .collect();
            let sigs: Vec<Signature> = ok_idx.iter().map(|&i| items[i].signature).collect();
            let keys: Vec<PublicKey> = ok_idx.iter().map(|&i| items[i].author).collect();
            mmogit_identity::verify_batch(&msgs, &sigs, &keys).is_ok()
        };
        let mut out = Vec::with_capacity(items.len());
        for (m, c) in items.into_iter().zip(checked) {
            out.push(match c {
                Err(e) => Err(e),
                Ok(bytes) => {
                    if batch_ok {
                        Ok(VerifiedMemory(m))
                    } else {
                        // Find the culprits one by one.
                        match m.author.verify(&bytes, &m.signature) {
                            Ok(()) => Ok(VerifiedMemory(m)),
                            Err(_) => Err(StoreError::InvalidMemory(format!(
                                "memory {}: signature does not verify",
                                m.id
                            ))),
                        }
                    }
                }
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fixed_identity() -> Identity {
        Identity::from_secret_bytes(&[7u8; 32])
    }

    fn sample() -> NewMemory {
        NewMemory {
            kind: MemoryType::Learning,
            content: "Rust ownership makes data races a compile error".into(),
            tags: vec!["rust".into(), "concurrency".into()],
            confidence: Some(0.9),
            private: false,
        }
    }

    fn vector_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456)
    }

    /// The test vector printed in docs/MEMORY_FORMAT.md.
    #[test]
    fn test_vector() {
        let id = fixed_identity();
        assert_eq!(
            id.public_key().to_hex(),
            "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"
        );
        let m = VerifiedMemory::create_at(&id, sample(), vector_time()).unwrap();
        assert_eq!(m.created_at(), "2025-11-24T16:00:00.123456Z");
        let bytes = m.record().signing_bytes();
        assert_eq!(
            hex::encode(&bytes),
            "6d6d6f6769742d6d656d6f72792d763100\
             00000001\
             00000020ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c\
             0000001b323032352d31312d32345431363a30303a30302e3132333435365a\
             000000086c6561726e696e67\
             0000002f52757374206f776e657273686970206d616b657320646174612072616365732061\
             20636f6d70696c65206572726f72\
             00000002\
             0000000472757374\
             0000000b636f6e63757272656e6379\
             01\
             3feccccccccccccd\
             00"
        );
        assert_eq!(
            m.id(),
            "301fba07c5f47c22636134ed2ba040073a4eea8eebf587b618c76b76ccbcf56e",
            "id (update docs/MEMORY_FORMAT.md too if this changes)"
        );
        assert_eq!(
            m.record().signature.to_hex(),
            "bbd5e39118caecacbccc2e9faa12f8aea92981714e81796dc72afdeb2bcb7603\
             8e0e088ab6e65c0e57bb7be8e869afcf10e0941eed1ad33d74171ca3fecd3f02",
            "signature (update docs/MEMORY_FORMAT.md too if this changes)"
        );
    }

    #[test]
    fn create_then_verify_round_trip() {
        let id = fixed_identity();
        let m = VerifiedMemory::create(&id, sample()).unwrap();
        let json = m.to_json();
        let parsed = UnverifiedMemory::from_json(&json).unwrap();
        let v = parsed.verify().unwrap();
        assert_eq!(v, m);
        assert_eq!(
            m.path(),
            format!("memories/{}/{}.json", &m.id()[..2], m.id())
        );
    }

    #[test]
    fn every_changed_byte_of_the_file_is_detected() {
        let id = fixed_identity();
        let m = VerifiedMemory::create(&id, sample()).unwrap();
        let json = m.to_json();
        let mut accepted = 0;
        for i in 0..json.len() {
            for flip in [0x01u8, 0x20] {
                let mut t = json.clone();
                t[i] ^= flip;
                if let Ok(u) = UnverifiedMemory::from_json(&t) {
                    if let Ok(v) = u.verify() {
                        // Only a change that leaves the record identical (e.g.
                        // white space or the case of a hex digit in the
                        // signature/pubkey) may still verify.
                        assert_eq!(v.record(), m.record(), "byte {i} flip {flip:#x}");
                        accepted += 1;
                    }
                }
            }
        }
        assert!(accepted < json.len() / 4, "{accepted} harmless changes");
    }

    #[test]
    fn forged_fields_fail() {
        let id = fixed_identity();
        let m = VerifiedMemory::create(&id, sample()).unwrap();
        let base = m.record().clone();

        let mut t = base.clone();
        t.content.push('!');
        assert!(t.verify().is_err());

        let mut t = base.clone();
        t.tags.push("extra".into());
        assert!(t.verify().is_err());

        let mut t = base.clone();
        t.confidence = Some(0.91);
        assert!(t.verify().is_err());

        // Recomputed id but the signature is the old one.
        let mut t = base.clone();
        t.kind = MemoryType::Task;
        t.id = hex::encode(Sha256::digest(t.signing_bytes()));
        assert!(t.verify().is_err());

        // Another author claims it.
        let mut t = base.clone();
        t.author = Identity::from_secret_bytes(&[8u8; 32]).public_key();
        t.id = hex::encode(Sha256::digest(t.signing_bytes()));
        assert!(t.verify().is_err());
    }

    #[test]
    fn signing_bytes_are_unambiguous() {
        let pk = fixed_identity().public_key();
        let t = "2025-01-01T00:00:00Z";
        let a = signing_bytes(
            1,
            &pk,
            t,
            MemoryType::Task,
            "ab",
            &["c".into()],
            None,
            false,
        );
        let b = signing_bytes(
            1,
            &pk,
            t,
            MemoryType::Task,
            "a",
            &["bc".into()],
            None,
            false,
        );
        let c = signing_bytes(1, &pk, t, MemoryType::Task, "abc", &[], None, false);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
    }

    #[test]
    fn bad_input_is_refused() {
        let id = fixed_identity();
        let mk = |f: &dyn Fn(&mut NewMemory)| {
            let mut n = sample();
            f(&mut n);
            VerifiedMemory::create(&id, n)
        };
        assert!(mk(&|n| n.content = "   ".into()).is_err());
        assert!(mk(&|n| n.confidence = Some(1.5)).is_err());
        assert!(mk(&|n| n.confidence = Some(-0.1)).is_err());
        assert!(mk(&|n| n.confidence = Some(f64::NAN)).is_err());
        assert!(mk(&|n| n.tags = vec!["has space".into()]).is_err());
        assert!(mk(&|n| n.tags = vec![String::new()]).is_err());
        assert!(mk(&|n| n.content = "x".repeat(MAX_CONTENT_BYTES + 1)).is_err());
        assert!("feeling".parse::<MemoryType>().is_err());
        assert_eq!("task".parse::<MemoryType>().unwrap(), MemoryType::Task);
    }

    #[test]
    fn private_content_is_encrypted_and_still_verifies() {
        let id = fixed_identity();
        let mut n = sample();
        n.private = true;
        let m = VerifiedMemory::create(&id, n).unwrap();
        assert!(!m.stored_content().contains("ownership"));
        let parsed = UnverifiedMemory::from_json(&m.to_json()).unwrap();
        let v = parsed.verify().unwrap();
        assert_eq!(
            v.readable_content(Some(&id)).unwrap(),
            "Rust ownership makes data races a compile error"
        );
        let other = Identity::from_secret_bytes(&[9u8; 32]);
        assert_eq!(v.readable_content(Some(&other)), None);
        assert_eq!(v.readable_content(None), None);
    }

    #[test]
    fn batch_verification_finds_the_bad_one() {
        let id = fixed_identity();
        let mut items: Vec<UnverifiedMemory> = (0..10)
            .map(|i| {
                let mut n = sample();
                n.content = format!("memory {i}");
                VerifiedMemory::create(&id, n).unwrap().record().clone()
            })
            .collect();
        items[3].signature = items[4].signature;
        let res = UnverifiedMemory::verify_many(items);
        for (i, r) in res.iter().enumerate() {
            assert_eq!(r.is_ok(), i != 3, "item {i}");
        }
    }

    proptest::proptest! {
        #[test]
        fn json_round_trip_keeps_verification(
            content in "[a-zA-Z0-9 .,!?]{1,200}",
            tags in proptest::collection::vec("[a-z0-9_-]{1,20}", 0..5),
            confidence in proptest::option::of(0.0f64..=1.0),
            ty in 0usize..8,
        ) {
            proptest::prop_assume!(!content.trim().is_empty());
            let id = fixed_identity();
            let m = VerifiedMemory::create(&id, NewMemory {
                kind: MemoryType::ALL[ty], content, tags, confidence, private: false,
            }).unwrap();
            let back = UnverifiedMemory::from_json(&m.to_json()).unwrap().verify().unwrap();
            proptest::prop_assert_eq!(back, m);
        }
    }
}
