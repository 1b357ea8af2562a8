"""The laptop's encrypted credential store: one SQLite file, every row sealed.

* WAL, ``synchronous=FULL``, ``secure_delete=ON``: a power cut leaves the old state or
  the new one, and deleted secrets do not linger in free pages.
* One writer at a time (``BEGIN IMMEDIATE``); every change is one transaction.
* Every row is AES-256-GCM under a key derived from the device key, with the table
  and row key as associated data: a row moved elsewhere fails to open.
* Users are found by ``HMAC(K_index, staff id)``: O(1), and the file shows no ids.

The byte layout is in docs/store-format.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sekisho import codec, crypto
from sekisho.codec import Fields
from sekisho.errors import (
    FormatError,
    GrantError,
    IntegrityError,
    StoreCorrupt,
    StoreError,
    StoreFormatTooNew,
    StoreNotFound,
    UserExists,
    UserNotFound,
    WrongDeviceKey,
)
from sekisho.store.grants import SealedGrant
from sekisho.store.keysource import DeviceKeySource
from sekisho.store.records import KeySlot, UserRecord, normalise_staff_id

log = logging.getLogger(__name__)

#: The on-disk format this code writes. See docs/store-format.md.
FORMAT_VERSION = 1
#: ``PRAGMA application_id``: "SEKI". Tells a Sekisho store from any other SQLite file.
APPLICATION_ID = 0x53454B49
#: Row plaintexts are padded to a multiple of this, so lengths say little about names.
ROW_PAD = 64
INDEX_LEN = 16
PAGE_SIZE = 16384

#: Ordinary rowid tables on purpose: a WITHOUT ROWID table spills any row over ~1 KB (a
#: grant) to overflow pages and wastes most of each page.
#: Migrations: ``MIGRATIONS[n]`` turns format ``n`` into ``n + 1`` inside the opening
#: transaction. Format 1 is the first; later formats add their step here.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE users (uidx BLOB PRIMARY KEY, row BLOB NOT NULL);
CREATE TABLE slots (uidx BLOB NOT NULL, slot_id INTEGER NOT NULL, row BLOB NOT NULL,
                    PRIMARY KEY (uidx, slot_id));
CREATE TABLE grants (uidx BLOB PRIMARY KEY, row BLOB NOT NULL);
CREATE TABLE state (uidx BLOB NOT NULL, name TEXT NOT NULL, row BLOB NOT NULL,
                    PRIMARY KEY (uidx, name));
"""


