"""The control channel: a real Unix socket, real peer credentials, a real second OS user.

The second user (``sekisho-test``, created here when running as root, as CI does) talks
to the service with a stdlib-only client run by the system Python through ``runuser``:
it needs nothing of Sekisho's, only the documented wire format."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import cli, protocol
from agent.gate import GateState
from tests.agent_helpers import KEY_PIN, PASSPHRASE, Laptop, launch_policy, make_laptop, serving

SECOND_USER = "sekisho-test"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Laptop, Path]]:
    laptop = make_laptop(tmp_path / "laptop")
    with serving(laptop) as path:  # a socket directory the second user can reach
        yield laptop, path


def ask(path: Path, request: dict, answers: str = "", monkeypatch: pytest.MonkeyPatch | None = None) -> dict:
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(answers))
    return cli.converse(path, request, quiet=True)


def test_unlock_status_lock_over_the_socket(served, monkeypatch) -> None:
    laptop, path = served
    result = ask(path, {"op": "unlock", "user": "K20581"}, f"{KEY_PIN}\n", monkeypatch)
    assert result["type"] == "result" and result["status"]["state"] == "unlocked"
    assert result["status"]["user"]["id"] == "K20581"
    assert laptop.gate.unlocked_uid == os.getuid()
    status = ask(path, {"op": "status"})["status"]
    assert status["user"]["id"] == "K20581"
    assert ask(path, {"op": "lock"})["status"]["state"] == "locked"
    assert laptop.gate.state is GateState.LOCKED


def test_refusals_carry_what_a_person_needs(served, monkeypatch) -> None:
    _, path = served
    result = ask(path, {"op": "unlock", "user": "K30712"}, "wrong passphrase 12\n", monkeypatch)
    assert result["type"] == "error" and result["error"] == "AuthenticationFailed"
    assert result["attempts_before_delay"] == 4 and result["attempts_before_disable"] == 9
    assert "wrong passphrase" not in json.dumps(result)
    cancelled = ask(path, {"op": "unlock", "user": "K30712"}, "", monkeypatch)  # nothing typed: cancel
    assert cancelled["error"] == "Cancelled"


def raw_exchange(path: Path, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(payload)
        return protocol.receive(sock)


@pytest.mark.parametrize("payload", [
    pytest.param(struct.pack(">I", 10) + b"not json!!", id="not-json"),
    pytest.param(struct.pack(">I", 4) + b"\xff\xfe\xfd\xfc", id="not-utf8"),
    pytest.param(struct.pack(">I", 2) + b"[]", id="not-an-object"),
    pytest.param(struct.pack(">I", 0xFFFFFFF0), id="oversized"),
    pytest.param(struct.pack(">I", 21) + b'{"v":9,"op":"status"}', id="wrong-version"),
    pytest.param(struct.pack(">I", 20) + b'{"v":1,"op":"reset"}', id="unknown-op"),
    pytest.param(struct.pack(">I", 30) + b'{"v":1,"op":"unlock","user":5}', id="wrong-type"),
])
def test_malformed_requests_get_an_error_and_the_service_lives_on(served, payload: bytes) -> None:
    _, path = served
    reply = raw_exchange(path, payload)
    assert reply["type"] == "error" and reply["error"] == "BadRequest"
    assert ask(path, {"op": "status"})["status"]["state"] == "locked"


def test_the_terminal_client_reads_piped_answers(served) -> None:
    _, path = served
    env = {**os.environ, "SEKISHO_SOCKET": str(path)}
    agent = str(Path(sys.executable).parent / "sekisho-agent")
    proc = subprocess.run([agent, "unlock", "--user", "K30712"], input=f"{PASSPHRASE['K30712']}\n",
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Unlocked: 職員 K30712" in proc.stdout
    proc = subprocess.run([agent, "status", "--json"], capture_output=True, text=True, env=env, timeout=60)
    doc = json.loads(proc.stdout)
    assert doc["state"] == "unlocked" and doc["user"]["id"] == "K30712"
    proc = subprocess.run([agent, "unlock", "--user", "K20581"], input=f"{KEY_PIN}\n", capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "already unlocked" in proc.stderr
    assert subprocess.run([agent, "lock"], env=env, timeout=60).returncode == 0
    proc = subprocess.run([agent, "--socket", "/nonexistent/agent.sock", "status"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "not reachable" in proc.stderr and "Traceback" not in proc.stderr


# --- another OS user -------------------------------------------------------------------------------

CLIENT = r"""
import json, socket, struct, sys
path, request, answers = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
def send(s, m):
    d = json.dumps(m).encode(); s.sendall(struct.pack(">I", len(d)) + d)
