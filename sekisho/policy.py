"""IT's signed policy: what a laptop permits, with safe defaults.

The policy is a TOML file signed by IT with Ed25519 over its exact bytes (a detached
base64 signature beside it, ``policy.toml.sig``). The signature is checked against
IT's pinned public key before a single byte is parsed; every load re-verifies.
Unknown keys are refused by name, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sekisho import crypto
from sekisho.crypto import Argon2Params
from sekisho.errors import FormatError, PolicyError, SignatureInvalid
from sekisho.factors.passphrase import PASSPHRASE_FLOOR
from sekisho.store.records import DEFAULT_SLOT_KINDS, POLICY_SLOT_KINDS, SlotKind

POLICY_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_AAGUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SIGNATURE_SUFFIX = ".sig"
NETWORK_BACKENDS = ("auto", "networkmanager", "netsh", "simulated")


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What IT permits on a laptop. The defaults are the safe choice."""

    #: Slot kinds a user may unlock with, in the order the gate prefers them.
    #: By default only kinds whose second factor a device enforces.
    permitted_slot_kinds: tuple[SlotKind, ...] = DEFAULT_SLOT_KINDS
    passphrase_min_length: int = PASSPHRASE_FLOOR
    argon2: Argon2Params = field(default_factory=Argon2Params)
    allow_software_authenticators: bool = False
    #: Security key models (AAGUIDs) allowed to hold slots; empty: any attested model.
    aaguids: tuple[str, ...] = ()
    totp_drift_steps: int = 1
    #: Days a laptop may work offline after a check-in (also counted in running time).
    lease_days: int = 14
    #: Unlocks allowed between check-ins; 0: no limit.
    lease_max_unlocks: int = 0
    #: Office-network check at the enrolment station: TLS to one of these ``host:port``...
    office_hosts: tuple[str, ...] = ()
    #: ...whose certificate's SHA-256 (DER, hex) is one of these.
    office_fingerprints: tuple[str, ...] = ()
    #: Programs the launcher may start (absolute paths): the only ones it ever runs.
    launch_allowed: tuple[str, ...] = ()
    #: Seconds a launched program has to close at lock before it is killed.
    launch_close_timeout: int = 10
    #: How the closed-SIM link is brought up: "auto" (NetworkManager on Linux, netsh on
    #: Windows), "networkmanager", "netsh", or "simulated" (the demo and tests only).
    network_backend: str = "auto"
    #: Seconds to wait for the SIM link (the report measured 1:03 to 1:50).
    network_connect_timeout: int = 180
    #: The office endpoint probed once the link is up (``host:port``, TCP); empty: no probe.
    network_probe: str = ""
    network_probe_tries: int = 3
    #: Turn the Wi-Fi radio off while unlocked (besides disconnecting every interface).
    network_radios_off: bool = True
    #: Bring back, at lock, the interfaces that isolation took down.
    network_restore: bool = True
    #: Times a dropped SIM link is brought up again before the laptop locks.
    network_link_retries: int = 2
    #: Lock after this many minutes of an idle session (0: never).
    lock_idle_minutes: int = 15
    #: Staff ids of this laptop's latest users the logon window may offer (0: none — a pool
    #: laptop must not show who uses it; a laptop issued to a few people may).
    logon_recent_users: int = 0
    #: The language of the tray, the logon window and the terminal client ("ja", "en");
    #: empty: each desktop's own. ``--lang`` and SEKISHO_LANG still override it.
    ui_language: str = ""
    version: int = POLICY_VERSION

    def __post_init__(self) -> None:
        if self.passphrase_min_length < PASSPHRASE_FLOOR:
            raise PolicyError(
                f"passphrase.min_length must be at least {PASSPHRASE_FLOOR} "
                "(a passphrase slot can be guessed offline)."
            )
        if not 0 <= self.totp_drift_steps <= 2:
            raise PolicyError("totp.drift_steps must be 0, 1 or 2.")
        if not 1 <= self.lease_days <= 90:
            raise PolicyError("lease.days must be between 1 and 90.")
        if self.lease_max_unlocks < 0:
            raise PolicyError("lease.max_unlocks must be 0 (no limit) or more.")
        for host in self.office_hosts:
            name, _, port = str(host).rpartition(":")
            if not name or not port.isdigit() or not 0 < int(port) < 65536:
                raise PolicyError(f"office.hosts: {host!r} is not host:port.")
        for fingerprint in self.office_fingerprints:
            if not isinstance(fingerprint, str) or not _SHA256.fullmatch(fingerprint):
                raise PolicyError(f"office.fingerprints: {fingerprint!r} is not 64 lower-case hex digits (SHA-256).")
        if bool(self.office_hosts) != bool(self.office_fingerprints):
            raise PolicyError("office.hosts and office.fingerprints go together.")
        for program in self.launch_allowed:
            if not isinstance(program, str) or not (program.startswith("/") or program[1:3] in (":\\", ":/")):
                raise PolicyError(f"launch.allowed: {program!r} is not an absolute path.")
        if not 1 <= self.launch_close_timeout <= 120:
            raise PolicyError("launch.close_timeout must be between 1 and 120 seconds.")
        if self.network_backend not in NETWORK_BACKENDS:
            raise PolicyError(f"network.backend must be one of {', '.join(NETWORK_BACKENDS)}.")
        if not 10 <= self.network_connect_timeout <= 900:
            raise PolicyError("network.connect_timeout must be between 10 and 900 seconds.")
        if self.network_probe:
            name, _, port = self.network_probe.rpartition(":")
            if not name or not port.isdigit() or not 0 < int(port) < 65536:
                raise PolicyError(f"network.probe: {self.network_probe!r} is not host:port.")
        if not 1 <= self.network_probe_tries <= 10:
            raise PolicyError("network.probe_tries must be between 1 and 10.")
        if not 0 <= self.network_link_retries <= 10:
            raise PolicyError("network.link_retries must be between 0 and 10.")
        if not 0 <= self.lock_idle_minutes <= 480:
            raise PolicyError("lock.idle_minutes must be between 0 (never) and 480.")
        if not 0 <= self.logon_recent_users <= 10:
            raise PolicyError("logon.recent_users must be between 0 (none) and 10.")
        if self.ui_language not in ("", "ja", "en"):
            raise PolicyError('ui.language must be "ja", "en" or "" (each desktop\'s own language).')
        if not self.permitted_slot_kinds:
            raise PolicyError("slots.permitted must name at least one slot kind.")
        if len(set(self.permitted_slot_kinds)) != len(self.permitted_slot_kinds):
            raise PolicyError("slots.permitted names a slot kind twice.")
        for aaguid in self.aaguids:
            if not isinstance(aaguid, str) or not _AAGUID.fullmatch(aaguid):
                raise PolicyError(f"authenticators.aaguids: {aaguid!r} is not an AAGUID "
                                  "(8-4-4-4-12 lower-case hex digits).")

    def permits(self, kind: SlotKind) -> bool:
        return kind in self.permitted_slot_kinds

    def to_toml(self) -> str:
        kinds = ", ".join(f'"{k.value}"' for k in self.permitted_slot_kinds)
        aaguids = ", ".join(f'"{a}"' for a in self.aaguids)
        hosts = ", ".join(f'"{h}"' for h in self.office_hosts)
        fingerprints = ", ".join(f'"{f}"' for f in self.office_fingerprints)
        allowed = ", ".join(json.dumps(p, ensure_ascii=False) for p in self.launch_allowed)
        a = self.argon2
        return (
            f"# Sekisho policy, signed by IT. Any change needs a new signature.\n"
            f"version = {self.version}\n\n"
            f"[slots]\npermitted = [{kinds}]\n\n"
            f"[passphrase]\nmin_length = {self.passphrase_min_length}\n\n"
            f"[argon2id]\ntime_cost = {a.time_cost}\nmemory_kib = {a.memory_kib}\n"
            f"parallelism = {a.parallelism}\n\n"
            f"[authenticators]\nallow_software = {str(self.allow_software_authenticators).lower()}\n"
            f"aaguids = [{aaguids}]\n\n"
            f"[totp]\ndrift_steps = {self.totp_drift_steps}\n\n"
            f"[lease]\ndays = {self.lease_days}\nmax_unlocks = {self.lease_max_unlocks}\n\n"
            f"[office]\nhosts = [{hosts}]\nfingerprints = [{fingerprints}]\n\n"
            f"[launch]\nallowed = [{allowed}]\nclose_timeout = {self.launch_close_timeout}\n\n"
            f"[network]\nbackend = \"{self.network_backend}\"\nconnect_timeout = {self.network_connect_timeout}\n"
            f"probe = {json.dumps(self.network_probe)}\nprobe_tries = {self.network_probe_tries}\n"
            f"radios_off = {str(self.network_radios_off).lower()}\nrestore = {str(self.network_restore).lower()}\n"
            f"link_retries = {self.network_link_retries}\n\n"
            f"[lock]\nidle_minutes = {self.lock_idle_minutes}\n\n"
            f"[logon]\nrecent_users = {self.logon_recent_users}\n\n"
            f"[ui]\nlanguage = \"{self.ui_language}\"\n"
        )


