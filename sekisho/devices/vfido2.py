"""A FIDO2 security key as an ISO 7816 card (NFC): the software key behind the FIDO
applet, for tests and the demo.

SELECT of the FIDO AID (A0 00 00 06 47 2F 00 01) answers ``FIDO_2_0``; NFCCTAP_MSG
(80 10) carries a CTAP2 command, with command chaining for long ones, and the answer
comes back through GET RESPONSE (61xx) when longer than 256 bytes — what python-fido2's
``CtapPcscDevice`` sends to NFC readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fido2.hid import CTAPHID

from sekisho.devices.softkey import SoftKey
from sekisho.devices.vcard import VirtualCard, sw

FIDO_AID = bytes.fromhex("A0000006472F0001")


@dataclass
class VirtualFido2Card(VirtualCard):
    key: SoftKey
    atr: bytes = bytes.fromhex("3B8F8001804F0CA0000003060300030000000068")
    _selected: bool = field(default=False, repr=False)
    _chain: bytes = field(default=b"", repr=False)
    _pending: bytes = field(default=b"", repr=False)
    _answer: bytes | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: Path) -> VirtualFido2Card:
        return cls(key=SoftKey.load(path))

    def reset(self) -> None:
        self._selected, self._chain, self._pending = False, b"", b""
        self.key.power_cycle()

    def _respond(self, data: bytes) -> bytes:
        if len(data) > 256:
            self._pending = data[256:]
            return data[:256] + bytes([0x61, min(len(self._pending), 256) & 0xFF])
        return data + sw(0x9000)

    def process(self, apdu: bytes) -> bytes:
        cla, ins, p1 = apdu[0], apdu[1], apdu[2]
        data = apdu[5 : 5 + apdu[4]] if len(apdu) > 5 else b""
        if ins == 0xA4 and p1 == 0x04:
            self._selected = data == FIDO_AID
            return self._respond(b"FIDO_2_0") if self._selected else sw(0x6A82)
        if ins == 0xC0:
            pending, self._pending = self._pending, b""
            return self._respond(pending)
        if not self._selected:
            return sw(0x6985)
        if cla & 0x10:
            self._chain += data
            return sw(0x9000)
        data, self._chain = self._chain + data, b""
        if cla & 0x80 and ins == 0x10:  # NFCCTAP_MSG: a whole CTAP2 command
            waited: list[int] = []
            answer = self.key.call(CTAPHID.CBOR, data, on_keepalive=lambda status: waited.append(int(status)))
            if waited and p1 & 0x80:  # the client takes keep-alives: say the key waited for the person
                self._answer = answer
                return bytes([waited[0]]) + sw(0x9100)
            return self._respond(answer)
        if cla & 0x80 and ins == 0x11:  # NFCCTAP_GETRESPONSE: the answer after the keep-alive
            if self._answer is None:
                return sw(0x6985)
            answer, self._answer = self._answer, None
            return self._respond(answer)
        return sw(0x6D00)
