#!/usr/bin/env python3
"""Checks session_vectors.json with an independent implementation.

Remakes the whole version 2 session of docs/PROTOCOL.md section 10 from its
inputs alone (the two Ed25519 seeds, the ephemeral keys, the Hello nonces,
the authentication Ping payload), following the document, not the Rust code
that made the file:

* Noise with the `noiseprotocol` package (pip install noiseprotocol):
  Noise_XK_25519_ChaChaPoly_BLAKE2s, prologue "mmogit/2" || 0x01, the
  pattern byte before the first message, every message as [u16 BE len][msg];
* the X25519 static keys from the Ed25519 keys (section 13): the secret as
  SHA-512(seed)[0..32] clamped, the responder's public key with the
  Edwards -> Montgomery map u = (1 + y) / (1 - y) of its Ed25519 public key
  (what an initiator that knows only the 64-hex key computes);
* the Hello payload JSON built field by field as section 2 says, its frame
  [u32 BE len][{"msg_type","payload","signature"}] signed with Ed25519
  (`cryptography`, which noiseprotocol depends on) over
  "mmogit-hello-v1\\0" || payload;
* the session id SHA-256("mmogit-session-v2\\0" || h || u32be(len I) || I
  || u32be(len A) || A) (hashlib), the Ping and Pong signed bytes and
  signatures, their frames, and every transport message on the wire.

Prints "session vectors: every byte matches", or every difference and
exits 1.

    python3 check_session_vectors.py [session_vectors.json]
"""
import base64
import hashlib
import json
import os
import sys
import warnings

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection

PROTOCOL = b"Noise_XK_25519_ChaChaPoly_BLAKE2s"
PATTERN_XK = b"\x01"
PROLOGUE = b"mmogit/2" + PATTERN_XK
HELLO_DOMAIN = b"mmogit-hello-v1\x00"
SESSION_DOMAIN = b"mmogit-session-v2\x00"
MSG_DOMAIN = b"mmogit-msg-v1\x00"
ROLE_INITIATOR, ROLE_ACCEPTOR = 0x01, 0x02
MAX_PLAINTEXT = 65535 - 16
P = 2**255 - 19

# noiseprotocol warns that fixed ephemeral keys are for tests only: they are.
warnings.filterwarnings("ignore", message="One of ephemeral keypairs is already set")


