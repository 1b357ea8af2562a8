"""An SQLite file whose every row is sealed under a key derived from the device key.

The credential store and the trail's key file are both one of these:

* WAL, ``synchronous=FULL``, ``secure_delete=ON``: a power cut leaves the old state or
  the new one, and deleted secrets do not linger in free pages.
* One writer at a time (``BEGIN IMMEDIATE``); every change is one transaction.
* Every row is AES-256-GCM under ``HKDF(K_dev, salt, rows label)``, with the table and
  row key as associated data: a row moved elsewhere fails to open.
* ``PRAGMA application_id`` tells each kind of file from any other SQLite file, and a
  key-check record tells a wrong device key from tampering.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Self

from sekisho import crypto
from sekisho.errors import (
    FormatError,
    IntegrityError,
    StoreCorrupt,
    StoreError,
    StoreFormatTooNew,
    StoreNotFound,
    WrongDeviceKey,
)
from sekisho.store.keysource import DeviceKeySource

log = logging.getLogger(__name__)

#: Row plaintexts are padded to a multiple of this, so lengths say little about names.
ROW_PAD = 64


@contextlib.contextmanager
def sqlite_errors(path: Path, what: str) -> Iterator[None]:
    """Map SQLite's errors to the store's, naming the file."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreError(
                f"The {what} {path} is busy: another Sekisho process is writing it.",
                advice="Wait a moment and try again; only the service should write it.",
            ) from None
        if "unable to open" in text or "readonly" in text:
            raise StoreError(f"The {what} {path} cannot be opened for writing: {text}.") from None
        raise StoreCorrupt(f"The {what} {path} is damaged ({text}).") from None
    except sqlite3.DatabaseError as exc:
        raise StoreCorrupt(f"The {what} {path} is damaged or is not a Sekisho {what} ({exc}).") from None


def _pad(data: bytes) -> bytes:
    # 4-byte length, data, zeros to a multiple of ROW_PAD.
    body = len(data).to_bytes(4, "big") + data
    return body + b"\x00" * (-len(body) % ROW_PAD)


def _unpad(data: bytes) -> bytes:
    n = int.from_bytes(data[:4], "big")
    if n > len(data) - 4 or any(data[4 + n :]):
        raise FormatError("row padding is malformed")
    return data[4 : 4 + n]


