"""``sekisho-audit``: verify, export and read laptops' logon trails (and IT's own log).

Exit codes: 0 valid / done; 1 the trail is invalid (tampered, truncated, forked,
malformed); 2 the command could not run (a missing file, a bad root key or head, a
usage error). A traceback only with ``--debug``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from enroll.commands import Fail, run
from sekisho import crypto, files
from sekisho.errors import SekishoError, TrailInvalid
from sekisho.trail import EventType, Head, TrailEntry, read_file, verify_entries, verify_files
from sekisho.trail.export import EntryFilter, filtered, text_line, write_csv, write_jsonl, write_text
from sekisho.trail.format import utc_time
from sekisho.trail.reconcile import reconcile
from sekisho.trail.verify import TrailSummary

EXIT_INVALID = 1
EXIT_UNUSABLE = 2


def _load_root(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Fail(f"The trail root {path} cannot be read: {exc.strerror}.", EXIT_UNUSABLE) from None
    try:
        return crypto.public_key_from_pem(data, what=str(path))
    except SekishoError as exc:
        raise Fail(f"The trail root {exc} (expected the PEM the laptop exported at provisioning).",
                    EXIT_UNUSABLE) from None


def _parse_head(text: str | None) -> Head | None:
    if text is None:
        return None
    try:
        return Head.parse(text)
    except SekishoError as exc:
        raise Fail(f"--head: {exc}.", EXIT_UNUSABLE) from None


def _utc(text: str | None, option: str) -> str | None:
    """A date or time the auditor typed, as trail time; a time without offset is local."""
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise Fail(f"{option}: {text!r} is not a date or time (e.g. 2026-12-01 or 2026-12-01T09:00+09:00).",
                    EXIT_UNUSABLE) from None
    if when.tzinfo is None:
        when = when.astimezone()
    return utc_time(when.timestamp())


def _summary_text(summary: TrailSummary, root: bytes) -> str:
    events = ", ".join(f"{name} {count}" for name, count in sorted(summary.events.items())) or "-"
    users = sorted(summary.users)
    lines = [
        f"VALID: {summary.entries} entries ({summary.omitted} bodies omitted), "
        f"{summary.first_time} to {summary.last_time} (UTC)",
        f"  files    {', '.join(summary.sources)}",
        f"  root     {crypto.key_fingerprint(root)}",
        f"  head     {summary.head}",
        f"  devices  {', '.join(sorted(summary.devices)) or '-'}",
        f"  users    {len(users)}: {', '.join(users) or '-'}",
        f"  events   {events}",
    ]
    if summary.time_steps_back:
        lines.append(f"  clock    {summary.time_steps_back} entries are dated earlier than the entry before them")
    return "\n".join(lines)


@click.group()
@click.option("--debug", is_flag=True, help="Show a traceback for unexpected errors.")
@click.version_option(package_name="sekisho")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Verify, export and read Sekisho logon trails."""
    ctx.obj = {"debug": debug}


@cli.command()
@click.argument("trail_files", metavar="FILE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--root", "root_path", required=True, type=click.Path(path_type=Path),
              help="The laptop's trail root (PEM), as registered at provisioning.")
@click.option("--head", "head_text", metavar="SEQ:HASH", help="The newest entry the office recorded at check-in.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(trail_files: Sequence[Path], root_path: Path, head_text: str | None, as_json: bool) -> None:
    """Verify a trail, or several exports of one laptop's trail."""
    root = _load_root(root_path)
    head = _parse_head(head_text)
    try:
        summary = verify_files(list(trail_files), root, head=head)
    except TrailInvalid as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "reason": exc.reason, "seq": exc.seq, "line": exc.line,
                                   "source": exc.source, "message": str(exc)}, ensure_ascii=False))
        else:
            click.echo(f"INVALID: {exc}\n  reason   {exc.reason}")
        sys.exit(EXIT_INVALID)
    if as_json:
        click.echo(json.dumps({"valid": True, "root": crypto.key_fingerprint(root), **summary.to_json()},
                              ensure_ascii=False))
    else:
        click.echo(_summary_text(summary, root))


