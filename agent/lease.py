"""The lease (オフライン利用期限): how long a laptop may work offline since its last check-in.

A lease has an end (set at provisioning or check-in to the office's time plus the
policy's days, or moved by an extension code), optionally a number of unlocks, and is
also measured in the service's running time, so a clock held still or set back does not
hold it. It is over when any of the three runs out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from agent.clock import Reading, StateStore
from sekisho.codes import Extension
from sekisho.errors import AuthenticationFailed

RECORD = "lease"
WARN_DAYS = 3
DAY = 86400


@dataclass(frozen=True, kw_only=True)
class LeaseStatus:
    end: float  # epoch seconds
    seconds_left: float
    unlocks_left: int | None
    expired: bool
    reason: str | None  # "date", "running-time", "unlocks", "none" (never issued)

    @property
    def days_left(self) -> int:
        return max(0, int(self.seconds_left // DAY))

    @property
    def warning(self) -> bool:
        return not self.expired and self.seconds_left < WARN_DAYS * DAY

    def to_json(self) -> dict[str, Any]:
        return {
            "end": dt.datetime.fromtimestamp(self.end, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if self.end else None,
            "days_left": self.days_left,
            "unlocks_left": self.unlocks_left,
            "expired": self.expired,
            "reason": self.reason,
        }


def renewed(old: dict[str, Any] | None, reading: Reading, *, office_time: float, days: int,
            max_unlocks: int = 0) -> dict[str, Any]:
    """The lease record after a renewal (extension numbers stay used)."""
    return {"start": int(office_time), "start_running": int(reading.running), "end": int(office_time + days * DAY),
            "max_unlocks": max_unlocks, "unlocks": 0, "ext_seq": (old or {}).get("ext_seq", 0)}


class Lease:
    def __init__(self, store: StateStore) -> None:
        self._store = store

    def _update(self, change: Any) -> dict[str, Any]:
        return self._store.update_state(None, RECORD, lambda old: change(old or {}))

    def renew(self, reading: Reading, *, office_time: float, days: int, max_unlocks: int = 0) -> None:
        """At provisioning or check-in: a new lease from the office's time."""
        self._update(lambda old: renewed(old, reading, office_time=office_time, days=days, max_unlocks=max_unlocks))

    def status(self, reading: Reading) -> LeaseStatus:
        state = self._store.read_state(None, RECORD)
        if not state:
            return LeaseStatus(end=0, seconds_left=0, unlocks_left=None, expired=True, reason="none")
        by_date = state["end"] - reading.wall
        # Running time since the lease began may not exceed its length either, and the
        # confirmed mark (which advances with running time) may not pass its end.
        by_running = min(state["end"] - reading.mark,
                         (state["end"] - state["start"]) - (reading.running - state["start_running"]))
        unlocks_left = state["max_unlocks"] - state["unlocks"] if state["max_unlocks"] else None
        left = min(by_date, by_running)
        reason = None
        if unlocks_left is not None and unlocks_left <= 0:
            reason = "unlocks"
        elif by_date <= 0:
            reason = "date"
        elif by_running <= 0:
            reason = "running-time"
        return LeaseStatus(end=state["end"], seconds_left=max(0.0, left), unlocks_left=unlocks_left,
                           expired=reason is not None, reason=reason)

    def count_unlock(self) -> None:
        self._update(lambda old: {**old, "unlocks": old.get("unlocks", 0) + 1} if old else old)

    def extend(self, reading: Reading, extension: Extension) -> LeaseStatus:
        """Apply an extension code (already checked against the device key): each number once."""
        end = dt.datetime.combine(extension.end, dt.time(23, 59, 59), dt.UTC).timestamp()

        def apply(old: dict[str, Any]) -> dict[str, Any]:
            if extension.sequence <= old.get("ext_seq", 0):
                raise AuthenticationFailed("This extension code was used already.",
                                           advice="Ask the helpdesk for a new extension code.")
            if end <= reading.now:
                raise AuthenticationFailed("This extension code's date has passed.",
                                           advice="Ask the helpdesk for a new extension code.")
            return {"start": int(reading.now), "start_running": int(reading.running), "end": int(end),
                    "max_unlocks": old.get("max_unlocks", 0), "unlocks": 0, "ext_seq": extension.sequence}

        self._update(apply)
        return self.status(reading)
