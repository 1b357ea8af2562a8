"""Start what the grant permits — Citrix Workspace / Receiver, or another VDI client — and
close it at lock.

Run in the user's desktop session (by the tray; until it exists, by the terminal client),
never by the service: apps must open on the user's screen. Only programs named in the
signed policy's ``launch.allowed`` are ever started, with arguments built here from the
grant (its store URL and apps), never from anything the user typed. At lock each program
is asked to close (SIGTERM / TerminateProcess), then killed after
``launch.close_timeout`` seconds; both are reported for the trail.
"""

from __future__ import annotations

import logging
import ntpath
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from sekisho.errors import SekishoError
from sekisho.policy import Policy

log = logging.getLogger(__name__)

#: Where Citrix puts its launchers by default (IT lists the one in use in the policy).
CITRIX_PATHS = (
    "/opt/Citrix/ICAClient/util/storebrowse",
    r"C:\Program Files (x86)\Citrix\ICA Client\SelfServicePlugin\SelfService.exe",
    r"C:\Program Files\Citrix\ICA Client\SelfServicePlugin\SelfService.exe",
)


class LaunchRefused(SekishoError):
    """A program outside the policy's allow-list, or nothing to launch."""

    advice = "Ask IT to list the VDI client in the policy (launch.allowed)."


def _name(program: str) -> str:
    return (ntpath.basename(program) if "\\" in program else PurePosixPath(program).name).lower()


def citrix_command(program: str, store: str, app: str) -> list[str]:
    """The command line that opens ``app`` from the grant's store with this Citrix launcher."""
    name = _name(program)
    if name == "selfservice.exe":  # Windows: Citrix Workspace's self-service plug-in
        return [program, "-qlaunch", app]
    if name == "storebrowse":  # Linux: the ICA client's store browser launches by name
        if not store:
            raise LaunchRefused("The grant names no Citrix store (store_url).")
        return [program, "-L", app, store]
    if name == "selfservice":  # Linux: the self-service UI
        return [program, "--icaroot", str(PurePosixPath(program).parent), "-qlaunch", app]
    if name == "wfica":
        raise LaunchRefused("wfica opens ICA files, not apps by name: list storebrowse or selfservice instead.")
    raise LaunchRefused(f"{program} is not a Citrix launcher Sekisho knows.")


def vdi_command(program: str, connection: Mapping[str, str], app: str) -> list[str]:
    """The command line for ``app`` with this VDI client, from the grant's connection details.

    Citrix (``store_url``), Microsoft Remote Desktop / FreeRDP (``rdp_host``; FreeRDP opens
    the app as a RemoteApp), VMware Horizon (``horizon_server``; the app is the desktop or
    application pool name).
    """
    name = _name(program)
    rdp, horizon = connection.get("rdp_host", ""), connection.get("horizon_server", "")
    if name in ("mstsc.exe", "xfreerdp", "xfreerdp3", "wlfreerdp"):
        if not rdp:
            raise LaunchRefused("The grant names no Remote Desktop host (rdp_host).")
        if name == "mstsc.exe":
            return [program, f"/v:{rdp}"]
        return [program, f"/v:{rdp}", f"/app:program:||{app}" if name == "xfreerdp3" else f"/app:||{app}"]
    if name in ("vmware-view", "vmware-view.exe"):
        if not horizon:
            raise LaunchRefused("The grant names no Horizon server (horizon_server).")
        dash = "-" if name.endswith(".exe") else "--"
        return [program, f"{dash}serverURL", horizon, f"{dash}desktopName", app]
    return citrix_command(program, connection.get("store_url", ""), app)


@dataclass
class Launched:
    app: str
    command: list[str]
    process: subprocess.Popen[bytes] = field(repr=False)


@dataclass
class Closing:
    closed: int = 0
    killed: int = 0

    def to_json(self) -> dict[str, int]:
        return {"closed": self.closed, "killed": self.killed}


class Launcher:
    """Starts the grant's apps with the policy's allowed client and closes them at lock."""

    def __init__(self, policy: Policy, program: str | None = None) -> None:
        self.policy = policy
        self.program = program or next((p for p in policy.launch_allowed if os.path.exists(p)),
                                       policy.launch_allowed[0] if policy.launch_allowed else "")
        self.running: list[Launched] = []

    @property
    def client(self) -> str:
        """The client's program name (for the trail: never its arguments)."""
        return _name(self.program)

    def _allowed(self, program: str) -> None:
        if program not in self.policy.launch_allowed:
            raise LaunchRefused(f"{program or 'No program'} is not in the policy's list of programs to start.")

    def start(self, connection: Mapping[str, str], permitted: Sequence[str],
              apps: Sequence[str] | None = None) -> list[Launched]:
        """One process per permitted app (or the ``apps`` asked for, if they are permitted);
        ``connection`` is the grant's (``store_url``, ``rdp_host``, ``horizon_server``).
        A whole-desktop client (``mstsc.exe``) is started once."""
        self._allowed(self.program)
        wanted = list(apps) if apps is not None else list(permitted)
        refused = [a for a in wanted if a not in permitted]
        if refused:
            raise LaunchRefused(f"Not permitted by your grant: {', '.join(refused)}.",
                                advice="Your duty's apps are set by IT (roles).")
        started: list[Launched] = []
        for app in wanted:
            command = vdi_command(self.program, connection, app)
            if any(s.command == command for s in started):
                continue
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # noqa: S603
                                       stderr=subprocess.DEVNULL, start_new_session=sys.platform != "win32")
            log.info("started %s for %s", _name(self.program), app)
            started.append(Launched(app=app, command=command, process=process))
        self.running += started
        return started

    def close(self) -> Closing:
        """Ask each started program to close; kill what is still running after the timeout."""
        result = Closing()
        for launched in self.running:
            if launched.process.poll() is None:
                launched.process.terminate()
        for launched in self.running:
            try:
                launched.process.wait(self.policy.launch_close_timeout)
                result.closed += 1
            except subprocess.TimeoutExpired:
                launched.process.kill()
                launched.process.wait(10)
                result.killed += 1
        self.running = []
        return result


def launcher_for(user: Mapping[str, Any]) -> Launcher:
    """The launcher the unlocked user's status document allows (its ``launch`` part)."""
    allowed = user.get("launch", {})
    return Launcher(Policy(launch_allowed=tuple(allowed.get("allowed", [])),
                           launch_close_timeout=int(allowed.get("close_timeout", 10))))
