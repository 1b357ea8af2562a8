"""What locks the laptop besides a request: the screen lock, the lid, suspend, idle time.

Linux: logind on the system bus — a session's ``Lock`` signal (``loginctl lock-session``,
the desktop's lock), its ``LockedHint`` turning true, the manager's
``PrepareForSleep(true)`` (lid closed, suspend), and the unlocked user's sessions idle
(``IdleHint``, since ``IdleSinceHintMonotonic``) for the policy's ``lock.idle_minutes``.

Windows: the service's window receives ``WM_WTSSESSION_CHANGE`` and
``WM_POWERBROADCAST``; :func:`windows_lock_reason` maps them (only the mapping runs here).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from jeepney import DBusAddress, MatchRule, Properties, message_bus, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.low_level import HeaderFields
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

log = logging.getLogger(__name__)

LOGIN1 = "org.freedesktop.login1"
LOGIN1_PATH = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"
SESSION = "org.freedesktop.login1.Session"

SCREEN_LOCK, SUSPEND, IDLE = "screen-lock", "suspend", "idle"


class LogindTriggers:
    """Calls ``on_lock(reason)`` when logind says the session locks, the laptop sleeps, or idles.

    ``uid()`` is the unlocked user's uid (None: nobody unlocked, or unknown — then every
    session counts); ``idle_minutes()`` the policy's current value (0: never);
    ``monotonic_us()`` CLOCK_MONOTONIC in microseconds, the clock logind's
    ``IdleSinceHintMonotonic`` counts on.
    """

    def __init__(self, on_lock: Callable[[str], None], *, uid: Callable[[], int | None],
                 idle_minutes: Callable[[], int],
                 connect: Callable[[], DBusConnection] = lambda: open_dbus_connection(bus="SYSTEM"),
                 tick: float = 5.0,
                 monotonic_us: Callable[[], int] = lambda: time.monotonic_ns() // 1000) -> None:
        self.on_lock = on_lock
        self.uid = uid
        self.idle_minutes = idle_minutes
        self._connect = connect
        self.tick = tick
        self.monotonic_us = monotonic_us
        self.ready = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Listen until ``stop`` is set. Without logind, says so once and returns."""
        try:
            conn = self._connect()
        except (OSError, KeyError, ValueError) as exc:
            log.warning("no system D-Bus (%s): screen lock, suspend and idle will not lock Sekisho",
                        type(exc).__name__)
            return
        try:
            rule = MatchRule(type="signal", path_namespace=LOGIN1_PATH)
            unwrap_msg(conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=10))
            with conn.filter(rule, bufsize=64) as queue:
                self.ready.set()
                while not stop.is_set():
                    try:
                        message = conn.recv_until_filtered(queue, timeout=self.tick)
                    except TimeoutError:
                        self._check_idle(conn)
                        continue
                    reason = self._reason(message)
                    if reason:
                        log.info("logind: %s", reason)
                        self.on_lock(reason)
        except (OSError, DBusErrorResponse) as exc:
            log.error("listening to logind stopped: %s", exc)
        finally:
            conn.close()

    @staticmethod
    def _reason(message: object) -> str | None:
        fields = message.header.fields  # type: ignore[attr-defined]
        interface, member = fields.get(HeaderFields.interface), fields.get(HeaderFields.member)
        body = message.body  # type: ignore[attr-defined]
        if interface == SESSION and member == "Lock":
            return SCREEN_LOCK
        if interface == MANAGER and member == "PrepareForSleep" and body and body[0] is True:
            return SUSPEND
        if (interface == "org.freedesktop.DBus.Properties" and member == "PropertiesChanged" and body
                and body[0] == SESSION):
            locked = body[1].get("LockedHint")
            if locked and locked[1] is True:
                return SCREEN_LOCK
        return None

    def _check_idle(self, conn: DBusConnection) -> None:
        minutes = self.idle_minutes()
        if minutes <= 0:
            return
        uid = self.uid()
        try:
            manager = DBusAddress(LOGIN1_PATH, bus_name=LOGIN1, interface=MANAGER)
            (sessions,) = unwrap_msg(conn.send_and_get_reply(new_method_call(manager, "ListSessions"), timeout=10))
            idle_since: list[int] = []
            for _sid, session_uid, _name, _seat, path in sessions:
                if uid is not None and session_uid != uid:
                    continue
                props = Properties(DBusAddress(path, bus_name=LOGIN1, interface=SESSION))
                (hint,) = unwrap_msg(conn.send_and_get_reply(props.get("IdleHint"), timeout=10))
                if not hint[1]:
                    return  # one of the user's sessions is in use
                (since,) = unwrap_msg(conn.send_and_get_reply(props.get("IdleSinceHintMonotonic"), timeout=10))
                if int(since[1]) > 0:  # 0: logind does not know since when; not counted
                    idle_since.append(int(since[1]))
        except (OSError, DBusErrorResponse, ValueError) as exc:
            log.debug("idle check: %s", exc)
            return
        if idle_since and self.monotonic_us() - max(idle_since) >= minutes * 60_000_000:
            self.on_lock(IDLE)


# --- Windows: session and power events ---------------------------------------------------

WM_WTSSESSION_CHANGE = 0x02B1
WM_POWERBROADCAST = 0x0218
WTS_CONSOLE_DISCONNECT = 0x2
WTS_REMOTE_DISCONNECT = 0x4
WTS_SESSION_LOGOFF = 0x6
WTS_SESSION_LOCK = 0x7
PBT_APMSUSPEND = 0x4

_WINDOWS = {
    (WM_WTSSESSION_CHANGE, WTS_SESSION_LOCK): SCREEN_LOCK,
    (WM_WTSSESSION_CHANGE, WTS_CONSOLE_DISCONNECT): "session-switch",
    (WM_WTSSESSION_CHANGE, WTS_REMOTE_DISCONNECT): "session-switch",
    (WM_WTSSESSION_CHANGE, WTS_SESSION_LOGOFF): "logoff",
    (WM_POWERBROADCAST, PBT_APMSUSPEND): SUSPEND,
}


def windows_lock_reason(message: int, wparam: int) -> str | None:
    """Why a window message locks Sekisho (None: it does not).

    The service registers with ``WTSRegisterSessionNotification(hwnd,
    NOTIFY_FOR_ALL_SESSIONS)``; Windows then sends ``WM_WTSSESSION_CHANGE`` with the event
    in ``wParam``, and ``WM_POWERBROADCAST`` with ``PBT_APMSUSPEND`` before sleep.
    Unlocks, logons and resumes never unlock Sekisho.
    """
    return _WINDOWS.get((message, wparam))
