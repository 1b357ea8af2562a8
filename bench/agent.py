"""The agent's footprint on a field laptop: memory of the service and the tray, start-up.

    python bench/agent.py [--json] [--users 20000]

* ``service_rss_mb``: resident memory of ``sekisho-agent run``, idle, over a store of
  ``--users`` users (goal <= 80).
* ``tray_rss_mb``: resident memory of ``sekisho-agent tray``, idle (goal <= 80).
* ``startup_ratio``: the logon window's start until it is drawn, over a bare Python
  starting Tk and drawing an empty window, measured in the same run (goal <= 3).
* ``service_ready_s``: the service's start until it answers a status request.

The tray and the window need an X server: Xvfb is started for the run (and trayer, where
installed, so the icon docks as on a desktop).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from provision import SIM, fill  # noqa: E402

from agent import device  # noqa: E402
from agent.cli import converse  # noqa: E402
from bench.report import show  # noqa: E402
from enroll import office  # noqa: E402
from enroll.registry import Registry  # noqa: E402
from sekisho import crypto  # noqa: E402
from sekisho.policy import Policy, sign_policy  # noqa: E402
from sekisho.store.keysource import InsecureFileKeySource  # noqa: E402
from sekisho.store.records import SlotKind  # noqa: E402

AGENT = str(Path(sys.executable).parent / "sekisho-agent")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def laptop_with(work: Path, users: int) -> tuple[Path, Path]:
    it_private, it_public = crypto.ed25519_generate()
    text = Policy(permitted_slot_kinds=(SlotKind.FIDO2_UV,), network_backend="simulated").to_toml().encode()
    signed = office.SignedPolicy(text, sign_policy(text, it_private), it_public)
    registry = Registry.create(work / "registry.db", InsecureFileKeySource(work / "station.key"))
    ids = fill(registry, users)
    laptop, key = work / "laptop", work / "laptop.key"
    source = InsecureFileKeySource(key)
    request = device.init(laptop, source, crypto.public_key_pem(it_public).encode())
    bundle = office.provision(registry, request.to_bytes(), confirmed_fingerprint=request.fingerprint, users=ids,
                              sim=SIM, signed_policy=signed, it_private=it_private)
    device.install(laptop, source, bundle)
    registry.close()
    return laptop, key


def wait_answering(sock: Path, timeout: float = 60) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        with contextlib.suppress(Exception):  # not listening yet
            if converse(sock, {"op": "status"}, quiet=True).get("type") == "result":
                return time.perf_counter() - started
        time.sleep(0.02)
    raise RuntimeError("the service never answered")


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
    return time.perf_counter() - t


def free_display() -> str:
    for n in range(60, 90):
        # The X server's own socket and lock files (fixed paths, only looked at).
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():  # noqa: S108
            return f":{n}"
    raise RuntimeError("no free X display number")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which("Xvfb"):
        print("bench/agent.py needs Xvfb (the tray and the window are graphical).", file=sys.stderr)
        return 2
    display = free_display()
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1366x768x24", "-nolisten", "tcp"],  # noqa: S603, S607
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "DISPLAY": display, "NO_AT_BRIDGE": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        time.sleep(0.5)
        if shutil.which("trayer"):
            processes.append(subprocess.Popen(["trayer", "--edge", "top", "--align", "right"], env=env,  # noqa: S607
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with tempfile.TemporaryDirectory(prefix="sekisho-bench-") as tmp:
            work = Path(tmp)
            laptop, key = laptop_with(work, args.users)
            sock = work / "agent.sock"
            service = subprocess.Popen([AGENT, "--socket", str(sock), "run", "--state-dir", str(laptop),  # noqa: S603
                                        "--insecure-key-file", str(key)], env=env, stderr=subprocess.DEVNULL)
            processes.append(service)
            ready = wait_answering(sock)
            tray = subprocess.Popen([AGENT, "--socket", str(sock), "tray", "--lang", "ja"], env=env,  # noqa: S603
                                    stderr=subprocess.DEVNULL)
            processes.append(tray)
            time.sleep(3)  # idle: a few of the tray's status polls
            service_rss, tray_rss = rss_mb(service.pid), rss_mb(tray.pid)
            bare = [sys.executable, "-c", "import tkinter; r = tkinter.Tk(); r.update(); r.destroy()"]
            window = [AGENT, "--socket", str(sock), "window", "--lang", "ja", "--ready-exit"]
            ratios = []
            for _ in range(args.rounds):  # interleaved: the machine is shared and noisy
                base = timed(bare, env)
                ratios.append(timed(window, env) / base)
    finally:
        for proc in reversed(processes):
            proc.terminate()
            proc.wait(30)
        xvfb.terminate()
        xvfb.wait(10)
    result = {
        "service_rss_mb": round(service_rss, 1),
        "tray_rss_mb": round(tray_rss, 1),
        "startup_ratio": round(statistics.median(ratios), 2),
        "service_ready_s": round(ready, 2),
        "users": args.users,
        "goals": {"service_rss_mb": 80, "tray_rss_mb": 80, "startup_ratio": 3},
    }
    return show(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
