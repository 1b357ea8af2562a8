"""The NetworkManager + ModemManager backend against python-dbusmock on a private system bus.

NetworkManager and ModemManager themselves cannot run here (no modem, no SIM); their
python-dbusmock templates stand in (tests/dbus_helpers.py) and the backend talks to them
over real D-Bus. Every failure path must roll back fully and leave no connection behind.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.network import LINK_LOST, OTHER_ROUTE, NetworkError, default_route_interfaces
from agent.nm import CONNECTION_ID, NetworkManagerNetwork
from sekisho.policy import Policy
from tests.dbus_helpers import ICCID, NM_DEVICE, NM_MANAGER, NM_MODEM, Mocks

GRANT = {"apn": "closed.test.lg.jp", "user": "k20581", "password": "apn-secret-1", "iccid": ICCID}


@pytest.fixture
def office() -> Iterator[str]:
    """The office endpoint the probe connects to: a real listening socket."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


class Routes:
    """The kernel's default routes as the backend sees them (the real table is the CI machine's)."""

    def __init__(self) -> None:
        self.interfaces: set[str] = set()

    def __call__(self) -> set[str]:
        return set(self.interfaces)


def backend(tmp_path: Path, probe: str = "", routes: Routes | None = None, *, fast: bool = False,
            **policy: Any) -> NetworkManagerNetwork:
    return NetworkManagerNetwork(Policy(network_probe=probe, network_connect_timeout=10, **policy), tmp_path,
                                 routes=routes or Routes(), poll=0.05, **({"monotonic": _fast_clock()} if fast else {}))


def steps() -> tuple[list[tuple[str, Mapping[str, Any]]], Any]:
    seen: list[tuple[str, Mapping[str, Any]]] = []
    return seen, lambda step, details: seen.append((step, dict(details)))


def unlock(net: NetworkManagerNetwork, progress: Any = None) -> None:
    progress = progress or (lambda s, d: None)
    try:
        net.isolate(progress)
        net.bring_up(GRANT, progress)
        net.probe(GRANT, progress)
    except NetworkError:
        net.bring_down()
        net.restore()
        raise


def test_the_calls_in_order_and_everything_back_at_lock(dbus_mocks: Mocks, tmp_path: Path, office: str) -> None:
    wifi = dbus_mocks.wifi()
    dbus_mocks.modem_device()
    dbus_mocks.modem()
    connections_before = dbus_mocks.connections()
    net = backend(tmp_path, office)
    seen, progress = steps()
    net.isolate(progress)
    assert dbus_mocks.nm_get(wifi, NM_DEVICE, "State") == 30  # disconnected
    assert dbus_mocks.nm_get("/org/freedesktop/NetworkManager", NM_MANAGER, "WirelessEnabled") is False
    link = net.bring_up(GRANT, progress)
    rtt = net.probe(GRANT, progress)
    assert rtt is not None and rtt >= 0
    assert (link.signal, link.technology, link.operator) == (70, "lte", "TheOperator")
    # Wi-Fi down before the activation, which asked for a volatile connection on the modem:
    calls = dbus_mocks.calls()
    assert calls.index("Disconnect") < calls.index("AddAndActivateConnection2")
    (conn,) = [c for c in dbus_mocks.connections() if c not in connections_before]
    settings = dbus_mocks.mock(dbus_mocks.nm, conn).GetMethodCalls("Delete")  # none yet
    assert settings == []
    obj = dbus_mocks.bus.bustype.get_connection().get_object(dbus_mocks.nm.obj.bus_name,
                                                             "/org/freedesktop/NetworkManager")
    ((_, args),) = obj.GetMethodCalls("AddAndActivateConnection2", dbus_interface="org.freedesktop.DBus.Mock")
    sent, device, _, options = args
    assert str(device) == NM_MODEM
    assert dict(options) == {"persist": "volatile", "bind-activation": "dbus-client"}
    assert sent["connection"]["id"] == CONNECTION_ID and bool(sent["connection"]["autoconnect"]) is False
    assert {k: str(v) for k, v in sent["gsm"].items() if k != "password-flags"} == {
        "apn": "closed.test.lg.jp", "username": "k20581", "password": "apn-secret-1", "sim-id": ICCID}
    assert [s for s, _ in seen][:3] == ["isolate", "isolated", "modem"]
    assert ("probing", {"target": office, "try": 1}) in seen
    assert net.check() is None
    # Lock: deactivated, removed, Wi-Fi given back.
    net.bring_down()
    net.restore()
    assert dbus_mocks.calls() == ["Disconnect", "WirelessEnabled=False", "AddAndActivateConnection2",
                                  "DeactivateConnection", "Delete", "ActivateConnection", "WirelessEnabled=True"]
    assert dbus_mocks.connections() == connections_before
    assert dbus_mocks.nm_get("/org/freedesktop/NetworkManager", NM_MANAGER, "WirelessEnabled") is True
    assert not (tmp_path / "network.json").exists()