# table -> key -> (type, Policy field or argon2 field)
_SCHEMA: dict[str, dict[str, tuple[type, str]]] = {
    "": {"version": (int, "version")},
    "slots": {"permitted": (list, "permitted_slot_kinds")},
    "passphrase": {"min_length": (int, "passphrase_min_length")},
    "argon2id": {
        "time_cost": (int, "argon2.time_cost"),
        "memory_kib": (int, "argon2.memory_kib"),
        "parallelism": (int, "argon2.parallelism"),
    },
    "authenticators": {"allow_software": (bool, "allow_software_authenticators"), "aaguids": (list, "aaguids")},
    "totp": {"drift_steps": (int, "totp_drift_steps")},
    "lease": {"days": (int, "lease_days"), "max_unlocks": (int, "lease_max_unlocks")},
    "office": {"hosts": (list, "office_hosts"), "fingerprints": (list, "office_fingerprints")},
    "launch": {"allowed": (list, "launch_allowed"), "close_timeout": (int, "launch_close_timeout")},
    "network": {"backend": (str, "network_backend"), "connect_timeout": (int, "network_connect_timeout"),
                "probe": (str, "network_probe"), "probe_tries": (int, "network_probe_tries"),
                "radios_off": (bool, "network_radios_off"), "restore": (bool, "network_restore"),
                "link_retries": (int, "network_link_retries")},
    "lock": {"idle_minutes": (int, "lock_idle_minutes")},
    "logon": {"recent_users": (int, "logon_recent_users")},
    "ui": {"language": (str, "ui_language")},
}


