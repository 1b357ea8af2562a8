"""The records a store holds: users, their key slots. Frozen, versioned, CBOR on disk.

A user's identity is an X25519 key pair. The public half is in :class:`UserRecord`;
the private half exists only wrapped in :class:`KeySlot` s, each under a key derived
from the slot's factor secrets (see docs/store-format.md and docs/crypto.md).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from sekisho import codec, crypto
from sekisho.codec import Fields
from sekisho.crypto import Argon2Params
from sekisho.errors import AuthenticationFailed, FormatError

MAX_STAFF_ID = 64


def normalise_staff_id(staff_id: str) -> str:
    """NFKC (full-width digits and letters typed through a Japanese IME become ASCII), trimmed."""
    if not isinstance(staff_id, str):
        raise FormatError("A staff id must be text.")
    value = unicodedata.normalize("NFKC", staff_id).strip()
    if not value:
        raise FormatError("The staff id is empty.")
    if len(value) > MAX_STAFF_ID:
        raise FormatError(f"A staff id has at most {MAX_STAFF_ID} characters.")
    if any(unicodedata.category(ch).startswith("C") or ch in "/\\" for ch in value):
        raise FormatError("The staff id contains characters that are not allowed.")
    return value


class FactorKind(StrEnum):
    KNOWLEDGE = "knowledge"
    POSSESSION = "possession"
    BIOMETRIC = "biometric"


class SlotKind(StrEnum):
    """How a slot's key is derived. The value is on disk, in ``info`` labels and in the trail."""

    FIDO2_UV = "fido2-uv"
    PIV = "piv"
    CARD_SIG = "card-sig"
    PIN_FIDO2 = "pin+fido2"
    PIN_TOTP = "pin+totp"
    #: Opens only through the low-level API; no policy can permit it.
    TEST_TWO_SECRET = "test-two-secret"  # noqa: S105 - a slot kind, not a password

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The factor secrets this kind's key comes from, in HKDF input order."""
        return _SECRETS[self]

    @property
    def uses_passphrase(self) -> bool:
        return "passphrase" in self.secret_names

    @property
    def hardware_enforced(self) -> bool:
        """Second factor enforced by a device with its own retry counter."""
        return self in (SlotKind.FIDO2_UV, SlotKind.PIV, SlotKind.CARD_SIG)


_SECRETS: dict[SlotKind, tuple[str, ...]] = {
    SlotKind.FIDO2_UV: ("hmac-secret-uv",),
    SlotKind.PIV: ("ecdh",),
    SlotKind.CARD_SIG: ("signature",),
    SlotKind.PIN_FIDO2: ("passphrase", "hmac-secret"),
    SlotKind.PIN_TOTP: ("passphrase",),
    SlotKind.TEST_TWO_SECRET: ("first", "second"),
}

#: Kinds a policy may permit (the test kind is never one of them).
POLICY_SLOT_KINDS = frozenset(k for k in SlotKind if k is not SlotKind.TEST_TWO_SECRET)
#: What the default policy permits: the second factor is enforced by hardware.
DEFAULT_SLOT_KINDS = (SlotKind.FIDO2_UV, SlotKind.PIV, SlotKind.CARD_SIG)

MIN_SECRET_LEN = 32
SLOT_SALT_LEN = 32


@dataclass(frozen=True, kw_only=True)
class PassphraseBinding:
    """``P_pass``: lets IT bind recovery wraps to a passphrase it never learns."""

    salt: bytes
    argon2: Argon2Params
    public: bytes


@dataclass(frozen=True, kw_only=True)
class UserRecord:
    """A user as a laptop knows them. Shown to nobody but the service."""

    user_id: str
    display_name: str
    kana: str = ""
    department: str = ""
    roles: tuple[str, ...] = ()
    identity_public: bytes = field(repr=False)
    passphrase_binding: PassphraseBinding | None = field(default=None, repr=False)
    enabled: bool = True
    revision: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_id", normalise_staff_id(self.user_id))
        if len(self.identity_public) != crypto.X25519_LEN:
            raise FormatError("A user's identity key must be 32 bytes.")

    def to_cbor(self) -> bytes:
        obj: dict[str, Any] = {
            "v": 1,
            "id": self.user_id,
            "name": self.display_name,
            "kana": self.kana,
            "dept": self.department,
            "roles": list(self.roles),
            "pub": self.identity_public,
            "enabled": self.enabled,
            "rev": self.revision,
        }
        if self.passphrase_binding is not None:
            b = self.passphrase_binding
            obj["ppass"] = {"salt": b.salt, "kdf": b.argon2.to_json(), "pub": b.public}
        return codec.encode(obj)

    @classmethod
    def from_cbor(cls, data: bytes) -> UserRecord:
        f = Fields(codec.decode(data, what="user record"), "user record")
        if f.integer("v") != 1:
            raise FormatError("user record: unknown version")
        binding = None
        if "ppass" in f.obj:
            p = Fields(f.mapping("ppass"), "user record passphrase binding")
            binding = PassphraseBinding(
                salt=p.blob("salt", length=crypto.ARGON2_SALT_LEN),
                argon2=Argon2Params.from_json(p.mapping("kdf")),
                public=p.blob("pub", length=crypto.X25519_LEN),
            )
        return cls(
            user_id=f.text("id"),
            display_name=f.text("name"),
            kana=f.text("kana"),
            department=f.text("dept"),
            roles=f.texts("roles"),
            identity_public=f.blob("pub", length=crypto.X25519_LEN),
            passphrase_binding=binding,
            enabled=f.flag("enabled"),
            revision=f.integer("rev"),
        )


