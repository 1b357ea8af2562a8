"""Staff from Active Directory or OpenLDAP, through ldap3 (paged searches).

People: Active Directory ``user`` objects (``sAMAccountName``, ``displayName``,
``msDS-PhoneticDisplayName`` for kana, ``department``, ``memberOf``) or OpenLDAP
``inetOrgPerson`` entries (``uid``, ``displayName`` or ``cn``, ``departmentNumber`` or
``ou``). Groups give roles through ``--group-map GROUP=ROLE`` (a group's cn or DN); in
OpenLDAP the groups (``groupOfNames``) are searched and their ``member`` lists read.
Entries without an id or a name are reported as rejections, like bad CSV lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from enroll.roster import Rejection, Roster, RosterEntry, RosterError, _norm

PAGE_SIZE = 500
PERSON_FILTER = "(|(&(objectClass=user)(objectCategory=person))(objectClass=inetOrgPerson))"
GROUP_FILTER = "(|(objectClass=groupOfNames)(objectClass=group))"
ATTRIBUTES = ["sAMAccountName", "uid", "displayName", "cn", "msDS-PhoneticDisplayName", "department",
              "departmentNumber", "ou", "memberOf"]


def _first(entry: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = entry.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if value:
            return _norm(str(value))
    return ""


def _paged(connection: Any, base: str, search_filter: str, attributes: list[str]) -> Iterable[dict[str, Any]]:
    from ldap3 import SUBTREE

    for item in connection.extend.standard.paged_search(base, search_filter, search_scope=SUBTREE,
                                                        attributes=attributes, paged_size=PAGE_SIZE,
                                                        generator=True):
        if item.get("type") == "searchResEntry":
            yield {"dn": item["dn"], **{k: v for k, v in item["attributes"].items() if v not in (None, [], "")}}


def read_ldap(*, url: str, base: str, bind: str | None = None, password: str | None = None,
              group_map: Mapping[str, str] | None = None, known_roles: Iterable[str] | None = None) -> Roster:
    try:
        from ldap3 import NONE, Connection, Server
        from ldap3.core.exceptions import LDAPException
    except ImportError:  # pragma: no cover - a dependency
        raise RosterError("ldap3 is not installed.") from None
    group_map = dict(group_map or {})
    roles_known = set(known_roles) if known_roles is not None else None
    try:
        # No schema check: the same search serves Active Directory and OpenLDAP, and each
        # lacks some of the other's attributes.
        connection = Connection(Server(url.rstrip("/"), connect_timeout=10, get_info=NONE), user=bind,
                                password=password, auto_bind=True, raise_exceptions=True, receive_timeout=30,
                                check_names=False)
    except LDAPException as exc:
        raise RosterError(f"Cannot bind to {url}: {exc}.",
                          advice="Check the URL, the bind DN and its password.") from None
    try:
        people = list(_paged(connection, base, PERSON_FILTER, ATTRIBUTES))
        member_roles: dict[str, set[str]] = {}
        for group in _paged(connection, base, GROUP_FILTER, ["cn", "member"]):
            role = group_map.get(group["dn"]) or group_map.get(_first(group, "cn"))
            if role:
                for member in group.get("member", []):
                    member_roles.setdefault(str(member).lower(), set()).add(role)
    except LDAPException as exc:
        raise RosterError(f"The directory search failed: {exc}.") from None
    finally:
        connection.unbind()
    entries, rejections = [], []
    seen: set[str] = set()
    for number, person in enumerate(sorted(people, key=lambda p: str(p["dn"]).lower()), start=1):
        user_id = _first(person, "sAMAccountName", "uid")
        name = _first(person, "displayName", "cn")
        if not user_id or not name:
            rejections.append(Rejection(number, f"{person['dn']}: no id or no name"))
            continue
        if user_id.casefold() in seen:
            rejections.append(Rejection(number, f"{person['dn']}: duplicate id {user_id}"))
            continue
        seen.add(user_id.casefold())
        roles = set(member_roles.get(str(person["dn"]).lower(), set()))
        for group_dn in person.get("memberOf", []):  # Active Directory lists them on the user
            role = group_map.get(str(group_dn)) or group_map.get(str(group_dn).split(",")[0].removeprefix("CN="))
            if role:
                roles.add(role)
        unknown = sorted(r for r in roles if roles_known is not None and r not in roles_known)
        if unknown:
            rejections.append(Rejection(number, f"{user_id}: unknown role {', '.join(unknown)}"))
            continue
        entries.append(RosterEntry(user_id=user_id, name=name,
                                   kana=_first(person, "msDS-PhoneticDisplayName"),
                                   department=_first(person, "department", "departmentNumber", "ou"),
                                   roles=tuple(sorted(roles)), line=number))
    return Roster(entries=entries, rejections=rejections, encoding="ldap", source=url)
