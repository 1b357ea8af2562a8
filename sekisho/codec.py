"""Deterministic CBOR (RFC 8949, CTAP2 canonical ordering) for binary records.

Rows, slots and sealed grants are binary-heavy; CBOR keeps them compact (no base64
inside) and readable by any CBOR library. Maps have text keys; there is no null:
an absent value is an absent key. Only data whose tag has been checked is decoded.
"""

from __future__ import annotations

from typing import Any

from fido2 import cbor

from sekisho.errors import FormatError


def encode(obj: dict[str, Any]) -> bytes:
    return cbor.encode(obj)


def decode(data: bytes, *, what: str) -> dict[str, Any]:
    try:
        obj = cbor.decode(data)
    except Exception:  # the decoder raises several types for malformed input
        raise FormatError(f"{what}: malformed record") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise FormatError(f"{what}: expected a map with text keys")
    return obj


class Fields:
    """Typed access to a decoded map, naming the record and field in every error."""

    def __init__(self, obj: dict[str, Any], what: str) -> None:
        self.obj = obj
        self.what = what

    def _get(self, key: str, types: tuple[type, ...], *, required: bool = True) -> Any:
        if key not in self.obj:
            if required:
                raise FormatError(f"{self.what}: field {key!r} is missing")
            return None
        value = self.obj[key]
        # bool is an int subclass: keep them apart.
        if type(value) not in types:
            raise FormatError(f"{self.what}: field {key!r} has the wrong type")
        return value

    def blob(self, key: str, *, length: int | None = None, required: bool = True) -> Any:
        value = self._get(key, (bytes,), required=required)
        if value is not None and length is not None and len(value) != length:
            raise FormatError(f"{self.what}: field {key!r} has the wrong length")
        return value

    def text(self, key: str) -> Any:
        return self._get(key, (str,))

    def integer(self, key: str) -> Any:
        return self._get(key, (int,))

    def flag(self, key: str) -> Any:
        return self._get(key, (bool,))

    def mapping(self, key: str) -> Any:
        value = self._get(key, (dict,))
        if not all(isinstance(k, str) for k in value):
            raise FormatError(f"{self.what}: field {key!r} must have text keys")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self._get(key, (list,))
        if not all(type(v) is str for v in value):
            raise FormatError(f"{self.what}: field {key!r} must be a list of text")
        return tuple(value)

    def items(self, key: str) -> list[Any]:
        value: list[Any] = self._get(key, (list,))
        return value
