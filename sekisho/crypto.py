"""The few cryptographic constructions every part of Sekisho uses.

Written once so the store, grants, bundles and trail use the same primitives the
same way (see docs/crypto.md). Everything comes from ``cryptography`` and
``argon2-cffi``; nothing here is home-made beyond the framing.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sekisho.errors import FormatError, SignatureInvalid

#: One version label in every ``info`` and ``aad``, so a v2 is never read as v1.
LABEL = "sekisho/v1/"
NONCE_LEN = 12
TAG_LEN = 16
KEY_LEN = 32
X25519_LEN = 32


class AeadFailure(Exception):
    """An AES-GCM tag did not verify. Callers turn it into a domain error."""


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def label(*parts: str) -> bytes:
    """``sekisho/v1/<part>/<part>`` as bytes."""
    return (LABEL + "/".join(parts)).encode("ascii")


def wipe(buf: bytearray | memoryview | None) -> None:
    """Overwrite a mutable secret buffer. Python may still hold immutable copies."""
    if buf is None:
        return
    for i in range(len(buf)):
        buf[i] = 0


# --- symmetric ---------------------------------------------------------------


def aead_encrypt(key: bytes | bytearray, plaintext: bytes | bytearray, aad: bytes) -> bytes:
    """``nonce ‖ AES-256-GCM(key, nonce, plaintext, aad)`` with a fresh random nonce."""
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(bytes(key)).encrypt(nonce, bytes(plaintext), aad)


def aead_decrypt(key: bytes | bytearray, blob: bytes, aad: bytes) -> bytes:
    """Open ``nonce ‖ ciphertext``; raise :class:`AeadFailure` on any mismatch."""
    if len(blob) < NONCE_LEN + TAG_LEN:
        raise AeadFailure("ciphertext too short")
    try:
        return AESGCM(bytes(key)).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], aad)
    except InvalidTag:
        raise AeadFailure("authentication failed") from None


def hkdf(ikm: bytes | bytearray, *, salt: bytes, info: bytes, length: int = KEY_LEN) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(
        bytes(ikm)
    )


def hmac_sha256(key: bytes | bytearray, data: bytes) -> bytes:
    h = hmac.HMAC(bytes(key), hashes.SHA256())
    h.update(data)
    return h.finalize()


@dataclass(frozen=True, kw_only=True)
class Argon2Params:
    """Argon2id cost parameters, stored with every slot that uses them."""

    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4

    def __post_init__(self) -> None:
        if self.time_cost < 1 or self.parallelism < 1 or self.memory_kib < 8 * self.parallelism:
            raise FormatError(
                f"Argon2id parameters out of range: t={self.time_cost}, "
                f"m={self.memory_kib} KiB, p={self.parallelism}"
            )

    def to_json(self) -> dict[str, int]:
        return {"t": self.time_cost, "m": self.memory_kib, "p": self.parallelism}

    @classmethod
    def from_json(cls, obj: Any) -> Argon2Params:
        if not isinstance(obj, dict) or set(obj) != {"t", "m", "p"}:
            raise FormatError("Argon2id parameters must be {t, m, p}")
        values = [obj["t"], obj["m"], obj["p"]]
        if not all(type(v) is int for v in values):
            raise FormatError("Argon2id parameters must be integers")
        return cls(time_cost=obj["t"], memory_kib=obj["m"], parallelism=obj["p"])


ARGON2_SALT_LEN = 16


def argon2id(secret: bytes | bytearray, salt: bytes, params: Argon2Params) -> bytearray:
    """Argon2id(secret) as a 32-byte mutable buffer (wipe it after use)."""
    return bytearray(
        hash_secret_raw(
            bytes(secret),
            salt,
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
            hash_len=KEY_LEN,
            type=Type.ID,
        )
    )


# --- sealing to a public key (age-style) -----------------------------------------


def x25519_public(private_raw: bytes | bytearray) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(bytes(private_raw))
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def _raw_pair(key: X25519PrivateKey | Ed25519PrivateKey) -> tuple[bytearray, bytes]:
    private = bytearray(
        key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    )
    return private, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519_generate() -> tuple[bytearray, bytes]:
    """A fresh X25519 key pair as (private, public) raw bytes."""
    return _raw_pair(X25519PrivateKey.generate())


def x25519_exchange(private_raw: bytes | bytearray, public_raw: bytes) -> bytes:
    try:
        peer = X25519PublicKey.from_public_bytes(public_raw)
        return X25519PrivateKey.from_private_bytes(bytes(private_raw)).exchange(peer)
    except ValueError:
        # An all-zero shared secret (a low-order point) or a malformed key.
        raise AeadFailure("bad public key") from None


def seal(recipient_public: bytes, payload: bytes | bytearray, *, purpose: str, context: bytes) -> bytes:
    """Encrypt ``payload`` so only the holder of ``recipient_public``'s key opens it.

    ``e_pub ‖ nonce ‖ AES-GCM(K, payload, aad = label(seal, purpose) ‖ context)`` with
    ``K = HKDF(X25519(e, R), salt = e_pub ‖ R_pub, info = label(seal, purpose))``.
    """
    e_priv, e_pub = x25519_generate()
    try:
        shared = x25519_exchange(e_priv, recipient_public)
    finally:
        wipe(e_priv)
    info = label("seal", purpose)
    key = hkdf(shared, salt=e_pub + recipient_public, info=info)
    return e_pub + aead_encrypt(key, payload, info + b"\x00" + context)


def unseal(recipient_private: bytes | bytearray, sealed: bytes, *, purpose: str, context: bytes) -> bytes:
    if len(sealed) < X25519_LEN + NONCE_LEN + TAG_LEN:
        raise AeadFailure("sealed payload too short")
    e_pub = sealed[:X25519_LEN]
    shared = x25519_exchange(recipient_private, e_pub)
    info = label("seal", purpose)
    key = hkdf(shared, salt=e_pub + x25519_public(recipient_private), info=info)
    return aead_decrypt(key, sealed[X25519_LEN:], info + b"\x00" + context)


# --- signatures --------------------------------------------------------------


def ed25519_generate() -> tuple[bytearray, bytes]:
    """A fresh Ed25519 key pair as (private, public) raw bytes."""
    return _raw_pair(Ed25519PrivateKey.generate())


def ed25519_public_of(private_raw: bytes | bytearray) -> bytes:
    """The public key of a raw Ed25519 private key."""
    return Ed25519PrivateKey.from_private_bytes(bytes(private_raw)).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ed25519_sign(private_raw: bytes | bytearray, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(bytes(private_raw)).sign(message)


def ed25519_verify(public_raw: bytes, message: bytes, signature: bytes, *, what: str) -> None:
    """Raise :class:`SignatureInvalid` naming ``what`` unless the signature verifies."""
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise SignatureInvalid(f"The signature on the {what} is not valid for IT's key.") from None


def key_fingerprint(public_raw: bytes) -> str:
    """A short, readable fingerprint of a public key (SHA-256, 16 bytes in hex groups)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public_raw)
    hexed = digest.finalize()[:16].hex()
    return ":".join(hexed[i : i + 4] for i in range(0, len(hexed), 4))


# --- encodings ---------------------------------------------------------------


def b64e(data: bytes | bytearray) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _refuse_floats(obj: Any) -> Any:
    if isinstance(obj, float):
        raise FormatError("canonical JSON holds no floating-point numbers")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise FormatError("canonical JSON keys must be strings")
            _refuse_floats(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _refuse_floats(value)
    return obj


def canonical_json(obj: Any) -> bytes:
    """Canonical bytes for signing: sorted keys, no spaces, UTF-8, no floats (RFC 8785 subset)."""
    return json.dumps(
        _refuse_floats(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def parse_json_object(data: bytes, *, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError(f"{what}: not valid UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what}: expected a JSON object")
    return obj


def public_key_pem(public_raw: bytes) -> str:
    return (
        Ed25519PublicKey.from_public_bytes(public_raw)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def public_key_from_pem(pem: bytes, *, what: str) -> bytes:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise FormatError(f"{what}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise FormatError(f"{what}: not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
