"""Verify a trail, or several exports of one, against its root.

What is checked, entry by entry, in this order (the first failure is reported):

1. the line is a well-formed entry (``malformed``);
2. sequence numbers start at 0 and go up by one (``sequence``);
3. ``prev_hash`` is the hash of the entry before (``broken-link``);
4. the signature verifies under the key the previous header announced, or the root
   for the first entry (``wrong-root``, ``bad-signature``, or ``key-not-announced``
   when it verifies under some other key of the trail: an entry re-signed later);
5. the body, where present, hashes to ``body_hash`` (``body-hash-mismatch``).

Then the head the office recorded, if given, must be in the trail (``head-mismatch``:
a truncated trail), and exports that hold the same entry number must agree (``fork``).
"""

from __future__ import annotations

import collections
import hmac
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sekisho.errors import FormatError, TrailError, TrailInvalid
from sekisho.trail.format import GENESIS_HASH, MAX_LINE, TrailEntry, parse_line, sha256_hex


class Reason(StrEnum):
    """Why a trail failed verification."""

    EMPTY = "empty"
    MALFORMED = "malformed"
    SEQUENCE = "sequence"
    BROKEN_LINK = "broken-link"
    WRONG_ROOT = "wrong-root"
    BAD_SIGNATURE = "bad-signature"
    KEY_NOT_ANNOUNCED = "key-not-announced"
    BODY_HASH = "body-hash-mismatch"
    HEAD_MISMATCH = "head-mismatch"
    FORK = "fork"


@dataclass(frozen=True)
class Head:
    """An entry's position and hash, written ``SEQ:HASH``: what the office records."""

    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> Head:
        seq, _, digest = text.strip().partition(":")
        if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise FormatError(f"{text!r} is not a trail head (SEQ:HASH, the hash 64 lower-case hex digits)")
        return cls(int(seq), digest)

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


@dataclass
class TrailSummary:
    """What a valid trail holds."""

    entries: int = 0
    omitted: int = 0
    first_time: str | None = None
    last_time: str | None = None
    users: set[str] = field(default_factory=set)
    devices: set[str] = field(default_factory=set)
    events: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Entries whose time is earlier than the entry before: a clock turned back.
    time_steps_back: int = 0
    head: Head | None = None
    sources: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "omitted_bodies": self.omitted,
            "first_time": self.first_time,
            "last_time": self.last_time,
            "users": sorted(self.users),
            "devices": sorted(self.devices),
            "events": dict(sorted(self.events.items())),
            "time_steps_back": self.time_steps_back,
            "head": str(self.head) if self.head else None,
            "sources": self.sources,
        }


def read_lines(handle: BinaryIO, source: str) -> Iterator[TrailEntry]:
    """Parse a trail stream line by line; a bad line raises ``TrailInvalid`` naming it."""
    lineno = 0
    while True:
        raw = handle.readline(MAX_LINE + 2)
        if not raw:
            break
        lineno += 1
        if not raw.endswith(b"\n"):
            why = f"longer than {MAX_LINE} bytes" if len(raw) > MAX_LINE else "cut short (no end of line)"
            raise TrailInvalid(f"{source}, line {lineno}: the line is {why}.", reason=Reason.MALFORMED,
                               line=lineno, source=source)
        try:
            entry = parse_line(raw[:-1])
        except FormatError as exc:
            raise TrailInvalid(f"{source}, line {lineno}: {exc}.", reason=Reason.MALFORMED,
                               line=lineno, source=source) from None
        yield entry
    if lineno == 0:
        raise TrailInvalid(f"{source} is empty: a trail has at least its first entry.", reason=Reason.EMPTY,
                           source=source)


def read_file(path: Path) -> Iterator[TrailEntry]:
    """The entries of a trail file (or export), parsed one line at a time."""
    try:
        handle = Path(path).open("rb")  # noqa: SIM115 - closed below, after the generator ends
    except OSError as exc:
        raise TrailError(f"{path} cannot be read: {exc.strerror}.") from None
    with handle:
        yield from read_lines(handle, str(path))


