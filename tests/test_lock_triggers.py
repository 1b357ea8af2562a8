"""What locks the laptop on its own: logind's session Lock, PrepareForSleep, idle; WTS events.

logind cannot run here (no seat): python-dbusmock's logind template stands in on a
private system bus, and Sekisho listens to it over real D-Bus. Windows' session and
power messages are tested through their mapping only (no Windows here).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dbus
import pytest
from dbusmock.testcase import BusType

from agent.gate import GateState
from agent.triggers import (
    PBT_APMSUSPEND,
    WM_POWERBROADCAST,
    WM_WTSSESSION_CHANGE,
    WTS_SESSION_LOCK,
    LogindTriggers,
    windows_lock_reason,
)
from tests.agent_helpers import make_laptop

SESSION_IFACE = "org.freedesktop.login1.Session"


#: The tests' CLOCK_MONOTONIC runs a day ahead of the machine's, so that "idle since 16
#: minutes ago" exists on a machine booted a minute ago (as CI's is).
AHEAD_US = 86_400_000_000


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000 + AHEAD_US


class Listener:
    def __init__(self, uid: int | None = 1000, idle_minutes: int = 15) -> None:
        self.reasons: list[str] = []
        self.stop = threading.Event()
        self.triggers = LogindTriggers(self.reasons.append, uid=lambda: uid, idle_minutes=lambda: idle_minutes,
                                       tick=0.1, monotonic_us=monotonic_us)
        self.thread = threading.Thread(target=self.triggers.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Listener:
        self.thread.start()
        assert self.triggers.ready.wait(10), "never listened"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)

    def wait(self, reason: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if reason in self.reasons:
                return
            time.sleep(0.02)
        raise AssertionError(f"no {reason!r} (saw {self.reasons})")


def session(logind: dbus.Interface, uid: int = 1000) -> dbus.Interface:
    path = logind.AddSession("c1", "seat0", dbus.UInt32(uid), "suzuki", True)
    return BusType.SYSTEM.get_connection().get_object("org.freedesktop.login1", path)


@pytest.fixture
def listening(logind: dbus.Interface) -> Iterator[Listener]:
    with Listener() as listener:
        yield listener


def test_session_lock_locks(logind: dbus.Interface, listening: Listener) -> None:
    obj = session(logind)
    obj.Lock(dbus_interface=SESSION_IFACE)
    listening.wait("screen-lock")


def test_the_desktops_locked_hint_locks(logind: dbus.Interface, listening: Listener) -> None:
    obj = session(logind)
    obj.SetLockedHint(True, dbus_interface=SESSION_IFACE)
    listening.wait("screen-lock")


def test_prepare_for_sleep_locks_and_waking_does_not(logind: dbus.Interface, listening: Listener) -> None:
    logind.EmitSignal("org.freedesktop.login1.Manager", "PrepareForSleep", "b", [False])
    time.sleep(0.3)
    assert listening.reasons == []
    logind.EmitSignal("org.freedesktop.login1.Manager", "PrepareForSleep", "b", [True])
    listening.wait("suspend")


def _idle_since(obj: dbus.Interface, minutes: float) -> None:
    since = monotonic_us() - int(minutes * 60_000_000)
    mock = dbus.Interface(obj, "org.freedesktop.DBus.Mock")
    mock.UpdateProperties(SESSION_IFACE, {"IdleHint": True, "IdleSinceHintMonotonic": dbus.UInt64(since)})


def test_idle_for_the_policys_minutes_locks(logind: dbus.Interface, listening: Listener) -> None:
    obj = session(logind)
    _idle_since(obj, 14)  # not yet
    time.sleep(0.4)
    assert listening.reasons == []
    _idle_since(obj, 16)
    listening.wait("idle")


def test_idle_without_a_since_does_not_lock(logind: dbus.Interface, listening: Listener) -> None:
    obj = session(logind)
    mock = dbus.Interface(obj, "org.freedesktop.DBus.Mock")
    mock.UpdateProperties(SESSION_IFACE, {"IdleHint": True, "IdleSinceHintMonotonic": dbus.UInt64(0)})
    time.sleep(0.4)
    assert listening.reasons == []  # "idle since boot" is not a reading: no lock on it


def test_another_users_idle_session_does_not_count(logind: dbus.Interface, listening: Listener) -> None:
    obj = session(logind, uid=1001)
    _idle_since(obj, 60)
    time.sleep(0.4)
    assert listening.reasons == []


def test_idle_zero_means_never(logind: dbus.Interface) -> None:
    obj = session(logind)
    _idle_since(obj, 600)
    with Listener(idle_minutes=0) as listener:
        time.sleep(0.4)
        assert listener.reasons == []


def test_a_lock_signal_locks_the_unlocked_gate(logind: dbus.Interface, tmp_path: Path) -> None:
    laptop = make_laptop(tmp_path / "laptop")
    laptop.gate.unlock("K20581", laptop.answers("K20581"))
    stop = threading.Event()
    triggers = LogindTriggers(laptop.gate.lock, uid=lambda: laptop.gate.unlocked_uid, idle_minutes=lambda: 15,
                              tick=0.1)
    thread = threading.Thread(target=triggers.run, args=(stop,), daemon=True)
    thread.start()
    assert triggers.ready.wait(10)
    try:
        session(logind).Lock(dbus_interface=SESSION_IFACE)
        for _ in range(250):
            if laptop.gate.state is GateState.LOCKED:
                break
            time.sleep(0.02)
        assert laptop.gate.state is GateState.LOCKED
        assert laptop.network.calls[-2:] == ["bring_down", "restore"]
    finally:
        stop.set()
        thread.join(5)
    locks = [e.body for e in laptop.gate.trail.entries() if e.body and e.body["event"] == "lock"]
    assert locks[-1]["details"]["why"] == "screen-lock"


def test_no_system_bus_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/nothing")
    triggers = LogindTriggers(lambda r: None, uid=lambda: None, idle_minutes=lambda: 15)
    triggers.run(threading.Event())  # returns at once
    assert "will not lock Sekisho" in caplog.text


@pytest.mark.parametrize(("message", "wparam", "reason"), [
    (WM_WTSSESSION_CHANGE, WTS_SESSION_LOCK, "screen-lock"),
    (WM_WTSSESSION_CHANGE, 0x2, "session-switch"),  # WTS_CONSOLE_DISCONNECT: fast user switching
    (WM_WTSSESSION_CHANGE, 0x6, "logoff"),
    (WM_POWERBROADCAST, PBT_APMSUSPEND, "suspend"),
    (WM_WTSSESSION_CHANGE, 0x8, None),  # WTS_SESSION_UNLOCK never unlocks Sekisho
    (WM_POWERBROADCAST, 0x12, None),  # PBT_APMRESUMEAUTOMATIC
    (0x0010, 0, None),  # WM_CLOSE
])
def test_windows_session_and_power_events(message: int, wparam: int, reason: str | None) -> None:
    assert windows_lock_reason(message, wparam) == reason
