"""The knowledge factor: a passphrase, stretched with Argon2id.

There is no stored verifier: the only thing a passphrase opens is a key slot, so a
wrong one shows up as a slot that does not open. Enrolment rules follow NIST SP
800-63B: a minimum length, a blocklist of common, sequential and context-specific
values, no composition rules.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from itertools import pairwise

from sekisho import crypto
from sekisho.crypto import Argon2Params
from sekisho.errors import PassphraseRejected

#: The floor for any slot with a passphrase: a ``pin+…`` slot can be guessed offline
#: by whoever copies the store, so it needs real length (docs/security.md).
PASSPHRASE_FLOOR = 10
MAX_PASSPHRASE = 256


def normalise(passphrase: str) -> str:
    """NFKC: the same passphrase typed with full-width or half-width characters matches."""
    return unicodedata.normalize("NFKC", passphrase)


def _load_blocklist() -> frozenset[str]:
    text = resources.files("sekisho.factors").joinpath("blocklist.txt").read_text("utf-8")
    return frozenset(
        line.strip().casefold() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


_BLOCKLIST = _load_blocklist()
_KEYBOARD_ROWS = ("1234567890-^", "qwertyuiop@[", "asdfghjkl;:]", "zxcvbnm,./", "qwertzuiop", "azertyuiop")
_DATE = re.compile(
    r"^(?:[mtshr]|明治|大正|昭和|平成|令和)?\d{1,4}[-/. 年]?\d{1,2}[-/. 月]?\d{1,2}日?$"
)
_DECORATION = re.compile(r"[\d\W_]{0,6}$")


@dataclass(frozen=True, kw_only=True)
class PassphraseContext:
    """What a passphrase must not be built from."""

    user_id: str
    names: tuple[str, ...] = ()


def _is_sequential(s: str) -> bool:
    if len(set(s)) <= 3:  # aaaaaaaaaa, abababab..., abcabcabca
        return True
    steps = {ord(b) - ord(a) for a, b in pairwise(s)}
    if steps in ({1}, {-1}):  # abcdefghij, 9876543210
        return True
    return any(s in row or s in row[::-1] for row in _KEYBOARD_ROWS)


def check_passphrase(passphrase: str, *, minimum: int, context: PassphraseContext) -> None:
    """Raise :class:`PassphraseRejected` naming the first rule the passphrase breaks."""
    p = normalise(passphrase)
    folded = p.casefold()
    minimum = max(minimum, PASSPHRASE_FLOOR)
    if len(p) < minimum:
        raise PassphraseRejected(
            f"The passphrase must have at least {minimum} characters.", rule="too-short"
        )
    if len(p) > MAX_PASSPHRASE:
        raise PassphraseRejected(
            f"The passphrase must have at most {MAX_PASSPHRASE} characters.", rule="too-long"
        )
    if p.isdigit():
        raise PassphraseRejected("The passphrase must not be digits only.", rule="all-digits")
    stem = _DECORATION.sub("", folded)
    if folded in _BLOCKLIST or stem in _BLOCKLIST:
        raise PassphraseRejected("This passphrase is too common.", rule="common")
    if _is_sequential(folded) or _is_sequential(stem or folded):
        raise PassphraseRejected(
            "The passphrase must not be a sequence or a repetition.", rule="sequential"
        )
    squeezed = re.sub(r"\s+", "", folded)
    if _DATE.match(squeezed):
        raise PassphraseRejected("The passphrase must not be a date.", rule="date")
    for value in (context.user_id, *context.names):
        value = re.sub(r"\s+", "", normalise(value).casefold())
        if len(value) >= 3 and value in squeezed:
            raise PassphraseRejected(
                "The passphrase must not contain your staff id or name.", rule="personal"
            )


def derive(passphrase: str, salt: bytes, params: Argon2Params) -> bytearray:
    """``Argon2id(NFKC(passphrase))``: the knowledge secret for a slot. Wipe it after use."""
    secret = bytearray(normalise(passphrase).encode("utf-8"))
    try:
        return crypto.argon2id(secret, salt, params)
    finally:
        crypto.wipe(secret)


def new_salt() -> bytes:
    return crypto.random_bytes(crypto.ARGON2_SALT_LEN)
