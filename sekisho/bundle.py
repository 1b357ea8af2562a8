"""The files between the office and a laptop: device requests, bundles, check-in requests.

* **Device request** (laptop → station, ``device init``): the laptop's id, its X25519
  identity (bundles are sealed to it) and its trail root, as canonical JSON. It is not
  signed: IT compares its short **fingerprint** with the one the laptop shows before
  provisioning (as SSH host keys are checked).
* **Bundle** (station → laptop): a provisioning bundle or a check-in renewal. The file
  is ``{"signed": base64(canonical JSON), "sig": base64(Ed25519 by IT)}``; the signature
  is checked over the exact bytes before anything in them is parsed. The signed JSON
  names the device, the kind, a serial (per device, only ever increasing) and the office
  time, and carries the payload sealed to the laptop's identity (X25519, purpose
  ``bundle``, context = device id ‖ kind ‖ serial). The payload is a CBOR header (the
  signed policy, users to remove or re-enable, the lease, the extension key, the number
  of users) followed by each user (record, slots, sealed grant) as its own
  length-prefixed CBOR record.
* **Check-in request** (laptop → station): the laptop's trail (JSON Lines, as it stands)
  and its head, for the station to verify against the registered root.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Any

from sekisho import codec, crypto
from sekisho.codec import Fields
from sekisho.errors import FormatError, SekishoError, SignatureInvalid
from sekisho.store.grants import SealedGrant
from sekisho.store.records import KeySlot, UserRecord

REQUEST_FORMAT = "sekisho/v1/device-request"
BUNDLE_FORMAT = "sekisho/v1/bundle"
CHECKIN_FORMAT = "sekisho/v1/checkin-request"
KINDS = ("provision", "renewal")
MAX_FILE = 256 * 1024 * 1024


class BundleError(SekishoError):
    """A bundle, renewal or request was refused; nothing was changed."""

    advice = "Ask IT for a new bundle made for this laptop."


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise BundleError(f"The {what} is malformed.")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"The {what} is not valid base64.") from None


def _json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_FILE:
        raise BundleError(f"The {what} is too large.")
    try:
        return crypto.parse_json_object(data, what=what)
    except FormatError:
        raise BundleError(f"The file is not a Sekisho {what}.") from None


def fingerprint(data: bytes) -> str:
    """Five groups of four hex digits: what IT reads off the laptop's screen."""
    digest = hashlib.sha256(data).hexdigest()[:20]
    return "-".join(digest[i : i + 4] for i in range(0, 20, 4))


# --- device request --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DeviceRequest:
    device_id: str
    identity_public: bytes
    trail_root: bytes
    it_key: str  # fingerprint of the IT key the laptop pinned
    created: int
    host: str = ""

    def to_bytes(self) -> bytes:
        return crypto.canonical_json({
            "format": REQUEST_FORMAT, "device_id": self.device_id, "identity": crypto.b64e(self.identity_public),
            "trail_root": crypto.b64e(self.trail_root), "it_key": self.it_key, "created": self.created,
            "host": self.host})

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceRequest:
        obj = _json(data, "device request")
        if obj.get("format") != REQUEST_FORMAT:
            raise BundleError("The file is not a Sekisho device request.")
        try:
            f = Fields(obj, "device request")
            request = cls(device_id=f.text("device_id"), identity_public=_b64(obj["identity"], "device identity"),
                          trail_root=_b64(obj["trail_root"], "trail root"), it_key=f.text("it_key"),
                          created=f.integer("created"), host=f.text("host"))
        except (FormatError, KeyError) as exc:
            raise BundleError(f"The device request is malformed ({exc}).") from None
        if len(request.identity_public) != 32 or len(request.trail_root) != 32:
            raise BundleError("The device request's keys have the wrong length.")
        return request


# --- bundles ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BundleUser:
    record: UserRecord
    slots: list[KeySlot]
    grant: SealedGrant

    def to_cbor(self) -> dict[str, Any]:
        return {"record": self.record.to_cbor(), "slots": [s.to_cbor() for s in self.slots],
                "grant": self.grant.to_cbor()}

    @classmethod
    def from_cbor(cls, obj: Any) -> BundleUser:
        f = Fields(obj if isinstance(obj, dict) else {}, "bundle user")
        return cls(record=UserRecord.from_cbor(f.blob("record")),
                   slots=[KeySlot.from_cbor(b) for b in f.items("slots")],
                   grant=SealedGrant.from_cbor(f.blob("grant")))


