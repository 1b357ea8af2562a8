"""A virtual PIV card (NIST SP 800-73-4 subset) for tests and the demo.

SELECT, VERIFY (PIN, 3 tries, a counter that blocks at 0: 63Cx, 6983), GET DATA for the
certificates of slots 9D (key management, EC P-256) and 9A (authentication, RSA 2048),
GENERAL AUTHENTICATE for ECDH on 9D and RSA on 9A (6982 without a verified PIN), command
chaining and GET RESPONSE. State (keys in the clear!) is a JSON file written atomically.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from sekisho.devices.card import PIV_AID, parse_tlv, tlv
from sekisho.devices.vcard import PinCounter, VirtualCard, sw
from sekisho.files import atomic_write

PIN_TRIES = 3
OBJECTS = {bytes.fromhex("5FC10B"): "9d", bytes.fromhex("5FC105"): "9a"}


def _certificate(key: Any, name: str) -> bytes:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer = key
    algorithm = hashes.SHA256()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=3650)).sign(signer, algorithm))
    return cert.public_bytes(serialization.Encoding.DER)


def _pkcs8(key: Any) -> str:
    return base64.b64encode(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())).decode()


@dataclass
class VirtualPiv(PinCounter, VirtualCard):
    path: Path
    pin: str
    tries: int
    keys: dict[str, str]  # slot -> PKCS#8 (base64)
    certs: dict[str, str]  # slot -> DER (base64)
    #: A broken card for tests: "ecdh" answers garbage to key agreement, "truncated" cuts
    #: its certificate short, "status" answers VERIFY with an unexpected status word.
    garble: str = ""
    atr: bytes = bytes.fromhex("3BF81300008131FE15597562696B657934D4")
    _verified: bool = field(default=False, repr=False)
    _chain: bytes = field(default=b"", repr=False)
    _pending: bytes = field(default=b"", repr=False)

    @classmethod
    def create(cls, path: Path, *, pin: str = "123456", name: str = "Sekisho virtual PIV") -> VirtualPiv:
        ec_key = ec.generate_private_key(ec.SECP256R1())
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        card = cls(path=Path(path), pin=pin, tries=PIN_TRIES, keys={"9d": _pkcs8(ec_key), "9a": _pkcs8(rsa_key)},
                   certs={"9d": base64.b64encode(_certificate(ec_key, name)).decode(),
                          "9a": base64.b64encode(_certificate(rsa_key, name)).decode()})
        card.save()
        return card

    @classmethod
    def load(cls, path: Path) -> VirtualPiv:
        obj = json.loads(Path(path).read_text())
        return cls(path=Path(path), pin=obj["pin"], tries=obj["tries"], keys=obj["keys"], certs=obj["certs"],
                   garble=obj.get("garble", ""))

    def save(self) -> None:
        atomic_write(self.path, json.dumps({"pin": self.pin, "tries": self.tries, "keys": self.keys,
                                            "certs": self.certs, "garble": self.garble}).encode(), mode=0o600)

    def certificate(self, slot: str) -> x509.Certificate:
        return x509.load_der_x509_certificate(base64.b64decode(self.certs[slot]))

    def _key(self, slot: str) -> Any:
        return serialization.load_der_private_key(base64.b64decode(self.keys[slot]), password=None)

    def reset(self) -> None:
        self._verified, self._chain, self._pending = False, b"", b""

    def _respond(self, data: bytes) -> bytes:
        if len(data) > 256:  # the rest through GET RESPONSE
            self._pending = data[256:]
            return data[:256] + bytes([0x61, min(len(self._pending), 256) & 0xFF])
        return data + sw(0x9000)

    def process(self, apdu: bytes) -> bytes:
        cla, ins, p1, p2 = apdu[:4]
        data = apdu[5 : 5 + apdu[4]] if len(apdu) > 5 else b""
        if ins == 0xC0:  # GET RESPONSE
            pending, self._pending = self._pending, b""
            return self._respond(pending)
        if cla & 0x10:  # command chaining: keep the piece
            self._chain += data
            return sw(0x9000)
        data, self._chain = self._chain + data, b""
        if ins == 0xA4 and p1 == 0x04:
            if PIV_AID.startswith(data[:5]) or data.startswith(PIV_AID):
                return self._respond(tlv(b"\x61", tlv(b"\x4f", PIV_AID)))
            return sw(0x6A82)
        if ins == 0x20 and p2 == 0x80:
            return self._verify(data)
        if ins == 0xCB and p1 == 0x3F and p2 == 0xFF:
            tag = parse_tlv(data).get(0x5C, b"")
            slot = OBJECTS.get(tag)
            if slot is None:
                return sw(0x6A82)
            cert = base64.b64decode(self.certs[slot])
            if self.garble == "truncated":
                return self._respond(tlv(b"\x53", tlv(b"\x70", cert))[:40])
            return self._respond(tlv(b"\x53", tlv(b"\x70", cert) + tlv(b"\x71", b"\x00") + tlv(b"\xfe", b"")))
        if ins == 0x87:
            return self._authenticate(p1, p2, data)
        return sw(0x6D00)

    def _verify(self, data: bytes) -> bytes:
        if self.garble == "status":
            return sw(0x6F00)  # "no precise diagnosis"
        return self.verify_pin(data.rstrip(b"\xff").decode("ascii", "replace") if data else None, PIN_TRIES)

    def _authenticate(self, algorithm: int, slot: int, data: bytes) -> bytes:
        if not self._verified:
            return sw(0x6982)
        template = parse_tlv(parse_tlv(data).get(0x7C, b""))
        if algorithm == 0x11 and slot == 0x9D and 0x85 in template:
            try:
                peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), template[0x85])
            except ValueError:
                return sw(0x6A80)
            shared = self._key("9d").exchange(ec.ECDH(), peer)
            if self.garble == "ecdh":
                return self._respond(b"\x7c\x05\x82\x10" + os.urandom(3))
            return self._respond(tlv(b"\x7c", tlv(b"\x82", shared)))
        if algorithm == 0x07 and slot == 0x9A and 0x81 in template:
            key = self._key("9a")
            numbers = key.private_numbers()
            m = int.from_bytes(template[0x81], "big")
            if m >= numbers.public_numbers.n:
                return sw(0x6A80)
            signature = pow(m, numbers.d, numbers.public_numbers.n).to_bytes(256, "big")
            return self._respond(tlv(b"\x7c", tlv(b"\x82", signature)))
        return sw(0x6A80)
