"""The control channel's wire format, version 1 (docs/agent.md).

Each message is a 4-byte big-endian length and that many bytes of UTF-8 JSON (one
object, at most :data:`MAX_MESSAGE` bytes). A client sends one request, e.g.
``{"v": 1, "op": "unlock", "user": "K10234"}``; the service answers with any number of
``prompt`` (the client replies ``{"type": "answer", "value": ...}`` or
``{"type": "cancel"}``), ``notice`` and ``progress`` messages, then exactly one
``result`` or ``error``, and closes the connection.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from sekisho.errors import FormatError

VERSION = 1
MAX_MESSAGE = 64 * 1024
OPERATIONS = ("unlock", "lock", "status", "recover", "extend", "key-ids", "apps")


class ChannelClosed(Exception):
    """The other side went away."""


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ChannelClosed
        data += chunk
    return bytes(data)


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise FormatError("message too large")
    sock.sendall(struct.pack(">I", len(data)) + data)


def receive(sock: socket.socket) -> dict[str, Any]:
    """One message; ``FormatError`` for an oversized or malformed one."""
    (length,) = struct.unpack(">I", _read_exact(sock, 4))
    if length > MAX_MESSAGE:
        raise FormatError(f"message of {length} bytes is larger than {MAX_MESSAGE}")
    raw = _read_exact(sock, length)
    try:
        message = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError("message is not UTF-8 JSON") from None
    if not isinstance(message, dict):
        raise FormatError("message is not a JSON object")
    return message


def check_request(message: dict[str, Any]) -> dict[str, Any]:
    if message.get("v") != VERSION:
        raise FormatError(f"protocol version {message.get('v')!r} is not {VERSION}")
    if message.get("op") not in OPERATIONS:
        raise FormatError(f"unknown operation {message.get('op')!r}")
    for name in ("user", "code"):
        if name in message and not isinstance(message[name], str):
            raise FormatError(f"{name} must be text")
    for flag in ("identify", "wait"):
        if flag in message and not isinstance(message[flag], bool):
            raise FormatError(f"{flag} must be true or false")
    if message["op"] == "apps":  # the session's launcher reports what it started or closed
        if message.get("event") not in ("started", "closed"):
            raise FormatError("apps: event must be 'started' or 'closed'")
        for name in ("closed", "killed"):
            value = message.get(name, 0)
            if type(value) is not int or not 0 <= value <= 1000:
                raise FormatError(f"apps: {name} must be a count")
        names = message.get("apps", [])
        if not isinstance(names, list) or len(names) > 100 or not all(isinstance(a, str) and len(a) <= 200
                                                                      for a in names):
            raise FormatError("apps: apps must be a list of names")
        if not isinstance(message.get("client", ""), str) or len(message.get("client", "")) > 200:
            raise FormatError("apps: client must be text")
    return message
