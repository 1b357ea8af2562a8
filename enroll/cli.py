"""``sekisho-enroll``: IT's station — registry, policy, users, roles, laptops.

    sekisho-enroll registry init | info | backup DEST
    sekisho-enroll policy keygen | sign POLICY.toml | check POLICY.toml
    sekisho-enroll role set NAME --app APP... --citrix-store URL | --rdp-host H | --horizon-server URL
    sekisho-enroll user add ID --name NAME [--kana KANA] [--department D] [--role R]...
    sekisho-enroll user enrol ID --fido2 [--passphrase] | --totp [--totp-seed BASE32] | --slot KIND...
    sekisho-enroll user list | show ID | disable ID | enable ID
    sekisho-enroll device provision REQUEST --user ID... --confirm FINGERPRINT --iccid … --apn … -o BUNDLE
    sekisho-enroll device checkin REQUEST -o RENEWAL [--accept-anomaly]
    sekisho-enroll device list
    sekisho-enroll roster import | diff --csv FILE [--map FIELD=HEADER] | --ldap URL --base DN [--group-map G=ROLE]
    sekisho-enroll helpdesk recovery --device ID --user ID --key-id KID | extend --device ID --days N

Keys: IT's signing key and the station key live in the OS keyring (``--keys-dir`` uses plain
files instead: tests and the demo only). Secrets (passphrases, the APN password, a TOTP
code) are asked with getpass, or read one per line from piped standard input.
Exit codes: 0 done; 1 refused; 2 could not run.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from enroll import office
from enroll.commands import run
from enroll.officecheck import NotAtTheOffice, check_office
from enroll.registry import Registry
from sekisho import crypto
from sekisho.bundle import DeviceRequest
from sekisho.factors.interaction import Prompt, UserInteraction
from sekisho.factors.totp import TotpSeed, matching_step
from sekisho.files import atomic_write
from sekisho.policy import Policy, load_policy_file, parse_policy, sign_policy
from sekisho.store.keysource import DeviceKeySource, InsecureFileKeySource, KeyringKeySource
from sekisho.store.records import SlotKind, UserRecord
from sekisho.trail import EventType, Trail


def _secret(label: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"{label}: ")
    line = sys.stdin.readline()
    if not line:
        raise click.UsageError(f"{label}: nothing on standard input.")
    return line.rstrip("\r\n")


class TerminalInteraction(UserInteraction):
    """The person at the station, through the terminal (or piped answers)."""

    def request_pin(self, prompt: Prompt) -> str:
        return _secret("Security key PIN")

    def request_passphrase(self, prompt: Prompt) -> str:
        return _secret("Passphrase")

    def prompt_touch(self, prompt: Prompt) -> None:
        click.echo("Touch the security key.", err=True)

    def prompt_fingerprint(self, prompt: Prompt) -> None:
        click.echo("Place your finger on the key's sensor.", err=True)


class Station:
    def __init__(self, registry_path: Path, keys_dir: Path | None) -> None:
        self.registry_path = registry_path
        self.keys_dir = keys_dir

    def _source(self, name: str) -> DeviceKeySource:
        if self.keys_dir is not None:
            return InsecureFileKeySource(self.keys_dir / f"{name}.key")
        return KeyringKeySource(f"sekisho-{name}")

    @property
    def station_keys(self) -> DeviceKeySource:
        return self._source("station")

    @property
    def it_keys(self) -> DeviceKeySource:
        return self._source("it")

    @property
    def next_it_keys(self) -> DeviceKeySource:
        return self._source("it-next")

    @property
    def log_path(self) -> Path:
        return self.registry_path.parent / "it-log.jsonl"

    def registry(self) -> Registry:
        """The registry, with IT's signed log attached (every change and code goes there)."""
        registry = Registry.open(self.registry_path, self.station_keys)
        try:
            registry.log = Trail.open(self.log_path, self.station_keys)
        except BaseException:
            registry.close()
            raise
        return registry

    def it_private(self) -> bytearray:
        return self.it_keys.require()

    def it_public(self) -> bytes:
        private = self.it_private()
        try:
            return crypto.ed25519_public_of(private)
        finally:
            crypto.wipe(private)

    def at_the_office(self, policy: Policy) -> None:
        """Refuse unless the policy's office-network check passes; either way, IT's log says so."""
        try:
            host = check_office(policy)
        except NotAtTheOffice as exc:
            with self.registry() as reg:
                reg.record(EventType.OFFICE_CHECK, ok=False, problem=str(exc))
            raise
        with self.registry() as reg:
            reg.record(EventType.OFFICE_CHECK, ok=True, host=host)

    def signed_policy(self, path: Path) -> office.SignedPolicy:
        policy_path = Path(path)
        load_policy_file(policy_path, self.it_public())  # refuses an unsigned or wrongly signed policy
        return office.SignedPolicy(policy_path.read_bytes(), policy_path.with_name(policy_path.name + ".sig")
                                   .read_bytes(), self.it_public())


