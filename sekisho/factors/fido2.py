"""FIDO2 security keys as factors, through python-fido2 at the CTAP2 level.

The key's hmac-secret extension gives a 32-byte secret per credential and salt; the
key computes it only after a touch, and keeps two separate secrets for assertions with
and without user verification (UV: the key's fingerprint sensor or its own PIN with its
hardware retry counter). Two slot kinds use it:

* ``fido2-uv``: the output *with* UV is the whole slot secret: possession and
  (fingerprint) biometric or (key PIN) knowledge, both enforced by the key.
* ``pin+fido2``: Argon2id(passphrase) and the output *without* UV: possession by the
  key, knowledge checked by Sekisho.

Which key belongs to whom: the slot names the credential; at logon every connected key
is asked, silently (``up=false``, no secret returned), whether it holds it — as
systemd-cryptenroll does — and only that key is then asked to prove presence.

Devices and the person are injected: a list of ``CtapDevice`` (USB HID, NFC through
PC/SC, or the software key) and a :class:`UserInteraction`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from fido2 import cbor
from fido2.attestation.base import (
    AttestationResult,
    AttestationVerifier,
    InvalidAttestation,
    UnsupportedType,
    verify_x509_chain,
)
from fido2.cose import CoseKey
from fido2.ctap import STATUS, CtapDevice, CtapError
from fido2.ctap2.base import Ctap2
from fido2.ctap2.pin import ClientPin, PinProtocol
from fido2.webauthn import AttestationObject, AuthenticatorData

from sekisho import crypto
from sekisho.crypto import Argon2Params
from sekisho.errors import (
    AttestationRejected,
    AuthenticationFailed,
    Cancelled,
    DeviceError,
    FactorError,
    KeyNotFound,
    KeyPinBlocked,
    KeyPinInvalid,
    KeyUnsuitable,
)
from sekisho.factors import passphrase as pp
from sekisho.factors.interaction import Prompt, UserInteraction
from sekisho.store.records import KeySlot, SlotKind

log = logging.getLogger(__name__)

#: The relying-party id of every Sekisho credential (not a web origin: never phishable).
RP_ID = "sekisho"
RP_NAME = "Sekisho"
SALT_LEN = 32
ERR = CtapError.ERR
FAILED = "The security key or the passphrase is not correct."
#: The AAGUID of Sekisho's own software key (sekisho.devices.softkey), known here so the
#: core never imports the device module.
SOFTWARE_AAGUIDS = frozenset({bytes.fromhex("5e415e4f0f7a4c6b9d2e536f66744b79")})

DeviceSource = Callable[[], Iterable[CtapDevice]]


def connected_keys() -> list[CtapDevice]:
    """Every FIDO2 key on USB (HID), and on NFC readers (PC/SC) when pyscard is installed."""
    from fido2.hid import CtapHidDevice

    keys: list[CtapDevice] = list(CtapHidDevice.list_devices())
    try:
        from fido2.pcsc import CtapPcscDevice
    except ImportError:  # no smart card support installed
        return keys
    try:
        keys += list(CtapPcscDevice.list_devices())
    except Exception as exc:  # no PC/SC service: USB keys still work
        log.info("no NFC keys: %s", exc)
    return keys


@dataclass(frozen=True, kw_only=True)
class KeyInfo:
    """What a key says about itself (getInfo), recorded with its slots."""

    aaguid: bytes
    builtin_uv: bool  # a fingerprint (or other built-in UV) is set up and usable
    client_pin: bool | None  # True: a PIN is set; False: supported, not set; None: no PIN support
    always_uv: bool
    bio_enroll: bool
    hmac_secret: bool
    uv_token: bool  # pinUvAuthToken (CTAP 2.1 tokens with permissions)

    @property
    def software(self) -> bool:
        return self.aaguid in SOFTWARE_AAGUIDS

    @property
    def can_verify_user(self) -> bool:
        return self.builtin_uv or bool(self.client_pin)

    @classmethod
    def from_ctap(cls, ctap: Ctap2) -> KeyInfo:
        info = ctap.info
        options = info.options
        return cls(aaguid=bytes(info.aaguid), builtin_uv=options.get("uv") is True,
                   client_pin=options.get("clientPin"), always_uv=options.get("alwaysUv") is True,
                   bio_enroll=options.get("bioEnroll") is True, hmac_secret="hmac-secret" in info.extensions,
                   uv_token=options.get("pinUvAuthToken") is True)

    def to_params(self) -> dict[str, Any]:
        return {"aaguid": self.aaguid, "builtin_uv": self.builtin_uv, "client_pin": bool(self.client_pin),
                "always_uv": self.always_uv, "software": self.software}


# --- errors -----------------------------------------------------------------------------


@contextlib.contextmanager
def device_errors() -> Iterator[None]:
    """Turn what a key (or its absence) can throw into Sekisho errors with advice."""
    try:
        yield
    except CtapError as exc:
        code = int(exc.code)
        if code == ERR.PIN_BLOCKED:
            raise KeyPinBlocked("The security key's PIN is blocked (too many wrong PINs).") from None
        if code == ERR.PIN_AUTH_BLOCKED:
            raise KeyPinBlocked("The security key refuses PINs until it is removed and inserted again.",
                                advice="Remove the key, insert it again, and enter the PIN carefully.") from None
        if code == ERR.UV_BLOCKED:
            raise AuthenticationFailed("The key no longer accepts fingerprints: use its PIN.") from None
        if code in (ERR.USER_ACTION_TIMEOUT, ERR.ACTION_TIMEOUT):
            raise Cancelled("The security key was not touched in time.") from None
        if code == ERR.KEEPALIVE_CANCEL:
            raise Cancelled("Cancelled.") from None
        if code == ERR.OPERATION_DENIED:
            raise AuthenticationFailed("The security key refused the request.") from None
        raise DeviceError(f"The security key answered with error 0x{code:02X} ({exc.code.name}).",
                          status=code) from None
    except InvalidSignature:
        raise DeviceError("The security key's signature does not verify: it is not the key that was registered.",
                          advice="Use the security key registered for your staff id.") from None
    except (OSError, EOFError) as exc:
        raise DeviceError(f"The security key stopped answering ({type(exc).__name__}): was it removed?") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        log.debug("unreadable key answer: %s: %s", type(exc).__name__, exc)
        raise DeviceError("The security key sent an answer Sekisho cannot read.") from None


def _open(device: CtapDevice) -> Ctap2:
    with device_errors():
        return Ctap2(device)


# --- the person -------------------------------------------------------------------------


def _keepalive(interaction: UserInteraction, prompt: Prompt, fingerprint: bool) -> Callable[[int], None]:
    def on_keepalive(status: int) -> None:
        if status == STATUS.UPNEEDED:
            if fingerprint:
                interaction.prompt_fingerprint(prompt)
            else:
                interaction.prompt_touch(prompt)

    return on_keepalive


def _client_pin(ctap: Ctap2) -> ClientPin:
    with device_errors():
        return ClientPin(ctap)


def _pin_token(ctap: Ctap2, permissions: ClientPin.PERMISSION, interaction: UserInteraction, prompt: Prompt,
               rp_id: str) -> tuple[bytes, PinProtocol]:
    """A PIN/UV token from the key's own PIN (asked through ``interaction``)."""
    client = _client_pin(ctap)
    with device_errors():
        retries, _ = client.get_pin_retries()
    pin = interaction.request_pin(Prompt(user_id=prompt.user_id, attempts_remaining=retries))
    try:
        with device_errors():
            try:
                return client.get_pin_token(pin, permissions, rp_id), client.protocol
            except CtapError as exc:
                if exc.code != ERR.PIN_INVALID:
                    raise
                left, _ = client.get_pin_retries()
                raise KeyPinInvalid(f"The security key's PIN is not correct ({left} attempts remaining).",
                                    attempts_remaining=left) from None
    finally:
        del pin


