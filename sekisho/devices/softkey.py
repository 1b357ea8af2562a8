"""A FIDO2 security key in pure Python, for tests, the demo and the virtual NFC card.

``SoftKey`` is an ordinary :class:`fido2.ctap.CtapDevice`: python-fido2's ``Ctap2`` and
``ClientPin`` talk to it exactly as to a USB key. It implements CTAP 2.1's getInfo,
makeCredential (ES256, packed attestation with its own AAGUID and certificate chain),
getAssertion and getNextAssertion (allow lists and discoverable credentials, silent
``up=false`` pre-flights), clientPIN protocols 1 and 2 (retry counter that blocks, three
wrong PINs per power-up, tokens with permissions), the hmac-secret extension with its
two per-credential secrets (with and without UV), and reset. Options: a simulated
fingerprint sensor (built-in UV, ``bioEnroll``, its own retry counter) and ``alwaysUv``.

Its state (credentials, PIN hash, counters, attestation keys) is a JSON file written
atomically after every change, so the demo and tests use one key across processes.
**It is software**: anyone who reads the file has the key. Its AAGUID is
:data:`SOFTKEY_AAGUID`, and a policy refuses it unless it allows software authenticators.

Touch and finger are simulated by the attributes ``touch`` and ``finger``, which tests
set to make a person refuse, time out or present the wrong finger.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from threading import Event
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fido2 import cbor
from fido2.cose import ES256
from fido2.ctap import STATUS, CtapDevice, CtapError
from fido2.ctap2.pin import PinProtocolV1, PinProtocolV2
from fido2.hid import CAPABILITY, CTAPHID
from fido2.utils import bytes2int, int2bytes
from fido2.webauthn import AttestedCredentialData, AuthenticatorData

from sekisho import crypto
from sekisho.files import atomic_write

log = logging.getLogger(__name__)

#: The AAGUID of every SoftKey: "Sekisho software key", not any vendor's.
SOFTKEY_AAGUID = bytes.fromhex("5e415e4f0f7a4c6b9d2e536f66744b79")
OID_AAGUID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
PIN_RETRIES = 8
UV_RETRIES = 5
#: Wrong PINs in a row before the key wants to be removed and reinserted.
PIN_TRIES_PER_POWER_UP = 3
ERR = CtapError.ERR


class Touch(Enum):
    GIVEN = "given"
    REFUSED = "refused"  # the person does not touch: the key times out


class Finger(Enum):
    MATCH = "match"
    OTHER = "other"  # a finger that is not enrolled


class _Fail(Exception):
    def __init__(self, code: ERR) -> None:
        super().__init__(code.name)
        self.code = code


PERM_MC = 0x01
PERM_GA = 0x02


@dataclass
class _Credential:
    id: bytes
    rp_id: str
    user: dict[str, Any]
    private: bytes  # PKCS#8 DER
    cred_random_uv: bytes
    cred_random: bytes
    discoverable: bool

    def to_json(self) -> dict[str, Any]:
        return {"id": crypto.b64e(self.id), "rp": self.rp_id, "user": {k: _enc(v) for k, v in self.user.items()},
                "key": crypto.b64e(self.private), "rnd_uv": crypto.b64e(self.cred_random_uv),
                "rnd": crypto.b64e(self.cred_random), "rk": self.discoverable}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> _Credential:
        return cls(id=_b(obj["id"]), rp_id=obj["rp"], user={k: _dec(v) for k, v in obj["user"].items()},
                   private=_b(obj["key"]), cred_random_uv=_b(obj["rnd_uv"]), cred_random=_b(obj["rnd"]),
                   discoverable=obj["rk"])


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def _enc(value: Any) -> Any:
    return {"b64": crypto.b64e(value)} if isinstance(value, bytes) else value


def _dec(value: Any) -> Any:
    return _b(value["b64"]) if isinstance(value, dict) and "b64" in value else value


@dataclass
class _State:
    aaguid: bytes
    attestation_key: bytes  # PKCS#8 DER
    attestation_chain: list[bytes]  # DER, leaf first, root last
    fingerprint_sensor: bool
    always_uv: bool
    fingerprints: int = 0
    pin_hash: bytes | None = None
    pin_retries: int = PIN_RETRIES
    uv_retries: int = UV_RETRIES
    credentials: list[_Credential] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "sekisho-softkey/1",
            "aaguid": self.aaguid.hex(),
            "attestation_key": crypto.b64e(self.attestation_key),
            "attestation_chain": [crypto.b64e(c) for c in self.attestation_chain],
            "fingerprint_sensor": self.fingerprint_sensor,
            "always_uv": self.always_uv,
            "fingerprints": self.fingerprints,
            "pin_hash": crypto.b64e(self.pin_hash) if self.pin_hash else None,
            "pin_retries": self.pin_retries,
            "uv_retries": self.uv_retries,
            "credentials": [c.to_json() for c in self.credentials],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> _State:
        if obj.get("format") != "sekisho-softkey/1":
            raise ValueError("not a Sekisho software key file")
        return cls(
            aaguid=bytes.fromhex(obj["aaguid"]),
            attestation_key=_b(obj["attestation_key"]),
            attestation_chain=[_b(c) for c in obj["attestation_chain"]],
            fingerprint_sensor=obj["fingerprint_sensor"],
            always_uv=obj["always_uv"],
            fingerprints=obj["fingerprints"],
            pin_hash=_b(obj["pin_hash"]) if obj["pin_hash"] else None,
            pin_retries=obj["pin_retries"],
            uv_retries=obj["uv_retries"],
            credentials=[_Credential.from_json(c) for c in obj["credentials"]],
        )


def _new_p256() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return key, der


def _load_p256(der: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_der_private_key(der, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # noqa: S101 - our own file
    return key


def _attestation_chain(aaguid: bytes) -> tuple[bytes, list[bytes]]:
    """A root CA and a packed-attestation leaf certificate carrying the AAGUID."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    root_key, _ = _new_p256()
    root_name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sekisho"),
                           x509.NameAttribute(NameOID.COMMON_NAME, "Sekisho Software Key Attestation Root")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(root_key, hashes.SHA256()))
    leaf_key, leaf_der = _new_p256()
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sekisho"),
                           x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Authenticator Attestation"),
                           x509.NameAttribute(NameOID.COMMON_NAME, "Sekisho Software Key")])
    leaf = (x509.CertificateBuilder().subject_name(leaf_name).issuer_name(root_name)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.UnrecognizedExtension(OID_AAGUID, b"\x04\x10" + aaguid), critical=False)
            .sign(root_key, hashes.SHA256()))
    return leaf_der, [leaf.public_bytes(serialization.Encoding.DER), root.public_bytes(serialization.Encoding.DER)]