def parse_policy(text: bytes) -> Policy:
    """Parse policy TOML whose signature has already been checked."""
    try:
        doc = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyError("The policy is not UTF-8 text.") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"The policy is not valid TOML: {exc}.") from None
    values: dict[str, Any] = {}
    argon2: dict[str, Any] = {}
    for table, entries in doc.items():
        if table in _SCHEMA and table and isinstance(entries, dict):
            items = [(table, k, v) for k, v in entries.items()]
        elif table in _SCHEMA[""]:
            items = [("", table, entries)]
        else:
            raise PolicyError(f"The policy has an unknown setting {table!r}.")
        for tbl, key, value in items:
            name = f"{tbl}.{key}" if tbl else key
            if key not in _SCHEMA[tbl]:
                raise PolicyError(f"The policy has an unknown setting {name!r}.")
            typ, target = _SCHEMA[tbl][key]
            if type(value) is not typ:
                raise PolicyError(f"The policy setting {name!r} must be of type {typ.__name__}.")
            if target.startswith("argon2."):
                argon2[target.removeprefix("argon2.")] = value
            else:
                values[target] = value
    if values.get("version", POLICY_VERSION) != POLICY_VERSION:
        raise PolicyError(f"Policy version {values['version']} is not supported by this Sekisho.")
    if "permitted_slot_kinds" in values:
        kinds = []
        for name in values["permitted_slot_kinds"]:
            try:
                kind = SlotKind(name)
            except ValueError:
                kind = None
            if kind is None or kind not in POLICY_SLOT_KINDS:
                raise PolicyError(f"slots.permitted names an unknown slot kind {name!r}.")
            kinds.append(kind)
        values["permitted_slot_kinds"] = tuple(kinds)
    for name in ("aaguids", "office_hosts", "office_fingerprints", "launch_allowed"):
        if name in values:
            values[name] = tuple(values[name])
    if argon2:
        try:
            values["argon2"] = replace(Argon2Params(), **argon2)
        except FormatError as exc:
            raise PolicyError(f"argon2id: {exc}") from None
    return Policy(**values)


def sign_policy(text: bytes, it_private: bytes | bytearray) -> bytes:
    """The detached signature file's content for ``text`` (base64 and a newline)."""
    parse_policy(text)  # never sign something no laptop would load
    return base64.b64encode(crypto.ed25519_sign(it_private, text)) + b"\n"


def load_policy(text: bytes, signature: bytes, it_public: bytes) -> Policy:
    """Verify IT's signature over the exact bytes, then parse."""
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PolicyError("The policy signature is not valid base64.") from None
    if len(raw) != 64:
        raise PolicyError("The policy signature has the wrong length.")
    try:
        crypto.ed25519_verify(it_public, text, raw, what="policy")
    except SignatureInvalid as exc:
        raise PolicyError(str(exc)) from None
    return parse_policy(text)


def load_policy_file(path: Path, it_public: bytes) -> Policy:
    """Load ``path`` and its detached signature ``path.sig``."""
    path = Path(path)
    sig_path = path.with_name(path.name + SIGNATURE_SUFFIX)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"Cannot read the policy {path}: {exc.strerror}.") from None
    try:
        signature = sig_path.read_bytes()
    except OSError:
        raise PolicyError(f"The policy {path} has no signature file {sig_path.name}.") from None
    return load_policy(text, signature, it_public)
