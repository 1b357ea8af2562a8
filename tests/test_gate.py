"""The gate, as scenarios on a provisioned laptop: software keys, a TOTP seed, an injected
clock and a simulated network (no modem runs here)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.gate import GateBusy, GateState, reenrolment_due
from agent.limits import Limiter, LimitState
from agent.network import NetworkError, SimulatedNetwork
from sekisho.errors import (
    AuthenticationFailed,
    CodeMistyped,
    KeyPinInvalid,
    LeaseExpired,
    LockedOut,
    NoUsableSlot,
    UserDisabled,
    UserNotFound,
)
from sekisho.factors.interaction import ScriptedInteraction
from sekisho.policy import Policy
from tests.agent_helpers import POLICY, Laptop, extension_code, make_laptop

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def laptop(tmp_path: Path) -> Laptop:
    return make_laptop(tmp_path / "laptop")


def events(laptop: Laptop) -> list[dict]:
    return [e.body for e in laptop.gate.trail.entries() if e.body]


def limits(laptop: Laptop, user: str | None) -> LimitState:
    return Limiter(laptop.gate.store, user).state()


# --- each permitted slot unlocks, and locks again --------------------------------------------


@pytest.mark.parametrize(("user", "slot", "factors"), [
    ("K10234", "pin+totp", ("knowledge", "possession")),
    ("K20581", "fido2-uv", ("possession", "knowledge")),
    ("K30712", "pin+fido2", ("knowledge", "possession")),
])
def test_each_slot_unlocks_and_locks(laptop: Laptop, user: str, slot: str, factors: tuple[str, ...]) -> None:
    steps: list[str] = []
    session = laptop.gate.unlock(user, laptop.answers(user), uid=1000, progress=lambda s, d: steps.append(s))
    assert (session.user_id, session.slot_kind, session.factors) == (user, slot, factors)
    assert laptop.gate.state is GateState.UNLOCKED
    assert steps == ["verifying", "isolate", "isolated", "modem", "probing", "unlocked"]
    assert laptop.network.up and laptop.network.isolated
    with pytest.raises(GateBusy):
        laptop.gate.unlock("K10234", laptop.answers("K10234"))
    laptop.gate.lock("idle")
    assert laptop.gate.state is GateState.LOCKED and not laptop.network.up and laptop.gate.session is None
    kinds = [e["event"] for e in events(laptop)]
    assert kinds[-6:] == ["logon-success", "isolation", "link-up", "unlock", "link-down", "lock"]
    success = next(e for e in events(laptop) if e["event"] == "logon-success")
    assert success["details"]["slot"] == slot and tuple(success["details"]["factors"]) == factors
    assert laptop.gate.trail.verify().entries == len(events(laptop))


# --- wrong factors -------------------------------------------------------------------------------


def test_pin_totp_failures_do_not_say_which_part(laptop: Laptop) -> None:
    messages = []
    for answers in ({"passphrase": "wrong passphrase 12"}, {"code": "000000"}):
        laptop.next_step()
        with pytest.raises(AuthenticationFailed) as info:
            laptop.gate.unlock("K10234", laptop.answers("K10234", **answers))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert info.value.attempts_before_delay == 3  # type: ignore[attr-defined]
    failures = [e for e in events(laptop) if e["event"] == "logon-failure"]
    # The trail, for auditors, does record whether the token proved present.
    assert [f["details"]["possession_proven"] for f in failures] == [True, False]


def test_wrong_key_pin_reports_the_keys_own_count(laptop: Laptop) -> None:
    with pytest.raises(KeyPinInvalid) as info:
        laptop.gate.unlock("K20581", laptop.answers("K20581", pin="000000"))
    assert info.value.attempts_remaining == 7
    assert limits(laptop, "K20581").possession == 1


def test_unknown_ids_are_refused_and_not_recorded(laptop: Laptop) -> None:
    with pytest.raises(UserNotFound):
        laptop.gate.unlock("mizu no oto ga suru 3", ScriptedInteraction())
    last = events(laptop)[-1]
    assert last["event"] == "logon-failure" and last["user"] is None
    assert "mizu" not in laptop.gate.trail.path.read_text("utf-8")


# --- guessing limits --------------------------------------------------------------------------------


def fail(laptop: Laptop, user: str, **answers: object) -> Exception:
    laptop.next_step()
    with pytest.raises((AuthenticationFailed, LockedOut, UserDisabled)) as info:
        laptop.gate.unlock(user, laptop.answers(user, **answers))
    return info.value


def test_delay_after_five_doubling_and_clock_proof(laptop: Laptop) -> None:
    for _ in range(5):
        assert isinstance(fail(laptop, "K10234", passphrase="wrong passphrase 12"), AuthenticationFailed)
    assert laptop.gate.state is GateState.LOCKED_OUT
    locked = fail(laptop, "K10234")  # even the right factors wait
    assert isinstance(locked, LockedOut) and 1 <= locked.retry_after <= 30
    # Setting the wall clock forward a day does not shorten the delay: it runs on running time.
    laptop.clock.wall_time += 86400
    assert isinstance(fail(laptop, "K10234"), LockedOut)
    laptop.clock.wall_time -= 2 * 86400  # nor setting it back
    assert isinstance(fail(laptop, "K10234"), LockedOut)
    laptop.clock.wall_time += 86400
    laptop.clock.advance(31)
    assert laptop.gate.state is GateState.LOCKED
    assert isinstance(fail(laptop, "K10234", passphrase="wrong passphrase 12"), AuthenticationFailed)
    locked = fail(laptop, "K10234")
    assert isinstance(locked, LockedOut) and 30 < locked.retry_after <= 60
    laptop.clock.advance(61)
    laptop.gate.unlock("K10234", laptop.answers("K10234"))  # a success clears the counts
    assert limits(laptop, "K10234") == LimitState()


def test_a_colleagues_id_with_wrong_passphrases_delays_but_never_disables(laptop: Laptop) -> None:
    for _ in range(14):  # no valid code: possession never proven
        exc = fail(laptop, "K10234", passphrase="wrong passphrase 12", code="000000")
        if isinstance(exc, LockedOut):
            laptop.clock.advance(exc.retry_after)
    state = limits(laptop, "K10234")
    assert not state.disabled and state.possession == 0
    laptop.clock.advance(3600)
    laptop.gate.unlock("K10234", laptop.answers("K10234"))


def test_ten_failures_with_the_key_present_disable(laptop: Laptop) -> None:
    failures = 0
    while failures < 10:
        exc = fail(laptop, "K30712", passphrase="wrong passphrase 12")
        if isinstance(exc, LockedOut):
            laptop.clock.advance(exc.retry_after)
            continue
        failures += 1
    assert limits(laptop, "K30712").disabled
    laptop.clock.advance(3600)
    with pytest.raises(UserDisabled, match="disabled on this laptop"):
        laptop.gate.unlock("K30712", laptop.answers("K30712"))  # the right passphrase too
    assert any(e["details"].get("disabled") for e in events(laptop) if e["event"] == "logon-failure")


def test_a_cancel_before_any_check_does_not_count(laptop: Laptop) -> None:
    from sekisho.errors import Cancelled

    with pytest.raises(Cancelled):
        laptop.gate.unlock("K10234", ScriptedInteraction())
    assert limits(laptop, "K10234") == LimitState()


KILLED = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from agent.gate import Gate
from agent.network import SimulatedNetwork
from tests.agent_helpers import FakeClock, open_gate
from sekisho.factors.interaction import ScriptedInteraction

def die(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # after the check, before the answer

Gate._refused = die
clock = FakeClock()
clock.wall_time = {wall!r}
clock.mono_time = {mono!r}
gate = open_gate(Path({path!r}), clock, SimulatedNetwork())
gate.unlock({user!r}, ScriptedInteraction(passphrase="wrong passphrase 12", code="000000"))
"""


