"""FIDO2 slots through the real python-fido2 stack (Ctap2, ClientPin) against the software key.

The software key stands in for a USB key (it is a plain CtapDevice); everything above it
— python-fido2, the factor, the slot, the store — is what runs on a laptop."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from fido2 import cbor
from fido2.ctap import CtapDevice, CtapError
from fido2.ctap2.base import Ctap2
from fido2.ctap2.pin import ClientPin

from sekisho import crypto
from sekisho.devices.softkey import Finger, SoftKey, Touch
from sekisho.errors import (
    AttestationRejected,
    AuthenticationFailed,
    Cancelled,
    DeviceError,
    KeyNotFound,
    KeyPinBlocked,
    KeyPinInvalid,
    KeyUnsuitable,
)
from sekisho.factors import fido2
from sekisho.factors.interaction import ScriptedInteraction
from sekisho.policy import Policy
from sekisho.store.records import FactorKind, KeySlot, SlotKind, UserRecord
from sekisho.unlock import unlock
from tests.conftest import FAST_ARGON2, remember

POLICY = Policy(permitted_slot_kinds=(SlotKind.FIDO2_UV, SlotKind.PIN_FIDO2), argon2=FAST_ARGON2,
                allow_software_authenticators=True)
PRODUCTION = Policy(permitted_slot_kinds=(SlotKind.FIDO2_UV, SlotKind.PIN_FIDO2), argon2=FAST_ARGON2)
KEY_PIN = "482916"
PASSPHRASE = "tsuki no hikari ga sasu 4"
remember(KEY_PIN)
remember(PASSPHRASE)


def new_key(tmp_path: Path, name: str = "key", **options: Any) -> SoftKey:
    return SoftKey.create(tmp_path / f"{name}.json", **options)


def enrol(store, key: SoftKey, kind: SlotKind, user_id: str = "K10234", *, policy: Policy = POLICY,
          roots: list[bytes] | None = None, pin: str | None = KEY_PIN) -> KeySlot:
    private, public = crypto.x25519_generate()
    remember(private)
    slot = fido2.enrol(key, kind=kind, user_id=user_id, slot_id=1, identity_private=private,
                       interaction=ScriptedInteraction(pin=[pin] * 2 if pin else []),
                       trusted_roots=[key.attestation_root()] if roots is None else roots,
                       allow_software=policy.allow_software_authenticators, aaguids=policy.aaguids,
                       passphrase=PASSPHRASE if kind is SlotKind.PIN_FIDO2 else None,
                       argon2=policy.argon2 if kind is SlotKind.PIN_FIDO2 else None)
    store.put_user(UserRecord(user_id=user_id, display_name="佐藤 美咲", identity_public=public), [slot],
                   replace=True)
    return slot


def logon(store, user_id: str, keys: list[CtapDevice], policy: Policy = POLICY, **answers: Any):
    interaction = ScriptedInteraction(**answers)
    result = unlock(store, policy, user_id, interaction, devices=lambda: keys)
    return result, interaction


def raw_hmac_secret(key: CtapDevice, credential_id: bytes, salt: bytes, *, pin: str | None) -> bytes:
    """What anyone holding the key can get from it directly (the attacker's tool)."""
    ctap = Ctap2(key)
    client = ClientPin(ctap)
    proto = client.protocol
    ka, shared = proto.encapsulate(ctap.client_pin(proto.VERSION, ClientPin.CMD.GET_KEY_AGREEMENT)[1])
    enc = proto.encrypt(shared, salt)
    cdh = os.urandom(32)
    extra = {}
    if pin is not None:
        token = client.get_pin_token(pin, ClientPin.PERMISSION.GET_ASSERTION, fido2.RP_ID)
        extra = {"pin_uv_param": proto.authenticate(token, cdh), "pin_uv_protocol": proto.VERSION}
    extension = {"hmac-secret": {1: ka, 2: enc, 3: proto.authenticate(shared, enc), 4: proto.VERSION}}
    response = ctap.get_assertion(fido2.RP_ID, cdh, [{"type": "public-key", "id": credential_id}], extension,
                                  **extra)
    return proto.decrypt(shared, response.auth_data.extensions["hmac-secret"])


# --- both slot kinds open with their factors ----------------------------------------------


def test_fido2_uv_with_the_key_pin(tmp_path, store) -> None:
    key = new_key(tmp_path, pin=KEY_PIN)
    slot = enrol(store, key, SlotKind.FIDO2_UV)
    assert slot.params["uv_method"] == "pin" and slot.params["client_pin"] and slot.params["software"]
    assert slot.params["aaguid"] == key.aaguid and slot.params["attestation"] == "packed"
    unlocked, interaction = logon(store, "K10234", [key], pin=KEY_PIN)
    assert unlocked.uv_method == "pin"
    assert unlocked.factors == (FactorKind.POSSESSION, FactorKind.KNOWLEDGE)
    assert interaction.prompts == ["pin", "touch"]


def test_fido2_uv_with_a_fingerprint(tmp_path, store) -> None:
    key = new_key(tmp_path, fingerprint=True)
    slot = enrol(store, key, SlotKind.FIDO2_UV, pin=None)
    assert slot.params["builtin_uv"] and slot.params["uv_method"] == "fingerprint"
    unlocked, interaction = logon(store, "K10234", [key])
    assert unlocked.uv_method == "fingerprint"
    assert unlocked.factors == (FactorKind.POSSESSION, FactorKind.BIOMETRIC)
    assert interaction.prompts == ["fingerprint"]  # the finger is the touch


def test_pin_fido2_with_passphrase_and_key(tmp_path, store) -> None:
    key = new_key(tmp_path)  # a key with no PIN and no sensor is enough for pin+fido2
    slot = enrol(store, key, SlotKind.PIN_FIDO2, pin=None)
    assert slot.argon2 == FAST_ARGON2
    unlocked, interaction = logon(store, "K10234", [key], passphrase=PASSPHRASE)
    assert unlocked.slot_kind is SlotKind.PIN_FIDO2 and unlocked.uv_method == "none"
    assert unlocked.factors == (FactorKind.KNOWLEDGE, FactorKind.POSSESSION)
    assert interaction.prompts == ["passphrase", "touch"]


def test_the_right_key_is_found_among_several(tmp_path, store) -> None:
    mine, other = new_key(tmp_path, "mine", pin=KEY_PIN), new_key(tmp_path, "other", pin="111111")
    enrol(store, mine, SlotKind.FIDO2_UV)
    unlocked, interaction = logon(store, "K10234", [other, mine], pin=KEY_PIN)
    assert unlocked.user.user_id == "K10234"
    assert interaction.prompts.count("touch") == 1  # the other key was asked silently


CHILD = """
import sys
from pathlib import Path
from fido2.ctap2.base import Ctap2
from fido2.ctap2.pin import ClientPin
from sekisho.devices.softkey import SoftKey
try:
    ClientPin(Ctap2(SoftKey.load(Path(sys.argv[1])))).get_pin_token("000000")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_the_key_file_carries_over_to_another_process(tmp_path, store) -> None:
    import subprocess
    import sys

    key = new_key(tmp_path, pin=KEY_PIN)
    enrol(store, key, SlotKind.FIDO2_UV)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(key.path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert "PIN_INVALID" in proc.stdout, proc.stdout + proc.stderr
    again = SoftKey.load(key.path)  # the other process's wrong PIN counted on the same key
    with pytest.raises(KeyPinInvalid) as info:
        logon(store, "K10234", [again], pin="000000")
    assert info.value.attempts_remaining == 6
    assert logon(store, "K10234", [again], pin=KEY_PIN)[0].uv_method == "pin"


@pytest.mark.parametrize("version", [1, 2])
def test_both_pin_protocols_give_the_same_outputs(tmp_path, store, version: int) -> None:
    from fido2.ctap2.pin import PinProtocolV1, PinProtocolV2

    key = new_key(tmp_path, pin=KEY_PIN)
    slot = enrol(store, key, SlotKind.FIDO2_UV)
    ctap = Ctap2(key)
    proto = PinProtocolV1() if version == 1 else PinProtocolV2()
    token = ClientPin(ctap, proto).get_pin_token(KEY_PIN, ClientPin.PERMISSION.GET_ASSERTION, fido2.RP_ID)
    ka, shared = proto.encapsulate(ctap.client_pin(version, ClientPin.CMD.GET_KEY_AGREEMENT)[1])
    enc = proto.encrypt(shared, slot.params["salt"])
    cdh = os.urandom(32)
    response = ctap.get_assertion(fido2.RP_ID, cdh, [{"type": "public-key", "id": slot.params["cred"]}],
                                  {"hmac-secret": {1: ka, 2: enc, 3: proto.authenticate(shared, enc), 4: version}},
                                  pin_uv_param=proto.authenticate(token, cdh), pin_uv_protocol=version)
    output = proto.decrypt(shared, response.auth_data.extensions["hmac-secret"])
    assert slot.open("K10234", {"hmac-secret-uv": output})
    with pytest.raises(CtapError) as err:  # a forged pinUvAuthParam is refused
        ctap.get_assertion(fido2.RP_ID, cdh, [{"type": "public-key", "id": slot.params["cred"]}],
                           pin_uv_param=os.urandom(16 if version == 1 else 32), pin_uv_protocol=version)
    assert err.value.code == CtapError.ERR.PIN_AUTH_INVALID


# --- ... and with nothing less -------------------------------------------------------------


def test_the_no_uv_output_does_not_open_a_fido2_uv_slot(tmp_path, store) -> None:
    key = new_key(tmp_path, pin=KEY_PIN)
    slot = enrol(store, key, SlotKind.FIDO2_UV)
    private = slot.params["cred"]
    touch_only = raw_hmac_secret(key, private, slot.params["salt"], pin=None)
    with_uv = raw_hmac_secret(key, private, slot.params["salt"], pin=KEY_PIN)
    assert touch_only != with_uv
    with pytest.raises(AuthenticationFailed):
        slot.open("K10234", {"hmac-secret-uv": touch_only})
    assert slot.open("K10234", {"hmac-secret-uv": with_uv})  # the control: the UV output does open it


def test_random_outputs_and_another_credential_do_not_open(tmp_path, store) -> None:
    key = new_key(tmp_path, pin=KEY_PIN)
    slot = enrol(store, key, SlotKind.FIDO2_UV)
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            slot.open("K10234", {"hmac-secret-uv": os.urandom(32)})
    other = enrol(store, key, SlotKind.FIDO2_UV, user_id="K20581")  # a second credential on the same key
    output = raw_hmac_secret(key, other.params["cred"], slot.params["salt"], pin=KEY_PIN)
    with pytest.raises(AuthenticationFailed):
        slot.open("K10234", {"hmac-secret-uv": output})


def test_another_users_key_is_not_found(tmp_path, store) -> None:
    mine, theirs = new_key(tmp_path, "mine", pin=KEY_PIN), new_key(tmp_path, "theirs", pin=KEY_PIN)
    enrol(store, mine, SlotKind.FIDO2_UV, user_id="K10234")
    enrol(store, theirs, SlotKind.FIDO2_UV, user_id="K20581")
    with pytest.raises(KeyNotFound) as info:
        logon(store, "K10234", [theirs], pin=KEY_PIN)
    assert "Insert your own security key" in info.value.diagnostics()


def test_pin_fido2_needs_both(tmp_path, store) -> None:
    key = new_key(tmp_path)
    slot = enrol(store, key, SlotKind.PIN_FIDO2, pin=None)
    with pytest.raises(KeyNotFound):  # the passphrase without the key
        logon(store, "K10234", [], passphrase=PASSPHRASE)
    with pytest.raises(AuthenticationFailed, match="security key or the passphrase"):
        logon(store, "K10234", [key], passphrase="tsuki no hikari ga sasu 5")
    # The key alone: its output with a guessed passphrase, offline.
    output = raw_hmac_secret(key, slot.params["cred"], slot.params["salt"], pin=None)
    wrong = crypto.argon2id(b"guess guess guess", slot.argon2_salt, slot.argon2)
    with pytest.raises(AuthenticationFailed):
        slot.open("K10234", {"passphrase": wrong, "hmac-secret": output})


def test_the_uv_output_does_not_open_a_pin_fido2_slot(tmp_path, store) -> None:
    key = new_key(tmp_path, pin=KEY_PIN)
    slot = enrol(store, key, SlotKind.PIN_FIDO2)
    from sekisho.factors import passphrase as pp

    right = pp.derive(PASSPHRASE, slot.argon2_salt, slot.argon2)
    with_uv = raw_hmac_secret(key, slot.params["cred"], slot.params["salt"], pin=KEY_PIN)
    with pytest.raises(AuthenticationFailed):
        slot.open("K10234", {"passphrase": right, "hmac-secret": with_uv})
    touch_only = raw_hmac_secret(key, slot.params["cred"], slot.params["salt"], pin=None)
    assert slot.open("K10234", {"passphrase": right, "hmac-secret": touch_only})


# --- the key's own guessing limits ------------------------------------------------------------


def test_key_pin_retries_then_blocked(tmp_path, store) -> None:
    key = new_key(tmp_path, pin=KEY_PIN)
    enrol(store, key, SlotKind.FIDO2_UV)
    remaining = []
    for attempt in range(8):
        try:
            logon(store, "K10234", [key], pin="000000")
        except KeyPinInvalid as exc:
            remaining.append(exc.attempts_remaining)
        except KeyPinBlocked as exc:
            remaining.append("reinsert" if "inserted again" in str(exc) else "blocked")
            key.power_cycle()
        assert attempt < 7 or remaining[-1] == "blocked"
    assert remaining == [7, 6, "reinsert", 4, 3, "reinsert", 1, "blocked"]
    with pytest.raises(KeyPinBlocked, match="blocked"):  # even the right PIN now
        logon(store, "K10234", [key], pin=KEY_PIN)
    assert SoftKey.load(key.path)._state.pin_retries == 0  # the counter is the key's, and it is kept


def test_a_right_pin_resets_the_counter(tmp_path, store) -> None:
    key = new_key(tmp_path, pin=KEY_PIN)
    enrol(store, key, SlotKind.FIDO2_UV)
    with pytest.raises(KeyPinInvalid) as info:
        logon(store, "K10234", [key], pin="000000")
    assert info.value.attempts_remaining == 7
    logon(store, "K10234", [key], pin=KEY_PIN)
    with pytest.raises(KeyPinInvalid) as info:
        logon(store, "K10234", [key], pin="000000")
    assert info.value.attempts_remaining == 7


def test_a_wrong_finger_then_the_pin(tmp_path, store) -> None:
    key = new_key(tmp_path, fingerprint=True, pin=KEY_PIN)
    enrol(store, key, SlotKind.FIDO2_UV, pin=None)
    key.finger = Finger.OTHER
    for left in (4, 3, 2, 1):
        with pytest.raises(AuthenticationFailed, match=f"not recognised \\({left} attempts remaining"):
            logon(store, "K10234", [key])
    # The fifth wrong finger blocks the sensor: the key's PIN verifies the user instead.
    unlocked, interaction = logon(store, "K10234", [key], pin=KEY_PIN)
    assert unlocked.uv_method == "pin" and interaction.prompts == ["fingerprint", "pin", "touch"]
    key.finger = Finger.MATCH  # the right PIN unblocked the sensor again
    assert logon(store, "K10234", [key])[0].uv_method == "fingerprint"


def test_no_touch_is_a_cancel(tmp_path, store) -> None:
    key = new_key(tmp_path, pin=KEY_PIN)
    enrol(store, key, SlotKind.FIDO2_UV)
    key.touch = Touch.REFUSED
    with pytest.raises(Cancelled, match="not touched"):
        logon(store, "K10234", [key], pin=KEY_PIN)


# --- alwaysUv, attestation, policy -----------------------------------------------------------


def test_always_uv_key_cannot_hold_pin_fido2(tmp_path, store) -> None:
    key = new_key(tmp_path, always_uv=True, pin=KEY_PIN)
    with pytest.raises(KeyUnsuitable, match="alwaysUv") as info:
        enrol(store, key, SlotKind.PIN_FIDO2)
    assert "fingerprint or key-PIN slot" in info.value.diagnostics()
    enrol(store, key, SlotKind.FIDO2_UV)
    assert logon(store, "K10234", [key], pin=KEY_PIN)[0].uv_method == "pin"
    # And the key itself refuses a touch-only hmac-secret.
    with pytest.raises(CtapError) as err:
        raw_hmac_secret(key, store.get_user("K10234")[1][0].params["cred"], os.urandom(32), pin=None)
    assert err.value.code == CtapError.ERR.PUAT_REQUIRED


def test_a_key_without_pin_or_sensor_cannot_hold_fido2_uv(tmp_path, store) -> None:
    with pytest.raises(KeyUnsuitable, match="no fingerprint or PIN"):
        enrol(store, new_key(tmp_path), SlotKind.FIDO2_UV, pin=None)


def test_attestation_must_chain_to_a_trusted_root(tmp_path, store) -> None:
    key, stranger = new_key(tmp_path, pin=KEY_PIN), new_key(tmp_path, "stranger")
    with pytest.raises(AttestationRejected, match="could not prove its model"):
        enrol(store, key, SlotKind.FIDO2_UV, roots=[stranger.attestation_root()])
    with pytest.raises(AttestationRejected):
        enrol(store, key, SlotKind.FIDO2_UV, roots=[])
    # Root names are not unique: the right root is found by its signature, not its name.
    assert enrol(store, key, SlotKind.FIDO2_UV, roots=[stranger.attestation_root(), key.attestation_root()])


def test_aaguid_allow_list(tmp_path, store) -> None:
    key = new_key(tmp_path, pin=KEY_PIN)
    listed = Policy(permitted_slot_kinds=POLICY.permitted_slot_kinds, argon2=FAST_ARGON2,
                    allow_software_authenticators=True, aaguids=("5e415e4f-0f7a-4c6b-9d2e-536f66744b79",))
    other_model = Policy(permitted_slot_kinds=POLICY.permitted_slot_kinds, argon2=FAST_ARGON2,
                         allow_software_authenticators=True, aaguids=("ee882879-721c-4913-9775-3dfcce97072a",))
    with pytest.raises(AttestationRejected, match="not on IT's list"):
        enrol(store, key, SlotKind.FIDO2_UV, policy=other_model)
    enrol(store, key, SlotKind.FIDO2_UV, policy=listed)
    assert logon(store, "K10234", [key], listed, pin=KEY_PIN)[0]
    with pytest.raises(AttestationRejected):  # the list changed after enrolment
        logon(store, "K10234", [key], other_model, pin=KEY_PIN)


def test_software_key_refused_by_a_production_policy(tmp_path, store) -> None:
    key = new_key(tmp_path, pin=KEY_PIN)
    with pytest.raises(AttestationRejected, match="software authenticator"):
        enrol(store, key, SlotKind.FIDO2_UV, policy=PRODUCTION)
    enrol(store, key, SlotKind.FIDO2_UV)  # enrolled while software keys were allowed ...
    interaction = ScriptedInteraction(pin=KEY_PIN)
    with pytest.raises(AttestationRejected):  # ... refused once the policy says otherwise
        unlock(store, PRODUCTION, "K10234", interaction, devices=lambda: [key])
    assert interaction.prompts == []  # refused before the key or the person is asked anything


# --- devices that misbehave --------------------------------------------------------------------


class FaultyKey(CtapDevice):
    """Passes commands to a SoftKey and spoils the answer to one CTAP2 command."""

    def __init__(self, key: SoftKey, command: int, fault: str) -> None:
        self.key, self.command, self.fault = key, command, fault

    @property
    def capabilities(self) -> int:
        return self.key.capabilities

    @classmethod
    def list_devices(cls):  # type: ignore[no-untyped-def]
        return iter(())

    def call(self, cmd, data=b"", event=None, on_keepalive=None):  # type: ignore[no-untyped-def]
        if data[:1] != bytes([self.command]):
            return self.key.call(cmd, data, event, on_keepalive)
        if self.fault == "vanish":
            raise OSError(19, "No such device")
        answer = self.key.call(cmd, data, event, on_keepalive)
        return {
            "garbage-cbor": b"\x00\xff\xfe\xfd",
            "truncated-cbor": answer[: len(answer) // 2],
            "not-a-map": b"\x00\x83\x01\x02\x03",
            "odd-status": b"\x6a",
            "empty": b"",
            "wrong-types": b"\x00" + cbor.encode({1: 5, 2: "x", 3: 7}),
        }[self.fault]


@pytest.mark.parametrize("command", [0x02, 0x06])
@pytest.mark.parametrize("fault", ["vanish", "garbage-cbor", "truncated-cbor", "not-a-map", "odd-status", "empty",
                                   "wrong-types"])
def test_a_misbehaving_key_gives_a_clear_error(tmp_path, store, command: int, fault: str) -> None:
    key = new_key(tmp_path, pin=KEY_PIN)
    enrol(store, key, SlotKind.FIDO2_UV)
    with pytest.raises((DeviceError, KeyNotFound)) as info:
        logon(store, "K10234", [FaultyKey(key, command, fault)], pin=KEY_PIN)
    message = info.value.diagnostics()
    assert "security key" in message
    assert "Traceback" not in message and KEY_PIN not in message
    assert logon(store, "K10234", [key], pin=KEY_PIN)[0]  # the real key still works afterwards


def test_a_key_that_vanishes_at_enrolment(tmp_path, store) -> None:
    key = new_key(tmp_path, pin=KEY_PIN)
    with pytest.raises(DeviceError, match="stopped answering"):
        enrol(store, FaultyKey(key, 0x01, "vanish"), SlotKind.FIDO2_UV, roots=[key.attestation_root()])  # type: ignore[arg-type]


def test_discoverable_credential_identifies_its_user(tmp_path) -> None:
    # Not used for slots yet: a touch that names the user, for the logon window.
    key = new_key(tmp_path, pin=KEY_PIN)
    ctap = Ctap2(key)
    token = ClientPin(ctap).get_pin_token(KEY_PIN, ClientPin.PERMISSION.MAKE_CREDENTIAL, fido2.RP_ID)
    cdh = hashlib.sha256(b"x").digest()
    proto = ClientPin(ctap).protocol
    ctap.make_credential(cdh, {"id": fido2.RP_ID}, {"id": b"K10234", "name": "K10234"},
                         [{"type": "public-key", "alg": -7}], options={"rk": True},
                         pin_uv_param=proto.authenticate(token, cdh), pin_uv_protocol=proto.VERSION)
    response = ctap.get_assertion(fido2.RP_ID, cdh)
    assert response.user == {"id": b"K10234"}


def test_no_pin_or_key_output_in_reprs_logs_or_errors(tmp_path, store, caplog) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    key = new_key(tmp_path, pin=KEY_PIN)
    slot = enrol(store, key, SlotKind.FIDO2_UV)
    outputs = [raw_hmac_secret(key, slot.params["cred"], slot.params["salt"], pin=p) for p in (None, KEY_PIN)]
    for output in outputs:
        remember(output)
    unlocked, interaction = logon(store, "K10234", [key], pin=KEY_PIN)
    errors = []
    for bad in ("000000", "111111"):
        with pytest.raises(KeyPinInvalid) as info:
            logon(store, "K10234", [key], pin=bad)
        errors.append(info.value)
    texts = [repr(x) for x in (slot, unlocked, interaction, key, fido2.KeyInfo.from_ctap(Ctap2(key)))]
    texts += [e.diagnostics() for e in errors] + [repr(e) for e in errors] + [caplog.text]
    for secret in (KEY_PIN.encode(), *outputs, bytes(unlocked.identity_private)):
        for encoding in (secret, secret.hex().encode()):
            assert not any(encoding.decode("latin-1") in t for t in texts)


def test_a_user_without_their_key_falls_back_to_their_next_slot(tmp_path, store) -> None:
    from sekisho import crypto as c
    from sekisho.factors import pin_totp
    from sekisho.factors.totp import TotpSeed

    key = new_key(tmp_path, pin=KEY_PIN)
    private, public = c.x25519_generate()
    fido_slot = fido2.enrol(key, kind=SlotKind.FIDO2_UV, user_id="K10234", slot_id=1, identity_private=private,
                            interaction=ScriptedInteraction(pin=[KEY_PIN] * 2), trusted_roots=[key.attestation_root()],
                            allow_software=True)
    seed = TotpSeed.generate()
    totp_slot = pin_totp.enrol(user_id="K10234", slot_id=2, identity_private=private, passphrase=PASSPHRASE,
                               seed=seed, argon2=FAST_ARGON2)
    store.put_user(UserRecord(user_id="K10234", display_name="x", identity_public=public), [totp_slot, fido_slot])
    policy = Policy(permitted_slot_kinds=(SlotKind.FIDO2_UV, SlotKind.PIN_TOTP), argon2=FAST_ARGON2,
                    allow_software_authenticators=True)
    unlocked = unlock(store, policy, "K10234", ScriptedInteraction(pin=KEY_PIN), devices=lambda: [key])
    assert unlocked.slot_kind is SlotKind.FIDO2_UV  # the policy's first choice when the key is there
    answers = ScriptedInteraction(passphrase=PASSPHRASE, code=seed.code_at(1_800_000_000))
    unlocked = unlock(store, policy, "K10234", answers, devices=lambda: [], clock=lambda: 1_800_000_000)
    assert unlocked.slot_kind is SlotKind.PIN_TOTP  # no key: the next permitted slot
    with pytest.raises(KeyPinInvalid):  # a wrong PIN is the answer, not a reason to try the next slot
        unlock(store, policy, "K10234", ScriptedInteraction(pin="000000"), devices=lambda: [key])
