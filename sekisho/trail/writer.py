"""Writing the trail: one writer at a time, keys that evolve and are erased.

Beside ``trail.jsonl`` live ``trail.jsonl.keys`` (a sealed SQLite file under the device
key: the key that signs the next entry, the next sequence number and hash, and during an
append the pending next key) and ``trail.jsonl.lock``.

Appending one entry (under the lock):

1. a new key pair is made and stored as *pending* (committed);
2. the entry, naming the pending public key as ``next_key`` and signed with the current
   key, is appended to the trail and fsynced;
3. the pending key becomes current and the old current key is deleted, in one
   transaction, followed by a WAL checkpoint: with ``secure_delete`` no copy of the old
   key remains in the file, its WAL or free pages.

Opening (and every append) first resolves an interrupted append: if the trail's last
line is the pending entry it is kept and the keys move on; otherwise a torn last line
is cut off and the pending key dropped. Then the trail's tail must be the entry the
keys expect; if not (a trail restored from a backup without its keys, a trail from
another laptop, a missing file) a ``tampering-detected`` entry is appended and the
problem reported in ``Trail.anomalies``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sekisho import codec, crypto, files
from sekisho.codec import Fields
from sekisho.errors import FormatError, StoreNotFound, TrailError
from sekisho.store.keysource import DeviceKeySource
from sekisho.store.sealed import SealedDatabase
from sekisho.trail.format import (
    GENESIS_HASH,
    MAX_LINE,
    PUBLIC_KEY_LEN,
    EventType,
    Header,
    TrailEntry,
    encode_line,
    entry_hash,
    make_body,
    parse_line,
    sha256_hex,
    utc_time,
)
from sekisho.trail.verify import Head, TrailSummary, read_file, signature_valid, verify_files

log = logging.getLogger(__name__)

KEYS_SUFFIX = ".keys"
LOCK_SUFFIX = ".lock"
_KEY_LEN = 32


@dataclass(frozen=True, kw_only=True)
class _Next:
    """Where the trail stands: the next entry's number, the hash it links to, its key."""

    seq: int
    prev_hash: str
    key: bytearray
    public: bytes

    def __repr__(self) -> str:
        return f"<trail position {self.seq}>"


class TrailKeys(SealedDatabase):
    """The trail's evolving signing key, sealed under the device key."""

    WHAT = "trail key file"
    APPLICATION_ID = 0x534B544B  # "SKTK"
    FORMAT_VERSION = 1
    MIGRATIONS = {}  # noqa: RUF012 - no migrations yet
    SCHEMA = ""
    ROWS_LABEL = "trail-keys"

    device_id: str
    root: bytes

    @classmethod
    def create(cls, path: Path, key_source: DeviceKeySource, *, device_id: str) -> TrailKeys:
        """A new key file holding a fresh trail root as the key for entry 0."""
        root_key, root = crypto.ed25519_generate()

        def setup(keys: TrailKeys) -> None:
            keys._put_meta("device", codec.encode({"id": device_id, "root": root}))
            keys._put_position(_Next(seq=0, prev_hash=GENESIS_HASH, key=root_key, public=root))
            keys._loaded()

        try:
            return cls._create(path, key_source, setup)
        finally:
            crypto.wipe(root_key)

    def _loaded(self) -> None:
        device = Fields(codec.decode(self._get_meta("device"), what="trail device"), "trail device")
        self.device_id = device.text("id")
        self.root = device.blob("root", length=PUBLIC_KEY_LEN)

    def _put_position(self, position: _Next, name: str = "current") -> None:
        self._put_meta(name, codec.encode({
            "seq": position.seq, "prev": position.prev_hash, "key": bytes(position.key), "pub": position.public,
        }))

    def _position(self, name: str) -> _Next | None:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        f = Fields(self._decode("meta", name, row[0], lambda b: codec.decode(b, what="trail key")), "trail key")
        try:
            return _Next(seq=f.integer("seq"), prev_hash=f.text("prev"),
                         key=bytearray(f.blob("key", length=_KEY_LEN)), public=f.blob("pub", length=PUBLIC_KEY_LEN))
        except FormatError as exc:
            raise TrailError(f"The trail key file {self.path} is damaged ({exc}).") from None

    def positions(self) -> tuple[_Next, _Next | None]:
        """The current position and the pending one (an append in progress), if any."""
        with self._read():
            current = self._position("current")
            pending = self._position("pending")
        if current is None:
            raise TrailError(f"The trail key file {self.path} has no current key.")
        return current, pending

    def set_pending(self, pending: _Next) -> None:
        with self._write():
            self._put_position(pending, "pending")

    def advance(self, new: _Next) -> None:
        """Make ``new`` current and erase the old key: one transaction, then a checkpoint."""
        with self._write() as c:
            self._put_position(new)
            c.execute("DELETE FROM meta WHERE name = 'pending'")
        self.checkpoint()

    def drop_pending(self) -> None:
        with self._write() as c:
            c.execute("DELETE FROM meta WHERE name = 'pending'")
        self.checkpoint()


