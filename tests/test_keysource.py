"""Device key sources: the real Secret Service keyring, root-only files, and the insecure test file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sekisho.errors import InsecureKeySource, KeySourceError, KeySourceUnavailable
from sekisho.store.keysource import InsecureFileKeySource, KeyringKeySource, RootFileKeySource

ROOT = Path(__file__).resolve().parent.parent


def test_insecure_file_source_says_so(tmp_path, caplog) -> None:
    source = InsecureFileKeySource(tmp_path / "k")
    assert source.insecure and "INSECURE" in source.description
    key = source.create()
    assert source.load() == key
    assert "INSECURE" in caplog.text
    assert key.hex() not in caplog.text and key.hex() not in repr(source)


def test_create_never_replaces_an_existing_key(tmp_path) -> None:
    source = InsecureFileKeySource(tmp_path / "k")
    key = source.create()
    with pytest.raises(KeySourceError, match="refusing to replace"):
        source.create()
    assert source.load() == key


@pytest.mark.parametrize("content", [b"", b"not base64!!", b"AAAA\n", b"\xff\xfe"])
def test_a_damaged_key_file_is_reported(tmp_path, content) -> None:
    (tmp_path / "k").write_bytes(content)
    with pytest.raises(KeySourceError, match=r"not valid|wrong length"):
        InsecureFileKeySource(tmp_path / "k").load()


def test_root_file_source_accepts_owner_only(tmp_path) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    source = RootFileKeySource(d / "device.key")
    key = source.create()
    assert oct(os.stat(d / "device.key").st_mode & 0o777) == "0o600"
    assert source.load() == key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_root_file_source_refuses_a_readable_file(tmp_path, mode) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    source = RootFileKeySource(d / "device.key")
    source.create()
    os.chmod(d / "device.key", mode)
    with pytest.raises(InsecureKeySource, match="other users"):
        source.load()


def test_root_file_source_refuses_a_writable_directory(tmp_path) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    source = RootFileKeySource(d / "device.key")
    source.create()
    os.chmod(d, 0o777)
    with pytest.raises(InsecureKeySource, match="directory"):
        source.load()


def test_root_file_source_refuses_a_symlink(tmp_path) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    InsecureFileKeySource(d / "real.key").create()
    (d / "device.key").symlink_to(d / "real.key")
    with pytest.raises(KeySourceUnavailable):
        RootFileKeySource(d / "device.key").load()


def test_keyring_source_refuses_a_plaintext_backend(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    import keyring.core

    keyring.core.init_backend()
    try:
        with pytest.raises(InsecureKeySource, match="unprotected"):
            KeyringKeySource("store").load()
        allowed = KeyringKeySource("store", allow_insecure_backend=True)
        key = allowed.create()
        assert allowed.load() == key
    finally:
        monkeypatch.delenv("PYTHON_KEYRING_BACKEND")
        keyring.core.init_backend()


def test_keyring_source_without_any_keyring(monkeypatch) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    import keyring.core

    keyring.core.init_backend()
    try:
        with pytest.raises(KeySourceUnavailable, match="No OS keyring"):
            KeyringKeySource("store").load()
    finally:
        monkeypatch.delenv("PYTHON_KEYRING_BACKEND")
        keyring.core.init_backend()


SESSION = r"""
set -e
export XDG_DATA_HOME="$WORK/data" XDG_RUNTIME_DIR="$WORK/run"
mkdir -p "$XDG_DATA_HOME" "$XDG_RUNTIME_DIR"; chmod 700 "$XDG_RUNTIME_DIR"
printf 'login-password' | gnome-keyring-daemon --foreground --unlock --components=secrets >"$WORK/gkd.log" 2>&1 &
for i in $(seq 100); do
  dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
    org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null | grep -q true && break
  sleep 0.05
done
"$PYTHON" "$WORK/step.py" create
"$PYTHON" "$WORK/step.py" open
"""

STEP = """
import sys
from pathlib import Path
import keyring
from sekisho.store.keysource import KeyringKeySource
from sekisho.store.store import CredentialStore
print("backend", type(keyring.get_keyring()).__name__)
source = KeyringKeySource("test-store")
path = Path(sys.argv[0]).parent / "store.db"
if sys.argv[1] == "create":
    CredentialStore.create(path, source, device_id="laptop-kr").close()
else:
    with CredentialStore.open(path, source) as s:
        print("opened", s.device_id)
"""


def test_keyring_source_with_a_real_secret_service(tmp_path) -> None:
    """gnome-keyring-daemon on a private D-Bus session: the key lives there, not in any file here."""
    needed = ["dbus-run-session", "gnome-keyring-daemon", "dbus-send"]
    missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install {missing}")
        pytest.skip(f"needs {missing} (make test installs them as root)")
    (tmp_path / "step.py").write_text(textwrap.dedent(STEP))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "PYTHON_KEYRING"))}
    env.update(WORK=str(tmp_path), PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    proc = subprocess.run(["dbus-run-session", "--", "bash", "-c", SESSION], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "backend SecretService" in proc.stdout or "backend ChainerBackend" in proc.stdout
    assert "opened laptop-kr" in proc.stdout
    assert not list(tmp_path.glob("*.key"))