@pytest.mark.parametrize("user", ["K10234", "K30712"])
def test_counts_survive_sigkill_between_check_and_answer(laptop: Laptop, user: str) -> None:
    laptop.gate.store.close()
    laptop.gate.trail.close()
    script = KILLED.format(root=str(ROOT), path=str(laptop.root), user=user, wall=laptop.clock.wall_time + 90,
                           mono=laptop.clock.mono_time)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    from tests.agent_helpers import open_gate

    gate = open_gate(laptop.root, laptop.clock, SimulatedNetwork())
    state = Limiter(gate.store, user).state()
    assert state.consecutive == 1
    # K30712's key answered before the passphrase was checked: possession counted too.
    assert state.possession == (1 if user == "K30712" else 0)
    assert gate.trail.verify().entries > 0


# --- the clock -------------------------------------------------------------------------------------


def test_clock_set_back_refuses_totp_and_is_recorded(laptop: Laptop) -> None:
    laptop.gate.unlock("K10234", laptop.answers("K10234"))
    laptop.gate.lock()
    laptop.clock.wall_time -= 3600  # an hour back: behind the confirmed mark
    with pytest.raises(NoUsableSlot, match="clock is behind"):
        laptop.gate.unlock("K10234", laptop.answers("K10234"))
    anomaly = [e for e in events(laptop) if e["event"] == "clock-anomaly"]
    assert len(anomaly) == 1 and anomaly[0]["details"]["behind_s"] >= 3600
    assert laptop.gate.status(details=False)["clock"]["behind"]
    laptop.gate.unlock("K20581", laptop.answers("K20581"))  # a key still works
    laptop.gate.lock()


