"""The launcher, with a stand-in Citrix executable (Citrix itself cannot run here): it
records its arguments and runs until signalled — or ignores the polite signal."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from agent.launch import Launcher, LaunchRefused, citrix_command, vdi_command
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

STORE = {"store_url": "https://citrix.city.lg.jp/Citrix/Store/discovery"}
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
    url = STORE["store_url"]
    windows = r"C:\Program Files (x86)\Citrix\ICA Client\SelfServicePlugin\SelfService.exe"
    assert citrix_command(windows, url, "住民記録システム") == [windows, "-qlaunch", "住民記録システム"]
    assert citrix_command("/opt/Citrix/ICAClient/selfservice", url, "x") == [
        "/opt/Citrix/ICAClient/selfservice", "--icaroot", "/opt/Citrix/ICAClient", "-qlaunch", "x"]
    with pytest.raises(LaunchRefused, match="not a Citrix launcher"):
        citrix_command("/usr/bin/xterm", url, "x")
    with pytest.raises(LaunchRefused, match="no Citrix store"):
        citrix_command("/opt/Citrix/ICAClient/util/storebrowse", "", "x")
    with pytest.raises(LaunchRefused, match="ICA files"):
        citrix_command("/opt/Citrix/ICAClient/wfica", url, "x")


def test_other_vdi_clients_under_the_same_allow_list() -> None:
    rdp = {"rdp_host": "rds.city.lg.jp"}
    assert vdi_command(r"C:\Windows\System32\mstsc.exe", rdp, "x") == [r"C:\Windows\System32\mstsc.exe",
                                                                       "/v:rds.city.lg.jp"]
    assert vdi_command("/usr/bin/xfreerdp", rdp, "税務") == ["/usr/bin/xfreerdp", "/v:rds.city.lg.jp", "/app:||税務"]
    assert vdi_command("/usr/bin/xfreerdp3", rdp, "税務")[-1] == "/app:program:||税務"
    horizon = {"horizon_server": "https://vdi.city.lg.jp"}
    assert vdi_command("/usr/bin/vmware-view", horizon, "窓口") == [
        "/usr/bin/vmware-view", "--serverURL", "https://vdi.city.lg.jp", "--desktopName", "窓口"]
    assert vdi_command(r"C:\Program Files\VMware\vmware-view.exe", horizon, "窓口")[1] == "-serverURL"
    with pytest.raises(LaunchRefused, match="no Remote Desktop host"):
        vdi_command("/usr/bin/xfreerdp", {}, "x")
    with pytest.raises(LaunchRefused, match="no Horizon server"):
        vdi_command("/usr/bin/vmware-view", rdp, "x")


def test_a_whole_desktop_client_starts_once(tmp_path: Path) -> None:
    program = stand_in(tmp_path / "rdp", "mstsc.exe")
    launcher = Launcher(Policy(launch_allowed=(str(program),)))
    launched = launcher.start({"rdp_host": "rds.city.lg.jp"}, APPS)
    assert len(launched) == 1
    wait_for(tmp_path / "rdp" / "args.json")
    assert json.loads((tmp_path / "rdp" / "args.json").read_text()) == ["/v:rds.city.lg.jp"]
    assert launcher.close().closed == 1


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
