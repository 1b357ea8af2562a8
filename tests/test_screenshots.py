"""Screenshots of the logon window and the tray icons, in Japanese and English, on a real
X server (Xvfb), with a check that no text is cut off.

They go to a temporary directory; with ``SEKISHO_SCREENSHOTS=docs/images`` they replace
the ones the user guides show (docs/user-guide.md, docs/user-guide.ja.md).
"""

from __future__ import annotations

import os
import tkinter as tk
from pathlib import Path

import pytest
from PIL import ImageGrab

from agent import cli
from agent.i18n import Translator
from agent.tray import TrayState, draw_icon
from agent.window import LogonWindow
from tests.agent_helpers import PASSPHRASE
from tests.gui_helpers import pump
from tests.test_window import served, type_and_enter  # noqa: F401


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = os.environ.get("SEKISHO_SCREENSHOTS")
    out = Path(target) if target else tmp_path / "shots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def nothing_cut_off(widget: tk.Misc) -> list[str]:
    """Labels and buttons whose text needs more room than they were given."""
    cut = []
    for child in widget.winfo_children():
        shown = child.winfo_ismapped() and child.winfo_class() in ("TLabel", "TButton")
        if shown and (child.winfo_reqwidth() > child.winfo_width() + 1
                      or child.winfo_reqheight() > child.winfo_height() + 1):
            cut.append(str(child.cget("text")))
        cut += nothing_cut_off(child)
    return cut


def grab(root: tk.Tk, path: Path) -> None:
    root.update()
    root.update_idletasks()
    assert nothing_cut_off(root) == [], f"text cut off in {path.name}"
    x, y = root.winfo_rootx(), root.winfo_rooty()
    image = ImageGrab.grab(bbox=(x, y, x + root.winfo_width(), y + root.winfo_height()),
                           xdisplay=os.environ["DISPLAY"])
    assert len(image.convert("L").getcolors(256) or []) > 10, f"{path.name} is blank"
    image.save(path)


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_logon_steps(served, root, shots: Path, lang: str) -> None:  # noqa: F811
    _, path = served
    window = LogonWindow(root, path, Translator(lang), converse=cli.converse)
    root.geometry("+0+0")
    window.user.insert(0, "K30712")
    grab(root, shots / f"logon-1-staff-id.{lang}.png")
    type_and_enter(root, window.user, "")
    pump(root, lambda: window._waiting)
    window.secret.insert(0, "x" * 12)
    grab(root, shots / f"logon-2-passphrase.{lang}.png")
    window.secret.delete(0, "end")
    window.secret.insert(0, "wrong passphrase 12")
    window.submit()
    pump(root, lambda: window.result is not None)
    grab(root, shots / f"logon-5-error.{lang}.png")
    window.result = None
    window.user.delete(0, "end")
    window.user.insert(0, "K30712")
    window.submit()
    pump(root, lambda: window._waiting)
    window._on_notice("touch")  # the touch step, shown as the key waits (a software key answers at once)
    grab(root, shots / f"logon-3-touch.{lang}.png")
    # The link step as it looks once the factors are in (the simulated link here takes no time).
    window.secret_label.grid_remove()
    window.secret.grid_remove()
    window._on_progress(("connecting", {"elapsed_s": 42, "state": "activating"}))
    grab(root, shots / f"logon-4-connecting.{lang}.png")
    window._on_prompt(("passphrase", None))
    window.secret.insert(0, PASSPHRASE["K30712"])
    window.submit()
    pump(root, lambda: window.result is not None)
    grab(root, shots / f"logon-6-unlocked.{lang}.png")


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_recovery_window(served, root, shots: Path, lang: str) -> None:  # noqa: F811
    laptop, path = served
    window = LogonWindow(root, path, Translator(lang), converse=cli.converse, mode="recover")
    root.geometry("+0+0")
    window.user.insert(0, "K20581")
    window.show_key_ids()
    code = laptop.recovery["K20581"][0].code
    window.code.insert(0, code[:5] + str((int(code[5]) + 1) % 10) + code[6:20])
    window.check_code()
    grab(root, shots / f"recovery.{lang}.png")


def test_tray_icons(shots: Path) -> None:
    for state in TrayState:
        draw_icon(state, 32).save(shots / f"tray-{state.value}.png")
    assert all((shots / f"tray-{state.value}.png").stat().st_size > 100 for state in TrayState)


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_status_window(served, root, shots: Path, lang: str) -> None:  # noqa: F811
    """The tray's Status: who, since when, the link, the offline period."""
    import os as _os

    from agent.tray import status_lines
    from agent.window import StatusWindow

    laptop, path = served
    laptop.gate.unlock("K30712", laptop.answers("K30712"), uid=_os.getuid())
    status = cli.converse(path, {"op": "status"}, quiet=True)["status"]
    tr = Translator(lang)
    window = StatusWindow(root, status_lines(tr, status), tr)
    root.geometry("+0+0")
    texts = [label.cget("text") for label in window.labels]
    assert texts[0] == tr("Sekisho: unlocked") and "K30712" in texts[1]
    assert any("60%" in t for t in texts) and any("14" in t for t in texts)
    grab(root, shots / f"status.{lang}.png")