@click.group()
@click.option("--registry", "registry_path", type=click.Path(path_type=Path), envvar="SEKISHO_REGISTRY",
              default="registry.db", show_default=True)
@click.option("--keys-dir", type=click.Path(path_type=Path), envvar="SEKISHO_KEYS_DIR",
              help="Plain key files instead of the keyring (tests and the demo only).")
@click.option("--debug", is_flag=True)
@click.version_option(package_name="sekisho")
@click.pass_context
def cli(ctx: click.Context, registry_path: Path, keys_dir: Path | None, debug: bool) -> None:
    """Sekisho's enrolment station."""
    ctx.obj = Station(registry_path, keys_dir)


# --- registry ---------------------------------------------------------------------------------


@cli.group()
def registry() -> None:
    """The station's registry."""


@registry.command("init")
@click.pass_obj
def registry_init(station: Station) -> None:
    """A new registry and IT's signed log (its root, it-log-root.pem, is for the auditors)."""
    Registry.create(station.registry_path, station.station_keys).close()
    with Trail.create(station.log_path, station.station_keys, device_id=f"station:{socket.gethostname()}") as log:
        atomic_write(station.log_path.with_name("it-log-root.pem"), log.root_pem().encode(), mode=0o644)
    click.echo(f"Registry created at {station.registry_path}; IT's log at {station.log_path} "
               f"(root: {station.log_path.with_name('it-log-root.pem')}).")


@registry.command("info")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def registry_info(station: Station, as_json: bool) -> None:
    with station.registry() as reg:
        info = {"path": str(station.registry_path), "users": len(reg.users()), "devices": len(reg.devices())}
    click.echo(json.dumps(info) if as_json else "\n".join(f"{k:8} {v}" for k, v in info.items()))


@registry.command("backup")
@click.argument("dest", type=click.Path(path_type=Path))
@click.pass_obj
def registry_backup(station: Station, dest: Path) -> None:
    """A consistent copy (SQLite's online backup), written atomically; still sealed."""
    if dest.exists():
        raise click.UsageError(f"{dest} exists; choose a new file.")
    tmp = dest.with_name(dest.name + ".partial")
    with station.registry() as reg:
        target = sqlite3.connect(tmp)
        try:
            reg._conn.backup(target)
        finally:
            target.close()
    tmp.replace(dest)
    click.echo(f"Backed up to {dest} (it needs the station key to open).")


# --- policy ---------------------------------------------------------------------------------


@cli.group()
def policy() -> None:
    """IT's signing key and the signed policy."""


@policy.command("keygen")
@click.option("-o", "--output", type=click.Path(path_type=Path), default="it-public.pem", show_default=True)
@click.pass_obj
def policy_keygen(station: Station, output: Path) -> None:
    """Make IT's Ed25519 key (kept in the keyring) and export its public half as PEM."""
    if station.it_keys.load() is not None:
        raise click.UsageError("IT's key already exists; rotation is announced in a renewal (docs/provisioning.md).")
    crypto.wipe(station.it_keys.create())
    atomic_write(output, crypto.public_key_pem(station.it_public()).encode(), mode=0o644)
    click.echo(f"IT key {crypto.key_fingerprint(station.it_public())}; public key in {output}.")


