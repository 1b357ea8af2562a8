"""Recovery codes IT issued (IT's log) against recoveries used on laptops (their trails).

Every recovery on a laptop should follow a ``recovery-code-issued`` entry in IT's log for
the same laptop, user and key id; an issued code never used is worth a call (was the
person helped some other way? was the code written down somewhere?); a recovery with no
issue record means a code reached a laptop outside the helpdesk's procedure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sekisho.trail.format import EventType, TrailEntry


@dataclass(frozen=True, order=True)
class CodeUse:
    device: str
    user: str
    key_id: str
    time: str = field(compare=False)


@dataclass
class Reconciliation:
    matched: list[tuple[CodeUse, CodeUse]] = field(default_factory=list)
    issued_unused: list[CodeUse] = field(default_factory=list)
    used_without_issue: list[CodeUse] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.used_without_issue

    def to_json(self) -> dict[str, Any]:
        def one(c: CodeUse) -> dict[str, str]:
            return {"device": c.device, "user": c.user, "key_id": c.key_id, "time": c.time}

        return {"matched": [{"issued": one(i), "used": one(u)} for i, u in self.matched],
                "issued_unused": [one(c) for c in self.issued_unused],
                "used_without_issue": [one(c) for c in self.used_without_issue], "clean": self.clean}


def _uses(entries: Iterable[TrailEntry], event: EventType) -> list[CodeUse]:
    """The code events of one kind. IT's log names the laptop in the details; a laptop's
    trail names itself in the body."""
    out = []
    for e in entries:
        body = e.body
        if body and body.get("event") == event:
            details = body.get("details") or {}
            device = details.get("device", body.get("device"))
            out.append(CodeUse(str(device), str(body.get("user")), str(details.get("key_id")), e.header.time))
    return out


def reconcile(it_log: Iterable[TrailEntry], laptop_trails: Iterable[Iterable[TrailEntry]]) -> Reconciliation:
    issued = {(c.device, c.user, c.key_id): c for c in _uses(it_log, EventType.RECOVERY_CODE_ISSUED)}
    result = Reconciliation()
    seen: set[tuple[str, str, str]] = set()
    for trail in laptop_trails:
        for use in _uses(trail, EventType.RECOVERY):
            key = (use.device, use.user, use.key_id)
            if key in issued and key not in seen:
                result.matched.append((issued[key], use))
                seen.add(key)
            else:
                result.used_without_issue.append(use)
    result.issued_unused = sorted(c for k, c in issued.items() if k not in seen)
    return result
