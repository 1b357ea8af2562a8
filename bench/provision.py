"""Provisioning and installation cost, per user and as users grow.

    python bench/provision.py [--json] [--users 20000] [--small 1000]

* ``provision_per_user_ms``: the station building a bundle (a grant signed and sealed per
  user, five recovery wraps each, the whole sealed to the laptop and signed).
* ``install_per_user_ms``: the laptop verifying and installing it in one transaction.
* ``install_ratio_20000_vs_1000``: install time for the large bundle over the small one
  (20x the users; goal <= 25, i.e. linear).
* ``bundle_bytes_per_user``.

Users are synthetic registry rows (random slot secrets; no Argon2id, no key touches):
what is measured is provisioning, not enrolment.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import device  # noqa: E402
from bench.report import show  # noqa: E402
from enroll import office  # noqa: E402
from enroll.registry import Registry  # noqa: E402
from sekisho import crypto  # noqa: E402
from sekisho.policy import Policy, sign_policy  # noqa: E402
from sekisho.store.keysource import InsecureFileKeySource  # noqa: E402
from sekisho.store.records import KeySlot, SlotKind, UserRecord  # noqa: E402

SIM = office.Sim(iccid="8981100000000000042", apn="closed.city.lg.jp", apn_user="u", apn_password="p" * 16)


def fill(registry: Registry, n: int) -> list[str]:
    registry.set_role("madoguchi", [f"業務アプリ{i:02d}" for i in range(6)], {"store_url": "https://citrix.lg.jp/"})
    ids = []
    with registry.transaction() as c:
        for i in range(n):
            uid = f"K{i:06d}"
            private, public = crypto.x25519_generate()
            record = UserRecord(user_id=uid, display_name="試験 太郎", kana="シケン タロウ", department="市民課",
                                roles=("madoguchi",), identity_public=public)
            slot = KeySlot.create(user_id=uid, slot_id=1, kind=SlotKind.FIDO2_UV, identity_private=private,
                                  secrets={"hmac-secret-uv": os.urandom(32)},
                                  params={"cred": os.urandom(64), "rp": "sekisho", "aaguid": os.urandom(16)})
            c.execute("INSERT INTO users VALUES (?, ?, 1, 0)", (uid, record.to_cbor()))
            c.execute("INSERT INTO slots VALUES (?, 1, ?, NULL, ?, 0)",
                      (uid, slot.kind.value, registry.seal("slots", f"{uid}/1", slot.to_cbor())))
            ids.append(uid)
    return ids


def measure(work: Path, n: int, signed: office.SignedPolicy, it_private: bytearray, it_public: bytes
            ) -> tuple[float, float, int]:
    registry = Registry.create(work / "registry.db", InsecureFileKeySource(work / "station.key"))
    ids = fill(registry, n)
    laptop = work / "laptop"
    source = InsecureFileKeySource(work / "laptop.key")
    request = device.init(laptop, source, crypto.public_key_pem(it_public).encode())
    t = time.perf_counter()
    bundle = office.provision(registry, request.to_bytes(), confirmed_fingerprint=request.fingerprint, users=ids,
                              sim=SIM, signed_policy=signed, it_private=it_private)
    provision_s = time.perf_counter() - t
    t = time.perf_counter()
    device.install(laptop, source, bundle)
    install_s = time.perf_counter() - t
    registry.close()
    return provision_s, install_s, len(bundle)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--small", type=int, default=1000)
    args = ap.parse_args()
    it_private, it_public = crypto.ed25519_generate()
    text = Policy(permitted_slot_kinds=(SlotKind.FIDO2_UV,)).to_toml().encode()
    signed = office.SignedPolicy(text, sign_policy(text, it_private), it_public)
    results = {}
    for n in (args.small, args.users):
        with tempfile.TemporaryDirectory(prefix="sekisho-bench-") as tmp:
            results[n] = measure(Path(tmp), n, signed, it_private, it_public)
    small, large = results[args.small], results[args.users]
    result = {
        "provision_per_user_ms": round(large[0] * 1000 / args.users, 3),
        "install_per_user_ms": round(large[1] * 1000 / args.users, 3),
        f"install_ratio_{args.users}_vs_{args.small}": round(large[1] / small[1], 2),
        "bundle_bytes_per_user": round(large[2] / args.users),
        "users": args.users,
        "goals": {"install_ratio_20000_vs_1000": 25, "note": "the ratio's goal is 1.25 x the ratio of users"},
    }
    return show(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
