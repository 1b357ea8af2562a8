"""Smart cards: one connection interface (APDU in, data and status word out).

Factors take a :class:`SmartCardConnection`; :func:`pcsc_cards` gives the cards in the
PC/SC readers through pyscard, which is imported only here and only when used (the
``smartcard`` extra): without it, a clear error says what to install.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator

from sekisho.errors import DeviceError

log = logging.getLogger(__name__)

SW_OK = 0x9000
#: The PIV application (NIST SP 800-73-4).
PIV_AID = bytes.fromhex("A000000308")
#: The My Number card's user-authentication application (JPKI) and its files.
JPKI_AP = bytes.fromhex("D392F000260100000001")
EF_PIN, EF_KEY, EF_CERT = b"\x00\x18", b"\x00\x17", b"\x00\x0a"


class ApduError(DeviceError):
    """The card answered with a status word other than 9000."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(f"{message} (status {status:04X})", status=status)


class CardRemoved(DeviceError):
    """The card was taken out (or the reader went away) during the operation."""

    advice = "Insert the card again and keep it in the reader until you are logged on."


class SmartCardConnection(ABC):
    """A connection to one card."""

    #: The reader's name, for messages.
    reader: str = "card reader"

    @abstractmethod
    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        """Send one command APDU; the response data and the status word."""

    def close(self) -> None:  # noqa: B027 - most connections have nothing to release
        """Release the card."""


def command(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> bytes:
    """A short command APDU (data ≤ 255 bytes; use :func:`send` for chaining)."""
    if len(data) > 255:
        raise ValueError("data longer than 255 bytes: use command chaining")
    apdu = bytes([cla, ins, p1, p2])
    if data:
        apdu += bytes([len(data)]) + data
    if le is not None:
        apdu += bytes([le & 0xFF])
    return apdu


def send(connection: SmartCardConnection, cla: int, ins: int, p1: int, p2: int, data: bytes = b"",
         *, le: int | None = 0) -> tuple[bytes, int]:
    """Send with command chaining (data over 255 bytes) and collect 61xx responses."""
    try:
        chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            response, sw = connection.transmit(command(cla | (0 if last else 0x10), ins, p1, p2, chunk,
                                                       le if last else None))
            if not last and sw != SW_OK:
                return response, sw
        while sw >> 8 == 0x61:  # more data: GET RESPONSE
            more, sw = connection.transmit(command(0x00, 0xC0, 0x00, 0x00, le=sw & 0xFF))
            response += more
        return response, sw
    except CardRemoved:
        raise
    except (OSError, EOFError) as exc:
        raise CardRemoved(f"The card stopped answering ({type(exc).__name__}): was it removed?") from None


def check(response: tuple[bytes, int], what: str) -> bytes:
    data, sw = response
    if sw != SW_OK:
        raise ApduError(f"The card refused {what}", status=sw)
    return data


def tlv(tag: bytes, value: bytes) -> bytes:
    n = len(value)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82]) + n.to_bytes(2, "big")
    return tag + length + value


def parse_tlv(data: bytes) -> dict[int, bytes]:
    """One level of single-byte-tag BER-TLV."""
    out, i = {}, 0
    while i < len(data):
        tag = data[i]
        n = data[i + 1]
        i += 2
        if n == 0x81:
            n, i = data[i], i + 1
        elif n == 0x82:
            n, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        out[tag] = data[i : i + n]
        i += n
    return out


# --- PC/SC through pyscard ------------------------------------------------------------------------


class PcscConnection(SmartCardConnection):
    def __init__(self, reader: object, connection: object) -> None:
        self.reader = str(reader)
        self._connection = connection

    def __repr__(self) -> str:
        return f"<PcscConnection {self.reader}>"

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        from smartcard.Exceptions import CardConnectionException

        try:
            data, sw1, sw2 = self._connection.transmit(list(apdu))  # type: ignore[attr-defined]
        except CardConnectionException as exc:
            raise CardRemoved(f"The card in {self.reader} stopped answering: was it removed?") from exc
        return bytes(data), (sw1 << 8) | sw2

    def close(self) -> None:
        # release(): disconnect and free the PC/SC context now, not whenever the garbage
        # collector runs (by then the service may be gone). Already gone: nothing to free.
        with contextlib.suppress(Exception):
            getattr(self._connection, "release", self._connection.disconnect)()  # type: ignore[attr-defined,misc]


def pcsc_cards() -> Iterator[PcscConnection]:
    """A connection to the card in each PC/SC reader that has one."""
    try:
        from smartcard.Exceptions import CardConnectionException, NoCardException
        from smartcard.System import readers
    except ImportError:
        raise DeviceError("Smart card support is not installed.",
                          advice="Install Sekisho with the smartcard extra: pip install 'sekisho[smartcard]'.") \
            from None
    try:
        found = readers()
    except Exception as exc:
        raise DeviceError(f"The PC/SC service is not available ({exc}).",
                          advice="Check that pcscd (Windows: Smart Card service) is running.") from None
    from smartcard.scard import SCARD_LEAVE_CARD

    for reader in found:
        connection = reader.createConnection()
        try:
            # Leave the card powered when we let go: another program's session on it survives.
            connection.connect(disposition=SCARD_LEAVE_CARD)
        except (NoCardException, CardConnectionException):
            continue
        yield PcscConnection(reader, connection)
