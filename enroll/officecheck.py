"""The office-network check: credentials are loaded only at the office (the report, §6(1)).

Before a command enrols a user or writes a bundle, the station opens TLS to one of the
policy's office hosts and compares the server certificate's SHA-256 (DER) with the pinned
fingerprints. The certificate is pinned, not validated against a CA: a station outside
the office cannot reach the host, and a look-alike server (or a man in the middle) cannot
show the pinned certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import ssl

from sekisho.errors import SekishoError
from sekisho.policy import Policy


class NotAtTheOffice(SekishoError):
    """The office-network check failed: nothing was loaded."""

    advice = ("Connect the station to the office network (庁内ネットワーク) and try again. If it is connected, "
              "check the policy's office.hosts and office.fingerprints with IT.")


def certificate_fingerprint(host: str, port: int, *, timeout: float = 5.0) -> str:
    """SHA-256 of the server's leaf certificate (DER), in hex."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pinned below instead
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise NotAtTheOffice(f"{host}:{port} showed no certificate.")
    return hashlib.sha256(der).hexdigest()


def check_office(policy: Policy, *, timeout: float = 5.0) -> str:
    """The ``host:port`` that passed; ``NotAtTheOffice`` naming what failed otherwise."""
    if not policy.office_hosts:
        raise NotAtTheOffice("The policy defines no office-network check (office.hosts, office.fingerprints).",
                             advice="Add the office check to the policy (docs/it-guide.md) and sign it again.")
    problems = []
    for entry in policy.office_hosts:
        host, _, port = entry.rpartition(":")
        try:
            found = certificate_fingerprint(host, int(port), timeout=timeout)
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"{entry}: {exc.strerror or exc}" if isinstance(exc, OSError) else f"{entry}: {exc}")
            continue
        if any(hmac.compare_digest(found, pinned) for pinned in policy.office_fingerprints):
            return entry
        problems.append(f"{entry}: its certificate is not the pinned one (SHA-256 {found[:16]}…)")
    raise NotAtTheOffice("Not on the office network: " + "; ".join(problems) + ".")
