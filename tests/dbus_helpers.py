"""A private system D-Bus with python-dbusmock's NetworkManager and ModemManager.

The real daemons cannot run here (no modem, no seat), so their python-dbusmock
templates stand in on a private system bus; Sekisho talks to them over real D-Bus with
jeepney, exactly as it talks to the real ones. What the templates lack (NetworkManager's
``AddAndActivateConnection2``, ``Device.Disconnect``, a modem device, a SIM's
``SimIdentifier``) is added here with ``org.freedesktop.DBus.Mock.AddMethod``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dbus
import pytest
from dbusmock import MOCK_IFACE
from dbusmock.testcase import BusType, PrivateDBus, SpawnedMock

NM_DEVICE = "org.freedesktop.NetworkManager.Device"
NM_MANAGER = "org.freedesktop.NetworkManager"
MODEM_PATH = "/org/freedesktop/ModemManager1/Modems/8"
SIM_PATH = "/org/freedesktop/ModemManager1/SIM/2"
NM_MODEM = "/org/freedesktop/NetworkManager/Devices/7"
ICCID = "8981100000000000001"

# Device.Disconnect: the device goes down (or, for a "stuck" device, nothing happens).
DISCONNECT = """
ac = self.Get('org.freedesktop.NetworkManager.Device', 'ActiveConnection')
if ac != '/':
    self.RemoveActiveConnection(self.path, ac)
