"""Smart cards through a real pcscd: virtual PIV, JPKI-like and FIDO2 cards, each its own
process behind the vpcd reader (as a card in a reader), read with pyscard."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("smartcard", reason="pyscard is not installed (the dev extra installs it)")

from sekisho import crypto
from sekisho.devices.card import CardRemoved, pcsc_cards
from sekisho.devices.softkey import SoftKey
from sekisho.devices.vjpki import VirtualJpki
from sekisho.devices.vpiv import VirtualPiv
from sekisho.errors import DeviceError, FactorError, KeyNotFound, KeyPinBlocked, KeyPinInvalid
from sekisho.factors import cardsig, fido2, piv
from sekisho.factors.interaction import Prompt, ScriptedInteraction
from sekisho.policy import Policy
from sekisho.store.records import SlotKind, UserRecord
from sekisho.unlock import unlock
from tests.conftest import FAST_ARGON2, remember

ROOT = Path(__file__).resolve().parent.parent
POLICY = Policy(permitted_slot_kinds=(SlotKind.PIV, SlotKind.CARD_SIG, SlotKind.FIDO2_UV), argon2=FAST_ARGON2,
                allow_software_authenticators=True)
READER_0, READER_1 = 35963, 35964
remember("123456")
remember("1234")


@pytest.fixture(scope="session")
def pcscd() -> Iterator[None]:
    if not Path("/usr/sbin/pcscd").exists() or not Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so").exists():
        pytest.skip("pcscd with the vpcd driver is not installed (make test installs it as root)")
    running = subprocess.run(["pgrep", "-x", "pcscd"], capture_output=True).returncode == 0
    proc = None
    if not running:
        if os.geteuid() != 0:
            pytest.skip("pcscd must be started as root")
        proc = subprocess.Popen(["/usr/sbin/pcscd", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
    yield
    gc.collect()  # release every card connection while pcscd can still answer
    if proc is not None:
        proc.terminate()
        proc.wait(10)


class Inserted:
    """A virtual card process in a vpcd reader; waits until pcscd sees it come and go."""

    def __init__(self, kind: str, state: Path, port: int) -> None:
        self.reader = "Virtual PCD 00 00" if port == READER_0 else "Virtual PCD 00 01"
        self.proc = subprocess.Popen([sys.executable, "-m", "sekisho.devices.vcard", kind, str(state), "--port",
                                      str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not self._wait(present=True):
            raise RuntimeError(f"the virtual {kind} card did not appear in {self.reader}")

    def _wait(self, *, present: bool) -> bool:
        for _ in range(200):
            if any(c.reader.startswith(self.reader) for c in _cards()) == present:
                return True
            time.sleep(0.05)
        return False

    def remove(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._wait(present=False)


def _cards() -> list:
    cards = list(pcsc_cards())
    for c in cards:
        c.close()
    return cards


@pytest.fixture
def insert(pcscd) -> Iterator:  # type: ignore[no-untyped-def]
    inserted: list[Inserted] = []

    def put(kind: str, state: Path, port: int = READER_0) -> Inserted:
        card = Inserted(kind, state, port)
        inserted.append(card)
        return card

    yield put
    gc.collect()  # this test's connections go before its cards do
    for card in inserted:
        if card.proc.poll() is None:
            card.remove()


def piv_user(store, tmp_path: Path, insert, name: str = "a", pin: str = "123456"):  # type: ignore[no-untyped-def]
    card = VirtualPiv.create(tmp_path / f"piv-{name}.json", pin=pin)
    handle = insert("piv", card.path)
    private, public = crypto.x25519_generate()
    (connection,) = list(pcsc_cards())
    slot = piv.enrol(connection, user_id="K10234", slot_id=1, identity_private=private,
                     interaction=ScriptedInteraction(pin=pin))
    connection.close()
    store.put_user(UserRecord(user_id="K10234", display_name="佐藤 美咲", identity_public=public), [slot],
                   replace=True)
    return card, handle, private


def test_piv_slot_opens_with_the_card_and_its_pin(store, tmp_path: Path, insert) -> None:
    _, _, private = piv_user(store, tmp_path, insert)
    unlocked = unlock(store, POLICY, "K10234", ScriptedInteraction(pin="123456"), cards=pcsc_cards)
    assert unlocked.slot_kind is SlotKind.PIV and bytes(unlocked.identity_private) == bytes(private)
    assert unlocked.factors[0].value == "knowledge"


def test_piv_wrong_pins_then_blocked(store, tmp_path: Path, insert) -> None:
    card, _, _ = piv_user(store, tmp_path, insert)
    with pytest.raises(KeyPinInvalid) as info:
        unlock(store, POLICY, "K10234", ScriptedInteraction(pin="000000"), cards=pcsc_cards)
    assert info.value.attempts_remaining == 2
    with pytest.raises(KeyPinInvalid):
        unlock(store, POLICY, "K10234", ScriptedInteraction(pin="000000"), cards=pcsc_cards)
    with pytest.raises(KeyPinBlocked):
        unlock(store, POLICY, "K10234", ScriptedInteraction(pin="000000"), cards=pcsc_cards)
    with pytest.raises(KeyPinBlocked):  # the right PIN no longer helps: the card counted
        unlock(store, POLICY, "K10234", ScriptedInteraction(pin="123456"), cards=pcsc_cards)
    assert VirtualPiv.load(card.path).tries == 0


def test_another_card_is_not_found(store, tmp_path: Path, insert) -> None:
    _, handle, _ = piv_user(store, tmp_path, insert)
    handle.remove()
    other = VirtualPiv.create(tmp_path / "other.json")
    insert("piv", other.path, READER_1)
    with pytest.raises(KeyNotFound, match="registered for this staff id"):
        unlock(store, POLICY, "K10234", ScriptedInteraction(pin="123456"), cards=pcsc_cards)


def test_a_card_removed_mid_logon(store, tmp_path: Path, insert) -> None:
    _, handle, _ = piv_user(store, tmp_path, insert)

    class PullsTheCard(ScriptedInteraction):
        def request_pin(self, prompt: Prompt) -> str:
            handle.remove()  # the worker takes the card out while typing the PIN
            return "123456"

    with pytest.raises(CardRemoved) as info:
        unlock(store, POLICY, "K10234", PullsTheCard(), cards=pcsc_cards)
    assert "Insert the card again" in info.value.diagnostics()


def test_a_card_that_answers_garbage(store, tmp_path: Path, insert) -> None:
    card, handle, _ = piv_user(store, tmp_path, insert)
    handle.remove()
    card.garble = "ecdh"
    card.save()
    insert("piv", card.path)
    with pytest.raises(DeviceError, match=r"malformed|wrong length"):
        unlock(store, POLICY, "K10234", ScriptedInteraction(pin="123456"), cards=pcsc_cards)


def jpki_user(store, tmp_path: Path, insert, **options):  # type: ignore[no-untyped-def]
    card = VirtualJpki.create(tmp_path / "jpki.json", **options)
    insert("jpki", card.path, READER_1)
    private, public = crypto.x25519_generate()
    (connection,) = list(pcsc_cards())
    try:
        slot = cardsig.enrol(connection, card_type="jpki", user_id="K20581", slot_id=1, identity_private=private,
                             interaction=ScriptedInteraction(pin=["1234", "1234"]))
    finally:
        connection.close()
    store.put_user(UserRecord(user_id="K20581", display_name="髙橋 健一", identity_public=public), [slot])
    return private


def test_my_number_like_card_signature_slot(store, tmp_path: Path, insert) -> None:
    private = jpki_user(store, tmp_path, insert)
    unlocked = unlock(store, POLICY, "K20581", ScriptedInteraction(pin="1234"), cards=pcsc_cards)
    assert unlocked.slot_kind is SlotKind.CARD_SIG and bytes(unlocked.identity_private) == bytes(private)
    with pytest.raises(KeyPinInvalid) as info:
        unlock(store, POLICY, "K20581", ScriptedInteraction(pin="9999"), cards=pcsc_cards)
    assert info.value.attempts_remaining == 2


def test_a_card_whose_signatures_differ_is_refused(store, tmp_path: Path, insert) -> None:
    with pytest.raises(FactorError, match="signs the same input differently"):
        jpki_user(store, tmp_path, insert, nondeterministic=True)


def test_piv_rsa_key_as_a_signature_slot(store, tmp_path: Path, insert) -> None:
    card = VirtualPiv.create(tmp_path / "piv.json")
    insert("piv", card.path)
    private, public = crypto.x25519_generate()
    (connection,) = list(pcsc_cards())
    slot = cardsig.enrol(connection, card_type="piv", user_id="K1", slot_id=1, identity_private=private,
                         interaction=ScriptedInteraction(pin=["123456", "123456"]))
    connection.close()
    store.put_user(UserRecord(user_id="K1", display_name="x", identity_public=public), [slot])
    assert unlock(store, POLICY, "K1", ScriptedInteraction(pin="123456"), cards=pcsc_cards).slot_kind is \
        SlotKind.CARD_SIG


def test_fido2_over_an_nfc_reader(store, tmp_path: Path, insert) -> None:
    from fido2.pcsc import CtapPcscDevice

    key = SoftKey.create(tmp_path / "nfc-key.json", pin="654321")
    root = key.attestation_root()
    insert("fido2", key.path)
    (device,) = list(CtapPcscDevice.list_devices())
    private, public = crypto.x25519_generate()
    slot = fido2.enrol(device, kind=SlotKind.FIDO2_UV, user_id="K3", slot_id=1, identity_private=private,
                       interaction=ScriptedInteraction(pin=["654321"] * 2), trusted_roots=[root],
                       allow_software=True)
    device.close()
    store.put_user(UserRecord(user_id="K3", display_name="x", identity_public=public), [slot])
    # connected_keys() finds NFC keys through PC/SC as well as USB ones.
    unlocked = unlock(store, POLICY, "K3", ScriptedInteraction(pin="654321"))
    assert unlocked.slot_kind is SlotKind.FIDO2_UV and unlocked.uv_method == "pin"


@pytest.mark.parametrize(("garble", "message"), [
    ("truncated", "did not answer properly"),
    ("status", "status 6F00"),
])
def test_truncated_answers_and_unexpected_status_words(store, tmp_path: Path, insert, garble: str,
                                                       message: str) -> None:
    card, handle, _ = piv_user(store, tmp_path, insert)
    handle.remove()
    card.garble = garble
    card.save()
    insert("piv", card.path)
    with pytest.raises(DeviceError, match=message) as info:
        unlock(store, POLICY, "K10234", ScriptedInteraction(pin="123456"), cards=pcsc_cards)
    assert info.value.advice and "Traceback" not in info.value.diagnostics()


def test_no_card_in_any_reader(store, tmp_path: Path, insert) -> None:
    _, handle, _ = piv_user(store, tmp_path, insert)
    handle.remove()
    with pytest.raises(KeyNotFound) as info:
        unlock(store, POLICY, "K10234", ScriptedInteraction(pin="123456"), cards=pcsc_cards)
    assert "Insert your own IC card" in info.value.diagnostics()


def test_no_pcsc_service(monkeypatch) -> None:
    # The daemon itself cannot be taken away from the session's other tests: its absence is
    # what pyscard reports then (an exception listing readers), simulated here.
    import smartcard.System

    def no_service():  # type: ignore[no-untyped-def]
        raise smartcard.Exceptions.ListReadersException(0x8010001D)

    monkeypatch.setattr(smartcard.System, "readers", no_service)
    with pytest.raises(DeviceError, match="PC/SC service is not available") as info:
        list(pcsc_cards())
    assert "pcscd" in info.value.diagnostics()


def nfc_user(store, tmp_path: Path, insert, user: str = "K3"):  # type: ignore[no-untyped-def]
    from fido2.pcsc import CtapPcscDevice

    key = SoftKey.create(tmp_path / f"nfc-{user}.json", pin="654321")
    handle = insert("fido2", key.path)
    (device,) = list(CtapPcscDevice.list_devices())
    private, public = crypto.x25519_generate()
    slot = fido2.enrol(device, kind=SlotKind.FIDO2_UV, user_id=user, slot_id=1, identity_private=private,
                       interaction=ScriptedInteraction(pin=["654321"] * 2), trusted_roots=[key.attestation_root()],
                       allow_software=True)
    device.close()
    store.put_user(UserRecord(user_id=user, display_name="x", identity_public=public), [slot])
    return handle


def test_fido2_over_nfc_wrong_pin_and_another_users_key(store, tmp_path: Path, insert) -> None:
    from sekisho.errors import KeyPinInvalid as PinInvalid

    handle = nfc_user(store, tmp_path, insert, "K3")
    with pytest.raises(PinInvalid) as info:
        unlock(store, POLICY, "K3", ScriptedInteraction(pin="000000"))
    assert info.value.attempts_remaining == 7
    handle.remove()
    nfc_user(store, tmp_path, insert, "K4")  # another person's key on the reader
    with pytest.raises(KeyNotFound):
        unlock(store, POLICY, "K3", ScriptedInteraction(pin="654321"))


# --- the FIDO2 factor's own tests, over an NFC reader ----------------------------------------------


class NfcKey:
    """A software key inserted as a card: python-fido2's CtapPcscDevice to it, plus what the
    tests read off a key (its attestation root and AAGUID). ``close`` keeps the connection:
    the tests hold one device across logons (the service takes fresh ones each time)."""

    def __new__(cls, key: SoftKey, reader: str):  # type: ignore[no-untyped-def]
        from fido2.pcsc import CtapPcscDevice
        from smartcard.System import readers

        (found,) = [r for r in readers() if str(r).startswith(reader)]

        class _Device(CtapPcscDevice):
            def connect(self) -> None:  # leave the card powered when this object goes away
                from smartcard.scard import SCARD_LEAVE_CARD

                self._conn.connect(disposition=SCARD_LEAVE_CARD)
                self._select()

            def attestation_root(self) -> bytes:
                return key.attestation_root()

            @property
            def aaguid(self) -> bytes:
                return key.aaguid

            def close(self, release: bool = False) -> None:
                pass

        return _Device(found.createConnection(), str(found))


FIDO2_OVER_NFC = [
    "test_fido2_uv_with_the_key_pin",
    "test_pin_fido2_with_passphrase_and_key",
    "test_the_right_key_is_found_among_several",
    "test_the_no_uv_output_does_not_open_a_fido2_uv_slot",
    "test_random_outputs_and_another_credential_do_not_open",
    "test_another_users_key_is_not_found",
    "test_a_right_pin_resets_the_counter",
    "test_always_uv_key_cannot_hold_pin_fido2",
    "test_a_key_without_pin_or_sensor_cannot_hold_fido2_uv",
    "test_attestation_must_chain_to_a_trusted_root",
    "test_aaguid_allow_list",
    "test_software_key_refused_by_a_production_policy",
]


@pytest.mark.parametrize("name", FIDO2_OVER_NFC)
def test_fido2_factor_tests_over_an_nfc_reader(name: str, store, tmp_path: Path, insert, monkeypatch) -> None:
    import tests.test_fido2 as fido2_tests

    readers = iter([(READER_0, "Virtual PCD 00 00"), (READER_1, "Virtual PCD 00 01")])

    def new_key(directory: Path, name: str = "key", **options: object):  # type: ignore[no-untyped-def]
        key = SoftKey.create(directory / f"{name}.json", **options)  # type: ignore[arg-type]
        port, reader = next(readers)
        insert("fido2", key.path, port)
        return NfcKey(key, reader)

    monkeypatch.setattr(fido2_tests, "new_key", new_key)
    getattr(fido2_tests, name)(tmp_path, store)
