"""What unlocking does to the network, behind one interface.

The gate calls, in order: ``isolate`` (interfaces that reach outside go down; fail
closed), ``bring_up`` (the closed-SIM link, with progress), ``probe`` (the office
endpoint), and on lock or on a failed step ``bring_down`` and ``restore``. The
NetworkManager/ModemManager and ``netsh mbn`` backends arrive with the link issue;
:class:`SimulatedNetwork` stands in for them here (no modem can run in tests) and can
be told to fail at any step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sekisho.errors import SekishoError

log = logging.getLogger(__name__)

#: Progress: (step, details) — e.g. ("connecting", {"elapsed_s": 12}).
Progress = Callable[[str, Mapping[str, Any]], None]


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


class NetworkBackend(Protocol):
    def isolate(self, progress: Progress) -> None: ...

    def bring_up(self, network: Mapping[str, str], progress: Progress) -> LinkInfo: ...

    def probe(self, network: Mapping[str, str], progress: Progress) -> float: ...

    def bring_down(self) -> None: ...

    def restore(self) -> None: ...


@dataclass
class SimulatedNetwork:
    """A network that does nothing but remember, report and fail on request."""

    fail_at: str | None = None  # "isolate", "bring_up", "probe"
    link: LinkInfo = field(default_factory=lambda: LinkInfo(seconds=75, rtt_ms=140, signal=3, technology="lte",
                                                            operator="closed-demo"))
    calls: list[str] = field(default_factory=list)
    up: bool = False
    isolated: bool = False

    def _step(self, name: str, progress: Progress, advice: str) -> None:
        self.calls.append(name)
        progress(name, {})
        if self.fail_at == name:
            raise NetworkError(f"Simulated failure at {name}.", step=name, advice=advice)

    def isolate(self, progress: Progress) -> None:
        self._step("isolate", progress, "Turn off Wi-Fi and unplug network cables, then try again.")
        self.isolated = True

    def bring_up(self, network: Mapping[str, str], progress: Progress) -> LinkInfo:
        self._step("bring_up", progress, "Check that the closed-network SIM dongle is plugged in.")
        self.up = True
        return self.link

    def probe(self, network: Mapping[str, str], progress: Progress) -> float:
        self._step("probe", progress, "Move to a place with better signal and try again.")
        return self.link.rtt_ms or 0.0

    def bring_down(self) -> None:
        self.calls.append("bring_down")
        self.up = False

    def restore(self) -> None:
        self.calls.append("restore")
        self.isolated = False