def _entries(trail: Path, root_path: Path | None) -> Iterator[TrailEntry]:
    if root_path is None:
        return read_file(trail)
    # Verify first, then read again: nothing is exported from a trail that does not verify.
    verify_entries(read_file(trail), _load_root(root_path), source=str(trail))
    return read_file(trail)


@cli.command()
@click.argument("trail", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, allow_dash=True),
              help="Where to write the export ('-' for standard output).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "text"]), default="jsonl", show_default=True)
@click.option("--since", help="Keep bodies from this date or time on (local time unless an offset is given).")
@click.option("--until", help="Keep bodies before this date or time.")
@click.option("--user", "users", multiple=True, help="Keep the bodies of this staff id (repeatable).")
@click.option("--event", "events", multiple=True, type=click.Choice([e.value for e in EventType]),
              help="Keep the bodies of this event type (repeatable).")
@click.option("--root", "root_path", type=click.Path(path_type=Path),
              help="Verify against this root (PEM) before exporting.")
def export(trail: Path, output: Path, fmt: str, since: str | None, until: str | None, users: tuple[str, ...],
           events: tuple[str, ...], root_path: Path | None) -> None:
    """Export a trail. A filter drops bodies, never headers: the export still verifies."""
    which = EntryFilter(since=_utc(since, "--since"), until=_utc(until, "--until"), users=frozenset(users),
                        events=frozenset(events))
    writer = {"jsonl": write_jsonl, "csv": write_csv, "text": write_text}[fmt]
    buffer = io.BytesIO()
    count = writer(filtered(_entries(trail, root_path), which), buffer)
    if str(output) == "-":
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.buffer.flush()
        return
    try:
        files.atomic_write(output, buffer.getvalue(), mode=0o640)
    except OSError as exc:
        raise Fail(f"The export cannot be written to {output}: {exc.strerror}.", EXIT_UNUSABLE) from None
    click.echo(f"{count} entries exported to {output} ({fmt}).", err=True)


@cli.command()
@click.argument("trail", type=click.Path(path_type=Path))
@click.option("--user", required=True, help="The staff id.")
@click.option("-n", "--count", default=20, show_default=True, type=click.IntRange(1), help="How many entries.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def show(trail: Path, user: str, count: int, as_json: bool) -> None:
    """The newest entries for one person."""
    newest: list[TrailEntry] = []
    for entry in read_file(trail):
        if entry.user == user:
            newest.append(entry)
            del newest[:-count]
    if as_json:
        click.echo(json.dumps([{"seq": e.seq, "time": e.header.time, **(e.body or {})} for e in newest],
                              ensure_ascii=False))
        return
    if not newest:
        click.echo(f"No entries for {user} in {trail}.")
    for entry in newest:
        click.echo(text_line(entry))


@cli.command("reconcile")
@click.argument("it_log", type=click.Path(path_type=Path))
@click.argument("laptop_trails", metavar="TRAIL...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--it-root", "it_root", required=True, type=click.Path(path_type=Path),
              help="The root of IT's log (it-log-root.pem).")
@click.option("--json", "as_json", is_flag=True)
def reconcile_command(it_log: Path, laptop_trails: Sequence[Path], it_root: Path, as_json: bool) -> None:
    """Recovery codes IT issued against recoveries used on laptops (verify each trail first)."""
    verify_entries(read_file(it_log), _load_root(it_root), source=str(it_log))  # IT's own log must verify
    result = reconcile(read_file(it_log), [read_file(t) for t in laptop_trails])
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        click.echo(f"{len(result.matched)} recoveries match an issued code.")
        for c in result.issued_unused:
            click.echo(f"  issued, not used:     {c.time}  {c.device}  {c.user}  key id {c.key_id}")
        for c in result.used_without_issue:
            click.echo(f"  USED WITHOUT ISSUE:   {c.time}  {c.device}  {c.user}  key id {c.key_id}")
    if not result.clean:
        sys.exit(EXIT_INVALID)


def main(argv: Sequence[str] | None = None) -> Any:
    """Entry point; maps errors to a message and an exit code (no traceback)."""
    return run(cli, "sekisho-audit", argv, codes=[(TrailInvalid, EXIT_INVALID), (SekishoError, EXIT_UNUSABLE)])


if __name__ == "__main__":
    sys.exit(main())
