"""TOTP (RFC 6238) through pyotp: seeds, codes, and the step logic that refuses replays.

A TOTP code carries no key material, so it can only be *checked* (the ``pin+totp``
slot's key comes from the passphrase alone). Each accepted step is persisted before
success is reported, and no step at or below it is accepted again — which also means a
clock turned back cannot reuse a code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import pyotp

from sekisho import crypto
from sekisho.codec import Fields
from sekisho.errors import TotpSeedRejected

MIN_SEED_BYTES = 16  # 128 bits, RFC 4226 §4 R6
DEFAULT_SEED_BYTES = 20  # 160 bits, as RFC 4226 recommends
_DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


@dataclass(frozen=True, kw_only=True)
class TotpSeed:
    """A TOTP seed and its parameters. The seed never appears in a repr."""

    secret: bytes = field(repr=False)
    digits: int = 6
    period: int = 30
    algorithm: str = "sha1"

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SEED_BYTES:
            raise TotpSeedRejected(
                f"A TOTP seed needs at least {MIN_SEED_BYTES * 8} bits; this one has "
                f"{len(self.secret) * 8}."
            )
        if self.digits not in (6, 7, 8):
            raise TotpSeedRejected("TOTP codes have 6, 7 or 8 digits.")
        if not 10 <= self.period <= 300:
            raise TotpSeedRejected("A TOTP period is between 10 and 300 seconds.")
        if self.algorithm not in _DIGESTS:
            raise TotpSeedRejected("TOTP uses sha1, sha256 or sha512.")

    @classmethod
    def generate(cls, **params: Any) -> TotpSeed:
        return cls(secret=crypto.random_bytes(DEFAULT_SEED_BYTES), **params)

    @classmethod
    def from_base32(cls, text: str, **params: Any) -> TotpSeed:
        """A seed as authenticator apps and most token vendors print it."""
        cleaned = "".join(text.split()).replace("-", "").upper()
        cleaned += "=" * (-len(cleaned) % 8)
        try:
            secret = base64.b32decode(cleaned)
        except (binascii.Error, ValueError):
            raise TotpSeedRejected("The TOTP seed is not valid base32.") from None
        return cls(secret=secret, **params)

    @classmethod
    def from_hex(cls, text: str, **params: Any) -> TotpSeed:
        """A seed as hardware-token seed files often ship it."""
        try:
            secret = bytes.fromhex("".join(text.split()))
        except ValueError:
            raise TotpSeedRejected("The TOTP seed is not valid hexadecimal.") from None
        return cls(secret=secret, **params)

    @property
    def base32(self) -> str:
        return base64.b32encode(self.secret).decode("ascii").rstrip("=")

    def _totp(self) -> pyotp.TOTP:
        return pyotp.TOTP(
            self.base32, digits=self.digits, interval=self.period, digest=_DIGESTS[self.algorithm]
        )

    def provisioning_uri(self, *, account: str, issuer: str = "Sekisho") -> str:
        return self._totp().provisioning_uri(name=account, issuer_name=issuer)

    def step_at(self, unix_time: float) -> int:
        return int(unix_time // self.period)

    def code_at_step(self, step: int) -> str:
        return self._totp().generate_otp(step)

    def code_at(self, unix_time: float) -> str:
        return self.code_at_step(self.step_at(unix_time))

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.secret, "digits": self.digits, "period": self.period, "alg": self.algorithm}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TotpSeed:
        f = Fields(obj, "TOTP seed")
        return cls(
            secret=f.blob("seed"), digits=f.integer("digits"), period=f.integer("period"), algorithm=f.text("alg")
        )


def normalise_code(code: str) -> str:
    """Full-width digits from an IME become ASCII; spaces between groups are dropped."""
    return "".join(unicodedata.normalize("NFKC", code).split())


def matching_step(seed: TotpSeed, code: str, unix_time: float, *, drift: int = 1) -> int | None:
    """The step within ``drift`` of now whose code equals ``code``, else ``None``.

    Every candidate is compared (no early exit), in constant time per comparison.
    """
    code = normalise_code(code)
    valid_shape = len(code) == seed.digits and code.isascii() and code.isdigit()
    now = seed.step_at(unix_time)
    found = None
    for step in range(now - drift, now + drift + 1):
        if step < 0:
            continue
        if hmac.compare_digest(seed.code_at_step(step).encode(), code.encode()) and valid_shape:
            found = step
    return found


def accept(seed: TotpSeed, code: str, unix_time: float, last_step: int | None, *, drift: int = 1) -> int | None:
    """The step to record as used if ``code`` is valid and not a replay, else ``None``.

    A step at or below ``last_step`` is a replay (or a clock turned back): refused.
    """
    step = matching_step(seed, code, unix_time, drift=drift)
    if step is None or (last_step is not None and step <= last_step):
        return None
    return step
