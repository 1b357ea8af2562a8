"""What unlocking does to the network, behind one interface.

The gate calls, in order: ``isolate`` (interfaces that reach outside go down; fail
closed), ``bring_up`` (the closed-SIM link, with progress), ``probe`` (the office
endpoint), and on lock or on a failed step ``bring_down`` and ``restore``. While
unlocked the service calls ``check`` every few seconds (the watch: the link lost, or a
second default route); at start it calls ``cleanup`` (what a crash left behind).

Backends: :mod:`agent.nm` (NetworkManager + ModemManager over D-Bus, Linux),
:mod:`agent.netsh` (``netsh mbn``, Windows) and :class:`SimulatedNetwork` (the demo and
tests: no modem runs there), chosen by the policy's ``network.backend``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sekisho.errors import SekishoError
from sekisho.files import atomic_write
from sekisho.policy import Policy

log = logging.getLogger(__name__)

#: Progress: (step, details) — e.g. ("connecting", {"elapsed_s": 12}).
Progress = Callable[[str, Mapping[str, Any]], None]

#: What the watch found: the SIM link is gone, or another interface has a default route.
LINK_LOST = "link-lost"
OTHER_ROUTE = "other-route"


class NetworkError(SekishoError):
    """A step of bringing the closed network up failed; everything done was undone."""

    def __init__(self, message: str, *, step: str, advice: str | None = None) -> None:
        super().__init__(message, advice=advice)
        self.step = step


@dataclass(frozen=True, kw_only=True)
class LinkInfo:
    seconds: float = 0.0
    rtt_ms: float | None = None
    signal: int | None = None
    technology: str | None = None
    operator: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds), "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms),
                "signal": self.signal, "technology": self.technology, "operator": self.operator}


@dataclass(frozen=True)
class WatchFinding:
    """Something the watch saw while unlocked: ``kind`` is LINK_LOST or OTHER_ROUTE."""

    kind: str
    interface: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "interface": self.interface}


class NetworkBackend(Protocol):
    def isolate(self, progress: Progress) -> None: ...

    def bring_up(self, network: Mapping[str, str], progress: Progress) -> LinkInfo: ...

    def probe(self, network: Mapping[str, str], progress: Progress) -> float | None: ...

    def check(self) -> WatchFinding | None: ...

    def bring_down(self) -> None: ...

    def restore(self) -> None: ...

    def cleanup(self) -> dict[str, Any] | None: ...


class StateFile:
    """What a backend changed, written before it changes it (``network.json`` in the service's
    state directory): ``restore`` and, after a crash, ``cleanup`` put it back from here."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            log.error("%s is unreadable; treating it as empty", self.path)
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, state: dict[str, Any]) -> None:
        """Atomically; an empty state removes the file."""
        if state:
            atomic_write(self.path, json.dumps(state, sort_keys=True).encode())
        else:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def probe_office(target: str, tries: int, progress: Progress, *, timeout: float = 5.0) -> float | None:
    """TCP-connect to the office endpoint ``host:port``; the best round trip in ms.

    Several tries, because the first packets over a fresh mobile link are often lost.
    No target (``network.probe`` empty): nothing is probed and None is returned.
    """
    if not target:
        return None
    host, _, port = target.rpartition(":")
    failures: list[str] = []
    best: float | None = None
    for attempt in range(1, tries + 1):
        progress("probing", {"target": target, "try": attempt})
        started = time.monotonic()
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                rtt = (time.monotonic() - started) * 1000
        except OSError as exc:
            failures.append(exc.strerror or type(exc).__name__)
            continue
        best = rtt if best is None else min(best, rtt)
        if attempt >= 2 or attempt == tries:  # two answers are enough for a figure
            break
    if best is None:
        raise NetworkError(f"The office endpoint {target} did not answer over the closed network "
                           f"({tries} tries: {failures[-1] if failures else 'no answer'}).", step="probe",
                           advice="Move to a place with better signal and try again; if it persists, call the "
                                  "helpdesk.")
    return best


class OfficeProbe:
    """The probe both real backends share: the policy's office endpoint over the new link."""

    policy: Policy

    def probe(self, network: Mapping[str, str], progress: Progress) -> float | None:
        return probe_office(self.policy.network_probe, self.policy.network_probe_tries, progress)