def _uv_token(ctap: Ctap2, permissions: ClientPin.PERMISSION, interaction: UserInteraction, prompt: Prompt,
              rp_id: str) -> tuple[bytes, PinProtocol, str]:
    """A token by the key's fingerprint sensor, or its PIN; and which way UV was done."""
    info = KeyInfo.from_ctap(ctap)
    if info.builtin_uv and info.uv_token:
        client = _client_pin(ctap)
        try:
            with device_errors():
                token = client.get_uv_token(permissions, rp_id,
                                            on_keepalive=_keepalive(interaction, prompt, fingerprint=True))
            return token, client.protocol, "fingerprint"
        except AuthenticationFailed:
            if not info.client_pin:
                raise
            log.info("fingerprint blocked on the key: falling back to its PIN")
        except DeviceError as exc:
            if exc.status != ERR.UV_INVALID:
                raise
            with device_errors():
                left = client.get_uv_retries()
            raise AuthenticationFailed(f"The fingerprint was not recognised ({left} attempts remaining).",
                                       advice="Place the finger you registered flat on the key's sensor.") from None
    if info.client_pin:
        token, protocol = _pin_token(ctap, permissions, interaction, prompt, rp_id)
        return token, protocol, "pin"
    raise KeyUnsuitable("This security key has neither a fingerprint nor a PIN set up, so it cannot verify you.",
                        advice="Set a PIN on the key at the office (sekisho-enroll) and enrol it again.")


