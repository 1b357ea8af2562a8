"""Time the service can trust offline: a high mark that only confirmed time moves, and
the service's own running time.

* **Running time** accumulates the monotonic clock while the service runs (persisted,
  across restarts and boots). Delays and the lease's running-day count use it, so turning
  the wall clock either way neither shortens a delay nor stretches a lease.
* **The mark** is a lower bound on the true time: it advances with running time, and
  jumps only to *confirmed* times — the office's time at provisioning or check-in, or the
  time at which a TOTP code was accepted (the token agreed with the clock). A wall clock
  set far ahead for one boot therefore never becomes the mark, and cannot lock TOTP out
  once corrected.
* **Behind**: a wall clock more than :data:`TOLERANCE` seconds behind the mark is wrong:
  the gate logs it, refuses TOTP, and counts the lease from the mark.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: How far behind the mark the wall clock may be before it counts as set back.
TOLERANCE = 300.0


class StateStore(Protocol):
    def read_state(self, user_id: str | None, name: str) -> dict[str, Any] | None: ...

    def update_state(self, user_id: str | None, name: str,
                     update: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]: ...


def boot_id() -> str:
    """Identifies this boot, so monotonic readings from different boots are never compared."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: the process start stands in for the boot
        return f"process-{time.time_ns() - time.monotonic_ns()}"


@dataclass(frozen=True, kw_only=True)
class Reading:
    wall: float  # what the system clock says
    mark: float  # the confirmed lower bound on the time
    running: float  # seconds the service has run, ever

    @property
    def now(self) -> float:
        """The time to count leases with: never earlier than the mark."""
        return max(self.wall, self.mark)

    @property
    def behind(self) -> bool:
        return self.wall < self.mark - TOLERANCE


class TrustedClock:
    """Reads and advances the persisted clock state (laptop-wide record ``clock``)."""

    def __init__(self, store: StateStore, *, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, boot: str | None = None) -> None:
        self._store = store
        self._wall = wall
        self._monotonic = monotonic
        self._boot = boot or boot_id()

    def _advance(self, confirm: float | None) -> Reading:
        # Kept in whole milliseconds: the store's records hold no floating point.
        wall, mono = self._wall(), int(self._monotonic() * 1000)

        def update(old: dict[str, Any] | None) -> dict[str, Any]:
            state = old or {"mark": 0, "running": 0, "boot": self._boot, "mono": mono}
            same_boot = state["boot"] == self._boot and mono >= state["mono"]
            elapsed = mono - state["mono"] if same_boot else 0
            mark = state["mark"] + elapsed
            if confirm is not None:
                mark = max(mark, int(confirm * 1000))
            return {"mark": mark, "running": state["running"] + elapsed, "boot": self._boot, "mono": mono}

        state = self._store.update_state(None, "clock", update)
        return Reading(wall=wall, mark=state["mark"] / 1000, running=state["running"] / 1000)

    def read(self) -> Reading:
        return self._advance(None)

    def confirm(self, when: float) -> Reading:
        """``when`` is known to have passed (office time, an accepted TOTP code)."""
        return self._advance(when)
