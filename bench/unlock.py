"""Unlock cost and store scaling, as ratios against baselines measured in the same run.

    python bench/unlock.py [--json] [--users 20000] [--rounds 7]

* ``argon2id_ms``: bare Argon2id with the default policy's parameters (the baseline).
* ``unlock_pin_totp_ms``: a full ``pin+totp`` unlock (lookup, TOTP check and its durable
  step write, Argon2id, slot open); ``unlock_overhead_ratio`` = the two divided (goal <= 1.10).
* ``unlock_fido2_uv_ms``: a full ``fido2-uv`` unlock with the software key's fingerprint
  (lookup, silent pre-flight, UV token, key agreement, hmac-secret assertion and its
  signature check, slot open): no Argon2id, goal <= a tenth of ``argon2id_ms``
  (``fido2_uv_vs_argon2id``). A real key adds the person's touch, not computation here.
* ``unlock_pin_fido2_ms``: a full ``pin+fido2`` unlock (the same key work without UV, plus
  Argon2id); ``pin_fido2_overhead_ratio`` against bare Argon2id (goal <= 1.10).
* ``lookup_ms`` at 10 and at N users: find and decrypt a user's record and slots, no KDF;
  ``lookup_ratio_20000_vs_10`` (goal <= 1.5).
* ``store_bytes_per_user``: file growth per user with three slots, five recovery-sized
  key wraps and a 1 KB grant (goal <= 4096).

Medians of interleaved rounds, so a noisy neighbour hits both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import show  # noqa: E402
from sekisho import crypto  # noqa: E402
from sekisho.devices.softkey import SoftKey  # noqa: E402
from sekisho.factors import fido2, pin_totp  # noqa: E402
from sekisho.factors import passphrase as pp  # noqa: E402
from sekisho.factors.interaction import ScriptedInteraction  # noqa: E402
from sekisho.factors.totp import TotpSeed  # noqa: E402
from sekisho.policy import Policy  # noqa: E402
from sekisho.store.grants import Grant, RecoveryWrap, issue_grant  # noqa: E402
from sekisho.store.keysource import InsecureFileKeySource  # noqa: E402
from sekisho.store.records import KeySlot, SlotKind, UserRecord  # noqa: E402
from sekisho.store.store import CredentialStore, ProvisionedUser  # noqa: E402
from sekisho.unlock import unlock  # noqa: E402

POLICY = Policy(permitted_slot_kinds=(SlotKind.PIN_TOTP,))
FIDO2_POLICY = Policy(permitted_slot_kinds=(SlotKind.FIDO2_UV, SlotKind.PIN_FIDO2), allow_software_authenticators=True)
IT_PRIVATE, IT_PUBLIC = crypto.ed25519_generate()


def synthetic_user(uid: str, device_id: str) -> ProvisionedUser:
    """A user as provisioning writes them, without running Argon2id (secrets are random)."""
    private, public = crypto.x25519_generate()
    seed = TotpSeed.generate()
    slots = [
        KeySlot.create(user_id=uid, slot_id=0, kind=SlotKind.FIDO2_UV, identity_private=private,
                       secrets={"hmac-secret-uv": os.urandom(32)},
                       params={"cred": os.urandom(64), "rp": "sekisho", "aagUID": os.urandom(16)}),
        KeySlot.create(user_id=uid, slot_id=1, kind=SlotKind.PIN_TOTP, identity_private=private,
                       secrets={"passphrase": os.urandom(32)}, argon2=POLICY.argon2, argon2_salt=os.urandom(16),
                       params={"digits": 6, "period": 30}, sealed={"totp": seed.to_json()}),
        KeySlot.create(user_id=uid, slot_id=2, kind=SlotKind.PIV, identity_private=private,
                       secrets={"ecdh": os.urandom(32)}, params={"epk": os.urandom(65), "slot": "9d"}),
    ]
    grant = Grant(device_id=device_id, user_id=uid, serial=1, issued_at=int(time.time()),
                  network={"apn": "closed.city.lg.jp", "user": "u", "password": "p" * 16, "iccid": "8981" * 5},
                  citrix={"store_url": "https://citrix.city.lg.jp/Citrix/Store/discovery"},
                  apps=tuple(f"業務アプリ{i:02d}-" + "x" * 40 for i in range(12)))
    sealed, key = issue_grant(grant, it_signing_key=IT_PRIVATE, user_public=public)
    crypto.wipe(key)
    wraps = tuple(RecoveryWrap(key_id=f"{i:08X}", salt=os.urandom(32), wrapped=os.urandom(60),
                               ephemeral=os.urandom(32)) for i in range(5))
    sealed = dataclasses.replace(sealed, recovery=wraps)
    record = UserRecord(user_id=uid, display_name="佐藤 美咲", kana="サトウ ミサキ", department="市民課",
                        roles=("madoguchi",), identity_public=public)
    return ProvisionedUser(record=record, slots=slots, grant=sealed)


def build_store(directory: Path, n: int) -> CredentialStore:
    store = CredentialStore.create(directory / "store.db", InsecureFileKeySource(directory / "device.key"))
    batch = 2000
    for start in range(0, n, batch):
        store.provision(synthetic_user(f"K{i:06d}", store.device_id) for i in range(start, min(n, start + batch)))
    store.checkpoint()
    return store


def lookup_ms(store: CredentialStore, n: int, count: int) -> float:
    ids = [f"K{random.randrange(n):06d}" for _ in range(count)]
    t = time.perf_counter()
    for uid in ids:
        store.get_user(uid)
    return (time.perf_counter() - t) * 1000 / count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # --- unlock against bare Argon2id -------------------------------------------
        (work / "u").mkdir()
        store = CredentialStore.create(work / "u" / "store.db", InsecureFileKeySource(work / "u" / "device.key"))
        private, public = crypto.x25519_generate()
        seed = TotpSeed.generate()
        passphrase = "sakana ga oyogu kawa 7"
        slot = pin_totp.enrol(user_id="K10234", slot_id=1, identity_private=private, passphrase=passphrase,
                              seed=seed, argon2=POLICY.argon2)
        store.put_user(UserRecord(user_id="K10234", display_name="佐藤 美咲", identity_public=public), [slot])
        salt = os.urandom(16)
        now = float(int(time.time()) // 30 * 30)
        bare, full = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            crypto.wipe(pp.derive(passphrase, salt, POLICY.argon2))
            bare.append(time.perf_counter() - t)
            now += 30
            interaction = ScriptedInteraction(passphrase=passphrase, code=seed.code_at(now))
            t = time.perf_counter()
            unlock(store, POLICY, "K10234", interaction, clock=lambda: now).close()  # noqa: B023
            full.append(time.perf_counter() - t)
        argon2_ms = statistics.median(bare) * 1000
        unlock_ms = statistics.median(full) * 1000

        # --- FIDO2 slots, on the software key ---------------------------------------------
        finger_key = SoftKey.create(work / "u" / "finger.json", fingerprint=True)
        plain_key = SoftKey.create(work / "u" / "plain.json")
        for uid, key, kind in (("K20001", finger_key, SlotKind.FIDO2_UV), ("K20002", plain_key, SlotKind.PIN_FIDO2)):
            private, public = crypto.x25519_generate()
            slot = fido2.enrol(key, kind=kind, user_id=uid, slot_id=1, identity_private=private,
                               interaction=ScriptedInteraction(), trusted_roots=[key.attestation_root()],
                               allow_software=True, passphrase=passphrase, argon2=FIDO2_POLICY.argon2)
            store.put_user(UserRecord(user_id=uid, display_name="試験", identity_public=public), [slot])
        fido2_uv, pin_fido2, bare2 = [], [], []
        keys = [plain_key, finger_key]  # both connected: the silent pre-flight finds the right one
        for _ in range(args.rounds):
            t = time.perf_counter()
            crypto.wipe(pp.derive(passphrase, salt, POLICY.argon2))
            bare2.append(time.perf_counter() - t)
            t = time.perf_counter()
            unlock(store, FIDO2_POLICY, "K20001", ScriptedInteraction(), devices=lambda: keys).close()
            fido2_uv.append(time.perf_counter() - t)
            t = time.perf_counter()
            unlock(store, FIDO2_POLICY, "K20002", ScriptedInteraction(passphrase=passphrase),
                   devices=lambda: keys).close()
            pin_fido2.append(time.perf_counter() - t)
        store.close()
        argon2_fido2_ms = statistics.median(bare2) * 1000
        fido2_uv_ms = statistics.median(fido2_uv) * 1000
        pin_fido2_ms = statistics.median(pin_fido2) * 1000

        # --- lookup at 10 and at N users ----------------------------------------------
        (work / "small").mkdir()
        (work / "large").mkdir()
        t = time.perf_counter()
        small = build_store(work / "small", 10)
        large = build_store(work / "large", args.users)
        build_s = time.perf_counter() - t
        small_ms, large_ms = [], []
        for _ in range(args.rounds):
            small_ms.append(lookup_ms(small, 10, 300))
            large_ms.append(lookup_ms(large, args.users, 300))
        size_small = (work / "small" / "store.db").stat().st_size
        size_large = (work / "large" / "store.db").stat().st_size
        small.close()
        large.close()

    result = {
        "argon2id_ms": round(argon2_ms, 2),
        "argon2id_params": POLICY.argon2.to_json(),
        "unlock_pin_totp_ms": round(unlock_ms, 2),
        "unlock_overhead_ratio": round(unlock_ms / argon2_ms, 3),
        "unlock_fido2_uv_ms": round(fido2_uv_ms, 2),
        "fido2_uv_vs_argon2id": round(fido2_uv_ms / argon2_fido2_ms, 3),
        "unlock_pin_fido2_ms": round(pin_fido2_ms, 2),
        "pin_fido2_overhead_ratio": round(pin_fido2_ms / argon2_fido2_ms, 3),
        "lookup_ms": {"10": round(statistics.median(small_ms), 4),
                      str(args.users): round(statistics.median(large_ms), 4)},
        "lookup_ratio_20000_vs_10": round(statistics.median(large_ms) / statistics.median(small_ms), 3),
        "store_bytes_per_user": round((size_large - size_small) / (args.users - 10)),
        "users": args.users,
        "build_seconds": round(build_s, 1),
        "goals": {"unlock_overhead_ratio": 1.10, "fido2_uv_vs_argon2id": 0.10, "pin_fido2_overhead_ratio": 1.10,
                  "lookup_ratio_20000_vs_10": 1.5, "store_bytes_per_user": 4096},
    }
    return show(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