# --- hmac-secret ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Credential:
    rp_id: str
    credential_id: bytes
    public_key: CoseKey


def _hmac_secret(ctap: Ctap2, cred: _Credential, salt: bytes, *, uv: bool, interaction: UserInteraction,
                 prompt: Prompt) -> tuple[bytearray, str]:
    """The hmac-secret output for ``salt``, with or without UV; and how UV was done."""
    uv_method = "none"
    token: bytes | None = None
    proto: PinProtocol | None = None
    if uv:
        token, proto, uv_method = _uv_token(ctap, ClientPin.PERMISSION.GET_ASSERTION, interaction, prompt,
                                            cred.rp_id)
    with device_errors():
        client = ClientPin(ctap, proto) if proto is not None else ClientPin(ctap)
        protocol = client.protocol
        key_agreement, shared = protocol.encapsulate(
            ctap.client_pin(protocol.VERSION, ClientPin.CMD.GET_KEY_AGREEMENT)[ClientPin.RESULT.KEY_AGREEMENT])
        salt_enc = protocol.encrypt(shared, salt)
        extension = {"hmac-secret": {1: key_agreement, 2: salt_enc, 3: protocol.authenticate(shared, salt_enc),
                                     4: protocol.VERSION}}
        client_data_hash = hashlib.sha256(crypto.label("fido2", "assertion") + os.urandom(32)).digest()
        response = ctap.get_assertion(
            cred.rp_id, client_data_hash, [{"type": "public-key", "id": cred.credential_id}], extension,
            None, protocol.authenticate(token, client_data_hash) if token else None,
            protocol.VERSION if token else None, event=interaction.cancel_event,
            on_keepalive=_keepalive(interaction, prompt, fingerprint=False))
        auth_data: AuthenticatorData = response.auth_data
        # The signature binds the flags: a key (or something posing as one) cannot claim UV.
        response.verify(client_data_hash, cred.public_key)
        if auth_data.rp_id_hash != hashlib.sha256(cred.rp_id.encode()).digest() or not auth_data.is_user_present():
            raise DeviceError("The security key's answer is not for this logon.")
        if uv and not auth_data.is_user_verified():
            raise DeviceError("The security key did not verify the user although it was asked to.")
        encrypted = (auth_data.extensions or {}).get("hmac-secret")
        if not isinstance(encrypted, bytes):
            raise DeviceError("The security key returned no hmac-secret output.")
        output = bytearray(protocol.decrypt(shared, encrypted))
    if len(output) != SALT_LEN:
        crypto.wipe(output)
        raise DeviceError("The security key's hmac-secret output has the wrong length.")
    return output, uv_method


