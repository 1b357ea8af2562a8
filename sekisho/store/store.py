"""The laptop's encrypted credential store: one sealed SQLite file (``sealed.py``).

* Users are found by ``HMAC(K_index, staff id)``: O(1), and the file shows no ids.

The byte layout is in docs/store-format.md.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sekisho import codec, crypto
from sekisho.codec import Fields
from sekisho.errors import (
    FormatError,
    GrantError,
    UserExists,
    UserNotFound,
)
from sekisho.store.grants import SealedGrant
from sekisho.store.keysource import DeviceKeySource
from sekisho.store.records import KeySlot, UserRecord, normalise_staff_id
from sekisho.store.sealed import SealedDatabase

log = logging.getLogger(__name__)

#: The on-disk format this code writes. See docs/store-format.md.
FORMAT_VERSION = 1
#: ``PRAGMA application_id``: "SEKI". Tells a Sekisho store from any other SQLite file.
APPLICATION_ID = 0x53454B49
INDEX_LEN = 16
#: The owner of laptop-wide state records: no user's HMAC index is all zeros (2^-128).
LAPTOP_INDEX = bytes(INDEX_LEN)
#: 16 KiB pages hold seven ~2 KB grant rows each; at 4 KiB every grant would take a page
#: of its own (bench/unlock.py).
PAGE_SIZE = 16384

#: Migrations: ``MIGRATIONS[n]`` turns format ``n`` into ``n + 1`` inside the opening
#: transaction. Format 1 is the first; later formats add their step here.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

#: Ordinary rowid tables on purpose: a WITHOUT ROWID table spills any row over ~1 KB (a
#: grant) to overflow pages and wastes most of each page.
_SCHEMA = """
CREATE TABLE users (uidx BLOB PRIMARY KEY, row BLOB NOT NULL);
CREATE TABLE slots (uidx BLOB NOT NULL, slot_id INTEGER NOT NULL, row BLOB NOT NULL,
                    PRIMARY KEY (uidx, slot_id));
CREATE TABLE grants (uidx BLOB PRIMARY KEY, row BLOB NOT NULL);
CREATE TABLE state (uidx BLOB NOT NULL, name TEXT NOT NULL, row BLOB NOT NULL,
                    PRIMARY KEY (uidx, name));
"""


@dataclass(frozen=True, kw_only=True)
class ProvisionedUser:
    """One user as provisioning installs them: record, slots and (optionally) a grant."""

    record: UserRecord
    slots: list[KeySlot]
    grant: SealedGrant | None = None


class CredentialStore(SealedDatabase):
    """The encrypted store of every user provisioned on this laptop."""

    WHAT = "credential store"
    APPLICATION_ID = APPLICATION_ID
    FORMAT_VERSION = FORMAT_VERSION
    MIGRATIONS = MIGRATIONS
    SCHEMA = _SCHEMA
    ROWS_LABEL = "rows"
    PAGE_SIZE = PAGE_SIZE

    device_id: str

    def _derive(self, device_key: bytes | bytearray, salt: bytes) -> None:
        self._k_index = crypto.hkdf(device_key, salt=salt, info=crypto.label("index"))

    @classmethod
    def create(cls, path: Path, key_source: DeviceKeySource, *, device_id: str | None = None) -> CredentialStore:
        """Make a new, empty store. Uses the source's key, creating one if it has none.

        A failed creation removes the file it made, so it can simply be run again.
        """
        device_id = device_id or str(uuid.uuid4())

        def setup(store: CredentialStore) -> None:
            store.device_id = device_id
            store._put_meta("device", codec.encode({"id": device_id, "created": int(time.time())}))

        return cls._create(path, key_source, setup)

    def _loaded(self) -> None:
        device = Fields(codec.decode(self._get_meta("device"), what="device"), "device")
        self.device_id = device.text("id")

    def user_index(self, user_id: str) -> bytes:
        """``HMAC(K_index, casefold(NFKC(staff id)))``, truncated to 128 bits."""
        key = normalise_staff_id(user_id).casefold().encode("utf-8")
        return crypto.hmac_sha256(self._k_index, key)[:INDEX_LEN]

    @staticmethod
    def _rk(uidx: bytes, *rest: object) -> str:
        return "/".join([uidx.hex(), *map(str, rest)])

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

    def apply(
        self,
        *,
        users: Iterable[ProvisionedUser] = (),
        remove: Iterable[str] = (),
        states: Mapping[tuple[str | None, str], Callable[[dict[str, Any] | None], dict[str, Any]]] | None = None,
    ) -> None:
        """Install or replace users, remove users and update state records: one transaction.

        Replacing a user keeps their state records (failure counts, TOTP steps); removing
        one deletes everything of theirs. A removed id that is not here is ignored.
        """
        with self._write() as c:
            for entry in users:
                self._put_user_in(c, entry.record, entry.slots, replace=True)
                if entry.grant is not None:
                    self._put_grant_in(c, entry.grant)
            for user_id in remove:
                uidx = self.user_index(user_id)
                for table in ("users", "slots", "grants", "state"):
                    c.execute(f"DELETE FROM {table} WHERE uidx = ?", (uidx,))  # noqa: S608 - fixed names
            for (owner, name), update in (states or {}).items():
                uidx = self._state_owner(owner)
                new = update(self._state(c, uidx, name))
                c.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?)",
                          (uidx, name, self._seal("state", self._rk(uidx, name), codec.encode(new))))

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
        with self._errors():
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
        with self._errors():
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

    def read_state(self, user_id: str | None, name: str) -> dict[str, Any] | None:
        """A state record of ``user_id``, or of the laptop itself when ``user_id`` is None."""
        with self._errors():
            return self._state(self._conn, self._state_owner(user_id), name)

    def _state_owner(self, user_id: str | None) -> bytes:
        return LAPTOP_INDEX if user_id is None else self.user_index(user_id)

    def update_state(
        self, user_id: str | None, name: str, update: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        """Read, change and write one state record in a single write transaction.

        ``user_id`` None: a laptop-wide record (clock, lease, laptop-wide limits).
        """
        uidx = self._state_owner(user_id)
        with self._write() as c:
            new = update(self._state(c, uidx, name))
            c.execute(
                "INSERT OR REPLACE INTO state VALUES (?, ?, ?)",
                (uidx, name, self._seal("state", self._rk(uidx, name), codec.encode(new))),
            )
        return new
