"""The policy loads only with IT's signature over its exact bytes, and refuses what it does not know."""

from __future__ import annotations

import pytest

from sekisho import crypto
from sekisho.crypto import Argon2Params
from sekisho.errors import PolicyError
from sekisho.policy import Policy, load_policy, load_policy_file, parse_policy, sign_policy
from sekisho.store.records import SlotKind


def test_defaults_are_the_safe_choice() -> None:
    p = Policy()
    assert p.permitted_slot_kinds == (SlotKind.FIDO2_UV, SlotKind.PIV, SlotKind.CARD_SIG)
    assert not p.permits(SlotKind.PIN_TOTP) and not p.permits(SlotKind.PIN_FIDO2)
    assert p.passphrase_min_length == 10
    assert p.argon2 == Argon2Params(time_cost=3, memory_kib=65536, parallelism=4)
    assert p.allow_software_authenticators is False


def test_round_trip_through_toml_and_signature(tmp_path, it_key) -> None:
    p = Policy(permitted_slot_kinds=(SlotKind.FIDO2_UV, SlotKind.PIN_TOTP), passphrase_min_length=12,
               argon2=Argon2Params(time_cost=4, memory_kib=131072, parallelism=2),
               allow_software_authenticators=True, totp_drift_steps=0, lease_days=7, lease_max_unlocks=20,
               aaguids=("ee882879-721c-4913-9775-3dfcce97072a", "5e415e4f-0f7a-4c6b-9d2e-536f66744b79"))
    text = p.to_toml().encode()
    (tmp_path / "policy.toml").write_bytes(text)
    (tmp_path / "policy.toml.sig").write_bytes(sign_policy(text, it_key[0]))
    assert load_policy_file(tmp_path / "policy.toml", it_key[1]) == p


def test_an_empty_policy_is_the_default() -> None:
    assert parse_policy(b"") == Policy()


def test_signature_by_another_key_is_refused(it_key) -> None:
    text = Policy().to_toml().encode()
    rogue, _ = crypto.ed25519_generate()
    with pytest.raises(PolicyError, match="signature"):
        load_policy(text, sign_policy(text, rogue), it_key[1])


def test_every_changed_byte_is_refused(it_key) -> None:
    text = Policy().to_toml().encode()
    sig = sign_policy(text, it_key[0])
    for i in range(0, len(text), 5):
        changed = bytearray(text)
        changed[i] ^= 0x01
        with pytest.raises(PolicyError):
            load_policy(bytes(changed), sig, it_key[1])


@pytest.mark.parametrize("sig", [b"", b"!!!", b"AAAA", crypto.b64e(bytes(64)).encode()])
def test_malformed_signatures_are_refused(sig, it_key) -> None:
    with pytest.raises(PolicyError):
        load_policy(Policy().to_toml().encode(), sig, it_key[1])


def test_missing_signature_file(tmp_path, it_key) -> None:
    (tmp_path / "policy.toml").write_text("version = 1\n")
    with pytest.raises(PolicyError, match="no signature file"):
        load_policy_file(tmp_path / "policy.toml", it_key[1])


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("version = [", "not valid TOML"),
        ("versoin = 1", "'versoin'"),
        ("[slots]\npermited = []", "'slots.permited'"),
        ("[network]\napn = 'x'", "'network.apn'"),
        ("[slots]\npermitted = ['fido2-uv', 'magic']", "'magic'"),
        ("[slots]\npermitted = ['test-two-secret']", "'test-two-secret'"),
        ("[slots]\npermitted = []", "at least one"),
        ("[slots]\npermitted = ['piv', 'piv']", "twice"),
        ("[slots]\npermitted = 'piv'", "type list"),
        ("[passphrase]\nmin_length = 8", "at least 10"),
        ("[passphrase]\nmin_length = '12'", "type int"),
        ("[authenticators]\nallow_software = 1", "type bool"),
        ("[argon2id]\nmemory_kib = 4", "argon2id"),
        ("[totp]\ndrift_steps = 5", "drift_steps"),
        ("[lease]\ndays = 0", "lease.days"),
        ("[lease]\nmax_unlocks = -1", "lease.max_unlocks"),
        ("[authenticators]\naaguids = ['EE882879-721C-4913-9775-3DFCCE97072A']", "is not an AAGUID"),
        ("[authenticators]\naaguids = ['yubikey']", "'yubikey' is not an AAGUID"),
        ("[authenticators]\naaguids = [1]", "is not an AAGUID"),
        ("version = 2", "version 2"),
        ("slots = 3", "'slots'"),
    ],
)
def test_malformed_policies_name_what_is_wrong(text: str, named: str) -> None:
    with pytest.raises(PolicyError, match=named.replace("[", r"\[")):
        parse_policy(text.encode())


def test_non_utf8_policy(it_key) -> None:
    with pytest.raises(PolicyError, match="UTF-8"):
        parse_policy(b"\xff\xfe")


def test_it_will_not_sign_a_policy_no_laptop_would_load(it_key) -> None:
    with pytest.raises(PolicyError):
        sign_policy(b"[passphrase]\nmin_length = 4\n", it_key[0])