# --- finding the user's key ---------------------------------------------------------------


def identify(devices: Iterable[CtapDevice], interaction: UserInteraction, rp_id: str = RP_ID) -> str:
    """The staff id a touch on a connected key names (a discoverable credential made at
    enrolment): no allow list, user presence only, no secret. It says who claims to be at
    the laptop, nothing more — the unlock that follows proves it."""
    problems: list[str] = []
    for device in devices:
        try:
            ctap = _open(device)
            challenge = hashlib.sha256(crypto.label("fido2", "identify") + os.urandom(32)).digest()
            interaction.prompt_touch(Prompt(user_id=""))
            with device_errors():
                try:
                    response = ctap.get_assertion(rp_id, challenge, None, None, {"up": True},
                                                  event=interaction.cancel_event,
                                                  on_keepalive=_keepalive(interaction, Prompt(user_id=""),
                                                                          fingerprint=False))
                except CtapError as exc:
                    if exc.code == ERR.NO_CREDENTIALS:
                        continue
                    raise
            handle = (response.user or {}).get("id")
            if not isinstance(handle, bytes):
                raise DeviceError("The security key named no user for its credential.")
            try:
                return handle.decode("utf-8")
            except UnicodeDecodeError:
                raise DeviceError("The security key's credential names a user Sekisho did not write.") from None
        except DeviceError as exc:
            log.info("skipping a security key: %s", exc)
            problems.append(str(exc))
    if problems:
        raise DeviceError(f"No security key could name its user ({'; '.join(problems)}).")
    raise KeyNotFound("No connected security key was registered to identify you by a touch.",
                      advice="Type your staff id instead.")


def find_key(devices: Iterable[CtapDevice], rp_id: str, credential_id: bytes,
             public_key: CoseKey | None = None) -> Ctap2:
    """The connected key that holds ``credential_id``: a silent pre-flight, no touch, no secret.

    With ``public_key`` the pre-flight's signature is checked: the key proves it holds
    the credential (possession), it does not just say so.
    """
    problems: list[str] = []
    for device in devices:
        try:
            ctap = _open(device)
            challenge = hashlib.sha256(crypto.label("fido2", "preflight") + os.urandom(32)).digest()
            with device_errors():
                try:
                    response = ctap.get_assertion(rp_id, challenge, [{"type": "public-key", "id": credential_id}],
                                                  None, {"up": False})
                except CtapError as exc:
                    if exc.code == ERR.NO_CREDENTIALS:
                        continue
                    raise
                if public_key is not None:
                    response.verify(challenge, public_key)
            return ctap
        except DeviceError as exc:
            log.info("skipping a security key: %s", exc)
            problems.append(str(exc))
    if problems:
        raise DeviceError(f"No usable security key holds this credential ({'; '.join(problems)}).")
    raise KeyNotFound("None of the connected security keys is registered for this staff id.")


# --- enrolment --------------------------------------------------------------------------


class _RootsVerifier(AttestationVerifier):
    def __init__(self, roots: Sequence[bytes]) -> None:
        super().__init__()
        self._roots = [x509.load_der_x509_certificate(r) for r in roots]

    def ca_lookup(self, attestation_result: AttestationResult, auth_data: AuthenticatorData) -> bytes | None:
        if not attestation_result.trust_path:
            return None
        top_der = attestation_result.trust_path[-1]
        top = x509.load_der_x509_certificate(top_der)
        for root in self._roots:
            if root.subject != top.issuer:
                continue
            der = root.public_bytes(Encoding.DER)
            try:  # names are not unique (every software key's root has the same one)
                verify_x509_chain([top_der, der])
            except InvalidAttestation:
                continue
            return der
        return None


