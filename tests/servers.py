"""What the browser tests and the dashboard benchmark share: Debian's Chromium and how it is
launched, a free localhost port, starting the dashboard, waiting for a server to answer, and
stopping it.

A server under test listens on 127.0.0.1 only, on a free port, and is stopped by its test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def start_dashboard(store: Path, log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """``streamlit run dashboard`` on ``store`` at a free 127.0.0.1 port, with no demo run and
    one thread (``env`` adds variables); returns the process and its URL once it answers.
    Output goes to ``log``. The caller stops it with :func:`stop`; if it never answers, it is
    stopped here and the AssertionError shows the end of its log."""
    port = free_port()
    environ = {**os.environ, "MAHIAX_STORE": str(store), "MAHIAX_DASHBOARD_AUTOSTART": "0",
               "OMP_NUM_THREADS": "1", **env}
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true",
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/_stcore/health", server, 60, "streamlit",
                      lambda: Path(log).read_text()[-3000:])
    except BaseException:
        stop(server)
        raise
    return server, url
