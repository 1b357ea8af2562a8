"""Codes read over the phone: recovery codes and lease extension codes.

Both are digits in groups of six, each group a multiple of 11 holding 16 bits (as
BitLocker's recovery passwords), so a mistyped group is caught at once, before it can
count as a failed attempt, and the message can say which group.

* **Recovery code** (回復コード): 8 groups, 128 random bits. At provisioning IT wraps each
  user's grant key ``K_g`` under each of the user's codes:
  ``K_r = HKDF(code bits [‖ X25519(e, P_pass)], salt, "sekisho/v1/recovery")``, where
  ``P_pass`` is the user's passphrase binding (so IT never learns the passphrase, yet the
  code alone does not open the grant) and ``e`` an ephemeral key whose public half rides
  with the wrap. A short key id tells the helpdesk which code to read out.
* **Extension code** (延長コード): 5 groups: the new lease end (days since 1970-01-01, UTC),
  a sequence number, and a 48-bit HMAC under the laptop's extension key over the device
  id and both numbers. The laptop checks it offline and accepts each sequence number once.
"""

from __future__ import annotations

import datetime as dt
import hmac
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sekisho import crypto
from sekisho.crypto import Argon2Params
from sekisho.errors import AuthenticationFailed, CodeMistyped, FormatError
from sekisho.factors import passphrase as pp
from sekisho.store.grants import RecoveryWrap, SealedGrant
from sekisho.store.records import PassphraseBinding

GROUP_DIGITS = 6
_GROUP_LIMIT = 11 * 65536
RECOVERY_GROUPS = 8
EXTENSION_GROUPS = 5
EXTENSION_KEY_LEN = 32


# --- digit groups ---------------------------------------------------------------------


def _to_groups(data: bytes) -> str:
    values = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return "-".join(f"{11 * v:06d}" for v in values)


