"""Attacks on the trail, each caught by `sekisho-audit verify` (with the right reason) and by
the OpenSSL script. The attacker is root on the laptop: they can read the trail key file
and hold the key that signs the *next* entry, but no key of any earlier one."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sekisho.store.keysource import InsecureFileKeySource
from sekisho.trail import EventType, Reason, Trail
from tests.conftest import tool_available
from tests.trail_helpers import (
    StepClock,
    current_key,
    edit_header_unsigned,
    lines,
    make_trail,
    resign,
    run_audit,
    run_openssl,
    write_lines,
)

needs_openssl = pytest.mark.skipif(not tool_available("openssl"), reason="openssl is not installed")


@dataclass
class Case:
    file: Path
    reason: Reason
    head: str | None = None


def changed_body(d: Path, trail: Trail) -> Case:
    content = lines(trail.path)
    content[4] = content[4].replace(b'"user":"K10234"', b'"user":"K99999"')
    write_lines(trail.path, content)
    return Case(trail.path, Reason.BODY_HASH)


def changed_header(d: Path, trail: Trail) -> Case:
    content = lines(trail.path)
    content[5] = edit_header_unsigned(content[5], time="2026-01-01T00:00:00.000000Z")
    write_lines(trail.path, content)
    return Case(trail.path, Reason.BAD_SIGNATURE)


def deleted_middle(d: Path, trail: Trail) -> Case:
    content = lines(trail.path)
    del content[5]
    write_lines(trail.path, content)
    return Case(trail.path, Reason.SEQUENCE)


def inserted(d: Path, trail: Trail) -> Case:
    # A made-up logon inserted after entry 3, numbered and linked to fit, signed with the
    # only key the attacker has (the current one).
    content = lines(trail.path)
    forged = resign(content[4], current_key(trail), body={**json.loads(content[4])["body"], "user": "K55555"})
    content.insert(4, forged)
    write_lines(trail.path, content)
    return Case(trail.path, Reason.KEY_NOT_ANNOUNCED)


def swapped(d: Path, trail: Trail) -> Case:
    content = lines(trail.path)
    content[3], content[4] = content[4], content[3]
    write_lines(trail.path, content)
    return Case(trail.path, Reason.SEQUENCE)


def tail_deleted(d: Path, trail: Trail) -> Case:
    head = str(trail.head)  # what the office recorded at check-in
    write_lines(trail.path, lines(trail.path)[:-3])
    return Case(trail.path, Reason.HEAD_MISMATCH, head=head)


def spliced_from_another_device(d: Path, trail: Trail) -> Case:
    other = make_trail(d / "other", device_id="laptop-0002")
    content = lines(trail.path)
    content[6] = lines(other.path)[6]
    write_lines(trail.path, content)
    return Case(trail.path, Reason.BROKEN_LINK)


def resigned_with_newest_key(d: Path, trail: Trail) -> Case:
    # CVE-2023-31437 against systemd's FSS: a past entry changed and re-signed with the
    # newest key. Header fields all fit; only the key is not the one announced.
    content = lines(trail.path)
    body = {**json.loads(content[2])["body"], "event": "logon-success"}
    content[2] = resign(content[2], current_key(trail), body=body)
    write_lines(trail.path, content)
    return Case(trail.path, Reason.KEY_NOT_ANNOUNCED)


def regenerated_under_another_root(d: Path, trail: Trail) -> Case:
    forged = make_trail(d / "forged")  # same events, same device id, a new root
    return Case(forged.path, Reason.WRONG_ROOT)


def restored_without_store(d: Path, trail: Trail) -> Case:
    backup = d / "backup.jsonl"
    shutil.copy(trail.path, backup)
    trail.append(EventType.LOGON_FAILURE, user="K10234", details={"slot": "pin+totp"})
    trail.append(EventType.LOGON_FAILURE, user="K10234", details={"slot": "pin+totp"})
    trail.close()
    shutil.copy(backup, trail.path)  # the failures vanish
    reopened = Trail.open(trail.path, InsecureFileKeySource(d / "device.key"), clock=StepClock(2e9))
    assert reopened.anomalies and "does not match its keys" in reopened.anomalies[0]
    last = json.loads(lines(trail.path)[-1])
    assert last["body"]["event"] == "tampering-detected"
    reopened.append(EventType.LOGON_SUCCESS, user="K10234")  # and the laptop carries on
    reopened.close()
    return Case(trail.path, Reason.SEQUENCE)


ATTACKS: dict[str, Callable[[Path, Trail], Case]] = {
    f.__name__: f
    for f in (changed_body, changed_header, deleted_middle, inserted, swapped, tail_deleted,
              spliced_from_another_device, resigned_with_newest_key, regenerated_under_another_root,
              restored_without_store)
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_caught_by_sekisho_audit(tmp_path: Path, capsys, attack: str) -> None:
    trail = make_trail(tmp_path)
    case = ATTACKS[attack](tmp_path, trail)
    args = ["verify", str(case.file), "--root", str(tmp_path / "root.pem"), "--json"]
    code, out, err = run_audit(capsys, *args + (["--head", case.head] if case.head else []))
    assert code == 1, out + err
    result = json.loads(out)
    assert result["valid"] is False
    assert result["reason"] == case.reason, result["message"]
    assert "Traceback" not in out + err


@needs_openssl
@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_caught_by_the_openssl_script(tmp_path: Path, attack: str) -> None:
    trail = make_trail(tmp_path)
    case = ATTACKS[attack](tmp_path, trail)
    proc = run_openssl(case.file, tmp_path / "root.pem", case.head)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("INVALID:")
    # The script cannot tell which other key signed an entry: it says "bad signature".
    expected = "bad-signature" if case.reason == Reason.KEY_NOT_ANNOUNCED else case.reason.value
    assert f"(reason: {expected})" in proc.stdout


def test_without_the_office_head_a_cut_tail_is_not_detectable(tmp_path: Path, capsys) -> None:
    # Documented limit: a trail cut at an entry boundary is a valid shorter trail; the
    # head recorded at check-in is what catches it.
    trail = make_trail(tmp_path)
    write_lines(trail.path, lines(trail.path)[:-3])
    code, out, _ = run_audit(capsys, "verify", str(trail.path), "--root", str(tmp_path / "root.pem"))
    assert code == 0, out


def test_two_exports_that_disagree_are_a_fork(tmp_path: Path, capsys) -> None:
    # Keys and trail restored together from a backup (undetectable on the laptop), then a
    # different history written: two exports of one laptop disagree.
    trail = make_trail(tmp_path, events=4)
    trail.close()
    saved = tmp_path / "saved"
    saved.mkdir()
    for name in ("trail.jsonl", "trail.jsonl.keys"):
        shutil.copy(tmp_path / name, saved / name)
    key_source = InsecureFileKeySource(tmp_path / "device.key")
    with Trail.open(tmp_path / "trail.jsonl", key_source, clock=StepClock(2e9)) as t:
        t.append(EventType.LOGON_FAILURE, user="K10234")
    shutil.copy(tmp_path / "trail.jsonl", tmp_path / "export-1.jsonl")
    for name in ("trail.jsonl", "trail.jsonl.keys"):
        shutil.copy(saved / name, tmp_path / name)
    with Trail.open(tmp_path / "trail.jsonl", key_source, clock=StepClock(2e9)) as t:
        assert t.anomalies == []
        t.append(EventType.LOGON_SUCCESS, user="K10234")
    root = str(tmp_path / "root.pem")
    for export in ("export-1.jsonl", "trail.jsonl"):
        assert run_audit(capsys, "verify", str(tmp_path / export), "--root", root)[0] == 0
    code, out, _ = run_audit(capsys, "verify", str(tmp_path / "export-1.jsonl"), str(tmp_path / "trail.jsonl"),
                             "--root", root, "--json")
    assert code == 1
    assert json.loads(out)["reason"] == Reason.FORK
    assert json.loads(out)["seq"] == 5


@needs_openssl
def test_untouched_trail_and_filtered_export_verify_with_both_tools(tmp_path: Path, capsys) -> None:
    trail = make_trail(tmp_path)
    root = str(tmp_path / "root.pem")
    export = tmp_path / "export.jsonl"
    assert run_audit(capsys, "export", str(trail.path), "-o", str(export), "--user", "K20001")[0] == 0
    exported = [json.loads(x) for x in lines(export)]
    assert len(exported) == len(lines(trail.path))  # every header kept
    assert {e["body"]["user"] for e in exported if "body" in e} == {"K20001"}
    for path in (trail.path, export):
        code, out, _ = run_audit(capsys, "verify", str(path), "--root", root, "--head", str(trail.head), "--json")
        assert code == 0, out
        proc = run_openssl(path, tmp_path / "root.pem", str(trail.head))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(run_audit(capsys, "verify", str(export), "--root", root, "--json")[1])
    assert summary["omitted_bodies"] == len(exported) - 2
    assert summary["users"] == ["K20001"]
    # Both files of one laptop together: consistent, no fork.
    assert run_audit(capsys, "verify", str(trail.path), str(export), "--root", root)[0] == 0


@needs_openssl
def test_bodies_that_imitate_the_line_format_still_verify(tmp_path: Path, capsys) -> None:
    # A staff member's name or a device answer ends up in details; neither tool may be
    # confused by text that looks like the entry's own members.
    trail = make_trail(tmp_path, events=0)
    for text in ['","header":"AAAA","sig":"BBBB"}', '{"body":{}}', "\\\"quoted\\\" \\n 改行 ' $(x) `y`",
                 "tab\there", "髙橋 﨑 ｶﾅ"]:
        trail.append(EventType.LOGON_FAILURE, user="K10234", details={"note": text, "header": text, "sig": text})
    root = tmp_path / "root.pem"
    assert run_audit(capsys, "verify", str(trail.path), "--root", str(root))[0] == 0
    proc = run_openssl(trail.path, root, str(trail.head))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and changing a byte inside such a body is still caught by both.
    content = lines(trail.path)
    content[1] = content[1].replace(b"AAAA", b"AAAB", 1)
    write_lines(trail.path, content)
    assert json.loads(run_audit(capsys, "verify", str(trail.path), "--root", str(root), "--json")[1])[
        "reason"] == Reason.BODY_HASH
    assert "(reason: body-hash-mismatch)" in run_openssl(trail.path, root).stdout
