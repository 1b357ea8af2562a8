"""Where the device key lives: outside the store file, so a copy of the file alone is useless.

Three sources:

* :class:`KeyringKeySource` — the OS keyring (Windows Credential Manager for the
  LocalSystem service, Secret Service on a Linux desktop). Refuses keyring backends
  that store in plain text unless told they are acceptable (tests).
* :class:`RootFileKeySource` — a file only its owner can read, in a directory only
  its owner can write (the Linux service, running as root).
* :class:`InsecureFileKeySource` — a plain file for tests and the demo; it says so.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from sekisho.crypto import KEY_LEN
from sekisho.errors import InsecureKeySource, KeySourceError, KeySourceUnavailable
from sekisho.files import atomic_write

log = logging.getLogger(__name__)


class DeviceKeySource(ABC):
    """Holds one 256-bit device key. Never logs or shows it."""

    #: A human name for messages ("the keyring", "the file /var/lib/...").
    description: str = "key source"
    #: Whether a person should be warned that the key is not protected.
    insecure: bool = False

    @abstractmethod
    def load(self) -> bytearray | None:
        """The device key, or ``None`` if none has been created yet."""

    @abstractmethod
    def _store(self, key: bytes) -> None:
        """Persist a new device key durably."""

    def create(self) -> bytearray:
        """Create and persist a new device key; refuse if one already exists."""
        if self.load() is not None:
            raise KeySourceError(
                f"A device key already exists in {self.description}; refusing to replace it.",
                advice="A store made with the old key could no longer be opened.",
            )
        key = bytearray(os.urandom(KEY_LEN))
        self._store(bytes(key))
        return key

    def replace(self, key: bytes | bytearray) -> None:
        """Put ``key`` in place of the current one (IT key rotation; never the device key)."""
        if len(key) != KEY_LEN:
            raise KeySourceError("A key must be 32 bytes.")
        self._store(bytes(key))

    def require(self) -> bytearray:
        key = self.load()
        if key is None:
            raise KeySourceError(
                f"There is no device key in {self.description}.",
                advice="The store cannot be opened without it; check the configured key source.",
            )
        return key

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


def _decode_key(text: str, where: str) -> bytearray:
    try:
        raw = base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeySourceError(f"The device key in {where} is not valid base64.") from None
    if len(raw) != KEY_LEN:
        raise KeySourceError(f"The device key in {where} has the wrong length.")
    return bytearray(raw)


class KeyringKeySource(DeviceKeySource):
    SERVICE = "sekisho"

    def __init__(self, name: str, *, allow_insecure_backend: bool = False) -> None:
        self.name = name
        self.allow_insecure_backend = allow_insecure_backend
        self.description = f"the keyring (entry {self.SERVICE}/{name})"

    def _backend(self) -> Any:
        try:
            import keyring
            import keyring.backends.fail
        except ImportError:  # pragma: no cover - keyring is a dependency
            raise KeySourceUnavailable("The keyring package is not installed.") from None
        backend = keyring.get_keyring()
        if type(backend).__name__ == "ChainerBackend":
            # The chainer writes to its highest-priority backend: judge that one.
            chained = list(getattr(backend, "backends", []))
            backend = chained[0] if chained else keyring.backends.fail.Keyring()  # type: ignore[no-untyped-call]
        module = type(backend).__module__
        if isinstance(backend, keyring.backends.fail.Keyring) or module.startswith(
            "keyring.backends.null"
        ):
            raise KeySourceUnavailable(
                "No OS keyring is available to hold the device key.",
                advice="Start the desktop keyring (Secret Service), or configure a "
                "root-only key file for the service.",
            )
        if module.startswith("keyrings.alt") and not self.allow_insecure_backend:
            raise InsecureKeySource(
                f"The keyring backend {module} stores keys unprotected; refusing it "
                "for the device key.",
                advice="Use the OS keyring or a root-only key file.",
            )
        return backend

    def _call(self, doing: str, method: str, *args: str) -> Any:
        backend = self._backend()
        try:
            return getattr(backend, method)(self.SERVICE, self.name, *args)
        except Exception as exc:  # keyring backends raise their own trees
            raise KeySourceUnavailable(f"The keyring could not {doing} ({type(exc).__name__}).") from None

    def load(self) -> bytearray | None:
        value = self._call("be read", "get_password")
        return None if value is None else _decode_key(value, self.description)

    def _store(self, key: bytes) -> None:
        self._call("store the device key", "set_password", base64.b64encode(key).decode("ascii"))


class _FileKeySource(DeviceKeySource):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"the file {self.path}"

    def _check(self, st: os.stat_result) -> None:
        """Refuse a file whose permissions would let others read or replace it."""

    def load(self) -> bytearray | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeySourceUnavailable(
                f"Cannot read {self.description}: {exc.strerror}."
            ) from None
        try:
            self._check(os.fstat(fd))
            with os.fdopen(fd, "rb", closefd=False) as handle:
                text = handle.read(256)
        finally:
            os.close(fd)
        try:
            return _decode_key(text.decode("ascii"), self.description)
        except UnicodeDecodeError:
            raise KeySourceError(f"The device key in {self.description} is not valid.") from None

    def _store(self, key: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path, base64.b64encode(key) + b"\n", mode=0o600)


class RootFileKeySource(_FileKeySource):
    """A key file readable and writable by its owner only, in a directory others cannot write."""

    def _check(self, st: os.stat_result) -> None:
        owner_ok = st.st_uid in (0, os.geteuid())
        if not owner_ok or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InsecureKeySource(
                f"{self.description} can be read or changed by other users "
                f"(mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}).",
                advice="Make it owned by the service's account with mode 0600.",
            )
        parent = os.stat(self.path.parent)
        if parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise InsecureKeySource(
                f"The directory {self.path.parent} can be written by other users.",
                advice="Make it mode 0700, owned by the service's account.",
            )

    def _store(self, key: bytes) -> None:
        super()._store(key)
        self._check(os.stat(self.path))


class InsecureFileKeySource(_FileKeySource):
    """A plain key file, for tests and the demo only."""

    insecure = True

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.description = f"the plain file {self.path} (INSECURE: tests and demo only)"

    def load(self) -> bytearray | None:
        key = super().load()
        if key is not None:
            log.warning("device key read from %s", self.description)
        return key
