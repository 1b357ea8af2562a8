"""Shared fixtures: a store on a plain key file, fast Argon2id, users with pin+totp slots."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from sekisho import crypto
from sekisho.crypto import Argon2Params
from sekisho.factors import pin_totp
from sekisho.factors.totp import TotpSeed
from sekisho.policy import Policy
from sekisho.store.keysource import InsecureFileKeySource
from sekisho.store.records import SlotKind, UserRecord
from sekisho.store.store import CredentialStore
from tests.dbus_helpers import dbus_mocks, logind, logind_server, system_bus  # noqa: F401 - fixtures: a private system bus
from tests.gui_helpers import root, xvfb  # noqa: F401 - fixtures: an X server, a Tk window

# What a field worker reads is in English in the tests unless a test asks for Japanese.
os.environ["SEKISHO_LANG"] = "en"

#: Cheap Argon2id for tests only; the policy default is t=3, m=64 MiB, p=4.
FAST_ARGON2 = Argon2Params(time_cost=1, memory_kib=1024, parallelism=1)
PIN_TOTP_POLICY = Policy(permitted_slot_kinds=(SlotKind.PIN_TOTP,), argon2=FAST_ARGON2)

#: Every secret a test uses is registered here, so hygiene tests can scan for all of them.
SECRETS_USED: set[bytes] = set()


def remember(secret: bytes | str) -> None:
    SECRETS_USED.add(secret.encode() if isinstance(secret, str) else bytes(secret))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hardware", action="store_true", help="run tests that need a real key or card")
    parser.addoption("--reader", default="", help="the PC/SC reader holding the real card (with --hardware)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--hardware"):
        return
    skip = pytest.mark.skip(reason="needs --hardware")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


@dataclass
class EnrolledUser:
    record: UserRecord
    passphrase: str
    seed: TotpSeed
    identity_private: bytearray


@pytest.fixture
def key_source(tmp_path: Path) -> InsecureFileKeySource:
    return InsecureFileKeySource(tmp_path / "device.key")


@pytest.fixture
def store(tmp_path: Path, key_source: InsecureFileKeySource):
    s = CredentialStore.create(tmp_path / "store.db", key_source, device_id="laptop-0001")
    yield s
    s.close()


def enrol_user(
    store: CredentialStore,
    user_id: str,
    *,
    passphrase: str = "mizu no oto ga suru 3",
    name: str = "佐藤 美咲",
    kana: str = "サトウ ミサキ",
    department: str = "市民課",
    roles: tuple[str, ...] = ("madoguchi",),
) -> EnrolledUser:
    private, public = crypto.x25519_generate()
    seed = TotpSeed.generate()
    remember(passphrase)
    remember(seed.secret)
    remember(seed.base32)
    remember(private)
    slot = pin_totp.enrol(
        user_id=user_id, slot_id=1, identity_private=private, passphrase=passphrase, seed=seed, argon2=FAST_ARGON2
    )
    record = UserRecord(
        user_id=user_id, display_name=name, kana=kana, department=department, roles=roles, identity_public=public
    )
    store.put_user(record, [slot])
    return EnrolledUser(record=record, passphrase=passphrase, seed=seed, identity_private=private)


@pytest.fixture
def it_key() -> tuple[bytearray, bytes]:
    return crypto.ed25519_generate()


def tool_available(name: str) -> bool:
    return shutil.which(name) is not None
