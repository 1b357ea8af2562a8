"""Key slots open with all their secrets and nothing less."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekisho import crypto
from sekisho.crypto import Argon2Params
from sekisho.errors import AuthenticationFailed, FormatError
from sekisho.store.records import KeySlot, PassphraseBinding, SlotKind, UserRecord

TWO = SlotKind.TEST_TWO_SECRET


@pytest.fixture
def two_secret_slot():
    identity, _ = crypto.x25519_generate()
    s1, s2 = os.urandom(32), os.urandom(32)
    slot = KeySlot.create(user_id="K10234", slot_id=3, kind=TWO, identity_private=identity,
                          secrets={"first": s1, "second": s2})
    return slot, identity, s1, s2


def test_two_secret_slot_opens_with_both(two_secret_slot) -> None:
    slot, identity, s1, s2 = two_secret_slot
    assert slot.open("K10234", {"first": s1, "second": s2}) == identity


@pytest.mark.parametrize("which", ["first", "second"])
@pytest.mark.parametrize("other", ["zero", "random", "same-as-the-known-one"])
def test_one_secret_and_a_guess_never_opens(two_secret_slot, which, other) -> None:
    slot, _, s1, s2 = two_secret_slot
    known = {"first": s1, "second": s2}[which]
    guess = {"zero": bytes(32), "random": os.urandom(32), "same-as-the-known-one": known}[other]
    secrets = {which: known, ("second" if which == "first" else "first"): guess}
    with pytest.raises(AuthenticationFailed):
        slot.open("K10234", secrets)


def test_secrets_in_swapped_order_do_not_open(two_secret_slot) -> None:
    slot, _, s1, s2 = two_secret_slot
    with pytest.raises(AuthenticationFailed):
        slot.open("K10234", {"first": s2, "second": s1})


def test_slot_is_bound_to_user_kind_and_id(two_secret_slot) -> None:
    slot, _, s1, s2 = two_secret_slot
    secrets = {"first": s1, "second": s2}
    with pytest.raises(AuthenticationFailed):
        slot.open("K20581", secrets)
    moved = KeySlot(slot_id=4, kind=TWO, salt=slot.salt, wrapped=slot.wrapped)
    with pytest.raises(AuthenticationFailed):
        moved.open("K10234", secrets)


def test_missing_or_short_secrets_are_a_format_error(two_secret_slot) -> None:
    slot, _, s1, _ = two_secret_slot
    with pytest.raises(FormatError):
        slot.open("K10234", {"first": s1})
    with pytest.raises(FormatError):
        slot.open("K10234", {"first": s1, "second": b"short"})


def test_every_flipped_bit_in_the_wrapped_identity_fails(two_secret_slot) -> None:
    slot, _, s1, s2 = two_secret_slot
    for i in range(len(slot.wrapped)):
        bad = bytearray(slot.wrapped)
        bad[i] ^= 0x80
        tampered = KeySlot(slot_id=slot.slot_id, kind=TWO, salt=slot.salt, wrapped=bytes(bad))
        with pytest.raises(AuthenticationFailed):
            tampered.open("K10234", {"first": s1, "second": s2})


def test_passphrase_kinds_need_argon2_parameters() -> None:
    with pytest.raises(FormatError):
        KeySlot(slot_id=1, kind=SlotKind.PIN_TOTP, salt=bytes(32), wrapped=bytes(60))


text = st.text(min_size=1, max_size=20).filter(lambda s: s.strip() and s.isprintable() and "/" not in s
                                                   and "\\" not in s)
params = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**40, 2**40), st.text(max_size=10),
                                                          st.binary(max_size=40), st.booleans()), max_size=4)


@settings(max_examples=150)
@given(kind=st.sampled_from(list(SlotKind)), slot_id=st.integers(0, 2**31 - 1), p=params, sealed=params,
       created=st.integers(0, 2**40))
def test_slot_cbor_round_trip(kind, slot_id, p, sealed, created) -> None:
    argon = Argon2Params(time_cost=2, memory_kib=2048, parallelism=2) if kind.uses_passphrase else None
    slot = KeySlot(slot_id=slot_id, kind=kind, salt=os.urandom(32), wrapped=os.urandom(60), argon2=argon,
                   argon2_salt=os.urandom(16) if argon else None, params=p, sealed=sealed, created_at=created)
    assert KeySlot.from_cbor(slot.to_cbor()) == slot


@settings(max_examples=150)
@given(uid=text, name=st.text(max_size=30), kana=st.text(max_size=30), dept=st.text(max_size=30),
       roles=st.lists(st.text(max_size=10), max_size=4), enabled=st.booleans(), rev=st.integers(0, 2**31),
       binding=st.booleans())
def test_user_record_cbor_round_trip(uid, name, kana, dept, roles, enabled, rev, binding) -> None:
    try:
        record = UserRecord(
            user_id=uid, display_name=name, kana=kana, department=dept, roles=tuple(roles),
            identity_public=os.urandom(32), enabled=enabled, revision=rev,
            passphrase_binding=PassphraseBinding(salt=os.urandom(16), argon2=Argon2Params(), public=os.urandom(32))
            if binding else None,
        )
    except FormatError:
        return  # ids that normalise to nothing or to control characters are refused up front
    assert UserRecord.from_cbor(record.to_cbor()) == record


@pytest.mark.parametrize("garbage", [b"", b"\xff", b"\xa1\x61v\x02", os.urandom(64)])
def test_malformed_records_are_format_errors(garbage) -> None:
    for parse in (KeySlot.from_cbor, UserRecord.from_cbor):
        with pytest.raises(FormatError):
            parse(garbage)
