"""Exports for auditors: filtered JSON Lines that still verify, CSV for Excel, a text report.

A filter never drops an entry: it drops the *body* of every entry it does not select
and keeps every header, so the export verifies against the root like the whole trail,
and what was left out shows as numbered omissions.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from sekisho.trail.format import TrailEntry


@dataclass(frozen=True, kw_only=True)
class EntryFilter:
    """Which bodies an export keeps; every set condition must hold. Times are UTC text."""

    since: str | None = None
    until: str | None = None
    users: frozenset[str] = frozenset()
    events: frozenset[str] = frozenset()

    def selects(self, entry: TrailEntry) -> bool:
        if entry.body is None:
            return False
        t = entry.header.time
        if self.since is not None and t < self.since:
            return False
        if self.until is not None and t >= self.until:
            return False
        if self.users and entry.user not in self.users:
            return False
        return not (self.events and entry.event not in self.events)


def filtered(entries: Iterable[TrailEntry], which: EntryFilter) -> Iterator[TrailEntry]:
    """Every entry, with the bodies ``which`` does not select removed."""
    for entry in entries:
        yield entry if which.selects(entry) else entry.without_body()


def write_jsonl(entries: Iterable[TrailEntry], out: IO[bytes]) -> int:
    count = 0
    for entry in entries:
        out.write(entry.to_line())
        count += 1
    return count


# Excel and LibreOffice run a cell that starts with one of these as a formula (OWASP
# "CSV injection"); a leading apostrophe makes it text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = ["seq", "time_utc", "offset", "event", "user", "device", "details", "omitted", "entry_hash"]


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_rows(entries: Iterable[TrailEntry]) -> Iterator[list[str]]:
    yield CSV_COLUMNS
    for e in entries:
        body = e.body or {}
        details = json.dumps(body["details"], ensure_ascii=False, sort_keys=True) if "details" in body else ""
        offset = f"UTC{body['offset']}" if isinstance(body.get("offset"), str) else ""
        row = [e.seq, e.header.time, offset, body.get("event"), body.get("user"),
               body.get("device"), details, "yes" if e.omitted else "", e.hash]
        yield [_cell(v) for v in row]


def write_csv(entries: Iterable[TrailEntry], out: IO[bytes]) -> int:
    """CSV in UTF-8 with a byte-order mark, so Excel opens Japanese text correctly."""
    text = io.TextIOWrapper(out, encoding="utf-8-sig", newline="", write_through=True)
    writer = csv.writer(text, lineterminator="\r\n")
    count = -1
    for row in csv_rows(entries):
        writer.writerow(row)
        count += 1
    text.flush()
    text.detach()
    return count


def text_line(entry: TrailEntry) -> str:
    """One readable line per entry."""
    if entry.body is None:
        return f"{entry.seq:>7}  {entry.header.time}  (body omitted from this export)"
    body = entry.body
    found = body.get("details")
    details = ", ".join(
        f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(found.items() if isinstance(found, dict) else [])
    )
    user = str(body.get("user") or "-")
    return f"{entry.seq:>7}  {entry.header.time}  {body.get('event', '?'):<18} {user:<12} {details}".rstrip()


def write_text(entries: Iterable[TrailEntry], out: IO[bytes]) -> int:
    count = 0
    out.write(f"{'seq':>7}  {'time (UTC)':<27}  {'event':<18} {'user':<12} details\n".encode())
    for entry in entries:
        out.write((text_line(entry) + "\n").encode("utf-8"))
        count += 1
    return count