def _slot_aad(user_id: str, kind: SlotKind, slot_id: int) -> bytes:
    return b"\x00".join(
        [crypto.label("slot"), user_id.encode("utf-8"), kind.value.encode(), str(slot_id).encode()]
    )


def _slot_key(kind: SlotKind, secrets: Mapping[str, bytes | bytearray], salt: bytes) -> bytes:
    names = kind.secret_names
    if set(secrets) != set(names):
        raise FormatError(f"A {kind.value} slot needs exactly the secrets {', '.join(names)}.")
    ikm = bytearray()
    try:
        for name in names:
            if len(secrets[name]) < MIN_SECRET_LEN:
                raise FormatError(f"The {name} secret of a {kind.value} slot is too short.")
            ikm += secrets[name]
        return crypto.hkdf(ikm, salt=salt, info=crypto.label("slot", kind.value))
    finally:
        crypto.wipe(ikm)


@dataclass(frozen=True, kw_only=True)
class KeySlot:
    """One way to unwrap a user's identity, like a LUKS2 keyslot.

    ``params`` hold what the factor needs in the clear (a credential id, a card's
    public key, a TOTP period); ``sealed`` holds factor data that must stay secret but
    must be readable before the slot opens (a TOTP seed) — protected only by the
    store's row encryption, which docs/security.md explains.
    """

    slot_id: int
    kind: SlotKind
    salt: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)
    argon2: Argon2Params | None = None
    argon2_salt: bytes | None = field(default=None, repr=False)
    params: Mapping[str, Any] = field(default_factory=dict, repr=False)
    sealed: Mapping[str, Any] = field(default_factory=dict, repr=False)
    created_at: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "sealed", MappingProxyType(dict(self.sealed)))
        if self.kind.uses_passphrase and (self.argon2 is None or self.argon2_salt is None):
            raise FormatError(f"A {self.kind.value} slot needs Argon2id parameters and a salt.")
        if not 0 <= self.slot_id < 2**31:
            raise FormatError("A slot id must be a small non-negative integer.")

    @classmethod
    def create(
        cls,
        *,
        user_id: str,
        slot_id: int,
        kind: SlotKind,
        identity_private: bytes | bytearray,
        secrets: Mapping[str, bytes | bytearray],
        argon2: Argon2Params | None = None,
        argon2_salt: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        sealed: Mapping[str, Any] | None = None,
        created_at: int = 0,
    ) -> KeySlot:
        """Wrap ``identity_private`` under the key derived from ``secrets``."""
        salt = crypto.random_bytes(SLOT_SALT_LEN)
        key = _slot_key(kind, secrets, salt)
        user_id = normalise_staff_id(user_id)
        wrapped = crypto.aead_encrypt(key, identity_private, _slot_aad(user_id, kind, slot_id))
        return cls(
            slot_id=slot_id,
            kind=kind,
            salt=salt,
            wrapped=wrapped,
            argon2=argon2,
            argon2_salt=argon2_salt,
            params=params or {},
            sealed=sealed or {},
            created_at=created_at,
        )

    def open(self, user_id: str, secrets: Mapping[str, bytes | bytearray]) -> bytearray:
        """The identity private key, or :class:`AuthenticationFailed` — never which secret was wrong."""
        key = _slot_key(self.kind, secrets, self.salt)
        aad = _slot_aad(normalise_staff_id(user_id), self.kind, self.slot_id)
        try:
            return bytearray(crypto.aead_decrypt(key, self.wrapped, aad))
        except crypto.AeadFailure:
            raise AuthenticationFailed("The factors presented do not open this slot.") from None

    def to_cbor(self) -> bytes:
        obj: dict[str, Any] = {
            "v": 1,
            "id": self.slot_id,
            "kind": self.kind.value,
            "salt": self.salt,
            "wrapped": self.wrapped,
            "params": dict(self.params),
            "sealed": dict(self.sealed),
            "created": self.created_at,
        }
        if self.argon2 is not None and self.argon2_salt is not None:
            obj["kdf"] = self.argon2.to_json()
            obj["kdf_salt"] = self.argon2_salt
        return codec.encode(obj)

    @classmethod
    def from_cbor(cls, data: bytes) -> KeySlot:
        f = Fields(codec.decode(data, what="key slot"), "key slot")
        if f.integer("v") != 1:
            raise FormatError("key slot: unknown version")
        try:
            kind = SlotKind(f.text("kind"))
        except ValueError:
            raise FormatError("key slot: unknown slot kind") from None
        has_kdf = "kdf" in f.obj
        return cls(
            slot_id=f.integer("id"),
            kind=kind,
            salt=f.blob("salt", length=SLOT_SALT_LEN),
            wrapped=f.blob("wrapped"),
            argon2=Argon2Params.from_json(f.mapping("kdf")) if has_kdf else None,
            argon2_salt=f.blob("kdf_salt", length=crypto.ARGON2_SALT_LEN) if has_kdf else None,
            params=f.mapping("params"),
            sealed=f.mapping("sealed"),
            created_at=f.integer("created"),
        )
