"""Virtual smart cards behind pcscd's vpcd driver, for tests and the demo.

Each card is a process that connects to the vpcd reader's TCP port (35963 for reader
``Virtual PCD 00 00``, 35964 for ``00 01``), as a card is inserted into a reader, and
answers: 2-byte big-endian length + payload both ways; a 1-byte payload from the reader is
a control code (00 power off, 01 power on, 02 reset, 04 get ATR), anything longer a
command APDU, answered with data + SW1 SW2. Closing the socket removes the card.

    python -m sekisho.devices.vcard piv STATE.json [--port 35963]
    python -m sekisho.devices.vcard jpki STATE.json [--port 35964]
    python -m sekisho.devices.vcard fido2 SOFTKEY.json [--port 35963]

The card files hold private keys in the clear: they are test devices, like the software
FIDO2 key, and the policy's ``allow_software`` does not make them hardware.
"""

from __future__ import annotations

import argparse
import logging
import socket
import struct
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

log = logging.getLogger(__name__)

VPCD_PORT = 35963


def sw(code: int) -> bytes:
    return bytes([code >> 8, code & 0xFF])


class VirtualCard(ABC):
    atr: bytes = bytes.fromhex("3B8880010000000000000000")

    @abstractmethod
    def process(self, apdu: bytes) -> bytes:
        """One command APDU in, the response (data + status word) out."""

    def reset(self) -> None:  # noqa: B027 - a card without security state has nothing to forget
        """Power cycle: security state is lost."""


class PinCounter:
    """A card PIN with its retry counter (3 tries, then blocked), as real cards keep it."""

    pin: str
    tries: int
    _verified: bool

    def save(self) -> None:
        raise NotImplementedError

    def verify_pin(self, given: str | None, tries: int = 3) -> bytes:
        """VERIFY: None asks for the state (9000 or 63Cx); a PIN is checked and counted."""
        if self.tries == 0:
            return sw(0x6983)
        if given is None:
            return sw(0x9000) if self._verified else sw(0x63C0 | self.tries)
        if given != self.pin:
            self.tries -= 1
            self._verified = False
            self.save()
            return sw(0x6983) if self.tries == 0 else sw(0x63C0 | self.tries)
        self.tries, self._verified = tries, True
        self.save()
        return sw(0x9000)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def serve(card: VirtualCard, port: int = VPCD_PORT, host: str = "127.0.0.1") -> None:
    """Be the card in the vpcd reader until the connection closes."""
    for _ in range(100):
        try:
            sock = socket.create_connection((host, port))
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise SystemExit(f"vpcd is not listening on {host}:{port} (is pcscd running with vpcd?)")
    with sock:
        while True:
            try:
                (length,) = struct.unpack(">H", _read_exact(sock, 2))
                payload = _read_exact(sock, length)
            except EOFError:
                return
            if len(payload) == 1:
                if payload[0] == 0x04:
                    sock.sendall(struct.pack(">H", len(card.atr)) + card.atr)
                elif payload[0] in (0x00, 0x01, 0x02):
                    card.reset()
                continue
            try:
                response = card.process(payload)
            except Exception:  # a card never crashes the reader: it answers 6F00
                log.exception("virtual card error")
                response = sw(0x6F00)
            sock.sendall(struct.pack(">H", len(response)) + response)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A virtual smart card for pcscd's vpcd reader.")
    parser.add_argument("kind", choices=["piv", "jpki", "fido2"])
    parser.add_argument("state", type=Path)
    parser.add_argument("--port", type=int, default=VPCD_PORT)
    args = parser.parse_args(argv)
    card: VirtualCard
    if args.kind == "piv":
        from sekisho.devices.vpiv import VirtualPiv

        card = VirtualPiv.load(args.state)
    elif args.kind == "jpki":
        from sekisho.devices.vjpki import VirtualJpki

        card = VirtualJpki.load(args.state)
    else:
        from sekisho.devices.vfido2 import VirtualFido2Card

        card = VirtualFido2Card.load(args.state)
    serve(card, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
