"""From the station to a laptop and back: enrol, init, provision, install, unlock, check in,
revoke — with the software keys standing in for the users' security keys."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import device
from agent.service import Service
from enroll import office
from enroll.registry import Registry, RegistryError
from sekisho import crypto
from sekisho.bundle import BundleError, DeviceRequest
from sekisho.devices.softkey import SoftKey
from sekisho.errors import PolicyError, UserNotFound
from sekisho.factors.interaction import ScriptedInteraction
from sekisho.factors.totp import TotpSeed
from sekisho.policy import Policy, sign_policy
from sekisho.store.keysource import InsecureFileKeySource
from sekisho.store.records import SlotKind, UserRecord
from sekisho.store.store import CredentialStore
from tests.conftest import FAST_ARGON2, remember

PIN = "260731"
PASSPHRASE = "natsu no umi wa aoi 5"
APN_PASSWORD = "apn-password-77"
for s in (PIN, PASSPHRASE, APN_PASSWORD):
    remember(s)
SIM = office.Sim(iccid="8981100000000000042", apn="closed.city.lg.jp", apn_user="sekisho", apn_password=APN_PASSWORD)


@dataclass
class Station:
    root: Path
    registry: Registry
    it_private: bytearray
    it_public: bytes
    policy: office.SignedPolicy
    keys: dict[str, SoftKey]
    seed: TotpSeed


def make_station(root: Path) -> Station:
    root.mkdir(parents=True)
    registry = Registry.create(root / "registry.db", InsecureFileKeySource(root / "station.key"))
    it_private, it_public = crypto.ed25519_generate()
    policy = Policy(permitted_slot_kinds=(SlotKind.FIDO2_UV, SlotKind.PIN_TOTP), argon2=FAST_ARGON2,
                    network_backend="simulated",
                    allow_software_authenticators=True)
    text = policy.to_toml().encode()
    signed = office.SignedPolicy(text, sign_policy(text, it_private), it_public)
    registry.set_role("madoguchi", ["住民記録システム", "証明書交付"], {"store_url": "https://citrix.city.lg.jp/"})
    registry.set_role("senkyo", ["期日前投票システム"], {"store_url": "https://citrix.city.lg.jp/"})
    keys = {"K30712": SoftKey.create(root / "finger.json", fingerprint=True, pin=PIN),
            "K41156": SoftKey.create(root / "pin.json", pin=PIN)}
    roots = [k.attestation_root() for k in keys.values()]
    seed = TotpSeed.generate()
    remember(seed.secret)
    for uid, name, roles in (("K30712", "鈴木 花子", ("madoguchi",)), ("K41156", "伊藤 大輔", ("senkyo",)),
                             ("K10234", "佐藤 美咲", ("madoguchi", "senkyo"))):
        registry.add_user(UserRecord(user_id=uid, display_name=name, roles=roles, identity_public=bytes(32)))
    office.enrol_user(registry, "K30712", [office.SlotRequest(kind=SlotKind.FIDO2_UV, device=keys["K30712"])],
                      policy=signed.policy, interaction=ScriptedInteraction(), trusted_roots=roots)
    office.enrol_user(registry, "K41156", [office.SlotRequest(kind=SlotKind.FIDO2_UV, device=keys["K41156"])],
                      policy=signed.policy, interaction=ScriptedInteraction(pin=[PIN] * 2), trusted_roots=roots)
    office.enrol_user(registry, "K10234", [office.SlotRequest(kind=SlotKind.PIN_TOTP, totp_seed=seed)],
                      policy=signed.policy, interaction=ScriptedInteraction(), trusted_roots=roots,
                      passphrase=PASSPHRASE)
    return Station(root, registry, it_private, it_public, signed, keys, seed)


def init_laptop(station: Station, root: Path) -> bytes:
    device.init(root, InsecureFileKeySource(root.parent / f"{root.name}.key"),
                crypto.public_key_pem(station.it_public).encode())
    return (root / "device-request.json").read_bytes()


def provision(station: Station, request: bytes, users: tuple[str, ...] = ("K30712", "K41156", "K10234")) -> bytes:
    return office.provision(station.registry, request, confirmed_fingerprint=_fp(request), users=list(users),
                            sim=SIM, signed_policy=station.policy, it_private=station.it_private)


def key_source(root: Path) -> InsecureFileKeySource:
    return InsecureFileKeySource(root.parent / f"{root.name}.key")


@pytest.fixture
def station(tmp_path: Path) -> Station:
    return make_station(tmp_path / "station")


def open_service(station: Station, root: Path) -> Service:
    keys = list(station.keys.values())
    return Service.open(root, key_source(root), devices=lambda: keys)


def test_end_to_end_enrol_provision_unlock_checkin_revoke(station: Station, tmp_path: Path) -> None:
    laptop = tmp_path / "laptop"
    request = init_laptop(station, laptop)
    bundle = provision(station, request)
    installed = device.install(laptop, key_source(laptop), bundle)
    assert (installed.kind, installed.serial, installed.users) == ("provision", 1, 3)

    service = open_service(station, laptop)
    gate = service.gate
    for uid, answers in (("K30712", {}), ("K41156", {"pin": PIN}),
                         ("K10234", {"passphrase": PASSPHRASE, "code": station.seed.code_at(gate.clock.read().wall)})):
        session = gate.unlock(uid, ScriptedInteraction(**answers))
        assert session.grant.network["iccid"] == SIM.iccid
        assert session.grant.device_id == gate.store.device_id
        gate.lock()
    assert sorted(session.grant.apps) == ["住民記録システム", "期日前投票システム", "証明書交付"]
    service.close()

    # The laptop comes back: IT revokes K41156 and checks it in.
    station.registry.set_enabled("K41156", False)
    checkin_request = device.checkin_request(laptop, key_source(laptop)).to_bytes()
    result = office.checkin(station.registry, checkin_request, signed_policy=station.policy,
                            it_private=station.it_private)
    assert result.anomaly is None and result.removed == ["K41156"] and result.entries > 10
    assert station.registry.device(json.loads(request)["device_id"]).last_head == result.head
    applied = device.install(laptop, key_source(laptop), result.renewal)
    assert (applied.kind, applied.serial, applied.removed) == ("renewal", 2, 1)

    service = open_service(station, laptop)
    assert service.gate.status(details=False)["lease"]["days_left"] in (13, 14)  # renewed from the office's time
    with pytest.raises(UserNotFound):
        service.gate.unlock("K41156", ScriptedInteraction(pin=PIN))
    assert service.gate.unlock("K30712", ScriptedInteraction()).user_id == "K30712"
    events = [e.event for e in service.gate.trail.entries()]
    assert events.count("bundle-installed") == 1 and events.count("check-in") == 1
    assert service.gate.trail.verify().entries == len(events)
    service.close()


# --- refusals, each leaving everything as it was ----------------------------------------------


def store_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.glob("store.db*")))


def test_a_bundle_for_another_laptop(station: Station, tmp_path: Path) -> None:
    bundle = provision(station, init_laptop(station, tmp_path / "a"))
    init_laptop(station, tmp_path / "b")
    before = store_bytes(tmp_path / "b")
    with pytest.raises(BundleError, match="made for laptop"):
        device.install(tmp_path / "b", key_source(tmp_path / "b"), bundle)
    assert store_bytes(tmp_path / "b") == before


@pytest.mark.parametrize("damage", ["flip", "foreign"])
def test_a_broken_or_foreign_signature(station: Station, tmp_path: Path, damage: str) -> None:
    laptop = tmp_path / "laptop"
    request = init_laptop(station, laptop)
    bundle = provision(station, request)
    if damage == "flip":
        outer = json.loads(bundle)
        signed = bytearray(base64.b64decode(outer["signed"]))
        signed[40] ^= 1
        bundle = crypto.canonical_json({"signed": crypto.b64e(bytes(signed)), "sig": outer["sig"]})
    else:
        rogue, _ = crypto.ed25519_generate()
        bundle = office.provision(station.registry, request, confirmed_fingerprint=_fp(request), users=["K30712"],
                                  sim=SIM, signed_policy=station.policy, it_private=rogue)
    before = store_bytes(laptop)
    with pytest.raises(BundleError, match="signature is not IT's"):
        device.install(laptop, key_source(laptop), bundle)
    assert store_bytes(laptop) == before


def _fp(request: bytes) -> str:
    return DeviceRequest.from_bytes(request).fingerprint


def test_an_older_bundle_over_a_newer_one_and_a_replayed_renewal(station: Station, tmp_path: Path) -> None:
    laptop = tmp_path / "laptop"
    request = init_laptop(station, laptop)
    first = provision(station, request)
    second = provision(station, request, users=("K30712",))
    device.install(laptop, key_source(laptop), second)
    with pytest.raises(BundleError, match="not newer"):
        device.install(laptop, key_source(laptop), first)
    renewal = office.checkin(station.registry, device.checkin_request(laptop, key_source(laptop)).to_bytes(),
                             signed_policy=station.policy, it_private=station.it_private).renewal
    device.install(laptop, key_source(laptop), renewal)
    with pytest.raises(BundleError, match="not newer"):
        device.install(laptop, key_source(laptop), renewal)


def test_a_renewal_for_another_laptop(station: Station, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    device.install(a, key_source(a), provision(station, init_laptop(station, a)))
    device.install(b, key_source(b), provision(station, init_laptop(station, b)))
    renewal = office.checkin(station.registry, device.checkin_request(a, key_source(a)).to_bytes(),
                             signed_policy=station.policy, it_private=station.it_private).renewal
    with pytest.raises(BundleError, match="made for laptop"):
        device.install(b, key_source(b), renewal)


def test_a_request_whose_fingerprint_it_did_not_confirm(station: Station, tmp_path: Path) -> None:
    request = init_laptop(station, tmp_path / "laptop")
    with pytest.raises(BundleError, match="fingerprint"):
        office.provision(station.registry, request, confirmed_fingerprint="0000-0000-0000-0000-0000",
                         users=["K30712"], sim=SIM, signed_policy=station.policy, it_private=station.it_private)
    assert station.registry.devices() == []


def test_an_unsigned_or_wrongly_signed_policy(station: Station, tmp_path: Path) -> None:
    request = init_laptop(station, tmp_path / "laptop")
    rogue, _ = crypto.ed25519_generate()
    for signature in (b"", sign_policy(station.policy.text, rogue)):
        bad = office.SignedPolicy(station.policy.text, signature, station.it_public)
        with pytest.raises(PolicyError):
            office.provision(station.registry, request, confirmed_fingerprint=_fp(request), users=["K30712"],
                             sim=SIM, signed_policy=bad, it_private=station.it_private)
    assert station.registry.devices() == []  # nothing recorded


@pytest.mark.parametrize("tamper", ["truncated", "forked"])
def test_a_checkin_whose_trail_was_truncated_or_forked_is_flagged(station: Station, tmp_path: Path,
                                                                  tamper: str) -> None:
    laptop = tmp_path / "laptop"
    device.install(laptop, key_source(laptop), provision(station, init_laptop(station, laptop)))
    service = open_service(station, laptop)
    service.gate.unlock("K30712", ScriptedInteraction())
    service.gate.lock()
    service.close()
    first = office.checkin(station.registry, device.checkin_request(laptop, key_source(laptop)).to_bytes(),
                           signed_policy=station.policy, it_private=station.it_private)
    device.install(laptop, key_source(laptop), first.renewal)
    request = json.loads(device.checkin_request(laptop, key_source(laptop)).to_bytes())
    lines = base64.b64decode(request["trail"]).splitlines(keepends=True)
    if tamper == "truncated":
        lines = lines[:3]  # before the head the office recorded last time
    else:
        other = tmp_path / "other"
        init_laptop(station, other)
        lines = (other / "trail.jsonl").read_bytes().splitlines(keepends=True)
    request["trail"] = crypto.b64e(b"".join(lines))
    data = crypto.canonical_json(request)
    with pytest.raises(RegistryError, match="CHECK-IN REFUSED"):
        office.checkin(station.registry, data, signed_policy=station.policy, it_private=station.it_private)
    device_row = station.registry.devices()[0]
    assert device_row.last_head == first.head and device_row.serial == 2  # nothing recorded
    flagged = office.checkin(station.registry, data, signed_policy=station.policy, it_private=station.it_private,
                             accept_anomaly=True)
    assert flagged.anomaly is not None


# --- durability ----------------------------------------------------------------------------------


class _Killed(BaseException):
    pass


def test_an_install_killed_midway_leaves_the_store_and_can_be_rerun(station: Station, tmp_path: Path,
                                                                     monkeypatch) -> None:
    laptop = tmp_path / "laptop"
    bundle = provision(station, init_laptop(station, laptop))
    real = CredentialStore._put_grant_in
    calls = []

    def dies_on_the_third(self, c, sealed):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise _Killed
        return real(self, c, sealed)

    monkeypatch.setattr(CredentialStore, "_put_grant_in", dies_on_the_third)
    with pytest.raises(_Killed):
        device.install(laptop, key_source(laptop), bundle)
    monkeypatch.undo()
    with CredentialStore.open(laptop / "store.db", key_source(laptop)) as store:
        assert store.user_count() == 0  # the transaction rolled back whole
        assert store.read_state(None, device.INSTALLED) is None
    assert device.install(laptop, key_source(laptop), bundle).users == 3  # rerun completes it


def test_a_provisioning_killed_before_the_registry_commit_can_be_rerun(station: Station, tmp_path: Path,
                                                                       monkeypatch) -> None:
    request = init_laptop(station, tmp_path / "laptop")
    real = Registry.transaction

    def dying(self):  # type: ignore[no-untyped-def]
        raise _Killed

    monkeypatch.setattr(Registry, "transaction", dying)
    with pytest.raises(_Killed):
        provision(station, request)
    monkeypatch.setattr(Registry, "transaction", real)
    assert station.registry.devices() == []
    bundle = provision(station, request)
    assert device.install(tmp_path / "laptop", key_source(tmp_path / "laptop"), bundle).serial == 1
    shutil.rmtree(tmp_path / "laptop")


KILLED_INSTALL = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from agent import device
from sekisho.store.keysource import InsecureFileKeySource
from sekisho.store.store import CredentialStore
real = CredentialStore._put_grant_in
calls = []
def die(self, c, sealed):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # the power goes, mid-transaction
    return real(self, c, sealed)
CredentialStore._put_grant_in = die
device.install(Path({laptop!r}), InsecureFileKeySource(Path({key!r})), Path({bundle!r}).read_bytes())
"""


