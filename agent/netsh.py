"""The closed-SIM link on Windows: ``netsh mbn`` and ``netsh interface``, run by the service.

The same steps as the NetworkManager backend, through a command runner (the service
runs as LocalSystem, so netsh has the rights it needs):

- **isolate**: ``netsh interface show interface``; every connected interface other than
  the cellular one is disabled (``set interface name=… admin=disabled``), recorded first
  in ``network.json``; then listed again — one still connected and unlocking fails closed.
- **bring_up**: ``netsh mbn show interfaces`` (the cellular interface, signal, provider),
  ``show readyinfo`` (the SIM's ICC Id and subscriber id: the wrong SIM is refused),
  ``add profile`` from an MBN profile XML, ``connect … connmode=name``, then ``show
  connection`` until it says connected, up to ``network.connect_timeout``.
- **check**: the profile still connected; no other interface connected.
- **bring_down**, **restore**, **cleanup**: ``disconnect``, ``delete profile``, interfaces
  enabled again.

``netsh mbn add profile`` only reads a file, and the profile holds the APN password: the
file is written in the service's own state directory (readable by LocalSystem and
Administrators only), never in a temp directory, and deleted as soon as netsh has read
it. The labels parsed are those of an English-language Windows (docs/network.md lists
what has not yet been tried on a real laptop).

None of this runs here: the tests check the commands built and the parsing of output
samples (tests/samples/netsh/).
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from agent.network import (
    LINK_LOST,
    OTHER_ROUTE,
    LinkInfo,
    NetworkError,
    OfficeProbe,
    Progress,
    StateFile,
    WatchFinding,
)
from sekisho.files import atomic_write
from sekisho.policy import Policy

log = logging.getLogger(__name__)

PROFILE_NAME = "Sekisho closed SIM"
STATE_FILE = "network.json"
PROFILE_FILE = "mbn-profile.xml"

#: Runs a command line, returns (exit code, output).
Runner = Callable[[list[str]], tuple[int, str]]


def run_netsh(args: list[str]) -> tuple[int, str]:  # pragma: no cover - Windows only
    done = subprocess.run(["netsh", *args], capture_output=True, text=True, check=False,  # noqa: S603, S607
                          creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0), timeout=60)
    return done.returncode, done.stdout + done.stderr


# --- parsing --------------------------------------------------------------------------------


def parse_blocks(text: str) -> list[dict[str, str]]:
    """``Label : value`` blocks (``show interfaces``, ``show readyinfo``, ``show connection``)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s+([^:]+?)\s*:\s?(.*)$", line)
        if match:
            current[match.group(1).strip()] = match.group(2).strip()
        elif current and not line.strip():
            blocks.append(current)
            current = {}
    if current:
        blocks.append(current)
    return blocks


def parse_interface_table(text: str) -> list[dict[str, str]]:
    """``netsh interface show interface``: admin state, state, type and name per row."""
    rows = []
    for line in text.splitlines():
        cols = re.split(r"\s{2,}", line.strip(), maxsplit=3)
        if len(cols) == 4 and cols[0] in ("Enabled", "Disabled"):
            rows.append({"admin": cols[0], "state": cols[1], "type": cols[2], "name": cols[3]})
    return rows


def profile_xml(network: Mapping[str, str], subscriber_id: str) -> str:
    """An MBN profile (schema http://www.microsoft.com/networking/WWAN/profile/v1), manual connect."""
    cred = ""
    if network.get("user") or network.get("password"):
        cred = (f"    <UserLogonCred>\n      <UserName>{escape(network.get('user', ''))}</UserName>\n"
                f"      <Password>{escape(network.get('password', ''))}</Password>\n    </UserLogonCred>\n")
    return ("<?xml version=\"1.0\"?>\n"
            "<MBNProfile xmlns=\"http://www.microsoft.com/networking/WWAN/profile/v1\">\n"
            f"  <Name>{PROFILE_NAME}</Name>\n  <IsDefault>false</IsDefault>\n"
            "  <ProfileCreationType>UserProvisioned</ProfileCreationType>\n"
            f"  <SubscriberID>{escape(subscriber_id)}</SubscriberID>\n"
            f"  <SimIccID>{escape(network['iccid'])}</SimIccID>\n"
            "  <AutoConnectOnInternet>false</AutoConnectOnInternet>\n  <ConnectionMode>manual</ConnectionMode>\n"
            f"  <Context>\n    <AccessString>{escape(network['apn'])}</AccessString>\n{cred}"
            "    <Compression>DISABLE</Compression>\n    <AuthProtocol>CHAP</AuthProtocol>\n  </Context>\n"
            "</MBNProfile>\n")


