"""The station's work: enrol users, provision laptops, check them in.

Every function takes the registry, IT's signing key and the signed policy explicitly;
the CLI (``sekisho-enroll``) and the demo are two callers.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fido2.ctap import CtapDevice

from enroll.registry import Registry, RegistryError
from sekisho import codec, codes, crypto
from sekisho.bundle import BundleError, BundlePayload, BundleUser, CheckinRequest, DeviceRequest, make_bundle
from sekisho.devices.card import SmartCardConnection
from sekisho.errors import SekishoError, TrailInvalid
from sekisho.factors import cardsig, fido2, pin_totp, piv
from sekisho.factors import passphrase as pp
from sekisho.factors.interaction import UserInteraction
from sekisho.factors.totp import TotpSeed
from sekisho.policy import Policy, load_policy
from sekisho.store.grants import Grant, issue_grant
from sekisho.store.records import KeySlot, SlotKind
from sekisho.trail import EventType
from sekisho.trail.verify import Head, read_lines, verify_entries

RECOVERY_CODES_PER_USER = 5


@dataclass(frozen=True)
class SignedPolicy:
    text: bytes
    signature: bytes
    it_public: bytes

    @property
    def policy(self) -> Policy:
        return load_policy(self.text, self.signature, self.it_public)


# --- enrolment ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SlotRequest:
    kind: SlotKind
    device: CtapDevice | None = None  # the user's key, for fido2-uv and pin+fido2
    totp_seed: TotpSeed | None = None  # pin+totp: an app's (generated) or a hardware token's seed
    card: SmartCardConnection | None = None  # piv and card-sig: the user's card in a reader
    card_type: str = "piv"  # card-sig: "jpki" (the My Number card) or "piv" (an RSA key in 9A)
    discoverable: bool = False  # FIDO2: the key keeps the staff id, so a touch identifies the user


def enrol_user(registry: Registry, user_id: str, requests: Sequence[SlotRequest], *, policy: Policy,
               interaction: UserInteraction, trusted_roots: Sequence[bytes],
               passphrase: str | None = None) -> list[KeySlot]:
    """A new identity for the user and one slot per request (the user is at the station).

    Replaces the user's previous slots (a passphrase or key change is a re-enrolment; the
    user's laptops get the new slots at their next provisioning or check-in).
    """
    record, _ = registry.user(user_id)
    for request in requests:
        if not policy.permits(request.kind):
            raise SekishoError(f"The policy does not permit {request.kind.value} slots.")
    if any(r.kind.uses_passphrase for r in requests):
        if passphrase is None:
            raise SekishoError("These slots need a passphrase.")
        pp.check_passphrase(passphrase, minimum=policy.passphrase_min_length,
                            context=pp.PassphraseContext(user_id=user_id, names=(record.display_name, record.kana)))
    private, public = crypto.x25519_generate()
    slots: list[KeySlot] = []
    try:
        for slot_id, request in enumerate(requests, start=1):
            if request.kind is SlotKind.PIN_TOTP:
                if request.totp_seed is None or passphrase is None:
                    raise SekishoError("A pin+totp slot needs a TOTP seed and a passphrase.")
                slots.append(pin_totp.enrol(user_id=user_id, slot_id=slot_id, identity_private=private,
                                            passphrase=passphrase, seed=request.totp_seed, argon2=policy.argon2,
                                            created_at=int(time.time())))
            elif request.kind in (SlotKind.FIDO2_UV, SlotKind.PIN_FIDO2):
                if request.device is None:
                    raise SekishoError("A FIDO2 slot needs the user's security key.")
                slots.append(fido2.enrol(request.device, kind=request.kind, user_id=user_id, slot_id=slot_id,
                                         identity_private=private, interaction=interaction,
                                         trusted_roots=trusted_roots,
                                         allow_software=policy.allow_software_authenticators, aaguids=policy.aaguids,
                                         display_name=record.display_name, passphrase=passphrase,
                                         argon2=policy.argon2, created_at=int(time.time()),
                                         discoverable=request.discoverable))
            elif request.kind is SlotKind.PIV:
                if request.card is None:
                    raise SekishoError("A PIV slot needs the user's card in a reader.")
                slots.append(piv.enrol(request.card, user_id=user_id, slot_id=slot_id, identity_private=private,
                                       interaction=interaction, created_at=int(time.time())))
            elif request.kind is SlotKind.CARD_SIG:
                if request.card is None:
                    raise SekishoError("A card-sig slot needs the user's card in a reader.")
                slots.append(cardsig.enrol(request.card, card_type=request.card_type, user_id=user_id,
                                           slot_id=slot_id, identity_private=private, interaction=interaction,
                                           created_at=int(time.time())))
            else:
                raise SekishoError(f"{request.kind.value} slots cannot be enrolled here.")
    finally:
        crypto.wipe(private)
    binding = codes.passphrase_binding(passphrase, policy.argon2) if passphrase else None
    registry.set_enrolment(replace(record, identity_public=public, passphrase_binding=binding,
                                   revision=record.revision + 1), slots)
    return slots


# --- provisioning ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sim:
    iccid: str
    apn: str
    apn_user: str
    apn_password: str

    def public(self) -> dict[str, str]:
        return {"iccid": self.iccid, "apn": self.apn, "apn_user": self.apn_user}


Progress = Callable[[int, int], None]


def _grants(registry: Registry, device_id: str, users: Sequence[str], *, sim: Sim, it_private: bytes | bytearray,
            serial: int, now: int, progress: Progress | None = None
            ) -> tuple[list[BundleUser], dict[str, list[codes.RecoveryCode]]]:
    bundle_users, recovery = [], {}
    for done, user_id in enumerate(users, start=1):
        if progress is not None and (done % 500 == 0 or done == len(users)):
            progress(done, len(users))
        record, enabled = registry.user(user_id)
        if not enabled:
            raise RegistryError(f"{user_id} is disabled in the registry; enable them first.")
        slots = registry.slots(user_id)
        if not slots:
            raise RegistryError(f"{user_id} has no enrolled factors; run `sekisho-enroll user enrol {user_id}`.")
        apps: list[str] = []
        citrix: dict[str, str] = {}
        for role in record.roles:
            role_apps, role_citrix = registry.role(role)
            apps += [a for a in role_apps if a not in apps]
            citrix = citrix or role_citrix
        grant = Grant(device_id=device_id, user_id=user_id, serial=serial, issued_at=now,
                      network={"apn": sim.apn, "user": sim.apn_user, "password": sim.apn_password,
                               "iccid": sim.iccid}, citrix=citrix, apps=tuple(apps))
        sealed, grant_key = issue_grant(grant, it_signing_key=it_private, user_public=record.identity_public)
        recovery[user_id] = codes.new_recovery_codes(RECOVERY_CODES_PER_USER)
        sealed = codes.wrap_for_recovery(sealed, grant_key, recovery[user_id], record.passphrase_binding)
        crypto.wipe(grant_key)
        bundle_users.append(BundleUser(record=record, slots=slots, grant=sealed))
    return bundle_users, recovery


def _store_recovery(c: Any, registry: Registry, device_id: str,
                    recovery: dict[str, list[codes.RecoveryCode]]) -> None:
    for user_id, user_codes in recovery.items():
        c.execute("DELETE FROM recovery WHERE device_id = ? AND user_id = ?", (device_id, user_id))
        for code in user_codes:
            c.execute("INSERT INTO recovery VALUES (?, ?, ?, ?, NULL)", (
                device_id, user_id, code.key_id,
                registry.seal("recovery", f"{device_id}/{user_id}/{code.key_id}", code.code.encode())))


def _revisions(registry: Registry, users: Sequence[str]) -> dict[str, int]:
    return {u: registry.user(u)[0].revision for u in users}


def provision(registry: Registry, request_bytes: bytes, *, confirmed_fingerprint: str, users: Sequence[str],
              sim: Sim, signed_policy: SignedPolicy, it_private: bytes | bytearray,
              now: int | None = None, progress: Progress | None = None) -> bytes:
    """A provisioning bundle for the laptop that wrote ``request_bytes`` (and record it)."""
    request = DeviceRequest.from_bytes(request_bytes)
    if confirmed_fingerprint.strip().lower() != request.fingerprint:
        raise BundleError("The fingerprint IT confirmed is not the request's: refused (a request changed on the "
                          "way, or another laptop's).", advice="Read the fingerprint off the laptop's screen again.")
    if request.it_key != crypto.key_fingerprint(signed_policy.it_public):
        raise BundleError("The laptop pinned another IT key than this station's.")
    policy = signed_policy.policy
    now = int(now or time.time())
    existing = registry.device(request.device_id)
    if registry.is_retired(request.device_id):
        raise BundleError(f"Device {request.device_id} is retired (lost or decommissioned): refused.")
    if existing is not None and existing.fingerprint != request.fingerprint:
        raise BundleError(f"Device {request.device_id} is registered with another identity; retire it first.")
    serial = (existing.serial if existing else 0) + 1
    previous = set(existing.users) if existing else set()
    bundle_users, recovery = _grants(registry, request.device_id, users, sim=sim, it_private=it_private,
                                     serial=serial, now=now, progress=progress)
    extension_key = codes.new_extension_key()
    payload = BundlePayload(policy=signed_policy.text, policy_sig=signed_policy.signature, users=bundle_users,
                            remove=sorted(previous - set(users)),
                            lease={"office_time": now, "days": policy.lease_days,
                                   "max_unlocks": policy.lease_max_unlocks},
                            extension_key=extension_key)
    data = make_bundle(payload, device_id=request.device_id, device_public=request.identity_public,
                       kind="provision", serial=serial, created=now, it_private=it_private)
    secrets = codec.encode({"apn_password": sim.apn_password, "extension_key": extension_key, "ext_seq": 0})
    with registry.transaction() as c:
        c.execute("INSERT OR REPLACE INTO devices (id, request, fingerprint, serial, users, sim, secrets, last_head, "
                  "created, last_checkin) VALUES (?, ?, ?, ?, ?, ?, ?, "
                  "(SELECT last_head FROM devices WHERE id = ?), ?, (SELECT last_checkin FROM devices WHERE id = ?))",
                  (request.device_id, request_bytes, request.fingerprint, serial,
                   json.dumps(_revisions(registry, users)),
                   json.dumps(sim.public()), registry.seal("devices", request.device_id, secrets),
                   request.device_id, now, request.device_id))
        c.execute("DELETE FROM recovery WHERE device_id = ?", (request.device_id,))
        _store_recovery(c, registry, request.device_id, recovery)
    registry.record(EventType.DEVICE_PROVISIONED, device=request.device_id, serial=serial, users=list(users),
                    fingerprint=request.fingerprint, iccid=sim.iccid)
    return data


def recovery_code(registry: Registry, device_id: str, user_id: str, key_id: str) -> str:
    """The code the helpdesk reads out for ``key_id`` (marked as issued)."""
    with registry.transaction() as c:
        row = c.execute("SELECT code FROM recovery WHERE device_id = ? AND user_id = ? AND key_id = ?",
                        (device_id, user_id, key_id.upper())).fetchone()
        if row is None:
            raise RegistryError(f"No recovery code {key_id} for {user_id} on {device_id}.")
        c.execute("UPDATE recovery SET issued = ? WHERE device_id = ? AND user_id = ? AND key_id = ?",
                  (int(time.time()), device_id, user_id, key_id.upper()))
    registry.record(EventType.RECOVERY_CODE_ISSUED, user_id, device=device_id, key_id=key_id.upper())
    return registry.unseal("recovery", f"{device_id}/{user_id}/{key_id.upper()}", row[0]).decode()


def extension_code(registry: Registry, device_id: str, end: dt.date) -> str:
    """An extension code for ``device_id`` until ``end`` (a date), with the next sequence number."""
    with registry.transaction() as c:
        row = c.execute("SELECT secrets FROM devices WHERE id = ?", (device_id,)).fetchone()
        if row is None:
            raise RegistryError(f"There is no device {device_id} in the registry.")
        secrets = codec.decode(registry.unseal("devices", device_id, row[0]), what="device secrets")
        secrets["ext_seq"] = int(secrets.get("ext_seq", 0)) + 1
        c.execute("UPDATE devices SET secrets = ? WHERE id = ?",
                  (registry.seal("devices", device_id, codec.encode(secrets)), device_id))
    registry.record(EventType.EXTENSION_CODE_ISSUED, device=device_id, end=end.isoformat(),
                    sequence=secrets["ext_seq"])
    return codes.make_extension_code(secrets["extension_key"], device_id, end, secrets["ext_seq"])


# --- check-in ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rotation:
    """IT's next key during a rotation: its private half, and the policy it signed."""

    next_private: bytes | bytearray
    policy: SignedPolicy

    def __repr__(self) -> str:
        return "<Rotation>"


