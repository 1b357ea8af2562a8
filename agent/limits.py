"""Guessing limits, per user (ARCHITECTURE.md, "The gate"; NIST SP 800-63B).

* After :data:`DELAY_AFTER` consecutive failures, each further attempt waits: 30 s, then
  doubling, at most an hour. Delays run on the service's running time, so no clock
  change shortens them.
* A failure counts towards **disabling** the user (after :data:`DISABLE_AFTER`) only when
  the possession factor was proven first — the user's key answered with a valid
  signature, or the user's TOTP code was right. Typing a colleague's id with wrong
  passphrases delays them but can never disable them.
* Counts are written **before** the factors are checked (and the possession count the
  moment possession is proven), and cleared only by a success; a process killed between
  the check and the answer leaves the attempt counted. Restarts and clock changes never
  reset them. Restoring an older copy of the whole store does (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.clock import StateStore
from sekisho.errors import LockedOut, UserDisabled

DELAY_AFTER = 5
DELAY_BASE = 30
DELAY_MAX = 3600
DISABLE_AFTER = 10
RECORD = "limits"


def delay_for(consecutive: int) -> int:
    """Seconds to wait after ``consecutive`` failures in a row."""
    if consecutive < DELAY_AFTER:
        return 0
    return int(min(DELAY_MAX, DELAY_BASE * 2 ** (consecutive - DELAY_AFTER)))


@dataclass(frozen=True, kw_only=True)
class LimitState:
    consecutive: int = 0
    possession: int = 0
    not_before: float = 0.0  # running time
    disabled: bool = False

    @classmethod
    def load(cls, obj: dict[str, Any] | None) -> LimitState:
        if not obj:
            return cls()
        return cls(consecutive=obj["consecutive"], possession=obj["possession"], not_before=obj["not_before"] / 1000,
                   disabled=obj["disabled"])

    def dump(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "possession": self.possession,
                "not_before": int(self.not_before * 1000), "disabled": self.disabled}

    @property
    def possession_left(self) -> int:
        return max(0, DISABLE_AFTER - self.possession)


class Limiter:
    """The counters of one user (or ``None``: the laptop's own, for extension codes)."""

    def __init__(self, store: StateStore, user_id: str | None) -> None:
        self._store = store
        self._user = user_id

    def _update(self, change: Any) -> LimitState:
        def update(old: dict[str, Any] | None) -> dict[str, Any]:
            new: LimitState = change(LimitState.load(old))
            return new.dump()

        return LimitState.load(self._store.update_state(self._user, RECORD, update))

    def state(self) -> LimitState:
        return LimitState.load(self._store.read_state(self._user, RECORD))

    def begin(self, running: float) -> LimitState:
        """Before checking any factor: refuse if disabled or waiting; count the attempt."""
        current = self.state()
        if current.disabled:
            raise UserDisabled("This staff id is disabled on this laptop after too many failed logons.",
                               advice="Call the helpdesk; IT re-enables it at check-in.")
        if running < current.not_before:
            wait = int(current.not_before - running) + 1
            raise LockedOut(f"Too many failed attempts: locked for {wait} more seconds.", retry_after=wait)

        def count(s: LimitState) -> LimitState:
            consecutive = s.consecutive + 1
            return LimitState(consecutive=consecutive, possession=s.possession, disabled=s.disabled,
                              not_before=running + delay_for(consecutive))

        return self._update(count)

    def possession_proven(self) -> LimitState:
        """The possession factor answered for the user: this attempt may count towards disabling."""

        def count(s: LimitState) -> LimitState:
            possession = s.possession + 1
            return LimitState(consecutive=s.consecutive, possession=possession, not_before=s.not_before,
                              disabled=possession >= DISABLE_AFTER)

        return self._update(count)

    def succeeded(self) -> None:
        self._update(lambda s: LimitState())

    def cancelled(self, before: LimitState) -> None:
        """The person cancelled before any factor was checked: the attempt does not count."""
        self._update(lambda s: before)

    def reset(self) -> None:
        """IT's re-enable (at check-in or by the helpdesk)."""
        self._update(lambda s: LimitState())
