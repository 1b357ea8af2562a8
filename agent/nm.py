"""The closed-SIM link on Linux: NetworkManager and ModemManager over the system D-Bus.

What it does (docs/network.md):

- **isolate**: every active interface other than the modem is disconnected
  (``Device.Disconnect``, which also stops NetworkManager from reconnecting it on its
  own) and, if the policy says so, the Wi-Fi radio is turned off (``WirelessEnabled``).
  Then it looks again: an interface still up, or a default route through anything, and
  unlocking fails closed. What it changed is written first to ``network.json`` in the
  service's state directory, so that ``restore`` (or ``cleanup`` after a crash) can put
  it back.
- **bring_up**: the modem whose SIM's ICCID (ModemManager's ``SimIdentifier``) is the
  grant's, its NetworkManager device (``Udi`` is the modem's object path), then
  ``AddAndActivateConnection2`` with ``persist=volatile`` (in memory only, deleted when
  it goes down: the APN password is never written to disk) and
  ``bind-activation=dbus-client`` (if the service dies, NetworkManager takes the link
  down). The connection is also pinned to that SIM (``gsm.sim-id``). It waits for the
  activation with progress, up to ``network.connect_timeout``.
- **check** (the watch): the SIM link still active, no other default route in
  NetworkManager or in the kernel's routing table.
- **bring_down** / **restore** / **cleanup**: the reverse, each step tolerant of what is
  already gone.

Every D-Bus error is reported by its name, never with its body (which may echo settings).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jeepney import DBusAddress, Properties, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from agent.network import (
    LINK_LOST,
    OTHER_ROUTE,
    LinkInfo,
    NetworkError,
    OfficeProbe,
    Progress,
    StateFile,
    WatchFinding,
    default_route_interfaces,
)
from sekisho.policy import Policy

log = logging.getLogger(__name__)

NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
NM_DEVICE = "org.freedesktop.NetworkManager.Device"
NM_SETTINGS = "org.freedesktop.NetworkManager.Settings"
NM_SETTINGS_PATH = "/org/freedesktop/NetworkManager/Settings"
NM_CONNECTION = "org.freedesktop.NetworkManager.Settings.Connection"
NM_ACTIVE = "org.freedesktop.NetworkManager.Connection.Active"
MM = "org.freedesktop.ModemManager1"
MM_PATH = "/org/freedesktop/ModemManager1"
MM_MODEM = "org.freedesktop.ModemManager1.Modem"
MM_3GPP = "org.freedesktop.ModemManager1.Modem.Modem3gpp"
MM_SIM = "org.freedesktop.ModemManager1.Sim"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"

DEVICE_MODEM = 8
NOT_REACHING_OUT = {0, 14, 32}  # unknown, generic (old NM's lo), loopback
DEVICE_STATE_PREPARE, DEVICE_STATE_ACTIVATED, DEVICE_STATE_DEACTIVATING = 40, 100, 110
ACTIVE_STATES = {0: "unknown", 1: "activating", 2: "activated", 3: "deactivating", 4: "deactivated"}
CONNECTION_ID = "Sekisho closed SIM"
STATE_FILE = "network.json"

#: ModemManager's access technology bits, highest first (MMModemAccessTechnology).
TECHNOLOGIES = ((1 << 15, "5gnr"), (1 << 14, "lte"), (1 << 9, "hspa+"), (1 << 8, "hspa"), (1 << 7, "hsupa"),
                (1 << 6, "hsdpa"), (1 << 5, "umts"), (1 << 4, "edge"), (1 << 3, "gprs"), (1 << 1, "gsm"))

NO_SIM_ADVICE = "Plug in the closed-network SIM dongle (閉域SIM) and wait until its light shows, then try again."


class Bus:
    """The few D-Bus calls the backend needs, over one jeepney connection."""

    def __init__(self, conn: DBusConnection, timeout: float = 25.0) -> None:
        self.conn = conn
        self.timeout = timeout

    def call(self, service: str, path: str, interface: str, method: str, signature: str | None = None,
             *args: Any) -> tuple[Any, ...]:
        address = DBusAddress(path, bus_name=service, interface=interface)
        message = new_method_call(address, method, signature, args) if signature else new_method_call(address, method)
        return tuple(unwrap_msg(self.conn.send_and_get_reply(message, timeout=self.timeout)))

    def get(self, service: str, path: str, interface: str, name: str) -> Any:
        address = DBusAddress(path, bus_name=service, interface=interface)
        reply = unwrap_msg(self.conn.send_and_get_reply(Properties(address).get(name), timeout=self.timeout))
        return reply[0][1]

    def get_all(self, service: str, path: str, interface: str) -> dict[str, Any]:
        address = DBusAddress(path, bus_name=service, interface=interface)
        reply = unwrap_msg(self.conn.send_and_get_reply(Properties(address).get_all(), timeout=self.timeout))
        return {k: v[1] for k, v in reply[0].items()}

    def set(self, service: str, path: str, interface: str, name: str, signature: str, value: Any) -> None:
        address = DBusAddress(path, bus_name=service, interface=interface)
        unwrap_msg(self.conn.send_and_get_reply(Properties(address).set(name, signature, value), timeout=self.timeout))

    def close(self) -> None:
        self.conn.close()


def _dbus_name(exc: DBusErrorResponse) -> str:
    return str(exc.name)


class NetworkManagerNetwork(OfficeProbe):
    """The NetworkManager + ModemManager backend (see the module's docstring)."""

    def __init__(self, policy: Policy, state_dir: Path, *,
                 connect: Callable[[], DBusConnection] = lambda: open_dbus_connection(bus="SYSTEM"),
                 routes: Callable[[], set[str]] = default_route_interfaces, poll: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.state = StateFile(Path(state_dir) / STATE_FILE)
        self._connect = connect
        self._routes = routes
        self._poll = poll
        self._monotonic = monotonic
        self._bus: Bus | None = None
        self.connection: str | None = None  # settings connection path
        self.active: str | None = None  # active connection path
        self.ip_interface: str | None = None

    # --- plumbing ------------------------------------------------------------------------

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            try:
                self._bus = Bus(self._connect())
            except (OSError, KeyError, ValueError) as exc:
                raise NetworkError(f"Cannot reach the system D-Bus ({type(exc).__name__}).", step="isolate",
                                   advice="Check that D-Bus and NetworkManager are running (systemctl status "
                                          "NetworkManager).") from None
        return self._bus

    def _nm(self, path: str, interface: str, method: str, signature: str | None = None, *args: Any) -> tuple[Any, ...]:
        return self.bus.call(NM, path, interface, method, signature, *args)

    def _devices(self) -> list[tuple[str, dict[str, Any]]]:
        try:
            (paths,) = self._nm(NM_PATH, NM, "GetDevices")
        except DBusErrorResponse as exc:
            raise NetworkError(f"NetworkManager did not list the network interfaces ({_dbus_name(exc)}).",
                               step="isolate", advice="Check that NetworkManager is running.") from None
        return [(p, self.bus.get_all(NM, p, NM_DEVICE)) for p in paths]

    # --- isolate -------------------------------------------------------------------------

    def isolate(self, progress: Progress) -> None:
        progress("isolate", {})
        state = self.state.read()
        devices = self._devices()
        outside = [(p, d) for p, d in devices if d.get("DeviceType") not in (DEVICE_MODEM, *NOT_REACHING_OUT)]
        taken: list[dict[str, str]] = list(state.get("disconnected", []))
        for path, dev in outside:
            active = dev.get("ActiveConnection", "/")
            if active != "/" and not any(t["device"] == path for t in taken):
                with contextlib.suppress(DBusErrorResponse):
                    conn = self.bus.get(NM, active, NM_ACTIVE, "Connection")
                    taken.append({"device": path, "interface": dev.get("Interface", ""), "connection": conn})
        state["disconnected"] = taken
        if self.policy.network_radios_off and "wireless_was" not in state:
            state["wireless_was"] = bool(self.bus.get(NM, NM_PATH, NM, "WirelessEnabled"))
        self.state.write(state)  # written before anything changes: restore and cleanup rely on it
        problems: list[str] = []
        for path, dev in outside:
            if DEVICE_STATE_PREPARE <= dev.get("State", 0) <= DEVICE_STATE_DEACTIVATING:
                try:
                    self._nm(path, NM_DEVICE, "Disconnect")
                except DBusErrorResponse as exc:
                    problems.append(f"{dev.get('Interface', path)} ({_dbus_name(exc)})")
        if self.policy.network_radios_off:
            try:
                self.bus.set(NM, NM_PATH, NM, "WirelessEnabled", "b", False)
            except DBusErrorResponse as exc:
                problems.append(f"the Wi-Fi radio ({_dbus_name(exc)})")
        # Look again: only what is really down counts.
        for path, dev in outside:
            now = self.bus.get(NM, path, NM_DEVICE, "State")
            if DEVICE_STATE_PREPARE <= now <= DEVICE_STATE_DEACTIVATING:
                name = dev.get("Interface", path)
                if not any(p.startswith(f"{name} ") for p in problems):
                    problems.append(f"{name} (still {'up' if now == DEVICE_STATE_ACTIVATED else 'connecting'})")
        routes = sorted(self._routes())
        if routes:
            problems.append("a default route through " + ", ".join(routes))
        if problems:
            raise NetworkError("Other networks could not be taken down, so the closed network stays off: "
                               + "; ".join(problems) + ".", step="isolate",
                               advice="Turn Wi-Fi off, unplug network cables and USB tethering, then try again.")
        progress("isolated", {"interfaces": [t["interface"] for t in taken]})

    # --- bring up ------------------------------------------------------------------------

    def _modem_for(self, iccid: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        try:
            (objects,) = self.bus.call(MM, MM_PATH, OBJECT_MANAGER, "GetManagedObjects")
        except DBusErrorResponse as exc:
            raise NetworkError(f"ModemManager did not answer ({_dbus_name(exc)}).", step="bring_up",
                               advice="Check that ModemManager is running (systemctl status ModemManager).") from None
        modems = {p: ifaces for p, ifaces in objects.items() if MM_MODEM in ifaces}
        if not modems:
            raise NetworkError("No mobile broadband modem is connected.", step="bring_up", advice=NO_SIM_ADVICE)
        seen: list[str] = []
        for path, ifaces in sorted(modems.items()):
            modem = {k: v[1] for k, v in ifaces[MM_MODEM].items()}
            sim = modem.get("Sim", "/")
            if sim == "/":
                seen.append("no SIM")
                continue
            try:
                identifier = str(self.bus.get(MM, sim, MM_SIM, "SimIdentifier"))
            except DBusErrorResponse:
                identifier = ""
            if identifier and identifier == iccid:
                threegpp = {k: v[1] for k, v in ifaces.get(MM_3GPP, {}).items()}
                return path, modem, threegpp
            seen.append(f"SIM …{identifier[-4:]}" if identifier else "an unreadable SIM")
        raise NetworkError(f"Wrong SIM dongle: this laptop's closed-network SIM ends …{iccid[-4:]}, the modem "
                           f"holds {', '.join(seen)}.", step="bring_up",
                           advice="Use the SIM dongle issued with this laptop (its ICCID is on the asset label); "
                                  "if it was swapped, the helpdesk must re-provision.")

    def _device_for(self, modem_path: str, modem: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        port = modem.get("PrimaryPort")
        for path, dev in self._devices():
            if dev.get("DeviceType") == DEVICE_MODEM and (dev.get("Udi") == modem_path or
                                                          (port and dev.get("Interface") == port)):
                return path, dev
        raise NetworkError("NetworkManager does not manage the SIM dongle's modem.", step="bring_up",
                           advice="Unplug the dongle, plug it in again and wait a minute; if it persists, call "
                                  "the helpdesk.")

    def bring_up(self, network: Mapping[str, str], progress: Progress) -> LinkInfo:
        started = self._monotonic()
        iccid = network.get("iccid", "")
        if not iccid or not network.get("apn"):
            raise NetworkError("The grant holds no closed-network SIM profile (APN, ICCID).", step="bring_up",
                               advice="The helpdesk must re-provision this user with the SIM's profile.")
        progress("modem", {})
        modem_path, modem, threegpp = self._modem_for(iccid)
        device_path, device = self._device_for(modem_path, modem)
        conn_uuid = str(uuid.uuid4())
        state = self.state.read()
        state["uuid"] = conn_uuid  # before the call: a crash mid-activation is found by this
        self.state.write(state)
        gsm: dict[str, tuple[str, Any]] = {"apn": ("s", network["apn"]), "sim-id": ("s", iccid),
                                           "password-flags": ("u", 0)}
        if network.get("user"):
            gsm["username"] = ("s", network["user"])
        if network.get("password"):
            gsm["password"] = ("s", network["password"])
        settings = {
            "connection": {"id": ("s", CONNECTION_ID), "uuid": ("s", conn_uuid), "type": ("s", "gsm"),
                           "autoconnect": ("b", False)},
            "gsm": gsm,
            "ipv4": {"method": ("s", "auto")},
            "ipv6": {"method": ("s", "ignore")},
        }
        options = {"persist": ("s", "volatile"), "bind-activation": ("s", "dbus-client")}
        progress("connecting", {"elapsed_s": 0, "state": "activating"})
        try:
            path, active, _ = self._nm(NM_PATH, NM, "AddAndActivateConnection2", "a{sa{sv}}ooa{sv}",
                                       settings, device_path, "/", options)
        except DBusErrorResponse as exc:
            raise NetworkError(f"NetworkManager refused the closed-network connection ({_dbus_name(exc)}).",
                               step="bring_up", advice="Try again; if it persists, call the helpdesk.") from None
        finally:
            settings.clear()
            gsm.clear()
        self.connection, self.active = path, active
        state.update(connection=path, active=active)
        self.state.write(state)
        deadline = started + self.policy.network_connect_timeout
        while True:
            try:
                code = int(self.bus.get(NM, active, NM_ACTIVE, "State"))
            except DBusErrorResponse:
                code = 4  # the active connection is gone: it failed
            elapsed = self._monotonic() - started
            if code == 2:
                break
            if code in (3, 4):
                raise NetworkError("The closed-network link failed to come up (the modem gave up).",
                                   step="bring_up", advice="Check the signal (move near a window) and try again.")
            if self._monotonic() >= deadline:
                raise NetworkError(f"The closed-network link did not come up within "
                                   f"{self.policy.network_connect_timeout} seconds.", step="bring_up",
                                   advice="Move to a place with better signal and try again.")
            progress("connecting", {"elapsed_s": round(elapsed), "state": ACTIVE_STATES.get(code, str(code))})
            time.sleep(self._poll)
        with contextlib.suppress(DBusErrorResponse):
            self.ip_interface = str(self.bus.get(NM, device_path, NM_DEVICE, "IpInterface")) or None
        if not self.ip_interface:
            self.ip_interface = device.get("IpInterface") or device.get("Interface")
        quality = modem.get("SignalQuality")
        bits = int(modem.get("AccessTechnologies", 0))
        return LinkInfo(seconds=self._monotonic() - started, signal=int(quality[0]) if quality else None,
                        technology=next((name for bit, name in TECHNOLOGIES if bits & bit), None),
                        operator=threegpp.get("OperatorName") or None)

    # --- while unlocked --------------------------------------------------------------------

    def check(self) -> WatchFinding | None:
        if self.active is None:
            return None
        try:
            code = int(self.bus.get(NM, self.active, NM_ACTIVE, "State"))
        except DBusErrorResponse:
            code = 4
        if code != 2:
            return WatchFinding(LINK_LOST, self.ip_interface)
        try:
            actives = self.bus.get(NM, NM_PATH, NM, "ActiveConnections")
        except DBusErrorResponse:
            actives = []
        for other in actives:
            if other == self.active:
                continue
            with contextlib.suppress(DBusErrorResponse):
                props = self.bus.get_all(NM, other, NM_ACTIVE)
                if props.get("Default") or props.get("Default6"):
                    return WatchFinding(OTHER_ROUTE, self._interface_of(props) or str(props.get("Id", other)))
        for interface in sorted(self._routes()):
            if interface != self.ip_interface:
                return WatchFinding(OTHER_ROUTE, interface)
        return None

    def _interface_of(self, active: Mapping[str, Any]) -> str | None:
        for device in active.get("Devices", []):
            with contextlib.suppress(DBusErrorResponse):
                return str(self.bus.get(NM, device, NM_DEVICE, "IpInterface") or
                           self.bus.get(NM, device, NM_DEVICE, "Interface"))
        return None

    # --- bring down, restore, cleanup ------------------------------------------------------

    def _remove(self, active: str | None, connection: str | None) -> None:
        if active:
            with contextlib.suppress(DBusErrorResponse):
                self._nm(NM_PATH, NM, "DeactivateConnection", "o", active)
        if connection:
            with contextlib.suppress(DBusErrorResponse):  # a volatile connection may be gone already
                self._nm(connection, NM_CONNECTION, "Delete")

    def bring_down(self) -> None:
        state = self.state.read()
        active = self.active or state.get("active")
        connection = self.connection or state.get("connection")
        if not connection and state.get("uuid"):
            connection = self._by_uuid(state["uuid"])
            active = active or self._active_of(connection)
        try:
            self._remove(active, connection)
        except NetworkError as exc:  # no bus at all: nothing more can be done here
            log.error("bringing the SIM link down: %s", exc)
        self.active = self.connection = self.ip_interface = None
        for key in ("active", "connection", "uuid"):
            state.pop(key, None)
        self.state.write(state)

    def restore(self) -> None:
        state = self.state.read()
        try:
            if self.policy.network_restore:
                for taken in state.get("disconnected", []):
                    try:
                        self._nm(NM_PATH, NM, "ActivateConnection", "ooo", taken["connection"], taken["device"], "/")
                    except DBusErrorResponse as exc:
                        log.warning("could not bring %s back (%s)", taken.get("interface"), _dbus_name(exc))
            if "wireless_was" in state:
                self.bus.set(NM, NM_PATH, NM, "WirelessEnabled", "b", bool(state["wireless_was"]))
        except (NetworkError, DBusErrorResponse) as exc:
            log.error("restoring the other interfaces: %s", exc)
            return  # the state file stays: the next start tries again
        self.state.write({})

    def _by_uuid(self, conn_uuid: str) -> str | None:
        try:
            (path,) = self._nm(NM_SETTINGS_PATH, NM_SETTINGS, "GetConnectionByUuid", "s", conn_uuid)
        except DBusErrorResponse:
            return None
        return str(path)

    def _active_of(self, connection: str | None) -> str | None:
        if not connection:
            return None
        with contextlib.suppress(DBusErrorResponse):
            for active in self.bus.get(NM, NM_PATH, NM, "ActiveConnections"):
                with contextlib.suppress(DBusErrorResponse):
                    if self.bus.get(NM, active, NM_ACTIVE, "Connection") == connection:
                        return str(active)
        return None

    def cleanup(self) -> dict[str, Any] | None:
        """At service start: take down a SIM link and give back interfaces a crash left behind."""
        state = self.state.read()
        if not state:
            return None
        found: dict[str, Any] = {"sim_link": bool(state.get("uuid") or state.get("connection")),
                                 "interfaces": [t.get("interface") for t in state.get("disconnected", [])],
                                 "wifi_radio_off": "wireless_was" in state}
        if found["sim_link"]:
            connection = state.get("connection") or self._by_uuid(state.get("uuid", ""))
            found["sim_link_live"] = bool(connection and self._by_uuid(state.get("uuid", "")) == connection)
            self.connection, self.active = connection, state.get("active") or self._active_of(connection)
            self.bring_down()
        self.restore()
        return found

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None