def default_route_interfaces(route_file: Path = Path("/proc/net/route"),
                             ipv6_route_file: Path = Path("/proc/net/ipv6_route")) -> set[str]:
    """The interfaces the kernel routing table has a default route through (IPv4 and IPv6)."""
    found: set[str] = set()
    try:
        for line in route_file.read_text().splitlines()[1:]:
            cols = line.split()
            # Iface Destination Gateway Flags RefCnt Use Metric Mask ...; RTF_UP = 1
            if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000" and int(cols[3], 16) & 1:
                found.add(cols[0])
    except (OSError, ValueError):
        pass
    try:
        for line in ipv6_route_file.read_text().splitlines():
            cols = line.split()
            # dest dest_len src src_len next_hop metric refcnt use flags iface
            if len(cols) >= 10 and cols[0] == "0" * 32 and cols[1] == "00" and cols[9] != "lo":
                found.add(cols[9])
    except (OSError, ValueError):
        pass
    return found


def report_shaped_link(rng: random.Random | None = None) -> LinkInfo:
    """Figures like the trial's six sites: up in 63 to 110 s, 135 to 155 ms (simulated, not secret)."""
    rng = rng or random.Random()  # noqa: S311
    return LinkInfo(seconds=rng.uniform(63, 110), rtt_ms=rng.uniform(135, 155), signal=60, technology="lte",
                    operator="closed-demo")


@dataclass
class SimulatedNetwork:
    """A network that does nothing but remember, report and fail on request.

    Its figures are shaped like the trial's (the report, §4(1): link up in 1:03 to 1:50,
    ping 135 to 155 ms). ``delay`` is the real time the bring-up takes (the demo's is
    short; the figures reported are the simulated ones).
    """

    fail_at: str | None = None  # "isolate", "bring_up", "probe"
    link: LinkInfo = field(default_factory=lambda: report_shaped_link())
    delay: float = 0.0
    calls: list[str] = field(default_factory=list)
    up: bool = False
    isolated: bool = False
    finding: WatchFinding | None = None  # what the next check() reports (tests)
    leftover: dict[str, Any] | None = None  # what cleanup() finds (tests)

    def _step(self, name: str, progress: Progress, advice: str) -> None:
        self.calls.append(name)
        progress({"bring_up": "modem", "probe": "probing"}.get(name, name), {})
        if self.fail_at == name:
            raise NetworkError(f"Simulated failure at {name}.", step=name, advice=advice)

    def isolate(self, progress: Progress) -> None:
        self._step("isolate", progress, "Turn off Wi-Fi and unplug network cables, then try again.")
        self.isolated = True
        progress("isolated", {"interfaces": []})

    def bring_up(self, network: Mapping[str, str], progress: Progress) -> LinkInfo:
        self._step("bring_up", progress, "Check that the closed-network SIM dongle is plugged in.")
        ticks = 4 if self.delay else 0
        for tick in range(1, ticks + 1):
            time.sleep(self.delay / ticks)
            progress("connecting", {"elapsed_s": round(self.link.seconds * tick / ticks), "state": "activating"})
        self.up = True
        self.finding = None
        return self.link

    def probe(self, network: Mapping[str, str], progress: Progress) -> float | None:
        self._step("probe", progress, "Move to a place with better signal and try again.")
        return self.link.rtt_ms

    def check(self) -> WatchFinding | None:
        return self.finding if self.up else None

    def bring_down(self) -> None:
        self.calls.append("bring_down")
        self.up = False

    def restore(self) -> None:
        self.calls.append("restore")
        self.isolated = False

    def cleanup(self) -> dict[str, Any] | None:
        self.calls.append("cleanup")
        found, self.leftover = self.leftover, None
        return found


def backend_for(policy: Policy, state_dir: Path) -> NetworkBackend:
    """The backend the policy names ("auto": the platform's own)."""
    name = policy.network_backend
    if name == "auto":
        name = "netsh" if sys.platform == "win32" else "networkmanager"
    if name == "simulated":
        log.warning("the network is SIMULATED (policy network.backend): nothing is isolated or brought up")
        return SimulatedNetwork()
    if name == "netsh":
        from agent.netsh import NetshNetwork

        return NetshNetwork(policy, state_dir)
    from agent.nm import NetworkManagerNetwork

    return NetworkManagerNetwork(policy, state_dir)
