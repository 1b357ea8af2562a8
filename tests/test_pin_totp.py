"""The pin+totp slot as an attacker meets it: one undifferentiated failure for every wrong part."""

from __future__ import annotations

import pytest

from sekisho.errors import AuthenticationFailed, Cancelled, NoUsableSlot, UserDisabled
from sekisho.factors.interaction import ScriptedInteraction
from sekisho.factors.pin_totp import FAILED
from sekisho.policy import Policy
from sekisho.store.records import SlotKind
from sekisho.unlock import unlock
from tests.conftest import FAST_ARGON2, PIN_TOTP_POLICY, enrol_user

T0 = 1_800_000_015.0  # a fixed "now" in the middle of a 30-second step


@pytest.fixture
def user(store):
    return enrol_user(store, "K10234")


def attempt(store, user, *, passphrase=None, code=None, at=T0, policy=PIN_TOTP_POLICY):
    answers = {}
    if passphrase is not None:
        answers["passphrase"] = passphrase
    if code is not None:
        answers["code"] = code
    return unlock(store, policy, user.record.user_id, ScriptedInteraction(**answers), clock=lambda: at)


def last_step(store, user):
    state = store.read_state(user.record.user_id, "totp/1")
    return None if state is None else state["last_step"]


def test_right_passphrase_and_code_unlock(store, user) -> None:
    u = attempt(store, user, passphrase=user.passphrase, code=user.seed.code_at(T0))
    assert u.identity_private == user.identity_private
    assert u.slot_kind is SlotKind.PIN_TOTP
    assert last_step(store, user) == user.seed.step_at(T0)


def _refused(store, user, **kw) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        attempt(store, user, **kw)
    return str(info.value)


def test_wrong_code_replayed_code_and_out_of_window_code_all_fail_alike(store, user) -> None:
    messages = set()
    right = user.seed.code_at(T0)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    messages.add(_refused(store, user, passphrase=user.passphrase, code=wrong))
    for offset in (-90, -60, 60, 90):  # two and three steps away
        messages.add(_refused(store, user, passphrase=user.passphrase, code=user.seed.code_at(T0 + offset)))
    attempt(store, user, passphrase=user.passphrase, code=right)
    messages.add(_refused(store, user, passphrase=user.passphrase, code=right))  # replay
    messages.add(_refused(store, user, passphrase="mizu no oto ga suru 4", code=user.seed.code_at(T0 + 30)))
    assert messages == {FAILED}


def test_one_step_of_drift_either_way_is_accepted(store, user) -> None:
    attempt(store, user, passphrase=user.passphrase, code=user.seed.code_at(T0 - 30))
    attempt(store, user, passphrase=user.passphrase, code=user.seed.code_at(T0 + 30))


def test_a_wrong_passphrase_still_burns_the_code(store, user) -> None:
    code = user.seed.code_at(T0)
    _refused(store, user, passphrase="not the passphrase!", code=code)
    assert last_step(store, user) == user.seed.step_at(T0)
    _refused(store, user, passphrase=user.passphrase, code=code)


def test_a_wrong_code_writes_nothing(store, user) -> None:
    _refused(store, user, passphrase=user.passphrase, code="000000" if user.seed.code_at(T0) != "000000" else "1")
    assert last_step(store, user) is None


def test_a_clock_turned_back_cannot_reuse_older_codes(store, user) -> None:
    attempt(store, user, passphrase=user.passphrase, code=user.seed.code_at(T0))
    earlier = T0 - 3600
    _refused(store, user, passphrase=user.passphrase, code=user.seed.code_at(earlier), at=earlier)


def test_replay_survives_reopening_the_store(tmp_path, key_source, store, user) -> None:
    from sekisho.store.store import CredentialStore

    code = user.seed.code_at(T0)
    attempt(store, user, passphrase=user.passphrase, code=code)
    store.close()
    with CredentialStore.open(tmp_path / "store.db", key_source) as again:
        _refused(again, user, passphrase=user.passphrase, code=code)


def test_one_factor_alone_never_unlocks(store, user) -> None:
    with pytest.raises(Cancelled):
        attempt(store, user, passphrase=user.passphrase)
    with pytest.raises(Cancelled):
        attempt(store, user, code=user.seed.code_at(T0))
    for empty in ("", " "):
        _refused(store, user, passphrase=user.passphrase, code=empty)
        _refused(store, user, passphrase=empty, code=user.seed.code_at(T0 + 30 * len(empty)))


def test_full_width_code_typed_through_an_ime_is_accepted(store, user) -> None:
    code = user.seed.code_at(T0)
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in code)
    attempt(store, user, passphrase=user.passphrase, code=full_width)


def test_default_policy_does_not_permit_pin_totp(store, user) -> None:
    with pytest.raises(NoUsableSlot):
        attempt(store, user, passphrase=user.passphrase, code=user.seed.code_at(T0), policy=Policy())
    assert last_step(store, user) is None


def test_disabled_user_is_refused_before_any_factor(store, user) -> None:
    import dataclasses

    record, slots = store.get_user("K10234")
    store.put_user(dataclasses.replace(record, enabled=False), slots, replace=True)
    interaction = ScriptedInteraction(passphrase=user.passphrase, code=user.seed.code_at(T0))
    with pytest.raises(UserDisabled):
        unlock(store, PIN_TOTP_POLICY, "K10234", interaction, clock=lambda: T0)
    assert interaction.prompts == []


def test_slot_argon2_parameters_come_from_the_slot(store, user) -> None:
    _, slots = store.get_user("K10234")
    assert slots[0].argon2 == FAST_ARGON2
