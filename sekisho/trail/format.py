"""The trail's on-disk format, version 1 (docs/trail-format.md).

One entry per line, the line itself canonical JSON::

    {"body":{...},"header":"<base64 of the header bytes>","sig":"<base64 Ed25519 signature>"}

The header bytes are canonical JSON of ``{body_hash, format, next_key, prev_hash, seq,
time}`` and are kept verbatim, so a verifier checks the signature over the bytes it
reads and never re-canonicalises anything. The body is bound by ``body_hash``, the
SHA-256 of the body's bytes exactly as they stand in the line; a filtered export drops
the ``body`` member and keeps every header. ``prev_hash`` is the SHA-256 of the previous
entry's header bytes followed by its signature, and ``next_key`` the public key that
signs the next entry: the first entry is signed by the trail root.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from sekisho import crypto
from sekisho.errors import FormatError

#: The ``format`` member of every header: what the signed bytes are, and their version.
TRAIL_FORMAT = "sekisho/v1/trail"
#: ``prev_hash`` of the first entry.
GENESIS_HASH = "0" * 64
#: No entry Sekisho writes comes near this; a longer line is refused unread.
MAX_LINE = 64 * 1024
SIGNATURE_LEN = 64
PUBLIC_KEY_LEN = 32

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_HEADER_KEYS = {"body_hash", "format", "next_key", "prev_hash", "seq", "time"}
_BODY_KEYS = {"boot_id", "details", "device", "event", "mono_ns", "offset", "user"}
#: Detail names that could only hold a secret: refused when an entry is written.
_SECRET_NAMES = ("passphrase", "password", "pin", "code", "secret", "seed", "hmac", "private_key", "otp")


class EventType(StrEnum):
    """What an entry records. New kinds may be added; verifiers accept unknown ones."""

    TRAIL_STARTED = "trail-started"
    LOGON_SUCCESS = "logon-success"
    LOGON_FAILURE = "logon-failure"
    LOCKOUT = "lockout"
    RECOVERY = "recovery"
    LEASE_EXTENSION = "lease-extension"
    UNLOCK = "unlock"
    LOCK = "lock"
    LINK_UP = "link-up"
    LINK_DOWN = "link-down"
    ISOLATION = "isolation"
    POLICY_INSTALLED = "policy-installed"
    BUNDLE_INSTALLED = "bundle-installed"
    CHECK_IN = "check-in"
    LEASE_WARNING = "lease-warning"
    CLOCK_ANOMALY = "clock-anomaly"
    TAMPERING_DETECTED = "tampering-detected"
    APPS_STARTED = "apps-started"
    APPS_CLOSED = "apps-closed"
    # IT's own log at the enrolment station (same format, the station's keys):
    USER_ADDED = "user-added"
    USER_UPDATED = "user-updated"
    USER_ENROLLED = "user-enrolled"
    USER_DISABLED = "user-disabled"
    USER_ENABLED = "user-enabled"
    FACTOR_REVOKED = "factor-revoked"
    ROLE_SET = "role-set"
    DEVICE_PROVISIONED = "device-provisioned"
    DEVICE_CHECKED_IN = "device-checked-in"
    DEVICE_RETIRED = "device-retired"
    RECOVERY_CODE_ISSUED = "recovery-code-issued"
    EXTENSION_CODE_ISSUED = "extension-code-issued"
    ROSTER_IMPORTED = "roster-imported"
    OFFICE_CHECK = "office-check"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_hash(header_bytes: bytes, signature: bytes) -> str:
    """The hash the next entry's ``prev_hash`` names: SHA-256(header bytes ‖ signature)."""
    return hashlib.sha256(header_bytes + signature).hexdigest()


def utc_time(epoch: float) -> str:
    """``2026-12-04T07:30:00.000000Z``: fixed width, so times sort as text."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def local_offset(epoch: float) -> str:
    """The laptop's UTC offset at ``epoch``, e.g. ``+09:00``."""
    offset = dt.datetime.fromtimestamp(epoch).astimezone().strftime("%z")
    return f"{offset[:3]}:{offset[3:]}"