def test_replayed_code_after_a_small_clock_step_back(laptop: Laptop) -> None:
    code = laptop.code()
    laptop.gate.unlock("K10234", laptop.answers("K10234", code=code))
    laptop.gate.lock()
    laptop.clock.wall_time -= 60  # within tolerance: not "behind", but the step is burnt
    with pytest.raises(AuthenticationFailed):
        laptop.gate.unlock("K10234", laptop.answers("K10234", code=code))


def test_a_clock_far_ahead_once_does_not_lock_totp_out(laptop: Laptop) -> None:
    laptop.clock.wall_time += 365 * 86400  # one boot with the clock a year ahead
    with pytest.raises(LeaseExpired):  # fails closed while the clock is that far ahead
        laptop.gate.unlock("K10234", laptop.answers("K10234"))
    assert laptop.gate.clock.read().mark < laptop.clock.wall_time - 300 * 86400  # never adopted as the mark
    laptop.clock.wall_time -= 365 * 86400  # corrected
    laptop.clock.advance(60)
    assert not laptop.gate.status(details=False)["clock"]["behind"]
    laptop.gate.unlock("K10234", laptop.answers("K10234"))  # TOTP works again at once


# --- the lease -----------------------------------------------------------------------------------------


def test_lease_ends_by_date_and_warns_before(laptop: Laptop) -> None:
    laptop.clock.advance(12 * 86400)
    laptop.gate.unlock("K20581", laptop.answers("K20581"))
    laptop.gate.lock()
    assert any(e["event"] == "lease-warning" for e in events(laptop))
    assert laptop.gate.status(details=False)["lease"]["warning"]
    laptop.clock.advance(2 * 86400 + 1)
    with pytest.raises(LeaseExpired):
        laptop.gate.unlock("K20581", laptop.answers("K20581"))
    assert laptop.gate.state is GateState.LEASE_EXPIRED
    laptop.clock.wall_time -= 10 * 86400  # setting the clock back does not bring the lease back
    with pytest.raises(LeaseExpired):
        laptop.gate.unlock("K20581", laptop.answers("K20581"))


def test_lease_ends_by_running_time_with_the_clock_held_still(laptop: Laptop) -> None:
    laptop.clock.advance(15 * 86400, wall=False)
    with pytest.raises(LeaseExpired, match="running-time"):
        laptop.gate.unlock("K20581", laptop.answers("K20581"))


