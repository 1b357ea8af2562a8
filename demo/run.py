"""`make run`: the service and the tray on the demo's laptop, with its software keys.

Needs a display (the tray and the logon window are graphical) and a finished `make demo`
(its laptop state in $DEMO_OUT). Quit from the tray's menu; the service stops with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    out = Path(os.environ.get("DEMO_OUT", "demo-out")).resolve()
    if not (out / "laptop" / "store.db").exists():
        print(f"No demo laptop in {out}/: run `make demo` first.", file=sys.stderr)
        return 2
    if not os.environ.get("DISPLAY") and sys.platform != "win32":
        print("make run needs a display (DISPLAY): the tray and the logon window are graphical.", file=sys.stderr)
        return 2
    agent = str(Path(sys.executable).parent / "sekisho-agent")
    sock = out / "run" / "tray.sock"
    keys = [arg for k in sorted((out / "keys").glob("*.json")) for arg in ("--soft-key", str(k))]
    service = subprocess.Popen([agent, "--socket", str(sock), "run", "--state-dir", str(out / "laptop"),  # noqa: S603
                                "--insecure-key-file", str(out / "laptop-device.key"), *keys])
    print(f"Service started (socket {sock}); staff ids: K10234 K20581 (passphrase + TOTP), K30712 "
          "(fingerprint key), K41156 (key + PIN), K52034 (key + passphrase) — see demo/__main__.py.")
    try:
        return subprocess.call([agent, "--socket", str(sock), "tray", *sys.argv[1:]])  # noqa: S603
    except KeyboardInterrupt:
        return 130
    finally:
        service.terminate()
        service.wait(30)


if __name__ == "__main__":
    raise SystemExit(main())