def test_an_install_sigkilled_midway_leaves_the_old_store_and_reruns(station: Station, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    laptop = tmp_path / "laptop"
    bundle = provision(station, init_laptop(station, laptop))
    (tmp_path / "bundle.json").write_bytes(bundle)
    script = KILLED_INSTALL.format(root=str(Path(__file__).resolve().parent.parent), laptop=str(laptop),
                                   key=str(key_source(laptop).path), bundle=str(tmp_path / "bundle.json"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with CredentialStore.open(laptop / "store.db", key_source(laptop)) as store:
        assert store._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert store.user_count() == 0 and store.read_state(None, device.INSTALLED) is None
    assert device.install(laptop, key_source(laptop), bundle).users == 3
    service = open_service(station, laptop)
    assert service.gate.trail.verify().entries >= 2
    service.close()


def test_a_checkin_killed_before_the_registry_commit_can_be_rerun(station: Station, tmp_path: Path,
                                                                  monkeypatch) -> None:
    laptop = tmp_path / "laptop"
    device.install(laptop, key_source(laptop), provision(station, init_laptop(station, laptop)))
    request = device.checkin_request(laptop, key_source(laptop)).to_bytes()
    before = station.registry.devices()[0]
    real = Registry.transaction

    def dying(self):  # type: ignore[no-untyped-def]
        raise _Killed

    monkeypatch.setattr(Registry, "transaction", dying)
    with pytest.raises(_Killed):
        office.checkin(station.registry, request, signed_policy=station.policy, it_private=station.it_private)
    monkeypatch.setattr(Registry, "transaction", real)
    assert station.registry.devices()[0] == before
    result = office.checkin(station.registry, request, signed_policy=station.policy, it_private=station.it_private)
    assert device.install(laptop, key_source(laptop), result.renewal).serial == 2


def test_a_running_service_picks_up_a_new_policy(station: Station, tmp_path: Path) -> None:
    from sekisho.errors import NoUsableSlot

    laptop = tmp_path / "laptop"
    request = init_laptop(station, laptop)
    device.install(laptop, key_source(laptop), provision(station, request))
    service = open_service(station, laptop)
    stricter = Policy(permitted_slot_kinds=(SlotKind.FIDO2_UV,), argon2=FAST_ARGON2,
                      network_backend="simulated",
                      allow_software_authenticators=True)
    text = stricter.to_toml().encode()
    station.policy = office.SignedPolicy(text, sign_policy(text, station.it_private), station.it_public)
    device.install(laptop, key_source(laptop), provision(station, request))  # serial 2, same users
    code = station.seed.code_at(service.gate.clock.read().wall)
    service.reload_policy()  # what the control channel does before every logon
    with pytest.raises(NoUsableSlot):  # pin+totp is no longer permitted
        service.gate.unlock("K10234", ScriptedInteraction(passphrase=PASSPHRASE, code=code))
    assert "policy-installed" in [e.event for e in service.gate.trail.entries()]
    service.close()


def test_a_checkin_delivers_new_slots_reenables_and_announces_the_next_it_key(station: Station,
                                                                              tmp_path: Path) -> None:
    from sekisho.errors import KeyNotFound

    laptop = tmp_path / "laptop"
    device.install(laptop, key_source(laptop), provision(station, init_laptop(station, laptop)))
    # K41156 lost his key and enrols a new one at the office.
    new_key = SoftKey.create(tmp_path / "new-key.json", pin=PIN)
    office.enrol_user(station.registry, "K41156", [office.SlotRequest(kind=SlotKind.FIDO2_UV, device=new_key)],
                      policy=station.policy.policy, interaction=ScriptedInteraction(pin=[PIN] * 2),
                      trusted_roots=[new_key.attestation_root()])
    # K30712 was disabled on the laptop after ten failures.
    with CredentialStore.open(laptop / "store.db", key_source(laptop)) as store:
        store.update_state("K30712", "limits", lambda old: {"consecutive": 10, "possession": 10, "not_before": 0,
                                                            "disabled": True})
    next_private, next_public = crypto.ed25519_generate()
    rotation = office.Rotation(next_private, office.SignedPolicy(
        station.policy.text, sign_policy(station.policy.text, next_private), next_public))
    plain = office.checkin(station.registry, device.checkin_request(laptop, key_source(laptop)).to_bytes(),
                           signed_policy=station.policy, it_private=station.it_private, reenable=["K30712"])
    assert plain.updated == ["K41156"]  # only the re-enrolled user's records travel
    device.install(laptop, key_source(laptop), plain.renewal)
    result = office.checkin(station.registry, device.checkin_request(laptop, key_source(laptop)).to_bytes(),
                            signed_policy=station.policy, it_private=station.it_private, rotation=rotation)
    assert result.updated == ["K10234", "K30712", "K41156"]  # a rotation re-signs every grant
    device.install(laptop, key_source(laptop), result.renewal)
    assert crypto.public_key_from_pem((laptop / "it-public.pem").read_bytes(), what="x") == next_public

    keys = [station.keys["K41156"], station.keys["K30712"], new_key]
    service = Service.open(laptop, key_source(laptop), devices=lambda: keys[:2])
    with pytest.raises(KeyNotFound):  # the old key no longer opens anything
        service.gate.unlock("K41156", ScriptedInteraction(pin=PIN))
    service.close()
    service = Service.open(laptop, key_source(laptop), devices=lambda: keys)
    assert service.gate.unlock("K41156", ScriptedInteraction(pin=PIN)).user_id == "K41156"
    service.gate.lock()
    assert service.gate.unlock("K30712", ScriptedInteraction()).user_id == "K30712"  # re-enabled
    service.close()
    # From now on the laptop takes bundles signed with the new key only.
    old_signed = provision(station, (laptop / "device-request.json").read_bytes())
    with pytest.raises(BundleError, match="signature is not IT's"):
        device.install(laptop, key_source(laptop), old_signed)


def test_a_retired_laptop_is_never_provisioned_or_checked_in_again(station: Station, tmp_path: Path) -> None:
    laptop = tmp_path / "laptop"
    request = init_laptop(station, laptop)
    device.install(laptop, key_source(laptop), provision(station, request))
    station.registry.retire_device(json.loads(request)["device_id"], "lost")
    with pytest.raises(BundleError, match="retired"):
        provision(station, request)
    with pytest.raises(RegistryError, match="retired"):
        office.checkin(station.registry, device.checkin_request(laptop, key_source(laptop)).to_bytes(),
                       signed_policy=station.policy, it_private=station.it_private)


def test_a_revoked_factor_leaves_the_laptop_at_the_next_checkin(station: Station, tmp_path: Path) -> None:
    laptop = tmp_path / "laptop"
    device.install(laptop, key_source(laptop), provision(station, init_laptop(station, laptop)))
    station.registry.revoke_slot("K30712", 1)  # her key was lost
    result = office.checkin(station.registry, device.checkin_request(laptop, key_source(laptop)).to_bytes(),
                            signed_policy=station.policy, it_private=station.it_private)
    assert result.removed == ["K30712"]  # her only factor: she leaves the laptop until enrolled again
    device.install(laptop, key_source(laptop), result.renewal)
    service = open_service(station, laptop)
    with pytest.raises(UserNotFound):  # the lost key opens nothing on this laptop any more
        service.gate.unlock("K30712", ScriptedInteraction())
    service.close()
