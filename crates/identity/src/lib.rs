//! Agent identity for mmogit.
//!
//! An identity is one Ed25519 key pair. It can be created at random together
//! with a 24-word BIP39 recovery phrase, restored from that phrase, written to
//! a private key file (mode 0600) and loaded back (a key file readable by
//! group or others is refused, as ssh does).
//!
//! Derivation (documented in `docs/MEMORY_FORMAT.md`):
//! 1. 32 random bytes of entropy → 24 English BIP39 words.
//! 2. BIP39 seed = PBKDF2-HMAC-SHA512(words, "mnemonic", 2048 rounds), 64 bytes
//!    (empty passphrase).
//! 3. Ed25519 secret key = the first 32 bytes of the seed.
//!
//! The same identity also owns a symmetric key for content only its owner may
//! read (`--private` memories): HKDF-SHA256(ikm = Ed25519 secret key,
//! salt = empty, info = `"mmogit private-content v1"`) → XChaCha20-Poly1305 key.
//!
//! Its X25519 form, the static key of protocol version 2 (issue 17), is
//! libsodium's: [`Identity::x25519_secret`] and [`PublicKey::to_x25519`]
//! (`docs/PROTOCOL.md` section 13).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// Length in bytes of a public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length in bytes of a signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length in bytes of the nonce that prefixes private ciphertext.
pub const PRIVATE_NONCE_LEN: usize = 24;

const PRIVATE_KDF_INFO: &[u8] = b"mmogit private-content v1";
const KEY_FILE_VERSION: u32 = 1;

/// Everything that can go wrong with keys, phrases, key files and signatures.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    #[error("invalid signature encoding: {0}")]
    InvalidSignatureEncoding(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("invalid recovery phrase: {0}")]
    InvalidPhrase(String),
    #[error("no key file at {}", .0.display())]
    KeyFileMissing(PathBuf),
    #[error("key file {} already exists", .0.display())]
    KeyFileExists(PathBuf),
    #[error(
        "key file {} is accessible by others (mode {mode:04o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    #[error("key file {} is corrupt: {reason}", path.display())]
    KeyFileCorrupt { path: PathBuf, reason: String },
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decrypt private content: wrong key or corrupted data")]
    Decrypt,
    #[error("private content is too short to hold a nonce")]
    CiphertextTooShort,
}

type Result<T> = std::result::Result<T, IdentityError>;

/// An Ed25519 public key: the identity of an agent on the network.
///
/// Displayed and serialized as 64 lowercase hex characters. Only keys that
/// someone can hold the secret of are accepted: the 32 bytes must be the
/// canonical encoding of a curve point that is not of small order (the eight
/// points of order 1, 2, 4 or 8 are refused: under them a signature with
/// `R` of small order and `s = 0` would verify for any message, with no
/// secret at all). Signatures are checked with the ZIP-215 rules, see
/// [`PublicKey::verify`] and `docs/MEMORY_FORMAT.md`.
#[derive(Clone, Copy)]
pub struct PublicKey(ed25519_zebra::VerificationKey);

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for PublicKey {}

/// Ordered by their 32 bytes: a stable order for maps whose iteration must
/// not depend on a hasher's random seed (the node's deterministic service).
impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

thread_local! {
    /// The last key parsed on this thread: memories of one author are read in
    /// runs, and a key parse costs two point decompressions.
    static LAST_KEY: std::cell::Cell<Option<PublicKey>> = const { std::cell::Cell::new(None) };
}

impl PublicKey {
    /// Parses 32 raw bytes. Refused: bytes that are not a point, a
    /// non-canonical encoding of a point, and points of small order.
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<Self> {
        if let Some(k) = LAST_KEY.get().filter(|k| k.as_bytes() == bytes) {
            return Ok(k);
        }
        let bad = |why: &str| Err(IdentityError::InvalidPublicKey(why.into()));
        let Some(point) = CompressedEdwardsY(*bytes).decompress() else {
            return bad("not a point on the curve");
        };
        if point.compress().as_bytes() != bytes {
            return bad("not the canonical encoding of its point");
        }
        if point.is_small_order() {
            return bad("weak key: a point of small order, under which signatures can be forged");
        }
        let key = ed25519_zebra::VerificationKey::try_from(*bytes)
            .map(PublicKey)
            .map_err(|e| IdentityError::InvalidPublicKey(e.to_string()))?;
        LAST_KEY.set(Some(key));
        Ok(key)
    }

