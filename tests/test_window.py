"""The logon window under a real X server (Xvfb), driven like a person: type, Enter, Esc.

The service is real (a served laptop, its control socket); the keys are software keys.
"""

from __future__ import annotations

import os
import tkinter as tk
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import cli
from agent.i18n import Translator, missing
from agent.window import LogonWindow
from tests.agent_helpers import KEY_PIN, PASSPHRASE, Laptop, extension_code, make_laptop, serving
from tests.gui_helpers import pump


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Laptop, Path]]:
    laptop = make_laptop(tmp_path / "laptop")
    with serving(laptop) as path:
        yield laptop, path


def open_window(root: tk.Tk, path: Path, lang: str = "en", mode: str = "unlock") -> LogonWindow:
    return LogonWindow(root, path, Translator(lang), converse=cli.converse, mode=mode)


def type_and_enter(root: tk.Tk, entry: tk.Widget, text: str) -> None:
    root.update()  # mapped: key events reach only a viewable, focused widget
    entry.focus_force()
    root.update()
    entry.insert("end", text)  # type: ignore[attr-defined]
    entry.event_generate("<Return>")  # Enter, as bound on the window
    root.update()


def answer(window: LogonWindow, root: tk.Tk, text: str) -> None:
    pump(root, lambda: window._waiting)
    type_and_enter(root, window.secret, text)


def test_a_full_unlock_with_a_key_and_passphrase(served, root) -> None:
    laptop, path = served
    headlines: list[str] = []
    window = open_window(root, path)
    original = window._on_notice
    window._on_notice = lambda kind: (original(kind), headlines.append(window.headline.cget("text")))  # type: ignore
    type_and_enter(root, window.user, "K30712")
    answer(window, root, PASSPHRASE["K30712"])
    pump(root, lambda: window.result is not None)
    assert window.result is not None and window.result["type"] == "result"
    assert window.headline.cget("text") == "Unlocked: 職員 K30712"
    assert headlines == ["Touch your security key."]  # the waiting state was shown
    assert laptop.gate.session is not None and laptop.gate.session.user_id == "K30712"
    assert window.secret.get() == ""  # nothing typed stays in a widget


def test_a_wrong_passphrase_says_how_many_attempts_remain(served, root) -> None:
    laptop, path = served
    window = open_window(root, path)
    type_and_enter(root, window.user, "K30712")
    answer(window, root, "wrong passphrase 12")
    pump(root, lambda: window.result is not None)
    assert window.error.cget("text") == "That did not match."
    assert "Attempts remaining before a pause: 4." in window.advice.cget("text")
    assert "wrong passphrase" not in window.advice.cget("text") + window.error.cget("text")
    assert laptop.gate.session is None


def test_esc_at_a_prompt_cancels_the_logon(served, root) -> None:
    laptop, path = served
    window = open_window(root, path)
    type_and_enter(root, window.user, "K20581")
    pump(root, lambda: window._waiting)  # the key's PIN is asked
    window.secret.focus_force()
    root.update()
    window.secret.event_generate("<Escape>")
    pump(root, lambda: window.result is not None)
    assert window.result is not None and window.result["error"] == "Cancelled"
    assert window.error.cget("text") == "Logon cancelled."
    assert laptop.gate.session is None
    # The window is ready for the next try: the same person, with the PIN this time.
    window.result = None
    window.user.focus_force()
    root.update()
    window.user.event_generate("<Return>")
    answer(window, root, KEY_PIN)
    pump(root, lambda: window.result is not None)
    assert window.result["type"] == "result"


def test_an_unknown_staff_id_is_said_plainly(served, root) -> None:
    _, path = served
    window = open_window(root, path, "ja")
    type_and_enter(root, window.user, "K99999")
    pump(root, lambda: window.result is not None)
    assert window.error.cget("text") == "この職員番号はこの端末に登録されていません。"


def test_a_recovery_with_a_group_flagged_as_it_is_typed(served, root) -> None:
    laptop, path = served
    window = open_window(root, path, mode="recover")
    code = laptop.recovery["K20581"][0].code
    type_and_enter(root, window.user, "K20581")
    window.show_key_ids()
    assert laptop.recovery["K20581"][0].key_id in window.key_ids.cget("text")
    wrong = code[:5] + str((int(code[5]) + 1) % 10) + code[6:]
    window.code.focus_force()
    root.update()
    window.code.insert(0, wrong[:7])
    window.code.event_generate("<KeyRelease>")
    assert window.error.cget("text") == "Group 1 of the code is mistyped."  # before the rest is typed
    window.submit()
    root.update()
    assert window.result is None  # nothing was sent
    window.code.delete(0, "end")
    window.code.insert(0, code[:20])
    window.submit()
    assert window.error.cget("text") == "The code is not complete." and window.result is None
    window.code.delete(0, "end")
    window.code.insert(0, code)
    window.code.event_generate("<KeyRelease>")
    assert window.error.cget("text") == ""
    window.submit()
    pump(root, lambda: window.result is not None)
    assert window.result is not None and window.result["type"] == "result"
    assert laptop.gate.session is not None and laptop.gate.session.recovered