def test_lease_ends_by_unlocks(tmp_path: Path) -> None:
    policy = Policy(permitted_slot_kinds=POLICY.permitted_slot_kinds, argon2=POLICY.argon2,
                    allow_software_authenticators=True, lease_max_unlocks=2)
    laptop = make_laptop(tmp_path / "laptop", policy)
    for _ in range(2):
        laptop.gate.unlock("K20581", laptop.answers("K20581"))
        laptop.gate.lock()
    with pytest.raises(LeaseExpired, match="unlocks"):
        laptop.gate.unlock("K20581", laptop.answers("K20581"))


# --- recovery ---------------------------------------------------------------------------------------------


def test_recovery_with_a_code_and_the_passphrase(laptop: Laptop) -> None:
    code = laptop.recovery["K10234"][1]
    assert laptop.gate.recovery_key_ids("K10234") == [c.key_id for c in laptop.recovery["K10234"]]
    session = laptop.gate.recover("K10234", code.code, ScriptedInteraction(passphrase="mizu no oto ga suru 3"))
    assert session.recovered and session.grant.apps == ("住民記録",)
    assert reenrolment_due(laptop.gate.store, "K10234")
    assert code.key_id not in laptop.gate.recovery_key_ids("K10234")
    recovery = [e for e in events(laptop) if e["event"] == "recovery"]
    assert recovery[0]["details"]["key_id"] == code.key_id
    assert code.code not in laptop.gate.trail.path.read_text("utf-8")
    laptop.gate.lock()
    with pytest.raises(AuthenticationFailed, match="used already"):  # burnt
        laptop.gate.recover("K10234", code.code, ScriptedInteraction(passphrase="mizu no oto ga suru 3"))
    assert limits(laptop, "K10234").consecutive == 1


def test_recovery_code_alone_where_no_passphrase_is_bound(laptop: Laptop) -> None:
    session = laptop.gate.recover("K20581", laptop.recovery["K20581"][0].code, ScriptedInteraction())
    assert session.user_id == "K20581" and session.factors == ("recovery-code",)


def test_recovery_mistyped_group_is_not_counted_wrong_code_is(laptop: Laptop) -> None:
    good = laptop.recovery["K10234"][0].code
    groups = good.split("-")
    groups[3] = f"{(int(groups[3]) + 1) % 1000000:06d}"  # one digit off: no longer a multiple of 11
    with pytest.raises(CodeMistyped) as info:
        laptop.gate.recover("K10234", "-".join(groups), ScriptedInteraction(passphrase="mizu no oto ga suru 3"))
    assert info.value.group == 4
    assert limits(laptop, "K10234").consecutive == 0
    wrong = "-".join(f"{11 * i:06d}" for i in range(8))  # well formed, not a code
    with pytest.raises(AuthenticationFailed):
        laptop.gate.recover("K10234", wrong, ScriptedInteraction(passphrase="mizu no oto ga suru 3"))
    assert limits(laptop, "K10234").consecutive == 1
    with pytest.raises(AuthenticationFailed):  # the right code with the wrong passphrase
        laptop.gate.recover("K10234", good, ScriptedInteraction(passphrase="mizu no oto ga suru 4"))
    assert limits(laptop, "K10234").consecutive == 2


def test_recovery_is_admitted_when_the_lease_has_expired(laptop: Laptop) -> None:
    laptop.clock.advance(20 * 86400)
    with pytest.raises(LeaseExpired):
        laptop.gate.unlock("K20581", laptop.answers("K20581"))
    assert laptop.gate.recover("K20581", laptop.recovery["K20581"][2].code, ScriptedInteraction()).recovered


# --- extension codes ---------------------------------------------------------------------------------------


def test_extension_renews_an_expired_lease_once(laptop: Laptop) -> None:
    laptop.clock.advance(15 * 86400)
    assert laptop.gate.state is GateState.LEASE_EXPIRED
    code = extension_code(laptop, 7, sequence=1)
    status = laptop.gate.extend(code)
    assert not status.expired and status.days_left == 7
    assert laptop.gate.state is GateState.LOCKED
    laptop.gate.unlock("K20581", laptop.answers("K20581"))
    laptop.gate.lock()
    with pytest.raises(AuthenticationFailed, match="used already"):
        laptop.gate.extend(code)
    assert [e["details"]["sequence"] for e in events(laptop) if e["event"] == "lease-extension"] == [1]


