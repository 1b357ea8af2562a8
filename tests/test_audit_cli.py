"""`sekisho-audit`: bad input, exports (JSON Lines, CSV for Excel, text), show, the console script."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sekisho.trail import EventType
from tests.trail_helpers import lines, make_trail, run_audit

BAD_INPUT = {
    "malformed-line": (lambda good: [*good[:2], b'{"body":{},"header":"???","sig":"x"}\n', *good[2:]],
                       "line 3: header is not valid base64"),
    "invalid-utf8": (lambda good: [*good[:1], good[1].replace(b"K10234", b"K\xff\xfe234"), *good[2:]],
                     "line 2: body: not valid UTF-8"),
    "huge-line": (lambda good: [*good[:1], b"{" + b"x" * 200000 + b"}\n", *good[1:]],
                  "line 2: the line is longer than 65536 bytes"),
    "not-a-trail": (lambda good: [b"name,department\n", "佐藤,市民課\n".encode()], "line 1: the line is not a Sekisho"),
    "empty": (lambda good: [], "is empty"),
    "cut-short": (lambda good: [*good[:-1], good[-1].rstrip(b"\n")], "cut short (no end of line)"),
    "binary": (lambda good: [bytes(range(256)) * 4], "line 1"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_gets_a_clear_error_and_exit_1(tmp_path: Path, capsys, case: str) -> None:
    trail = make_trail(tmp_path, events=4)
    damage, message = BAD_INPUT[case]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join(damage(lines(trail.path))))
    root = str(tmp_path / "root.pem")
    for args in (["verify", str(bad), "--root", root],
                 ["export", str(bad), "-o", str(tmp_path / "out.csv"), "--format", "csv"],
                 ["show", str(bad), "--user", "K10234"]):
        code, out, err = run_audit(capsys, *args)
        assert code == 1, (args, out, err)
        assert message in out + err
        assert "Traceback" not in out + err
    assert not (tmp_path / "out.csv").exists()  # no half export


def test_unusable_arguments_exit_2(tmp_path: Path, capsys) -> None:
    trail = make_trail(tmp_path, events=1)
    root = str(tmp_path / "root.pem")
    (tmp_path / "not-a-key.pem").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    cases = [
        (["verify", str(tmp_path / "nothing.jsonl"), "--root", root], "cannot be read"),
        (["verify", str(tmp_path), "--root", root], "cannot be read"),
        (["show", str(tmp_path / "nothing.jsonl"), "--user", "K1"], "cannot be read"),
        (["verify", str(trail.path), "--root", str(tmp_path / "nothing.pem")], "cannot be read"),
        (["verify", str(trail.path), "--root", str(tmp_path / "not-a-key.pem")], "not a PEM public key"),
        (["verify", str(trail.path), "--root", root, "--head", "12:abc"], "is not a trail head"),
        (["export", str(trail.path), "-o", "-", "--since", "yesterday"], "is not a date or time"),
        (["export", str(trail.path), "-o", "-", "--event", "nonsense"], "nonsense"),
        (["verify", str(trail.path)], "--root"),
    ]
    for args, message in cases:
        code, out, err = run_audit(capsys, *args)
        assert code == 2, (args, out, err)
        assert message in out + err, (args, out, err)
        assert "Traceback" not in out + err


def test_csv_export_opens_in_excel_and_neutralises_formulas(tmp_path: Path, capsys) -> None:
    trail = make_trail(tmp_path, events=0)
    trail.append(EventType.LOGON_FAILURE, user="=HYPERLINK(\"http://x\")", details={"note": "+1"})
    trail.append(EventType.LOGON_SUCCESS, user="K20001", details={"name": "髙橋 健一", "x": "@SUM(A1)"})
    trail.append(EventType.LOCK, user="-K3")
    out = tmp_path / "export.csv"
    assert run_audit(capsys, "export", str(trail.path), "-o", str(out), "--format", "csv")[0] == 0
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0][:5] == ["seq", "time_utc", "offset", "event", "user"]
    users = [r[4] for r in rows[1:]]
    assert users[1] == "'=HYPERLINK(\"http://x\")" and users[3] == "'-K3"
    assert "髙橋 健一" in rows[3][6]
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@"))


def test_filters_by_time_user_and_event(tmp_path: Path, capsys) -> None:
    trail = make_trail(tmp_path)  # entries one minute apart
    times = [e.header.time for e in trail.entries()]
    out = tmp_path / "f.jsonl"
    args = ["export", str(trail.path), "-o", str(out), "--since", times[3].replace("Z", "+00:00"),
            "--until", times[8].replace("Z", "+00:00"), "--event", "logon-success", "--event", "lock"]
    assert run_audit(capsys, *args)[0] == 0
    kept = [json.loads(x) for x in lines(out)]
    assert len(kept) == len(times)
    selected = [e for e in kept if "body" in e]
    # entries 5 (lock) and 6 (logon-success); 8 is a lock at --until, which is exclusive
    assert [e["body"]["event"] for e in selected] == ["lock", "logon-success"]
    code, text, _ = run_audit(capsys, "export", str(trail.path), "-o", "-", "--format", "text", "--user", "K20001")
    assert code == 0
    assert text.count("(body omitted from this export)") == len(times) - 2
    assert "髙橋 健一" in text


def test_show_lists_a_persons_newest_entries(tmp_path: Path, capsys) -> None:
    trail = make_trail(tmp_path)
    code, out, _ = run_audit(capsys, "show", str(trail.path), "--user", "K10234", "-n", "2", "--json")
    assert code == 0
    shown = json.loads(out)
    assert [(e["seq"], e["event"]) for e in shown] == [(5, "lock"), (10, "logon-success")]
    assert all(e["user"] == "K10234" for e in shown)
    assert shown[-1]["seq"] == len(lines(trail.path)) - 1
    assert run_audit(capsys, "show", str(trail.path), "--user", "nobody")[1].startswith("No entries")


def test_console_script_runs(tmp_path: Path) -> None:
    trail = make_trail(tmp_path, events=2)
    script = Path(sys.executable).parent / "sekisho-audit"
    proc = subprocess.run([str(script), "verify", str(trail.path), "--root", str(tmp_path / "root.pem")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("VALID: 3 entries")