@contextlib.contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    """Map SQLite's errors to the store's, naming the file."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreError(
                f"The credential store {path} is busy: another Sekisho process is writing it.",
                advice="Wait a moment and try again; only the service should write the store.",
            ) from None
        if "unable to open" in text or "readonly" in text:
            raise StoreError(f"The credential store {path} cannot be opened for writing: {text}.") from None
        raise StoreCorrupt(f"The credential store {path} is damaged ({text}).") from None
    except sqlite3.DatabaseError as exc:
        raise StoreCorrupt(
            f"The credential store {path} is damaged or is not a Sekisho store ({exc})."
        ) from None


def _pad(data: bytes) -> bytes:
    # 4-byte length, data, zeros to a multiple of ROW_PAD.
    body = len(data).to_bytes(4, "big") + data
    return body + b"\x00" * (-len(body) % ROW_PAD)


def _unpad(data: bytes) -> bytes:
    n = int.from_bytes(data[:4], "big")
    if n > len(data) - 4 or any(data[4 + n :]):
        raise FormatError("row padding is malformed")
    return data[4 : 4 + n]


@dataclass(frozen=True, kw_only=True)
class ProvisionedUser:
    """One user as provisioning installs them: record, slots and (optionally) a grant."""

    record: UserRecord
    slots: list[KeySlot]
    grant: SealedGrant | None = None


class CredentialStore:
    """The encrypted store of every user provisioned on this laptop."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection, device_key: bytearray, salt: bytes, device_id: str
    ) -> None:
        self.path = path
        self._conn = conn
        self._k_rows = crypto.hkdf(device_key, salt=salt, info=crypto.label("rows"))
        self._k_index = crypto.hkdf(device_key, salt=salt, info=crypto.label("index"))
        self.device_id = device_id

    def __repr__(self) -> str:
        return f"<CredentialStore {self.path}>"

    # --- opening ------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # mode=rw: opening never creates a file; "create" made it with 0600 already.
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None, timeout=10.0)

    @staticmethod
    def _configure(conn: sqlite3.Connection, *, new: bool) -> None:
        if new:
            # Before the first table and before WAL: 16 KiB pages hold seven ~2 KB grant
            # rows each; at 4 KiB every grant would take a page of its own (bench/unlock.py).
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")

    @staticmethod
    def _key_check(device_key: bytes | bytearray, salt: bytes) -> bytes:
        return crypto.hkdf(device_key, salt=salt, info=crypto.label("key-check"))

    @classmethod
    def create(
        cls, path: Path, key_source: DeviceKeySource, *, device_id: str | None = None
    ) -> CredentialStore:
        """Make a new, empty store. Uses the source's key, creating one if it has none.

        A failed creation removes the file it made, so it can simply be run again.
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
        device_id = device_id or str(uuid.uuid4())
        conn = None
        try:
            with _sqlite_errors(path):
                conn = cls._connect(path)
                cls._configure(conn, new=True)
                conn.execute("BEGIN IMMEDIATE")
                # Inside the transaction: a creation cut short leaves no Sekisho header.
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                key_check = crypto.aead_encrypt(cls._key_check(device_key, salt), b"", crypto.label("key-check"))
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("format", str(FORMAT_VERSION).encode()), ("salt", salt), ("key_check", key_check)],
                )
                store = cls(path, conn, device_key, salt, device_id)
                store._put_meta("device", codec.encode({"id": device_id, "created": int(time.time())}))
                conn.execute("COMMIT")
        except BaseException:
            if conn is not None:
                conn.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            raise
        finally:
            crypto.wipe(device_key)
        return store

    @classmethod
    def open(cls, path: Path, key_source: DeviceKeySource) -> CredentialStore:
        """Open an existing store, migrating an older format inside one transaction."""
        path = Path(path)
        if not path.is_file():
            raise StoreNotFound(f"There is no credential store at {path}.")
        conn = None
        device_key = None
        try:
            with _sqlite_errors(path):
                conn = cls._connect(path)
                # Check what the file is before changing anything (WAL mode) in it.
                if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                    raise StoreCorrupt(f"{path} is not a Sekisho credential store.")
                cls._configure(conn, new=False)
                meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
                try:
                    version = int(meta["format"])
                    salt, key_check = meta["salt"], meta["key_check"]
                except (KeyError, ValueError):
                    raise StoreCorrupt(f"The credential store {path} has no valid header.") from None
                if version > FORMAT_VERSION:
                    raise StoreFormatTooNew(
                        f"The credential store {path} has format {version}; this Sekisho "
                        f"reads up to format {FORMAT_VERSION}."
                    )
                device_key = key_source.require()
                try:
                    crypto.aead_decrypt(cls._key_check(device_key, salt), key_check, crypto.label("key-check"))
                except crypto.AeadFailure:
                    raise WrongDeviceKey(
                        f"The device key from {key_source.description} does not open {path}."
                    ) from None
                store = cls(path, conn, device_key, salt, "")
                if version < FORMAT_VERSION:
                    store._migrate(version)
                device = Fields(codec.decode(store._get_meta("device"), what="device"), "device")
                store.device_id = device.text("id")
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        finally:
            crypto.wipe(device_key)
        return store

    def _migrate(self, version: int) -> None:
        with self._write():
            for step in range(version, FORMAT_VERSION):
                if step not in MIGRATIONS:
                    raise StoreFormatTooNew(f"No migration from store format {step}.")
                log.info("migrating credential store from format %d to %d", step, step + 1)
                MIGRATIONS[step](self._conn)
            self._conn.execute(
                "UPDATE meta SET value = ? WHERE name = 'format'", (str(FORMAT_VERSION).encode(),)
            )

    def close(self) -> None:
        with _sqlite_errors(self.path):
            self._conn.close()

    def __enter__(self) -> CredentialStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def checkpoint(self) -> None:
        """Fold the WAL into the main file and truncate it (after deleting secrets)."""
        with _sqlite_errors(self.path):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- rows ---------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back whole on any error."""
        with _sqlite_errors(self.path):
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
        with _sqlite_errors(self.path):
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
                f"A {table} record in {self.path} failed its integrity check "
                "(changed, moved or damaged)."
            ) from None

    def _put_meta(self, name: str, plaintext: bytes) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, self._seal("meta", name, plaintext)))

    def _get_meta(self, name: str) -> bytes:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise StoreCorrupt(f"The credential store {self.path} is missing its {name} record.")
        return self._unseal("meta", name, row[0])

    def user_index(self, user_id: str) -> bytes:
        """``HMAC(K_index, casefold(NFKC(staff id)))``, truncated to 128 bits."""
        key = normalise_staff_id(user_id).casefold().encode("utf-8")
        return crypto.hmac_sha256(self._k_index, key)[:INDEX_LEN]

    @staticmethod
    def _rk(uidx: bytes, *rest: object) -> str:
        return "/".join([uidx.hex(), *map(str, rest)])

    def _decode(self, table: str, row_key: str, blob: bytes, parse: Callable[[bytes], Any]) -> Any:
        try:
            return parse(self._unseal(table, row_key, blob))
        except FormatError:
            raise IntegrityError(f"A {table} record in {self.path} is malformed.") from None

    # --- users and slots ----------------------------------------------------

    def put_user(self, record: UserRecord, slots: list[KeySlot], *, replace: bool = False) -> None:
        """Add a user with their slots in one transaction (or replace them whole)."""
        self.provision([ProvisionedUser(record=record, slots=slots)], replace=replace)

    def provision(self, users: Iterable[ProvisionedUser], *, replace: bool = False) -> int:
        """Install many users, their slots and grants in one transaction: all or nothing."""
        count = 0
        with self._write() as c:
            for entry in users:
                self._put_user_in(c, entry.record, entry.slots, replace=replace)
                if entry.grant is not None:
                    self._put_grant_in(c, entry.grant)
                count += 1
        return count

    def _put_user_in(
        self, c: sqlite3.Connection, record: UserRecord, slots: list[KeySlot], *, replace: bool
    ) -> None:
        if len({s.slot_id for s in slots}) != len(slots):
            raise FormatError("Two slots share one slot id.")
        uidx = self.user_index(record.user_id)
        exists = c.execute("SELECT 1 FROM users WHERE uidx = ?", (uidx,)).fetchone()
        if exists and not replace:
            raise UserExists(f"Staff id {record.user_id} is already in this store.")
        c.execute("DELETE FROM slots WHERE uidx = ?", (uidx,))
        c.execute(
            "INSERT OR REPLACE INTO users VALUES (?, ?)",
            (uidx, self._seal("users", self._rk(uidx), record.to_cbor())),
        )
        c.executemany(
            "INSERT INTO slots VALUES (?, ?, ?)",
            [(uidx, s.slot_id, self._seal("slots", self._rk(uidx, s.slot_id), s.to_cbor())) for s in slots],
        )

    def remove_user(self, user_id: str) -> None:
        uidx = self.user_index(user_id)
        with self._write() as c:
            if c.execute("DELETE FROM users WHERE uidx = ?", (uidx,)).rowcount == 0:
                raise UserNotFound("There is no such staff id on this laptop.")
            for table in ("slots", "grants", "state"):
                c.execute(f"DELETE FROM {table} WHERE uidx = ?", (uidx,))  # noqa: S608 - fixed names

    def get_user(self, user_id: str) -> tuple[UserRecord, list[KeySlot]]:
        """A user's record and slots, decrypted and checked, in one snapshot."""
        uidx = self.user_index(user_id)
        with self._read() as c:
            row = c.execute("SELECT row FROM users WHERE uidx = ?", (uidx,)).fetchone()
            if row is None:
                raise UserNotFound("There is no such staff id on this laptop.")
            slot_rows = c.execute(
                "SELECT slot_id, row FROM slots WHERE uidx = ? ORDER BY slot_id", (uidx,)
            ).fetchall()
        # The row keys in the associated data bind each record to this user and slot id.
        record: UserRecord = self._decode("users", self._rk(uidx), row[0], UserRecord.from_cbor)
        slots = [self._decode("slots", self._rk(uidx, sid), blob, KeySlot.from_cbor) for sid, blob in slot_rows]
        return record, slots

    def user_count(self) -> int:
        with _sqlite_errors(self.path):
            count: int = self._conn.execute("SELECT count(*) FROM users").fetchone()[0]
        return count

    def user_ids(self) -> list[str]:
        """Every staff id (decrypts every record: for IT tools, not the logon path)."""
        with self._read() as c:
            rows = c.execute("SELECT uidx, row FROM users").fetchall()
        return sorted(
            self._decode("users", self._rk(uidx), blob, UserRecord.from_cbor).user_id
            for uidx, blob in rows
        )

    # --- grants ---------------------------------------------------------------

    def put_grant(self, sealed: SealedGrant) -> None:
        """Install a grant; refuse one older than the installed grant (rollback)."""
        with self._write() as c:
            self._put_grant_in(c, sealed)

    def _put_grant_in(self, c: sqlite3.Connection, sealed: SealedGrant) -> None:
        if sealed.device_id != self.device_id:
            raise GrantError("This grant was issued for another laptop.")
        uidx = self.user_index(sealed.user_id)
        rk = self._rk(uidx)
        if c.execute("SELECT 1 FROM users WHERE uidx = ?", (uidx,)).fetchone() is None:
            raise UserNotFound("There is no such staff id on this laptop.")
        row = c.execute("SELECT row FROM grants WHERE uidx = ?", (uidx,)).fetchone()
        if row is not None:
            current: SealedGrant = self._decode("grants", rk, row[0], SealedGrant.from_cbor)
            if sealed.serial < current.serial:
                raise GrantError(f"Grant serial {sealed.serial} is older than the installed {current.serial}.")
        c.execute("INSERT OR REPLACE INTO grants VALUES (?, ?)", (uidx, self._seal("grants", rk, sealed.to_cbor())))

    def get_grant(self, user_id: str) -> SealedGrant:
        uidx = self.user_index(user_id)
        with _sqlite_errors(self.path):
            row = self._conn.execute("SELECT row FROM grants WHERE uidx = ?", (uidx,)).fetchone()
        if row is None:
            raise GrantError("There is no grant for this staff id on this laptop.")
        sealed: SealedGrant = self._decode("grants", self._rk(uidx), row[0], SealedGrant.from_cbor)
        return sealed

    # --- per-user factor state (TOTP steps; later failure counters) -------------

    def _state(self, c: sqlite3.Connection, uidx: bytes, name: str) -> dict[str, Any] | None:
        row = c.execute("SELECT row FROM state WHERE uidx = ? AND name = ?", (uidx, name)).fetchone()
        if row is None:
            return None
        state: dict[str, Any] = self._decode(
            "state", self._rk(uidx, name), row[0], lambda b: codec.decode(b, what="state")
        )
        return state

    def read_state(self, user_id: str, name: str) -> dict[str, Any] | None:
        with _sqlite_errors(self.path):
            return self._state(self._conn, self.user_index(user_id), name)

    def update_state(
        self, user_id: str, name: str, update: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        """Read, change and write one state record in a single write transaction."""
        uidx = self.user_index(user_id)
        with self._write() as c:
            new = update(self._state(c, uidx, name))
            c.execute(
                "INSERT OR REPLACE INTO state VALUES (?, ?, ?)",
                (uidx, name, self._seal("state", self._rk(uidx, name), codec.encode(new))),
            )
        return new