def mistyped_group(text: str) -> int | None:
    """While a code is being typed: the first complete group that cannot be right (its
    check fails, or it holds something other than digits), else None. For flagging a
    group at once, before the whole code is typed."""
    digits = "".join(c for c in unicodedata.normalize("NFKC", text) if c not in " -\u30fc\u2010\u2212\t")
    for index in range((len(digits) + GROUP_DIGITS - 1) // GROUP_DIGITS):
        group = digits[index * GROUP_DIGITS : (index + 1) * GROUP_DIGITS]
        if not (group.isascii() and group.isdigit()):
            return index + 1
        if len(group) == GROUP_DIGITS and (int(group) % 11 or int(group) >= _GROUP_LIMIT):
            return index + 1
    return None


def _from_groups(text: str, groups: int, what: str) -> bytes:
    """The bytes a typed code stands for; ``CodeMistyped`` names the first bad group."""
    digits = "".join(c for c in unicodedata.normalize("NFKC", text) if c not in " -\u30fc\u2010\u2212\t")
    if not digits.isascii() or not digits.isdigit():
        raise CodeMistyped(f"The {what} may only hold digits.", group=None)
    if len(digits) != groups * GROUP_DIGITS:
        raise CodeMistyped(f"The {what} has {len(digits)} digits; it should have {groups * GROUP_DIGITS} "
                           f"({groups} groups of {GROUP_DIGITS}).", group=None)
    out = bytearray()
    for index in range(groups):
        value = int(digits[index * GROUP_DIGITS : (index + 1) * GROUP_DIGITS])
        if value % 11 or value >= _GROUP_LIMIT:
            raise CodeMistyped(f"Group {index + 1} of the {what} is mistyped; check it and type it again.",
                               group=index + 1)
        out += (value // 11).to_bytes(2, "big")
    return bytes(out)


def check_group(text: str) -> bool:
    """Whether one typed group of six digits is well formed (for the recovery window)."""
    digits = unicodedata.normalize("NFKC", text).strip()
    return len(digits) == GROUP_DIGITS and digits.isascii() and digits.isdigit() and \
        int(digits) % 11 == 0 and int(digits) < _GROUP_LIMIT


# --- recovery codes -----------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryCode:
    """One recovery code and its key id; what the registry stores, encrypted."""

    key_id: str
    code: str

    def __repr__(self) -> str:
        return f"<RecoveryCode {self.key_id}>"


def new_recovery_codes(count: int = 5) -> list[RecoveryCode]:
    """``count`` fresh codes of 128 bits each, with distinct 8-character key ids."""
    codes: dict[str, RecoveryCode] = {}
    while len(codes) < count:
        key_id = crypto.random_bytes(4).hex().upper()
        codes[key_id] = RecoveryCode(key_id, _to_groups(crypto.random_bytes(2 * RECOVERY_GROUPS)))
    return list(codes.values())


def passphrase_binding(passphrase: str, argon2: Argon2Params) -> PassphraseBinding:
    """``P_pass``, recorded at enrolment: the X25519 public key of Argon2id(passphrase)."""
    salt = pp.new_salt()
    private = pp.derive(passphrase, salt, argon2)
    try:
        return PassphraseBinding(salt=salt, argon2=argon2, public=crypto.x25519_public(private))
    finally:
        crypto.wipe(private)


def _recovery_aad(sealed: SealedGrant, key_id: str) -> bytes:
    return crypto.label("recovery") + b"\x00" + sealed.context + b"\x00" + key_id.encode()


def _recovery_key(code_bits: bytes, salt: bytes, extra: bytes = b"") -> bytes:
    return crypto.hkdf(code_bits + extra, salt=salt, info=crypto.label("recovery"))


def wrap_for_recovery(sealed: SealedGrant, grant_key: bytes | bytearray, codes: Sequence[RecoveryCode],
                      binding: PassphraseBinding | None) -> SealedGrant:
    """The sealed grant with ``K_g`` wrapped under each code (and the passphrase binding)."""
    wraps = []
    for code in codes:
        bits = _from_groups(code.code, RECOVERY_GROUPS, "recovery code")
        salt = crypto.random_bytes(32)
        extra, ephemeral = b"", None
        if binding is not None:
            e_private, ephemeral = crypto.x25519_generate()
            extra = crypto.x25519_exchange(e_private, binding.public)
            crypto.wipe(e_private)
        key = _recovery_key(bits, salt, extra)
        wraps.append(RecoveryWrap(key_id=code.key_id, salt=salt, ephemeral=ephemeral,
                                  wrapped=crypto.aead_encrypt(key, grant_key, _recovery_aad(sealed, code.key_id))))
    return replace(sealed, recovery=tuple(wraps))


def parse_recovery_code(text: str) -> bytes:
    """Check a typed recovery code's groups; its 16 bytes, or ``CodeMistyped``."""
    return _from_groups(text, RECOVERY_GROUPS, "recovery code")


def open_with_recovery_code(sealed: SealedGrant, code_bits: bytes, *, binding: PassphraseBinding | None,
                            passphrase: str | None, used: Sequence[str] = ()) -> tuple[bytearray, str]:
    """``K_g`` and the key id of the code that opened it; ``AuthenticationFailed`` otherwise.

    Codes already ``used`` are skipped (a reused code fails like a wrong one).
    """
    p_private: bytearray | None = None
    try:
        if any(w.ephemeral is not None for w in sealed.recovery):
            if binding is None or passphrase is None:
                raise AuthenticationFailed("This recovery needs your passphrase as well as the code.")
            p_private = pp.derive(passphrase, binding.salt, binding.argon2)
        for wrap in sealed.recovery:
            if wrap.key_id in used:
                continue
            try:
                extra = b""
                if wrap.ephemeral is not None:
                    assert p_private is not None  # noqa: S101 - set above
                    extra = crypto.x25519_exchange(p_private, wrap.ephemeral)
                key = _recovery_key(code_bits, wrap.salt, extra)
                grant_key = crypto.aead_decrypt(key, wrap.wrapped, _recovery_aad(sealed, wrap.key_id))
            except crypto.AeadFailure:  # not this code (or a damaged wrap)
                continue
            return bytearray(grant_key), wrap.key_id
    finally:
        crypto.wipe(p_private)
    raise AuthenticationFailed("The recovery code (or the passphrase) is not correct, or was used already.",
                               advice="Read the code back to the helpdesk group by group.")


# --- extension codes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Extension:
    """What a valid extension code says: the new lease end (a UTC date) and its number."""

    end: dt.date
    sequence: int


_EPOCH = dt.date(1970, 1, 1)


def _extension_mac(key: bytes | bytearray, device_id: str, days: int, sequence: int) -> bytes:
    message = crypto.label("extension") + b"\x00" + device_id.encode() + b"\x00" + \
        days.to_bytes(2, "big") + sequence.to_bytes(2, "big")
    return crypto.hmac_sha256(key, message)[:6]


def new_extension_key() -> bytes:
    return crypto.random_bytes(EXTENSION_KEY_LEN)


def make_extension_code(key: bytes | bytearray, device_id: str, end: dt.date, sequence: int) -> str:
    """The code the helpdesk reads out (office side)."""
    days = (end - _EPOCH).days
    if not 0 < days < 65536 or not 0 < sequence < 65536:
        raise FormatError("An extension needs an end date before 2149 and a sequence number 1-65535.")
    payload = days.to_bytes(2, "big") + sequence.to_bytes(2, "big")
    return _to_groups(payload + _extension_mac(key, device_id, days, sequence))


def parse_extension_code(text: str) -> bytes:
    """Check a typed extension code's groups (``CodeMistyped`` names a bad one)."""
    return _from_groups(text, EXTENSION_GROUPS, "extension code")


def check_extension_code(key: bytes | bytearray, device_id: str, text: str) -> Extension:
    """The extension a typed code grants; ``CodeMistyped`` or ``AuthenticationFailed``."""
    raw = parse_extension_code(text)
    days, sequence = int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")
    if not hmac.compare_digest(_extension_mac(key, device_id, days, sequence), raw[4:]):
        raise AuthenticationFailed("The extension code is not valid for this laptop.",
                                   advice="Read the code back to the helpdesk; it is made for one laptop only.")
    return Extension(end=_EPOCH + dt.timedelta(days=days), sequence=sequence)
