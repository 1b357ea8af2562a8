"""Grants: what unlocking buys a user on one laptop, signed by IT and sealed to the user.

A grant's content is canonical JSON signed by IT (Ed25519), encrypted once under a
random grant key ``K_g``; ``K_g`` is sealed to the user's identity public key, so IT
can provision a laptop without the user present and without any factor secret.
Recovery wraps of ``K_g`` (one per recovery code) ride along in the same record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sekisho import codec, crypto
from sekisho.codec import Fields
from sekisho.errors import FormatError, GrantError, SignatureInvalid
from sekisho.store.records import normalise_staff_id

GRANT_VERSION = 1
_KEYS = {"version", "device_id", "user_id", "serial", "issued_at", "network", "citrix", "apps"}


@dataclass(frozen=True, kw_only=True)
class Grant:
    """The content IT signs. ``network`` holds the SIM's APN credentials: never shown."""

    device_id: str
    user_id: str
    serial: int
    issued_at: int
    network: Mapping[str, str] = field(default_factory=dict, repr=False)
    citrix: Mapping[str, str] = field(default_factory=dict)
    apps: tuple[str, ...] = ()
    version: int = GRANT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_id", normalise_staff_id(self.user_id))
        object.__setattr__(self, "network", MappingProxyType(dict(self.network)))
        object.__setattr__(self, "citrix", MappingProxyType(dict(self.citrix)))
        if self.serial < 1:
            raise FormatError("A grant's serial starts at 1.")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "device_id": self.device_id,
            "user_id": self.user_id,
            "serial": self.serial,
            "issued_at": self.issued_at,
            "network": dict(self.network),
            "citrix": dict(self.citrix),
            "apps": list(self.apps),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Grant:
        if set(obj) != _KEYS:
            raise FormatError("grant: unexpected or missing fields")
        if obj["version"] != GRANT_VERSION:
            raise FormatError(f"grant: version {obj['version']!r} is not supported")
        f = Fields(obj, "grant")
        for name in ("network", "citrix"):
            if not all(type(v) is str for v in f.mapping(name).values()):
                raise FormatError(f"grant: {name} values must be text")
        return cls(
            device_id=f.text("device_id"),
            user_id=f.text("user_id"),
            serial=f.integer("serial"),
            issued_at=f.integer("issued_at"),
            network=f.mapping("network"),
            citrix=f.mapping("citrix"),
            apps=f.texts("apps"),
        )


@dataclass(frozen=True, kw_only=True)
class RecoveryWrap:
    """``K_g`` wrapped under one recovery code (and the passphrase binding, if any)."""

    key_id: str
    salt: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)
    ephemeral: bytes | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"kid": self.key_id, "salt": self.salt, "wrapped": self.wrapped}
        if self.ephemeral is not None:
            obj["epk"] = self.ephemeral
        return obj

    @classmethod
    def from_json(cls, obj: Any) -> RecoveryWrap:
        if not isinstance(obj, dict):
            raise FormatError("recovery wrap: expected a map")
        f = Fields(obj, "recovery wrap")
        return cls(
            key_id=f.text("kid"),
            salt=f.blob("salt", length=32),
            wrapped=f.blob("wrapped"),
            ephemeral=f.blob("epk", length=32, required=False),
        )


def _context(device_id: str, user_id: str, serial: int) -> bytes:
    return b"\x00".join([device_id.encode(), user_id.encode(), str(serial).encode()])


@dataclass(frozen=True, kw_only=True)
class SealedGrant:
    """A grant as it travels in a bundle and rests in the store."""

    device_id: str
    user_id: str
    serial: int
    ciphertext: bytes = field(repr=False)
    user_seal: bytes = field(repr=False)
    recovery: tuple[RecoveryWrap, ...] = ()

    def to_cbor(self) -> bytes:
        return codec.encode(
            {
                "v": 1,
                "device": self.device_id,
                "user": self.user_id,
                "serial": self.serial,
                "ct": self.ciphertext,
                "seal": self.user_seal,
                "recovery": [w.to_json() for w in self.recovery],
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> SealedGrant:
        f = Fields(codec.decode(data, what="sealed grant"), "sealed grant")
        if f.integer("v") != 1:
            raise FormatError("sealed grant: unknown version")
        return cls(
            device_id=f.text("device"),
            user_id=f.text("user"),
            serial=f.integer("serial"),
            ciphertext=f.blob("ct"),
            user_seal=f.blob("seal"),
            recovery=tuple(RecoveryWrap.from_json(w) for w in f.items("recovery")),
        )

    @property
    def context(self) -> bytes:
        return _context(self.device_id, self.user_id, self.serial)


def issue_grant(
    grant: Grant,
    *,
    it_signing_key: bytes | bytearray,
    user_public: bytes,
) -> tuple[SealedGrant, bytearray]:
    """Sign, encrypt and seal a grant. Returns the sealed grant and ``K_g``.

    ``K_g`` is returned so the caller can add recovery wraps; wipe it afterwards.
    """
    signed = crypto.canonical_json(grant.to_json())
    signature = crypto.ed25519_sign(it_signing_key, signed)
    envelope = codec.encode({"grant": signed, "sig": signature})
    grant_key = bytearray(crypto.random_bytes(crypto.KEY_LEN))
    context = _context(grant.device_id, grant.user_id, grant.serial)
    sealed = SealedGrant(
        device_id=grant.device_id,
        user_id=grant.user_id,
        serial=grant.serial,
        ciphertext=crypto.aead_encrypt(
            grant_key, envelope, crypto.label("grant") + b"\x00" + context
        ),
        user_seal=crypto.seal(user_public, grant_key, purpose="grant", context=context),
    )
    return sealed, grant_key


def unseal_grant_key(sealed: SealedGrant, identity_private: bytes | bytearray) -> bytearray:
    try:
        return bytearray(
            crypto.unseal(identity_private, sealed.user_seal, purpose="grant", context=sealed.context)
        )
    except crypto.AeadFailure:
        raise GrantError("This grant was not sealed to this user's identity.") from None


def open_grant(
    sealed: SealedGrant,
    grant_key: bytes | bytearray,
    *,
    it_public: bytes,
    device_id: str,
    user_id: str,
) -> Grant:
    """Decrypt, check IT's signature, then the device and user it was issued for."""
    try:
        envelope = crypto.aead_decrypt(
            grant_key, sealed.ciphertext, crypto.label("grant") + b"\x00" + sealed.context
        )
    except crypto.AeadFailure:
        raise GrantError("The grant could not be decrypted: it was changed or damaged.") from None
    f = Fields(codec.decode(envelope, what="grant envelope"), "grant envelope")
    signed, signature = f.blob("grant"), f.blob("sig", length=64)
    try:
        crypto.ed25519_verify(it_public, signed, signature, what="grant")
    except SignatureInvalid as exc:
        raise GrantError(str(exc), advice="The grant was not issued by this laptop's IT key.") from None
    grant = Grant.from_json(crypto.parse_json_object(signed, what="grant"))
    if grant.device_id != device_id:
        raise GrantError("This grant was issued for another laptop.")
    if grant.user_id != normalise_staff_id(user_id):
        raise GrantError("This grant was issued for another user.")
    if (grant.device_id, grant.user_id, grant.serial) != (
        sealed.device_id,
        sealed.user_id,
        sealed.serial,
    ):
        raise GrantError("The grant does not match the record it was stored in.")
    return grant
