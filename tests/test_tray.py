"""The tray: its state following the service, its menu's actions, the apps it starts and
closes — against a real served laptop, with pystray's menu built on a real X server
(Xvfb; its callbacks are invoked as a tray host would) and a stand-in Citrix (Citrix
cannot run here)."""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import cli
from agent.i18n import Translator
from agent.tray import TrayApp, TrayState, build_icon, draw_icon, status_lines, tray_state
from tests.agent_helpers import Laptop, launch_policy, make_laptop, serving
from tests.test_launch import stand_in, wait_for


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Laptop, Path, Path]]:
    laptop = make_laptop(tmp_path / "laptop", launch_policy(stand_in(tmp_path / "citrix")))
    with serving(laptop) as path:
        yield laptop, path, tmp_path / "citrix"


def make_app(path: Path, lang: str = "en", confirm: bool = True) -> tuple[TrayApp, list[str]]:
    opened: list[str] = []
    return TrayApp(path, Translator(lang), converse=cli.converse, open_window=opened.append,
                   confirm_quit=lambda: confirm), opened


def events(laptop: Laptop) -> list[str]:
    return [e.body["event"] for e in laptop.gate.trail.entries() if e.body]


def test_the_tray_follows_the_service_and_runs_the_apps(served) -> None:
    laptop, path, citrix = served
    app, _ = make_app(path)
    assert app.refresh() is TrayState.LOCKED
    assert app.title() == "Sekisho: locked — Offline period: 14 days left"
    laptop.gate.unlock("K30712", laptop.answers("K30712"), uid=os.getuid())
    assert app.refresh() is TrayState.UNLOCKED
    wait_for(citrix / "args.json")  # the grant's app, started in this session
    assert app.title().startswith("Sekisho: unlocked — 職員 K30712 since ")
    app.refresh()  # a second look starts nothing more
    assert app.launcher is not None and len(app.launcher.running) == 1
    app.lock()
    assert app.state is TrayState.LOCKED and laptop.gate.session is None
    assert (citrix / "args.closed").read_text() == "closed"
    assert events(laptop)[-4:] == ["apps-started", "link-down", "lock", "apps-closed"]


def test_a_lock_from_elsewhere_closes_the_apps(served) -> None:
    laptop, path, citrix = served
    app, _ = make_app(path)
    laptop.gate.unlock("K30712", laptop.answers("K30712"), uid=os.getuid())
    app.refresh()
    wait_for(citrix / "args.json")
    laptop.gate.lock("screen-lock")  # logind, the lid, idle...
    assert app.refresh() is TrayState.LOCKED
    assert (citrix / "args.closed").read_text() == "closed"


def test_the_menu_on_a_real_display(served, xvfb) -> None:
    laptop, path, _ = served
    app, opened = make_app(path, "ja")
    app.refresh()
    icon = build_icon(app)
    items = {str(item.text): item for item in icon.menu.items}
    assert list(items) == ["ロック解除…", "ロック", "状態", "回復コードで解除…", "利用期限の延長…",
                           "Sekisho について", "終了"]
    assert items["ロック解除…"].enabled and not items["ロック"].enabled
    items["ロック解除…"](icon)
    items["利用期限の延長…"](icon)
    assert opened == ["unlock", "extend"]
    assert icon.icon.tobytes() == draw_icon(TrayState.LOCKED).tobytes()
    laptop.gate.unlock("K30712", laptop.answers("K30712"), uid=os.getuid())
    app.refresh()  # the icon and the menu follow
    assert icon.icon.tobytes() == draw_icon(TrayState.UNLOCKED).tobytes()
    assert items["ロック"].enabled and not items["ロック解除…"].enabled
    assert app.title().startswith("Sekisho：ロック解除中 — 職員 K30712 さん")
    items["状態"](icon)
    assert "電波 60%" in app.messages[-1] and "あと 14 日" in app.messages[-1]
    items["ロック"](icon)
    assert laptop.gate.session is None and icon.icon.tobytes() == draw_icon(TrayState.LOCKED).tobytes()
    # pystray's X11 icon must let go of its window while the display is still there.
    app.on_change = lambda: None
    del app.notify
    del icon, items
    gc.collect()


def test_quit_asks_and_locks_first(served) -> None:
    laptop, path, citrix = served
    app, _ = make_app(path, confirm=False)
    laptop.gate.unlock("K30712", laptop.answers("K30712"), uid=os.getuid())
    app.refresh()
    wait_for(citrix / "args.json")
    assert app.quit() is False and laptop.gate.session is not None  # "no": nothing happens
    app.confirm_quit = lambda: True
    assert app.quit() is True
    assert laptop.gate.session is None and app.stopped.is_set()
    assert (citrix / "args.closed").read_text() == "closed"


def test_no_service_shows_as_unreachable(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path / "nothing.sock")
    assert app.refresh() is TrayState.UNREACHABLE
    assert app.title() == "Sekisho: the service is not running"


