"""The tray icon (pystray): one per desktop session, running as the user.

It holds no logic of its own: it asks the service for its status every two seconds
over the control channel and shows it — a distinct icon and tooltip per state — and
its menu sends requests or opens the logon window (a separate Tk process, so the two
event loops never share a thread). When the service reports *unlocked* for this user it
starts the grant's apps (agent/launch.py) in this session, and closes them when the
laptop locks, reporting both to the service for the trail.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from agent.i18n import N_, Translator
from agent.launch import Launcher, LaunchRefused, launcher_for

log = logging.getLogger(__name__)


class TrayState(StrEnum):
    LOCKED = "locked"
    VERIFYING = "verifying"
    CONNECTING = "connecting"
    UNLOCKED = "unlocked"
    LOCKED_OUT = "locked-out"
    LEASE_EXPIRING = "lease-expiring"
    LEASE_EXPIRED = "lease-expired"
    UNREACHABLE = "unreachable"


TITLES = {
    TrayState.LOCKED: N_("Sekisho: locked"),
    TrayState.VERIFYING: N_("Sekisho: checking your factors"),
    TrayState.CONNECTING: N_("Sekisho: connecting to the closed network"),
    TrayState.UNLOCKED: N_("Sekisho: unlocked"),
    TrayState.LOCKED_OUT: N_("Sekisho: paused after too many attempts"),
    TrayState.LEASE_EXPIRING: N_("Sekisho: locked — the offline period ends soon"),
    TrayState.LEASE_EXPIRED: N_("Sekisho: the offline period is over"),
    TrayState.UNREACHABLE: N_("Sekisho: the service is not running"),
}

#: (background, glyph) per state: the glyph says it without colour too.
LOOKS = {
    TrayState.LOCKED: ("#44546a", "lock"),
    TrayState.VERIFYING: ("#b7791f", "dots"),
    TrayState.CONNECTING: ("#2b6cb0", "dots"),
    TrayState.UNLOCKED: ("#2f855a", "open"),
    TrayState.LOCKED_OUT: ("#c05621", "lock"),
    TrayState.LEASE_EXPIRING: ("#44546a", "lock-badge"),
    TrayState.LEASE_EXPIRED: ("#c53030", "cross"),
    TrayState.UNREACHABLE: ("#718096", "cross"),
}


def tray_state(status: dict[str, Any] | None) -> TrayState:
    if status is None:
        return TrayState.UNREACHABLE
    state = status.get("state")
    user = status.get("user") or {}
    if state == "unlocked":
        reconnecting = (user.get("link") or {}).get("state") == "reconnecting"
        return TrayState.CONNECTING if reconnecting else TrayState.UNLOCKED
    return {"verifying": TrayState.VERIFYING, "unlocking": TrayState.CONNECTING,
            "locked-out": TrayState.LOCKED_OUT, "lease-expired": TrayState.LEASE_EXPIRED}.get(
        str(state), TrayState.LEASE_EXPIRING if (status.get("lease") or {}).get("warning") else TrayState.LOCKED)


def status_lines(tr: Translator, status: dict[str, Any] | None) -> list[str]:
    """What the status item and the tooltip say: who, since when, the link, the lease."""
    if status is None:
        return [tr(TITLES[TrayState.UNREACHABLE])]
    lines = [tr(TITLES[tray_state(status)])]
    user = status.get("user")
    if user:
        lines.append(tr("{name} since {since}", name=user.get("name", ""), since=_local_time(user.get("since", ""))))
        link = user.get("link") or {}
        if link.get("state") == "reconnecting":
            lines.append(tr("The closed-network link dropped; reconnecting…"))
        elif link.get("signal") is not None:
            lines.append(tr("Signal {signal}%, office round trip {rtt} ms", signal=link["signal"],
                            rtt=link.get("rtt_ms") if link.get("rtt_ms") is not None else "–"))
    lease = status.get("lease") or {}
    if lease.get("days_left") is not None and not lease.get("expired"):
        lines.append(tr("Offline period: {days} days left", days=lease["days_left"]))
    if status.get("retry_after"):
        lines.append(tr("Try again in {seconds} s", seconds=status["retry_after"]))
    return lines


def _local_time(iso: str) -> str:
    """``HH:MM`` on the laptop's clock for the service's UTC time stamp."""
    try:
        return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%H:%M")
    except ValueError:
        return iso


def draw_icon(state: TrayState, size: int = 64) -> Image.Image:
    """The tray icon for ``state``: a coloured disc with a lock, an open lock, dots or a cross."""
    background, glyph = LOOKS[state]
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(image)
    d.ellipse((1, 1, size - 2, size - 2), fill=background)
    s = size / 64
    white = "#ffffff"
    if glyph == "lock-badge":  # locked, with a yellow "!" badge: the offline period ends soon
        glyph = "lock"
        d.ellipse((40 * s, 0, 63 * s, 23 * s), fill="#ecc94b", outline="#ffffff", width=max(1, int(2 * s)))
        d.line((51.5 * s, 4 * s, 51.5 * s, 14 * s), fill="#1a202c", width=max(1, int(4 * s)))
        d.ellipse((49.5 * s, 16 * s, 53.5 * s, 20 * s), fill="#1a202c")
    if glyph in ("lock", "open"):
        d.rounded_rectangle((18 * s, 30 * s, 46 * s, 50 * s), radius=3 * s, fill=white)
        shackle = (22 * s, 14 * s, 42 * s, 38 * s) if glyph == "lock" else (30 * s, 10 * s, 50 * s, 34 * s)
        d.arc(shackle, 180, 360, fill=white, width=max(2, int(5 * s)))
        if glyph == "lock":
            for x in (22, 42):
                d.line((x * s, 26 * s, x * s, 31 * s), fill=white, width=max(2, int(5 * s)))
        else:
            d.line((50 * s - 2.5 * s, 22 * s, 50 * s - 2.5 * s, 28 * s), fill=white, width=max(2, int(5 * s)))
    elif glyph == "dots":
        for x in (20, 32, 44):
            d.ellipse(((x - 4) * s, 28 * s, (x + 4) * s, 36 * s), fill=white)
    else:
        d.line((22 * s, 22 * s, 42 * s, 42 * s), fill=white, width=max(2, int(6 * s)))
        d.line((42 * s, 22 * s, 22 * s, 42 * s), fill=white, width=max(2, int(6 * s)))
    return image


def _window_command(path: Path, lang: str, mode: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "--socket", str(path), "window", "--lang", lang, "--mode", mode]


def open_window(path: Path, lang: str, mode: str) -> None:
    """The logon, recovery, extension or status window, in its own process (Tk has its own loop)."""
    subprocess.Popen(_window_command(path, lang, mode))  # noqa: S603


def ask_quit(path: Path, lang: str) -> bool:
    """Ask the person, in a small window of its own, whether to quit (and so lock)."""
    return subprocess.call(_window_command(path, lang, "quit")) == 0  # noqa: S603


class TrayApp:
    """The tray's behaviour, testable without a tray host: ``refresh`` and the menu's actions."""

    def __init__(self, socket_path: Path, tr: Translator, *, converse: Callable[..., dict[str, Any]],
                 open_window: Callable[[str], None], confirm_quit: Callable[[], bool] = lambda: True,
                 launcher_factory: Callable[[dict[str, Any]], Launcher] = launcher_for) -> None:
        self.path, self.tr = socket_path, tr
        self._converse = converse
        self.open_window = open_window
        self.confirm_quit = confirm_quit
        self.launcher_factory = launcher_factory
        self.status: dict[str, Any] | None = None
        self.state = TrayState.UNREACHABLE
        self.launcher: Launcher | None = None
        self.stopped = threading.Event()
        self.messages: list[str] = []  # what was shown as a notification (latest last)
        self.on_change: Callable[[], None] = lambda: None

    def ask(self, request: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self._converse(self.path, request, quiet=True, answer=lambda *a: None)
        except Exception as exc:  # the service is not there (yet): the icon says so
            log.info("no answer from the service: %s", exc)
            return None

    def refresh(self) -> TrayState:
        """Ask the service; follow its state; start or close the apps on the edges."""
        reply = self.ask({"op": "status"})
        self.status = reply.get("status") if reply and reply.get("type") == "result" else None
        before, self.state = self.state, tray_state(self.status)
        user = (self.status or {}).get("user")
        if self.state is TrayState.UNLOCKED and user and self.launcher is None:
            self._start_apps(user)
        elif self.state not in (TrayState.UNLOCKED, TrayState.CONNECTING) and self.launcher is not None:
            self._close_apps()
        if before is not self.state:
            self.on_change()
        return self.state

    def _start_apps(self, user: dict[str, Any]) -> None:
        launcher = self.launcher_factory(user)
        try:
            launched = launcher.start(user.get("citrix", {}), user.get("apps", []))
        except (LaunchRefused, OSError) as exc:
            self.notify(self.tr("Your apps could not be started: {why}", why=str(exc)))
            self.launcher = launcher  # nothing to close, but do not retry every two seconds
            return
        self.launcher = launcher
        self.ask({"op": "apps", "event": "started", "client": launcher.client, "apps": [a.app for a in launched]})

    def _close_apps(self) -> None:
        launcher, self.launcher = self.launcher, None
        if launcher is None or not launcher.running:
            return
        closing = launcher.close()
        self.ask({"op": "apps", "event": "closed", "client": launcher.client, **closing.to_json()})

    def notify(self, text: str) -> None:
        self.messages.append(text)

    # --- the menu's actions --------------------------------------------------------------------

    def can_unlock(self) -> bool:
        return self.state in (TrayState.LOCKED, TrayState.LEASE_EXPIRING, TrayState.LOCKED_OUT)

    def can_lock(self) -> bool:
        return self.state in (TrayState.UNLOCKED, TrayState.CONNECTING)

    def unlock(self) -> None:
        self.open_window("unlock")

    def lock(self) -> None:
        self.ask({"op": "lock"})
        self.refresh()

    def show_status(self) -> None:
        self.notify("\n".join(status_lines(self.tr, self.status)))
        self.open_window("status")

    def recover(self) -> None:
        self.open_window("recover")

    def extend(self) -> None:
        self.open_window("extend")

    def about(self) -> None:
        from sekisho import __version__

        self.notify(self.tr("Sekisho {version}: offline two-factor logon for the closed network.",
                            version=__version__))

    def quit(self) -> bool:
        """Quit asks first, and locks first: the apps never outlive the tray."""
        if not self.confirm_quit():
            return False
        if self.can_lock():
            self.lock()
        self._close_apps()
        self.stopped.set()
        return True

    def title(self) -> str:
        return " — ".join(status_lines(self.tr, self.status)[:2])


def _choose_backend() -> None:
    """pystray tries AppIndicator and GTK first; where PyGObject is there without GTK 3
    that fails with ValueError rather than ImportError, so say "xorg" before it looks."""
    if "PYSTRAY_BACKEND" in os.environ or sys.platform != "linux":
        return
    try:
        import gi

        gi.require_version("Gtk", "3.0")
    except (ImportError, ValueError):
        os.environ["PYSTRAY_BACKEND"] = "xorg"


def build_icon(app: TrayApp) -> Any:
    """The pystray icon and menu for ``app`` (imported here: pystray needs a display)."""
    _choose_backend()
    import pystray

    tr = app.tr

    def item(text: str, action: Callable[[], Any], enabled: Callable[[], bool] = lambda: True) -> Any:
        return pystray.MenuItem(tr(text), lambda icon, _item: action(), enabled=lambda _item: enabled())

    def quit_action() -> None:
        if app.quit():
            icon.stop()

    menu = pystray.Menu(
        item(N_("Unlock…"), app.unlock, app.can_unlock),
        item(N_("Lock"), app.lock, app.can_lock),
        item(N_("Status"), app.show_status),
        item(N_("Recovery…"), app.recover, app.can_unlock),
        item(N_("Lease extension…"), app.extend),
        item(N_("About Sekisho"), app.about),
        item(N_("Quit"), quit_action),
    )
    # The bare X11 backend has no tooltip and writes the title as Latin-1 (WM_NAME): it gets
    # the product name only; the status item still says everything, in the UI's language.
    xorg = pystray.Icon.__module__.endswith("_xorg")

    def title() -> str:
        return "Sekisho" if xorg else app.title()

    icon = pystray.Icon("sekisho", draw_icon(app.state), title(), menu)

    def changed() -> None:
        icon.icon = draw_icon(app.state)
        icon.title = title()
        icon.update_menu()

    def notify(text: str) -> None:
        TrayApp.notify(app, text)
        try:
            icon.notify(text, "Sekisho")
        except NotImplementedError:  # the xorg backend has no notifications
            log.info("%s", text)

    app.on_change = changed
    app.notify = notify  # type: ignore[method-assign]
    return icon


def run_tray(app: TrayApp, interval: float = 2.0) -> None:
    icon = build_icon(app)

    def poll(icon: Any) -> None:
        icon.visible = True
        while not app.stopped.wait(interval):
            app.refresh()

    app.refresh()
    icon.run(setup=poll)
