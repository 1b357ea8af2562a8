"""A writer killed at any moment leaves the old state or the new one, never a mix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sekisho.store.keysource import InsecureFileKeySource
from sekisho.store.store import CredentialStore

ROOT = Path(__file__).resolve().parent.parent

WRITER = """
import os, sys
from pathlib import Path
from sekisho import crypto
from sekisho.store.keysource import InsecureFileKeySource
from sekisho.store.records import KeySlot, SlotKind, UserRecord
from sekisho.store.store import CredentialStore

work = Path(sys.argv[1])
store = CredentialStore.open(work / "store.db", InsecureFileKeySource(work / "device.key"))
start = i = store.user_count()
while True:
    private, public = crypto.x25519_generate()
    uid = f"K{i:06d}"
    slots = [KeySlot.create(user_id=uid, slot_id=n, kind=SlotKind.FIDO2_UV, identity_private=private,
                            secrets={"hmac-secret-uv": os.urandom(32)}) for n in range(3)]
    store.put_user(UserRecord(user_id=uid, display_name="試験 太郎", identity_public=public), slots)
    store.update_state(uid, "counter", lambda old: {"n": (old or {}).get("n", 0) + 1})
    if i == start + 5:
        print("ready", flush=True)
    i += 1
"""


def test_killed_writer_leaves_whole_users_only(tmp_path) -> None:
    source = InsecureFileKeySource(tmp_path / "device.key")
    CredentialStore.create(tmp_path / "store.db", source).close()
    (tmp_path / "writer.py").write_text(textwrap.dedent(WRITER))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(tmp_path)], env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.07 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with CredentialStore.open(tmp_path / "store.db", source) as store:
            assert store._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            ids = store.user_ids()
            assert len(ids) >= 6
            for uid in ids:
                _, slots = store.get_user(uid)
                assert [s.slot_id for s in slots] == [0, 1, 2]
            # A user without their state record is a writer cut between its two
            # transactions: at most one per kill, and never a half-written row.
            without_state = [uid for uid in ids if store.read_state(uid, "counter") is None]
            assert len(without_state) <= round_ + 1