def test_restore_off_leaves_wifi_down(dbus_mocks: Mocks, tmp_path: Path) -> None:
    dbus_mocks.wifi()
    dbus_mocks.modem_device()
    dbus_mocks.modem()
    net = backend(tmp_path, network_restore=False, network_radios_off=False)
    unlock(net)
    net.bring_down()
    net.restore()
    assert "ActivateConnection" not in dbus_mocks.calls()
    assert dbus_mocks.nm_get("/org/freedesktop/NetworkManager", NM_MANAGER, "WirelessEnabled") is True  # untouched


def assert_rolled_back(dbus_mocks: Mocks, tmp_path: Path, before: list[str]) -> None:
    assert dbus_mocks.connections() == before, "a connection was left behind"
    assert not any(str(dbus_mocks.nm_get(a, "org.freedesktop.NetworkManager.Connection.Active", "Id")) ==
                   CONNECTION_ID for a in dbus_mocks.active_connections())
    assert dbus_mocks.nm_get("/org/freedesktop/NetworkManager", NM_MANAGER, "WirelessEnabled") is True
    assert not (tmp_path / "network.json").exists()


@pytest.mark.parametrize(("setup", "message"), [
    ("no modem", "No mobile broadband modem"),
    ("wrong ICCID", "Wrong SIM dongle"),
    ("activation fails", "failed to come up"),
    ("activation refused", "refused the closed-network connection"),
    ("timeout", "did not come up within 10 seconds"),
    ("office probe fails", "did not answer"),
    ("Wi-Fi will not go down", "wlan0"),
    ("a cable's default route stays", "default route through eth0"),
])
def test_each_failure_rolls_back_fully(dbus_mocks: Mocks, tmp_path: Path, setup: str, message: str) -> None:
    dbus_mocks.wifi(stuck=setup == "Wi-Fi will not go down")
    dbus_mocks.modem_device()
    if setup != "no modem":
        dbus_mocks.modem(ICCID if setup != "wrong ICCID" else "8981100000000009999")
    routes = Routes()
    if setup == "a cable's default route stays":
        routes.interfaces.add("eth0")
    outcome = {"activation fails": "failed", "activation refused": "refused", "timeout": "activating"}
    dbus_mocks.activation(outcome.get(setup, "activated"))
    probe = "127.0.0.1:9" if setup == "office probe fails" else ""
    before = dbus_mocks.connections()
    net = backend(tmp_path, probe, routes, fast=setup == "timeout", network_probe_tries=2)
    with pytest.raises(NetworkError, match=message) as caught:
        unlock(net)
    assert "apn-secret-1" not in caught.value.diagnostics()
    if setup == "wrong ICCID":
        assert "…0001" in str(caught.value) and "…9999" in str(caught.value)
    assert_rolled_back(dbus_mocks, tmp_path, before)


def _fast_clock() -> Any:
    """A monotonic clock that runs 100 times faster (the 10 s connect timeout in 0.1 s)."""
    import time as real_time

    start = real_time.monotonic()
    return lambda: start + (real_time.monotonic() - start) * 100


def test_a_second_default_route_while_unlocked_is_seen(dbus_mocks: Mocks, tmp_path: Path) -> None:
    dbus_mocks.modem_device()
    dbus_mocks.modem()
    routes = Routes()
    net = backend(tmp_path, routes=routes)
    unlock(net)
    assert net.check() is None
    routes.interfaces.add("wwan0")  # the SIM link's own default route is fine
    assert net.check() is None
    dbus_mocks.wifi()  # Wi-Fi comes back on its own: NetworkManager reports a default route
    finding = net.check()
    assert finding is not None and finding.kind == OTHER_ROUTE
    net.bring_down()
    net.restore()


def test_usb_tethering_seen_in_the_kernel_routing_table(dbus_mocks: Mocks, tmp_path: Path) -> None:
    dbus_mocks.modem_device()
    dbus_mocks.modem()
    routes = Routes()
    net = backend(tmp_path, routes=routes)
    unlock(net)
    routes.interfaces.update({"wwan0", "usb0"})  # a phone's tethering, not managed by NetworkManager
    finding = net.check()
    assert finding is not None and (finding.kind, finding.interface) == (OTHER_ROUTE, "usb0")
    net.bring_down()