@pytest.mark.parametrize(("status", "state"), [
    ({"state": "locked", "lease": {"warning": False}}, TrayState.LOCKED),
    ({"state": "locked", "lease": {"warning": True, "days_left": 2}}, TrayState.LEASE_EXPIRING),
    ({"state": "lease-expired", "lease": {"expired": True}}, TrayState.LEASE_EXPIRED),
    ({"state": "locked-out", "retry_after": 30}, TrayState.LOCKED_OUT),
    ({"state": "verifying"}, TrayState.VERIFYING),
    ({"state": "unlocking"}, TrayState.CONNECTING),
    ({"state": "unlocked", "user": {"link": {"state": "reconnecting"}}}, TrayState.CONNECTING),
    ({"state": "unlocked", "user": {"link": {"state": "up"}}}, TrayState.UNLOCKED),
    (None, TrayState.UNREACHABLE),
])
def test_each_state_has_its_icon_and_words(status: dict | None, state: TrayState) -> None:
    assert tray_state(status) is state
    for lang in ("ja", "en"):
        assert status_lines(Translator(lang), status)[0]


def test_the_icons_are_distinct() -> None:
    images = {s: draw_icon(s).tobytes() for s in TrayState}
    assert len(set(images.values())) == len(TrayState)
    assert draw_icon(TrayState.LOCKED, 16).size == (16, 16)


def _colour_in(region: object, colour: str) -> bool:
    rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    colours = region.convert("RGB").getcolors(100000) or []  # type: ignore[attr-defined]
    return any(sum(abs(a - b) for a, b in zip(c, rgb, strict=True)) < 12 for _, c in colours)


def _wait_for_tray_host(display: str) -> None:
    """Until the tray host owns the system tray selection (where icons dock)."""
    import time

    from Xlib import X
    from Xlib.display import Display

    d = Display(display)
    try:
        selection = d.intern_atom("_NET_SYSTEM_TRAY_S0")
        for _ in range(100):
            if d.get_selection_owner(selection) != X.NONE:
                return
            time.sleep(0.05)
    finally:
        d.close()
    raise AssertionError("the tray host never took the system tray")


def test_the_icon_docks_in_a_tray_host_and_follows_the_service(served, xvfb, tmp_path: Path) -> None:
    """`sekisho-agent tray` as a desktop session runs it, docked in trayer (a real tray host)."""
    import subprocess
    import sys
    import time

    from PIL import ImageGrab

    if not shutil.which("trayer"):
        pytest.skip("trayer is not installed (make test installs it as root)")
    laptop, path, _ = served
    host = subprocess.Popen(["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel", "--width", "200",
                             "--height", "32"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agent = str(Path(sys.executable).parent / "sekisho-agent")
    _wait_for_tray_host(xvfb)
    tray = subprocess.Popen([agent, "--socket", str(path), "tray", "--lang", "ja"], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "tray.log").open("w"))
    try:
        shots = os.environ.get("SEKISHO_SCREENSHOTS")

        def shows(colour: str, name: str = "") -> bool:
            for _ in range(150):
                corner = ImageGrab.grab(xdisplay=xvfb).crop((1366 - 200, 0, 1366, 32))
                if _colour_in(corner, colour):
                    if shots and name:  # the docked icon, for the user guides
                        corner.save(Path(shots) / name)
                    return True
                time.sleep(0.1)
            return False

        assert shows("#44546a", "tray-docked-locked.png"), "the locked icon never docked"
        laptop.gate.unlock("K30712", laptop.answers("K30712"), uid=os.getuid())
        assert shows("#2f855a", "tray-docked-unlocked.png"), "the icon did not turn to unlocked"
        laptop.gate.lock("request")
        assert shows("#44546a"), "the icon did not go back to locked"
    finally:
        tray.terminate()
        tray.wait(10)
        host.terminate()
        host.wait(10)
    assert "Traceback" not in (tmp_path / "tray.log").read_text()


@pytest.mark.parametrize(("key", "answer"), [("Return", 0), ("Escape", 1)])
def test_quit_asks_in_a_window_of_its_own(served, xvfb, key: str, answer: int) -> None:
    """The question the tray's Quit asks (a real Tk dialog, answered with the keyboard)."""
    import subprocess
    import sys
    import time

    _, path, _ = served
    agent = str(Path(sys.executable).parent / "sekisho-agent")
    dialog = subprocess.Popen([agent, "--socket", str(path), "window", "--mode", "quit", "--lang", "en"])
    try:
        window = ""
        for _ in range(100):
            found = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", "Quit Sekisho"],
                                   capture_output=True, text=True)
            if found.stdout.split():
                window = found.stdout.split()[-1]
                break
            time.sleep(0.05)
        assert window, "the question never showed"
        time.sleep(0.3)
        subprocess.run(["xdotool", "windowfocus", "--sync", window], check=True)  # no window manager here
        subprocess.run(["xdotool", "key", key], check=True)
        assert dialog.wait(10) == answer
    finally:
        if dialog.poll() is None:
            dialog.kill()