@dataclass(frozen=True)
class _Tail:
    entry: TrailEntry | None
    #: Bytes after the last newline (an unfinished line).
    torn: int
    problem: str | None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:  # not Linux
        return None


class Trail:
    """A laptop's (or IT's) signed logon trail: append, read, verify."""

    def __init__(self, path: Path, keys: TrailKeys, clock: Callable[[], float]) -> None:
        self.path = path
        self._keys = keys
        self._clock = clock
        self._boot_id = _boot_id()
        #: Problems found when the trail was checked against its keys (also in the trail).
        self.anomalies: list[str] = []

    def __repr__(self) -> str:
        return f"<Trail {self.path}>"

    @staticmethod
    def _keys_path(path: Path) -> Path:
        return path.with_name(path.name + KEYS_SUFFIX)

    @classmethod
    def create(
        cls, path: Path, key_source: DeviceKeySource, *, device_id: str, clock: Callable[[], float] = time.time
    ) -> Trail:
        """Start a new trail: a fresh root, and entry 0 (``trail-started``) signed by it."""
        path = Path(path)
        if path.exists() and path.stat().st_size > 0:
            raise TrailError(f"A trail already exists at {path}; refusing to start another over it.")
        keys = TrailKeys.create(cls._keys_path(path), key_source, device_id=device_id)
        trail = cls(path, keys, clock)
        with trail._locked():
            trail._settle()  # writes entry 0, trail-started, signed by the root
        return trail

    @classmethod
    def open(cls, path: Path, key_source: DeviceKeySource, *, clock: Callable[[], float] = time.time) -> Trail:
        """Open a trail to append to; resolves an interrupted append, checks the tail."""
        path = Path(path)
        try:
            keys = TrailKeys.open(cls._keys_path(path), key_source)
        except StoreNotFound:
            raise TrailError(
                f"The trail {path} has no key file ({cls._keys_path(path).name}): it cannot be continued.",
                advice="Export the trail for the office as it is, then have IT provision this laptop again.",
            ) from None
        trail = cls(path, keys, clock)
        try:
            with trail._locked():
                trail._settle()
        except BaseException:
            keys.close()
            raise
        return trail

    def close(self) -> None:
        self._keys.close()

    def __enter__(self) -> Trail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def root(self) -> bytes:
        """The trail root: the public key entry 0 is signed with (registered with the office)."""
        return self._keys.root

    def root_pem(self) -> str:
        return crypto.public_key_pem(self._keys.root)

    @property
    def device_id(self) -> str:
        return self._keys.device_id

    @property
    def head(self) -> Head:
        """The newest entry (number and hash), as the office records it at check-in."""
        current, _ = self._keys.positions()
        crypto.wipe(current.key)
        return Head(current.seq - 1, current.prev_hash)

    # --- writing --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            with files.exclusive_lock(self.path.with_name(self.path.name + LOCK_SUFFIX)):
                yield
        except OSError as exc:
            raise TrailError(f"The trail {self.path} cannot be written: {exc.strerror}.") from None

    def append(self, event: EventType, *, user: str | None = None, details: dict[str, Any] | None = None
               ) -> TrailEntry:
        """Append one event; returns once the entry is durable and its key erased."""
        with self._locked():
            self._settle()
            return self._append(event, user, details or {})

    def _append(self, event: EventType, user: str | None, details: dict[str, Any]) -> TrailEntry:
        now = self._clock()
        body = make_body(event, device=self._keys.device_id, user=user, details=details, epoch=now,
                         mono_ns=time.monotonic_ns(), boot_id=self._boot_id)
        body_bytes = crypto.canonical_json(body)
        current, _ = self._keys.positions()
        next_key, next_public = crypto.ed25519_generate()
        try:
            pending = _Next(seq=current.seq + 1, prev_hash="", key=next_key, public=next_public)
            self._keys.set_pending(pending)
            header = Header(seq=current.seq, time=utc_time(now), prev_hash=current.prev_hash,
                            body_hash=sha256_hex(body_bytes), next_key=next_public)
            header_bytes = header.to_bytes()
            signature = crypto.ed25519_sign(current.key, header_bytes)
            try:
                files.append_durably(self.path, encode_line(header_bytes, signature, body_bytes))
            except OSError as exc:
                raise TrailError(f"The trail {self.path} cannot be written: {exc.strerror}.") from None
            digest = entry_hash(header_bytes, signature)
            self._keys.advance(_Next(seq=current.seq + 1, prev_hash=digest, key=next_key, public=next_public))
        finally:
            crypto.wipe(current.key)
            crypto.wipe(next_key)
        log.debug("trail entry %d (%s) appended", header.seq, event)
        return TrailEntry(header=header, header_bytes=header_bytes, signature=signature, body_bytes=body_bytes,
                          body=body)

    # --- checking the tail ----------------------------------------------------------

    def _read_tail(self) -> _Tail:
        try:
            with self.path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                start = max(0, size - (2 * MAX_LINE + 2))
                handle.seek(start)
                chunk = handle.read()
        except FileNotFoundError:
            return _Tail(None, 0, None)
        except OSError as exc:
            raise TrailError(f"The trail {self.path} cannot be read: {exc.strerror}.") from None
        end = chunk.rfind(b"\n")
        torn = len(chunk) - end - 1
        if end < 0:
            return _Tail(None, torn, None if start == 0 else "its last line is too long")
        begin = chunk.rfind(b"\n", 0, end) + 1
        if begin == 0 and start > 0:
            return _Tail(None, torn, "its last line is too long")
        try:
            return _Tail(parse_line(chunk[begin:end]), torn, None)
        except FormatError as exc:
            return _Tail(None, torn, f"its last line is not a valid entry ({exc})")

    def _settle(self) -> None:
        """Resolve an interrupted append, then check the tail against the keys."""
        current, pending = self._keys.positions()
        crypto.wipe(current.key)
        tail = self._read_tail()
        if pending is not None:
            entry = tail.entry
            if (not tail.torn and entry is not None and entry.seq == current.seq
                    and entry.header.next_key == pending.public and entry.header.prev_hash == current.prev_hash
                    and signature_valid(current.public, entry.header_bytes, entry.signature)):
                log.info("trail: completing interrupted append of entry %d", entry.seq)
                self._keys.advance(_Next(seq=current.seq + 1, prev_hash=entry.hash, key=pending.key,
                                         public=pending.public))
            else:
                if tail.torn:
                    log.info("trail: removing an unfinished entry left by an interrupted append")
                    self._truncate(tail.torn)
                self._keys.drop_pending()
            crypto.wipe(pending.key)
            current, _ = self._keys.positions()
            crypto.wipe(current.key)
            tail = self._read_tail()
        problem = self._mismatch(current, tail)
        if problem is None:
            if current.seq == 0:  # keys made, entry 0 never written (creation cut short)
                self._append(EventType.TRAIL_STARTED, None, {"root": crypto.key_fingerprint(self._keys.root)})
            return
        if tail.torn:
            # Keep the unexplained bytes as evidence, but end their line so ours stay whole.
            files.append_durably(self.path, b"\n")
        message = f"The trail {self.path} does not match its keys: {problem}"
        log.warning("%s", message)
        self.anomalies.append(message)
        self._append(EventType.TAMPERING_DETECTED, None, {
            "problem": problem,
            "expected_head": str(Head(current.seq - 1, current.prev_hash)) if current.seq else None,
            "found_head": str(Head(tail.entry.seq, tail.entry.hash)) if tail.entry else None,
        })

    def _mismatch(self, current: _Next, tail: _Tail) -> str | None:
        if tail.problem:
            return tail.problem
        if tail.torn:
            return "it ends with an unfinished line that no append explains"
        if current.seq == 0:
            # Keys made, entry 0 not yet written: the file must be empty.
            if tail.entry is not None:
                return "the keys are new but the file already holds entries"
            return None
        if tail.entry is None:
            return f"the file is missing or empty, but {current.seq} entries were written"
        if (tail.entry.seq != current.seq - 1 or tail.entry.hash != current.prev_hash
                or tail.entry.header.next_key != current.public):
            return (f"it ends at entry {tail.entry.seq}, but the last entry written was {current.seq - 1} "
                    "(a trail restored without its keys, or another laptop's trail)")
        return None

    def _truncate(self, torn: int) -> None:
        with self.path.open("r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.truncate(size - torn)
            handle.flush()
            os.fsync(handle.fileno())

    # --- reading ----------------------------------------------------------------

    def entries(self) -> Iterator[TrailEntry]:
        """Every entry, oldest first (parsed, not verified)."""
        yield from read_file(self.path)

    def verify(self, head: Head | None = None) -> TrailSummary:
        """Verify the whole trail against this laptop's root."""
        return verify_files([self.path], self._keys.root, head=head)
