"""The laptop's side of provisioning and check-in (run as administrator, on the state directory).

* ``init``: a new store and trail, the laptop's X25519 identity (bundles are sealed to it),
  IT's public key pinned; writes the device request and returns it (its fingerprint is
  shown for IT to confirm).
* ``install``: a provisioning bundle or a check-in renewal. IT's signature, the target
  laptop and the serial (never an older bundle over a newer one) are checked before
  anything is opened; the policy is verified against the pinned key; then users, removals,
  the lease, the extension key and the serial go into the store in **one transaction**
  (the store's own write lock, so a running service sees the change at once) and the trail
  records it. A failure leaves the previous store as it was; running the same install again
  completes it.
* ``checkin_request``: the trail and its head, for the office.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.clock import TrustedClock
from agent.gate import EXTENSION_KEY, RECOVERY
from agent.lease import RECORD as LEASE
from agent.lease import renewed
from agent.limits import RECORD as LIMITS
from agent.limits import LimitState
from agent.service import check_state_dir
from sekisho import crypto
from sekisho.bundle import BundleError, CheckinRequest, DeviceRequest, open_bundle, verify_bundle
from sekisho.errors import SekishoError
from sekisho.files import atomic_write
from sekisho.policy import load_policy
from sekisho.store.keysource import DeviceKeySource
from sekisho.store.store import CredentialStore, ProvisionedUser
from sekisho.trail import EventType, Trail

IDENTITY = "device-identity"
INSTALLED = "bundle"

StateUpdate = Callable[[dict[str, Any] | None], dict[str, Any]]


def init(state_dir: Path, key_source: DeviceKeySource, it_pem: bytes, *, device_id: str | None = None,
         clock: Callable[[], float] = time.time) -> DeviceRequest:
    """Make the laptop's store, trail and identity; write ``device-request.json``."""
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_state_dir(state_dir)
    if (state_dir / "store.db").exists():
        raise SekishoError(f"{state_dir} already holds a Sekisho store; this laptop is initialised.",
                           advice="To start again, IT must retire the laptop and clear the directory.")
    it_public = crypto.public_key_from_pem(it_pem, what="IT public key")
    store = CredentialStore.create(state_dir / "store.db", key_source, device_id=device_id)
    try:
        private, public = crypto.x25519_generate()
        store.update_state(None, IDENTITY, lambda _: {"private": bytes(private)})
        crypto.wipe(private)
        with Trail.create(state_dir / "trail.jsonl", key_source, device_id=store.device_id, clock=clock) as trail:
            root = trail.root
            atomic_write(state_dir / "trail-root.pem", trail.root_pem().encode(), mode=0o644)
        atomic_write(state_dir / "it-public.pem", crypto.public_key_pem(it_public).encode(), mode=0o644)
        request = DeviceRequest(device_id=store.device_id, identity_public=public, trail_root=root,
                                it_key=crypto.key_fingerprint(it_public), created=int(clock()),
                                host=socket.gethostname())
        atomic_write(state_dir / "device-request.json", request.to_bytes(), mode=0o644)
    finally:
        store.close()
    return request


@dataclass(frozen=True)
class Installed:
    kind: str
    serial: int
    users: int
    removed: int