class SoftKey(CtapDevice):
    """A software FIDO2 authenticator persisted to ``path`` (see the module docstring)."""

    def __init__(self, path: Path, state: _State) -> None:
        self.path = path
        self._state = state
        #: What the simulated person does when the key asks for a touch or a finger.
        self.touch = Touch.GIVEN
        self.finger = Finger.MATCH
        #: Called with "touch" or "finger" each time the key waits for the person.
        self.on_wait: Callable[[str], None] | None = None
        self._power_up()

    def __repr__(self) -> str:
        return f"<SoftKey {self.path.name} credentials={len(self._state.credentials)}>"

    # --- life cycle ---------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, *, fingerprint: bool = False, always_uv: bool = False, pin: str | None = None,
               aaguid: bytes = SOFTKEY_AAGUID) -> SoftKey:
        """A new key (file 0600). ``fingerprint`` gives it a sensor with one finger enrolled."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} already exists")
        key_der, chain = _attestation_chain(aaguid)
        state = _State(aaguid=aaguid, attestation_key=key_der, attestation_chain=chain,
                       fingerprint_sensor=fingerprint, always_uv=always_uv, fingerprints=int(fingerprint))
        if pin is not None:
            state.pin_hash = hashlib.sha256(pin.encode()).digest()[:16]
        key = cls(path, state)
        key._save()
        return key

    @classmethod
    def load(cls, path: Path) -> SoftKey:
        path = Path(path)
        return cls(path, _State.from_json(json.loads(path.read_text("utf-8"))))

    def power_cycle(self) -> None:
        """As if the key were removed and inserted again."""
        self._power_up()

    def _power_up(self) -> None:
        self._ka_key = ec.generate_private_key(ec.SECP256R1())
        self._token: bytes | None = None
        self._token_up = False
        self._token_permissions = 0
        self._token_rp: str | None = None
        self._pin_fails_this_power_up = 0
        self._pending_assertions: list[dict[int, Any]] = []

    def _save(self) -> None:
        atomic_write(self.path, json.dumps(self._state.to_json()).encode(), mode=0o600)

    @property
    def aaguid(self) -> bytes:
        return self._state.aaguid

    def attestation_root(self) -> bytes:
        """The DER certificate at the top of this key's attestation chain."""
        return self._state.attestation_chain[-1]

    def enrol_fingerprint(self) -> None:
        """The vendor's fingerprint enrolment (done once, before Sekisho sees the key)."""
        if not self._state.fingerprint_sensor:
            raise ValueError("this key has no fingerprint sensor")
        self._state.fingerprints += 1
        self._save()

    # --- CtapDevice -----------------------------------------------------------------

    @property
    def capabilities(self) -> int:
        return CAPABILITY.CBOR | CAPABILITY.NMSG

    @classmethod
    def list_devices(cls) -> Iterator[SoftKey]:
        return iter(())  # software keys are handed over explicitly, never discovered

    def call(self, cmd: int, data: bytes = b"", event: Event | None = None,
             on_keepalive: Callable[[STATUS], None] | None = None) -> bytes:
        if cmd != CTAPHID.CBOR:
            return bytes([ERR.INVALID_COMMAND])
        if not data:
            return bytes([ERR.INVALID_LENGTH])
        handlers: dict[int, Callable[[dict[int, Any]], dict[int, Any] | None]] = {
            0x01: self._make_credential, 0x02: self._get_assertion, 0x04: self._get_info,
            0x06: self._client_pin, 0x07: self._reset, 0x08: self._get_next_assertion,
        }
        handler = handlers.get(data[0])
        if handler is None:
            return bytes([ERR.INVALID_COMMAND])
        try:
            params = cbor.decode(data[1:]) if len(data) > 1 else {}
        except Exception:
            return bytes([ERR.INVALID_CBOR])
        if not isinstance(params, dict):
            return bytes([ERR.CBOR_UNEXPECTED_TYPE])
        self._event, self._keepalive = event, on_keepalive
        try:
            result = handler(params)
        except _Fail as fail:
            return bytes([fail.code])
        except (KeyError, TypeError, ValueError, IndexError):
            return bytes([ERR.INVALID_PARAMETER])
        return b"\x00" + (cbor.encode(result) if result is not None else b"")

    # --- the person -----------------------------------------------------------------

    def _wait(self, what: str) -> None:
        if self._keepalive is not None:
            self._keepalive(STATUS.UPNEEDED)
        if self.on_wait is not None:
            self.on_wait(what)
        if self._event is not None and self._event.is_set():
            raise _Fail(ERR.KEEPALIVE_CANCEL)

    def _user_presence(self) -> None:
        self._wait("touch")
        if self.touch is not Touch.GIVEN:
            raise _Fail(ERR.USER_ACTION_TIMEOUT)

    def _builtin_uv(self) -> None:
        """The fingerprint sensor: UV_INVALID for a wrong finger, UV_BLOCKED at zero."""
        if not (self._state.fingerprint_sensor and self._state.fingerprints):
            raise _Fail(ERR.UNSUPPORTED_OPTION)
        if self._state.uv_retries == 0:
            raise _Fail(ERR.UV_BLOCKED)
        self._wait("finger")
        if self.finger is not Finger.MATCH:
            self._state.uv_retries -= 1
            self._save()
            raise _Fail(ERR.UV_BLOCKED if self._state.uv_retries == 0 else ERR.UV_INVALID)
        if self._state.uv_retries != UV_RETRIES:
            self._state.uv_retries = UV_RETRIES
            self._save()

    # --- getInfo ----------------------------------------------------------------------

    def _get_info(self, params: dict[int, Any]) -> dict[int, Any]:
        s = self._state
        options: dict[str, bool] = {"rk": True, "up": True, "plat": False, "clientPin": s.pin_hash is not None,
                                    "pinUvAuthToken": True}
        if s.fingerprint_sensor:
            options["uv"] = s.fingerprints > 0
            options["bioEnroll"] = s.fingerprints > 0
        if s.always_uv:
            options["alwaysUv"] = True
        return {1: ["FIDO_2_0", "FIDO_2_1"], 2: ["hmac-secret"], 3: s.aaguid, 4: options, 5: 2048, 6: [2, 1],
                9: ["usb"], 0x0A: [{"alg": -7, "type": "public-key"}]}

    # --- PIN / UV tokens -----------------------------------------------------------------

    @staticmethod
    def _protocol(version: Any) -> PinProtocolV1:
        if version == 1:
            return PinProtocolV1()
        if version == 2:
            return PinProtocolV2()
        raise _Fail(ERR.INVALID_PARAMETER)

    def _shared_secret(self, proto: PinProtocolV1, peer: Mapping[int, Any] | None) -> bytes:
        if not isinstance(peer, Mapping):
            raise _Fail(ERR.MISSING_PARAMETER)
        try:
            public = ec.EllipticCurvePublicNumbers(bytes2int(peer[-2]), bytes2int(peer[-3]),
                                                   ec.SECP256R1()).public_key()
        except (KeyError, ValueError, TypeError):
            raise _Fail(ERR.INVALID_PARAMETER) from None
        return proto.kdf(self._ka_key.exchange(ec.ECDH(), public))

    @staticmethod
    def _check_mac(proto: PinProtocolV1, key: bytes, message: bytes, mac: Any) -> None:
        if not isinstance(mac, bytes) or not hmac.compare_digest(proto.authenticate(key, message), mac):
            raise _Fail(ERR.PIN_AUTH_INVALID)

    def _verify_token(self, params: dict[int, Any], message: bytes, permission: int, rp_id: str,
                      mac_key: int, proto_key: int) -> bool:
        """True if a valid pinUvAuthParam came with the command (UV was done)."""
        mac = params.get(mac_key)
        if mac is None:
            return False
        proto = self._protocol(params.get(proto_key))
        if self._token is None:
            raise _Fail(ERR.PIN_AUTH_INVALID)
        self._check_mac(proto, self._token, message, mac)
        if not self._token_permissions & permission or self._token_rp not in (None, rp_id):
            raise _Fail(ERR.UNAUTHORIZED_PERMISSION)
        return True

    def _issue_token(self, proto: PinProtocolV1, shared: bytes, permissions: int, rp_id: str | None, *,
                     user_present: bool = False) -> dict[int, Any]:
        self._token = os.urandom(32)
        self._token_permissions, self._token_rp = permissions, rp_id
        # A fingerprint is also a touch: the first use of a token made by one needs no other.
        self._token_up = user_present
        return {2: proto.encrypt(shared, self._token)}

    def _client_pin(self, params: dict[int, Any]) -> dict[int, Any] | None:
        proto = self._protocol(params.get(1))
        sub = params.get(2)
        s = self._state
        if sub == 0x01:
            return {3: s.pin_retries, 4: False}
        if sub == 0x02:
            n = self._ka_key.public_key().public_numbers()
            return {1: {1: 2, 3: -25, -1: 1, -2: int2bytes(n.x, 32), -3: int2bytes(n.y, 32)}}
        if sub == 0x07:
            return {5: s.uv_retries}
        if sub == 0x03:  # setPin
            if s.pin_hash is not None:
                raise _Fail(ERR.NOT_ALLOWED)
            shared = self._shared_secret(proto, params.get(3))
            self._check_mac(proto, shared, params[5], params.get(4))
            self._set_pin(proto, shared, params[5])
            return None
        if sub in (0x04, 0x05, 0x09):  # changePin, getPinToken, getPinUvAuthTokenUsingPinWithPermissions
            if s.pin_hash is None:
                raise _Fail(ERR.PIN_NOT_SET)
            shared = self._shared_secret(proto, params.get(3))
            if sub == 0x04:
                self._check_mac(proto, shared, params[5] + params[6], params.get(4))
            self._check_pin(proto, shared, params.get(6))
            if sub == 0x04:
                self._set_pin(proto, shared, params[5])
                return None
            if sub == 0x05:
                return self._issue_token(proto, shared, PERM_MC | PERM_GA, None)
            permissions = params.get(9)
            if not isinstance(permissions, int) or permissions == 0:
                raise _Fail(ERR.MISSING_PARAMETER)
            return self._issue_token(proto, shared, permissions, params.get(0x0A))
        if sub == 0x06:  # getPinUvAuthTokenUsingUvWithPermissions
            shared = self._shared_secret(proto, params.get(3))
            self._builtin_uv()
            permissions = params.get(9)
            if not isinstance(permissions, int) or permissions == 0:
                raise _Fail(ERR.MISSING_PARAMETER)
            return self._issue_token(proto, shared, permissions, params.get(0x0A), user_present=True)
        raise _Fail(ERR.INVALID_SUBCOMMAND)

    def _check_pin(self, proto: PinProtocolV1, shared: bytes, pin_hash_enc: Any) -> None:
        s = self._state
        if s.pin_retries == 0:
            raise _Fail(ERR.PIN_BLOCKED)
        if self._pin_fails_this_power_up >= PIN_TRIES_PER_POWER_UP:
            raise _Fail(ERR.PIN_AUTH_BLOCKED)
        if not isinstance(pin_hash_enc, bytes):
            raise _Fail(ERR.MISSING_PARAMETER)
        # Counted before the comparison and saved, as hardware does, so that pulling the
        # key out mid-check never gives a free guess.
        s.pin_retries -= 1
        self._save()
        try:
            given = proto.decrypt(shared, pin_hash_enc)
        except ValueError:
            given = b""
        assert s.pin_hash is not None  # noqa: S101 - checked by the caller
        if not hmac.compare_digest(given, s.pin_hash):
            self._ka_key = ec.generate_private_key(ec.SECP256R1())
            self._pin_fails_this_power_up += 1
            if s.pin_retries == 0:
                raise _Fail(ERR.PIN_BLOCKED)
            if self._pin_fails_this_power_up >= PIN_TRIES_PER_POWER_UP:
                raise _Fail(ERR.PIN_AUTH_BLOCKED)
            raise _Fail(ERR.PIN_INVALID)
        s.pin_retries = PIN_RETRIES
        s.uv_retries = UV_RETRIES  # a right PIN unblocks the sensor too (CTAP 2.1)
        self._pin_fails_this_power_up = 0
        self._save()

    def _set_pin(self, proto: PinProtocolV1, shared: bytes, new_pin_enc: bytes) -> None:
        padded = proto.decrypt(shared, new_pin_enc)
        if len(padded) < 64:
            raise _Fail(ERR.PIN_POLICY_VIOLATION)
        pin = padded.rstrip(b"\x00")
        try:
            if len(pin.decode("utf-8")) < 4 or len(pin) > 63:
                raise _Fail(ERR.PIN_POLICY_VIOLATION)
        except UnicodeDecodeError:
            raise _Fail(ERR.PIN_POLICY_VIOLATION) from None
        self._state.pin_hash = hashlib.sha256(pin).digest()[:16]
        self._state.pin_retries = PIN_RETRIES
        self._save()

    # --- makeCredential -----------------------------------------------------------------

    def _uv_required(self) -> bool:
        return self._state.always_uv

    def _resolve_uv(self, params: dict[int, Any], options: dict[str, Any], cdh: bytes, permission: int,
                    rp_id: str, mac_key: int, proto_key: int) -> tuple[bool, bool]:
        """(user verified, user present already) for a makeCredential or getAssertion."""
        if self._verify_token(params, cdh, permission, rp_id, mac_key, proto_key):
            present, self._token_up = self._token_up, False
            return True, present
        if options.get("uv"):
            self._builtin_uv()
            return True, True
        return False, False

    def _make_credential(self, params: dict[int, Any]) -> dict[int, Any]:
        cdh, rp, user, algs = params[1], params[2], params[3], params[4]
        if not isinstance(cdh, bytes) or not isinstance(rp, dict) or not isinstance(user, dict):
            raise _Fail(ERR.CBOR_UNEXPECTED_TYPE)
        if not any(isinstance(a, dict) and a.get("alg") == -7 for a in algs):
            raise _Fail(ERR.UNSUPPORTED_ALGORITHM)
        rp_id = rp["id"]
        options = params.get(7) or {}
        if options.get("up") is False:
            raise _Fail(ERR.INVALID_OPTION)
        uv, present = self._resolve_uv(params, options, cdh, PERM_MC, rp_id, 8, 9)
        if not uv and (self._state.pin_hash is not None or self._uv_required()):
            raise _Fail(ERR.PUAT_REQUIRED)
        excluded = {c["id"] for c in params.get(5) or [] if isinstance(c, dict)}
        if not present:
            self._user_presence()
        if any(c.id in excluded and c.rp_id == rp_id for c in self._state.credentials):
            raise _Fail(ERR.CREDENTIAL_EXCLUDED)
        key, der = _new_p256()
        wants_hmac = (params.get(6) or {}).get("hmac-secret") is True
        cred = _Credential(id=os.urandom(32), rp_id=rp_id, user=dict(user), private=der,
                           cred_random_uv=os.urandom(32), cred_random=os.urandom(32),
                           discoverable=bool(options.get("rk")))
        if cred.discoverable:  # one discoverable credential per rp and user handle
            self._state.credentials = [c for c in self._state.credentials
                                       if not (c.discoverable and c.rp_id == rp_id and c.user.get("id") == user["id"])]
        self._state.credentials.append(cred)
        self._save()
        flags = AuthenticatorData.FLAG.UP | AuthenticatorData.FLAG.AT
        if uv:
            flags |= AuthenticatorData.FLAG.UV
        extensions = {"hmac-secret": True} if wants_hmac else None
        if extensions:
            flags |= AuthenticatorData.FLAG.ED
        credential_data = AttestedCredentialData.create(self._state.aaguid, cred.id,
                                                        ES256.from_cryptography_key(key.public_key()))
        auth_data = AuthenticatorData.create(hashlib.sha256(rp_id.encode()).digest(), flags, 0, credential_data,
                                             extensions)
        att_key = _load_p256(self._state.attestation_key)
        signature = att_key.sign(auth_data + cdh, ec.ECDSA(hashes.SHA256()))
        return {1: "packed", 2: bytes(auth_data),
                3: {"alg": -7, "sig": signature, "x5c": [self._state.attestation_chain[0]]}}

    # --- getAssertion ---------------------------------------------------------------------

    def _get_assertion(self, params: dict[int, Any]) -> dict[int, Any]:
        rp_id, cdh = params[1], params[2]
        if not isinstance(rp_id, str) or not isinstance(cdh, bytes):
            raise _Fail(ERR.CBOR_UNEXPECTED_TYPE)
        options = params.get(5) or {}
        if "rk" in options:
            raise _Fail(ERR.INVALID_OPTION)
        up = options.get("up", True)
        allow = params.get(3)
        if allow:
            ids = {c.get("id") for c in allow if isinstance(c, dict)}
            found = [c for c in self._state.credentials if c.id in ids and c.rp_id == rp_id]
        else:
            found = [c for c in self._state.credentials if c.discoverable and c.rp_id == rp_id]
        if not up and not options.get("uv") and 6 not in params:
            # A silent pre-flight: does this key hold the credential? No secret comes back.
            if not found:
                raise _Fail(ERR.NO_CREDENTIALS)
            return self._assertion(found[0], rp_id, cdh, uv=False, up=False, extensions=None,
                                   with_user=not allow, count=len(found) if not allow else None)
        uv, present = self._resolve_uv(params, options, cdh, PERM_GA, rp_id, 6, 7)
        if not uv and self._uv_required():
            raise _Fail(ERR.PUAT_REQUIRED)
        if up and not present:
            self._user_presence()
        if not found:
            raise _Fail(ERR.NO_CREDENTIALS)
        request = (params.get(4) or {}).get("hmac-secret")
        responses = [self._assertion(c, rp_id, cdh, uv=uv, up=up, extensions=request, with_user=not allow,
                                     count=None) for c in found]
        if len(responses) > 1 and not allow:
            responses[0][5] = len(responses)
        self._pending_assertions = responses[1:] if not allow else []
        return responses[0]

    def _get_next_assertion(self, params: dict[int, Any]) -> dict[int, Any]:
        if not self._pending_assertions:
            raise _Fail(ERR.NOT_ALLOWED)
        return self._pending_assertions.pop(0)

    def _hmac_secret(self, cred: _Credential, request: Any, uv: bool) -> bytes:
        if not isinstance(request, dict):
            raise _Fail(ERR.INVALID_PARAMETER)
        proto = self._protocol(request.get(4, 1))
        shared = self._shared_secret(proto, request.get(1))
        salt_enc = request.get(2)
        if not isinstance(salt_enc, bytes):
            raise _Fail(ERR.MISSING_PARAMETER)
        self._check_mac(proto, shared, salt_enc, request.get(3))
        salts = proto.decrypt(shared, salt_enc)
        if len(salts) not in (32, 64):
            raise _Fail(ERR.INVALID_LENGTH)
        secret = cred.cred_random_uv if uv else cred.cred_random
        output = b"".join(hmac.new(secret, salts[i:i + 32], hashlib.sha256).digest() for i in range(0, len(salts), 32))
        return proto.encrypt(shared, output)

    def _assertion(self, cred: _Credential, rp_id: str, cdh: bytes, *, uv: bool, up: bool, extensions: Any,
                   with_user: bool, count: int | None) -> dict[int, Any]:
        flags = AuthenticatorData.FLAG(0)
        if up:
            flags |= AuthenticatorData.FLAG.UP
        if uv:
            flags |= AuthenticatorData.FLAG.UV
        ext = None
        if extensions is not None and up:  # no secret ever leaves without a touch
            ext = {"hmac-secret": self._hmac_secret(cred, extensions, uv)}
            flags |= AuthenticatorData.FLAG.ED
        auth_data = AuthenticatorData.create(hashlib.sha256(rp_id.encode()).digest(), flags, 0, b"", ext)
        signature = _load_p256(cred.private).sign(auth_data + cdh, ec.ECDSA(hashes.SHA256()))
        response: dict[int, Any] = {1: {"type": "public-key", "id": cred.id}, 2: bytes(auth_data), 3: signature}
        if with_user:
            response[4] = {"id": cred.user["id"]} if not uv else dict(cred.user)
        if count:
            response[5] = count
        return response

    # --- reset ----------------------------------------------------------------------------

    def _reset(self, params: dict[int, Any]) -> None:
        self._user_presence()
        s = self._state
        s.credentials, s.pin_hash, s.pin_retries, s.uv_retries = [], None, PIN_RETRIES, UV_RETRIES
        self._save()
        self._power_up()