    /// Parses a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| {
            IdentityError::InvalidPublicKey(format!("expected 32 bytes, got {}", bytes.len()))
        })?;
        Self::from_bytes(&arr)
    }

    /// Raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        let b: &[u8] = self.0.as_ref();
        b.try_into().expect("a verification key is 32 bytes")
    }

    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// The first `n` hex characters, for human output.
    pub fn short(&self, n: usize) -> String {
        let mut h = self.to_hex();
        h.truncate(n.min(64));
        h
    }

    /// Verifies `sig` over `msg` with the ZIP-215 rules: `s` must be
    /// canonical (`s < L`), `R` must decode to a curve point, and the
    /// cofactored equation `[8][s]B = [8]R + [8][k]A` must hold, with
    /// `k = SHA-512(R_bytes || A_bytes || msg) mod L`. [`verify_batch`] uses
    /// the same equation, so a signature gets the same verdict alone or in
    /// any batch. (Weak keys never get this far: see [`PublicKey::from_bytes`].)
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<()> {
        self.0
            .verify(&sig.0, msg)
            .map_err(|_| IdentityError::BadSignature)
    }

    /// The X25519 (Montgomery) form of this key: the u-coordinate
    /// `u = (1 + y) / (1 - y) mod 2^255 - 19` of the key's Edwards point,
    /// as 32 little-endian bytes. This is the standard birational map, the
    /// one libsodium's `crypto_sign_ed25519_pk_to_curve25519` computes, and
    /// it equals the X25519 public key of [`Identity::x25519_secret`]
    /// (`X25519(x25519_secret, 9)`), so a peer's 64-hex Ed25519 key is all
    /// one needs to run a Diffie-Hellman with it. Version 2 of the protocol
    /// (Noise, issue 17) uses it as the peer's static key; the test vectors
    /// are in `tests/data/x25519_vectors.json` and `docs/PROTOCOL.md`.
    ///
    /// Safe for our keys: [`PublicKey::from_bytes`] accepts only canonical
    /// encodings of points that are not of small order, so the map is
    /// defined (`y != 1`) and the result is never one of the low-order
    /// X25519 values that force an all-zero shared secret. Keys derived
    /// from a secret are of prime order. A parsed key may still carry a
    /// small torsion component (ZIP-215 accepts such keys, and so does
    /// `from_bytes`); X25519's clamped scalars are multiples of 8 and
    /// remove it, so such a key shares secrets like its prime-order part.
    /// The map also forgets the sign of `x`: `P` and `-P` have the same
    /// X25519 form. Neither grants anything the Ed25519 key did not (who
    /// holds the scalar `a` of `P` can sign for `-P` with `L - a`, and for
    /// `P + T` with `a` under the cofactored rule), but an X25519 key does
    /// not name one Ed25519 key: a peer is still named by its Ed25519 key.
    pub fn to_x25519(&self) -> [u8; 32] {
        CompressedEdwardsY(*self.as_bytes())
            .decompress()
            .expect("a parsed public key is a point on the curve")
            .to_montgomery()
            .to_bytes()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl FromStr for PublicKey {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 64 {
            return Err(IdentityError::InvalidPublicKey(format!(
                "expected 64 hex characters, got {}",
                s.len()
            )));
        }
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|e| IdentityError::InvalidPublicKey(e.to_string()))?;
        Self::from_bytes(&bytes)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 signature. Displayed and serialized as 128 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(ed25519_dalek::Signature);

impl Signature {
    /// From 64 raw bytes.
    pub fn from_bytes(bytes: &[u8; SIGNATURE_LEN]) -> Self {
        Signature(ed25519_dalek::Signature::from_bytes(bytes))
    }

    /// From a slice that must be exactly 64 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; SIGNATURE_LEN] = bytes.try_into().map_err(|_| {
            IdentityError::InvalidSignatureEncoding(format!(
                "expected 64 bytes, got {}",
                bytes.len()
            ))
        })?;
        Ok(Self::from_bytes(&arr))
    }

    /// Raw 64 bytes.
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.0.to_bytes()
    }

    /// 128 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Signature {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 2 * SIGNATURE_LEN {
            return Err(IdentityError::InvalidSignatureEncoding(format!(
                "expected 128 hex characters, got {}",
                s.len()
            )));
        }
        let mut bytes = [0u8; SIGNATURE_LEN];
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|e| IdentityError::InvalidSignatureEncoding(e.to_string()))?;
        Ok(Self::from_bytes(&bytes))
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Verifies many (message, signature, key) triples at once; about twice as
/// fast per signature as one by one. Fails if any one of them is bad.
///
/// The batch equation is the cofactored one of [`PublicKey::verify`] over a
/// random linear combination, so a batch passes exactly when every
/// signature in it passes alone (but for a chance of 2^-128 per bad batch).
pub fn verify_batch(
    messages: &[&[u8]],
    signatures: &[Signature],
    keys: &[PublicKey],
) -> Result<()> {
    if messages.len() != signatures.len() || messages.len() != keys.len() {
        return Err(IdentityError::BadSignature);
    }
    let mut batch = ed25519_zebra::batch::Verifier::new();
    for ((msg, sig), key) in messages.iter().zip(signatures).zip(keys) {
        let vk = ed25519_zebra::VerificationKeyBytes::from(*key.as_bytes());
        batch.queue((vk, sig.0, msg));
    }
    batch
        .verify(rand::thread_rng())
        .map_err(|_| IdentityError::BadSignature)
}

