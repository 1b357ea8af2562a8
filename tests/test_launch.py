"""The launcher, with a stand-in Citrix executable (Citrix itself cannot run here): it
records its arguments and runs until signalled — or ignores the polite signal."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from agent.launch import Launcher, LaunchRefused, citrix_command
from sekisho.policy import Policy

STAND_IN = """#!{python}
import json, signal, sys, time
from pathlib import Path
out = Path({out!r})
out.write_text(json.dumps(sys.argv[1:]))
if {stubborn!r}:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: (out.with_suffix(".closed").write_text("closed"), sys.exit(0)))
while True:
    time.sleep(0.05)
"""

STORE = "https://citrix.city.lg.jp/Citrix/Store/discovery"
APPS = ("住民記録システム", "証明書交付")


def stand_in(directory: Path, name: str = "storebrowse", *, stubborn: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / name
    program.write_text(STAND_IN.format(python=sys.executable, out=str(directory / "args.json"), stubborn=stubborn))
    program.chmod(0o755)
    return program


def wait_for(path: Path) -> None:
    for _ in range(100):
        if path.exists() and path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_the_right_arguments_per_user_and_app(tmp_path: Path) -> None:
    program = stand_in(tmp_path / "citrix")
    launcher = Launcher(Policy(launch_allowed=(str(program),)))
    launcher.start(STORE, APPS, ["証明書交付"])
    wait_for(tmp_path / "citrix" / "args.json")
    assert json.loads((tmp_path / "citrix" / "args.json").read_text()) == [
        "-L", "証明書交付", "https://citrix.city.lg.jp/Citrix/Store/discovery"]
    assert launcher.close().to_json() == {"closed": 1, "killed": 0}
    assert (tmp_path / "citrix" / "args.closed").read_text() == "closed"  # asked politely, and it closed


def test_windows_and_linux_command_lines() -> None:
    windows = r"C:\Program Files (x86)\Citrix\ICA Client\SelfServicePlugin\SelfService.exe"
    assert citrix_command(windows, STORE, "住民記録システム") == [windows, "-qlaunch", "住民記録システム"]
    assert citrix_command("/opt/Citrix/ICAClient/selfservice", STORE, "x")[-2:] == ["-qlaunch", "x"]
    with pytest.raises(LaunchRefused, match="not a Citrix launcher"):
        citrix_command("/usr/bin/xterm", STORE, "x")


def test_programs_outside_the_allow_list_and_apps_outside_the_grant_are_refused(tmp_path: Path) -> None:
    program = stand_in(tmp_path / "citrix")
    with pytest.raises(LaunchRefused, match="not in the policy's list"):
        Launcher(Policy(launch_allowed=("/opt/Citrix/ICAClient/util/storebrowse",)), str(program)).start(STORE, APPS)
    with pytest.raises(LaunchRefused, match="not in the policy's list"):
        Launcher(Policy()).start(STORE, APPS)
    with pytest.raises(LaunchRefused, match="Not permitted by your grant"):
        Launcher(Policy(launch_allowed=(str(program),))).start(STORE, APPS, ["税務システム"])
    assert not (tmp_path / "citrix" / "args.json").exists()  # nothing was started


def test_a_program_that_ignores_the_polite_close_is_killed(tmp_path: Path) -> None:
    program = stand_in(tmp_path / "citrix", stubborn=True)
    launcher = Launcher(Policy(launch_allowed=(str(program),), launch_close_timeout=1))
    (launched,) = launcher.start(STORE, APPS, ["証明書交付"])
    wait_for(tmp_path / "citrix" / "args.json")
    assert launcher.close().to_json() == {"closed": 0, "killed": 1}
    assert launched.process.returncode is not None and launched.process.returncode < 0
