"""The gate and the network while unlocked: the watch, link retries, the crash cleanup.

The network is simulated here (agent/network.py's SimulatedNetwork; the real backends
have their own tests against dbusmock and netsh samples): what is tested is what the
gate does with what the network reports.
"""

from __future__ import annotations

from pathlib import Path

from agent.gate import GateState
from agent.network import LINK_LOST, OTHER_ROUTE, WatchFinding
from sekisho.policy import Policy
from tests.agent_helpers import POLICY, make_laptop


def bodies(laptop) -> list[dict]:  # type: ignore[no-untyped-def]
    return [e.body for e in laptop.gate.trail.entries() if e.body]


def test_a_second_default_route_drops_the_link_and_locks(tmp_path: Path) -> None:
    laptop = make_laptop(tmp_path / "laptop")
    laptop.gate.unlock("K20581", laptop.answers("K20581"))
    assert laptop.gate.watch() is None  # nothing to see
    laptop.network.finding = WatchFinding(OTHER_ROUTE, "wlan0")
    assert laptop.gate.watch() == WatchFinding(OTHER_ROUTE, "wlan0")
    assert laptop.gate.state is GateState.LOCKED and laptop.gate.session is None
    assert laptop.network.calls[-2:] == ["bring_down", "restore"] and not laptop.network.up
    events = bodies(laptop)
    breach = next(e for e in events if e["event"] == "isolation" and not e["details"]["ok"])
    assert breach["details"] == {"ok": False, "interface": "wlan0", "action": "sim-dropped"}
    assert events[-1]["event"] == "lock" and events[-1]["details"]["why"] == "other-route"


def test_a_dropped_link_comes_back_and_the_session_stays(tmp_path: Path) -> None:
    laptop = make_laptop(tmp_path / "laptop")
    laptop.gate.unlock("K20581", laptop.answers("K20581"))
    laptop.network.finding = WatchFinding(LINK_LOST, "wwan0")
    laptop.gate.watch()
    assert laptop.gate.state is GateState.UNLOCKED
    status = laptop.gate.status(details=True)
    assert status["user"]["link"]["state"] == "up"
    events = [e for e in bodies(laptop) if e["event"] in ("link-down", "link-up")]
    assert events[-2]["details"] == {"why": "lost"}
    assert events[-1]["event"] == "link-up" and events[-1]["details"]["retry"] == 1


def test_a_link_that_stays_down_locks_after_the_policys_retries(tmp_path: Path) -> None:
    policy = Policy(permitted_slot_kinds=POLICY.permitted_slot_kinds, argon2=POLICY.argon2,
                    allow_software_authenticators=True, network_link_retries=3)
    laptop = make_laptop(tmp_path / "laptop", policy)
    laptop.gate.unlock("K20581", laptop.answers("K20581"))
    laptop.network.finding = WatchFinding(LINK_LOST, "wwan0")
    laptop.network.fail_at = "bring_up"
    laptop.gate.watch()
    assert laptop.gate.state is GateState.LOCKED
    events = bodies(laptop)
    retries = [e["details"]["try"] for e in events if e["details"].get("why") == "retry-failed"]
    assert retries == [1, 2, 3]
    assert events[-1]["event"] == "lock" and events[-1]["details"]["why"] == "link-lost"


def test_the_watch_does_nothing_while_locked(tmp_path: Path) -> None:
    laptop = make_laptop(tmp_path / "laptop")
    laptop.network.finding = WatchFinding(OTHER_ROUTE, "wlan0")
    before = len(bodies(laptop))
    assert laptop.gate.watch() is None
    assert len(bodies(laptop)) == before


def test_what_a_crash_left_is_cleaned_up_and_recorded(tmp_path: Path) -> None:
    laptop = make_laptop(tmp_path / "laptop")
    laptop.network.leftover = {"sim_link": True, "interfaces": ["wlan0"], "wifi_radio_off": True}
    laptop.gate.cleanup_network()
    last = bodies(laptop)[-1]
    assert last["event"] == "link-down" and last["details"] == {
        "why": "crash-cleanup", "sim_link": True, "interfaces": ["wlan0"], "wifi_radio_off": True}
    before = len(bodies(laptop))
    laptop.gate.cleanup_network()  # nothing left: nothing recorded
    assert len(bodies(laptop)) == before


def test_recent_users_only_where_the_policy_allows(tmp_path: Path) -> None:
    laptop = make_laptop(tmp_path / "pool")
    laptop.gate.unlock("K30712", laptop.answers("K30712"))
    laptop.gate.lock()
    assert laptop.gate.status(details=False)["recent_users"] == []  # a pool laptop shows nobody
    policy = Policy(permitted_slot_kinds=POLICY.permitted_slot_kinds, argon2=POLICY.argon2,
                    allow_software_authenticators=True, network_backend="simulated", logon_recent_users=2)
    laptop = make_laptop(tmp_path / "issued", policy)
    for user in ("K30712", "K20581", "K30712", "K10234"):
        laptop.next_step()
        laptop.gate.unlock(user, laptop.answers(user))
        laptop.gate.lock()
    assert laptop.gate.status(details=False)["recent_users"] == ["K10234", "K30712"]
    laptop.gate.store.remove_user("K30712")  # e.g. revoked at a check-in
    assert laptop.gate.status(details=False)["recent_users"] == ["K10234"]
