"""The registry on the enrolment station: users, their enrolled slots, roles, devices,
recovery codes, check-ins and revocations, in one SQLite file (WAL, synchronous=FULL,
every change one transaction).

No factor secret is kept: a slot holds the user's identity *wrapped* under factors only
the user has. Slots (a ``pin+totp`` slot carries its TOTP seed), APN passwords, extension
keys and recovery codes are encrypted under the **station key** (AES-256-GCM, the row's
table and key as associated data); the station key and IT's signing key come from the
OS keyring (or, for tests and the demo, plain files that say so).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sekisho import codec
from sekisho.errors import SekishoError
from sekisho.store.keysource import DeviceKeySource
from sekisho.store.records import KeySlot, UserRecord
from sekisho.store.sealed import SealedDatabase
from sekisho.trail import EventType, Trail

APPLICATION_ID = 0x534B5247  # "SKRG"
FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE users (id TEXT PRIMARY KEY, record BLOB NOT NULL, enabled INTEGER NOT NULL, created INTEGER NOT NULL);
CREATE TABLE slots (user_id TEXT NOT NULL, slot_id INTEGER NOT NULL, kind TEXT NOT NULL,
                    aaguid TEXT, slot BLOB NOT NULL, created INTEGER NOT NULL, PRIMARY KEY (user_id, slot_id));
CREATE TABLE roles (name TEXT PRIMARY KEY, apps TEXT NOT NULL, citrix TEXT NOT NULL);
CREATE TABLE devices (id TEXT PRIMARY KEY, request BLOB NOT NULL, fingerprint TEXT NOT NULL, serial INTEGER NOT NULL,
                      users TEXT NOT NULL, sim TEXT NOT NULL, secrets BLOB NOT NULL, last_head TEXT,
                      created INTEGER NOT NULL, last_checkin INTEGER, retired INTEGER);
CREATE TABLE recovery (device_id TEXT NOT NULL, user_id TEXT NOT NULL, key_id TEXT NOT NULL, code BLOB NOT NULL,
                       issued INTEGER, PRIMARY KEY (device_id, user_id, key_id));
CREATE TABLE checkins (device_id TEXT NOT NULL, at INTEGER NOT NULL, head TEXT NOT NULL, trail BLOB NOT NULL,
                       anomaly TEXT);
CREATE TABLE revocations (user_id TEXT NOT NULL, device_id TEXT, at INTEGER NOT NULL, delivered INTEGER);
"""


class RegistryError(SekishoError):
    """The registry refused or cannot do what was asked."""


@dataclass(frozen=True)
class DeviceRow:
    """A laptop as the registry knows it."""

    device_id: str
    request: bytes
    fingerprint: str
    serial: int
    delivered: dict[str, int]  # user id -> the record revision the laptop holds
    sim: dict[str, str]
    last_head: str | None
    last_checkin: int | None

    @property
    def users(self) -> list[str]:
        return sorted(self.delivered)


