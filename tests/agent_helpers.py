"""A provisioned laptop for the gate tests: store, trail, keys, grants, lease, on disk.

Three users: K10234 (pin+totp, passphrase-bound recovery codes), K20581 (fido2-uv, a key
with a PIN; recovery codes alone) and K30712 (pin+fido2, a key without PIN). The clock is
injected (wall and monotonic), the network simulated (no modem can run in tests)."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.clock import TrustedClock
from agent.gate import Gate, provision_extension_key
from agent.network import SimulatedNetwork
from sekisho import codes, crypto
from sekisho.devices.softkey import SoftKey
from sekisho.factors import fido2, pin_totp
from sekisho.factors.interaction import ScriptedInteraction
from sekisho.factors.totp import TotpSeed
from sekisho.policy import Policy, sign_policy
from sekisho.store.grants import Grant, issue_grant
from sekisho.store.keysource import InsecureFileKeySource
from sekisho.store.records import SlotKind, UserRecord
from sekisho.store.store import CredentialStore
from sekisho.trail import Trail
from tests.conftest import FAST_ARGON2, remember

T0 = 1_800_000_000.0  # 2027-01-15
POLICY = Policy(permitted_slot_kinds=(SlotKind.FIDO2_UV, SlotKind.PIN_FIDO2, SlotKind.PIN_TOTP), argon2=FAST_ARGON2,
                network_backend="simulated",  # the service tests run no modem
                allow_software_authenticators=True)
PASSPHRASE = {"K10234": "mizu no oto ga suru 3", "K30712": "hoshi no furu oka de 9"}
KEY_PIN = "482916"
SEED_HEX = "3132333435363738393031323334353637383930"
for secret in (*PASSPHRASE.values(), KEY_PIN, "apn-secret-1"):
    remember(secret)


class FakeClock:
    """Wall and monotonic time, moved by the test."""

    def __init__(self) -> None:
        self.wall_time = T0
        self.mono_time = 1000.0

    def wall(self) -> float:
        return self.wall_time

    def mono(self) -> float:
        return self.mono_time

    def advance(self, seconds: float, *, wall: bool = True) -> None:
        self.mono_time += seconds
        if wall:
            self.wall_time += seconds


@dataclass
class Laptop:
    root: Path
    gate: Gate
    clock: FakeClock
    network: SimulatedNetwork
    keys: dict[str, SoftKey]
    seed: TotpSeed
    recovery: dict[str, list[codes.RecoveryCode]]
    extension_key: bytes
    it_public: bytes
    extra: dict[str, object] = field(default_factory=dict)

    def code(self) -> str:
        return self.seed.code_at(self.clock.wall_time)

    def next_step(self) -> None:
        """The next TOTP step on the wall clock; a second of running time."""
        self.clock.wall_time += 30
        self.clock.mono_time += 1

    def answers(self, user: str, **override: object) -> ScriptedInteraction:
        base: dict[str, object] = {
            "K10234": {"passphrase": PASSPHRASE["K10234"], "code": self.code()},
            "K20581": {"pin": KEY_PIN},
            "K30712": {"passphrase": PASSPHRASE["K30712"]},
        }[user]
        return ScriptedInteraction(**(base | override))  # type: ignore[arg-type]


def open_gate(root: Path, clock: FakeClock, network: SimulatedNetwork, policy: Policy = POLICY) -> Gate:
    """The service's side: open the store, trail and pinned IT key from ``root``."""
    source = InsecureFileKeySource(root / "device.key")
    store = CredentialStore.open(root / "store.db", source)
    trail = Trail.open(root / "trail.jsonl", source, clock=clock.wall)
    it_public = crypto.public_key_from_pem((root / "it-public.pem").read_bytes(), what="IT key")
    keys = [SoftKey.load(p) for p in sorted(root.glob("key-*.json"))]
    return Gate(store=store, policy=policy, trail=trail, it_public=it_public, network=network,
                clock=TrustedClock(store, wall=clock.wall, monotonic=clock.mono, boot="boot-1"),
                devices=lambda: keys)


