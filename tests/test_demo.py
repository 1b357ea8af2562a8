"""`make demo` end to end, and its refusal to run over files it did not make."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_demo(out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEMO_OUT": str(out), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "demo"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_demo_passes_and_writes_a_summary(tmp_path) -> None:
    proc = run_demo(tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((tmp_path / "out" / "summary.json").read_text("utf-8"))
    assert len(rows) >= 10 and all(r["ok"] for r in rows)
    assert {"unlocked", "refused: AuthenticationFailed", "refused: GrantError", "refused: PolicyError",
            "refused: KeyPinInvalid", "refused: KeyNotFound", "refused: AttestationRejected"} <= {
        r["expected"] for r in rows}
    assert sum(r["check"].endswith(("fingerprint on the key", "key and its PIN", "key and passphrase"))
               and r["outcome"].startswith("unlocked") for r in rows) == 3
    assert "Traceback" not in proc.stdout + proc.stderr
    # The auditor's files: the trail, its root and the exports, verified by both tools.
    for name in ("trail.jsonl", "trail-root.pem", "export.jsonl", "export-filtered.jsonl", "export.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    checks = {r["check"]: r for r in rows}
    assert checks["the OpenSSL script verifies export-filtered.jsonl"]["outcome"].startswith("VALID")
    assert checks["a failed logon turned into a success is caught by both verifiers"]["ok"]
    assert (tmp_path / "out" / "export.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    # Run twice: it replaces its own earlier output.
    assert run_demo(tmp_path / "out").returncode == 0


def test_demo_refuses_a_directory_it_did_not_make(tmp_path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    proc = run_demo(tmp_path)
    assert proc.returncode != 0
    assert "choose an empty directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
