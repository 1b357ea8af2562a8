"""A virtual card shaped like the My Number card's user-authentication application (JPKI),
from its publicly documented commands, for tests and the demo.

SELECT FILE of the application by name (D3 92 F0 00 26 01 00 00 00 01) and of its
elementary files by id (0018 the PIN, 0017 the key, 000A the certificate), VERIFY (a
4-digit PIN, 3 tries), READ BINARY (the certificate), COMPUTE DIGITAL SIGNATURE (80 2A 00
80: RSA 2048 PKCS#1 v1.5 over a DigestInfo). ``nondeterministic`` makes a broken card
that signs the same input differently each time (Sekisho must refuse it).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sekisho.devices.card import EF_CERT, EF_KEY, EF_PIN, JPKI_AP
from sekisho.devices.vcard import PinCounter, VirtualCard, sw
from sekisho.devices.vpiv import _certificate, _pkcs8
from sekisho.files import atomic_write

PIN_TRIES = 3


@dataclass
class VirtualJpki(PinCounter, VirtualCard):
    path: Path
    pin: str
    tries: int
    key: str  # PKCS#8, base64
    cert: str  # DER, base64
    nondeterministic: bool = False
    atr: bytes = bytes.fromhex("3BE0008131FE45")
    _ap: bool = field(default=False, repr=False)
    _ef: bytes = field(default=b"", repr=False)
    _verified: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, path: Path, *, pin: str = "1234", nondeterministic: bool = False) -> VirtualJpki:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        card = cls(path=Path(path), pin=pin, tries=PIN_TRIES, key=_pkcs8(key),
                   cert=base64.b64encode(_certificate(key, "JPKI user authentication (virtual)")).decode(),
                   nondeterministic=nondeterministic)
        card.save()
        return card

    @classmethod
    def load(cls, path: Path) -> VirtualJpki:
        obj = json.loads(Path(path).read_text())
        return cls(path=Path(path), pin=obj["pin"], tries=obj["tries"], key=obj["key"], cert=obj["cert"],
                   nondeterministic=obj.get("nondeterministic", False))

    def save(self) -> None:
        atomic_write(self.path, json.dumps({"pin": self.pin, "tries": self.tries, "key": self.key, "cert": self.cert,
                                            "nondeterministic": self.nondeterministic}).encode(), mode=0o600)

    def reset(self) -> None:
        self._ap, self._ef, self._verified = False, b"", False

    def process(self, apdu: bytes) -> bytes:
        cla, ins, p1, p2 = apdu[:4]
        lc = apdu[4] if len(apdu) > 5 else 0
        data = apdu[5 : 5 + lc]
        if ins == 0xA4:
            if p1 == 0x04:
                self._ap = data == JPKI_AP
                self._ef, self._verified = b"", False
                return sw(0x9000) if self._ap else sw(0x6A82)
            if p1 == 0x02 and self._ap and data in (EF_PIN, EF_KEY, EF_CERT):
                self._ef = data
                return sw(0x9000)
            return sw(0x6A82)
        if not self._ap:
            return sw(0x6985)
        if ins == 0x20 and self._ef == EF_PIN:
            return self._verify(data)
        if ins == 0xB0 and self._ef == EF_CERT:
            cert = base64.b64decode(self.cert)
            offset = (p1 << 8) | p2
            le = apdu[4] if len(apdu) == 5 else 256
            chunk = cert[offset : offset + (le or 256)]
            return chunk + sw(0x9000) if chunk else sw(0x6B00)
        if cla == 0x80 and ins == 0x2A and self._ef == EF_KEY:
            if not self._verified:
                return sw(0x6982)
            return self._sign(data)
        return sw(0x6D00)

    def _verify(self, data: bytes) -> bytes:
        return self.verify_pin(data.decode("ascii", "replace") if data else None, PIN_TRIES)

    def _sign(self, digest_info: bytes) -> bytes:
        key = serialization.load_der_private_key(base64.b64decode(self.key), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)  # noqa: S101 - our own file
        numbers = key.private_numbers()
        n = numbers.public_numbers.n
        if self.nondeterministic:  # a faulty card: random padding bytes instead of 0xFF
            padding = bytes(b or 1 for b in os.urandom(256 - 3 - len(digest_info)))
        else:
            padding = b"\xff" * (256 - 3 - len(digest_info))
        block = b"\x00\x01" + padding + b"\x00" + digest_info
        signature = pow(int.from_bytes(block, "big"), numbers.d, n).to_bytes(256, "big")
        return signature + sw(0x9000)
