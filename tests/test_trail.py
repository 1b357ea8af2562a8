"""The trail writer: appending, reopening, forward security, interrupted appends, one writer."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from sekisho import crypto, files
from sekisho.errors import FormatError, StoreError, TrailError, WrongDeviceKey
from sekisho.factors.interaction import ScriptedInteraction
from sekisho.store.keysource import InsecureFileKeySource
from sekisho.store.sealed import SealedDatabase
from sekisho.trail import EventType, Trail, TrailKeys, read_file
from sekisho.trail.format import parse_line
from sekisho.unlock import unlock
from tests.conftest import PIN_TOTP_POLICY, SECRETS_USED, enrol_user, remember
from tests.trail_helpers import EVENTS, StepClock, current_key, lines, make_trail


def test_entries_link_and_verify(tmp_path: Path) -> None:
    trail = make_trail(tmp_path)
    summary = trail.verify(head=trail.head)
    assert summary.entries == len(EVENTS) + 1
    assert summary.users == {"K10234", "K20001"}
    assert summary.events["logon-success"] == 3
    assert summary.events["trail-started"] == 1
    assert summary.head == trail.head
    entries = list(trail.entries())
    assert [e.seq for e in entries] == list(range(len(EVENTS) + 1))
    assert entries[0].body is not None and entries[0].body["details"]["root"] == crypto.key_fingerprint(trail.root)
    assert entries[6].body is not None and entries[6].body["details"]["name"] == "髙橋 健一"
    for e in entries:
        assert e.body is not None
        assert e.body["device"] == "laptop-0001" and e.body["offset"][0] in "+-"
        assert isinstance(e.body["mono_ns"], int)
    assert crypto.public_key_from_pem(trail.root_pem().encode(), what="root") == trail.root


def test_reopening_carries_on_the_same_chain(tmp_path: Path) -> None:
    trail = make_trail(tmp_path, events=3)
    head = trail.head
    trail.close()
    with Trail.open(tmp_path / "trail.jsonl", InsecureFileKeySource(tmp_path / "device.key")) as again:
        assert again.anomalies == []
        assert again.head == head
        entry = again.append(EventType.LOCK, user="K10234")
        assert entry.seq == head.seq + 1 and entry.header.prev_hash == head.hash
        assert again.verify().entries == 5


def test_every_key_differs_and_each_signs_one_entry(tmp_path: Path) -> None:
    trail = make_trail(tmp_path)
    entries = list(trail.entries())
    keys = [trail.root] + [e.header.next_key for e in entries]
    assert len(set(keys)) == len(keys)


def test_create_refuses_an_existing_trail(tmp_path: Path) -> None:
    make_trail(tmp_path, events=1).close()
    before = (tmp_path / "trail.jsonl").read_bytes()
    with pytest.raises(TrailError, match="already exists"):
        Trail.create(tmp_path / "trail.jsonl", InsecureFileKeySource(tmp_path / "device.key"), device_id="x")
    (tmp_path / "trail.jsonl").unlink()
    with pytest.raises(StoreError, match="refusing to overwrite"):  # the old keys are kept too
        Trail.create(tmp_path / "trail.jsonl", InsecureFileKeySource(tmp_path / "device.key"), device_id="x")
    assert not (tmp_path / "trail.jsonl").exists()
    (tmp_path / "trail.jsonl").write_bytes(before)


def test_open_without_keys_or_with_the_wrong_device_key(tmp_path: Path) -> None:
    make_trail(tmp_path, events=1).close()
    with pytest.raises(WrongDeviceKey):
        Trail.open(tmp_path / "trail.jsonl", InsecureFileKeySource(_other_key(tmp_path)))
    (tmp_path / "trail.jsonl.keys").rename(tmp_path / "elsewhere")
    with pytest.raises(TrailError, match="no key file") as info:
        Trail.open(tmp_path / "trail.jsonl", InsecureFileKeySource(tmp_path / "device.key"))
    assert "Export the trail" in info.value.diagnostics()


def _other_key(tmp_path: Path) -> Path:
    source = InsecureFileKeySource(tmp_path / "other.key")
    crypto.wipe(source.create())
    return tmp_path / "other.key"


@pytest.mark.parametrize("name", ["passphrase", "pin", "totp_code", "seed", "hmac", "private_key", "Password"])
def test_details_that_could_hold_a_secret_are_refused(tmp_path: Path, name: str) -> None:
    trail = make_trail(tmp_path, events=0)
    size = trail.path.stat().st_size
    with pytest.raises(FormatError, match="secrets never enter the trail"):
        trail.append(EventType.LOGON_FAILURE, user="K1", details={"nested": {name: "x"}})
    assert trail.path.stat().st_size == size
    assert trail.verify().entries == 1


def test_logon_events_carry_no_secret(tmp_path: Path, store) -> None:
    """Run logons as the gate will, record them, and scan the trail for every secret used."""
    user = enrol_user(store, "K10234", passphrase="kaze ga fuku hi ni 7")
    trail = Trail.create(tmp_path / "trail.jsonl", InsecureFileKeySource(tmp_path / "device.key"),
                         device_id=store.device_id, clock=StepClock())
    for i, passphrase in enumerate([user.passphrase, "wrong passphrase 12"]):
        code = user.seed.code_at(1_800_000_000 + 60 * i)
        remember(code)
        remember(passphrase)
        try:
            interaction = ScriptedInteraction(passphrase=passphrase, code=code)
            unlocked = unlock(store, PIN_TOTP_POLICY, "K10234", interaction, clock=lambda i=i: 1_800_000_000 + 60 * i)
        except Exception as exc:
            trail.append(EventType.LOGON_FAILURE, user="K10234",
                         details={"slot": "pin+totp", "error": type(exc).__name__})
        else:
            trail.append(EventType.LOGON_SUCCESS, user="K10234",
                         details={"slot": unlocked.slot_kind.value, "factors": ["knowledge", "possession"]})
    assert trail.verify().events == {"trail-started": 1, "logon-success": 1, "logon-failure": 1}
    remember(bytes(current_key(trail)))
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("trail.jsonl"))
    assert len(SECRETS_USED) > 5
    for secret in SECRETS_USED:
        for encoding in (secret, secret.hex().encode(), crypto.b64e(secret).encode()):
            if len(encoding) >= 6:
                assert encoding not in data


def _key_rows(trail: Trail) -> list[bytes]:
    conn = sqlite3.connect(trail._keys.path)
    try:
        return [v for (v,) in conn.execute("SELECT value FROM meta WHERE name IN ('current', 'pending')")]
    finally:
        conn.close()


def _scan_after_appends(tmp_path: Path, count: int) -> tuple[list[bytes], list[bytes], bytes, list[bytes]]:
    trail = make_trail(tmp_path, events=0)
    old_rows: list[bytes] = []
    old_keys: list[bytes] = []
    for _ in range(count):
        old_rows += _key_rows(trail)
        old_keys.append(bytes(current_key(trail)))
        trail.append(EventType.LOCK, user="K10234")
    current = _key_rows(trail)
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("trail.jsonl.keys"))
    trail.close()
    return [r for r in old_rows if r not in current], old_keys, data, current


def test_old_signing_keys_survive_nowhere(tmp_path: Path) -> None:
    old_rows, old_keys, data, current = _scan_after_appends(tmp_path, 25)
    # The scan can find a key row: the current one is there.
    assert all(row in data for row in current)
    assert len(old_rows) == 25
    assert not [r for r in old_rows if r in data], "an erased key's sealed row is still in the key file"
    assert not [k for k in old_keys if k in data]


def test_without_secure_delete_old_keys_would_linger(tmp_path: Path, monkeypatch) -> None:
    # The control for the test above: the same scan finds old keys when SQLite is left to
    # its defaults, so "found nowhere" means something.
    def insecure(cls, conn, *, new):  # type: ignore[no-untyped-def]
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA secure_delete=OFF")

    monkeypatch.setattr(SealedDatabase, "_configure", classmethod(insecure))
    monkeypatch.setattr(TrailKeys, "checkpoint", lambda self: None)
    old_rows, _, data, _ = _scan_after_appends(tmp_path, 25)
    assert [r for r in old_rows if r in data]


class _Crash(BaseException):
    """Stands in for the process dying at a chosen step."""


def _crash_after(monkeypatch: pytest.MonkeyPatch, target: object, name: str, *, partial: bool = False) -> None:
    real = getattr(target, name)

    def crashing(*args, **kwargs):  # type: ignore[no-untyped-def]
        if partial:  # half the line reaches the disk
            path, data = args
            real(path, data[: len(data) // 2])
        elif name == "append_durably":  # the whole line does
            real(*args, **kwargs)
        raise _Crash

    monkeypatch.setattr(target, name, crashing)


@pytest.mark.parametrize(
    ("step", "kept"),
    [
        pytest.param("set_pending", False, id="before-pending"),
        pytest.param("append-partial", False, id="mid-write"),
        pytest.param("append_durably", True, id="after-write"),
        pytest.param("advance", True, id="before-advance"),
    ],
)
def test_an_interrupted_append_is_resolved_on_open(tmp_path: Path, monkeypatch, step: str, kept: bool) -> None:
    trail = make_trail(tmp_path, events=3)
    before = lines(trail.path)
    with monkeypatch.context() as m:
        if step == "append-partial":
            _crash_after(m, files, "append_durably", partial=True)
        elif step == "append_durably":
            _crash_after(m, files, "append_durably")
        else:
            _crash_after(m, TrailKeys, step)
        with pytest.raises(_Crash):
            trail.append(EventType.LOGON_SUCCESS, user="K20001")
    trail._keys._conn.close()  # the process is gone
    if step == "append-partial":
        assert not trail.path.read_bytes().endswith(b"\n")
    with Trail.open(trail.path, InsecureFileKeySource(tmp_path / "device.key")) as again:
        assert again.anomalies == []
        after = lines(again.path)
        assert after[: len(before)] == before
        assert len(after) == len(before) + kept
        again.append(EventType.LOCK, user="K20001")
        summary = again.verify(head=again.head)
        assert summary.entries == len(before) + kept + 1
        assert summary.events["logon-success"] == 1 + kept


def _append_many(path: str, key_file: str, count: int) -> None:
    with Trail.open(Path(path), InsecureFileKeySource(Path(key_file))) as trail:
        for i in range(count):
            trail.append(EventType.LOCK, user=f"P{os.getpid()}", details={"i": i})


def test_writers_in_several_processes_take_turns(tmp_path: Path) -> None:
    make_trail(tmp_path, events=0).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path / "trail.jsonl"), str(tmp_path / "device.key"), 30))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = list(read_file(tmp_path / "trail.jsonl"))
    assert len(entries) == 91
    with Trail.open(tmp_path / "trail.jsonl", InsecureFileKeySource(tmp_path / "device.key")) as trail:
        assert trail.anomalies == []
        assert trail.verify().entries == 91
        assert len(trail.verify().users) == 3


def test_a_trail_file_deleted_is_detected_and_recorded(tmp_path: Path) -> None:
    make_trail(tmp_path, events=3).close()
    (tmp_path / "trail.jsonl").unlink()
    with Trail.open(tmp_path / "trail.jsonl", InsecureFileKeySource(tmp_path / "device.key")) as trail:
        assert "missing or empty" in trail.anomalies[0]
        (entry,) = list(trail.entries())
        assert entry.event == "tampering-detected" and entry.seq == 4
        assert entry.body is not None and entry.body["details"]["expected_head"].startswith("3:")


def test_unexplained_bytes_at_the_end_are_kept_as_evidence(tmp_path: Path) -> None:
    make_trail(tmp_path, events=2).close()
    with (tmp_path / "trail.jsonl").open("ab") as f:
        f.write(b'{"body":{"forged":')
    with Trail.open(tmp_path / "trail.jsonl", InsecureFileKeySource(tmp_path / "device.key")) as trail:
        assert "unfinished line" in trail.anomalies[0]
    raw = lines(tmp_path / "trail.jsonl")
    assert raw[-2] == b'{"body":{"forged":\n'
    last = parse_line(raw[-1].rstrip(b"\n"))
    assert last.event == "tampering-detected"
    assert json.loads(raw[-1])["body"]["details"]["problem"].startswith("it ends with an unfinished line")


def test_another_laptops_trail_in_its_place_is_detected(tmp_path: Path) -> None:
    make_trail(tmp_path / "a").close()
    make_trail(tmp_path / "b").close()  # same events, same length, another root
    foreign = (tmp_path / "b" / "trail.jsonl").read_bytes()
    (tmp_path / "a" / "trail.jsonl").write_bytes(foreign)
    with Trail.open(tmp_path / "a" / "trail.jsonl", InsecureFileKeySource(tmp_path / "a" / "device.key")) as trail:
        assert "another laptop's trail" in trail.anomalies[0]
        last = list(trail.entries())[-1]
        assert last.event == "tampering-detected" and last.seq == len(EVENTS) + 1
    assert (tmp_path / "a" / "trail.jsonl").read_bytes().startswith(foreign)  # the evidence is kept