def install(state_dir: Path, key_source: DeviceKeySource, data: bytes, *,
            clock: Callable[[], float] = time.time) -> Installed:
    """Verify and apply a bundle or renewal (see the module docstring)."""
    state_dir = Path(state_dir)
    check_state_dir(state_dir)
    _finish_key_rotation(state_dir, key_source)
    it_public = crypto.public_key_from_pem((state_dir / "it-public.pem").read_bytes(), what="IT public key")
    header = verify_bundle(data, it_public)
    with CredentialStore.open(state_dir / "store.db", key_source) as store:
        if header.device_id != store.device_id:
            raise BundleError(f"This {header.kind} was made for laptop {header.device_id}, not this one "
                              f"({store.device_id}).")
        last = (store.read_state(None, INSTALLED) or {}).get("serial", 0)
        if header.serial <= last:
            raise BundleError(f"This {header.kind} (serial {header.serial}) is not newer than the one installed "
                              f"(serial {last}): refused, so an old bundle cannot undo a newer one.")
        identity = (store.read_state(None, IDENTITY) or {}).get("private")
        if not isinstance(identity, bytes):
            raise BundleError("This laptop has no identity; run `sekisho-agent device init` first.")
        payload = open_bundle(header, identity)
        if header.kind == "provision" and not payload.policy:
            raise BundleError("The provisioning bundle has no policy.")
        if payload.policy:
            # A renewal announcing IT's next key carries the policy signed by that key; the
            # announcement itself is vouched for by the current key's signature on the bundle.
            load_policy(payload.policy, payload.policy_sig, payload.new_it_key or it_public)
        users = [ProvisionedUser(record=u.record, slots=u.slots, grant=u.grant) for u in payload.users]
        for user in users:
            if user.grant is None or user.grant.device_id != store.device_id:
                raise BundleError(f"The grant for {user.record.user_id} is for another laptop.")
        # The policy first: if the store's transaction then fails, running the same install
        # again (same serial, still newer) finishes the job.
        if payload.policy:
            atomic_write(state_dir / "policy.toml", payload.policy, mode=0o600)
            atomic_write(state_dir / "policy.toml.sig", payload.policy_sig, mode=0o600)
        if payload.new_it_key is not None:  # pinned once this bundle's serial is committed
            atomic_write(state_dir / f"it-public.pem.next-{header.serial}",
                         crypto.public_key_pem(payload.new_it_key).encode(), mode=0o644)
        reading = TrustedClock(store).confirm(header.created)  # the office's time is confirmed time
        now = int(clock())
        states: dict[tuple[str | None, str], StateUpdate] = {
            (None, INSTALLED): lambda old: {"serial": header.serial, "kind": header.kind, "installed": now},
        }
        if payload.lease:
            lease = payload.lease
            states[(None, LEASE)] = lambda old: renewed(old, reading, office_time=lease["office_time"],
                                                        days=lease["days"], max_unlocks=lease.get("max_unlocks", 0))
        if payload.extension_key is not None:
            key = payload.extension_key
            states[(None, EXTENSION_KEY)] = lambda old: {"key": key}
        for user_id in payload.reenable:
            states[(user_id, LIMITS)] = lambda old: LimitState().dump()
        for user in users:  # a re-enrolled user's recovery flag is cleared with the new slots
            states[(user.record.user_id, RECOVERY)] = lambda old: {"used": (old or {}).get("used", []),
                                                                   "reenrol": False}
        with Trail.open(state_dir / "trail.jsonl", key_source, clock=clock) as trail:
            store.apply(users=users, remove=payload.remove, states=states)
            trail.append(EventType.BUNDLE_INSTALLED if header.kind == "provision" else EventType.CHECK_IN,
                         details={"serial": header.serial, "users": len(users), "removed": list(payload.remove),
                                  "reenabled": list(payload.reenable),
                                  "lease_days": payload.lease.get("days") if payload.lease else None,
                                  "it_key_next": crypto.key_fingerprint(payload.new_it_key)
                                  if payload.new_it_key else None})
    _finish_key_rotation(state_dir, key_source)
    return Installed(kind=header.kind, serial=header.serial, users=len(users), removed=len(payload.remove))


def _finish_key_rotation(state_dir: Path, key_source: DeviceKeySource) -> None:
    """Pin IT's next key announced by an installed renewal (also after a crash in between)."""
    pending = sorted(state_dir.glob("it-public.pem.next-*"))
    if not pending:
        return
    with CredentialStore.open(state_dir / "store.db", key_source) as store:
        installed = (store.read_state(None, INSTALLED) or {}).get("serial", 0)
    for path in pending:
        serial = int(path.name.rsplit("-", 1)[1])
        if serial <= installed:
            path.replace(state_dir / "it-public.pem")  # the renewal that announced it is committed
        else:
            path.unlink()  # its renewal never committed: not announced after all


def checkin_request(state_dir: Path, key_source: DeviceKeySource, *,
                    clock: Callable[[], float] = time.time) -> CheckinRequest:
    """The trail as it stands and its head, for the office."""
    state_dir = Path(state_dir)
    with Trail.open(state_dir / "trail.jsonl", key_source, clock=clock) as trail:
        head = trail.head
        data = trail.path.read_bytes()
        device_id = trail.device_id
    return CheckinRequest(device_id=device_id, head=str(head), trail=data, created=int(clock()))
