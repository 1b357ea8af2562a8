"""A real X server for the GUI tests: Xvfb on a free display, for the whole session."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def xvfb() -> Iterator[str]:
    if not shutil.which("Xvfb"):
        pytest.skip("Xvfb is not installed (make test installs it as root)")
    before = os.environ.get("DISPLAY")
    for number in range(91, 120):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    display = f":{number}"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "1366x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            break
        time.sleep(0.05)
    os.environ["DISPLAY"] = display
    os.environ["NO_AT_BRIDGE"] = "1"
    try:
        yield display
    finally:
        proc.terminate()
        proc.wait(10)
        if before is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = before


def pump(root: object, until: Callable[[], bool], timeout: float = 20.0) -> None:
    """Run Tk's event loop until ``until()`` holds (the worker thread answers meanwhile)."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("the window never got there")
        root.update()  # type: ignore[attr-defined]
        time.sleep(0.01)


@pytest.fixture
def root(xvfb: str) -> Iterator[object]:
    """A Tk root window on the test display."""
    import tkinter as tk

    window = tk.Tk()
    yield window
    if window.winfo_exists():
        window.destroy()
    del window
    gc.collect()  # Tk objects must die in this thread: a collection in a worker thread aborts Tcl
