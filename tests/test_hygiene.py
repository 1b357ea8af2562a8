"""Secrets never reach reprs, exception messages, logs or files other than the encrypted store."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sekisho.errors import AuthenticationFailed, SekishoError
from sekisho.factors.interaction import ScriptedInteraction
from sekisho.store.grants import Grant, issue_grant
from sekisho.unlock import unlock
from tests.conftest import PIN_TOTP_POLICY, SECRETS_USED, enrol_user, remember

T0 = 1_800_000_015.0


def test_reprs_logs_and_errors_carry_no_secret(store, it_key, caplog, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    u = enrol_user(store, "K10234", passphrase="hoshi ga mieru yoru 5")
    grant = Grant(device_id=store.device_id, user_id="K10234", serial=1, issued_at=0,
                  network={"password": "sim-apn-password-1"})
    remember("sim-apn-password-1")
    sealed, grant_key = issue_grant(grant, it_signing_key=it_key[0], user_public=u.record.identity_public)
    remember(grant_key)
    remember(it_key[0])
    store.put_grant(sealed)
    code = u.seed.code_at(T0)
    remember(code)
    interaction = ScriptedInteraction(passphrase=u.passphrase, code=code)
    unlocked = unlock(store, PIN_TOTP_POLICY, "K10234", interaction, clock=lambda: T0)
    opened = unlocked.open_grant(store, it_key[1])
    texts = [repr(x) for x in (u.record, store.get_user("K10234")[1], sealed, grant, opened, unlocked,
                               interaction, u.seed, store)]
    errors: list[SekishoError] = []
    for passphrase, c in [(u.passphrase, code), ("wrong passphrase 1", u.seed.code_at(T0 + 30))]:
        remember(c)
        with pytest.raises(AuthenticationFailed) as info:
            unlock(store, PIN_TOTP_POLICY, "K10234", ScriptedInteraction(passphrase=passphrase, code=c),
                   clock=lambda: T0)
        errors.append(info.value)
    texts += [e.diagnostics() for e in errors] + [repr(e) for e in errors] + [caplog.text]
    for secret in SECRETS_USED:
        for encoding in (secret, secret.hex().encode()):
            if len(encoding) >= 6:
                assert not any(encoding.decode("latin-1") in t for t in texts)


def test_no_temporary_or_stray_files_beside_the_store(store, tmp_path: Path) -> None:
    enrol_user(store, "K10234")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert set(names) <= {"device.key", "store.db", "store.db-wal", "store.db-shm"}
