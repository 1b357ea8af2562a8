"""docs/store-format.md is enough to read a store: decode one with the document, not sekisho.store."""

from __future__ import annotations

import base64
import hmac
import sqlite3
import unicodedata
from hashlib import sha256

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fido2 import cbor

from tests.conftest import enrol_user


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def L(x: str) -> bytes:
    return b"sekisho/v1/" + x.encode()


def open_row(k_rows: bytes, table: str, row_key: str, blob: bytes) -> dict:
    padded = AESGCM(k_rows).decrypt(blob[:12], blob[12:], L("row/" + table) + b"/" + row_key.encode())
    n = int.from_bytes(padded[:4], "big")
    assert len(padded) % 64 == 0 and not any(padded[4 + n:])
    return cbor.decode(padded[4:4 + n])


def test_read_a_user_and_open_their_slot_from_the_document(tmp_path, store) -> None:
    u = enrol_user(store, "K10234")
    store.close()
    k_dev = base64.b64decode((tmp_path / "device.key").read_bytes())
    conn = sqlite3.connect(tmp_path / "store.db")
    assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x53454B49
    meta = dict(conn.execute("SELECT name, value FROM meta"))
    assert meta["format"] == b"1"
    k_rows = hkdf(k_dev, meta["salt"], L("rows"))
    k_index = hkdf(k_dev, meta["salt"], L("index"))
    AESGCM(hkdf(k_dev, meta["salt"], L("key-check"))).decrypt(meta["key_check"][:12], meta["key_check"][12:],
                                                            L("key-check"))
    assert open_row(k_rows, "meta", "device", meta["device"])["id"] == "laptop-0001"

    staff_id = "K10234"
    uidx = hmac.new(k_index, unicodedata.normalize("NFKC", staff_id).strip().casefold().encode(), sha256).digest()[:16]
    (row,) = conn.execute("SELECT row FROM users WHERE uidx = ?", (uidx,)).fetchone()
    record = open_row(k_rows, "users", uidx.hex(), row)
    assert record["id"] == staff_id and record["name"] == "佐藤 美咲"
    (slot_id, row) = conn.execute("SELECT slot_id, row FROM slots WHERE uidx = ?", (uidx,)).fetchone()
    slot = open_row(k_rows, "slots", f"{uidx.hex()}/{slot_id}", row)
    assert slot["kind"] == "pin+totp"
    kdf = slot["kdf"]
    secret = hash_secret_raw(unicodedata.normalize("NFKC", u.passphrase).encode(), slot["kdf_salt"],
                             time_cost=kdf["t"], memory_cost=kdf["m"], parallelism=kdf["p"], hash_len=32,
                             type=Type.ID)
    k_slot = hkdf(secret, slot["salt"], L("slot/pin+totp"))
    aad = b"\x00".join([L("slot"), staff_id.encode(), b"pin+totp", str(slot_id).encode()])
    identity = AESGCM(k_slot).decrypt(slot["wrapped"][:12], slot["wrapped"][12:], aad)
    public = X25519PrivateKey.from_private_bytes(identity).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert public == record["pub"]
    assert slot["sealed"]["totp"]["seed"] == u.seed.secret
