"""RSA signature cards as factors (``card-sig`` slots): the My Number card's
user-authentication key (JPKI) or an RSA key in a PIV card's slot 9A.

PKCS#1 v1.5 signatures are deterministic: the card's signature over a per-slot salt is
the same every time, so it can be the slot's secret. Only the card can make it, and only
after its PIN (which the card counts). IT pins the card's public key at enrolment, and
every signature is checked against it. A card whose signatures over the same input differ
is refused at enrolment. No certificate status can be checked offline (the JPKI
revocation service needs the network): the pinned key is what is trusted, and IT
revokes a lost card in the registry.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sekisho import crypto
from sekisho.devices.card import (
    EF_CERT,
    EF_KEY,
    EF_PIN,
    JPKI_AP,
    ApduError,
    SmartCardConnection,
    check,
    parse_tlv,
    send,
    tlv,
)
from sekisho.errors import AuthenticationFailed, DeviceError, FactorError, KeyPinBlocked, KeyPinInvalid
from sekisho.factors import piv
from sekisho.factors.interaction import Prompt, UserInteraction
from sekisho.store.records import KeySlot, SlotKind

#: DER prefix of a SHA-256 DigestInfo (RFC 8017, 9.2).
SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")
CARD_TYPES = ("jpki", "piv")


def _message(salt: bytes) -> bytes:
    return crypto.label("card-sig") + salt


def _digest_info(salt: bytes) -> bytes:
    return SHA256_PREFIX + hashlib.sha256(_message(salt)).digest()


def _pin_status(status: int, what: str) -> None:
    if status == 0x9000:
        return
    if status == 0x6983:
        raise KeyPinBlocked(f"The {what}'s PIN is blocked (too many wrong PINs).",
                            advice="The PIN must be reset where the card was issued (for the My Number card: "
                                   "the municipal office's counter).")
    if status >> 4 == 0x63C:
        left = status & 0x0F
        raise KeyPinInvalid(f"The {what}'s PIN is not correct ({left} attempts remaining).", attempts_remaining=left)
    raise ApduError(f"The {what} refused the PIN check", status=status)


# --- the two kinds of card ---------------------------------------------------------------------------


def _jpki_select(card: SmartCardConnection, ef: bytes | None = None) -> None:
    """Select the application (which clears its PIN state), then an elementary file."""
    check(send(card, 0x00, 0xA4, 0x04, 0x0C, JPKI_AP, le=None), "the user-authentication application")
    if ef is not None:
        _jpki_ef(card, ef)


def _jpki_ef(card: SmartCardConnection, ef: bytes) -> None:
    check(send(card, 0x00, 0xA4, 0x02, 0x0C, ef, le=None), "the file selection")


def _jpki_public(card: SmartCardConnection) -> rsa.RSAPublicKey:
    _jpki_select(card, EF_CERT)
    data = b""
    while True:
        chunk, status = send(card, 0x00, 0xB0, len(data) >> 8, len(data) & 0xFF)
        if status != 0x9000 or not chunk:
            break
        data += chunk
        if len(chunk) < 256:
            break
    try:
        key = x509.load_der_x509_certificate(data).public_key()
    except ValueError:
        raise DeviceError("The card's certificate is unreadable.") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise DeviceError("The card's user-authentication key is not RSA.")
    return key


def _jpki_pin_and_sign(card: SmartCardConnection, pin: str, salt: bytes) -> bytes:
    _jpki_select(card, EF_PIN)
    _pin_status(send(card, 0x00, 0x20, 0x00, 0x80, pin.encode("ascii", "replace"), le=None)[1], "card")
    _jpki_ef(card, EF_KEY)  # within the application: the verified PIN still holds
    return check(send(card, 0x80, 0x2A, 0x00, 0x80, _digest_info(salt)), "the signature")


def _jpki_retries(card: SmartCardConnection) -> int | None:
    _jpki_select(card, EF_PIN)
    status = send(card, 0x00, 0x20, 0x00, 0x80, b"", le=None)[1]
    return status & 0x0F if status >> 4 == 0x63C else 0 if status == 0x6983 else None


def _piv_public(card: SmartCardConnection) -> rsa.RSAPublicKey:
    piv.select(card)
    key = piv.certificate(card, "9a").public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise DeviceError("The card's slot 9A key is not RSA.")
    return key


def _piv_pin_and_sign(card: SmartCardConnection, pin: str, salt: bytes) -> bytes:
    piv.verify_pin(card, pin)
    digest_info = _digest_info(salt)
    block = b"\x00\x01" + b"\xff" * (256 - 3 - len(digest_info)) + b"\x00" + digest_info
    data = check(send(card, 0x00, 0x87, 0x07, 0x9A, tlv(b"\x7c", tlv(b"\x82", b"") + tlv(b"\x81", block))),
                 "the signature")
    try:
        return parse_tlv(parse_tlv(data)[0x7C])[0x82]
    except (KeyError, IndexError):
        raise DeviceError("The card's signature answer is malformed.") from None


def _public(card: SmartCardConnection, card_type: str) -> rsa.RSAPublicKey:
    return _jpki_public(card) if card_type == "jpki" else _piv_public(card)


def _sign(card: SmartCardConnection, card_type: str, interaction: UserInteraction, prompt: Prompt,
          salt: bytes) -> bytes:
    retries = _jpki_retries(card) if card_type == "jpki" else piv.pin_retries(card)
    if retries == 0:
        raise KeyPinBlocked("The card's PIN is blocked (too many wrong PINs).")
    pin = interaction.request_pin(Prompt(user_id=prompt.user_id, attempts_remaining=retries))
    return _jpki_pin_and_sign(card, pin, salt) if card_type == "jpki" else _piv_pin_and_sign(card, pin, salt)


def _spki(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_signature(key: rsa.RSAPublicKey, signature: bytes, salt: bytes) -> None:
    try:
        key.verify(signature, _message(salt), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise DeviceError("The card's signature does not verify with its registered key.",
                          advice="Use the card registered for your staff id; call the helpdesk if it persists.") \
            from None


# --- enrolment and logon ------------------------------------------------------------------------------


def enrol(card: SmartCardConnection, *, card_type: str, user_id: str, slot_id: int,
          identity_private: bytes | bytearray, interaction: UserInteraction, created_at: int = 0) -> KeySlot:
    """A ``card-sig`` slot: IT pins the card's public key; two signatures must agree."""
    if card_type not in CARD_TYPES:
        raise ValueError(card_type)
    key = _public(card, card_type)
    if key.key_size != 2048:
        raise FactorError("Only RSA 2048 card keys are supported.")
    salt = crypto.random_bytes(32)
    prompt = Prompt(user_id=user_id)
    first = _sign(card, card_type, interaction, prompt, salt)
    second = _sign(card, card_type, interaction, prompt, salt)
    if not hmac.compare_digest(first, second):
        raise FactorError("This card signs the same input differently each time, so it cannot hold a slot.",
                          advice="Use another card; report this one to IT.")
    _check_signature(key, first, salt)
    return KeySlot.create(user_id=user_id, slot_id=slot_id, kind=SlotKind.CARD_SIG, identity_private=identity_private,
                          secrets={"signature": first},
                          params={"card": card_type, "key": _spki(key), "salt": salt}, created_at=created_at)


