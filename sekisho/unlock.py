"""Unlocking a user offline: pick a permitted slot, ask its factors, open the identity.

This is the core of the gate; the service adds guessing limits, the lease and the
trail around it. Slot kinds plug in through :data:`OPENERS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

from sekisho import crypto
from sekisho.devices.card import pcsc_cards
from sekisho.errors import Cancelled, FactorError, IntegrityError, KeyNotFound, NoUsableSlot, UserDisabled
from sekisho.factors import cardsig, fido2, pin_totp, piv
from sekisho.factors.interaction import Prompt, UserInteraction
from sekisho.factors.piv import CardSource
from sekisho.policy import Policy
from sekisho.store.grants import Grant, open_grant, unseal_grant_key
from sekisho.store.records import FactorKind, KeySlot, SlotKind, UserRecord
from sekisho.store.store import CredentialStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class OpenRequest:
    store: CredentialStore
    policy: Policy
    user: UserRecord
    slot: KeySlot
    interaction: UserInteraction
    now: float
    devices: fido2.DeviceSource = fido2.connected_keys
    cards: CardSource = pcsc_cards
    #: Called (durably recorded by the gate) as soon as the possession factor is proven.
    on_possession: Callable[[], None] = lambda: None


@dataclass(frozen=True, kw_only=True)
class Opened:
    """What an opener gives back: the identity, and how a device verified the user."""

    identity: bytearray = field(repr=False)
    uv_method: str | None = None


Opener = Callable[[OpenRequest], Opened]


def _open_pin_totp(req: OpenRequest) -> Opened:
    return Opened(identity=pin_totp.open_slot(
        store=req.store,
        user_id=req.user.user_id,
        slot=req.slot,
        interaction=req.interaction,
        now=req.now,
        drift_steps=req.policy.totp_drift_steps,
        on_possession=req.on_possession,
    ))


def _open_fido2(req: OpenRequest) -> Opened:
    result = fido2.open_slot(
        slot=req.slot,
        user_id=req.user.user_id,
        devices=req.devices(),
        interaction=req.interaction,
        allow_software=req.policy.allow_software_authenticators,
        aaguids=req.policy.aaguids,
        on_possession=req.on_possession,
    )
    return Opened(identity=result.identity, uv_method=result.uv_method)


def _open_piv(req: OpenRequest) -> Opened:
    return Opened(identity=piv.open_slot(slot=req.slot, user_id=req.user.user_id, cards=req.cards(),
                                         interaction=req.interaction, on_possession=req.on_possession))


def _open_card_sig(req: OpenRequest) -> Opened:
    return Opened(identity=cardsig.open_slot(slot=req.slot, user_id=req.user.user_id, cards=req.cards(),
                                             interaction=req.interaction, on_possession=req.on_possession))


#: How each slot kind is opened.
OPENERS: dict[SlotKind, Opener] = {
    SlotKind.PIN_TOTP: _open_pin_totp,
    SlotKind.FIDO2_UV: _open_fido2,
    SlotKind.PIN_FIDO2: _open_fido2,
    SlotKind.PIV: _open_piv,
    SlotKind.CARD_SIG: _open_card_sig,
}


def factor_kinds(kind: SlotKind, uv_method: str | None = None) -> tuple[FactorKind, ...]:
    """The two kinds of factor a slot opening proved (for the trail and the auditors)."""
    if kind is SlotKind.FIDO2_UV:
        second = FactorKind.BIOMETRIC if uv_method == "fingerprint" else FactorKind.KNOWLEDGE
        return (FactorKind.POSSESSION, second)
    return (FactorKind.KNOWLEDGE, FactorKind.POSSESSION)


@dataclass(kw_only=True)
class Unlocked:
    """A user whose identity is open. Call :meth:`close` to wipe it."""

    user: UserRecord
    slot_id: int
    slot_kind: SlotKind
    identity_private: bytearray = field(repr=False)
    #: How the key verified the user for a fido2-uv slot ("fingerprint" or "pin").
    uv_method: str | None = None

    @property
    def factors(self) -> tuple[FactorKind, ...]:
        return factor_kinds(self.slot_kind, self.uv_method)

    def open_grant(self, store: CredentialStore, it_public: bytes) -> Grant:
        sealed = store.get_grant(self.user.user_id)
        key = unseal_grant_key(sealed, self.identity_private)
        try:
            return open_grant(
                sealed, key, it_public=it_public, device_id=store.device_id, user_id=self.user.user_id
            )
        finally:
            crypto.wipe(key)

    def close(self) -> None:
        crypto.wipe(self.identity_private)


def usable_slots(policy: Policy, slots: list[KeySlot]) -> list[KeySlot]:
    """The user's slots the policy permits and Sekisho can open, in the policy's order."""
    return [
        slot
        for kind in policy.permitted_slot_kinds
        for slot in slots
        if slot.kind is kind and kind in OPENERS
    ]


#: Seconds between looks for an inserted key or card while the logon waits for one.
DEVICE_POLL = 0.5


def _open_first_present(candidates: list[KeySlot], request: OpenRequest) -> tuple[Opened, KeySlot]:
    """Open the first slot whose device is present, in the policy's order.

    Only an absent key moves on to the next slot; a wrong factor is the answer.
    """
    interaction = request.interaction
    deadline: float | None = None
    while True:
        absent: KeyNotFound | None = None
        for slot in candidates:
            try:
                return OPENERS[slot.kind](replace(request, slot=slot)), slot
            except KeyNotFound as exc:
                absent = absent or exc
                log.info("no device for the %s slot; trying the next one", slot.kind.value)
            except FactorError as exc:
                exc.slot_kind = slot.kind  # type: ignore[attr-defined]  # for the trail: which slot refused
                raise
        assert absent is not None  # noqa: S101 - candidates is never empty here
        # None of the person's keys or cards is there: a logon window asks for it and waits.
        if deadline is None and interaction.device_wait > 0:
            interaction.prompt_insert(Prompt(user_id=request.user.user_id))
            deadline = time.monotonic() + interaction.device_wait
        if deadline is None or time.monotonic() >= deadline:
            raise absent
        cancel = interaction.cancel_event
        if cancel is not None and cancel.wait(DEVICE_POLL):
            raise Cancelled("Cancelled.")
        if cancel is None:
            time.sleep(DEVICE_POLL)


def unlock(
    store: CredentialStore,
    policy: Policy,
    user_id: str,
    interaction: UserInteraction,
    *,
    clock: Callable[[], float] = time.time,
    devices: fido2.DeviceSource | None = None,
    on_possession: Callable[[], None] | None = None,
    exclude: Collection[SlotKind] = (),
    cards: CardSource | None = None,
) -> Unlocked:
    """Open ``user_id``'s identity with the first permitted slot they hold.

    ``devices`` lists the connected security keys (by default, every USB FIDO2 key);
    ``on_possession`` is called once the possession factor is proven (the key or token
    answered for this user); ``exclude`` takes slot kinds out for this attempt (TOTP
    while the clock is behind).
    """
    record, slots = store.get_user(user_id)
    if not record.enabled:
        raise UserDisabled("This staff id is disabled on this laptop.")
    candidates = [s for s in usable_slots(policy, slots) if s.kind not in exclude]
    if not candidates:
        if any(s.kind in exclude for s in usable_slots(policy, slots)):
            raise NoUsableSlot("One-time codes cannot be checked now: the laptop's clock is behind.",
                               advice="Ask IT to correct the clock, or log on with your security key.")
        raise NoUsableSlot("None of this user's enrolled factors is permitted on this laptop.")
    opened, slot = _open_first_present(candidates, OpenRequest(
        store=store, policy=policy, user=record, slot=candidates[0], interaction=interaction, now=clock(),
        devices=devices or fido2.connected_keys, on_possession=on_possession or (lambda: None),
        cards=cards or pcsc_cards))
    if crypto.x25519_public(opened.identity) != record.identity_public:
        crypto.wipe(opened.identity)
        raise IntegrityError("The slot opened but holds another identity: the store was altered.")
    log.info("unlocked with a %s slot", slot.kind.value)
    return Unlocked(user=record, slot_id=slot.slot_id, slot_kind=slot.kind, identity_private=opened.identity,
                    uv_method=opened.uv_method)