@dataclass(frozen=True)
class CheckinResult:
    renewal: bytes
    head: str
    entries: int
    removed: list[str]
    anomaly: str | None
    updated: list[str]


def checkin(registry: Registry, request_bytes: bytes, *, signed_policy: SignedPolicy,
            it_private: bytes | bytearray, accept_anomaly: bool = False, now: int | None = None,
            reenable: Sequence[str] = (), rotation: Rotation | None = None) -> CheckinResult:
    """Verify the laptop's trail against its registered root and the last head seen, store
    it, and make the renewal: a new lease, revoked users removed, users re-enrolled since
    given their new slots and grants, ``reenable``d users' lockouts cleared, and (during a
    key rotation) IT's next key announced under the current one, with the policy and every
    grant signed by the next key, which the laptop pins when it installs the renewal."""
    request = CheckinRequest.from_bytes(request_bytes)
    device = registry.device(request.device_id)
    if device is None:
        raise RegistryError(f"Device {request.device_id} is not registered here.")
    if registry.is_retired(device.device_id):
        raise RegistryError(f"Device {device.device_id} is retired (reported lost or decommissioned): refused.",
                            advice="Keep the laptop aside and report it; export its trail for the auditors.")
    registered = DeviceRequest.from_bytes(device.request)
    anomaly = None
    try:
        verifier = verify_entries(read_lines(io.BytesIO(request.trail), "the laptop's trail"), registered.trail_root,
                                  source="the laptop's trail",
                                  head=Head.parse(device.last_head) if device.last_head else None)
        head = str(verifier.summary.head)
        if head != request.head:
            raise TrailInvalid(f"The laptop reported head {request.head} but its trail ends at {head}.",
                               reason="head-mismatch")
    except TrailInvalid as exc:
        anomaly = f"{exc.reason}: {exc}"
        if not accept_anomaly:
            raise RegistryError(f"CHECK-IN REFUSED — the laptop's trail does not verify: {exc}",
                                advice="Keep the laptop aside and report it; re-run with --accept-anomaly only "
                                       "after an investigation.") from None
        head, entries = request.head, 0
    else:
        entries = verifier.summary.entries
    policy = signed_policy.policy
    now = int(now or time.time())
    revoked = registry.revoked_since(device)
    serial = device.serial + 1
    kept = [u for u in device.users if u not in revoked]
    revisions = _revisions(registry, kept)
    # Users re-enrolled since get their new slots; during a rotation everyone gets grants
    # signed by the next key (the laptop will check grants against that key only).
    changed = kept if rotation else [u for u in kept if revisions[u] != device.delivered.get(u)]
    # A user whose every factor was revoked leaves the laptop until they are enrolled again.
    slotless = [u for u in changed if not registry.slots(u)]
    changed = [u for u in changed if u not in slotless]
    revoked = [*revoked, *slotless]
    kept = [u for u in kept if u not in slotless]
    revisions = {u: r for u, r in revisions.items() if u in kept}
    secrets = registry.device_secrets(device.device_id)
    sim = Sim(iccid=device.sim["iccid"], apn=device.sim["apn"], apn_user=device.sim["apn_user"],
              apn_password=secrets["apn_password"])
    updated, recovery = _grants(registry, device.device_id, changed, sim=sim, serial=serial, now=now,
                                it_private=rotation.next_private if rotation else it_private)
    delivered_policy = rotation.policy if rotation else signed_policy
    delivered_policy.policy  # noqa: B018 - refuse a wrongly signed policy before anything else
    payload = BundlePayload(policy=delivered_policy.text, policy_sig=delivered_policy.signature, users=updated,
                            remove=revoked, reenable=list(reenable),
                            new_it_key=rotation.policy.it_public if rotation else None,
                            lease={"office_time": now, "days": policy.lease_days,
                                   "max_unlocks": policy.lease_max_unlocks})
    renewal = make_bundle(payload, device_id=device.device_id, device_public=registered.identity_public,
                          kind="renewal", serial=serial, created=now, it_private=it_private)
    with registry.transaction() as c:
        c.execute("INSERT INTO checkins VALUES (?, ?, ?, ?, ?)", (device.device_id, now, head, request.trail, anomaly))
        c.execute("UPDATE devices SET serial = ?, last_head = ?, last_checkin = ?, users = ? WHERE id = ?",
                  (serial, head, now, json.dumps(revisions), device.device_id))
        _store_recovery(c, registry, device.device_id, recovery)
    registry.record(EventType.DEVICE_CHECKED_IN, device=device.device_id, serial=serial, head=head,
                    removed=revoked, updated=changed, reenabled=list(reenable), anomaly=anomaly,
                    it_key_next=crypto.key_fingerprint(rotation.policy.it_public) if rotation else None)
    return CheckinResult(renewal=renewal, head=head, entries=entries, removed=revoked, anomaly=anomaly,
                         updated=changed)