def find_card(cards: Iterable[SmartCardConnection], card_type: str, spki: bytes) -> SmartCardConnection:
    def matches(card: SmartCardConnection) -> bool:
        try:
            key = _public(card, card_type)
        except ApduError:
            return False  # not this kind of card
        return hmac.compare_digest(_spki(key), spki)

    return piv.find_matching(cards, matches)


def open_slot(*, slot: KeySlot, user_id: str, cards: Iterable[SmartCardConnection], interaction: UserInteraction,
              on_possession: Callable[[], None] | None = None) -> bytearray:
    try:
        card_type, spki, salt = slot.params["card"], slot.params["key"], slot.params["salt"]
        key = serialization.load_der_public_key(spki)
    except (KeyError, ValueError):
        raise FactorError("This card slot is malformed.", advice="Ask IT to enrol your card again.") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise FactorError("This card slot is malformed.")
    card = find_card(cards, card_type, spki)
    try:
        signature = _sign(card, card_type, interaction, Prompt(user_id=user_id), salt)
        _check_signature(key, signature, salt)
        if on_possession is not None:
            on_possession()
        try:
            return slot.open(user_id, {"signature": signature})
        except AuthenticationFailed:
            raise AuthenticationFailed("This card does not open your slot.") from None
    finally:
        card.close()