def u16be(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u32be(n: int) -> bytes:
    return n.to_bytes(4, "big")


def u64be(n: int) -> bytes:
    return n.to_bytes(8, "big")


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def ed25519_public(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )


def sign(seed: bytes, msg: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).sign(msg)


def x25519_secret(seed: bytes) -> bytes:
    s = bytearray(hashlib.sha512(seed).digest()[:32])
    s[0] &= 248
    s[31] &= 127
    s[31] |= 64
    return bytes(s)


def x25519_public_of_ed25519(pk: bytes) -> bytes:
    """u = (1 + y) / (1 - y) mod p, y = the Edwards y-coordinate of the key."""
    y = int.from_bytes(pk, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow((1 - y) % P, P - 2, P) % P
    return u.to_bytes(32, "little")


def noise_frame(msg: bytes, prefix: bytes = b"") -> bytes:
    body = prefix + msg
    assert len(body) <= 65535
    return u16be(len(body)) + body


def hello_payload(pubkey: bytes, nonce: bytes, agent: str, listen_port) -> bytes:
    """Section 2: the fields in this order, no white space, listen_port a
    number or null, capabilities an empty array."""
    port = "null" if listen_port is None else str(listen_port)
    return (
        '{"protocol":"mmogit","versions":[2],'
        f'"pubkey":"{pubkey.hex()}",'
        f'"nonce":"{b64(nonce)}",'
        f'"agent":"{agent}",'
        f'"listen_port":{port},'
        '"capabilities":[]}'
    ).encode("utf-8")


def frame(msg_type: str, payload: bytes, signature: bytes) -> bytes:
    """Section 1: u32be(len(body)) || the JSON envelope, fields in order."""
    body = (
        f'{{"msg_type":"{msg_type}","payload":"{b64(payload)}",'
        f'"signature":"{b64(signature)}"}}'
    ).encode("utf-8")
    return u32be(len(body)) + body


def signed_bytes(sid: bytes, role: int, seq: int, msg_type: str, payload: bytes) -> bytes:
    t = msg_type.encode("ascii")
    return (
        MSG_DOMAIN + sid + bytes([role]) + u64be(seq)
        + u32be(len(t)) + t + u32be(len(payload)) + payload
    )


def seal(conn: NoiseConnection, plain: bytes) -> bytes:
    """A frame, cut into transport messages of at most 65,519 plaintext
    bytes, each sent as [u16 BE len][ciphertext || tag]."""
    out = b""
    for at in range(0, max(len(plain), 1), MAX_PLAINTEXT):
        out += noise_frame(conn.encrypt(plain[at:at + MAX_PLAINTEXT]))
    return out


def remake(v: dict) -> dict:
    got = {}
    i_seed = bytes.fromhex(v["initiator_seed"])
    a_seed = bytes.fromhex(v["acceptor_seed"])
    i_eph = bytes.fromhex(v["initiator_ephemeral"])
    a_eph = bytes.fromhex(v["acceptor_ephemeral"])
    i_nonce = bytes.fromhex(v["initiator_nonce"])
    a_nonce = bytes.fromhex(v["acceptor_nonce"])
    got["initiator_seed"], got["acceptor_seed"] = i_seed.hex(), a_seed.hex()
    got["initiator_ephemeral"], got["acceptor_ephemeral"] = i_eph.hex(), a_eph.hex()
    got["initiator_nonce"], got["acceptor_nonce"] = i_nonce.hex(), a_nonce.hex()
    i_pk, a_pk = ed25519_public(i_seed), ed25519_public(a_seed)
    got["initiator_public_key"], got["acceptor_public_key"] = i_pk.hex(), a_pk.hex()

    # The initiator knows only the acceptor's 64-hex Ed25519 key; the map
    # gives the same X25519 key as the acceptor's own secret.
    a_static = x25519_public_of_ed25519(a_pk)
    a_static_from_secret = (
        X25519PrivateKey.from_private_bytes(x25519_secret(a_seed))
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    assert a_static == a_static_from_secret, "Edwards -> Montgomery map"

    i = NoiseConnection.from_name(PROTOCOL)
    i.set_as_initiator()
    i.set_prologue(PROLOGUE)
    i.set_keypair_from_private_bytes(Keypair.STATIC, x25519_secret(i_seed))
    i.set_keypair_from_private_bytes(Keypair.EPHEMERAL, i_eph)
    i.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, a_static)
    i.start_handshake()
    a = NoiseConnection.from_name(PROTOCOL)
    a.set_as_responder()
    a.set_prologue(PROLOGUE)
    a.set_keypair_from_private_bytes(Keypair.STATIC, x25519_secret(a_seed))
    a.set_keypair_from_private_bytes(Keypair.EPHEMERAL, a_eph)
    a.start_handshake()

    # -> e, es (pattern byte inside the first frame)
    m1 = i.write_message()
    got["message_1"] = noise_frame(m1, PATTERN_XK).hex()
    a.read_message(m1)
    # <- e, ee
    m2 = a.write_message()
    got["message_2"] = noise_frame(m2).hex()
    i.read_message(m2)
    # -> s, se
    m3 = i.write_message()
    got["message_3"] = noise_frame(m3).hex()
    a.read_message(m3)
    assert i.handshake_finished and a.handshake_finished
    h = i.get_handshake_hash()
    assert h == a.get_handshake_hash()
    got["handshake_hash"] = h.hex()
    # The acceptor learnt the initiator's static key from message 3; the
    # initiator's Hello key must map to it.
    assert x25519_public_of_ed25519(i_pk) == (
        X25519PrivateKey.from_private_bytes(x25519_secret(i_seed))
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )

    # Hellos: each side's first transport message.
    i_hello = hello_payload(i_pk, i_nonce, "mmogit/0.1.0", None)
    a_hello = hello_payload(a_pk, a_nonce, "mmogit/0.1.0", 7420)
    i_hello_frame = frame("Hello", i_hello, sign(i_seed, HELLO_DOMAIN + i_hello))
    a_hello_frame = frame("Hello", a_hello, sign(a_seed, HELLO_DOMAIN + a_hello))
    got["initiator_hello_frame"] = i_hello_frame.hex()
    got["acceptor_hello_frame"] = a_hello_frame.hex()
    i_hello_wire = seal(i, i_hello_frame)
    a_hello_wire = seal(a, a_hello_frame)
    got["initiator_hello_wire"] = i_hello_wire.hex()
    got["acceptor_hello_wire"] = a_hello_wire.hex()
    # Each side decrypts the other's.
    assert a.decrypt(i_hello_wire[2:]) == i_hello_frame
    assert i.decrypt(a_hello_wire[2:]) == a_hello_frame

    sid = hashlib.sha256(
        SESSION_DOMAIN + h + u32be(len(i_hello)) + i_hello + u32be(len(a_hello)) + a_hello
    ).digest()
    got["session_id"] = sid.hex()

    # The initiator's authentication Ping: seq 0, 32 bytes from its
    # generator (the vectors' generator gives the same byte as its
    # ephemeral key); the acceptor's Pong echoes it, seq 0 of its direction.
    assert i_eph == i_eph[:1] * 32, "the vectors' generator gives one byte value"
    ping_payload = i_eph[:1] * 32
    ping_signed = signed_bytes(sid, ROLE_INITIATOR, 0, "Ping", ping_payload)
    got["ping_signed_bytes"] = ping_signed.hex()
    ping_sig = sign(i_seed, ping_signed)
    got["ping_signature"] = ping_sig.hex()
    ping_frame = frame("Ping", ping_payload, ping_sig)
    got["ping_frame"] = ping_frame.hex()
    ping_wire = seal(i, ping_frame)
    got["ping_wire"] = ping_wire.hex()
    assert a.decrypt(ping_wire[2:]) == ping_frame
    pong_sig = sign(a_seed, signed_bytes(sid, ROLE_ACCEPTOR, 0, "Pong", ping_payload))
    pong_frame = frame("Pong", ping_payload, pong_sig)
    got["pong_frame"] = pong_frame.hex()
    pong_wire = seal(a, pong_frame)
    got["pong_wire"] = pong_wire.hex()
    assert i.decrypt(pong_wire[2:]) == pong_frame
    return got


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "session_vectors.json")
    with open(path) as f:
        want = json.load(f)
    got = remake(want)
    bad = []
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            bad.append(k)
            print(f"{k}:\n  file     {want.get(k)}\n  remade   {got.get(k)}")
    if bad:
        print(f"session vectors: {len(bad)} values differ: {', '.join(bad)}")
        sys.exit(1)
    print(f"session vectors: every byte matches ({len(got)} values)")


if __name__ == "__main__":
    main()