def check_authenticator(aaguid: bytes, *, software: bool, allow_software: bool, aaguids: Sequence[str]) -> None:
    """The policy's rules on which keys may hold slots (at enrolment and at every logon)."""
    if software and not allow_software:
        raise AttestationRejected("This is a software authenticator; the policy allows only hardware keys.")
    if aaguids and str(_uuid(aaguid)) not in {a.lower() for a in aaguids}:
        raise AttestationRejected(f"Security keys of this model (AAGUID {_uuid(aaguid)}) are not on IT's list.")


def _uuid(aaguid: bytes) -> str:
    h = aaguid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, kw_only=True)
class EnrolledKey:
    """The credential a key made at enrolment, and what it said about itself."""

    credential_id: bytes
    public_key: bytes  # COSE, CBOR-encoded
    info: KeyInfo
    attestation: str  # format, e.g. "packed"
    uv_method: str  # how UV was done when the credential was made ("fingerprint", "pin", "none")


def make_credential(
    ctap: Ctap2,
    *,
    user_id: str,
    display_name: str,
    interaction: UserInteraction,
    trusted_roots: Sequence[bytes],
    allow_software: bool,
    aaguids: Sequence[str] = (),
    rp_id: str = RP_ID,
    discoverable: bool = False,
) -> EnrolledKey:
    """Make an hmac-secret credential and check the key's attestation and the policy.

    ``discoverable``: the key keeps the staff id with the credential, so that a touch
    identifies the user at the logon window (:func:`identify`)."""
    info = KeyInfo.from_ctap(ctap)
    if not info.hmac_secret:
        raise KeyUnsuitable("This security key has no hmac-secret extension; Sekisho cannot derive a key with it.")
    prompt = Prompt(user_id=user_id)
    token, proto, uv_method = None, None, "none"
    if info.can_verify_user:
        token, proto, uv_method = _uv_token(ctap, ClientPin.PERMISSION.MAKE_CREDENTIAL, interaction, prompt, rp_id)
    elif info.always_uv:
        raise KeyUnsuitable("This key always requires verification but has neither a PIN nor a fingerprint set.")
    client_data_hash = hashlib.sha256(crypto.label("fido2", "enrol") + os.urandom(32)).digest()
    with device_errors():
        response = ctap.make_credential(
            client_data_hash, {"id": rp_id, "name": RP_NAME},
            {"id": user_id.encode("utf-8"), "name": user_id, "displayName": display_name or user_id},
            [{"type": "public-key", "alg": -7}, {"type": "public-key", "alg": -8}],
            extensions={"hmac-secret": True}, options={"rk": discoverable},
            pin_uv_param=proto.authenticate(token, client_data_hash) if proto and token else None,
            pin_uv_protocol=proto.VERSION if proto else None,
            on_keepalive=_keepalive(interaction, prompt, fingerprint=False))
    auth_data = response.auth_data
    credential = auth_data.credential_data
    if credential is None or (auth_data.extensions or {}).get("hmac-secret") is not True:
        raise KeyUnsuitable("The security key made a credential without hmac-secret.")
    if bytes(credential.aaguid) != info.aaguid:
        raise AttestationRejected("The key's credential names another model than the key itself.")
    try:
        _RootsVerifier(trusted_roots).verify_attestation(
            AttestationObject.create(response.fmt, auth_data, response.att_stmt), client_data_hash)
    except UnsupportedType:
        raise AttestationRejected(f"The key's attestation format {response.fmt!r} is not supported.") from None
    except InvalidAttestation as exc:
        raise AttestationRejected(
            f"The key could not prove its model ({type(exc).__name__}: {exc or 'no trusted root'}).") from None
    check_authenticator(info.aaguid, software=info.software, allow_software=allow_software, aaguids=aaguids)
    return EnrolledKey(credential_id=bytes(credential.credential_id),
                             public_key=cbor.encode(dict(credential.public_key)), info=info,
                             attestation=response.fmt, uv_method=uv_method)


