from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sekisho import crypto
from sekisho.errors import FormatError, SignatureInvalid


@given(key=st.binary(min_size=32, max_size=32), data=st.binary(max_size=512), aad=st.binary(max_size=64))
def test_aead_round_trip_and_aad_binding(key: bytes, data: bytes, aad: bytes) -> None:
    blob = crypto.aead_encrypt(key, data, aad)
    assert crypto.aead_decrypt(key, blob, aad) == data
    with pytest.raises(crypto.AeadFailure):
        crypto.aead_decrypt(key, blob, aad + b"x")


def test_aead_nonces_are_fresh() -> None:
    key = crypto.random_bytes(32)
    assert crypto.aead_encrypt(key, b"same", b"") != crypto.aead_encrypt(key, b"same", b"")


def test_seal_opens_only_for_recipient_purpose_and_context() -> None:
    priv, pub = crypto.x25519_generate()
    other, _ = crypto.x25519_generate()
    sealed = crypto.seal(pub, b"grant key", purpose="grant", context=b"dev\x00user")
    assert crypto.unseal(priv, sealed, purpose="grant", context=b"dev\x00user") == b"grant key"
    for key, purpose, ctx in [
        (other, "grant", b"dev\x00user"),
        (priv, "bundle", b"dev\x00user"),
        (priv, "grant", b"dev\x00other"),
    ]:
        with pytest.raises(crypto.AeadFailure):
            crypto.unseal(key, sealed, purpose=purpose, context=ctx)


def test_seal_refuses_low_order_ephemeral_key() -> None:
    priv, _ = crypto.x25519_generate()
    forged = bytes(32) + bytes(12 + 16 + 8)
    with pytest.raises(crypto.AeadFailure):
        crypto.unseal(priv, forged, purpose="grant", context=b"")


def test_signature_names_what_failed() -> None:
    priv, pub = crypto.ed25519_generate()
    sig = crypto.ed25519_sign(priv, b"message")
    crypto.ed25519_verify(pub, b"message", sig, what="grant")
    with pytest.raises(SignatureInvalid, match="grant"):
        crypto.ed25519_verify(pub, b"messagf", sig, what="grant")


def test_canonical_json_is_sorted_compact_utf8_and_refuses_floats() -> None:
    assert crypto.canonical_json({"b": 1, "a": ["市民課", True]}) == '{"a":["市民課",true],"b":1}'.encode()
    with pytest.raises(FormatError):
        crypto.canonical_json({"a": 1.5})


def test_pem_round_trip() -> None:
    _, pub = crypto.ed25519_generate()
    assert crypto.public_key_from_pem(crypto.public_key_pem(pub).encode(), what="key") == pub
    with pytest.raises(FormatError):
        crypto.public_key_from_pem(b"not pem", what="key")