def recv(s):
    n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]; return json.loads(s.recv(n, socket.MSG_WAITALL))
s = socket.socket(socket.AF_UNIX); s.connect(path); send(s, dict(v=1, **request))
while True:
    m = recv(s)
    if m["type"] == "prompt":
        send(s, {"type": "answer", "value": answers.pop(0)} if answers else {"type": "cancel"})
    elif m["type"] in ("result", "error"):
        print(json.dumps(m)); break
"""


def as_second_user(path: Path, request: dict, *answers: str) -> dict:
    proc = subprocess.run(["runuser", "-u", SECOND_USER, "--", "/usr/bin/python3", "-c", CLIENT, str(path),
                           json.dumps(request), *answers], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def second_user() -> str:
    if os.geteuid() != 0 or not shutil.which("runuser") or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root, runuser and /usr/bin/python3 to act as a second user (CI has them)")
    if subprocess.run(["id", SECOND_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", SECOND_USER], check=True, capture_output=True)
    return SECOND_USER


def test_another_user_may_unlock_but_not_see_or_lock_a_session_not_theirs(served, second_user, monkeypatch) -> None:
    laptop, path = served
    # root unlocks (as a field worker's session would)
    ask(path, {"op": "unlock", "user": "K20581"}, f"{KEY_PIN}\n", monkeypatch)
    other = as_second_user(path, {"op": "status"})
    assert other["status"]["state"] == "unlocked" and other["status"]["user"] is None  # no details
    refused = as_second_user(path, {"op": "lock"})
    assert refused["type"] == "error" and refused["error"] == "PermissionDenied"
    assert laptop.gate.state is GateState.UNLOCKED
    busy = as_second_user(path, {"op": "unlock", "user": "K30712"}, PASSPHRASE["K30712"])
    assert busy["error"] == "GateBusy"
    ask(path, {"op": "lock"})  # root may lock

    # The second user unlocks as a Sekisho user: the session is theirs.
    mine = as_second_user(path, {"op": "unlock", "user": "K30712"}, PASSPHRASE["K30712"])
    assert mine["type"] == "result" and mine["status"]["user"]["id"] == "K30712"
    uid = int(subprocess.run(["id", "-u", SECOND_USER], capture_output=True, text=True).stdout)
    assert laptop.gate.unlocked_uid == uid
    assert as_second_user(path, {"op": "status"})["status"]["user"]["id"] == "K30712"
    assert ask(path, {"op": "status"})["status"]["user"]["id"] == "K30712"  # root sees it too
    assert as_second_user(path, {"op": "lock"})["status"]["state"] == "locked"


def test_bad_requests_from_another_user(served, second_user) -> None:
    _, path = served
    reply = as_second_user(path, {"op": "format-disk"})
    assert reply["error"] == "BadRequest"
    assert as_second_user(path, {"op": "status"})["status"]["state"] == "locked"


def test_sekisho_agent_run_serves_until_sigterm(tmp_path: Path) -> None:
    import signal
    import time

    laptop = make_laptop(tmp_path / "state")
    laptop.gate.store.close()
    laptop.gate.trail.close()
    sock = tmp_path / "run" / "agent.sock"
    agent = str(Path(sys.executable).parent / "sekisho-agent")
    keys = [arg for k in sorted((tmp_path / "state").glob("key-*.json")) for arg in ("--soft-key", str(k))]
    service = subprocess.Popen([agent, "--socket", str(sock), "run", "--state-dir", str(tmp_path / "state"),
                                "--insecure-key-file", str(tmp_path / "state" / "device.key"), *keys],
                               stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        env = {**os.environ, "SEKISHO_SOCKET": str(sock)}
        proc = subprocess.run([agent, "unlock", "--user", "K20581"], input=f"{KEY_PIN}\n", capture_output=True,
                              text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(subprocess.run([agent, "status", "--json"], capture_output=True, text=True, env=env,
                                        timeout=60).stdout)
        assert doc["state"] == "unlocked" and doc["lease"]["days_left"] >= 13
    finally:
        service.send_signal(signal.SIGTERM)
        _, err = service.communicate(timeout=30)
    assert service.returncode == 0, err
    assert not sock.exists()
    from sekisho.trail import read_file

    last = [e.event for e in read_file(tmp_path / "state" / "trail.jsonl")][-2:]
    assert last == ["link-down", "lock"]  # the service locks on its way out


def test_the_service_refuses_a_state_directory_open_to_others(tmp_path: Path) -> None:
    laptop = make_laptop(tmp_path / "state")
    laptop.gate.store.close()
    laptop.gate.trail.close()
    (tmp_path / "state").chmod(0o755)
    agent = str(Path(sys.executable).parent / "sekisho-agent")
    proc = subprocess.run([agent, "--socket", str(tmp_path / "agent.sock"), "run", "--state-dir",
                           str(tmp_path / "state"), "--insecure-key-file", str(tmp_path / "state" / "device.key")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "open to other users" in proc.stderr and "chmod 700" in proc.stderr


def test_the_sessions_launcher_reports_its_apps_and_no_one_else_may(served, second_user, monkeypatch) -> None:
    laptop, path = served
    refused = as_second_user(path, {"op": "apps", "event": "started", "client": "storebrowse", "apps": ["x"]})
    assert refused["error"] == "PermissionDenied"  # nobody unlocked yet: nothing to report
    mine = as_second_user(path, {"op": "unlock", "user": "K30712"}, PASSPHRASE["K30712"])
    assert mine["type"] == "result"
    assert as_second_user(path, {"op": "apps", "event": "started", "client": "storebrowse",
                                 "apps": ["住民記録"]})["type"] == "result"
    as_second_user(path, {"op": "lock"})
    # After the lock, the same user's launcher reports what it closed.
    assert as_second_user(path, {"op": "apps", "event": "closed", "client": "storebrowse", "closed": 1,
                                 "killed": 0})["type"] == "result"
    bad = as_second_user(path, {"op": "apps", "event": "deleted"})
    assert bad["error"] == "BadRequest"
    bad = as_second_user(path, {"op": "apps", "event": "closed", "closed": -1})
    assert bad["error"] == "BadRequest"
    bodies = [e.body for e in laptop.gate.trail.entries() if e.body]
    started = next(b for b in bodies if b["event"] == "apps-started")
    closed = next(b for b in bodies if b["event"] == "apps-closed")
    assert started["user"] == closed["user"] == "K30712"
    assert started["details"] == {"client": "storebrowse", "apps": ["住民記録"]}
    assert closed["details"] == {"client": "storebrowse", "closed": 1, "killed": 0}


def test_unlock_launch_starts_the_apps_and_closes_them_at_lock(tmp_path: Path) -> None:
    """`sekisho-agent unlock --launch` as the field worker runs it, with a stand-in Citrix
    (Citrix cannot run here): started from the grant, closed when the laptop locks."""
    import time

    from tests.test_launch import stand_in, wait_for

    laptop = make_laptop(tmp_path / "laptop", launch_policy(stand_in(tmp_path / "citrix")))
    agent = str(Path(sys.executable).parent / "sekisho-agent")
    with serving(laptop) as path:
        proc = subprocess.Popen([agent, "unlock", "--user", "K30712", "--launch"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "SEKISHO_SOCKET": str(path)})
        assert proc.stdin is not None
        proc.stdin.write(f"{PASSPHRASE['K30712']}\n")
        proc.stdin.close()
        wait_for(tmp_path / "citrix" / "args.json")
        assert json.loads((tmp_path / "citrix" / "args.json").read_text()) == ["-L", "住民記録", "https://citrix.test.lg.jp/Citrix/Store/discovery"]
        time.sleep(0.5)
        assert ask(path, {"op": "lock"})["status"]["state"] == "locked"  # e.g. the screen locked
        proc.wait(timeout=30)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        assert "Unlocked" in out
        assert proc.returncode == 0, err
        assert (tmp_path / "citrix" / "args.closed").read_text() == "closed"
        assert "1 apps closed, 0 had to be stopped" in err
        bodies = [e.body for e in laptop.gate.trail.entries() if e.body]
        assert [b["event"] for b in bodies if b["event"].startswith("apps-")] == ["apps-started", "apps-closed"]


def test_the_terminal_client_speaks_japanese(served) -> None:
    _, path = served
    env = {**os.environ, "SEKISHO_SOCKET": str(path)}
    agent = str(Path(sys.executable).parent / "sekisho-agent")
    status = subprocess.run([agent, "--lang", "ja", "status"], capture_output=True, text=True, env=env, timeout=60)
    assert status.returncode == 0 and "状態：locked" in status.stdout and "オフライン利用期限：あと" in status.stdout
    wrong = subprocess.run([agent, "--lang", "ja", "unlock", "--user", "K30712"], input="wrong passphrase 12\n",
                           capture_output=True, text=True, env=env, timeout=60)
    assert wrong.returncode == 1
    assert "入力内容が一致しませんでした。" in wrong.stderr and "一時ロックまでの残り試行回数：4 回" in wrong.stderr
    env["SEKISHO_LANG"] = "ja"  # the same from the environment, e.g. set by IT for field laptops
    right = subprocess.run([agent, "unlock", "--user", "K30712"], input=f"{PASSPHRASE['K30712']}\n",
                           capture_output=True, text=True, env=env, timeout=60)
    assert right.returncode == 0 and "ロックを解除しました：職員 K30712 さん" in right.stdout
    assert "認証情報を確認しています…" in right.stderr


def test_the_policys_language_where_nothing_else_says(tmp_path: Path) -> None:
    from sekisho.policy import Policy
    from tests.agent_helpers import POLICY

    policy = Policy(permitted_slot_kinds=POLICY.permitted_slot_kinds, argon2=POLICY.argon2,
                    allow_software_authenticators=True, network_backend="simulated", ui_language="ja")
    laptop = make_laptop(tmp_path / "laptop", policy)
    env = {k: v for k, v in os.environ.items() if k != "SEKISHO_LANG"} | {"LANG": "en_US.UTF-8"}
    agent = str(Path(sys.executable).parent / "sekisho-agent")
    with serving(laptop) as path:
        env["SEKISHO_SOCKET"] = str(path)
        status = subprocess.run([agent, "status"], capture_output=True, text=True, env=env, timeout=60)
        assert status.returncode == 0 and "状態：locked" in status.stdout  # IT's choice over the desktop's
        english = subprocess.run([agent, "--lang", "en", "status"], capture_output=True, text=True, env=env,
                                 timeout=60)
        assert english.returncode == 0 and "State: locked" in english.stdout  # the command line over IT's
    # No service: the desktop's language, and the refusal says so plainly.
    gone = subprocess.run([agent, "status"], capture_output=True, text=True, env=env, timeout=60)
    assert gone.returncode != 0 and "not reachable" in gone.stderr and "Traceback" not in gone.stderr