class Registry(SealedDatabase):
    """The station's registry: a sealed SQLite file whose secret fields are sealed rows."""

    WHAT = "registry"
    APPLICATION_ID = APPLICATION_ID
    FORMAT_VERSION = FORMAT_VERSION
    MIGRATIONS = {}  # noqa: RUF012 - none yet
    SCHEMA = _SCHEMA
    ROWS_LABEL = "registry"

    #: IT's own signed log (``it-log.jsonl``): every change and every code issued goes there.
    log: Trail | None = None

    @classmethod
    def create(cls, path: Path, station_keys: DeviceKeySource) -> Registry:
        """A new, empty registry; the station key is made in ``station_keys`` if it has none."""
        return cls._create(path, station_keys, lambda registry: None)

    def record(self, event: EventType, user: str | None = None, **details: Any) -> None:
        """Append to IT's log, if one is attached (never a secret: names and ids only)."""
        if self.log is not None:
            self.log.append(event, user=user, details={k: v for k, v in details.items() if v is not None})

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        super().close()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._write()

    def seal(self, table: str, key: str, data: bytes) -> bytes:
        return self._seal(table, key, data)

    def unseal(self, table: str, key: str, blob: bytes) -> bytes:
        return self._unseal(table, key, blob)

    # --- users ------------------------------------------------------------------------------

    def add_user(self, record: UserRecord) -> None:
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM users WHERE id = ?", (record.user_id,)).fetchone():
                raise RegistryError(f"Staff id {record.user_id} is already registered.")
            c.execute("INSERT INTO users VALUES (?, ?, 1, ?)", (record.user_id, record.to_cbor(), int(time.time())))
        self.record(EventType.USER_ADDED, record.user_id, department=record.department, roles=list(record.roles))

    def user(self, user_id: str) -> tuple[UserRecord, bool]:
        row = self._conn.execute("SELECT record, enabled FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None:
            raise RegistryError(f"There is no staff id {user_id} in the registry.")
        return UserRecord.from_cbor(row[0]), bool(row[1])

    def users(self) -> list[tuple[UserRecord, bool, list[str]]]:
        out = []
        for rec, enabled in self._conn.execute("SELECT record, enabled FROM users ORDER BY id").fetchall():
            record = UserRecord.from_cbor(rec)
            kinds = [k for (k,) in self._conn.execute("SELECT kind FROM slots WHERE user_id = ? ORDER BY slot_id",
                                                       (record.user_id,))]
            out.append((record, bool(enabled), kinds))
        return out

    def set_enrolment(self, record: UserRecord, slots: list[KeySlot]) -> None:
        """A user's new identity and slots, replacing the old ones: one transaction."""
        with self.transaction() as c:
            c.execute("UPDATE users SET record = ? WHERE id = ?", (record.to_cbor(), record.user_id))
            c.execute("DELETE FROM slots WHERE user_id = ?", (record.user_id,))
            for slot in slots:
                aaguid = slot.params.get("aaguid")
                c.execute("INSERT INTO slots VALUES (?, ?, ?, ?, ?, ?)", (
                    record.user_id, slot.slot_id, slot.kind.value, aaguid.hex() if isinstance(aaguid, bytes) else None,
                    self.seal("slots", f"{record.user_id}/{slot.slot_id}", slot.to_cbor()), int(time.time())))
        self.record(EventType.USER_ENROLLED, record.user_id, slots=[s.kind.value for s in slots],
                    revision=record.revision)

    def slots(self, user_id: str) -> list[KeySlot]:
        return [KeySlot.from_cbor(self.unseal("slots", f"{user_id}/{sid}", blob)) for sid, blob in
                self._conn.execute("SELECT slot_id, slot FROM slots WHERE user_id = ? ORDER BY slot_id", (user_id,))]

    def revoke_slot(self, user_id: str, slot_id: int) -> None:
        with self.transaction() as c:
            if c.execute("DELETE FROM slots WHERE user_id = ? AND slot_id = ?", (user_id, slot_id)).rowcount == 0:
                raise RegistryError(f"{user_id} has no slot {slot_id}.")
            # A new revision: each laptop receives the remaining slots at its next check-in.
            row = c.execute("SELECT record FROM users WHERE id = ?", (user_id,)).fetchone()
            record = UserRecord.from_cbor(row[0])
            c.execute("UPDATE users SET record = ? WHERE id = ?",
                      (replace(record, revision=record.revision + 1).to_cbor(), user_id))
        self.record(EventType.FACTOR_REVOKED, user_id, slot=slot_id)

    def set_enabled(self, user_id: str, enabled: bool) -> None:
        with self.transaction() as c:
            if c.execute("UPDATE users SET enabled = ? WHERE id = ?", (int(enabled), user_id)).rowcount == 0:
                raise RegistryError(f"There is no staff id {user_id} in the registry.")
            if not enabled:
                c.execute("INSERT INTO revocations VALUES (?, NULL, ?, NULL)", (user_id, int(time.time())))
        self.record(EventType.USER_ENABLED if enabled else EventType.USER_DISABLED, user_id)

    # --- roles -----------------------------------------------------------------------------

    def set_role(self, name: str, apps: list[str], citrix: dict[str, str]) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO roles VALUES (?, ?, ?)",
                      (name, json.dumps(apps, ensure_ascii=False), json.dumps(citrix, ensure_ascii=False)))
        self.record(EventType.ROLE_SET, role=name, apps=list(apps))

    def role_names(self) -> list[str]:
        return [n for (n,) in self._conn.execute("SELECT name FROM roles ORDER BY name")]

    def role(self, name: str) -> tuple[list[str], dict[str, str]]:
        row = self._conn.execute("SELECT apps, citrix FROM roles WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise RegistryError(f"There is no role {name!r}; define it with `sekisho-enroll role set`.")
        return json.loads(row[0]), json.loads(row[1])

    # --- devices -----------------------------------------------------------------------------

    def device(self, device_id: str) -> DeviceRow | None:
        row = self._conn.execute("SELECT id, request, fingerprint, serial, users, sim, last_head, last_checkin "
                                 "FROM devices WHERE id = ?", (device_id,)).fetchone()
        if row is None:
            return None
        return DeviceRow(device_id=row[0], request=row[1], fingerprint=row[2], serial=row[3],
                         delivered=json.loads(row[4]), sim=json.loads(row[5]), last_head=row[6],
                         last_checkin=row[7])

    def retire_device(self, device_id: str, reason: str) -> None:
        """A lost or decommissioned laptop: never provisioned or checked in again."""
        with self.transaction() as c:
            if c.execute("UPDATE devices SET retired = strftime('%s','now') WHERE id = ?", (device_id,)).rowcount == 0:
                raise RegistryError(f"There is no device {device_id} in the registry.")
        self.record(EventType.DEVICE_RETIRED, device=device_id, reason=reason)

    def is_retired(self, device_id: str) -> bool:
        row = self._conn.execute("SELECT retired FROM devices WHERE id = ?", (device_id,)).fetchone()
        return bool(row and row[0])

    def device_secrets(self, device_id: str) -> dict[str, Any]:
        row = self._conn.execute("SELECT secrets FROM devices WHERE id = ?", (device_id,)).fetchone()
        if row is None:
            raise RegistryError(f"There is no device {device_id} in the registry.")
        return codec.decode(self.unseal("devices", device_id, row[0]), what="device secrets")

    def devices(self) -> list[DeviceRow]:
        ids = [d for (d,) in self._conn.execute("SELECT id FROM devices ORDER BY id")]
        return [row for d in ids if (row := self.device(d)) is not None]

    def revoked_since(self, device: DeviceRow) -> list[str]:
        """Users revoked (disabled) after this device's last bundle who are on it."""
        revoked = {u for (u,) in self._conn.execute("SELECT user_id FROM revocations")}
        return [u for u in device.users if u in revoked]
