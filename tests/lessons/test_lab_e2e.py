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
import shutil
from pathlib import Path

import pytest

from tests.notebook_env import ROOT, jupyter_env, notebook_path
from tests.servers import CHROMIUM, CHROMIUM_ARGS, run_all_cells, start_jupyterlab, stop

pytestmark = pytest.mark.servers  # a real JupyterLab driven by Chromium (docs/tests.md)

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
    proc, base, token = start_jupyterlab(root, env, tmp_path / "jupyterlab.log",
                                         "--LabApp.expose_app_in_browser=True")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{base}/lab/tree/00_tour.ipynb?token={token}")
                run_all_cells(page, ready_timeout_ms=120_000, run_timeout_ms=180_000,
                              what="00_tour")
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
