"""The office-network check against a real local TLS server."""

from __future__ import annotations

from pathlib import Path

import pytest

from enroll.officecheck import NotAtTheOffice, check_office
from sekisho.errors import PolicyError
from sekisho.policy import Policy
from tests.tls_helpers import free_port, self_signed, tls_server


def policy(hosts: tuple[str, ...], fingerprints: tuple[str, ...]) -> Policy:
    return Policy(office_hosts=hosts, office_fingerprints=fingerprints)


def test_the_pinned_certificate_passes(tmp_path: Path) -> None:
    cert, key, fingerprint = self_signed(tmp_path, "office")
    with tls_server(cert, key) as address:
        assert check_office(policy((address,), (fingerprint,))) == address


def test_another_certificate_refuses(tmp_path: Path) -> None:
    cert, key, _ = self_signed(tmp_path, "office")
    _, _, other = self_signed(tmp_path, "other")
    with tls_server(cert, key) as address, pytest.raises(NotAtTheOffice, match="not the pinned one"):
        check_office(policy((address,), (other,)))


def test_a_man_in_the_middle_refuses(tmp_path: Path) -> None:
    # The office host's name answers, but with the interceptor's certificate.
    _, _, office_fingerprint = self_signed(tmp_path, "office")
    mitm_cert, mitm_key, _ = self_signed(tmp_path, "office-lookalike")
    with tls_server(mitm_cert, mitm_key) as address, pytest.raises(NotAtTheOffice) as info:
        check_office(policy((address,), (office_fingerprint,)))
    assert "Connect the station to the office network" in info.value.diagnostics()


def test_no_server_refuses_and_a_second_host_can_pass(tmp_path: Path) -> None:
    cert, key, fingerprint = self_signed(tmp_path, "office")
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(NotAtTheOffice, match="Not on the office network"):
        check_office(policy((dead,), (fingerprint,)), timeout=1)
    with tls_server(cert, key) as address:
        assert check_office(policy((dead, address), (fingerprint,)), timeout=1) == address


def test_no_check_in_the_policy_refuses() -> None:
    with pytest.raises(NotAtTheOffice, match="defines no office-network check"):
        check_office(Policy())


@pytest.mark.parametrize(("hosts", "fingerprints", "named"), [
    (("office.city.lg.jp",), ("a" * 64,), "host:port"),
    (("office:443",), ("ABC",), "64 lower-case hex"),
    (("office:443",), (), "go together"),
])
def test_malformed_office_settings(hosts, fingerprints, named) -> None:
    with pytest.raises(PolicyError, match=named):
        Policy(office_hosts=hosts, office_fingerprints=fingerprints)
