#!/usr/bin/env python3
"""Writes x25519_vectors.json: the X25519 form of Ed25519 identities, as
libsodium computes it (issue 17, protocol version 2 over Noise).

Each case starts from a fixed 32-byte Ed25519 seed (our secret key) and holds:
- ed25519_public: crypto_sign_seed_keypair(seed) public key;
- x25519_secret: crypto_sign_ed25519_sk_to_curve25519(secret key), i.e.
  SHA-512(seed)[0..32] clamped;
- x25519_public: crypto_sign_ed25519_pk_to_curve25519(public key), i.e. the
  Montgomery u = (1 + y) / (1 - y) of the Edwards point;
and checks that crypto_scalarmult_base(x25519_secret) == x25519_public.

The Rust side is crates/identity/tests/x25519.rs. To regenerate (the output
is deterministic):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pynacl
    /tmp/venv/bin/python crates/identity/tests/data/make_x25519_vectors.py
"""

import json
import os
import random

from nacl import bindings as sodium


def case(name, seed):
    assert len(seed) == 32
    ed_pk, ed_sk = sodium.crypto_sign_seed_keypair(seed)
    x_pk = sodium.crypto_sign_ed25519_pk_to_curve25519(ed_pk)
    x_sk = sodium.crypto_sign_ed25519_sk_to_curve25519(ed_sk)
    # The two conversions agree: the secret's public form is the public key's.
    assert sodium.crypto_scalarmult_base(x_sk) == x_pk, name
    return {
        "name": name,
        "ed25519_seed": seed.hex(),
        "ed25519_public": ed_pk.hex(),
        "x25519_secret": x_sk.hex(),
        "x25519_public": x_pk.hex(),
    }


def main():
    seeds = [
        ("seed of 32 zero bytes", bytes(32)),
        ("seed of 32 bytes 0x01", bytes([1] * 32)),
        ("seed of bytes 0..31", bytes(range(32))),
        ("seed of 32 bytes 0xff", bytes([0xFF] * 32)),
        (
            "RFC 8032 section 7.1 TEST 1 seed",
            bytes.fromhex(
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
            ),
        ),
    ]
    rng = random.Random(17)  # fixed seed: the file is reproducible
    for i in range(3):
        seeds.append((f"random.Random(17) seed {i}", rng.randbytes(32)))
    cases = [case(name, seed) for name, seed in seeds]
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "x25519_vectors.json")
    with open(out, "w") as f:
        json.dump(cases, f, indent=2)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