class NetshNetwork(OfficeProbe):
    """The Windows backend (see the module's docstring)."""

    def __init__(self, policy: Policy, state_dir: Path, *, runner: Runner = run_netsh, poll: float = 2.0,
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.policy = policy
        self.state_dir = Path(state_dir)
        self.state = StateFile(self.state_dir / STATE_FILE)
        self.runner = runner
        self._poll = poll
        self._monotonic = monotonic
        self._sleep = sleep
        self.interface: str | None = None

    def _netsh(self, *args: str, step: str) -> str:
        code, out = self.runner(list(args))
        if code != 0:
            first = next((line.strip() for line in out.splitlines() if line.strip()), f"exit code {code}")
            raise NetworkError(f"netsh {' '.join(args[:2])} failed: {first}", step=step,
                               advice="Try again; if it persists, call the helpdesk.")
        return out

    def _cellular(self, step: str) -> dict[str, str]:
        blocks = [b for b in parse_blocks(self._netsh("mbn", "show", "interfaces", step=step)) if "Name" in b]
        if not blocks:
            raise NetworkError("No mobile broadband modem is connected.", step=step,
                               advice="Plug in the closed-network SIM dongle (閉域SIM) and try again.")
        return blocks[0]

    def _others(self, cellular: str | None) -> list[dict[str, str]]:
        rows = parse_interface_table(self._netsh("interface", "show", "interface", step="isolate"))
        return [r for r in rows if r["name"] != cellular and r["name"] != (self.interface or "")]

    def isolate(self, progress: Progress) -> None:
        progress("isolate", {})
        with contextlib.suppress(NetworkError):
            self.interface = self._cellular("isolate")["Name"]
        state = self.state.read()
        connected = [r["name"] for r in self._others(self.interface) if r["state"] == "Connected"]
        state["disabled"] = sorted(set(state.get("disabled", [])) | set(connected))
        self.state.write(state)
        problems = []
        for name in connected:
            try:
                self._netsh("interface", "set", "interface", f"name={name}", "admin=disabled", step="isolate")
            except NetworkError as exc:
                problems.append(f"{name} ({exc})")
        still = [r["name"] for r in self._others(self.interface) if r["state"] == "Connected"]
        problems += [f"{name} (still connected)" for name in still if not any(p.startswith(name) for p in problems)]
        if problems:
            raise NetworkError("Other networks could not be taken down, so the closed network stays off: "
                               + "; ".join(problems) + ".", step="isolate",
                               advice="Turn Wi-Fi off, unplug network cables and USB tethering, then try again.")
        progress("isolated", {"interfaces": connected})

    def bring_up(self, network: Mapping[str, str], progress: Progress) -> LinkInfo:
        started = self._monotonic()
        if not network.get("iccid") or not network.get("apn"):
            raise NetworkError("The grant holds no closed-network SIM profile (APN, ICCID).", step="bring_up",
                               advice="The helpdesk must re-provision this user with the SIM's profile.")
        progress("modem", {})
        cellular = self._cellular("bring_up")
        name = self.interface = cellular["Name"]
        ready = next(iter(parse_blocks(self._netsh("mbn", "show", "readyinfo", f"interface={name}",
                                                   step="bring_up"))), {})
        iccid = ready.get("SIM ICC Id", "")
        if iccid != network["iccid"]:
            held = f"SIM …{iccid[-4:]}" if iccid else f"no readable SIM ({ready.get('State', 'unknown')})"
            raise NetworkError(f"Wrong SIM dongle: this laptop's closed-network SIM ends …{network['iccid'][-4:]}, "
                               f"the modem holds {held}.", step="bring_up",
                               advice="Use the SIM dongle issued with this laptop; if it was swapped, the helpdesk "
                                      "must re-provision.")
        state = self.state.read()
        state.update(profile=PROFILE_NAME, interface=name)
        self.state.write(state)
        profile = self.state_dir / PROFILE_FILE
        try:
            atomic_write(profile, profile_xml(network, ready.get("Subscriber Id", "")).encode("utf-8"))
            self._netsh("mbn", "add", "profile", f"interface={name}", f"name={profile}", step="bring_up")
        finally:
            with contextlib.suppress(FileNotFoundError):
                profile.unlink()
        progress("connecting", {"elapsed_s": 0, "state": "connecting"})
        self._netsh("mbn", "connect", f"interface={name}", "connmode=name", f"name={PROFILE_NAME}", step="bring_up")
        deadline = started + self.policy.network_connect_timeout
        while True:
            connection = next(iter(parse_blocks(self._netsh("mbn", "show", "connection", f"interface={name}",
                                                            step="bring_up"))), {})
            activation = connection.get("Activation State", "")
            if activation == "Connected":
                break
            if self._monotonic() >= deadline:
                raise NetworkError(f"The closed-network link did not come up within "
                                   f"{self.policy.network_connect_timeout} seconds.", step="bring_up",
                                   advice="Move to a place with better signal and try again.")
            progress("connecting", {"elapsed_s": round(self._monotonic() - started),
                                    "state": activation.lower() or "connecting"})
            self._sleep(self._poll)
        signal = re.match(r"(\d+)", cellular.get("Signal", ""))
        return LinkInfo(seconds=self._monotonic() - started, signal=int(signal.group(1)) if signal else None,
                        technology=cellular.get("Cellular class", "").lower() or None,
                        operator=cellular.get("Provider Name") or None)

    def check(self) -> WatchFinding | None:
        if self.interface is None:
            return None
        try:
            connection = next(iter(parse_blocks(self._netsh("mbn", "show", "connection",
                                                            f"interface={self.interface}", step="watch"))), {})
            if connection.get("Activation State") != "Connected":
                return WatchFinding(LINK_LOST, self.interface)
            for row in self._others(self.interface):
                if row["state"] == "Connected":
                    return WatchFinding(OTHER_ROUTE, row["name"])
        except NetworkError as exc:
            log.warning("network watch: %s", exc)
        return None

    def bring_down(self) -> None:
        state = self.state.read()
        name = self.interface or state.get("interface")
        if name and state.get("profile"):
            for args in (("mbn", "disconnect", f"interface={name}"),
                         ("mbn", "delete", "profile", f"interface={name}", f"name={PROFILE_NAME}")):
                try:
                    self._netsh(*args, step="bring_down")
                except NetworkError as exc:
                    log.warning("%s", exc)
        state.pop("profile", None)
        self.state.write(state)

    def restore(self) -> None:
        state = self.state.read()
        if self.policy.network_restore:
            for name in state.get("disabled", []):
                try:
                    self._netsh("interface", "set", "interface", f"name={name}", "admin=enabled", step="restore")
                except NetworkError as exc:
                    log.warning("%s", exc)
        self.interface = None
        self.state.write({})

    def cleanup(self) -> dict[str, Any] | None:
        state = self.state.read()
        if not state:
            return None
        found = {"sim_link": bool(state.get("profile")), "interfaces": state.get("disabled", [])}
        with contextlib.suppress(FileNotFoundError):  # a crash between writing and netsh reading it
            (self.state_dir / PROFILE_FILE).unlink()
        self.bring_down()
        self.restore()
        return found