def test_the_link_dropping_is_seen(dbus_mocks: Mocks, tmp_path: Path) -> None:
    dbus_mocks.modem_device()
    dbus_mocks.modem()
    net = backend(tmp_path)
    unlock(net)
    assert net.active is not None
    dbus_mocks.nm_set(net.active, "org.freedesktop.NetworkManager.Connection.Active", "State", 4)
    finding = net.check()
    assert finding is not None and finding.kind == LINK_LOST
    net.bring_down()
    net.restore()


def test_cleanup_after_a_crash(dbus_mocks: Mocks, tmp_path: Path) -> None:
    """The service died while unlocked: the next start takes the link down and gives Wi-Fi back."""
    dbus_mocks.wifi()
    dbus_mocks.modem_device()
    dbus_mocks.modem()
    before = dbus_mocks.connections()
    crashed = backend(tmp_path)
    unlock(crashed)
    assert (tmp_path / "network.json").exists()
    # (the process is gone: no bring_down, no restore)
    fresh = backend(tmp_path)
    found = fresh.cleanup()
    assert found is not None and found["sim_link"] and found["interfaces"] == ["wlan0"] and found["wifi_radio_off"]
    assert_rolled_back(dbus_mocks, tmp_path, before)
    assert fresh.cleanup() is None  # nothing the second time


def test_cleanup_when_the_crash_came_mid_activation(dbus_mocks: Mocks, tmp_path: Path) -> None:
    dbus_mocks.modem_device()
    dbus_mocks.modem()
    dbus_mocks.activation("activating")
    before = dbus_mocks.connections()
    net = backend(tmp_path)
    net.isolate(lambda s, d: None)
    state = (tmp_path / "network.json").read_text()
    # The crash: the connection was added but the paths never reached the state file.
    with contextlib.suppress(_Crash):
        net.bring_up(GRANT, _crash_after_activation(tmp_path, state))
    fresh = backend(tmp_path)
    found = fresh.cleanup()
    assert found is not None and found["sim_link"]
    assert_rolled_back(dbus_mocks, tmp_path, before)


class _Crash(BaseException):
    pass


def _crash_after_activation(tmp_path: Path, state: str) -> Any:
    def progress(step: str, details: Mapping[str, Any]) -> None:
        if step == "connecting" and details.get("elapsed_s") == 0:
            return
        if step == "connecting":
            import json

            data = json.loads((tmp_path / "network.json").read_text())
            data.pop("connection", None)
            data.pop("active", None)
            (tmp_path / "network.json").write_text(json.dumps(data))
            raise _Crash
    return progress


def test_no_system_bus_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/nothing")
    net = backend(tmp_path)
    with pytest.raises(NetworkError, match="system D-Bus"):
        net.isolate(lambda s, d: None)


def test_the_kernel_routing_table_parser(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "wwan0\t00000000\t0100000A\t0003\t0\t0\t700\t00000000\t0\t0\t0\n"
        "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        "eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
        "usb0\t00000000\t0101A8C0\t0002\t0\t0\t100\t00000000\t0\t0\t0\n")  # not up
    ipv6 = tmp_path / "ipv6_route"
    ipv6.write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000003 00000000 00000003     eth1\n"
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n")
    assert default_route_interfaces(route, ipv6) == {"wwan0", "wlan0", "eth1"}
    assert default_route_interfaces(tmp_path / "missing", tmp_path / "missing6") == set()


def test_the_gate_over_networkmanager_records_the_link(dbus_mocks: Mocks, tmp_path: Path, office: str) -> None:
    """A whole unlock and lock through the gate with the real backend against the mocks."""
    from tests.agent_helpers import make_laptop

    dbus_mocks.wifi()
    dbus_mocks.modem_device()
    dbus_mocks.modem()
    before = dbus_mocks.connections()
    laptop = make_laptop(tmp_path / "laptop")
    laptop.gate.network = backend(tmp_path / "laptop", office)
    session = laptop.gate.unlock("K20581", laptop.answers("K20581"))
    assert (session.link.signal, session.link.technology, session.link.operator) == (70, "lte", "TheOperator")
    assert session.link.rtt_ms is not None
    link_up = [e.body for e in laptop.gate.trail.entries() if e.body and e.body["event"] == "link-up"][-1]
    assert link_up["details"]["technology"] == "lte" and link_up["details"]["rtt_ms"] is not None
    assert laptop.gate.watch() is None
    dbus_mocks.wifi_comes_back()
    assert laptop.gate.watch() is not None  # Wi-Fi with a default route: dropped and locked
    assert laptop.gate.session is None
    assert dbus_mocks.connections() == before
    trail = (tmp_path / "laptop" / "trail.jsonl").read_text()
    assert "apn-secret-1" not in trail
