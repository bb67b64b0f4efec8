//! The vectors of `docs/PROTOCOL.md` checked with independent
//! implementations: the Noise vectors (section 14) with the Python
//! `noiseprotocol` package, and the whole session of section 10 with it,
//! `cryptography`'s Ed25519 and `hashlib`, built from the document
//! (`.ci/run` installs them). Where they are missing each test says so and
//! passes, except under CI=true, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Whether python3 has `modules`; under CI=true their absence fails.
fn have_python(modules: &str) -> bool {
    let have = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 with the noiseprotocol package is needed (pip install noiseprotocol)"
        );
        eprintln!("SKIPPED: python3 noiseprotocol not installed");
    }
    have
}

/// Runs `script` on `vectors` (both in tests/data); returns its output.
fn run(script: &str, vectors: &str) -> String {
    let out = Command::new("python3")
        .arg(data().join(script))
        .arg(data().join(vectors))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn an_independent_noise_library_makes_the_same_bytes() {
    if !have_python("noise.connection") {
        return;
    }
    let text = run("check_noise_vectors.py", "noise_vectors.json");
    assert!(
        text.contains("Noise_XK_25519_ChaChaPoly_BLAKE2s: every byte matches"),
        "{text}"
    );
    assert!(
        text.contains("Noise_XX_25519_ChaChaPoly_BLAKE2s: every byte matches"),
        "{text}"
    );
}

#[test]
fn an_independent_implementation_of_the_document_makes_the_same_session() {
    // cryptography comes with noiseprotocol (it is its only dependency).
    if !have_python("noise.connection, cryptography") {
        return;
    }
    let text = run("check_session_vectors.py", "session_vectors.json");
    assert!(
        text.contains("session vectors: every byte matches"),
        "{text}"
    );
}