def _b64decode(text: str | bytes, *, what: str, length: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{what} is not valid base64") from None
    if length is not None and len(raw) != length:
        raise FormatError(f"{what} has {len(raw)} bytes, not {length}")
    return raw


@dataclass(frozen=True, kw_only=True)
class Header:
    """The signed part of an entry."""

    seq: int
    time: str
    prev_hash: str
    body_hash: str
    next_key: bytes

    def to_bytes(self) -> bytes:
        return crypto.canonical_json(
            {
                "body_hash": self.body_hash,
                "format": TRAIL_FORMAT,
                "next_key": crypto.b64e(self.next_key),
                "prev_hash": self.prev_hash,
                "seq": self.seq,
                "time": self.time,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        obj = crypto.parse_json_object(data, what="header")
        if set(obj) != _HEADER_KEYS:
            raise FormatError(f"header members are {sorted(obj)}, not {sorted(_HEADER_KEYS)}")
        if obj["format"] != TRAIL_FORMAT:
            raise FormatError(f"header format is {obj['format']!r}, not {TRAIL_FORMAT!r}")
        seq = obj["seq"]
        if type(seq) is not int or seq < 0:
            raise FormatError("header seq is not a non-negative integer")
        for name in ("prev_hash", "body_hash"):
            if not isinstance(obj[name], str) or not _HEX64.fullmatch(obj[name]):
                raise FormatError(f"header {name} is not 64 lower-case hex digits")
        if not isinstance(obj["time"], str) or not _TIME.fullmatch(obj["time"]):
            raise FormatError("header time is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
        if not isinstance(obj["next_key"], str):
            raise FormatError("header next_key is not a string")
        next_key = _b64decode(obj["next_key"], what="header next_key", length=PUBLIC_KEY_LEN)
        return cls(seq=seq, time=obj["time"], prev_hash=obj["prev_hash"], body_hash=obj["body_hash"],
                   next_key=next_key)


@dataclass(frozen=True, kw_only=True)
class TrailEntry:
    """One entry as read from a line: verbatim header bytes, signature, optional body."""

    header: Header
    header_bytes: bytes
    signature: bytes
    #: The body's bytes exactly as they stand in the line; ``None`` when omitted.
    body_bytes: bytes | None
    body: dict[str, Any] | None

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def hash(self) -> str:
        return entry_hash(self.header_bytes, self.signature)

    @property
    def omitted(self) -> bool:
        return self.body is None

    @property
    def event(self) -> str | None:
        return None if self.body is None else self.body.get("event")

    @property
    def user(self) -> str | None:
        return None if self.body is None else self.body.get("user")

    def without_body(self) -> TrailEntry:
        return replace(self, body_bytes=None, body=None)

    def to_line(self) -> bytes:
        """The entry's line, newline included; byte for byte what was read."""
        return encode_line(self.header_bytes, self.signature, self.body_bytes)


def encode_line(header_bytes: bytes, signature: bytes, body_bytes: bytes | None) -> bytes:
    # Canonical JSON of {"body", "header", "sig"} (keys in that order), built from the
    # body's own canonical bytes so that they stand verbatim in the line.
    head = b'{"body":' + body_bytes + b"," if body_bytes is not None else b"{"
    return (
        head + b'"header":"' + base64.b64encode(header_bytes) + b'","sig":"' + base64.b64encode(signature) + b'"}\n'
    )


def parse_line(raw: bytes) -> TrailEntry:
    """Parse one line (without its newline). Checks shape only, not signatures."""
    if len(raw) > MAX_LINE:
        raise FormatError(f"the line is longer than {MAX_LINE} bytes")
    # Sliced from the end: the body may itself hold the text '"header":"', never after it
    # (base64 has no quotes), so the last occurrences are the entry's own members.
    sig_at = raw.rfind(b'","sig":"')
    header_at = raw.rfind(b'"header":"', 0, sig_at)
    prefix = raw[:header_at]
    if sig_at < 0 or header_at < 0 or not raw.endswith(b'"}'):
        raise FormatError("the line is not a Sekisho trail entry")
    if prefix == b"{":
        body_bytes = None
    elif prefix.startswith(b'{"body":') and prefix.endswith(b","):
        body_bytes = prefix[8:-1]
    else:
        raise FormatError("the line is not a Sekisho trail entry")
    header_bytes = _b64decode(raw[header_at + 10 : sig_at], what="header")
    signature = _b64decode(raw[sig_at + 9 : -2], what="signature", length=SIGNATURE_LEN)
    header = Header.from_bytes(header_bytes)
    body = None if body_bytes is None else crypto.parse_json_object(body_bytes, what="body")
    return TrailEntry(header=header, header_bytes=header_bytes, signature=signature, body_bytes=body_bytes, body=body)


def _check_details(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for name, inner in value.items():
            lowered = str(name).lower()
            if any(lowered == s or lowered.endswith("_" + s) for s in _SECRET_NAMES):
                raise FormatError(f"trail details may not hold a {name!r}: secrets never enter the trail")
            _check_details(inner, f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for inner in value:
            _check_details(inner, path)
    elif not (value is None or isinstance(value, (str, int, bool))):
        raise FormatError(f"trail detail {path} has type {type(value).__name__}")


def make_body(
    event: EventType,
    *,
    device: str,
    user: str | None,
    details: dict[str, Any],
    epoch: float,
    mono_ns: int,
    boot_id: str | None,
) -> dict[str, Any]:
    """The body of a new entry. Detail names that could hold a secret are refused."""
    _check_details(details, "details")
    body = {
        "boot_id": boot_id,
        "details": details,
        "device": device,
        "event": str(event),
        "mono_ns": mono_ns,
        "offset": local_offset(epoch),
        "user": user,
    }
    assert set(body) == _BODY_KEYS  # noqa: S101 - a programming error, not input
    return body
