"""`sekisho-enroll` and `sekisho-agent device …` as IT and a laptop administrator run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.service import Service
from sekisho.devices.softkey import SoftKey
from sekisho.factors.interaction import ScriptedInteraction
from sekisho.factors.totp import TotpSeed
from sekisho.policy import Policy
from sekisho.store.keysource import InsecureFileKeySource
from sekisho.store.records import SlotKind
from tests.conftest import FAST_ARGON2, remember
from tests.tls_helpers import free_port, self_signed, tls_server

BIN = Path(sys.executable).parent
PASSPHRASE = "aki no sora ni kumo 6"
SEED = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
remember(PASSPHRASE)


def run(cwd: Path, tool: str, *args: str, stdin: str = "", ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEKISHO_KEYS_DIR": str(cwd / "keys"), "SEKISHO_REGISTRY": str(cwd / "registry.db")}
    proc = subprocess.run([str(BIN / tool), *args], cwd=cwd, input=stdin, capture_output=True, text=True, env=env,
                          timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def test_station_and_laptop_through_their_commands(tmp_path: Path) -> None:
    cert, key, fingerprint = self_signed(tmp_path, "office-proxy")
    with tls_server(cert, key) as office_host:
        station_and_laptop(tmp_path, office_host, fingerprint)


def station_and_laptop(tmp_path: Path, office_host: str, office_fingerprint: str) -> None:
    office, laptop = tmp_path / "office", tmp_path / "laptop"
    office.mkdir()
    (office / "keys").mkdir()
    run(office, "sekisho-enroll", "registry", "init")
    run(office, "sekisho-enroll", "policy", "keygen", "-o", "it-public.pem")
    policy = Policy(permitted_slot_kinds=(SlotKind.FIDO2_UV, SlotKind.PIN_TOTP), argon2=FAST_ARGON2,
                    network_backend="simulated",
                    allow_software_authenticators=True, office_hosts=(office_host,),
                    office_fingerprints=(office_fingerprint,))
    (office / "policy.toml").write_text(policy.to_toml())
    run(office, "sekisho-enroll", "policy", "sign", "policy.toml")
    assert "Signature: valid" in run(office, "sekisho-enroll", "policy", "check", "policy.toml").stdout
    run(office, "sekisho-enroll", "role", "set", "madoguchi", "--app", "証明書交付", "--citrix-store",
        "https://citrix.city.lg.jp/")
    run(office, "sekisho-enroll", "user", "add", "K30712", "--name", "鈴木 花子", "--role", "madoguchi")
    run(office, "sekisho-enroll", "user", "add", "K10234", "--name", "佐藤 美咲", "--role", "madoguchi")
    SoftKey.create(office / "finger.json", fingerprint=True)
    run(office, "sekisho-enroll", "user", "enrol", "K30712", "--fido2", "--soft-key", "finger.json",
        "--identify-by-touch")
    from sekisho.factors import fido2

    assert fido2.identify([SoftKey.load(office / "finger.json")], ScriptedInteraction()) == "K30712"
    code = TotpSeed.from_base32(SEED).code_at(__import__("time").time())
    run(office, "sekisho-enroll", "user", "enrol", "K10234", "--totp", "--totp-seed", SEED,
        stdin=f"{PASSPHRASE}\n{PASSPHRASE}\n{code}\n")
    users = json.loads(run(office, "sekisho-enroll", "user", "list", "--json").stdout)
    assert {u["id"]: u["slots"] for u in users} == {"K10234": ["pin+totp"], "K30712": ["fido2-uv"]}

    out = run(tmp_path, "sekisho-agent", "device", "init", "--state-dir", str(laptop), "--insecure-key-file",
              str(tmp_path / "laptop.key"), "--it-key", str(office / "it-public.pem")).stdout
    fingerprint = out.split("confirm:")[1].strip()
    refused = run(office, "sekisho-enroll", "device", "provision", str(laptop / "device-request.json"), "--user",
                  "K30712", "--confirm", "0000-0000-0000-0000-0000", "--iccid", "8981", "--apn", "closed.lg.jp",
                  "--apn-user", "u", "-o", "bundle.json", stdin="apn-pass-1\n", ok=False)
    assert refused.returncode == 1 and "fingerprint" in refused.stderr
    run(office, "sekisho-enroll", "device", "provision", str(laptop / "device-request.json"), "--role", "madoguchi",
        "--confirm", fingerprint, "--iccid", "8981", "--apn", "closed.lg.jp", "--apn-user", "u",
        "-o", "bundle.json", stdin="apn-pass-1\n")
    installed = run(tmp_path, "sekisho-agent", "device", "install", "--state-dir", str(laptop), "--insecure-key-file",
                    str(tmp_path / "laptop.key"), str(office / "bundle.json")).stdout
    assert "2 users" in installed
    again = run(tmp_path, "sekisho-agent", "device", "install", "--state-dir", str(laptop), "--insecure-key-file",
                str(tmp_path / "laptop.key"), str(office / "bundle.json"), ok=False)
    assert again.returncode == 1 and "not newer" in again.stderr

    device_id = json.loads((laptop / "device-request.json").read_text())["device_id"]
    extension = run(office, "sekisho-enroll", "helpdesk", "extend", "--device", device_id, "--days", "5").stdout
    assert len(extension.strip().split("-")) == 5
    key = SoftKey.load(office / "finger.json")  # as the enrolment left it
    service = Service.open(laptop, InsecureFileKeySource(tmp_path / "laptop.key"), devices=lambda: [key])
    assert service.gate.unlock("K30712", ScriptedInteraction()).grant.apps == ("証明書交付",)
    service.gate.lock()
    key_id = service.gate.recovery_key_ids("K30712")[0]
    code = run(office, "sekisho-enroll", "helpdesk", "recovery", "--device", device_id, "--user", "K30712",
               "--key-id", key_id)
    assert "本人確認" in code.stderr
    assert service.gate.recover("K30712", code.stdout.strip(), ScriptedInteraction()).recovered
    service.gate.lock()
    assert service.gate.extend(extension.strip()).days_left >= 4
    service.close()

    run(office, "sekisho-enroll", "user", "disable", "K30712", "--yes")
    run(tmp_path, "sekisho-agent", "device", "checkin-request", "--state-dir", str(laptop), "--insecure-key-file",
        str(tmp_path / "laptop.key"), "-o", str(office / "checkin.json"))
    result = run(office, "sekisho-enroll", "device", "checkin", "checkin.json", "-o", "renewal.json").stdout
    assert "removes K30712" in result
    run(tmp_path, "sekisho-agent", "device", "checkin-apply", "--state-dir", str(laptop), "--insecure-key-file",
        str(tmp_path / "laptop.key"), str(office / "renewal.json"))
    devices = json.loads(run(office, "sekisho-enroll", "device", "list", "--json").stdout)
    assert devices[0]["serial"] == 2 and devices[0]["users"] == ["K10234"] and devices[0]["last_head"]
    shown = json.loads(run(office, "sekisho-enroll", "user", "show", "K10234", "--json").stdout)
    assert shown["slots"][0]["kind"] == "pin+totp" and shown["laptops"] == [devices[0]["id"]]
    run(office, "sekisho-enroll", "user", "revoke-factor", "K10234", "1", "--yes")
    assert json.loads(run(office, "sekisho-enroll", "user", "show", "K10234", "--json").stdout)["slots"] == []
    run(office, "sekisho-enroll", "registry", "backup", "backup.db")
    # Every change went to IT's signed log, which verifies like a laptop's trail.
    from sekisho.trail import read_file

    events = [e.event for e in read_file(office / "it-log.jsonl")]
    for expected in ("user-added", "user-enrolled", "role-set", "device-provisioned", "device-checked-in",
                     "user-disabled", "factor-revoked", "recovery-code-issued", "extension-code-issued",
                     "office-check"):
        assert expected in events
    run(office, "sekisho-audit", "verify", "it-log.jsonl", "--root", "it-log-root.pem")
    assert (office / "backup.db").stat().st_size > 0


def test_away_from_the_office_nothing_is_enrolled_or_provisioned(tmp_path: Path) -> None:
    office = tmp_path / "office"
    office.mkdir()
    (office / "keys").mkdir()
    run(office, "sekisho-enroll", "registry", "init")
    run(office, "sekisho-enroll", "policy", "keygen")
    _, _, fingerprint = self_signed(tmp_path, "office-proxy")
    policy = Policy(permitted_slot_kinds=(SlotKind.PIN_TOTP,), argon2=FAST_ARGON2,
                    network_backend="simulated",
                    office_hosts=(f"127.0.0.1:{free_port()}",), office_fingerprints=(fingerprint,))
    (office / "policy.toml").write_text(policy.to_toml())
    run(office, "sekisho-enroll", "policy", "sign", "policy.toml")
    run(office, "sekisho-enroll", "user", "add", "K10234", "--name", "佐藤 美咲")
    code = TotpSeed.from_base32(SEED).code_at(__import__("time").time())
    refused = run(office, "sekisho-enroll", "user", "enrol", "K10234", "--totp", "--totp-seed", SEED,
                  stdin=f"{PASSPHRASE}\n{PASSPHRASE}\n{code}\n", ok=False)
    assert refused.returncode == 1 and "Not on the office network" in refused.stderr
    users = json.loads(run(office, "sekisho-enroll", "user", "list", "--json").stdout)
    assert users[0]["slots"] == []
    from sekisho.trail import read_file

    checks = [e.body for e in read_file(office / "it-log.jsonl") if e.event == "office-check"]
    assert checks and checks[-1]["details"]["ok"] is False
