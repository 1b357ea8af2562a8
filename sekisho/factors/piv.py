"""PIV cards as factors (``piv`` slots): ECDH with the card's key management key (9D).

As age-plugin-yubikey does: at enrolment an ephemeral P-256 key ``e`` is made and
``Z = ECDH(e, card key)`` computed on the station; the card proves it holds the key by
computing the same ``Z`` from ``e``'s public half (after its PIN). ``e`` is then
forgotten; its public half is stored with the slot. At logon the card computes ``Z``
again — only the card can, and only after its PIN, which the card counts (3 tries) — and
``Z`` opens the slot (through the slot's HKDF). Possession and knowledge are both
enforced by the card.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sekisho import crypto
from sekisho.devices.card import PIV_AID, ApduError, SmartCardConnection, check, parse_tlv, send, tlv
from sekisho.errors import AuthenticationFailed, DeviceError, FactorError, KeyNotFound, KeyPinBlocked, KeyPinInvalid
from sekisho.factors.interaction import Prompt, UserInteraction
from sekisho.store.records import KeySlot, SlotKind

CardSource = Callable[[], Iterable[SmartCardConnection]]
CERT_OBJECTS = {"9d": bytes.fromhex("5FC10B"), "9a": bytes.fromhex("5FC105")}


def select(card: SmartCardConnection) -> None:
    check(send(card, 0x00, 0xA4, 0x04, 0x00, PIV_AID), "the PIV application")


def certificate(card: SmartCardConnection, slot: str) -> x509.Certificate:
    data = check(send(card, 0x00, 0xCB, 0x3F, 0xFF, tlv(b"\x5c", CERT_OBJECTS[slot])), f"the {slot} certificate")
    try:
        cert = parse_tlv(parse_tlv(data)[0x53])[0x70]
        return x509.load_der_x509_certificate(cert)
    except (KeyError, ValueError, IndexError):
        raise DeviceError("The card's certificate is unreadable.") from None


def verify_pin(card: SmartCardConnection, pin: str) -> None:
    """The card checks its PIN and counts wrong ones itself."""
    padded = pin.encode("ascii", "replace")[:8].ljust(8, b"\xff")
    _, status = send(card, 0x00, 0x20, 0x00, 0x80, padded, le=None)
    if status == 0x9000:
        return
    if status == 0x6983:
        raise KeyPinBlocked("The card's PIN is blocked (too many wrong PINs).",
                            advice="Call the helpdesk: the card must be unblocked with its PUK at the office.")
    if status >> 4 == 0x63C:
        left = status & 0x0F
        raise KeyPinInvalid(f"The card's PIN is not correct ({left} attempts remaining).", attempts_remaining=left)
    raise ApduError("The card refused the PIN check", status=status)


def pin_retries(card: SmartCardConnection) -> int | None:
    _, status = send(card, 0x00, 0x20, 0x00, 0x80, b"", le=None)
    return status & 0x0F if status >> 4 == 0x63C else None


def ecdh(card: SmartCardConnection, peer: bytes) -> bytearray:
    """GENERAL AUTHENTICATE: ECDH between the card's 9D key and ``peer`` (uncompressed P-256)."""
    data = check(send(card, 0x00, 0x87, 0x11, 0x9D, tlv(b"\x7c", tlv(b"\x82", b"") + tlv(b"\x85", peer))),
                 "the key agreement")
    try:
        shared = parse_tlv(parse_tlv(data)[0x7C])[0x82]
    except (KeyError, IndexError):
        raise DeviceError("The card's key agreement answer is malformed.") from None
    if len(shared) != 32:
        raise DeviceError("The card's key agreement answer has the wrong length.")
    return bytearray(shared)


def _public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _pin(card: SmartCardConnection, interaction: UserInteraction, prompt: Prompt) -> None:
    retries = pin_retries(card)
    if retries == 0:
        raise KeyPinBlocked("The card's PIN is blocked (too many wrong PINs).")
    verify_pin(card, interaction.request_pin(Prompt(user_id=prompt.user_id, attempts_remaining=retries)))


@dataclass(frozen=True)
class FoundCard:
    card: SmartCardConnection
    public: bytes


def find_card(cards: Iterable[SmartCardConnection], public: bytes) -> SmartCardConnection:
    """The inserted PIV card whose key management key is ``public``."""
    return find_matching(cards, lambda card: _card_key(card) == public)


def _card_key(card: SmartCardConnection) -> bytes | None:
    try:
        select(card)
    except ApduError:
        return None  # not a PIV card
    key = certificate(card, "9d").public_key()
    return _public_bytes(key) if isinstance(key, ec.EllipticCurvePublicKey) else None


def find_matching(cards: Iterable[SmartCardConnection], matches: Callable[[SmartCardConnection], bool]
                  ) -> SmartCardConnection:
    """The first inserted card ``matches`` accepts; a card that answers garbage is named."""
    problems = []
    for card in cards:
        try:
            if matches(card):
                return card
        except DeviceError as exc:
            problems.append(f"{card.reader}: {exc}")
        card.close()
    if problems:
        raise DeviceError(f"A card in the reader did not answer properly ({'; '.join(problems)}).",
                          advice="Take the card out, insert it again, and retry; if it persists, call the helpdesk.")
    raise KeyNotFound("None of the inserted cards is registered for this staff id.",
                      advice="Insert your own IC card (the one registered for your staff id) and try again.")


def enrol(card: SmartCardConnection, *, user_id: str, slot_id: int, identity_private: bytes | bytearray,
          interaction: UserInteraction, created_at: int = 0) -> KeySlot:
    """A ``piv`` slot on the card in ``card`` (its PIN asked once, to prove the key is there)."""
    select(card)
    key = certificate(card, "9d").public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise FactorError("The card's key management key (9D) is not an EC P-256 key.",
                          advice="Generate a P-256 key in slot 9D (see docs/smartcards.md).")
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    expected = bytearray(ephemeral.exchange(ec.ECDH(), key))
    e_public = _public_bytes(ephemeral.public_key())
    _pin(card, interaction, Prompt(user_id=user_id))
    shared = ecdh(card, e_public)
    try:
        if not hmac.compare_digest(bytes(shared), bytes(expected)):
            raise DeviceError("The card did not prove it holds its key management key.")
        return KeySlot.create(user_id=user_id, slot_id=slot_id, kind=SlotKind.PIV, identity_private=identity_private,
                              secrets={"ecdh": shared}, params={"epk": e_public, "card_key": _public_bytes(key),
                                                                "key_slot": "9d"}, created_at=created_at)
    finally:
        crypto.wipe(shared)
        crypto.wipe(expected)


def open_slot(*, slot: KeySlot, user_id: str, cards: Iterable[SmartCardConnection], interaction: UserInteraction,
              on_possession: Callable[[], None] | None = None) -> bytearray:
    try:
        epk, card_key = slot.params["epk"], slot.params["card_key"]
    except KeyError:
        raise FactorError("This card slot is malformed.", advice="Ask IT to enrol your card again.") from None
    card = find_card(cards, card_key)
    try:
        _pin(card, interaction, Prompt(user_id=user_id))
        if on_possession is not None:
            on_possession()  # the card accepted its PIN for its own key
        shared = ecdh(card, epk)
        try:
            return slot.open(user_id, {"ecdh": shared})
        except AuthenticationFailed:
            raise AuthenticationFailed("This card does not open your slot.") from None
        finally:
            crypto.wipe(shared)
    finally:
        card.close()
