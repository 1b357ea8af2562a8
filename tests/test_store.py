"""The credential store under attack: tampering, moved rows, wrong keys, damaged files."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from sekisho import crypto
from sekisho.errors import (
    IntegrityError,
    KeySourceError,
    StoreCorrupt,
    StoreError,
    StoreFormatTooNew,
    StoreNotFound,
    UserExists,
    UserNotFound,
    WrongDeviceKey,
)
from sekisho.store import store as store_module
from sekisho.store.grants import Grant, issue_grant
from sekisho.store.keysource import InsecureFileKeySource
from sekisho.store.store import CredentialStore
from tests.conftest import enrol_user


def raw(path: Path, sql: str, *args: object) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(sql, args).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def flip(blob: bytes, index: int) -> bytes:
    b = bytearray(blob)
    b[index] ^= 0x01
    return bytes(b)


def test_create_then_open_keeps_users_and_device_id(tmp_path, key_source, store) -> None:
    enrol_user(store, "K10234")
    store.close()
    with CredentialStore.open(tmp_path / "store.db", key_source) as again:
        assert again.device_id == "laptop-0001"
        record, slots = again.get_user("K10234")
        assert record.display_name == "佐藤 美咲"
        assert [s.kind.value for s in slots] == ["pin+totp"]


def test_store_file_is_owner_only(tmp_path, store) -> None:
    for suffix in ("", "-wal"):
        mode = stat.S_IMODE(os.stat(f"{tmp_path / 'store.db'}{suffix}").st_mode)
        assert mode & 0o077 == 0, oct(mode)


def test_user_found_whatever_the_width_or_case_typed(store) -> None:
    enrol_user(store, "K10234")
    assert store.get_user("ｋ１０２３４")[0].user_id == "K10234"
    with pytest.raises(UserNotFound) as info:
        store.get_user("K99999")
    assert "K10234" not in str(info.value)


def test_adding_a_user_twice_is_refused(store) -> None:
    enrol_user(store, "K10234")
    with pytest.raises(UserExists):
        enrol_user(store, "k10234")


def test_remove_user_removes_everything(store, it_key) -> None:
    u = enrol_user(store, "K10234")
    store.put_grant(issue_grant(Grant(device_id="laptop-0001", user_id="K10234", serial=1, issued_at=0),
                                it_signing_key=it_key[0], user_public=u.record.identity_public)[0])
    store.remove_user("K10234")
    for table in ("users", "slots", "grants"):
        assert raw(store.path, f"SELECT count(*) FROM {table}") == [(0,)]  # noqa: S608


def test_wrong_device_key_is_reported_as_such(tmp_path, store) -> None:
    store.close()
    other = InsecureFileKeySource(tmp_path / "other.key")
    other.create()
    with pytest.raises(WrongDeviceKey, match="does not open"):
        CredentialStore.open(tmp_path / "store.db", other)


def test_missing_device_key_is_reported(tmp_path, store) -> None:
    store.close()
    with pytest.raises(KeySourceError, match="no device key"):
        CredentialStore.open(tmp_path / "store.db", InsecureFileKeySource(tmp_path / "absent.key"))


def test_missing_store_is_reported(tmp_path, key_source) -> None:
    with pytest.raises(StoreNotFound):
        CredentialStore.open(tmp_path / "nothing.db", key_source)


def test_create_never_overwrites(tmp_path, key_source) -> None:
    (tmp_path / "busy.db").write_bytes(b"someone's data")
    with pytest.raises(StoreError, match="refusing to overwrite"):
        CredentialStore.create(tmp_path / "busy.db", key_source)
    assert (tmp_path / "busy.db").read_bytes() == b"someone's data"


def test_newer_format_is_refused(tmp_path, key_source, store) -> None:
    store.close()
    raw(tmp_path / "store.db", "UPDATE meta SET value = ? WHERE name = 'format'", b"2")
    with pytest.raises(StoreFormatTooNew, match="format 2"):
        CredentialStore.open(tmp_path / "store.db", key_source)


def test_migration_hook_runs_in_order(tmp_path, key_source, store, monkeypatch) -> None:
    enrol_user(store, "K10234")
    store.close()
    ran = []
    monkeypatch.setattr(CredentialStore, "FORMAT_VERSION", 2)
    monkeypatch.setitem(store_module.MIGRATIONS, 1, lambda conn: ran.append(conn.in_transaction))
    with CredentialStore.open(tmp_path / "store.db", key_source) as s:
        assert s.get_user("K10234")[0].user_id == "K10234"
    assert ran == [True]
    assert raw(tmp_path / "store.db", "SELECT value FROM meta WHERE name='format'") == [(b"2",)]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(os.urandom(8192)), id="random-bytes"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:1500]), id="truncated"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:100] + bytes(4000)), id="zeroed"),
    ],
)
def test_damaged_file_gives_a_clear_store_error(tmp_path, key_source, store, damage) -> None:
    for i in range(20):
        enrol_user(store, f"K{i:05d}")
    store.checkpoint()
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'store.db'}{suffix}").unlink(missing_ok=True)
    damage(tmp_path / "store.db")
    with pytest.raises(StoreError) as info:
        s = CredentialStore.open(tmp_path / "store.db", key_source)
        for i in range(20):
            s.get_user(f"K{i:05d}")
    assert str(tmp_path / "store.db") in str(info.value)
    assert isinstance(info.value, (StoreCorrupt, IntegrityError))


def test_another_sqlite_file_is_not_a_store_and_is_left_unchanged(tmp_path, key_source) -> None:
    raw(tmp_path / "other.db", "CREATE TABLE t (x)")
    before = (tmp_path / "other.db").read_bytes()
    with pytest.raises(StoreCorrupt, match="not a Sekisho"):
        CredentialStore.open(tmp_path / "other.db", key_source)
    assert (tmp_path / "other.db").read_bytes() == before  # not switched to WAL mode
    assert raw(tmp_path / "other.db", "PRAGMA journal_mode") == [("delete",)]


def test_a_failed_creation_leaves_nothing_behind(tmp_path, key_source, monkeypatch) -> None:
    monkeypatch.setattr(CredentialStore, "SCHEMA", CredentialStore.SCHEMA + "CREATE TABLE broken (;")
    with pytest.raises(StoreCorrupt):
        CredentialStore.create(tmp_path / "new.db", key_source)
    assert not list(tmp_path.glob("new.db*"))
    monkeypatch.undo()
    CredentialStore.create(tmp_path / "new.db", key_source).close()


def _rows(path: Path) -> list[tuple[str, str, tuple, bytes]]:
    """(table, key column sql, key values, blob) of every encrypted row."""
    out = []
    for uidx, blob in raw(path, "SELECT uidx, row FROM users"):
        out.append(("users", "uidx = ?", (uidx,), blob))
    for uidx, sid, blob in raw(path, "SELECT uidx, slot_id, row FROM slots"):
        out.append(("slots", "uidx = ? AND slot_id = ?", (uidx, sid), blob))
    for uidx, blob in raw(path, "SELECT uidx, row FROM grants"):
        out.append(("grants", "uidx = ?", (uidx,), blob))
    for uidx, name, blob in raw(path, "SELECT uidx, name, row FROM state"):
        out.append(("state", "uidx = ? AND name = ?", (uidx, name), blob))
    return out


def _read_everything(s: CredentialStore, user_id: str) -> None:
    s.get_user(user_id)
    s.get_grant(user_id)
    s.read_state(user_id, "totp/1")


@pytest.fixture
def populated(store, it_key):
    users = [enrol_user(store, uid) for uid in ("K10234", "K20581")]
    for u in users:
        sealed, _ = issue_grant(
            Grant(device_id="laptop-0001", user_id=u.record.user_id, serial=1, issued_at=0, apps=("住民記録",)),
            it_signing_key=it_key[0], user_public=u.record.identity_public,
        )
        store.put_grant(sealed)
        store.update_state(u.record.user_id, "totp/1", lambda old: {"last_step": 5})
    return users


def test_a_flipped_bit_anywhere_in_any_row_is_an_integrity_error(populated, store) -> None:
    rows = _rows(store.path)
    assert {r[0] for r in rows} == {"users", "slots", "grants", "state"}
    for table, where, key, blob in rows:
        for index in sorted({0, 11, 12, len(blob) // 2, len(blob) - 17, len(blob) - 1}):
            raw(store.path, f"UPDATE {table} SET row = ? WHERE {where}", flip(blob, index), *key)  # noqa: S608
            with pytest.raises(IntegrityError):
                for u in populated:
                    _read_everything(store, u.record.user_id)
        raw(store.path, f"UPDATE {table} SET row = ? WHERE {where}", blob, *key)  # noqa: S608
    for u in populated:  # restored: everything reads again
        _read_everything(store, u.record.user_id)


def test_a_flipped_bit_in_the_device_record_is_an_integrity_error(tmp_path, key_source, store) -> None:
    store.close()
    (blob,) = raw(tmp_path / "store.db", "SELECT value FROM meta WHERE name = 'device'")[0]
    raw(tmp_path / "store.db", "UPDATE meta SET value = ? WHERE name = 'device'", flip(blob, len(blob) // 2))
    with pytest.raises(IntegrityError):
        CredentialStore.open(tmp_path / "store.db", key_source)


@pytest.mark.parametrize("table", ["users", "slots", "grants", "state"])
def test_a_row_copied_over_another_users_row_fails(populated, store, table) -> None:
    a, b = (store.user_index(u.record.user_id) for u in populated)
    (blob_a,) = raw(store.path, f"SELECT row FROM {table} WHERE uidx = ?", a)[0]  # noqa: S608
    raw(store.path, f"UPDATE {table} SET row = ? WHERE uidx = ?", blob_a, b)  # noqa: S608
    with pytest.raises(IntegrityError):
        _read_everything(store, populated[1].record.user_id)
    _read_everything(store, populated[0].record.user_id)


def test_a_slot_moved_to_another_slot_id_fails(populated, store) -> None:
    uidx = store.user_index("K10234")
    raw(store.path, "UPDATE slots SET slot_id = 7 WHERE uidx = ?", uidx)
    with pytest.raises(IntegrityError):
        store.get_user("K10234")


def test_store_file_and_wal_hold_no_id_name_role_or_grant_text(tmp_path, store, it_key) -> None:
    u = enrol_user(store, "K10234", name="髙橋 健一", kana="タカハシ ケンイチ", department="選挙管理委員会事務局",
                   roles=("senkyo-kanri",))
    sealed, _ = issue_grant(
        Grant(device_id="laptop-0001", user_id="K10234", serial=1, issued_at=0,
              network={"apn": "closed.city.lg.jp", "password": "apn-password-x"},
              citrix={"store_url": "https://citrix.city.lg.jp/Citrix/Store"}, apps=("期日前投票システム",)),
        it_signing_key=it_key[0], user_public=u.record.identity_public,
    )
    store.put_grant(sealed)
    files = [p for p in tmp_path.glob("store.db*")]
    assert any(p.name.endswith("-wal") and p.stat().st_size > 0 for p in files)
    data = b"".join(p.read_bytes() for p in files)
    needles = ["K10234", "k10234", "髙橋", "健一", "タカハシ", "選挙管理", "senkyo-kanri", "closed.city.lg.jp",
               "apn-password-x", "citrix.city.lg.jp", "期日前投票", u.seed.base32]
    found = [n for n in needles if n.encode("utf-8") in data]
    assert found == []
    assert u.seed.secret not in data
    assert bytes(u.identity_private) not in data
    assert b"laptop-0001" not in data
    # The grep reads the real file: the header's application id ("SEKI") is there in the clear.
    assert b"SEKI" in data


def test_rows_are_padded_so_name_lengths_do_not_show(store) -> None:
    enrol_user(store, "K1", name="森")
    enrol_user(store, "K2", name="佐々木 ひとみ 長い名前")
    sizes = {len(b) for (b,) in raw(store.path, "SELECT row FROM users")}
    assert len(sizes) == 1


def test_provisioning_is_all_or_nothing(store, it_key) -> None:
    from sekisho.store.store import ProvisionedUser

    enrol_user(store, "K00002")
    entries = []
    for uid in ("K00001", "K00002", "K00003"):  # K00002 exists: the whole batch must fail
        priv, pub = crypto.x25519_generate()
        from sekisho.store.records import KeySlot, SlotKind, UserRecord

        slot = KeySlot.create(user_id=uid, slot_id=0, kind=SlotKind.FIDO2_UV, identity_private=priv,
                              secrets={"hmac-secret-uv": os.urandom(32)})
        sealed, _ = issue_grant(Grant(device_id="laptop-0001", user_id=uid, serial=1, issued_at=0),
                                it_signing_key=it_key[0], user_public=pub)
        entries.append(ProvisionedUser(record=UserRecord(user_id=uid, display_name="x", identity_public=pub),
                                       slots=[slot], grant=sealed))
    with pytest.raises(UserExists):
        store.provision(entries)
    assert store.user_ids() == ["K00002"]
    assert store.provision([entries[0], entries[2]]) == 2
    assert store.user_ids() == ["K00001", "K00002", "K00003"]
    assert store.get_grant("K00003").serial == 1