def enrol(
    device: CtapDevice,
    *,
    kind: SlotKind,
    user_id: str,
    slot_id: int,
    identity_private: bytes | bytearray,
    interaction: UserInteraction,
    trusted_roots: Sequence[bytes],
    allow_software: bool,
    aaguids: Sequence[str] = (),
    display_name: str = "",
    passphrase: str | None = None,
    argon2: Argon2Params | None = None,
    created_at: int = 0,
    discoverable: bool = False,
) -> KeySlot:
    """Enrol a key as a ``fido2-uv`` or ``pin+fido2`` slot (two touches: make, then derive).

    For ``pin+fido2`` check the passphrase rules before calling this.
    """
    if kind not in (SlotKind.FIDO2_UV, SlotKind.PIN_FIDO2):
        raise ValueError(f"not a FIDO2 slot kind: {kind}")
    ctap = _open(device)
    info = KeyInfo.from_ctap(ctap)
    if kind is SlotKind.PIN_FIDO2 and info.always_uv:
        raise KeyUnsuitable("This security key always requires a fingerprint or PIN (alwaysUv), so it cannot "
                            "hold a key + passphrase slot.", advice="Enrol it as a fingerprint or key-PIN slot.")
    if kind is SlotKind.FIDO2_UV and not info.can_verify_user:
        raise KeyUnsuitable("This security key has no fingerprint or PIN set up, so it cannot verify you.",
                            advice="Set a PIN on the key first, then enrol it again.")
    if kind is SlotKind.PIN_FIDO2 and (passphrase is None or argon2 is None):
        raise ValueError("a pin+fido2 slot needs the passphrase and Argon2id parameters")
    enrolled = make_credential(ctap, user_id=user_id, display_name=display_name, interaction=interaction,
                               trusted_roots=trusted_roots, allow_software=allow_software, aaguids=aaguids,
                               discoverable=discoverable)
    cred = _Credential(rp_id=RP_ID, credential_id=enrolled.credential_id,
                       public_key=CoseKey.parse(_cbor_decode(enrolled.public_key)))
    salt = os.urandom(SALT_LEN)
    output, uv_method = _hmac_secret(ctap, cred, salt, uv=kind is SlotKind.FIDO2_UV, interaction=interaction,
                                     prompt=Prompt(user_id=user_id))
    params: dict[str, Any] = {"rp": RP_ID, "cred": enrolled.credential_id, "cose": enrolled.public_key,
                              "salt": salt, "attestation": enrolled.attestation, "uv_method": uv_method,
                              **enrolled.info.to_params()}
    secrets: dict[str, bytes | bytearray] = {"hmac-secret-uv" if kind is SlotKind.FIDO2_UV else "hmac-secret": output}
    derived: bytearray | None = None
    kdf_salt = None
    try:
        if kind is SlotKind.PIN_FIDO2:
            assert passphrase is not None and argon2 is not None  # noqa: S101 - checked above
            kdf_salt = pp.new_salt()
            derived = pp.derive(passphrase, kdf_salt, argon2)
            secrets["passphrase"] = derived
        return KeySlot.create(user_id=user_id, slot_id=slot_id, kind=kind, identity_private=identity_private,
                              secrets=secrets, argon2=argon2 if derived is not None else None,
                              argon2_salt=kdf_salt, params=params, created_at=created_at)
    finally:
        crypto.wipe(output)
        crypto.wipe(derived)


def _cbor_decode(data: bytes) -> Mapping[int, Any]:
    value = cbor.decode(data)
    if not isinstance(value, Mapping):
        raise FactorError("The slot's credential key is malformed.")
    return value


# --- logon ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Fido2Unlock:
    """What a FIDO2 slot gave: the identity, and how the key verified the user."""

    identity: bytearray = field(repr=False)
    uv_method: str