def test_extension_for_another_laptop_or_mistyped(laptop: Laptop) -> None:
    with pytest.raises(AuthenticationFailed, match="not valid for this laptop"):
        laptop.gate.extend(extension_code(laptop, 7, sequence=1, device_id="laptop-0002"))
    assert limits(laptop, None).consecutive == 1
    code = extension_code(laptop, 7, sequence=2)
    with pytest.raises(CodeMistyped):
        laptop.gate.extend(code[:-1] + str((int(code[-1]) + 1) % 10))
    assert limits(laptop, None).consecutive == 1


# --- network rollback -------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["isolate", "bring_up", "probe"])
def test_a_failed_network_step_rolls_back_to_locked(laptop: Laptop, step: str) -> None:
    laptop.network.fail_at = step
    with pytest.raises(NetworkError) as info:
        laptop.gate.unlock("K20581", laptop.answers("K20581"))
    assert info.value.advice
    assert laptop.gate.state is GateState.LOCKED and laptop.gate.session is None
    assert laptop.network.calls[-2:] == ["bring_down", "restore"] and not laptop.network.up
    down = [e for e in events(laptop) if e["event"] == "link-down"]
    assert down[-1]["details"]["step"] == step and down[-1]["details"]["rolled_back"]
    laptop.network.fail_at = None
    laptop.gate.unlock("K20581", laptop.answers("K20581"))


def test_status_document_shape(laptop: Laptop) -> None:
    doc = laptop.gate.status(details=False)
    assert set(doc) == {"version", "state", "lease", "clock", "retry_after", "recent_users", "language", "user"}
    assert doc["recent_users"] == [] and doc["language"] == ""  # a pool laptop names nobody
    assert doc["user"] is None and doc["state"] == "locked"
    laptop.gate.unlock("K20581", laptop.answers("K20581"), uid=1000)
    assert laptop.gate.status(details=False)["user"] is None  # details only for who unlocked
    full = laptop.gate.status(details=True)
    assert full["user"]["id"] == "K20581" and "password" not in json.dumps(full)


def test_no_secret_in_the_trail_status_errors_or_logs(laptop: Laptop, caplog) -> None:
    import logging

    from agent.service import error_message
    from tests.conftest import SECRETS_USED, remember

    caplog.set_level(logging.DEBUG)
    texts = []
    laptop.gate.unlock("K10234", laptop.answers("K10234"), uid=0)
    texts.append(json.dumps(laptop.gate.status(details=True), ensure_ascii=False))
    laptop.gate.lock()
    for attempt in (lambda: laptop.gate.unlock("K30712", laptop.answers("K30712", passphrase="hoshi no furu oka de 8")),
                    lambda: laptop.gate.recover("K20581", "-".join(["000000"] * 8), ScriptedInteraction()),
                    lambda: laptop.gate.extend(extension_code(laptop, 5, 9, device_id="laptop-0009"))):
        try:
            attempt()
        except Exception as exc:
            texts.append(json.dumps(error_message(exc), ensure_ascii=False))  # type: ignore[arg-type]
    code = extension_code(laptop, 5, 1)
    remember(code)
    laptop.gate.extend(code)
    laptop.gate.recover("K20581", laptop.recovery["K20581"][0].code, ScriptedInteraction())
    texts.append(json.dumps(laptop.gate.status(details=True), ensure_ascii=False))
    remember("hoshi no furu oka de 8")
    trail_bytes = b"".join(p.read_bytes() for p in laptop.root.glob("trail.jsonl*"))
    texts.append(caplog.text)
    for secret in SECRETS_USED:
        for encoding in (secret, secret.hex().encode()):
            if len(encoding) >= 6:
                assert encoding not in trail_bytes
                assert not any(encoding.decode("latin-1") in t for t in texts)