@dataclass(frozen=True, kw_only=True)
class BundlePayload:
    """What a bundle carries (sealed to the laptop)."""

    policy: bytes = b""
    policy_sig: bytes = b""
    users: list[BundleUser] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    lease: dict[str, int] = field(default_factory=dict)  # office_time, days, max_unlocks
    extension_key: bytes | None = field(default=None, repr=False)
    reenable: list[str] = field(default_factory=list)
    #: IT's next public key, announced in a renewal signed by the current one.
    new_it_key: bytes | None = None

    def to_bytes(self) -> bytes:
        """A CBOR header, then each user as its own length-prefixed CBOR record.

        Users are framed one by one so that a bundle for 20,000 users is read in linear
        time (a CBOR decoder that slices its input would copy the rest at every item).
        """
        obj: dict[str, Any] = {"policy": self.policy, "policy_sig": self.policy_sig, "remove": list(self.remove),
                               "lease": dict(self.lease), "reenable": list(self.reenable), "users": len(self.users)}
        if self.extension_key is not None:
            obj["extension_key"] = self.extension_key
        if self.new_it_key is not None:
            obj["new_it_key"] = self.new_it_key
        parts = [codec.encode(obj), *(codec.encode(u.to_cbor()) for u in self.users)]
        return b"".join(len(p).to_bytes(4, "big") + p for p in parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> BundlePayload:
        view = memoryview(data)
        records: list[bytes] = []
        offset = 0
        while offset < len(view):
            if offset + 4 > len(view):
                raise FormatError("bundle payload: truncated")
            n = int.from_bytes(view[offset : offset + 4], "big")
            if offset + 4 + n > len(view):
                raise FormatError("bundle payload: truncated")
            records.append(bytes(view[offset + 4 : offset + 4 + n]))
            offset += 4 + n
        if not records:
            raise FormatError("bundle payload: empty")
        f = Fields(codec.decode(records[0], what="bundle payload"), "bundle payload")
        if f.integer("users") != len(records) - 1:
            raise FormatError("bundle payload: the number of users does not match")
        lease = f.mapping("lease")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in lease.values()):
            raise FormatError("bundle payload: lease values must be integers")
        users = [BundleUser.from_cbor(codec.decode(r, what="bundle user")) for r in records[1:]]
        return cls(policy=f.blob("policy"), policy_sig=f.blob("policy_sig"), users=users,
                   remove=list(f.texts("remove")), lease=dict(lease),
                   extension_key=f.blob("extension_key", length=32, required=False),
                   reenable=list(f.texts("reenable")), new_it_key=f.blob("new_it_key", length=32, required=False))


@dataclass(frozen=True, kw_only=True)
class BundleHeader:
    device_id: str
    kind: str
    serial: int
    created: int
    sealed: bytes = field(repr=False)

    @property
    def context(self) -> bytes:
        return b"\x00".join([self.device_id.encode(), self.kind.encode(), str(self.serial).encode()])


def make_bundle(payload: BundlePayload, *, device_id: str, device_public: bytes, kind: str, serial: int,
                created: int, it_private: bytes | bytearray) -> bytes:
    """Seal ``payload`` to the laptop and sign the whole with IT's key; the file's bytes."""
    if kind not in KINDS:
        raise ValueError(kind)
    header = BundleHeader(device_id=device_id, kind=kind, serial=serial, created=created, sealed=b"")
    sealed = crypto.seal(device_public, payload.to_bytes(), purpose="bundle", context=header.context)
    signed = crypto.canonical_json({"format": BUNDLE_FORMAT, "device_id": device_id, "kind": kind,
                                    "serial": serial, "created": created, "payload": crypto.b64e(sealed)})
    return crypto.canonical_json({"signed": crypto.b64e(signed),
                                  "sig": crypto.b64e(crypto.ed25519_sign(it_private, signed))}) + b"\n"


def verify_bundle(data: bytes, it_public: bytes) -> BundleHeader:
    """IT's signature over the exact signed bytes first; then the header."""
    outer = _json(data, "bundle")
    signed = _b64(outer.get("signed"), "bundle")
    signature = _b64(outer.get("sig"), "bundle signature")
    try:
        crypto.ed25519_verify(it_public, signed, signature, what="bundle")
    except SignatureInvalid:
        raise BundleError("The bundle's signature is not IT's (broken, or signed by another key).",
                          advice="Use the bundle IT made for this laptop; ask IT if in doubt.") from None
    obj = _json(signed, "bundle")
    try:
        f = Fields(obj, "bundle")
        if f.text("format") != BUNDLE_FORMAT or f.text("kind") not in KINDS:
            raise BundleError("The bundle has an unknown format or kind.")
        return BundleHeader(device_id=f.text("device_id"), kind=f.text("kind"), serial=f.integer("serial"),
                            created=f.integer("created"), sealed=_b64(obj.get("payload"), "bundle payload"))
    except FormatError as exc:
        raise BundleError(f"The bundle is malformed ({exc}).") from None


def open_bundle(header: BundleHeader, device_private: bytes | bytearray) -> BundlePayload:
    try:
        payload = crypto.unseal(device_private, header.sealed, purpose="bundle", context=header.context)
    except crypto.AeadFailure:
        raise BundleError("The bundle is sealed to another laptop.") from None
    try:
        return BundlePayload.from_bytes(payload)
    except FormatError as exc:
        raise BundleError(f"The bundle's content is malformed ({exc}).") from None


# --- check-in request --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CheckinRequest:
    device_id: str
    head: str
    trail: bytes = field(repr=False)
    created: int

    def to_bytes(self) -> bytes:
        return crypto.canonical_json({"format": CHECKIN_FORMAT, "device_id": self.device_id, "head": self.head,
                                      "trail": crypto.b64e(self.trail), "created": self.created}) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> CheckinRequest:
        obj = _json(data, "check-in request")
        if obj.get("format") != CHECKIN_FORMAT:
            raise BundleError("The file is not a Sekisho check-in request.")
        try:
            f = Fields(obj, "check-in request")
            return cls(device_id=f.text("device_id"), head=f.text("head"), trail=_b64(obj.get("trail"), "trail"),
                       created=f.integer("created"))
        except FormatError as exc:
            raise BundleError(f"The check-in request is malformed ({exc}).") from None