def make_laptop(root: Path, policy: Policy = POLICY) -> Laptop:
    root.mkdir(parents=True, exist_ok=True)
    clock = FakeClock()
    source = InsecureFileKeySource(root / "device.key")
    store = CredentialStore.create(root / "store.db", source, device_id="laptop-0001")
    Trail.create(root / "trail.jsonl", source, device_id="laptop-0001", clock=clock.wall).close()
    root.chmod(0o700)
    it_private, it_public = crypto.ed25519_generate()
    (root / "it-public.pem").write_text(crypto.public_key_pem(it_public))
    policy_text = policy.to_toml().encode()
    (root / "policy.toml").write_bytes(policy_text)
    (root / "policy.toml.sig").write_bytes(sign_policy(policy_text, it_private))
    seed = TotpSeed.from_hex(SEED_HEX)
    keys = {"K20581": SoftKey.create(root / "key-K20581.json", pin=KEY_PIN),
            "K30712": SoftKey.create(root / "key-K30712.json")}
    roots = [k.attestation_root() for k in keys.values()]
    recovery: dict[str, list[codes.RecoveryCode]] = {}
    for serial, uid in enumerate(("K10234", "K20581", "K30712"), start=1):
        private, public = crypto.x25519_generate()
        remember(private)
        binding = None
        if uid == "K10234":
            slot = pin_totp.enrol(user_id=uid, slot_id=1, identity_private=private, passphrase=PASSPHRASE[uid],
                                  seed=seed, argon2=FAST_ARGON2)
            binding = codes.passphrase_binding(PASSPHRASE[uid], FAST_ARGON2)
        else:
            kind = SlotKind.FIDO2_UV if uid == "K20581" else SlotKind.PIN_FIDO2
            slot = fido2.enrol(keys[uid], kind=kind, user_id=uid, slot_id=1, identity_private=private,
                               interaction=ScriptedInteraction(pin=[KEY_PIN] * 2), trusted_roots=roots,
                               allow_software=True, passphrase=PASSPHRASE.get(uid), argon2=FAST_ARGON2,
                               discoverable=uid == "K30712")  # K30712's key identifies her by a touch
        record = UserRecord(user_id=uid, display_name=f"職員 {uid}", identity_public=public,
                            passphrase_binding=binding)
        store.put_user(record, [slot])
        grant = Grant(device_id="laptop-0001", user_id=uid, serial=serial, issued_at=int(T0),
                      network={"apn": "closed.test.lg.jp", "user": uid.lower(), "password": "apn-secret-1",
                               "iccid": "8981100000000000001"}, apps=("住民記録",),
                      citrix={"store_url": "https://citrix.test.lg.jp/Citrix/Store/discovery"})
        sealed, grant_key = issue_grant(grant, it_signing_key=it_private, user_public=public)
        recovery[uid] = codes.new_recovery_codes(3)
        for c in recovery[uid]:
            remember(c.code)
        store.put_grant(codes.wrap_for_recovery(sealed, grant_key, recovery[uid], binding))
        crypto.wipe(grant_key)
    extension_key = codes.new_extension_key()
    remember(extension_key)
    provision_extension_key(store, extension_key)
    network = SimulatedNetwork()
    store.close()
    gate = open_gate(root, clock, network, policy)
    gate.lease.renew(gate.clock.confirm(T0), office_time=T0, days=policy.lease_days,
                     max_unlocks=policy.lease_max_unlocks)
    gate._state = gate._lockable_state()
    return Laptop(root=root, gate=gate, clock=clock, network=network, keys=keys, seed=seed, recovery=recovery,
                  extension_key=extension_key, it_public=it_public)


def extension_code(laptop: Laptop, days_from_now: int, sequence: int, device_id: str = "laptop-0001") -> str:
    end = dt.datetime.fromtimestamp(laptop.clock.wall_time, dt.UTC).date() + dt.timedelta(days=days_from_now)
    return codes.make_extension_code(laptop.extension_key, device_id, end, sequence)


def launch_policy(program: Path) -> Policy:
    """The test policy, allowing one stand-in VDI client."""
    return Policy(permitted_slot_kinds=POLICY.permitted_slot_kinds, argon2=POLICY.argon2,
                  allow_software_authenticators=True, network_backend="simulated",
                  launch_allowed=(str(program),), launch_close_timeout=5)


@contextlib.contextmanager
def serving(laptop: Laptop) -> Iterator[Path]:
    """The laptop's service on a control socket (in a directory other users can reach)."""
    from agent.service import Service

    sock_dir = Path(tempfile.mkdtemp(prefix="sekisho-"))
    sock_dir.chmod(0o755)
    service = Service(laptop.gate)
    path = sock_dir / "agent.sock"
    service.serve_in_thread(path)
    try:
        yield path
    finally:
        service.shutdown()
        shutil.rmtree(sock_dir, ignore_errors=True)
