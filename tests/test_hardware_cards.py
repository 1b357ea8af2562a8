"""Opt-in: a real PIV card (e.g. a YubiKey) in a named reader.

    pytest --hardware --reader "Yubico YubiKey" tests/test_hardware_cards.py

The card's PIN comes from SEKISHO_TEST_PIN; the card must have an EC P-256 key in 9D.
Nothing is written to the card: enrolment only reads its certificate and asks it for ECDH."""

from __future__ import annotations

import os

import pytest

from sekisho import crypto


@pytest.mark.hardware
def test_a_real_piv_card(request: pytest.FixtureRequest) -> None:
    pytest.importorskip("smartcard")
    from sekisho.devices.card import pcsc_cards
    from sekisho.factors import piv
    from sekisho.factors.interaction import ScriptedInteraction

    reader, pin = request.config.getoption("--reader"), os.environ.get("SEKISHO_TEST_PIN")
    if not reader or not pin:
        pytest.skip("needs --reader NAME and SEKISHO_TEST_PIN")
    cards = [c for c in pcsc_cards() if reader in c.reader]
    if not cards:
        pytest.fail(f"no card in a reader named like {reader!r}")
    private, _ = crypto.x25519_generate()
    slot = piv.enrol(cards[0], user_id="K1", slot_id=1, identity_private=private,
                     interaction=ScriptedInteraction(pin=pin))
    identity = piv.open_slot(slot=slot, user_id="K1", cards=[c for c in pcsc_cards() if reader in c.reader],
                             interaction=ScriptedInteraction(pin=pin))
    assert bytes(identity) == bytes(private)
