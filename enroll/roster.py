"""Staff lists from where they already live: CSV as Japanese Excel writes it, and
Active Directory / OpenLDAP.

CSV: UTF-8, UTF-8 with a byte-order mark, or CP932 (Shift_JIS with the NEC and IBM
extension characters such as 髙 and 﨑). The encoding is detected by trying each strictly
— a file that is none of them is refused, never guessed into mojibake. Columns are found
by their (Japanese or English) header; ``--map field=header`` names others. Half-width
kana are normalised (ｻﾄｳ → サトウ). Every bad line is reported with its number and reason,
and a file with any bad line imports nothing.

Importing adds new staff, updates changed ones, and **reports** leavers (staff in the
registry but not in the roster): their records are never deleted silently.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from enroll.registry import Registry
from sekisho.errors import SekishoError
from sekisho.store.records import UserRecord
from sekisho.trail import EventType

FIELDS = ("id", "name", "kana", "department", "roles")
#: Header names recognised for each field (compared after NFKC and case folding).
HEADERS: dict[str, tuple[str, ...]] = {
    "id": ("職員番号", "職員id", "職員コード", "社員番号", "id", "staff_id", "user_id", "samaccountname"),
    "name": ("氏名", "名前", "表示名", "name", "display_name", "displayname"),
    "kana": ("フリガナ", "ふりがな", "カナ", "氏名カナ", "カナ氏名", "kana"),
    "department": ("所属", "部署", "所属課", "課", "department"),
    "roles": ("役割", "ロール", "権限", "業務", "roles", "role"),
}
_ROLE_SPLIT = re.compile(r"[;,、/・\s]+")


class RosterError(SekishoError):
    """The roster could not be read, or has bad lines (nothing was imported)."""

    advice = "Correct the lines named and import the file again; nothing was changed."


@dataclass(frozen=True)
class RosterEntry:
    user_id: str
    name: str
    kana: str = ""
    department: str = ""
    roles: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str


@dataclass
class Roster:
    entries: list[RosterEntry]
    rejections: list[Rejection] = field(default_factory=list)
    encoding: str = ""
    source: str = ""


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip()


def decode(data: bytes) -> tuple[str, str]:
    """The text and the encoding it was in: UTF-8 (with or without BOM) or CP932."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8"), "utf-8-sig"
    for encoding in ("utf-8", "cp932"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise RosterError("The file is neither UTF-8 nor CP932 (Shift_JIS as Excel writes it).",
                      advice="Save it from Excel as 'CSV UTF-8' or 'CSV (comma delimited)' and try again.")


def read_csv(data: bytes, *, mapping: Mapping[str, str] | None = None, known_roles: Iterable[str] | None = None,
             source: str = "") -> Roster:
    text, encoding = decode(data)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        raise RosterError(f"{source or 'The roster'} is empty.")
    header = [_norm(h).casefold() for h in rows[0]]
    columns: dict[str, int] = {}
    for name in FIELDS:
        wanted = [_norm(mapping[name]).casefold()] if mapping and name in mapping else \
            [_norm(h).casefold() for h in HEADERS[name]]
        for index, heading in enumerate(header):
            if heading in wanted:
                columns[name] = index
                break
    missing = [n for n in ("id", "name") if n not in columns]
    if missing:
        raise RosterError(f"No column for {', '.join(missing)} in the header ({', '.join(rows[0])}).",
                          advice="Name the columns with --map, e.g. --map id=社員番号 --map name=氏名.")
    roles_known = set(known_roles) if known_roles is not None else None
    entries: list[RosterEntry] = []
    rejections: list[Rejection] = []
    first_line: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank lines are not staff
        if len(row) < len(header):
            rejections.append(Rejection(number, f"short line: {len(row)} of {len(header)} columns"))
            continue
        values = {name: _norm(row[i]) for name, i in columns.items()}
        user_id = values["id"]
        if not user_id:
            rejections.append(Rejection(number, "empty id"))
            continue
        if user_id.casefold() in first_line:
            rejections.append(Rejection(number, f"duplicate id {user_id} (first on line "
                                                f"{first_line[user_id.casefold()]})"))
            continue
        first_line[user_id.casefold()] = number
        if not values["name"]:
            rejections.append(Rejection(number, f"{user_id}: empty name"))
            continue
        roles = tuple(r for r in _ROLE_SPLIT.split(values.get("roles", "")) if r)
        unknown = [r for r in roles if roles_known is not None and r not in roles_known]
        if unknown:
            rejections.append(Rejection(number, f"{user_id}: unknown role {', '.join(unknown)}"))
            continue
        entries.append(RosterEntry(user_id=user_id, name=values["name"], kana=values.get("kana", ""),
                                   department=values.get("department", ""), roles=roles, line=number))
    return Roster(entries=entries, rejections=rejections, encoding=encoding, source=source)


# --- comparing with the registry and importing --------------------------------------------------------


@dataclass
class RosterChanges:
    added: list[RosterEntry] = field(default_factory=list)
    updated: list[tuple[RosterEntry, list[str]]] = field(default_factory=list)  # entry, changed fields
    unchanged: int = 0
    leavers: list[str] = field(default_factory=list)  # in the registry, not in the roster


def diff(registry: Registry, roster: Roster) -> RosterChanges:
    current = {r.user_id: r for r, _, _ in registry.users()}
    changes = RosterChanges()
    for entry in roster.entries:
        record = current.get(entry.user_id)
        if record is None:
            changes.added.append(entry)
            continue
        changed = [name for name, old, new in (("name", record.display_name, entry.name),
                                                 ("kana", record.kana, entry.kana),
                                                 ("department", record.department, entry.department),
                                                 ("roles", tuple(record.roles), entry.roles)) if old != new]
        if changed:
            changes.updated.append((entry, changed))
        else:
            changes.unchanged += 1
    listed = {e.user_id for e in roster.entries}
    changes.leavers = sorted(uid for uid in current if uid not in listed)
    return changes


def import_roster(registry: Registry, roster: Roster) -> RosterChanges:
    """Add and update in one transaction; a roster with bad lines imports nothing."""
    if roster.rejections:
        lines = "\n".join(f"  line {r.line}: {r.reason}" for r in roster.rejections)
        raise RosterError(f"{len(roster.rejections)} bad lines in {roster.source or 'the roster'}; nothing was "
                          f"imported:\n{lines}")
    changes = diff(registry, roster)
    with registry.transaction() as c:
        for entry in changes.added:
            record = UserRecord(user_id=entry.user_id, display_name=entry.name, kana=entry.kana,
                                department=entry.department, roles=entry.roles, identity_public=bytes(32))
            c.execute("INSERT INTO users VALUES (?, ?, 1, strftime('%s','now'))", (record.user_id, record.to_cbor()))
        for entry, _ in changes.updated:
            record, _ = registry.user(entry.user_id)
            # A new revision: laptops get the record (and grants for the new roles) at check-in.
            updated = replace(record, display_name=entry.name, kana=entry.kana, department=entry.department,
                              roles=entry.roles, revision=record.revision + 1)
            c.execute("UPDATE users SET record = ? WHERE id = ?", (updated.to_cbor(), entry.user_id))
    registry.record(EventType.ROSTER_IMPORTED, source=roster.source, added=len(changes.added),
                    updated=len(changes.updated), leavers=changes.leavers)
    return changes


def parse_mapping(pairs: Sequence[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        name, sep, header = pair.partition("=")
        if not sep or name not in FIELDS or not header:
            raise RosterError(f"--map {pair!r}: expected FIELD=HEADER with FIELD one of {', '.join(FIELDS)}.")
        mapping[name] = header
    return mapping
