"""What the browser tests and the dashboard benchmark share: Debian's Chromium and how it is
launched, a free localhost port, waiting for a server to answer, and stopping it.

A server under test listens on 127.0.0.1 only, on a free port, and is stopped by its test.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; `playwright install` is never run
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    """Terminate ``proc``, then kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float, what: str,
                  log: Callable[[], str] = lambda: "") -> None:
    """Return once ``url`` answers 200; AssertionError (with ``log()``) if ``proc`` exits or
    ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited early ({proc.returncode}):\n{log()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not answer {url} within {timeout_s:.0f} s:\n"
                                 f"{log()}")
        time.sleep(0.3)
