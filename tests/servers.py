"""What the browser tests and the dashboard benchmark share: Debian's Chromium and how it is
launched, a free localhost port, starting the dashboard or a JupyterLab, waiting for a server
to answer, stopping it, and driving a notebook or a launcher tile in JupyterLab's page.

A server under test listens on 127.0.0.1 only, on a free port, and is stopped by its test.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

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


class TreeWatch:
    """Samples the processes under ``pid``: each one's parent and the command line it showed
    at its latest sighting.

    A process starts as a copy of its parent (``subprocess`` forks, then the child replaces
    itself with the new program): between the two, ``/proc`` shows the parent's command line.
    A sample that lands there sees a child of the dashboard server running ``streamlit run
    dashboard``. Every sample reads every child again, so a child that went on to run a program
    is kept under that program; a child still showing its parent's command line after its last
    sighting really ran the parent's code (a ``multiprocessing`` fork doing work in-server, or
    a start that never reached its program)."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.seen: dict[int, tuple[int, list[str]]] = {}  # pid -> (parent pid, cmdline)

    def sample(self) -> None:
        for child in self.root.children(recursive=True):
            try:
                self.seen[child.pid] = (child.ppid(), child.cmdline())
            except psutil.Error:  # ended between the listing and the read
                pass

    def children_of(self, pid: int) -> dict[int, list[str]]:
        return {p: cmd for p, (parent, cmd) in self.seen.items() if parent == pid}


def start_dashboard(store: Path, log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """``streamlit run <checkout>/dashboard`` on ``store`` at a free 127.0.0.1 port, with no
    demo run and one thread (``env`` adds variables); returns the process and its URL once
    it answers. It starts in ``log``'s folder, outside the checkout, as the JupyterLab tile
    and the hub start it (the dashboard's settings must hold there too: ``make dashboard``
    from the checkout is tested in ``tests/dashboard/test_dashboard_e2e.py``). Output goes to
    ``log``. The caller stops it with :func:`stop`; if it never answers, it is stopped here and the
    AssertionError shows the end of its log."""
    port = free_port()
    environ = {**os.environ, "MAHIAX_STORE": str(store), "MAHIAX_DASHBOARD_AUTOSTART": "0",
               "OMP_NUM_THREADS": "1", **env}
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard"),
             "--server.port", str(port), "--server.address", "127.0.0.1"],
            cwd=Path(log).parent, env=environ, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    up_or_stopped(server, f"{url}/_stcore/health", 60, "streamlit", log)
    return server, url


def up_or_stopped(proc: subprocess.Popen, health: str, seconds: float, name: str,
                  log: Path | str) -> None:
    """Wait until ``health`` answers; a server that never does is stopped, and the
    AssertionError shows the end of its ``log``."""
    try:
        wait_until_up(health, proc, seconds, name, lambda: Path(log).read_text()[-3000:])
    except BaseException:
        stop(proc)
        raise


def start_jupyterlab(root: Path, env: dict[str, str], log: Path,
                     *args: str) -> tuple[subprocess.Popen, str, str]:
    """``jupyter lab`` serving ``root`` on a free 127.0.0.1 port with a fresh token (``args``
    adds options); returns the process, its base URL and the token once it answers. Output
    goes to ``log``. The caller stops it with :func:`stop`; if it never answers, it is
    stopped here and the AssertionError shows the end of its log."""
    port, token = free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", *args,
    ] + (["--allow-root"] if os.geteuid() == 0 else [])  # CI containers run as root
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    up_or_stopped(proc, f"{base}/api/status?token={token}", 90, "JupyterLab", log)
    return proc, base, token


# Asks the running app (a server started with --LabApp.expose_app_in_browser=True) about the
# open notebook: its code cells, how many have run, the errors among their outputs, and the
# kernel's state.
NOTEBOOK_STATE = """() => {
  if (!window.jupyterapp || !window.jupyterapp.shell) return null;
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  const errors = [];
  for (const c of cells) {
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
    }
  }
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return {code: cells.length, ran: cells.filter(c => c.model.executionCount).length,
          errors, kernel: kernel ? kernel.status : null};
}"""


def wait_for_idle_kernel(page: Any, *, timeout_ms: float) -> None:
    """Wait until the notebook open in ``page`` shows its code cells and its kernel is idle
    (started, nothing running). The timeout is a hang guard."""
    page.wait_for_function(
        f"(() => {{ const s = ({NOTEBOOK_STATE})(); "
        f"return s && s.code > 0 && s.kernel === 'idle'; }})", timeout=timeout_ms)


