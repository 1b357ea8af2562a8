"""Helpers for the trail tests: a populated trail, the two verifiers, attacker tools."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from enroll import audit
from sekisho import crypto
from sekisho.store.keysource import InsecureFileKeySource
from sekisho.trail import EventType, Trail, TrailKeys
from sekisho.trail.format import Header, encode_line, parse_line, sha256_hex

ROOT = Path(__file__).resolve().parent.parent
OPENSSL_SCRIPT = ROOT / "docs" / "verify-with-openssl.sh"
T0 = 1_800_000_000.0

EVENTS = [
    (EventType.LOGON_FAILURE, "K10234", {"slot": "pin+totp", "factors": ["knowledge", "possession"]}),
    (EventType.LOGON_SUCCESS, "K10234", {"slot": "pin+totp", "factors": ["knowledge", "possession"]}),
    (EventType.LINK_UP, "K10234", {"seconds": 71, "rtt_ms": 142, "operator": "閉域網"}),
    (EventType.UNLOCK, "K10234", {}),
    (EventType.LOCK, "K10234", {"why": "idle"}),
    (EventType.LOGON_SUCCESS, "K20001", {"slot": "fido2-uv", "factors": ["possession", "biometric"],
                                         "name": "髙橋 健一"}),
    (EventType.LEASE_WARNING, None, {"days_left": 3}),
    (EventType.LOCK, "K20001", {"why": "request"}),
    (EventType.CLOCK_ANOMALY, None, {"behind_s": 3600}),
    (EventType.LOGON_SUCCESS, "K10234", {"slot": "pin+totp", "factors": ["knowledge", "possession"]}),
]


class StepClock:
    """A clock that moves 60 s each time it is read."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 60
        return self.now


def make_trail(directory: Path, device_id: str = "laptop-0001", events: int = len(EVENTS)) -> Trail:
    """A trail with entry 0 and ``events`` more entries, and its root PEM beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    key_source = InsecureFileKeySource(directory / "device.key")
    trail = Trail.create(directory / "trail.jsonl", key_source, device_id=device_id, clock=StepClock())
    for event, user, details in EVENTS[:events]:
        trail.append(event, user=user, details=details)
    (directory / "root.pem").write_text(trail.root_pem())
    return trail


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, content: list[bytes]) -> None:
    path.write_bytes(b"".join(content))


def current_key(trail: Trail) -> bytearray:
    """What an attacker with root on the laptop can take: the key that signs the next entry."""
    keys = TrailKeys.open(trail._keys.path, InsecureFileKeySource(trail.path.parent / "device.key"))
    try:
        position, _ = keys.positions()
        return position.key
    finally:
        keys.close()


def resign(line: bytes, key: bytes | bytearray, *, body: dict[str, object] | None = None,
           **header_changes: object) -> bytes:
    """Rewrite an entry's body and header fields and sign it with ``key``."""
    entry = parse_line(line.rstrip(b"\n"))
    body_bytes = entry.body_bytes if body is None else crypto.canonical_json(body)
    assert body_bytes is not None
    fields = {"seq": entry.header.seq, "time": entry.header.time, "prev_hash": entry.header.prev_hash,
              "body_hash": sha256_hex(body_bytes), "next_key": entry.header.next_key, **header_changes}
    header_bytes = Header(**fields).to_bytes()  # type: ignore[arg-type]
    return encode_line(header_bytes, crypto.ed25519_sign(key, header_bytes), body_bytes)


def edit_header_unsigned(line: bytes, **changes: object) -> bytes:
    """Change header fields and store the new header bytes, keeping the old signature."""
    entry = parse_line(line.rstrip(b"\n"))
    obj = json.loads(entry.header_bytes)
    obj.update(changes)
    return encode_line(crypto.canonical_json(obj), entry.signature, entry.body_bytes)


def run_audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = audit.main(list(args)) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_openssl(trail: Path, root: Path, head: str | None = None) -> subprocess.CompletedProcess[str]:
    args = ["sh", str(OPENSSL_SCRIPT), str(trail), str(root)] + ([head] if head else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
