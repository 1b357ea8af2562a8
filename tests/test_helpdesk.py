"""The helpdesk by phone, end to end with the service, and IT's own signed log reconciled
against a laptop's trail."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from agent import device
from enroll import office
from enroll.audit import main as audit_main
from sekisho.factors.interaction import ScriptedInteraction
from sekisho.store.keysource import InsecureFileKeySource
from sekisho.trail import EventType, Trail, read_file
from tests.test_provisioning import PASSPHRASE, Station, init_laptop, key_source, make_station, open_service, provision


@pytest.fixture
def station(tmp_path: Path) -> Station:
    station = make_station(tmp_path / "station")
    keys = InsecureFileKeySource(tmp_path / "station" / "station.key")
    log = Trail.create(tmp_path / "station" / "it-log.jsonl", keys, device_id="station:test")
    (tmp_path / "station" / "it-log-root.pem").write_text(log.root_pem())
    station.registry.log = log
    return station


def test_helpdesk_codes_work_with_the_service_and_show_in_both_logs(station: Station, tmp_path: Path,
                                                                    capsys) -> None:
    laptop = tmp_path / "laptop"
    request = init_laptop(station, laptop)
    device.install(laptop, key_source(laptop), provision(station, request))
    device_id = json.loads(request)["device_id"]
    service = open_service(station, laptop)
    gate = service.gate

    # A lost key: the laptop shows the key ids, the helpdesk reads out that code.
    key_ids = gate.recovery_key_ids("K10234")
    code = office.recovery_code(station.registry, device_id, "K10234", key_ids[0])
    assert gate.recover("K10234", code, ScriptedInteraction(passphrase=PASSPHRASE)).recovered
    gate.lock()
    # The lease ran out in the field: an extension code.
    gate.clock.confirm(gate.clock.read().now)
    end = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=5)
    extension = office.extension_code(station.registry, device_id, end)
    assert gate.extend(extension).days_left >= 4
    # Another code issued but never used, and one taken from the registry outside the procedure.
    office.recovery_code(station.registry, device_id, "K10234", key_ids[1])
    row = station.registry._conn.execute("SELECT code FROM recovery WHERE device_id = ? AND user_id = ? AND "
                                         "key_id = ?", (device_id, "K41156", gate.recovery_key_ids("K41156")[0]))
    planted = station.registry.unseal("recovery", f"{device_id}/K41156/{gate.recovery_key_ids('K41156')[0]}",
                                      row.fetchone()[0]).decode()
    gate.recover("K41156", planted, ScriptedInteraction())
    gate.lock()
    service.close()
    station.registry.close()

    it_events = [e.event for e in read_file(tmp_path / "station" / "it-log.jsonl")]
    assert it_events.count(EventType.RECOVERY_CODE_ISSUED) == 2 and EventType.EXTENSION_CODE_ISSUED in it_events
    assert EventType.DEVICE_PROVISIONED in it_events
    laptop_events = [e.event for e in read_file(laptop / "trail.jsonl")]
    assert laptop_events.count("recovery") == 2 and "lease-extension" in laptop_events
    it_text = (tmp_path / "station" / "it-log.jsonl").read_text("utf-8")
    assert code not in it_text and extension not in it_text  # codes never enter a log

    args = ["reconcile", str(tmp_path / "station" / "it-log.jsonl"), str(laptop / "trail.jsonl"),
            "--it-root", str(tmp_path / "station" / "it-log-root.pem"), "--json"]
    with pytest.raises(SystemExit) as exit_info:
        audit_main(args)
    assert exit_info.value.code == 1
    result = json.loads(capsys.readouterr().out)
    assert [(m["used"]["user"], m["used"]["key_id"]) for m in result["matched"]] == [("K10234", key_ids[0])]
    assert [(c["user"], c["key_id"]) for c in result["issued_unused"]] == [("K10234", key_ids[1])]
    assert [c["user"] for c in result["used_without_issue"]] == ["K41156"]
    # IT's own log verifies like a laptop's trail.
    assert audit_main(["verify", str(tmp_path / "station" / "it-log.jsonl"), "--root",
                       str(tmp_path / "station" / "it-log-root.pem")]) in (0, None)
