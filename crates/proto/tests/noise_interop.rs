//! The Noise vectors of `docs/PROTOCOL.md` (section 14), checked with an
//! independent implementation: the Python `noiseprotocol` package
//! (`.ci/run` installs it). Where it is missing the test says so and
//! passes, except under CI=true, where it fails.

use std::path::Path;
use std::process::Command;

#[test]
fn an_independent_noise_library_makes_the_same_bytes() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let have = Command::new("python3")
        .args(["-c", "import noise.connection"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 with the noiseprotocol package is needed (pip install noiseprotocol)"
        );
        eprintln!("SKIPPED: python3 noiseprotocol not installed");
        return;
    }
    let out = Command::new("python3")
        .arg(data.join("check_noise_vectors.py"))
        .arg(data.join("noise_vectors.json"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Noise_XK_25519_ChaChaPoly_BLAKE2s: every byte matches"),
        "{text}"
    );
    assert!(
        text.contains("Noise_XX_25519_ChaChaPoly_BLAKE2s: every byte matches"),
        "{text}"
    );
}