/// A 24-word BIP39 recovery phrase. Wiped from memory when dropped.
pub struct RecoveryPhrase(Zeroizing<String>);

impl RecoveryPhrase {
    /// The words separated by single spaces.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RecoveryPhrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryPhrase(<redacted>)")
    }
}

/// An agent's secret identity: signs memories and protocol messages.
pub struct Identity {
    signing: SigningKey,
    public: PublicKey,
    private_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.public_key())
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self::from_secret_bytes(&self.signing.to_bytes())
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    algorithm: String,
    public_key: String,
    secret_key: String,
}

impl Identity {
    /// A fresh identity from the OS random generator, with its recovery phrase.
    pub fn generate() -> (Identity, RecoveryPhrase) {
        let mut entropy = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(entropy.as_mut());
        let mnemonic = bip39::Mnemonic::from_entropy(entropy.as_ref())
            .expect("32 bytes is a valid BIP39 entropy length");
        let phrase = RecoveryPhrase(Zeroizing::new(mnemonic.to_string()));
        let id = Self::from_mnemonic(&mnemonic);
        (id, phrase)
    }

    /// Restores the identity from its 24-word recovery phrase. Extra white
    /// space and upper case are tolerated.
    pub fn from_phrase(phrase: &str) -> Result<Identity> {
        let normalized: Zeroizing<String> = Zeroizing::new(
            phrase
                .split_whitespace()
                .map(|w| w.to_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
        );
        let words = normalized.split(' ').filter(|w| !w.is_empty()).count();
        if words != 24 {
            return Err(IdentityError::InvalidPhrase(format!(
                "expected 24 words, got {words}"
            )));
        }
        let mnemonic = bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &normalized)
            .map_err(|e| IdentityError::InvalidPhrase(e.to_string()))?;
        Ok(Self::from_mnemonic(&mnemonic))
    }

