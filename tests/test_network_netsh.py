"""The Windows backend through its command runner.

netsh cannot run here: a stand-in Windows (FakeNetsh) answers each command with the
output samples in tests/samples/netsh/ (see their README for where they come from),
adjusted to its state, and records the command lines. What is tested: the commands
built, the parsing, failing closed, rolling back, and the profile file's short life.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.netsh import PROFILE_FILE, NetshNetwork, parse_blocks, parse_interface_table
from agent.network import LINK_LOST, OTHER_ROUTE, NetworkError
from sekisho.policy import Policy

SAMPLES = Path(__file__).parent / "samples" / "netsh"
GRANT = {"apn": "closed.test.lg.jp", "user": "k20581", "password": "apn-secret-1", "iccid": "8981100000000000001"}


def sample(name: str) -> str:
    return (SAMPLES / name).read_bytes().decode("ascii")


class FakeNetsh:
    """A Windows laptop as netsh shows it: Ethernet and Wi-Fi connected, a cellular modem."""

    def __init__(self, state_dir: Path, *, modem: bool = True, other_sim: bool = False, stuck: str | None = None,
                 connects_after: int = 1) -> None:
        self.state_dir = state_dir
        self.modem, self.other_sim, self.stuck = modem, other_sim, stuck
        self.connects_after = connects_after
        self.disabled: set[str] = set()
        self.connected = False
        self.connecting = False
        self.polls = 0
        self.profiles: dict[str, str] = {}
        self.commands: list[list[str]] = []

    def __call__(self, args: list[str]) -> tuple[int, str]:
        self.commands.append(args)
        match args:
            case ["mbn", "show", "interfaces"]:
                return 0, sample("show-interfaces.txt" if self.modem else "show-interfaces-none.txt")
            case ["mbn", "show", "readyinfo", _]:
                return 0, sample("show-readyinfo-other-sim.txt" if self.other_sim else "show-readyinfo.txt")
            case ["interface", "show", "interface"]:
                return 0, self._table()
            case ["interface", "set", "interface", name, admin]:
                name = name.removeprefix("name=")
                if admin == "admin=disabled" and name != self.stuck:
                    self.disabled.add(name)
                elif admin == "admin=enabled":
                    self.disabled.discard(name)
                return 0, ""
            case ["mbn", "add", "profile", "interface=Cellular", name]:
                path = Path(name.removeprefix("name="))
                self.profiles["Sekisho closed SIM"] = path.read_text()  # netsh reads the file now
                return 0, 'Profile "Sekisho closed SIM" is added on the interface Cellular.'
            case ["mbn", "connect", "interface=Cellular", "connmode=name", "name=Sekisho closed SIM"]:
                self.connecting = True
                return 0, "Connection request is successfully completed."
            case ["mbn", "show", "connection", "interface=Cellular"]:
                if self.connecting:
                    self.polls += 1
                    self.connected = self.polls >= self.connects_after
                    self.connecting = not self.connected
                return 0, sample("show-connection.txt" if self.connected else "show-connection-down.txt")
            case ["mbn", "disconnect", "interface=Cellular"]:
                self.connected = self.connecting = False
                return 0, "Disconnection request is successfully completed."
            case ["mbn", "delete", "profile", "interface=Cellular", "name=Sekisho closed SIM"]:
                if self.profiles.pop("Sekisho closed SIM", None) is None:
                    return 1, 'Profile "Sekisho closed SIM" is not found on interface "Cellular".'
                return 0, 'Profile "Sekisho closed SIM" is deleted.'
        return 1, f"The following command was not found: {' '.join(args)}."

    def _table(self) -> str:
        lines = []
        for line in sample("show-interface.txt").splitlines():
            for name in ("Ethernet", "Wi-Fi", "Cellular"):
                if line.endswith(name):
                    admin = "Disabled" if name in self.disabled else "Enabled"
                    up = (self.connected if name == "Cellular" else name not in self.disabled)
                    line = f"{admin:<15}{'Connected' if up else 'Disconnected':<15}{'Dedicated':<17}{name}"
            lines.append(line)
        return "\r\n".join(lines)


def backend(tmp_path: Path, fake: FakeNetsh, **policy: Any) -> NetshNetwork:
    ticks = iter(range(0, 10_000, 5))
    return NetshNetwork(Policy(network_connect_timeout=10, **policy), tmp_path, runner=fake, poll=0,
                        monotonic=lambda: float(next(ticks)), sleep=lambda s: None)


def unlock(net: NetshNetwork) -> None:
    try:
        net.isolate(lambda s, d: None)
        net.bring_up(GRANT, lambda s, d: None)
    except NetworkError:
        net.bring_down()
        net.restore()
        raise


def test_the_commands_in_order_and_everything_back(tmp_path: Path) -> None:
    fake = FakeNetsh(tmp_path, connects_after=2)
    net = backend(tmp_path, fake)
    net.isolate(lambda s, d: None)
    link = net.bring_up(GRANT, lambda s, d: None)
    assert (link.signal, link.technology, link.operator) == (61, "gsm", "Closed Network")
    assert fake.disabled == {"Ethernet", "Wi-Fi"}
    assert net.check() is None
    verbs = [" ".join(c[:3]) for c in fake.commands]
    assert verbs.index("interface set interface") < verbs.index("mbn add profile") < verbs.index("mbn connect "
                                                                                                  "interface=Cellular")
    xml = fake.profiles["Sekisho closed SIM"]
    for text in ("<AccessString>closed.test.lg.jp</AccessString>", "<UserName>k20581</UserName>",
                 "<Password>apn-secret-1</Password>", "<SimIccID>8981100000000000001</SimIccID>",
                 "<SubscriberID>440101234567890</SubscriberID>", "<ConnectionMode>manual</ConnectionMode>"):
        assert text in xml
    assert not (tmp_path / PROFILE_FILE).exists(), "the profile with the APN password outlived netsh's read"
    assert not any("apn-secret-1" in " ".join(c) for c in fake.commands), "a secret on a command line"
    net.bring_down()
    net.restore()
    assert fake.profiles == {} and fake.disabled == set() and not fake.connected
    assert not (tmp_path / "network.json").exists()


def test_restore_off_leaves_interfaces_disabled(tmp_path: Path) -> None:
    fake = FakeNetsh(tmp_path)
    net = backend(tmp_path, fake, network_restore=False)
    unlock(net)
    net.bring_down()
    net.restore()
    assert fake.disabled == {"Ethernet", "Wi-Fi"}


@pytest.mark.parametrize(("setup", "message"), [
    ("no modem", "No mobile broadband modem"),
    ("wrong SIM", "Wrong SIM dongle"),
    ("Wi-Fi will not go down", r"Wi-Fi \(still connected\)"),
    ("timeout", "did not come up within 10 seconds"),
])
def test_each_failure_rolls_back(tmp_path: Path, setup: str, message: str) -> None:
    fake = FakeNetsh(tmp_path, modem=setup != "no modem", other_sim=setup == "wrong SIM",
                     stuck="Wi-Fi" if setup == "Wi-Fi will not go down" else None,
                     connects_after=1_000 if setup == "timeout" else 1)
    net = backend(tmp_path, fake)
    with pytest.raises(NetworkError, match=message) as caught:
        unlock(net)
    assert "apn-secret-1" not in caught.value.diagnostics()
    assert fake.profiles == {} and fake.disabled == set() and not fake.connected
    assert not (tmp_path / "network.json").exists() and not (tmp_path / PROFILE_FILE).exists()


def test_the_watch(tmp_path: Path) -> None:
    fake = FakeNetsh(tmp_path)
    net = backend(tmp_path, fake)
    unlock(net)
    fake.disabled.discard("Ethernet")  # someone re-enabled the cable
    finding = net.check()
    assert finding is not None and (finding.kind, finding.interface) == (OTHER_ROUTE, "Ethernet")
    fake.disabled.add("Ethernet")
    fake.connected = False
    finding = net.check()
    assert finding is not None and finding.kind == LINK_LOST


def test_cleanup_after_a_crash(tmp_path: Path) -> None:
    fake = FakeNetsh(tmp_path)
    unlock(backend(tmp_path, fake))
    (tmp_path / PROFILE_FILE).write_text("left by a crash")
    found = backend(tmp_path, fake).cleanup()
    assert found == {"sim_link": True, "interfaces": ["Ethernet", "Wi-Fi"]}
    assert fake.profiles == {} and fake.disabled == set() and not (tmp_path / PROFILE_FILE).exists()
    assert backend(tmp_path, fake).cleanup() is None


def test_the_parsers_on_the_samples() -> None:
    (interfaces,) = parse_blocks(sample("show-interfaces.txt"))
    assert interfaces["Name"] == "Cellular" and interfaces["Signal"] == "61%"
    assert interfaces["RSSI / RSCP"] == "19 (-75 dBm)"
    assert parse_blocks(sample("show-interfaces-none.txt")) == []
    (ready,) = parse_blocks(sample("show-readyinfo.txt"))
    assert ready["SIM ICC Id"] == "8981100000000000001" and ready["Telephone #1"] == "08012345678"
    (down,) = parse_blocks(sample("show-connection-down.txt"))
    assert down["Profile Name"] == "" and down["Activation State"] == "Disconnected"
    rows = parse_interface_table(sample("show-interface.txt"))
    assert [r["name"] for r in rows] == ["Ethernet", "Wi-Fi", "Cellular", "Bluetooth Network Connection"]
    assert rows[3] == {"admin": "Enabled", "state": "Disconnected", "type": "Dedicated",
                       "name": "Bluetooth Network Connection"}
    assert [r["admin"] for r in parse_interface_table(sample("show-interface-isolated.txt"))][:2] == ["Disabled"] * 2
