"""Grants open only for their user, on their laptop, with IT's signature."""

from __future__ import annotations

import dataclasses

import pytest

from sekisho import crypto
from sekisho.errors import GrantError, UserNotFound
from sekisho.store.grants import Grant, SealedGrant, issue_grant, open_grant, unseal_grant_key
from tests.conftest import enrol_user


def grant_for(user_id: str, *, device: str = "laptop-0001", serial: int = 1) -> Grant:
    return Grant(device_id=device, user_id=user_id, serial=serial, issued_at=1_800_000_000,
                 network={"apn": "closed.city.lg.jp", "user": "u", "password": "apn-pass", "iccid": "8981"},
                 citrix={"store_url": "https://citrix.city.lg.jp/Citrix/Store"}, apps=("住民記録", "証明書交付"))


def open_as(identity, sealed: SealedGrant, it_public: bytes, *, device="laptop-0001", user=None) -> Grant:
    key = unseal_grant_key(sealed, identity)
    return open_grant(sealed, key, it_public=it_public, device_id=device, user_id=user or sealed.user_id)


def test_grant_round_trip_through_the_store(store, it_key) -> None:
    u = enrol_user(store, "K10234")
    sealed, _ = issue_grant(grant_for("K10234"), it_signing_key=it_key[0], user_public=u.record.identity_public)
    store.put_grant(sealed)
    got = open_as(u.identity_private, store.get_grant("K10234"), it_key[1])
    assert got == grant_for("K10234")
    assert got.network["password"] == "apn-pass"


def test_another_users_grant_does_not_open(store, it_key) -> None:
    a, b = enrol_user(store, "K10234"), enrol_user(store, "K20581")
    sealed_b, _ = issue_grant(grant_for("K20581"), it_signing_key=it_key[0], user_public=b.record.identity_public)
    with pytest.raises(GrantError, match="not sealed to this user"):
        open_as(a.identity_private, sealed_b, it_key[1])


def test_a_grant_naming_another_user_is_refused_even_if_sealed_to_me(store, it_key) -> None:
    a = enrol_user(store, "K10234")
    sealed, _ = issue_grant(grant_for("K20581"), it_signing_key=it_key[0], user_public=a.record.identity_public)
    with pytest.raises(GrantError, match="another user"):
        open_as(a.identity_private, sealed, it_key[1], user="K10234")


def test_a_grant_for_another_laptop_is_refused(store, it_key) -> None:
    a = enrol_user(store, "K10234")
    sealed, _ = issue_grant(grant_for("K10234", device="laptop-0002"), it_signing_key=it_key[0],
                            user_public=a.record.identity_public)
    with pytest.raises(GrantError, match="another laptop"):
        store.put_grant(sealed)
    with pytest.raises(GrantError, match="another laptop"):
        open_as(a.identity_private, sealed, it_key[1], device="laptop-0001")


def test_a_grant_with_metadata_relabelled_for_this_laptop_is_refused(store, it_key) -> None:
    a = enrol_user(store, "K10234")
    sealed, _ = issue_grant(grant_for("K10234", device="laptop-0002"), it_signing_key=it_key[0],
                            user_public=a.record.identity_public)
    relabelled = dataclasses.replace(sealed, device_id="laptop-0001")
    store.put_grant(relabelled)  # the clear label says this laptop; the sealed content does not
    with pytest.raises(GrantError):
        open_as(a.identity_private, store.get_grant("K10234"), it_key[1])


def test_a_grant_signed_by_another_key_is_refused(store, it_key) -> None:
    a = enrol_user(store, "K10234")
    rogue, _ = crypto.ed25519_generate()
    # Anyone can seal to a user's public key; only IT can sign.
    planted, _ = issue_grant(grant_for("K10234"), it_signing_key=rogue, user_public=a.record.identity_public)
    store.put_grant(planted)
    with pytest.raises(GrantError, match="signature"):
        open_as(a.identity_private, store.get_grant("K10234"), it_key[1])


def test_any_flipped_bit_in_a_sealed_grant_is_refused(store, it_key) -> None:
    a = enrol_user(store, "K10234")
    sealed, _ = issue_grant(grant_for("K10234"), it_signing_key=it_key[0], user_public=a.record.identity_public)
    for field in ("ciphertext", "user_seal"):
        blob = getattr(sealed, field)
        for i in range(0, len(blob), 7):
            bad = bytearray(blob)
            bad[i] ^= 0x04
            with pytest.raises(GrantError):
                open_as(a.identity_private, dataclasses.replace(sealed, **{field: bytes(bad)}), it_key[1])
    for serial in (2, 0):
        with pytest.raises(GrantError):
            open_as(a.identity_private, dataclasses.replace(sealed, serial=serial), it_key[1])


def test_an_older_grant_cannot_replace_a_newer_one(store, it_key) -> None:
    a = enrol_user(store, "K10234")
    new, _ = issue_grant(grant_for("K10234", serial=5), it_signing_key=it_key[0], user_public=a.record.identity_public)
    old, _ = issue_grant(grant_for("K10234", serial=4), it_signing_key=it_key[0], user_public=a.record.identity_public)
    store.put_grant(new)
    with pytest.raises(GrantError, match="older"):
        store.put_grant(old)
    assert store.get_grant("K10234").serial == 5


def test_grant_for_unknown_user_is_refused(store, it_key) -> None:
    _, pub = crypto.x25519_generate()
    sealed, _ = issue_grant(grant_for("K77777"), it_signing_key=it_key[0], user_public=pub)
    with pytest.raises(UserNotFound):
        store.put_grant(sealed)


def test_grant_repr_hides_the_sim_credentials() -> None:
    assert "apn-pass" not in repr(grant_for("K10234"))