def _slot_credential(slot: KeySlot) -> tuple[_Credential, bytes]:
    """The slot's credential and hmac-secret salt, from its public parameters."""
    p = slot.params
    try:
        cred = _Credential(rp_id=p["rp"], credential_id=p["cred"], public_key=CoseKey.parse(_cbor_decode(p["cose"])))
        return cred, p["salt"]
    except (KeyError, TypeError, ValueError):
        raise FactorError("This FIDO2 slot is malformed.", advice="Ask IT to enrol your key again.") from None


def read_output(slot: KeySlot, devices: Iterable[CtapDevice], *, uv: bool, user_id: str,
                interaction: UserInteraction) -> tuple[bytearray, str]:
    """Whatever the connected key answers for this slot's credential and salt, with or
    without UV; and how UV was done. Opening the slot decides whether it is right."""
    cred, salt = _slot_credential(slot)
    ctap = find_key(devices, cred.rp_id, cred.credential_id)
    return _hmac_secret(ctap, cred, salt, uv=uv, interaction=interaction, prompt=Prompt(user_id=user_id))


def open_slot(
    *,
    slot: KeySlot,
    user_id: str,
    devices: Iterable[CtapDevice],
    interaction: UserInteraction,
    allow_software: bool,
    aaguids: Sequence[str] = (),
    on_possession: Callable[[], None] | None = None,
) -> Fido2Unlock:
    """Open a ``fido2-uv`` or ``pin+fido2`` slot with the user's key (and passphrase).

    ``on_possession`` is called once the user's key has answered for the credential with
    a valid signature (before any touch, PIN or passphrase).
    """
    if slot.kind not in (SlotKind.FIDO2_UV, SlotKind.PIN_FIDO2):
        raise ValueError(f"not a FIDO2 slot: {slot.kind}")
    _slot_credential(slot)
    try:
        aaguid, software = slot.params["aaguid"], slot.params["software"]
    except KeyError:
        raise FactorError("This FIDO2 slot is malformed.", advice="Ask IT to enrol your key again.") from None
    # The policy may have changed since enrolment: check the key's model again.
    check_authenticator(aaguid, software=software, allow_software=allow_software, aaguids=aaguids)
    devices = list(devices)
    try:
        return _open_with(slot, user_id, devices, interaction, on_possession)
    finally:
        for device in devices:  # release USB and NFC connections (software keys hold none)
            with contextlib.suppress(Exception):
                device.close()


def _open_with(slot: KeySlot, user_id: str, devices: list[CtapDevice], interaction: UserInteraction,
               on_possession: Callable[[], None] | None) -> Fido2Unlock:
    cred, _ = _slot_credential(slot)
    find_key(devices, cred.rp_id, cred.credential_id, public_key=cred.public_key)  # no key: say so first
    if on_possession is not None:
        on_possession()
    derived: bytearray | None = None
    secrets: dict[str, bytes | bytearray]
    if slot.kind is SlotKind.FIDO2_UV:
        output, uv_method = read_output(slot, devices, uv=True, user_id=user_id, interaction=interaction)
        secrets = {"hmac-secret-uv": output}
    else:
        assert slot.argon2 is not None and slot.argon2_salt is not None  # noqa: S101 - KeySlot checks
        passphrase = interaction.request_passphrase(Prompt(user_id=user_id))
        output, uv_method = read_output(slot, devices, uv=False, user_id=user_id, interaction=interaction)
        derived = pp.derive(passphrase, slot.argon2_salt, slot.argon2)
        secrets = {"passphrase": derived, "hmac-secret": output}
    try:
        identity = slot.open(user_id, secrets)
    except AuthenticationFailed:
        raise AuthenticationFailed(FAILED if slot.kind is SlotKind.PIN_FIDO2 else
                                   "This security key does not open your slot.") from None
    finally:
        crypto.wipe(output)
        crypto.wipe(derived)
    return Fido2Unlock(identity=identity, uv_method=uv_method)
