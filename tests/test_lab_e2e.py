"""End to end: ``00_tour`` in a real JupyterLab, in headless Chromium, every cell run.

A JupyterLab server is started on a free 127.0.0.1 port with a token, its root a temp dir
holding a copy of the notebook (Lab autosaves outputs: never into the repository), and every
Jupyter directory under the test's temp dir (``notebook_env.jupyter_env``). Chromium opens the
notebook, "Run All Cells" runs it, and the test waits until every code cell has run, checks
that none raised, and that an ipywidget and a Plotly chart were rendered in the page. The
server is stopped by the test.

Skipped where ``/usr/bin/chromium`` or the ``playwright`` package is missing (Debian's
chromium is used; ``playwright install`` is never run).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.notebook_env import ROOT, jupyter_env, notebook_path
from tests.servers import CHROMIUM, CHROMIUM_ARGS, free_port, stop, wait_until_up

if not CHROMIUM.exists():
    pytest.skip(f"the JupyterLab end-to-end test needs Debian's chromium at {CHROMIUM}",
                allow_module_level=True)
pytest.importorskip("playwright.sync_api",
                    reason="the JupyterLab end-to-end test needs the playwright package")
pytest.importorskip("jupyterlab")

from playwright.sync_api import sync_playwright  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts" / "lab"
WIDGET = ".jp-OutputArea-output .jupyter-widgets"  # an ipywidget view in an output
PLOTLY = ".jp-RenderedPlotly.js-plotly-plot"  # an output drawn by plotly.js (jupyterlab-plotly)

# Asks the running app (exposed by --LabApp.expose_app_in_browser) about the open notebook:
# code cells, how many have run, and the errors among their outputs.
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


def _lab_settings(env: dict[str, str]) -> None:
    """Render every cell (no windowing) and never ask about news: a quiet, complete page."""
    tracker = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True, exist_ok=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    labconfig = Path(env["JUPYTER_CONFIG_DIR"]) / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
    ))


@pytest.mark.timeout(420)
def test_tour_runs_in_jupyterlab_and_renders_a_widget_and_a_plotly_chart(tmp_path):
    env = {**os.environ, **jupyter_env(tmp_path / "jupyter"), "CUDA_VISIBLE_DEVICES": ""}
    _lab_settings(env)
    root = tmp_path / "lab-root"
    root.mkdir()
    shutil.copy(notebook_path("00_tour"), root / "00_tour.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
    ] + (["--allow-root"] if os.geteuid() == 0 else [])  # CI containers run as root
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/api/status?token={token}", proc, 90, "JupyterLab",
                      lambda: log.read_text()[-3000:])
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{base}/lab/tree/00_tour.ipynb?token={token}")
                page.wait_for_function(
                    f"(() => {{ const s = ({NOTEBOOK_STATE})(); "
                    f"return s && s.code > 0 && s.kernel === 'idle'; }})",
                    timeout=120_000,
                )
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                page.wait_for_function(
                    f"(() => {{ const s = ({NOTEBOOK_STATE})(); "
                    f"return s && (s.errors.length > 0 || "
                    f"(s.ran === s.code && s.kernel === 'idle')); }})",
                    timeout=180_000, polling=500,
                )
                state = page.evaluate(f"({NOTEBOOK_STATE})()")
                assert state["errors"] == [], state["errors"]
                assert state["ran"] == state["code"], state
                page.locator(WIDGET).first.wait_for(state="visible", timeout=30_000)
                page.locator(PLOTLY).first.wait_for(state="visible", timeout=30_000)
                assert page.locator(".jp-OutputArea-output select").count() >= 1  # the Dropdown
                assert page.locator(f"{PLOTLY} svg.main-svg").count() >= 1  # drawn, not a stub
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.locator(PLOTLY).first.scroll_into_view_if_needed()
                page.screenshot(path=str(ARTIFACTS / "00_tour.png"), full_page=False)
            finally:
                browser.close()
    finally:
        stop(proc)
    assert proc.returncode is not None