class SealedDatabase:
    """Base of the sealed SQLite files. Subclasses set the class attributes below."""

    #: What the file is called in messages ("credential store").
    WHAT: ClassVar[str]
    #: ``PRAGMA application_id`` of this kind of file.
    APPLICATION_ID: ClassVar[int]
    #: The format this code writes; ``MIGRATIONS[n]`` turns format n into n + 1.
    FORMAT_VERSION: ClassVar[int]
    MIGRATIONS: ClassVar[dict[int, Callable[[sqlite3.Connection], None]]]
    #: Tables besides ``meta``.
    SCHEMA: ClassVar[str]
    #: The HKDF label of the row key (``sekisho/v1/<label>``).
    ROWS_LABEL: ClassVar[str]
    PAGE_SIZE: ClassVar[int | None] = None

    def __init__(self, path: Path, conn: sqlite3.Connection, device_key: bytes | bytearray, salt: bytes) -> None:
        self.path = path
        self._conn = conn
        # One connection, used from the service's threads one at a time: every access
        # (a statement or a whole transaction) holds this lock.
        self._lock = threading.RLock()
        self._k_rows = crypto.hkdf(device_key, salt=salt, info=crypto.label(self.ROWS_LABEL))
        self._derive(device_key, salt)

    def _derive(self, device_key: bytes | bytearray, salt: bytes) -> None:
        """Derive further sub-keys (a hook; the device key is wiped after it returns)."""

    def _initialise(self) -> None:
        """Write the first records inside the creating transaction (a hook)."""

    def _loaded(self) -> None:
        """Read what the object needs after opening (a hook)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"

    # --- opening ------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # mode=rw: opening never creates a file; "create" made it with 0600 already.
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None, timeout=10.0,
                               check_same_thread=False)

    @classmethod
    def _configure(cls, conn: sqlite3.Connection, *, new: bool) -> None:
        if new and cls.PAGE_SIZE:
            conn.execute(f"PRAGMA page_size={cls.PAGE_SIZE}")  # before the first table and WAL
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")

    @staticmethod
    def _key_check(device_key: bytes | bytearray, salt: bytes) -> bytes:
        return crypto.hkdf(device_key, salt=salt, info=crypto.label("key-check"))

    @classmethod
    def _create(cls, path: Path, key_source: DeviceKeySource, setup: Callable[[Self], None]) -> Self:
        """Make a new file: ``setup`` runs inside the creating transaction.

        A failed creation removes the files it made, so it can simply be run again.
        """
        path = Path(path)
        device_key = key_source.load() or key_source.create()
        try:
            # Owner-only permissions before SQLite touches the file; the WAL and
            # shared-memory files inherit them.
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            crypto.wipe(device_key)
            raise StoreError(f"A file already exists at {path}; refusing to overwrite it.") from None
        os.close(fd)
        salt = crypto.random_bytes(32)
        conn = None
        try:
            with sqlite_errors(path, cls.WHAT):
                conn = cls._connect(path)
                cls._configure(conn, new=True)
                conn.execute("BEGIN IMMEDIATE")
                # Inside the transaction: a creation cut short leaves no Sekisho header.
                conn.execute(f"PRAGMA application_id={cls.APPLICATION_ID}")
                conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
                for statement in filter(str.strip, cls.SCHEMA.split(";")):
                    conn.execute(statement)
                key_check = crypto.aead_encrypt(cls._key_check(device_key, salt), b"", crypto.label("key-check"))
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("format", str(cls.FORMAT_VERSION).encode()), ("salt", salt), ("key_check", key_check)],
                )
                db = cls(path, conn, device_key, salt)
                setup(db)
                conn.execute("COMMIT")
        except BaseException:
            if conn is not None:
                conn.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            raise
        finally:
            crypto.wipe(device_key)
        return db

    @classmethod
    def open(cls, path: Path, key_source: DeviceKeySource) -> Self:
        """Open an existing file, migrating an older format inside one transaction."""
        path = Path(path)
        if not path.is_file():
            raise StoreNotFound(f"There is no {cls.WHAT} at {path}.")
        conn = None
        device_key = None
        try:
            with sqlite_errors(path, cls.WHAT):
                conn = cls._connect(path)
                # Check what the file is before changing anything (WAL mode) in it.
                if conn.execute("PRAGMA application_id").fetchone()[0] != cls.APPLICATION_ID:
                    raise StoreCorrupt(f"{path} is not a Sekisho {cls.WHAT}.")
                cls._configure(conn, new=False)
                meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
                try:
                    version = int(meta["format"])
                    salt, key_check = meta["salt"], meta["key_check"]
                except (KeyError, ValueError):
                    raise StoreCorrupt(f"The {cls.WHAT} {path} has no valid header.") from None
                if version > cls.FORMAT_VERSION:
                    raise StoreFormatTooNew(
                        f"The {cls.WHAT} {path} has format {version}; this Sekisho "
                        f"reads up to format {cls.FORMAT_VERSION}."
                    )
                device_key = key_source.require()
                try:
                    crypto.aead_decrypt(cls._key_check(device_key, salt), key_check, crypto.label("key-check"))
                except crypto.AeadFailure:
                    raise WrongDeviceKey(
                        f"The device key from {key_source.description} does not open {path}."
                    ) from None
                db = cls(path, conn, device_key, salt)
                if version < cls.FORMAT_VERSION:
                    db._migrate(version)
                db._loaded()
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        finally:
            crypto.wipe(device_key)
        return db

    def _migrate(self, version: int) -> None:
        with self._write():
            for step in range(version, self.FORMAT_VERSION):
                if step not in self.MIGRATIONS:
                    raise StoreFormatTooNew(f"No migration from {self.WHAT} format {step}.")
                log.info("migrating %s from format %d to %d", self.WHAT, step, step + 1)
                self.MIGRATIONS[step](self._conn)
            self._conn.execute(
                "UPDATE meta SET value = ? WHERE name = 'format'", (str(self.FORMAT_VERSION).encode(),)
            )

    def close(self) -> None:
        with self._errors():
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def checkpoint(self) -> None:
        """Fold the WAL into the main file and truncate it (after deleting secrets)."""
        with self._errors():
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- rows ---------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        with self._lock, sqlite_errors(self.path, self.WHAT):
            yield

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back whole on any error."""
        with self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads."""
        with self._errors():
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    @staticmethod
    def _aad(table: str, row_key: str) -> bytes:
        return crypto.label("row", table) + b"/" + row_key.encode("utf-8")

    def _seal(self, table: str, row_key: str, plaintext: bytes) -> bytes:
        return crypto.aead_encrypt(self._k_rows, _pad(plaintext), self._aad(table, row_key))

    def _unseal(self, table: str, row_key: str, blob: bytes) -> bytes:
        try:
            return _unpad(crypto.aead_decrypt(self._k_rows, blob, self._aad(table, row_key)))
        except (crypto.AeadFailure, FormatError):
            raise IntegrityError(
                f"A {table} record in {self.path} failed its integrity check (changed, moved or damaged)."
            ) from None

    def _decode(self, table: str, row_key: str, blob: bytes, parse: Callable[[bytes], Any]) -> Any:
        try:
            return parse(self._unseal(table, row_key, blob))
        except FormatError:
            raise IntegrityError(f"A {table} record in {self.path} is malformed.") from None

    def _put_meta(self, name: str, plaintext: bytes) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, self._seal("meta", name, plaintext)))

    def _get_meta(self, name: str) -> bytes:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise StoreCorrupt(f"The {self.WHAT} {self.path} is missing its {name} record.")
        return self._unseal("meta", name, row[0])