def run_all_cells(page: Any, *, ready_timeout_ms: float, run_timeout_ms: float,
                  what: str = "the notebook") -> dict:
    """In the notebook open in ``page`` (a Playwright page on JupyterLab): wait for its kernel
    to be idle, "Run All Cells", wait until every code cell has run or one raised, and
    assert that every cell ran and none raised. Returns the notebook's state
    (:data:`NOTEBOOK_STATE`). The timeouts are hang guards."""
    wait_for_idle_kernel(page, timeout_ms=ready_timeout_ms)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    page.wait_for_function(
        f"(() => {{ const s = ({NOTEBOOK_STATE})(); "
        f"return s && (s.errors.length > 0 || (s.ran === s.code && s.kernel === 'idle')); }})",
        timeout=run_timeout_ms, polling=500)
    state = page.evaluate(f"({NOTEBOOK_STATE})()")
    assert state["errors"] == [], (what, state["errors"])
    assert state["ran"] == state["code"], (what, state)
    return state


# In the open notebook: cell ``i``'s source replaced by ``source`` (when given, as the
# learner's typing leaves it), then that cell made the active one and run with JupyterLab's
# own "Run Selected Cell" command.
RUN_CELL = """async ([i, source]) => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cell = panel.content.widgets[i];
  if (source !== null) cell.model.sharedModel.setSource(source);
  panel.content.activeCellIndex = i;
  panel.content.deselectAll();
  await window.jupyterapp.commands.execute('notebook:run-cell');
}"""

# Cell ``i`` of the open notebook once it has run and the kernel is idle again: its
# execution count, source and outputs (stream text, results' plain text, errors).
CELL_DONE = """([i, before]) => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cell = panel.content.widgets[i];
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const count = cell.model.executionCount;
  if (!count || count === before || !kernel || kernel.status !== 'idle') return null;
  const out = [];
  for (const o of cell.model.outputs.toJSON()) {
    if (o.output_type === 'stream') out.push([].concat(o.text).join(''));
    if (o.output_type === 'error') out.push(o.ename + ': ' + o.evalue);
    if (o.data && o.data['text/plain']) out.push([].concat(o.data['text/plain']).join(''));
  }
  return {count, source: cell.model.sharedModel.getSource(), out: out.join('')};
}"""


def cell_sources(page: Any) -> list[str]:
    """The sources of every cell of the notebook open in ``page`` (markdown cells too, so an
    index is the notebook's own)."""
    return page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets"
                         ".map(c => c.model.sharedModel.getSource())")


def run_cell(page: Any, i: int, *, source: str | None = None, timeout_ms: float) -> dict:
    """Run cell ``i`` of the notebook open in ``page`` (a JupyterLab started with
    ``--LabApp.expose_app_in_browser=True``) as a learner does: its text replaced by
    ``source`` if given, then "Run Selected Cell". Waits until it has run and the kernel is
    idle; returns :data:`CELL_DONE`'s record (``out``: what the cell printed or raised). The
    timeout is a hang guard."""
    before = page.evaluate(
        "(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].model.executionCount",
        i)
    page.evaluate(RUN_CELL, [i, source])
    handle = page.wait_for_function(CELL_DONE, arg=[i, before], timeout=timeout_ms,
                                    polling=250)
    return handle.json_value()


def open_launcher_tile(page: Any, title: str, *, timeout_ms: float,
                       screenshot: Path | None = None) -> Any:
    """Click the JupyterLab launcher's tile named ``title`` in ``page`` once it is visible
    (a screenshot of the launcher to ``screenshot`` first, if given) and return the browser
    tab the tile opens."""
    tile = page.locator(".jp-LauncherCard", has_text=title).first
    tile.wait_for(state="visible", timeout=timeout_ms)
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot))
    with page.context.expect_page(timeout=60_000) as opened:
        tile.click()
    return opened.value


# jupyter-server-proxy (4.6.0, the newest release) relays each message from the proxied app to
# the browser's websocket without checking that the browser side is still open. When a tab closes
# or leaves the page while Streamlit is still sending, tornado logs the relay's
# WebSocketClosedError as an "Uncaught exception". The message was for a page that is gone, the
# proxy goes on serving, and the test has already checked every page it opened; it is this
# relay's trace and no other that a server log may hold.
PROXY_RELAY_TO_CLOSED_TAB = ("jupyter_server_proxy/handlers.py", "in message_cb",
                             "tornado.websocket.WebSocketClosedError")


def tracebacks(log_text: str) -> list[str]:
    """Every Python traceback in a server log, one string each: the "Traceback" line, the lines
    indented under it and the exception line at its own indentation."""
    lines = log_text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("Traceback (most recent call last):"):
            continue
        indent = len(line) - len(line.lstrip())
        block = [line]
        for nxt in lines[i + 1:]:
            block.append(nxt)
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break  # the exception line closes the traceback
        found.append("\n".join(block))
    return found


def unexpected_tracebacks(log_text: str) -> list[str]:
    """The tracebacks of a server log other than the proxy's relay to a closed tab."""
    return [tb for tb in tracebacks(log_text)
            if not (all(mark in tb for mark in PROXY_RELAY_TO_CLOSED_TAB)
                    and tb.rstrip().endswith(PROXY_RELAY_TO_CLOSED_TAB[-1]))]
