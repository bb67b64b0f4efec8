#!/usr/bin/env python3
"""Checks noise_vectors.json with an independent Noise implementation.

Uses the `noiseprotocol` package (pip install noiseprotocol), not the Rust
code that made the file: same static and ephemeral keys, same prologue, and
every handshake message, the handshake hash and the first transport
message must come out byte for byte. The static keys are the X25519 form of
the Ed25519 seeds (docs/PROTOCOL.md section 13): SHA-512 of the seed, first
32 bytes (the library clamps them).

    python3 check_noise_vectors.py [noise_vectors.json]
"""
import hashlib
import json
import os
import sys

from noise.connection import Keypair, NoiseConnection


def x25519_secret(seed: bytes) -> bytes:
    s = bytearray(hashlib.sha512(seed).digest()[:32])
    s[0] &= 248
    s[31] &= 127
    s[31] |= 64
    return bytes(s)


def framed(msg: bytes, prefix: bytes = b"") -> bytes:
    body = prefix + msg
    return len(body).to_bytes(2, "big") + body


def side(case, initiator: bool) -> NoiseConnection:
    c = NoiseConnection.from_name(case["protocol"].encode())
    if initiator:
        c.set_as_initiator()
    else:
        c.set_as_responder()
    c.set_prologue(bytes.fromhex(case["prologue"]))
    me = "initiator" if initiator else "responder"
    c.set_keypair_from_private_bytes(
        Keypair.STATIC, x25519_secret(bytes.fromhex(case[me + "_seed"]))
    )
    c.set_keypair_from_private_bytes(
        Keypair.EPHEMERAL, bytes.fromhex(case[me + "_ephemeral"])
    )
    if initiator and case["pattern"] == "XK":
        c.set_keypair_from_public_bytes(
            Keypair.REMOTE_STATIC, bytes.fromhex(case["responder_static_x25519"])
        )
    c.start_handshake()
    return c


def check(case) -> None:
    i, r = side(case, True), side(case, False)
    pattern_byte = bytes.fromhex(case["prologue"])[-1:]
    m1 = i.write_message()
    assert framed(m1, pattern_byte).hex() == case["message_1"], "message 1"
    r.read_message(m1)
    m2 = r.write_message()
    assert framed(m2).hex() == case["message_2"], "message 2"
    i.read_message(m2)
    m3 = i.write_message()
    assert framed(m3).hex() == case["message_3"], "message 3"
    r.read_message(m3)
    assert i.handshake_finished and r.handshake_finished
    h = i.get_handshake_hash()
    assert h == r.get_handshake_hash()
    assert h.hex() == case["handshake_hash"], "handshake hash"
    t1 = i.encrypt(case["transport_plaintext"].encode())
    assert framed(t1).hex() == case["transport_1"], "transport message"
    assert r.decrypt(t1) == case["transport_plaintext"].encode()


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "noise_vectors.json")
    cases = json.load(open(path))
    for case in cases:
        check(case)
        print(f"{case['protocol']}: every byte matches")


if __name__ == "__main__":
    main()