@policy.command("rotate")
@click.option("--finish", is_flag=True, help="Switch to the announced key (every laptop has checked in since).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default="it-public-next.pem", show_default=True)
@click.pass_obj
def policy_rotate(station: Station, finish: bool, output: Path) -> None:
    """Rotate IT's key: make the next key (announced at each check-in, signed by the
    current one); once every laptop has checked in, ``--finish`` makes it current."""
    if not finish:
        crypto.wipe(station.next_it_keys.create())
        next_key = station.next_it_keys.require()
        atomic_write(output, crypto.public_key_pem(crypto.ed25519_public_of(next_key)).encode(), mode=0o644)
        crypto.wipe(next_key)
        click.echo(f"Next IT key in {output}; check-ins now announce it. Then: policy rotate --finish, policy sign.")
        return
    next_key = station.next_it_keys.require()
    try:
        station.it_keys.replace(next_key)
    finally:
        crypto.wipe(next_key)
    click.echo(f"IT key is now {crypto.key_fingerprint(station.it_public())}. Sign the policy again "
               "(policy sign), and remove the it-next key from the keyring.")


@policy.command("sign")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.pass_obj
def policy_sign(station: Station, path: Path) -> None:
    text = path.read_bytes()
    private = station.it_private()
    try:
        signature = sign_policy(text, private)
    finally:
        crypto.wipe(private)
    atomic_write(path.with_name(path.name + ".sig"), signature, mode=0o644)
    click.echo(f"Signed: {path.name}.sig")


@policy.command("check")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.pass_obj
def policy_check(station: Station, path: Path) -> None:
    """Check the schema and values (and the signature, if there is one)."""
    parsed = parse_policy(path.read_bytes())
    if path.with_name(path.name + ".sig").exists():
        load_policy_file(path, station.it_public())
        click.echo("Signature: valid (IT's key).")
    for name, value in vars(parsed).items():
        click.echo(f"  {name:32} {value}")


# --- roles and users -------------------------------------------------------------------------------


@cli.group()
def role() -> None:
    """Roles: which apps (and Citrix store) a duty needs."""


@role.command("set")
@click.argument("name")
@click.option("--app", "apps", multiple=True, required=True)
@click.option("--citrix-store", help="Citrix StoreFront store URL (apps opened by name).")
@click.option("--rdp-host", help="Remote Desktop host (mstsc / FreeRDP RemoteApps).")
@click.option("--horizon-server", help="VMware Horizon connection server URL.")
@click.pass_obj
def role_set(station: Station, name: str, apps: tuple[str, ...], citrix_store: str | None, rdp_host: str | None,
             horizon_server: str | None) -> None:
    """The apps a duty needs and where its VDI client opens them (at least one of the three)."""
    connection = {k: v for k, v in (("store_url", citrix_store), ("rdp_host", rdp_host),
                                    ("horizon_server", horizon_server)) if v}
    if not connection:
        raise click.UsageError("Give --citrix-store, --rdp-host or --horizon-server.")
    with station.registry() as reg:
        reg.set_role(name, list(apps), connection)
    click.echo(f"Role {name}: {', '.join(apps)}")


@cli.group()
def user() -> None:
    """Staff: add, enrol (the user present), list, disable."""


@user.command("add")
@click.argument("user_id")
@click.option("--name", required=True)
@click.option("--kana", default="")
@click.option("--department", default="")
@click.option("--role", "roles", multiple=True)
@click.pass_obj
def user_add(station: Station, user_id: str, name: str, kana: str, department: str, roles: tuple[str, ...]) -> None:
    with station.registry() as reg:
        reg.add_user(UserRecord(user_id=user_id, display_name=name, kana=kana, department=department, roles=roles,
                                identity_public=bytes(32)))
    click.echo(f"Added {user_id} {name}.")


@user.command("enrol")
@click.argument("user_id")
@click.option("--slot", "slots", multiple=True, type=click.Choice(["fido2-uv", "pin+fido2", "pin+totp"]),
              help="A slot kind to enrol (repeatable).")
@click.option("--fido2", is_flag=True, help="A security key (fingerprint or key PIN): fido2-uv.")
@click.option("--passphrase", "with_passphrase", is_flag=True,
              help="With --fido2: key and passphrase (pin+fido2); with --totp: passphrase and code (pin+totp).")
@click.option("--totp", is_flag=True, help="A passphrase and a one-time code app or token (pin+totp).")
@click.option("--piv", is_flag=True, help="A PIV card (its PIN and its key management key): piv.")
@click.option("--card-sig", "card_sig", type=click.Choice(["jpki", "piv"]),
              help="An RSA signature card: jpki (the My Number card's user-authentication key) or piv (slot 9A).")
@click.option("--reader", help="The card reader to use (part of its name); else the first card found.")
@click.option("--policy", "policy_path", type=click.Path(exists=True, path_type=Path), default="policy.toml",
              show_default=True)
@click.option("--soft-key", type=click.Path(exists=True, path_type=Path), help="A software key (tests, demo).")
@click.option("--trusted-root", "roots", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="An attestation root certificate (DER or PEM) of an approved key maker.")
@click.option("--totp-seed", help="A hardware token's seed (base32); else one is generated and shown as a QR code.")
@click.option("--identify-by-touch", "discoverable", is_flag=True,
              help="With --fido2: the key keeps the staff id, so a touch names the user at the logon window "
                   "(uses one of the key's discoverable credential places).")
@click.pass_obj
def user_enrol(station: Station, user_id: str, slots: tuple[str, ...], fido2: bool, with_passphrase: bool,
               totp: bool, piv: bool, card_sig: str | None, reader: str | None, policy_path: Path,
               soft_key: Path | None, roots: tuple[Path, ...], totp_seed: str | None, discoverable: bool) -> None:
    """Enrol the user's factors (they are at the station); replaces earlier slots.

    Factors combine into slots: --fido2 (fido2-uv), --fido2 --passphrase (pin+fido2),
    --totp (pin+totp, with a passphrase); or name the slots with --slot.
    """
    from fido2.ctap import CtapDevice

    signed = station.signed_policy(policy_path)
    station.at_the_office(signed.policy)
    kinds = [SlotKind(s) for s in slots]
    if fido2:
        kinds.append(SlotKind.PIN_FIDO2 if with_passphrase else SlotKind.FIDO2_UV)
    if totp or totp_seed:
        kinds.append(SlotKind.PIN_TOTP)
    if piv:
        kinds.append(SlotKind.PIV)
    if card_sig:
        kinds.append(SlotKind.CARD_SIG)
    card = None
    if piv or card_sig:
        from sekisho.devices.card import pcsc_cards

        inserted = [c for c in pcsc_cards() if reader is None or reader in c.reader]
        if not inserted:
            raise click.UsageError("No card is inserted" + (f" in a reader named like {reader!r}." if reader else "."))
        card = inserted[0]
    kinds = list(dict.fromkeys(kinds))
    if not kinds:
        raise click.UsageError("Name the factors: --fido2, --totp, --passphrase, or --slot KIND.")
    device: CtapDevice | None = None
    trusted = [_load_cert(p) for p in roots]
    if any(k in (SlotKind.FIDO2_UV, SlotKind.PIN_FIDO2) for k in kinds):
        if soft_key:
            from sekisho.devices.softkey import SoftKey

            key = SoftKey.load(soft_key)
            device, trusted = key, [*trusted, key.attestation_root()]
        else:
            from sekisho.factors.fido2 import connected_keys

            found = connected_keys()
            if not found:
                raise click.UsageError("No security key is connected.")
            device = found[0]
    if device is not None and SlotKind.FIDO2_UV in kinds:
        _offer_key_pin(device)
    passphrase = None
    if any(k.uses_passphrase for k in kinds):
        passphrase = _secret("New passphrase (10 characters or more)")
        if _secret("The same passphrase again") != passphrase:
            raise click.UsageError("The two passphrases differ.")
    seed = None
    if SlotKind.PIN_TOTP in kinds:
        seed = TotpSeed.from_base32(totp_seed) if totp_seed else TotpSeed.generate()
        if not totp_seed:
            _show_qr(seed, user_id)
        code = _secret("The code the app shows now")
        if matching_step(seed, code, time.time(), drift=1) is None:
            raise click.UsageError("That code does not match: scan the QR code again.")
    requests = [office.SlotRequest(kind=k, device=device, totp_seed=seed, card=card, card_type=card_sig or "piv",
                                   discoverable=discoverable)
                for k in kinds]
    with station.registry() as reg:
        made = office.enrol_user(reg, user_id, requests, policy=signed.policy, interaction=TerminalInteraction(),
                                 trusted_roots=trusted, passphrase=passphrase)
    click.echo(f"Enrolled {user_id}: {', '.join(s.kind.value for s in made)}.")


def _offer_key_pin(device: Any) -> None:
    """A key with neither a fingerprint nor a PIN cannot verify its user: set a PIN on it now."""
    from fido2.ctap2.base import Ctap2
    from fido2.ctap2.pin import ClientPin

    from sekisho.factors.fido2 import KeyInfo, device_errors

    with device_errors():
        ctap = Ctap2(device)
        info = KeyInfo.from_ctap(ctap)
        if info.can_verify_user or info.client_pin is None:
            return
        click.echo("This security key has no PIN. Set one now (4 characters or more); the key counts "
                   "wrong PINs itself.", err=True)
        pin = _secret("New key PIN")
        if _secret("The same PIN again") != pin or len(pin) < 4:
            raise click.UsageError("The PINs differ or are shorter than 4 characters.")
        ClientPin(ctap).set_pin(pin)


def _load_cert(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = path.read_bytes()
    cert = x509.load_pem_x509_certificate(data) if data.startswith(b"-----") else x509.load_der_x509_certificate(data)
    return cert.public_bytes(Encoding.DER)


def _show_qr(seed: TotpSeed, user_id: str) -> None:
    import segno

    segno.make(seed.provisioning_uri(account=user_id)).terminal(out=sys.stderr, compact=True)


@user.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def user_list(station: Station, as_json: bool) -> None:
    with station.registry() as reg:
        rows: list[dict[str, Any]] = [
            {"id": r.user_id, "name": r.display_name, "department": r.department, "roles": list(r.roles),
             "enabled": enabled, "slots": kinds} for r, enabled, kinds in reg.users()]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for row in rows:
        click.echo(f"{row['id']:10} {row['name']:12} {'' if row['enabled'] else '(disabled) '}"
                   f"{', '.join(row['slots']) or '(not enrolled)'}")


@user.command("show")
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def user_show(station: Station, user_id: str, as_json: bool) -> None:
    with station.registry() as reg:
        record, enabled = reg.user(user_id)
        slots = [{"slot": s.slot_id, "kind": s.kind.value, "created": s.created_at,
                  "aaguid": s.params["aaguid"].hex() if isinstance(s.params.get("aaguid"), bytes) else None,
                  "uv": s.params.get("uv_method")} for s in reg.slots(user_id)]
        laptops = [d.device_id for d in reg.devices() if user_id in d.delivered]
    doc = {"id": record.user_id, "name": record.display_name, "kana": record.kana, "department": record.department,
           "roles": list(record.roles), "enabled": enabled, "revision": record.revision, "slots": slots,
           "laptops": laptops}
    if as_json:
        click.echo(json.dumps(doc, ensure_ascii=False))
        return
    click.echo(f"{record.user_id} {record.display_name} ({record.kana}) {record.department} "
               f"roles {', '.join(record.roles) or '-'}{'' if enabled else ' DISABLED'}")
    for slot in slots:
        click.echo(f"  slot {slot['slot']}: {slot['kind']}" + (f" (AAGUID {slot['aaguid']})" if slot["aaguid"] else ""))
    click.echo(f"  on laptops: {', '.join(laptops) or '-'}")


@user.command("revoke-factor")
@click.argument("user_id")
@click.argument("slot_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_obj
def user_revoke_factor(station: Station, user_id: str, slot_id: int, yes: bool) -> None:
    """Remove one enrolled slot (a lost key); laptops drop it at their next provisioning."""
    if not yes and not click.confirm(f"Remove slot {slot_id} of {user_id}?", err=True):
        raise click.exceptions.Abort
    with station.registry() as reg:
        reg.revoke_slot(user_id, slot_id)
    click.echo(f"Slot {slot_id} of {user_id} removed.")


@user.command("disable")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_obj
def user_disable(station: Station, user_id: str, yes: bool) -> None:
    """Revoke: the user is removed from every laptop at its next check-in."""
    if not yes and not click.confirm(f"Disable {user_id} on every laptop?", err=True):
        raise click.exceptions.Abort
    with station.registry() as reg:
        reg.set_enabled(user_id, False)
    click.echo(f"{user_id} disabled; laptops drop them at check-in.")


@user.command("enable")
@click.argument("user_id")
@click.pass_obj
def user_enable(station: Station, user_id: str) -> None:
    with station.registry() as reg:
        reg.set_enabled(user_id, True)
    click.echo(f"{user_id} enabled.")


# --- devices ---------------------------------------------------------------------------------------


@cli.group("device")
def device_group() -> None:
    """Laptops: provision and check in."""


@device_group.command("provision")
@click.argument("request", type=click.Path(exists=True, path_type=Path))
@click.option("--user", "users", multiple=True, help="A staff id (repeatable).")
@click.option("--role", "roles", multiple=True, help="Every enabled, enrolled user with this role (repeatable).")
@click.option("--confirm", "confirmed", help="The fingerprint the laptop shows (asked if not given).")
@click.option("--iccid", required=True)
@click.option("--apn", required=True)
@click.option("--apn-user", required=True)
@click.option("--policy", "policy_path", type=click.Path(exists=True, path_type=Path), default="policy.toml")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.pass_obj
def device_provision(station: Station, request: Path, users: tuple[str, ...], roles: tuple[str, ...],
                     confirmed: str | None, iccid: str, apn: str, apn_user: str, policy_path: Path,
                     output: Path) -> None:
    """A bundle for the laptop that wrote REQUEST (after IT confirms its fingerprint)."""
    chosen = list(dict.fromkeys(users))
    if roles:
        with station.registry() as reg:
            chosen += [r.user_id for r, enabled, kinds in reg.users()
                       if enabled and kinds and set(r.roles) & set(roles) and r.user_id not in chosen]
    if not chosen:
        raise click.UsageError("Choose users with --user or --role.")
    users = tuple(chosen)
    data = request.read_bytes()
    parsed = DeviceRequest.from_bytes(data)
    if confirmed is None:
        click.echo(f"Laptop {parsed.device_id} ({parsed.host}). Compare with the laptop's screen.", err=True)
        confirmed = click.prompt("Fingerprint shown on the laptop", err=True) if sys.stdin.isatty() else \
            sys.stdin.readline().strip()
    signed = station.signed_policy(policy_path)
    station.at_the_office(signed.policy)
    sim = office.Sim(iccid=iccid, apn=apn, apn_user=apn_user, apn_password=_secret("APN password"))
    private = station.it_private()
    try:
        with station.registry() as reg:
            bundle = office.provision(reg, data, confirmed_fingerprint=confirmed, users=list(users), sim=sim,
                                      signed_policy=signed, it_private=private,
                                      progress=lambda done, total: click.echo(f"  {done}/{total} users", err=True)
                                      if total >= 500 else None)
    finally:
        crypto.wipe(private)
    atomic_write(output, bundle, mode=0o600)
    click.echo(f"Bundle for {parsed.device_id} with {len(users)} users: {output}")


@device_group.command("checkin")
@click.argument("request", type=click.Path(exists=True, path_type=Path))
@click.option("--policy", "policy_path", type=click.Path(exists=True, path_type=Path), default="policy.toml")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--accept-anomaly", is_flag=True, help="Renew although the trail does not verify (after an inquiry).")
@click.option("--reenable", multiple=True, help="Clear a user's lockout on this laptop (repeatable).")
@click.pass_obj
def device_checkin(station: Station, request: Path, policy_path: Path, output: Path, accept_anomaly: bool,
                   reenable: tuple[str, ...]) -> None:
    """Verify the laptop's trail, store it, and write its renewal."""
    signed = station.signed_policy(policy_path)
    station.at_the_office(signed.policy)
    private = station.it_private()
    next_key = station.next_it_keys.load()
    rotation = None
    if next_key is not None:  # a rotation: the policy and grants signed by the next key go with it
        rotation = office.Rotation(next_key, office.SignedPolicy(signed.text, sign_policy(signed.text, next_key),
                                                                 crypto.ed25519_public_of(next_key)))
    try:
        with station.registry() as reg:
            result = office.checkin(reg, request.read_bytes(), signed_policy=signed, it_private=private,
                                    accept_anomaly=accept_anomaly, reenable=list(reenable), rotation=rotation)
    finally:
        crypto.wipe(private)
        crypto.wipe(next_key)
    atomic_write(output, result.renewal, mode=0o600)
    if result.anomaly:
        click.echo(f"WARNING: the trail did not verify ({result.anomaly}); renewed on request.", err=True)
    click.echo(f"Trail stored ({result.entries} entries, head {result.head}); renewal: {output}"
               + (f"; removes {', '.join(result.removed)}" if result.removed else "")
               + (f"; new slots for {', '.join(result.updated)}" if result.updated else "")
               + ("; announces IT's next key" if rotation else ""))


@device_group.command("retire")
@click.argument("device_id")
@click.option("--reason", required=True, help="e.g. lost, stolen, decommissioned.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_obj
def device_retire(station: Station, device_id: str, reason: str, yes: bool) -> None:
    """A lost or decommissioned laptop: never provisioned or checked in again."""
    if not yes and not click.confirm(f"Retire {device_id} for good?", err=True):
        raise click.exceptions.Abort
    with station.registry() as reg:
        reg.retire_device(device_id, reason)
        sim = reg.device(device_id)
    click.echo(f"{device_id} retired. Now ask the carrier to change the APN password of SIM "
               f"{sim.sim.get('iccid') if sim else '?'} (the laptop holds it in its grants).")


@device_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def device_list(station: Station, as_json: bool) -> None:
    with station.registry() as reg:
        rows: list[dict[str, Any]] = [
            {"id": d.device_id, "fingerprint": d.fingerprint, "serial": d.serial, "users": d.users,
             "last_head": d.last_head, "last_checkin": d.last_checkin, **d.sim} for d in reg.devices()]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for row in rows:
        click.echo(f"{row['id']}  serial {row['serial']}  users {', '.join(row['users'])}  head {row['last_head']}")


# --- roster ----------------------------------------------------------------------------------------


@cli.group()
def roster() -> None:
    """Staff lists from a CSV export or Active Directory / LDAP."""


def _load_roster(station: Station, csv_path: Path | None, mapping: tuple[str, ...], ldap_options: dict[str, Any]
                 ) -> tuple[Any, Registry]:
    from enroll import roster as rosters

    reg = station.registry()
    try:
        known = reg.role_names()
        if csv_path is not None:
            return rosters.read_csv(csv_path.read_bytes(), mapping=rosters.parse_mapping(mapping),
                                    known_roles=known, source=str(csv_path)), reg
        if ldap_options.get("url"):
            from enroll.directory import read_ldap

            return read_ldap(known_roles=known, **ldap_options), reg
        raise click.UsageError("Give --csv FILE or --ldap URL --base DN.")
    except BaseException:
        reg.close()
        raise


def _report(changes: Any, rejections: Sequence[Any]) -> None:
    for r in rejections:
        click.echo(f"  line {r.line}: {r.reason}", err=True)
    click.echo(f"{len(changes.added)} new, {len(changes.updated)} updated, {changes.unchanged} unchanged.")
    for entry, fields in changes.updated:
        click.echo(f"  updated {entry.user_id}: {', '.join(fields)}")
    if changes.leavers:
        click.echo(f"Leavers (in the registry, not in the roster; NOT removed — disable them with "
                   f"`user disable`): {', '.join(changes.leavers)}")


_ldap_options = [
    click.option("--ldap", "ldap_url", help="ldap:// or ldaps:// URL of Active Directory or OpenLDAP."),
    click.option("--base", "ldap_base", help="The search base (DN)."),
    click.option("--bind", "ldap_bind", help="The DN (or user@domain) to bind as; its password is asked."),
    click.option("--group-map", "group_map", multiple=True, help="GROUP=ROLE: a group (cn or DN) gives a role."),
]


def _with_ldap(f: Any) -> Any:
    for option in reversed(_ldap_options):
        f = option(f)
    return f


@roster.command("import")
@click.option("--csv", "csv_path", type=click.Path(exists=True, path_type=Path))
@click.option("--map", "mapping", multiple=True, help="FIELD=HEADER, e.g. id=社員番号 (fields: id, name, kana, "
              "department, roles).")
@_with_ldap
@click.pass_obj
def roster_import(station: Station, csv_path: Path | None, mapping: tuple[str, ...], ldap_url: str | None,
                  ldap_base: str | None, ldap_bind: str | None, group_map: tuple[str, ...]) -> None:
    """Add and update staff from the roster; report leavers (never removed silently)."""
    from enroll import roster as rosters

    options = _ldap(ldap_url, ldap_base, ldap_bind, group_map)
    staff, reg = _load_roster(station, csv_path, mapping, options)
    with reg:
        if staff.rejections:
            _report(rosters.RosterChanges(), staff.rejections)
        changes = rosters.import_roster(reg, staff)
    _report(changes, [])


@roster.command("diff")
@click.option("--csv", "csv_path", type=click.Path(exists=True, path_type=Path))
@click.option("--map", "mapping", multiple=True)
@_with_ldap
@click.pass_obj
def roster_diff(station: Station, csv_path: Path | None, mapping: tuple[str, ...], ldap_url: str | None,
                ldap_base: str | None, ldap_bind: str | None, group_map: tuple[str, ...]) -> None:
    """What an import would change (nothing is written)."""
    from enroll import roster as rosters

    staff, reg = _load_roster(station, csv_path, mapping, _ldap(ldap_url, ldap_base, ldap_bind, group_map))
    with reg:
        _report(rosters.diff(reg, staff), staff.rejections)


def _ldap(url: str | None, base: str | None, bind: str | None, group_map: tuple[str, ...]) -> dict[str, Any]:
    if not url:
        return {}
    if not base:
        raise click.UsageError("--ldap needs --base DN.")
    groups = {}
    for pair in group_map:
        group, sep, role = pair.rpartition("=")
        if not sep or not group or not role:
            raise click.UsageError(f"--group-map {pair!r}: expected GROUP=ROLE.")
        groups[group] = role
    return {"url": url, "base": base, "bind": bind, "password": _secret("LDAP password") if bind else None,
            "group_map": groups}


# --- helpdesk --------------------------------------------------------------------------------------


@cli.group()
def helpdesk() -> None:
    """Codes read over the phone: recovery and lease extension."""


@helpdesk.command("recovery")
@click.option("--device", "device_id", required=True)
@click.option("--user", "user_id", required=True)
@click.option("--key-id", required=True, help="The key id the laptop shows (sekisho-agent recover).")
@click.pass_obj
def helpdesk_recovery(station: Station, device_id: str, user_id: str, key_id: str) -> None:
    """The recovery code to read out, once the caller's identity is checked."""
    click.echo("Before reading it out: check the caller's identity (call back on the number in the staff "
               "directory, or ask their supervisor). 本人確認を行ってから読み上げてください。", err=True)
    with station.registry() as reg:
        code = office.recovery_code(reg, device_id, user_id, key_id)
    click.echo(code)
    click.echo(f"Issued for {user_id} on {device_id} (key id {key_id.upper()}); recorded in IT's log. "
               "The person must be re-enrolled at the next check-in.", err=True)


@helpdesk.command("extend")
@click.option("--device", "device_id", required=True)
@click.option("--days", type=click.IntRange(1, 30), required=True)
@click.pass_obj
def helpdesk_extend(station: Station, device_id: str, days: int) -> None:
    """An extension code: the laptop may work offline ``--days`` more days from today."""
    end = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)
    with station.registry() as reg:
        code = office.extension_code(reg, device_id, end)
    click.echo(code)
    click.echo(f"Extension for {device_id} until {end} (UTC); recorded in IT's log.", err=True)


def main(argv: Sequence[str] | None = None) -> Any:
    return run(cli, "sekisho-enroll", argv)


if __name__ == "__main__":
    sys.exit(main())
