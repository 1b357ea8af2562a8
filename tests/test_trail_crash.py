"""A trail writer SIGKILLed at random moments, 200 times: nothing durable is lost, the chain
stays whole, and the next writer carries on without reporting tampering."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from sekisho.store.keysource import InsecureFileKeySource
from sekisho.trail import EventType, Trail, read_file
from tests.trail_helpers import make_trail

KILLS = 200


def _child(trail_path: Path, key_file: Path, report: int) -> None:
    """Append until killed; after each append returns, report its number and hash."""
    try:
        with Trail.open(trail_path, InsecureFileKeySource(key_file)) as trail:
            while True:
                entry = trail.append(EventType.LOGON_FAILURE, user="K10234", details={"slot": "pin+totp"})
                os.write(report, f"{entry.seq}:{entry.hash}\n".encode())
    except BaseException as exc:  # pragma: no cover - reported to the parent
        os.write(report, f"error:{type(exc).__name__}:{exc}\n".encode())
    finally:
        os._exit(1)


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_killed_appends_lose_nothing_reported_durable(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    key_file = tmp_path / "device.key"
    make_trail(tmp_path, events=0).close()
    trail_path = tmp_path / "trail.jsonl"
    durable: dict[int, str] = {}
    for kill in range(KILLS):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_end)
            _child(trail_path, key_file, write_end)
        os.close(write_end)
        time.sleep(rng.uniform(0, 0.025))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        report = _read_all(read_end)
        os.close(read_end)
        assert "error:" not in report, f"seed {seed}, kill {kill}: {report}"
        for line in report.splitlines():
            seq, digest = line.split(":")
            durable[int(seq)] = digest

        with Trail.open(trail_path, InsecureFileKeySource(key_file)) as trail:
            assert trail.anomalies == [], f"seed {seed}, kill {kill}: {trail.anomalies}"
            after = trail.append(EventType.LOCK, user="K10234", details={"kill": kill})
            summary = trail.verify(head=trail.head)
        entries = {e.seq: e.hash for e in read_file(trail_path)}
        assert sorted(entries) == list(range(len(entries))), f"seed {seed}: sequence not continuous"
        assert summary.entries == len(entries)
        missing = {s for s, h in durable.items() if entries.get(s) != h}
        assert not missing, f"seed {seed}, kill {kill}: durable entries {sorted(missing)} lost or changed"
        durable[after.seq] = after.hash
    assert len(durable) > KILLS  # the children did get entries written
