"""Trail cost, as ratios against baselines measured in the same run.

    python bench/trail.py [--json] [--entries 2000] [--rounds 5]

* ``append_per_s``: durable appends (new key stored as pending, line fsynced, key
  advanced, old key erased and WAL checkpointed); ``append_fsync_ratio`` is one append
  over one bare ``write + fsync`` of a line of the same size (what any durable log pays).
* ``verify_per_s``: entries verified per second (parse, sequence, link, signature, body).
* ``verify_cost_ratio``: verification time per entry over one bare Ed25519 verification
  (public key loaded from raw bytes, as each entry has its own key) of a header-sized
  message (goal <= 1.3).
* ``bytes_per_entry``: trail bytes per entry for a realistic mix of logon events.

Medians of interleaved rounds, so a noisy neighbour hits both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import show  # noqa: E402
from sekisho.store.keysource import InsecureFileKeySource  # noqa: E402
from sekisho.trail import EventType, Trail, verify_files  # noqa: E402

MIX = [
    (EventType.LOGON_SUCCESS, "K10234", {"slot": "fido2-uv", "factors": ["possession", "biometric"], "uv": "bio"}),
    (EventType.LINK_UP, "K10234", {"seconds": 71, "rtt_ms": 142, "signal": 18, "tech": "lte", "operator": "閉域網"}),
    (EventType.UNLOCK, "K10234", {"apps": 3}),
    (EventType.LOGON_FAILURE, "K20001", {"slot": "pin+fido2", "factors": ["knowledge", "possession"],
                                         "attempts_left": 4}),
    (EventType.LOCK, "K10234", {"why": "idle", "after_s": 600}),
    (EventType.LINK_DOWN, "K10234", {"why": "lock"}),
]


def bare_fsync_s(directory: Path, line: bytes, count: int) -> float:
    path = directory / "bare.log"
    t = time.perf_counter()
    for _ in range(count):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, line)
        os.fsync(fd)
        os.close(fd)
    return (time.perf_counter() - t) / count


def bare_verify_s(count: int) -> float:
    keys = [Ed25519PrivateKey.generate() for _ in range(count)]
    message = b"h" * 330  # a header is about this long
    pairs = [(k.public_key().public_bytes_raw(), k.sign(message)) for k in keys]
    t = time.perf_counter()
    for public, signature in pairs:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    return (time.perf_counter() - t) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sekisho-bench-") as tmp:
        work = Path(tmp)
        trail = Trail.create(work / "trail.jsonl", InsecureFileKeySource(work / "device.key"), device_id="laptop-0001")
        append_s, fsync_s = [], []
        batch = max(1, args.entries // args.rounds)
        for _ in range(args.rounds):
            t = time.perf_counter()
            for i in range(batch):
                event, user, details = MIX[i % len(MIX)]
                trail.append(event, user=user, details=details)
            append_s.append((time.perf_counter() - t) / batch)
            fsync_s.append(bare_fsync_s(work, b"x" * 700, batch))
        entries = batch * args.rounds + 1
        size = trail.path.stat().st_size
        root = trail.root
        trail.close()

        verify_s, bare_s = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            summary = verify_files([work / "trail.jsonl"], root)
            verify_s.append((time.perf_counter() - t) / summary.entries)
            bare_s.append(bare_verify_s(min(entries, 1000)))

    append = statistics.median(append_s)
    verify = statistics.median(verify_s)
    bare = statistics.median(bare_s)
    result = {
        "append_per_s": round(1 / append, 1),
        "append_fsync_ratio": round(append / statistics.median(fsync_s), 2),
        "verify_per_s": round(1 / verify, 1),
        "bare_ed25519_verify_us": round(bare * 1e6, 1),
        "verify_us_per_entry": round(verify * 1e6, 1),
        "verify_cost_ratio": round(verify / bare, 3),
        "bytes_per_entry": round(size / entries, 1),
        "entries": entries,
        "goals": {"verify_cost_ratio": 1.3},
    }
    return show(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
