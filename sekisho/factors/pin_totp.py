"""The ``pin+totp`` slot: a passphrase (the key) and a TOTP code (checked, first).

A code cannot carry key material, so the slot's key comes from Argon2id(passphrase)
alone and the code is checked against a seed sealed in the store. The code is checked
first and its step burnt before the passphrase is tried, so a guess at the passphrase
needs a fresh valid code each time. Every failure looks the same from outside: one
message, and Argon2id runs whether or not the code was right.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sekisho import crypto
from sekisho.crypto import Argon2Params
from sekisho.errors import AuthenticationFailed
from sekisho.factors import passphrase as pp
from sekisho.factors import totp
from sekisho.factors.interaction import Prompt, UserInteraction
from sekisho.store.records import KeySlot, SlotKind

FAILED = "The passphrase or the one-time code is not correct."


class StateStore(Protocol):
    def update_state(
        self, user_id: str, name: str, update: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]: ...


class _CodeRefused(Exception):
    pass


def state_name(slot: KeySlot) -> str:
    return f"totp/{slot.slot_id}"


def enrol(
    *,
    user_id: str,
    slot_id: int,
    identity_private: bytes | bytearray,
    passphrase: str,
    seed: totp.TotpSeed,
    argon2: Argon2Params,
    created_at: int = 0,
) -> KeySlot:
    """Build a ``pin+totp`` slot. Check the passphrase rules before calling this."""
    salt = pp.new_salt()
    secret = pp.derive(passphrase, salt, argon2)
    try:
        return KeySlot.create(
            user_id=user_id,
            slot_id=slot_id,
            kind=SlotKind.PIN_TOTP,
            identity_private=identity_private,
            secrets={"passphrase": secret},
            argon2=argon2,
            argon2_salt=salt,
            params={"digits": seed.digits, "period": seed.period},
            sealed={"totp": seed.to_json()},
            created_at=created_at,
        )
    finally:
        crypto.wipe(secret)


def open_slot(
    *,
    store: StateStore,
    user_id: str,
    slot: KeySlot,
    interaction: UserInteraction,
    now: float,
    drift_steps: int,
    attempts_remaining: int | None = None,
    on_possession: Callable[[], None] | None = None,
) -> bytearray:
    """Ask for the passphrase and the code; return the identity or fail undifferentiated."""
    prompt = Prompt(user_id=user_id, attempts_remaining=attempts_remaining)
    passphrase = interaction.request_passphrase(prompt)
    code = interaction.request_code(prompt)
    seed = totp.TotpSeed.from_json(dict(slot.sealed["totp"]))

    def consume(old: dict[str, Any] | None) -> dict[str, Any]:
        last = old.get("last_step") if old else None
        step = totp.accept(seed, code, now, last, drift=drift_steps)
        if step is None:
            raise _CodeRefused
        return {"last_step": step}

    try:
        # Durable before anything else happens: the step is burnt even if the
        # passphrase turns out wrong, so an observed code is never good twice.
        store.update_state(user_id, state_name(slot), consume)
        code_ok = True
    except _CodeRefused:
        code_ok = False
    if code_ok and on_possession is not None:
        on_possession()  # the token's code proves possession (never told to the person)
    assert slot.argon2 is not None and slot.argon2_salt is not None  # noqa: S101 - KeySlot checks
    secret = pp.derive(passphrase, slot.argon2_salt, slot.argon2)
    try:
        if not code_ok:
            raise AuthenticationFailed(FAILED)
        try:
            return slot.open(user_id, {"passphrase": secret})
        except AuthenticationFailed:
            raise AuthenticationFailed(FAILED) from None
    finally:
        crypto.wipe(secret)
