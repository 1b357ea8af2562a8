"""Roster import: CSV as Japanese Excel writes it, and a real slapd with Japanese names."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enroll import roster as rosters
from enroll.directory import read_ldap
from enroll.registry import Registry
from sekisho.store.keysource import InsecureFileKeySource
from tests.tls_helpers import free_port

HEADER = "職員番号,氏名,フリガナ,所属,役割\r\n"
ROWS = [
    "K10234,佐藤 美咲,ｻﾄｳ ﾐｻｷ,市民課,madoguchi\r\n",
    "K20581,髙橋 健一,タカハシ ケンイチ,選挙管理委員会事務局,senkyo\r\n",
    "K30712,山﨑 花子,ﾔﾏｻﾞｷ ﾊﾅｺ,市民課,madoguchi;senkyo\r\n",
]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.create(tmp_path / "registry.db", InsecureFileKeySource(tmp_path / "station.key"))
    for role in ("madoguchi", "senkyo", "zeimu"):
        reg.set_role(role, [f"{role}-app"], {"store_url": "https://citrix.lg.jp/"})
    yield reg
    reg.close()


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932"])
def test_excel_encodings_with_extension_characters_and_half_width_kana(registry: Registry, encoding: str) -> None:
    data = (HEADER + "".join(ROWS)).encode(encoding)
    staff = rosters.read_csv(data, known_roles=registry.role_names(), source="roster.csv")
    assert staff.encoding == encoding and staff.rejections == []
    by_id = {e.user_id: e for e in staff.entries}
    assert by_id["K20581"].name == "髙橋 健一" and by_id["K30712"].name == "山﨑 花子"
    assert by_id["K10234"].kana == "サトウ ミサキ"  # half-width kana normalised
    assert by_id["K30712"].roles == ("madoguchi", "senkyo")
    changes = rosters.import_roster(registry, staff)
    assert len(changes.added) == 3
    assert registry.user("K30712")[0].display_name == "山﨑 花子"


def test_ibm_extension_bytes_as_excel_writes_them() -> None:
    # 髙 as the IBM extension code (0xFBFC) and 﨑 (0xFAB1): CP932, not mojibake.
    data = HEADER.encode("cp932") + b"K1," + b"\xfb\xfc" + "橋 健一,,,\r\n".encode("cp932") + \
        b"K2,\x8eR" + b"\xfa\xb1" + "花子,,,\r\n".encode("cp932")
    staff = rosters.read_csv(data)
    assert [e.name for e in staff.entries] == ["髙橋 健一", "山﨑花子"]


def test_a_file_that_is_neither_encoding_is_refused() -> None:
    with pytest.raises(rosters.RosterError, match="neither UTF-8 nor CP932"):
        rosters.read_csv(HEADER.encode() + b"K1,\x80\x81\xff,,,\r\n")


def test_bad_lines_are_reported_and_nothing_is_imported(registry: Registry) -> None:
    data = (HEADER + ROWS[0] + ",名無し,,市民課,madoguchi\r\n" + ROWS[0].replace("佐藤 美咲", "佐藤 次郎")
            + "K40000,伊藤 大輔\r\n" + "K50000,田中 一郎,タナカ,税務課,kaikei\r\n" + ROWS[1]).encode("utf-8")
    staff = rosters.read_csv(data, known_roles=registry.role_names())
    assert [(r.line, r.reason.split(":")[0] if ":" in r.reason else r.reason) for r in staff.rejections] == [
        (3, "empty id"), (4, "duplicate id K10234 (first on line 2)"), (5, "short line"), (6, "K50000")]
    assert "unknown role kaikei" in staff.rejections[3].reason
    with pytest.raises(rosters.RosterError, match="4 bad lines") as info:
        rosters.import_roster(registry, staff)
    assert "line 5: short line" in str(info.value)
    assert registry.users() == []


def test_reimport_updates_and_reports_leavers_without_deleting(registry: Registry) -> None:
    rosters.import_roster(registry, rosters.read_csv((HEADER + "".join(ROWS)).encode()))
    revision = registry.user("K20581")[0].revision
    moved = ROWS[1].replace("選挙管理委員会事務局", "税務課").replace("senkyo", "zeimu")
    new = rosters.read_csv((HEADER + ROWS[0] + moved).encode(), known_roles=registry.role_names())
    changes = rosters.diff(registry, new)
    assert [(e.user_id, fields) for e, fields in changes.updated] == [("K20581", ["department", "roles"])]
    assert changes.leavers == ["K30712"] and changes.unchanged == 1
    rosters.import_roster(registry, new)
    record, _ = registry.user("K20581")
    assert record.roles == ("zeimu",) and record.revision == revision + 1
    assert registry.user("K30712")[1] is True  # a leaver stays until IT disables them


def test_a_column_mapping(registry: Registry) -> None:
    data = "社員コード,漢字氏名,課名\r\nK1,佐藤 美咲,市民課\r\n".encode()
    with pytest.raises(rosters.RosterError, match="No column for id, name"):
        rosters.read_csv(data)
    staff = rosters.read_csv(data, mapping=rosters.parse_mapping(["id=社員コード", "name=漢字氏名",
                                                                  "department=課名"]))
    assert staff.entries[0].department == "市民課"


# --- a real directory -----------------------------------------------------------------------------------

SUFFIX = "dc=city,dc=example,dc=jp"


def _ldif(people: int) -> str:
    out = [f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: city\no: City\n",
           f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
           f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n"]
    names = ["佐藤 美咲", "髙橋 健一", "山﨑 花子"]
    for i in range(people):
        uid = f"K{i:05d}"
        out.append(f"dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
                   f"cn: {names[i % 3]}\nsn: {names[i % 3].split()[0]}\ndisplayName: {names[i % 3]}\n"
                   f"departmentNumber: 市民課\n")
    members = "".join(f"member: uid=K{i:05d},ou=people,{SUFFIX}\n" for i in range(0, people, 2))
    out.append(f"dn: cn=madoguchi-staff,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: madoguchi-staff\n"
               + members)
    return "\n".join(out)


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[str]:
    if not shutil.which("slapd") and not Path("/usr/sbin/slapd").exists():
        pytest.skip("slapd is not installed (make test installs it as root)")
    schema = Path("/etc/ldap/schema")
    (tmp_path / "db").mkdir()
    conf = tmp_path / "slapd.conf"
    conf.write_text("\n".join([
        *(f"include {schema / name}.schema" for name in ("core", "cosine", "inetorgperson", "nis")),
        f"pidfile {tmp_path / 'slapd.pid'}", f"argsfile {tmp_path / 'slapd.args'}",
        "modulepath /usr/lib/ldap", "moduleload back_mdb", "database mdb", f"suffix {SUFFIX}",
        f"rootdn cn=admin,{SUFFIX}", "rootpw secret-admin", f"directory {tmp_path / 'db'}", "sizelimit 1000",
        "maxsize 10485760", ""]))
    url = f"ldap://127.0.0.1:{free_port()}/"
    proc = subprocess.Popen(["/usr/sbin/slapd", "-d", "0", "-f", str(conf), "-h", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            probe = subprocess.run(["ldapsearch", "-x", "-H", url, "-b", "", "-s", "base"], capture_output=True)
            if probe.returncode == 0:
                break
            time.sleep(0.05)
        (tmp_path / "fixture.ldif").write_text(_ldif(1200), encoding="utf-8")
        subprocess.run(["ldapadd", "-x", "-H", url, "-D", f"cn=admin,{SUFFIX}", "-w", "secret-admin", "-f",
                        str(tmp_path / "fixture.ldif")], check=True, capture_output=True)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_real_directory_with_more_entries_than_one_page(slapd: str, registry: Registry) -> None:
    staff = read_ldap(url=slapd, base=SUFFIX, bind=f"cn=admin,{SUFFIX}", password="secret-admin",
                      group_map={"madoguchi-staff": "madoguchi"}, known_roles=registry.role_names())
    assert len(staff.entries) == 1200 and staff.rejections == []  # the server's size limit is 1000: paging
    by_id = {e.user_id: e for e in staff.entries}
    assert by_id["K00001"].name == "髙橋 健一" and by_id["K00002"].name == "山﨑 花子"
    assert by_id["K00000"].roles == ("madoguchi",) and by_id["K00001"].roles == ()
    assert by_id["K00000"].department == "市民課"
    changes = rosters.import_roster(registry, staff)
    assert len(changes.added) == 1200


def test_a_wrong_bind_password_is_a_clear_error(slapd: str) -> None:
    with pytest.raises(rosters.RosterError, match="Cannot bind"):
        read_ldap(url=slapd, base=SUFFIX, bind=f"cn=admin,{SUFFIX}", password="wrong")


def test_roster_commands(tmp_path: Path, capsys, monkeypatch) -> None:
    from enroll.cli import main

    monkeypatch.setenv("SEKISHO_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("SEKISHO_REGISTRY", str(tmp_path / "registry.db"))
    assert main(["registry", "init"]) in (0, None)
    for role in ("madoguchi", "senkyo"):
        assert main(["role", "set", role, "--app", "x", "--citrix-store", "https://c/"]) in (0, None)
    assert main(["role", "set", "rds", "--app", "x", "--rdp-host", "rds.city.lg.jp"]) in (0, None)
    with pytest.raises(SystemExit) as no_client:
        main(["role", "set", "none", "--app", "x"])
    assert no_client.value.code == 2 and "--rdp-host" in capsys.readouterr().err
    good = tmp_path / "roster.csv"
    good.write_bytes((HEADER + "".join(ROWS)).encode("cp932"))
    bad = tmp_path / "bad.csv"
    bad.write_bytes((HEADER + ROWS[0] + ",名無し,,,\r\n").encode("cp932"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["roster", "import", "--csv", str(bad)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1 and "line 3: empty id" in err and "nothing was imported" in err
    assert main(["roster", "diff", "--csv", str(good)]) in (0, None)
    assert "3 new" in capsys.readouterr().out
    assert main(["roster", "import", "--csv", str(good)]) in (0, None)
    assert "3 new, 0 updated" in capsys.readouterr().out
    good.write_bytes((HEADER + ROWS[0]).encode("cp932"))
    assert main(["roster", "import", "--csv", str(good)]) in (0, None)
    out = capsys.readouterr().out
    assert "NOT removed" in out and "K20581, K30712" in out