self.SetDeviceDisconnected(self.path)
"""
# AddAndActivateConnection2 as NetworkManager does it (settings added, then activated),
# with the activation's outcome chosen by the test.
ACTIVATE = """
settings = objects['/org/freedesktop/NetworkManager/Settings']
conn = settings.SettingsAddConnection(args[0])
ac = self.activate_connection(self, conn, args[1], args[2])
objects[ac].Set('org.freedesktop.NetworkManager.Connection.Active', 'State', dbus.UInt32(%d))
ret = (conn, ac, dbus.Dictionary({}, signature='sv'))
"""
#: The NetworkManager methods Sekisho calls (the mock's log also has its own inner calls).
AGENT_CALLS = {"Disconnect", "AddAndActivateConnection2", "DeactivateConnection", "Delete", "ActivateConnection"}
REFUSE = "raise dbus.exceptions.DBusException('no', name='org.freedesktop.NetworkManager.Failed')"


@dataclass
class Mocks:
    bus: PrivateDBus
    nm: SpawnedMock
    mm: SpawnedMock
    nm_log: Path

    def mock(self, server: SpawnedMock, path: str | None = None) -> dbus.Interface:
        obj = server.obj if path is None else self.bus.bustype.get_connection().get_object(
            server.obj.bus_name, path)
        return dbus.Interface(obj, MOCK_IFACE)

    def reset(self) -> None:
        for server in (self.nm, self.mm):
            self.mock(server).Reset()
        self.mark = self.nm_log.stat().st_size
        self.mock(self.nm, "/org/freedesktop/NetworkManager").AddMethod(
            NM_MANAGER, "AddAndActivateConnection2", "a{sa{sv}}ooa{sv}", "ooa{sv}", ACTIVATE % 2)

    # --- NetworkManager --------------------------------------------------------------------

    def wifi(self, *, stuck: bool = False, active: bool = True) -> str:
        nm = self.mock(self.nm)
        path = str(nm.AddWiFiDevice("wlan0", "wlan0", 100 if active else 30))
        if active:
            ap = nm.AddAccessPoint(path, "ap1", "城内WiFi", "00:11:22:33:44:55", 2, 2412, 54000, 90, 0x100)
            conn = nm.AddWiFiConnection(path, "office", "城内WiFi", "wpa-psk")
            nm.AddActiveConnection([path], conn, ap, "wifi0", 2)
        self.mock(self.nm, path).AddMethod(NM_DEVICE, "Disconnect", "", "", "" if stuck else DISCONNECT)
        return path

    def wifi_comes_back(self) -> None:
        """The office Wi-Fi reconnects on its own (a default route appears)."""
        nm = self.mock(self.nm)
        nm.AddActiveConnection(["/org/freedesktop/NetworkManager/Devices/wlan0"],
                               "/org/freedesktop/NetworkManager/Settings/office", "/", "wifi1", 2)

    def modem_device(self) -> str:
        nm = self.mock(self.nm)
        nm.AddObject(NM_MODEM, NM_DEVICE, {
            "DeviceType": dbus.UInt32(8), "State": dbus.UInt32(30), "StateReason": (dbus.UInt32(30), dbus.UInt32(0)),
            "Interface": "cdc-wdm0", "IpInterface": "wwan0", "Udi": MODEM_PATH, "Managed": True,
            "ActiveConnection": dbus.ObjectPath("/"), "AvailableConnections": dbus.Array([], signature="o")},
            [("Disconnect", "", "", DISCONNECT)])
        return NM_MODEM

    def activation(self, outcome: str) -> None:
        """How the next activation goes: "activated", "activating" (never ends), "failed", "refused"."""
        code = {"activated": ACTIVATE % 2, "activating": ACTIVATE % 1, "failed": ACTIVATE % 4,
                "refused": REFUSE}[outcome]
        self.mock(self.nm, "/org/freedesktop/NetworkManager").AddMethod(
            NM_MANAGER, "AddAndActivateConnection2", "a{sa{sv}}ooa{sv}", "ooa{sv}", code)

    def nm_get(self, path: str, interface: str, name: str) -> Any:
        obj = self.bus.bustype.get_connection().get_object(self.nm.obj.bus_name, path)
        value = obj.Get(interface, name, dbus_interface="org.freedesktop.DBus.Properties")
        return bool(value) if isinstance(value, dbus.Boolean) else value

    def nm_set(self, path: str, interface: str, name: str, value: Any) -> None:
        self.mock(self.nm).SetProperty(path, interface, name, value)

    def calls(self) -> list[str]:
        """The NetworkManager methods called since the test began, in order."""
        with self.nm_log.open("rb") as f:
            f.seek(self.mark)
            text = f.read().decode("utf-8", "replace")
        calls = []
        for method, rest in re.findall(r"^\d+\.\d+ (\w+) ?(.*)$", text, re.MULTILINE):
            if method in AGENT_CALLS:
                calls.append(method)
            elif method == "Set" and ".WirelessEnabled " in rest:
                calls.append("WirelessEnabled=" + rest.rsplit(" ", 1)[1])
        return calls

    def connections(self) -> list[str]:
        return [str(p) for p in self.nm_get("/org/freedesktop/NetworkManager/Settings",
                                            "org.freedesktop.NetworkManager.Settings", "Connections")]

    def active_connections(self) -> list[str]:
        return [str(p) for p in self.nm_get("/org/freedesktop/NetworkManager", NM_MANAGER, "ActiveConnections")]

    # --- ModemManager ------------------------------------------------------------------------

    def modem(self, iccid: str = ICCID) -> None:
        self.mock(self.mm).AddSimpleModem()
        self.mock(self.mm, SIM_PATH).AddProperty("org.freedesktop.ModemManager1.Sim", "SimIdentifier", iccid)


@pytest.fixture(scope="session")
def system_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mocks]:
    import os

    before = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    bus = PrivateDBus(BusType.SYSTEM)
    bus.start()
    logs = tmp_path_factory.mktemp("dbusmock")
    nm_log = logs / "networkmanager.log"
    with nm_log.open("wb") as out, (logs / "other.log").open("wb") as other:
        nm = SpawnedMock.spawn_with_template("networkmanager", {}, BusType.SYSTEM, stdout=out)
        mm = SpawnedMock.spawn_with_template("modemmanager", {}, BusType.SYSTEM, stdout=other)
    mocks = Mocks(bus=bus, nm=nm, mm=mm, nm_log=nm_log)
    try:
        yield mocks
    finally:
        for server in (nm, mm):
            server.terminate()
        bus.stop()
        if before is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = before


@pytest.fixture
def dbus_mocks(system_bus: Mocks) -> Mocks:
    system_bus.reset()
    return system_bus


@pytest.fixture(scope="session")
def logind_server(system_bus: Mocks, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpawnedMock]:
    """python-dbusmock's logind template on the same private system bus."""
    with (tmp_path_factory.mktemp("logind") / "logind.log").open("wb") as out:
        server = SpawnedMock.spawn_with_template("logind", {}, BusType.SYSTEM, stdout=out)
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture
def logind(logind_server: SpawnedMock) -> dbus.Interface:
    mock = dbus.Interface(logind_server.obj, MOCK_IFACE)
    mock.Reset()
    return mock