def test_a_lease_extension(served, root) -> None:
    laptop, path = served
    window = open_window(root, path, mode="extend")
    window.code.insert(0, extension_code(laptop, 30, 1))
    window.submit()
    pump(root, lambda: window.result is not None)
    assert window.result is not None and window.result["type"] == "result"
    assert window.headline.cget("text") == "The offline period is extended."
    assert "30 days left" in window.progress.cget("text")


def test_no_service_is_said_plainly(root, tmp_path: Path) -> None:
    window = open_window(root, tmp_path / "nothing.sock")
    type_and_enter(root, window.user, "K30712")
    pump(root, lambda: window.result is not None)
    assert window.error.cget("text") == "Logon did not succeed."
    assert "not reachable" in window.advice.cget("text")


def test_every_ui_string_has_a_japanese_translation() -> None:
    assert missing("ja") == []


def test_the_window_fits_a_small_laptop_screen(served, root) -> None:
    _, path = served
    for lang in ("ja", "en"):
        for mode in ("unlock", "recover"):
            window = open_window(root, path, lang, mode)
            root.update_idletasks()
            assert root.winfo_reqwidth() <= 1366 and root.winfo_reqheight() <= 700, (lang, mode)
            window.frame.destroy()


def test_the_window_command_without_a_display_says_so(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    agent = str(Path(sys.executable).parent / "sekisho-agent")
    proc = subprocess.run([agent, "--socket", str(tmp_path / "s"), "window", "--lang", "ja"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "No display" in proc.stderr and "Traceback" not in proc.stderr
    bad = subprocess.run([agent, "window", "--lang", "fr"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Sekisho speaks ja, en" in bad.stderr


def test_esc_while_the_key_waits_for_a_touch_cancels(served, root) -> None:
    """The person does not touch and presses Esc: the key is told to stop (CTAP cancel)."""
    import time

    laptop, path = served
    keys = list(laptop.gate.devices())

    def not_touching(key: object) -> object:
        def wait(what: str) -> None:  # the simulated person never touches; the key waits for a cancel
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not (key._event and key._event.is_set()):  # type: ignore[attr-defined]
                time.sleep(0.02)
        return wait

    for key in keys:
        key.on_wait = not_touching(key)
    window = open_window(root, path)
    type_and_enter(root, window.user, "K30712")
    answer(window, root, PASSPHRASE["K30712"])
    pump(root, lambda: window.headline.cget("text") == "Touch your security key.")
    window.user.event_generate("<Escape>")
    started = time.monotonic()
    pump(root, lambda: window.result is not None)
    assert time.monotonic() - started < 5, "the key went on waiting"
    assert window.result is not None and window.result["error"] == "Cancelled"
    assert window.error.cget("text") == "Logon cancelled."
    assert laptop.gate.session is None


def test_the_window_waits_for_the_key_to_be_inserted(served, root) -> None:
    laptop, path = served
    keys, present = list(laptop.gate.devices()), []
    laptop.gate.devices = lambda: list(present)  # the key is still in the bag
    window = open_window(root, path)
    type_and_enter(root, window.user, "K30712")
    pump(root, lambda: window.headline.cget("text") == "Insert your security key or card." or window._waiting)
    if window._waiting:  # the passphrase comes first for this slot kind
        answer(window, root, PASSPHRASE["K30712"])
        pump(root, lambda: window.headline.cget("text") == "Insert your security key or card.")
    present.extend(keys)  # plugged in
    pump(root, lambda: window._waiting or window.result is not None)
    if window._waiting:
        answer(window, root, PASSPHRASE["K30712"])
    pump(root, lambda: window.result is not None)
    assert window.result is not None and window.result["type"] == "result"


def test_esc_while_waiting_for_the_key_cancels(served, root) -> None:
    import time

    laptop, path = served
    laptop.gate.devices = lambda: []
    window = open_window(root, path)
    type_and_enter(root, window.user, "K20581")  # fido2-uv: the key first
    pump(root, lambda: window.headline.cget("text") == "Insert your security key or card.")
    started = time.monotonic()
    window.user.event_generate("<Escape>")
    pump(root, lambda: window.result is not None)
    assert time.monotonic() - started < 5
    assert window.result is not None and window.result["error"] == "Cancelled"


def test_recent_users_are_offered_only_where_the_policy_allows(tmp_path: Path, root) -> None:
    from sekisho.policy import Policy
    from tests.agent_helpers import POLICY

    policy = Policy(permitted_slot_kinds=POLICY.permitted_slot_kinds, argon2=POLICY.argon2,
                    allow_software_authenticators=True, network_backend="simulated", logon_recent_users=3)
    laptop = make_laptop(tmp_path / "laptop", policy)
    laptop.gate.unlock("K30712", laptop.answers("K30712"))
    laptop.gate.lock()
    with serving(laptop) as path:
        window = open_window(root, path)
        assert window.user.winfo_class() == "TCombobox" and list(window.user.cget("values")) == ["K30712"]
        window.frame.destroy()
    pool = make_laptop(tmp_path / "pool")
    with serving(pool) as path:
        window = open_window(root, path)
        assert window.user.winfo_class() == "TEntry"  # typed: no list