def signature_valid(public_raw: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except InvalidSignature:
        return False
    return True


class Verifier:
    """Checks one trail's entries in order; ``feed`` raises ``TrailInvalid`` at the first bad one."""

    def __init__(self, root: bytes, source: str) -> None:
        self.root = root
        self.source = source
        self.summary = TrailSummary(sources=[source])
        #: seq -> entry hash, for head and fork checks.
        self.hashes: dict[int, str] = {}
        self._key = root
        self._prev = GENESIS_HASH
        self._next_seq = 0
        self._announced: dict[bytes, int] = {}

    def _fail(self, entry: TrailEntry, reason: Reason, why: str, lineno: int) -> TrailInvalid:
        return TrailInvalid(f"{self.source}, line {lineno}, entry {entry.seq}: {why}", reason=reason,
                            seq=entry.seq, line=lineno, source=self.source)

    def feed(self, entry: TrailEntry, lineno: int, rest: Iterable[TrailEntry] = ()) -> None:
        header = entry.header
        if header.seq != self._next_seq:
            why = (f"expected entry {self._next_seq} here, found {header.seq}"
                   + (f" ({header.seq - self._next_seq} entries missing)." if header.seq > self._next_seq
                      else " (entries repeated or out of order)."))
            raise self._fail(entry, Reason.SEQUENCE, why, lineno)
        if not hmac.compare_digest(header.prev_hash, self._prev):
            raise self._fail(entry, Reason.BROKEN_LINK,
                             "prev_hash does not name the entry before it (an entry removed, inserted or replaced).",
                             lineno)
        if not signature_valid(self._key, entry.header_bytes, entry.signature):
            raise self._signature_failure(entry, lineno, rest)
        if entry.body_bytes is not None and not hmac.compare_digest(sha256_hex(entry.body_bytes), header.body_hash):
            raise self._fail(entry, Reason.BODY_HASH, "the body was changed after it was signed.", lineno)
        self._announced[header.next_key] = header.seq
        self._key = header.next_key
        self._prev = entry.hash
        self._next_seq += 1
        self.hashes[header.seq] = self._prev
        self._count(entry)

    def _signature_failure(self, entry: TrailEntry, lineno: int, rest: Iterable[TrailEntry]) -> TrailInvalid:
        if entry.seq == 0:
            return self._fail(entry, Reason.WRONG_ROOT,
                              "the first entry is not signed by the trail root given (another laptop's trail, "
                              "or a trail regenerated under a new root).", lineno)
        # Which key did sign it? One announced elsewhere in this trail means the entry was
        # re-signed with a key that was not the one due (CVE-2023-31437 style).
        later = {e.header.next_key: e.seq for e in _ignore_bad(rest)}
        for key, announced_at in [*self._announced.items(), *later.items(), (self.root, -1)]:
            if key != self._key and signature_valid(key, entry.header_bytes, entry.signature):
                where = "the trail root" if announced_at < 0 else f"the key announced by entry {announced_at}"
                return self._fail(entry, Reason.KEY_NOT_ANNOUNCED,
                                  f"signed with {where}, not with the key entry {entry.seq - 1} announced "
                                  "(re-signed after the fact).", lineno)
        return self._fail(entry, Reason.BAD_SIGNATURE,
                          "the signature does not verify (the header was changed, or forged).", lineno)

    def _count(self, entry: TrailEntry) -> None:
        s = self.summary
        s.entries += 1
        t = entry.header.time
        if s.last_time is not None and t < s.last_time:
            s.time_steps_back += 1
        s.first_time = s.first_time or t
        s.last_time = t
        s.head = Head(entry.seq, self._prev)
        if entry.body is None:
            s.omitted += 1
            return
        s.events[str(entry.body.get("event"))] += 1
        if isinstance(entry.body.get("user"), str):
            s.users.add(entry.body["user"])
        if isinstance(entry.body.get("device"), str):
            s.devices.add(entry.body["device"])

    def check_head(self, head: Head) -> None:
        found = self.hashes.get(head.seq)
        if found is None:
            raise TrailInvalid(
                f"{self.source}: the trail ends at entry {self._next_seq - 1}, but the office recorded entry "
                f"{head.seq}: {head.seq - self._next_seq + 1} entries are missing from the end (truncated).",
                reason=Reason.HEAD_MISMATCH, seq=head.seq, source=self.source)
        if found != head.hash:
            raise TrailInvalid(
                f"{self.source}: entry {head.seq} is not the entry the office recorded (its hash differs): "
                "the trail was replaced or forked.", reason=Reason.HEAD_MISMATCH, seq=head.seq, source=self.source)


def _ignore_bad(entries: Iterable[TrailEntry]) -> Iterator[TrailEntry]:
    try:
        yield from entries
    except TrailInvalid:
        return


def verify_entries(entries: Iterable[TrailEntry], root: bytes, *, source: str = "trail",
                   head: Head | None = None) -> Verifier:
    """Verify one trail's entries against ``root``; returns the verifier holding the summary."""
    verifier = Verifier(root, source)
    iterator = iter(entries)
    for lineno, entry in enumerate(iterator, start=1):
        verifier.feed(entry, lineno, iterator)
    if verifier.summary.entries == 0:
        raise TrailInvalid(f"{source} is empty: a trail has at least its first entry.", reason=Reason.EMPTY,
                           source=source)
    if head is not None:
        verifier.check_head(head)
    return verifier


def verify_files(paths: list[Path], root: bytes, *, head: Head | None = None) -> TrailSummary:
    """Verify one laptop's trail or exports; ``TrailInvalid`` names the first problem.

    Every file must verify on its own; files that hold the same entry number must hold
    the same entry (otherwise a fork); the head, if given, must be in at least one file.
    """
    verifiers = []
    for path in paths:
        verifiers.append(verify_entries(read_file(path), root, source=str(path)))
    merged: dict[int, tuple[str, str]] = {}
    for v in verifiers:
        for seq, digest in v.hashes.items():
            seen = merged.setdefault(seq, (digest, v.source))
            if seen[0] != digest:
                raise TrailInvalid(
                    f"{seen[1]} and {v.source} disagree from entry {seq} on: two different histories of one "
                    "laptop (a fork).", reason=Reason.FORK, seq=seq, source=v.source)
    longest = max(verifiers, key=lambda v: (v.summary.entries, -v.summary.omitted))
    if head is not None:
        longest.check_head(head)
    summary = longest.summary
    summary.sources = [str(p) for p in paths]
    return summary
