"""The gate: takes a field worker from locked to unlocked and back, offline.

States (docs/agent.md): ``locked → verifying → unlocking → unlocked → locking → locked``,
plus ``locked-out`` (the last attempt left a delay) and ``lease-expired`` (only a
recovery or an extension code is admitted). One operation at a time. Every attempt, its
slot kind and factor kinds go to the trail; so do recoveries, extensions, the link, the
lock, clock anomalies and lease warnings.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.clock import Reading, TrustedClock
from agent.lease import Lease, LeaseStatus
from agent.limits import DELAY_AFTER, Limiter, LimitState
from agent.network import OTHER_ROUTE, LinkInfo, NetworkBackend, NetworkError, Progress, WatchFinding
from sekisho import codes, crypto
from sekisho.errors import (
    Cancelled,
    FactorError,
    LeaseExpired,
    SekishoError,
    UserNotFound,
)
from sekisho.factors import fido2
from sekisho.factors.interaction import Prompt, UserInteraction
from sekisho.factors.piv import CardSource
from sekisho.policy import Policy
from sekisho.store.grants import Grant, open_grant
from sekisho.store.records import SlotKind
from sekisho.store.store import CredentialStore
from sekisho.trail import EventType, Trail
from sekisho.unlock import factor_kinds, unlock, usable_slots

log = logging.getLogger(__name__)

EXTENSION_KEY = "extension-key"
RECENT_USERS = "recent-users"
RECOVERY = "recovery"


class GateState(StrEnum):
    LOCKED = "locked"
    VERIFYING = "verifying"
    UNLOCKING = "unlocking"
    UNLOCKED = "unlocked"
    LOCKING = "locking"
    LOCKED_OUT = "locked-out"
    LEASE_EXPIRED = "lease-expired"


class GateBusy(SekishoError):
    """The laptop is already unlocked, or another operation is running."""

    advice = "Lock the laptop first (sekisho-agent lock)."


@dataclass(kw_only=True)
class Session:
    """Who is unlocked, since when, how, and what their grant holds (in memory only)."""

    user_id: str
    display_name: str
    uid: int | None
    since: float
    slot_kind: str
    factors: tuple[str, ...]
    uv_method: str | None
    recovered: bool
    link: LinkInfo
    grant: Grant = field(repr=False)
    #: "up", or "reconnecting" while a dropped SIM link is being brought back.
    link_state: str = "up"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.user_id, "name": self.display_name, "since": _iso(self.since),
                "slot": self.slot_kind, "factors": list(self.factors), "uv": self.uv_method,
                "recovered": self.recovered, "link": self.link.to_json() | {"state": self.link_state},
                "apps": list(self.grant.apps),
                "citrix": dict(self.grant.citrix)}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _noop(step: str, details: Mapping[str, Any]) -> None:
    pass


def _measured(link: LinkInfo, rtt: float | None, started: float) -> LinkInfo:
    """The backend's figures, the probe's round trip, and the time taken if the backend gave none."""
    return LinkInfo(seconds=link.seconds or time.monotonic() - started, rtt_ms=rtt, signal=link.signal,
                    technology=link.technology, operator=link.operator)


class Gate:
    """The state machine. Thread-safe: one operation runs at a time."""

    def __init__(self, *, store: CredentialStore, policy: Policy, trail: Trail, it_public: bytes,
                 network: NetworkBackend, clock: TrustedClock, devices: fido2.DeviceSource | None = None,
                 cards: CardSource | None = None) -> None:
        self.store = store
        self.policy = policy
        self.trail = trail
        self.it_public = it_public
        self.network = network
        self.clock = clock
        self.lease = Lease(store)
        self.devices = devices or fido2.connected_keys
        self.cards = cards
        self.session: Session | None = None
        #: (user id, OS uid) of the latest session, also after it locked: its launcher
        #: reports the apps it closed once the session is over.
        self.last_session: tuple[str, int | None] | None = None
        self._lock = threading.RLock()
        self._state = GateState.LOCKED
        self._last_user: str | None = None
        self._clock_logged = False
        reading = self.clock.read()
        if self.lease.status(reading).expired:
            self._state = GateState.LEASE_EXPIRED

    # --- state and status ---------------------------------------------------------------

    @property
    def state(self) -> GateState:
        """The state now (a delay that has run out, a lease that has, are seen here)."""
        state = self._state
        if state is GateState.LOCKED_OUT and self._retry_after() == 0:
            state = GateState.LOCKED
        if state is GateState.LOCKED:
            state = self._lockable_state()
        if self._state in (GateState.LOCKED, GateState.LOCKED_OUT):
            self._state = state
        return state

    def _retry_after(self) -> int:
        if self._last_user is None:
            return 0
        limits = Limiter(self.store, self._last_user).state()
        return max(0, int(limits.not_before - self.clock.read().running + 0.999))

    def status(self, *, details: bool) -> dict[str, Any]:
        """The status document (docs/agent.md); ``details`` only for who unlocked, or root.

        Answers at once, also while a logon waits for the person (no gate lock taken).
        """
        reading = self.clock.read()
        lease = self.lease.status(reading)
        state = self.state
        session = self.session
        doc: dict[str, Any] = {
            "version": 1,
            "state": str(state),
            "lease": lease.to_json() | {"warning": lease.warning},
            "clock": {"behind": reading.behind},
            "retry_after": self._retry_after() if state is GateState.LOCKED_OUT else 0,
            # Only where the policy allows it: the staff ids the logon window may offer.
            "recent_users": self.recent_users(),
            # IT's choice of language for what field workers read ("" : each desktop's own).
            "language": self.policy.ui_language,
            "user": None,
        }
        if details and session is not None:
            doc["user"] = session.to_json()
            # What the user's session may start (the launcher runs there, not here).
            doc["user"]["launch"] = {"allowed": list(self.policy.launch_allowed),
                                     "close_timeout": self.policy.launch_close_timeout}
        return doc

    def recent_users(self) -> list[str]:
        keep = self.policy.logon_recent_users
        if not keep:
            return []
        ids = (self.store.read_state(None, RECENT_USERS) or {}).get("ids", [])[:keep]
        return [user_id for user_id in ids if self._still_here(user_id)]  # not those removed since

    def _still_here(self, user_id: str) -> bool:
        try:
            self.store.get_user(user_id)
        except UserNotFound:
            return False
        return True

    @property
    def unlocked_uid(self) -> int | None:
        return self.session.uid if self.session else None

    # --- helpers ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _operation(self) -> Iterator[Reading]:
        if not self._lock.acquire(blocking=False):
            raise GateBusy("Another logon is in progress on this laptop.", advice="Wait a moment and try again.")
        try:
            if self._state is GateState.UNLOCKED:
                assert self.session is not None  # noqa: S101
                raise GateBusy(f"This laptop is already unlocked for {self.session.user_id}.")
            reading = self.clock.read()
            if reading.behind and not self._clock_logged:
                self._clock_logged = True
                log.warning("the system clock is behind the last confirmed time")
                self.trail.append(EventType.CLOCK_ANOMALY, details={
                    "behind_s": int(reading.mark - reading.wall), "mark": _iso(reading.mark),
                    "wall": _iso(reading.wall)})
            yield reading
        finally:
            self._lock.release()

    def _refused(self, exc: SekishoError, user_id: str | None, kind: SlotKind | None, limits: LimitState | None,
                 possession: bool) -> None:
        """After a failed attempt: the state, the trail, and attempts left on the error."""
        details: dict[str, Any] = {"error": type(exc).__name__}
        if kind is not None:
            details |= {"slot": kind.value, "factors": [f.value for f in factor_kinds(kind)],
                        "possession_proven": possession}
        if limits is not None:
            exc.attempts_before_delay = max(0, DELAY_AFTER - limits.consecutive)  # type: ignore[attr-defined]
            exc.attempts_before_disable = limits.possession_left  # type: ignore[attr-defined]
            details |= {"consecutive": limits.consecutive, "possession_failures": limits.possession}
            if limits.disabled:
                details["disabled"] = True
        self.trail.append(EventType.LOGON_FAILURE, user=user_id, details=details)
        self._last_user = user_id
        self._state = GateState.LOCKED_OUT if user_id and self._retry_after() else self._lockable_state()

    def _lockable_state(self) -> GateState:
        return GateState.LEASE_EXPIRED if self.lease.status(self.clock.read()).expired else GateState.LOCKED

    # --- unlock ---------------------------------------------------------------------------

    def unlock(self, user_id: str, interaction: UserInteraction, *, uid: int | None = None,
               progress: Progress = _noop) -> Session:
        """Verify ``user_id``'s factors, open their grant, bring the closed network up."""
        with self._operation() as reading:
            lease = self.lease.status(reading)
            if lease.expired:
                self._state = GateState.LEASE_EXPIRED
                raise LeaseExpired(f"The offline period of this laptop is over ({lease.reason}).")
            try:
                _, slots = self.store.get_user(user_id)
            except UserNotFound:
                # The typed text is not recorded: it might be a passphrase typed in the wrong box.
                self.trail.append(EventType.LOGON_FAILURE, details={"error": "UnknownStaffId"})
                raise
            candidates = usable_slots(self.policy, slots)
            kind = candidates[0].kind if candidates else None
            limiter = Limiter(self.store, user_id)
            before = limiter.state()
            try:
                limits = limiter.begin(reading.running)
            except FactorError as exc:
                self._refused(exc, user_id, kind, None, False)
                raise
            possession = False

            def proven() -> None:
                nonlocal possession, limits
                possession = True
                limits = limiter.possession_proven()

            self._state = GateState.VERIFYING
            progress("verifying", {})
            exclude = {SlotKind.PIN_TOTP} if reading.behind else set()
            try:
                unlocked = unlock(self.store, self.policy, user_id, interaction, clock=lambda: reading.wall,
                                  devices=self.devices, on_possession=proven, exclude=exclude, cards=self.cards)
            except Cancelled:
                if not possession:
                    limiter.cancelled(before)
                self._state = self._lockable_state()
                raise
            except FactorError as exc:
                self._refused(exc, user_id, getattr(exc, "slot_kind", kind), limits, possession)
                raise
            limiter.succeeded()
            if unlocked.slot_kind is SlotKind.PIN_TOTP:
                self.clock.confirm(reading.wall)  # the token agreed with the clock
            details: dict[str, Any] = {"slot": unlocked.slot_kind.value, "factors": [f.value for f in unlocked.factors]}
            if unlocked.uv_method:
                details["uv"] = unlocked.uv_method
            self.trail.append(EventType.LOGON_SUCCESS, user=user_id, details=details)
            try:
                grant = unlocked.open_grant(self.store, self.it_public)
                return self._bring_up(unlocked.user.user_id, unlocked.user.display_name, grant, uid=uid,
                                      slot_kind=unlocked.slot_kind.value, factors=tuple(details["factors"]),
                                      uv_method=unlocked.uv_method, recovered=False, progress=progress,
                                      reading=reading)
            except SekishoError:
                self._state = self._lockable_state()
                raise
            finally:
                unlocked.close()

    def identify(self, interaction: UserInteraction) -> str:
        """The staff id a touch on a connected key names (keys enrolled to identify by touch).

        Only a claim of who is there: the unlock that follows checks the factors as if the
        id had been typed (an id this laptop does not know is refused and logged there)."""
        with self._lock:
            if self._state is GateState.UNLOCKED:
                assert self.session is not None  # noqa: S101
                raise GateBusy(f"This laptop is already unlocked for {self.session.user_id}.")
        return fido2.identify(self.devices(), interaction)  # an unknown id: refused and logged by unlock

    def _bring_up(self, user_id: str, display_name: str, grant: Grant, *, uid: int | None, slot_kind: str,
                  factors: tuple[str, ...], uv_method: str | None, recovered: bool, progress: Progress,
                  reading: Reading) -> Session:
        self._state = GateState.UNLOCKING
        started = time.monotonic()
        try:
            self.network.isolate(progress)
            self.trail.append(EventType.ISOLATION, user=user_id, details={"ok": True})
            link = self.network.bring_up(grant.network, progress)
            rtt = self.network.probe(grant.network, progress)
        except NetworkError as exc:
            self.network.bring_down()
            self.network.restore()
            self.trail.append(EventType.LINK_DOWN, user=user_id,
                              details={"step": exc.step, "error": str(exc), "rolled_back": True})
            self._state = self._lockable_state()
            raise
        link = _measured(link, rtt, started)
        self.trail.append(EventType.LINK_UP, user=user_id, details=link.to_json())
        self.lease.count_unlock()
        lease = self.lease.status(reading)
        if lease.warning:
            self.trail.append(EventType.LEASE_WARNING, details={"days_left": lease.days_left})
        self.session = Session(user_id=user_id, display_name=display_name, uid=uid, since=reading.now,
                               slot_kind=slot_kind, factors=factors, uv_method=uv_method, recovered=recovered,
                               link=link, grant=grant)
        self.last_session = (user_id, uid)
        if self.policy.logon_recent_users:
            keep = self.policy.logon_recent_users
            self.store.update_state(None, RECENT_USERS, lambda old: {
                "ids": [user_id, *[u for u in (old or {}).get("ids", []) if u != user_id]][:keep]})
        self.trail.append(EventType.UNLOCK, user=user_id, details={"apps": len(grant.apps), "recovered": recovered})
        self._state = GateState.UNLOCKED
        progress("unlocked", {})
        return self.session

    # --- the network while unlocked, and at start ---------------------------------------------

    def cleanup_network(self) -> None:
        """At service start: undo what a crash left (a live SIM link, interfaces taken down)."""
        with self._lock:
            try:
                found = self.network.cleanup()
            except NetworkError as exc:
                log.error("cleaning up the network after a crash: %s", exc)
                self.trail.append(EventType.LINK_DOWN, details={"why": "crash-cleanup", "error": str(exc)})
                return
            if found:
                log.warning("the previous run left the network changed; put back: %s", found)
                self.trail.append(EventType.LINK_DOWN, details={"why": "crash-cleanup", **found})

    def watch(self) -> WatchFinding | None:
        """One look at the network while unlocked (the service calls this every few seconds).

        Another default route (Wi-Fi, a cable, USB tethering): the SIM link is dropped and the
        laptop locks. The SIM link lost: recorded, brought up again up to the policy's
        ``network.link_retries`` times (the status says "reconnecting"), else the laptop locks.
        """
        with self._lock:
            if self._state is not GateState.UNLOCKED or self.session is None:
                return None
            session = self.session
            finding = self.network.check()
            if finding is None:
                return None
            if finding.kind == OTHER_ROUTE:
                self.trail.append(EventType.ISOLATION, user=session.user_id,
                                  details={"ok": False, "interface": finding.interface, "action": "sim-dropped"})
                self.lock("other-route")
                return finding
            self.trail.append(EventType.LINK_DOWN, user=session.user_id, details={"why": "lost"})
            session.link_state = "reconnecting"
            for attempt in range(1, self.policy.network_link_retries + 1):
                started = time.monotonic()
                try:
                    self.network.bring_down()
                    link = self.network.bring_up(session.grant.network, _noop)
                    rtt = self.network.probe(session.grant.network, _noop)
                except NetworkError as exc:
                    self.trail.append(EventType.LINK_DOWN, user=session.user_id,
                                      details={"why": "retry-failed", "try": attempt, "step": exc.step})
                    continue
                session.link = _measured(link, rtt, started)
                session.link_state = "up"
                self.trail.append(EventType.LINK_UP, user=session.user_id,
                                  details=session.link.to_json() | {"retry": attempt})
                return finding
            self.lock("link-lost")
            return finding

    def record_apps(self, report: Mapping[str, Any]) -> None:
        """The session's launcher started apps, or closed them at lock (politely, or killed)."""
        user = self.session.user_id if self.session else (self.last_session[0] if self.last_session else None)
        client = str(report.get("client", ""))
        if report["event"] == "started":
            self.trail.append(EventType.APPS_STARTED, user=user,
                              details={"client": client, "apps": list(report.get("apps", []))})
        else:
            self.trail.append(EventType.APPS_CLOSED, user=user, details={
                "client": client, "closed": int(report.get("closed", 0)), "killed": int(report.get("killed", 0))})

    # --- lock -------------------------------------------------------------------------------

    def lock(self, reason: str = "request") -> None:
        """Close the session: the link goes down, interfaces come back, the grant is dropped."""
        with self._lock:
            if self._state is not GateState.UNLOCKED or self.session is None:
                return
            user = self.session.user_id
            self._state = GateState.LOCKING
            try:
                self.network.bring_down()
                self.network.restore()
            finally:
                self.trail.append(EventType.LINK_DOWN, user=user, details={"why": reason})
                self.trail.append(EventType.LOCK, user=user, details={"why": reason})
                self.session = None
                self._state = self._lockable_state()

    # --- recovery ------------------------------------------------------------------------------

    def recovery_key_ids(self, user_id: str) -> list[str]:
        """The key ids of the user's unused recovery codes (shown so the helpdesk finds the code)."""
        used = (self.store.read_state(user_id, RECOVERY) or {}).get("used", [])
        return [w.key_id for w in self.store.get_grant(user_id).recovery if w.key_id not in used]

    def recover(self, user_id: str, code: str, interaction: UserInteraction, *, uid: int | None = None,
                progress: Progress = _noop) -> Session:
        """Unlock with a one-time recovery code (and the passphrase where bound), once."""
        code_bits = codes.parse_recovery_code(code)  # a mistyped group never counts as a failure
        with self._operation() as reading:
            record, _ = self.store.get_user(user_id)
            sealed = self.store.get_grant(user_id)
            limiter = Limiter(self.store, user_id)
            try:
                limits = limiter.begin(reading.running)
            except FactorError as exc:
                self._refused(exc, user_id, None, None, False)
                raise
            used = (self.store.read_state(user_id, RECOVERY) or {}).get("used", [])
            passphrase = None
            if any(w.ephemeral is not None for w in sealed.recovery):
                passphrase = interaction.request_passphrase(Prompt(user_id=user_id))
            try:
                grant_key, key_id = codes.open_with_recovery_code(
                    sealed, code_bits, binding=record.passphrase_binding, passphrase=passphrase, used=used)
            except FactorError as exc:
                self._refused(exc, user_id, None, limits, False)
                raise
            try:
                # Burnt before anything is shown, in the same record as the re-enrolment flag.
                self.store.update_state(user_id, RECOVERY, lambda old: {
                    "used": [*(old or {}).get("used", []), key_id], "reenrol": True})
                limiter.succeeded()
                grant = open_grant(sealed, grant_key, it_public=self.it_public, device_id=self.store.device_id,
                                   user_id=user_id)
            finally:
                crypto.wipe(grant_key)
            self.trail.append(EventType.RECOVERY, user=user_id, details={"key_id": key_id, "reenrol": True})
            return self._bring_up(user_id, record.display_name, grant, uid=uid, slot_kind="recovery",
                                  factors=("recovery-code",), uv_method=None, recovered=True, progress=progress,
                                  reading=reading)

    # --- lease extension ---------------------------------------------------------------------

    def extend(self, code: str) -> LeaseStatus:
        """Apply an extension code read out by the helpdesk."""
        with self._operation() as reading:
            state = self.store.read_state(None, EXTENSION_KEY)
            if not state:
                raise LeaseExpired("This laptop has no extension key; only a check-in can renew it.",
                                   advice="Bring the laptop to the office.")
            key = state["key"]
            codes.parse_extension_code(code)  # a mistyped group never counts as a failure
            limiter = Limiter(self.store, None)
            try:
                limits = limiter.begin(reading.running)
            except FactorError as exc:
                self._refused(exc, None, None, None, False)
                raise
            try:
                extension = codes.check_extension_code(key, self.store.device_id, code)
                status = self.lease.extend(reading, extension)
            except FactorError as exc:
                self._refused(exc, None, None, limits, False)
                raise
            limiter.succeeded()
            self.trail.append(EventType.LEASE_EXTENSION, details={"end": extension.end.isoformat(),
                                                                  "sequence": extension.sequence})
            self._state = GateState.LOCKED
            return status


def provision_extension_key(store: CredentialStore, key: bytes) -> None:
    """Install the laptop's extension key (delivered in the provisioning bundle)."""
    store.update_state(None, EXTENSION_KEY, lambda old: {"key": bytes(key)})


def reenrolment_due(store: CredentialStore, user_id: str) -> bool:
    return bool((store.read_state(user_id, RECOVERY) or {}).get("reenrol"))