    fn from_mnemonic(mnemonic: &bip39::Mnemonic) -> Identity {
        let seed = Zeroizing::new(mnemonic.to_seed_normalized(""));
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&seed[..32]);
        Self::from_secret_bytes(&secret)
    }

    /// From the 32-byte Ed25519 secret key.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Identity {
        let signing = SigningKey::from_bytes(secret);
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, secret);
        let mut private_key = Zeroizing::new([0u8; 32]);
        hk.expand(PRIVATE_KDF_INFO, private_key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let public = PublicKey::from_bytes(signing.verifying_key().as_bytes())
            .expect("a key derived from a secret is a canonical point of prime order");
        Identity {
            signing,
            public,
            private_key,
        }
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The X25519 secret key of this identity: the first 32 bytes of
    /// SHA-512 of the 32-byte Ed25519 secret key (the seed), clamped
    /// (`[0] &= 248; [31] &= 127; [31] |= 64`), as libsodium's
    /// `crypto_sign_ed25519_sk_to_curve25519` computes. These are the
    /// bytes of Ed25519's own secret scalar, so its X25519 public key
    /// (`X25519(secret, 9)`) is [`PublicKey::to_x25519`] of
    /// [`Identity::public_key`]: a peer that knows our Ed25519 key knows
    /// our X25519 key. Version 2 of the protocol (Noise, issue 17) uses
    /// this pair as the static key. Wiped from memory when dropped.
    ///
    /// The one secret thus serves both signatures and Diffie-Hellman.
    /// libsodium and ed25519-dalek advise separate keys where one can; the
    /// joint use is analysed in Thormarker, "On using the same key pair for
    /// Ed25519 and an X25519 based KEM" (eprint 2021/509). Issue 17 takes
    /// it so that an agent's Ed25519 key is also its address. See
    /// [`PublicKey::to_x25519`] for why the map is safe on our keys.
    pub fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        use sha2::Digest;
        let seed = Zeroizing::new(self.signing.to_bytes());
        let mut hash = sha2::Sha512::digest(seed.as_ref());
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&hash[..32]);
        hash.as_mut_slice().zeroize();
        secret[0] &= 248;
        secret[31] &= 127;
        secret[31] |= 64;
        secret
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.signing.sign(msg))
    }

    /// Encrypts `plaintext` so that only this identity can read it:
    /// `nonce (24 bytes) || XChaCha20-Poly1305 ciphertext`, with the public key
    /// as associated data.
    pub fn encrypt_private(&self, plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(self.private_key.as_ref().into());
        let mut nonce = [0u8; PRIVATE_NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = self.public_key();
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(PRIVATE_NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Reverses [`Identity::encrypt_private`].
    pub fn decrypt_private(&self, data: &[u8]) -> Result<Vec<u8>> {
        if data.len() < PRIVATE_NONCE_LEN {
            return Err(IdentityError::CiphertextTooShort);
        }
        let (nonce, ct) = data.split_at(PRIVATE_NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(self.private_key.as_ref().into());
        let aad = self.public_key();
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| IdentityError::Decrypt)
    }

    /// Writes the key file with mode 0600. Refuses to replace an existing
    /// file unless `overwrite`; a replacement is written to a temporary file
    /// and renamed over, so a crash never leaves half a key.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<()> {
        let io = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        if !overwrite && path.exists() {
            return Err(IdentityError::KeyFileExists(path.to_path_buf()));
        }
        let mut secret_hex = Zeroizing::new(hex::encode(self.signing.to_bytes()));
        let file = KeyFile {
            version: KEY_FILE_VERSION,
            algorithm: "ed25519".into(),
            public_key: self.public_key().to_hex(),
            secret_key: std::mem::take(&mut *secret_hex),
        };
        let mut json =
            Zeroizing::new(serde_json::to_vec_pretty(&file).expect("key file serializes"));
        json.push(b'\n');
        let mut secret = file.secret_key;
        secret.zeroize();

        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
            std::process::id()
        ));
        let _ = fs::remove_file(&tmp);
        let mut f = open_private(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        if overwrite {
            fs::rename(&tmp, path).map_err(io)?;
        } else {
            // hard_link fails if the destination exists: no race with another init.
            let linked = fs::hard_link(&tmp, path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(IdentityError::KeyFileExists(path.to_path_buf()))
                }
                Err(e) => return Err(io(e)),
            }
        }
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Loads a key file written by [`Identity::save`]. Refuses files that
    /// group or others can read or write.
    pub fn load(path: &Path) -> Result<Identity> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::KeyFileMissing(path.to_path_buf()))
            }
            Err(source) => {
                return Err(IdentityError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        check_private_mode(path, &meta)?;
        let data = Zeroizing::new(fs::read(path).map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })?);
        let corrupt = |reason: String| IdentityError::KeyFileCorrupt {
            path: path.to_path_buf(),
            reason,
        };
        let mut file: KeyFile =
            serde_json::from_slice(&data).map_err(|e| corrupt(e.to_string()))?;
        if file.version != KEY_FILE_VERSION || file.algorithm != "ed25519" {
            return Err(corrupt(format!(
                "unsupported key file version {} / algorithm {}",
                file.version, file.algorithm
            )));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        let decoded = hex::decode_to_slice(&file.secret_key, secret.as_mut());
        file.secret_key.zeroize();
        decoded.map_err(|e| corrupt(format!("secret key: {e}")))?;
        let id = Self::from_secret_bytes(&secret);
        if id.public_key().to_hex() != file.public_key {
            return Err(corrupt(
                "public key does not match the secret key".to_string(),
            ));
        }
        Ok(id)
    }
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn check_private_mode(path: &Path, meta: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::KeyFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_path: &Path, _meta: &fs::Metadata) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHRASE: &str = "abandon abandon abandon abandon abandon abandon abandon abandon \
        abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon \
        abandon abandon abandon abandon abandon art";

    #[test]
    fn phrase_round_trip_restores_same_key() {
        let (id, phrase) = Identity::generate();
        assert_eq!(phrase.as_str().split(' ').count(), 24);
        let restored = Identity::from_phrase(phrase.as_str()).unwrap();
        assert_eq!(id.public_key(), restored.public_key());
        let shouty = phrase.as_str().to_uppercase().replace(' ', "   ");
        assert_eq!(
            Identity::from_phrase(&shouty).unwrap().public_key(),
            id.public_key()
        );
    }

    #[test]
    fn phrase_derivation_is_fixed() {
        // BIP39 vector: all-zero entropy, empty passphrase; seed starts with
        // bda85446c6841370... (the Trezor vectors use passphrase "TREZOR", so
        // this value is pinned here and in docs/MEMORY_FORMAT.md).
        let id = Identity::from_phrase(PHRASE).unwrap();
        let again = Identity::from_phrase(PHRASE).unwrap();
        assert_eq!(id.public_key(), again.public_key());
        let m = bip39::Mnemonic::parse_normalized(PHRASE).unwrap();
        let seed = m.to_seed_normalized("");
        assert_eq!(
            hex::encode(&seed[..32]),
            "408b285c123836004f4b8842c89324c1f01382450c0d439af345ba7fc49acf70"
        );
        assert_eq!(id.signing.to_bytes(), seed[..32]);
    }

    #[test]
    fn bad_phrases_are_refused() {
        assert!(matches!(
            Identity::from_phrase("abandon abandon"),
            Err(IdentityError::InvalidPhrase(_))
        ));
        let wrong_checksum = PHRASE.replace(" art", " abandon");
        assert!(Identity::from_phrase(&wrong_checksum).is_err());
        let unknown_word = PHRASE.replacen("abandon", "notaword", 1);
        assert!(Identity::from_phrase(&unknown_word).is_err());
    }

    #[test]
    fn sign_verify_and_tamper() {
        let (id, _) = Identity::generate();
        let sig = id.sign(b"hello");
        id.public_key().verify(b"hello", &sig).unwrap();
        assert!(id.public_key().verify(b"hellO", &sig).is_err());
        let mut bytes = sig.to_bytes();
        bytes[10] ^= 1;
        assert!(id
            .public_key()
            .verify(b"hello", &Signature::from_bytes(&bytes))
            .is_err());
        let (other, _) = Identity::generate();
        assert!(other.public_key().verify(b"hello", &sig).is_err());
    }

    #[test]
    fn hex_and_serde_round_trip() {
        let (id, _) = Identity::generate();
        let pk = id.public_key();
        assert_eq!(pk.to_hex().parse::<PublicKey>().unwrap(), pk);
        let json = serde_json::to_string(&pk).unwrap();
        assert_eq!(json, format!("\"{}\"", pk.to_hex()));
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), pk);
        let sig = id.sign(b"x");
        assert_eq!(sig.to_hex().parse::<Signature>().unwrap(), sig);
        assert!("zz".parse::<PublicKey>().is_err());
        assert!(pk.to_hex()[..63].parse::<PublicKey>().is_err());
        assert_eq!(pk.short(8).len(), 8);
    }

    #[test]
    fn batch_verify() {
        let ids: Vec<Identity> = (0..5).map(|_| Identity::generate().0).collect();
        let msgs: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8; 10]).collect();
        let sigs: Vec<Signature> = ids.iter().zip(&msgs).map(|(i, m)| i.sign(m)).collect();
        let keys: Vec<PublicKey> = ids.iter().map(|i| i.public_key()).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        verify_batch(&refs, &sigs, &keys).unwrap();
        let mut bad = sigs.clone();
        bad.swap(0, 1);
        assert!(verify_batch(&refs, &bad, &keys).is_err());
    }

    #[test]
    fn private_encryption_round_trip() {
        let (id, _) = Identity::generate();
        let ct = id.encrypt_private(b"secret thought");
        assert_ne!(&ct[PRIVATE_NONCE_LEN..], b"secret thought");
        assert_eq!(id.decrypt_private(&ct).unwrap(), b"secret thought");
        let (other, _) = Identity::generate();
        assert!(matches!(
            other.decrypt_private(&ct),
            Err(IdentityError::Decrypt)
        ));
        let mut tampered = ct.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(id.decrypt_private(&tampered).is_err());
        assert!(matches!(
            id.decrypt_private(&ct[..5]),
            Err(IdentityError::CiphertextTooShort)
        ));
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        let (id, _) = Identity::generate();
        id.save(&path, false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Identity::load(&path).unwrap().public_key(), id.public_key());

        // No silent overwrite.
        let (id2, _) = Identity::generate();
        assert!(matches!(
            id2.save(&path, false),
            Err(IdentityError::KeyFileExists(_))
        ));
        assert_eq!(Identity::load(&path).unwrap().public_key(), id.public_key());
        id2.save(&path, true).unwrap();
        assert_eq!(
            Identity::load(&path).unwrap().public_key(),
            id2.public_key()
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::KeyFilePermissions { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::KeyFileCorrupt { .. })
        ));
        assert!(matches!(
            Identity::load(&dir.path().join("missing")),
            Err(IdentityError::KeyFileMissing(_))
        ));
    }
}
