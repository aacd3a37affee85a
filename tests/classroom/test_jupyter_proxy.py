"""The dashboard inside JupyterLab, through jupyter-server-proxy
(``mahiax/classroom/jupyter_proxy.py``).

The unit tests check what the package declares to the proxy; the end-to-end test starts a
real JupyterLab on a free 127.0.0.1 port with a token, its store holding one recorded run,
and checks what a learner sees: the proxy lists the "MAHIA-X dashboard" launcher entry, the
lab page shows the tile, ``/mahiax-dashboard/`` serves Streamlit (its health endpoint through
the proxy) and headless Chromium renders the dashboard with that run in its run picker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mahiax.classroom import jupyter_proxy
from tests.notebook_env import ROOT, jupyter_env
from tests.servers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    open_launcher_tile,
    start_jupyterlab,
    stop,
    unexpected_tracebacks,
)

pytest.importorskip("jupyter_server_proxy")

ARTIFACTS = ROOT / "test-artifacts" / "jupyter-proxy"
RUN = "proxy-check"  # the run the e2e test records and expects the dashboard to list


def test_the_entry_point_is_declared_and_valid_for_jupyter_server_proxy():
    from jupyter_server_proxy.config import get_entrypoint_server_processes

    servers = {s.name: s for s in get_entrypoint_server_processes()}
    assert jupyter_proxy.NAME in servers, sorted(servers)
    server = servers[jupyter_proxy.NAME]
    assert server.launcher_entry.title == "MAHIA-X dashboard"
    assert server.launcher_entry.enabled
    assert Path(server.launcher_entry.icon_path).read_text().lstrip().startswith("<svg")
    assert server.absolute_url  # Streamlit is told the full path, so it must receive it
    assert server.timeout >= 30


def test_command_serves_the_dashboard_under_the_proxy_path_on_loopback_only():
    cmd = jupyter_proxy.dashboard_command(8765, "/user/alice/")
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(cmd[4]) == jupyter_proxy.dashboard_app()
    assert Path(cmd[4]).name == "streamlit_app.py" and Path(cmd[4]).is_file()
    opts = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert opts["--server.baseUrlPath"] == "/user/alice/mahiax-dashboard"
    assert opts["--server.port"] == "8765"
    assert opts["--server.address"] == "127.0.0.1"  # headless, no usage statistics: from
    # the dashboard's own config (test_streamlit_reads_the_dashboards_settings_...)
    assert jupyter_proxy.dashboard_command(1, "/")[cmd.index("--server.baseUrlPath") + 1] \
        == "/mahiax-dashboard"


def test_store_is_mahiax_store_when_set_else_runs_under_the_server_root(tmp_path):
    assert jupyter_proxy.store_for_server(tmp_path, {"MAHIAX_STORE": "/h/a/runs/x.sqlite"}) \
        == Path("/h/a/runs/x.sqlite")
    assert jupyter_proxy.store_for_server(tmp_path, {}) == tmp_path / "runs" / "mahiax.sqlite"


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.read().decode()


@pytest.mark.servers
@pytest.mark.timeout(420)
def test_launcher_tile_opens_the_dashboard_with_the_servers_own_store(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    env = {**os.environ, **jupyter_env(tmp_path / "jupyter"), "CUDA_VISIBLE_DEVICES": ""}
    store = Path(env["MAHIAX_STORE"])
    subprocess.run(
        [sys.executable, "-m", "mahiax", "train", "--preset", "tiny", "--steps", "3",
         "--run", RUN, "--store", str(store), "--no-progress"],
        env=env, check=True, capture_output=True, timeout=180,
    )
    root = tmp_path / "lab-root"
    root.mkdir()
    log = tmp_path / "jupyterlab.log"
    proc, base, token = start_jupyterlab(root, env, log)
    try:
        # the launcher entry, as the proxy hands it to JupyterLab's launcher
        _, body = _get(f"{base}/server-proxy/servers-info?token={token}")
        info = {s["name"]: s for s in json.loads(body)["server_processes"]}
        assert info[jupyter_proxy.NAME]["launcher_entry"]["title"] == "MAHIA-X dashboard"
        # Streamlit through the proxy: started on this first request, under the base path
        status, health = _get(f"{base}/{jupyter_proxy.NAME}/_stcore/health?token={token}")
        assert (status, health.strip()) == (200, "ok"), (status, health)

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{base}/lab?token={token}")
                # the tile opens the dashboard in a new browser tab
                dash = open_launcher_tile(page, "MAHIA-X dashboard", timeout_ms=120_000,
                                          screenshot=ARTIFACTS / "launcher.png")
                dash.wait_for_load_state()
                assert dash.url.rstrip("/").endswith(f"/{jupyter_proxy.NAME}"), dash.url
                dash.get_by_text("MAHIA-X Lab").first.wait_for(state="visible",
                                                               timeout=120_000)
                dash.get_by_text(RUN).first.wait_for(state="visible", timeout=60_000)
                # a chart drawn by plotly.js: the app's assets and websocket work under the
                # proxy's path, not only its first HTML page
                dash.locator(".js-plotly-plot svg.main-svg").first.wait_for(
                    state="visible", timeout=120_000)
                dash.screenshot(path=str(ARTIFACTS / "dashboard.png"))
                # another page of the app, its address under the proxy's path too
                dash.get_by_role("link", name="Expert load balance").first.click()
                dash.get_by_role("heading", name="Expert load balance").first.wait_for(
                    state="visible", timeout=60_000)
                assert f"/{jupyter_proxy.NAME}/" in dash.url, dash.url
                caption = dash.get_by_text("Run store:").first.inner_text()
                assert str(store) in caption, caption
            finally:
                browser.close()
    finally:
        stop(proc)
    assert not unexpected_tracebacks(log.read_text()), log.read_text()[-3000:]


def test_lesson_link_points_at_the_proxy_on_a_hub_and_in_a_local_jupyterlab(monkeypatch,
                                                                            tmp_path):
    from mahiax import lessons

    store = tmp_path / "runs" / "mahiax.sqlite"
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    on_hub = str(lessons.dashboard_link(store))
    assert "](/user/alice/mahiax-dashboard/)" in on_hub
    assert str(store) in on_hub and "make dashboard" not in on_hub  # no terminal on a hub
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX")
    local = str(lessons.dashboard_link(store))
    assert "](/mahiax-dashboard/)" in local
    assert f"MAHIAX_STORE={store} make dashboard" in local and "http://localhost:8501" in local


# What Streamlit itself resolves for the dashboard's entry point, from the folder it runs in
_RESOLVED = """
import json, sys
from streamlit import config
from streamlit.web import bootstrap
config._main_script_path = sys.argv[1]  # what `streamlit run <app>` sets before loading
bootstrap.load_config_options(flag_options={})
print(json.dumps({k: config.get_option(k) for k in sys.argv[2:]}))
"""


def _settings() -> dict[str, object]:
    import tomllib

    config = tomllib.loads((ROOT / "dashboard" / ".streamlit" / "config.toml").read_text())
    return {f"{section}.{key}": value
            for section, values in config.items() for key, value in values.items()}


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_streamlit_reads_the_dashboards_settings_wherever_it_starts(where, tmp_path):
    """``streamlit run`` reads ``.streamlit/config.toml`` beside the app (script-level
    config), so the Jupyter server's folder, a user's home or the checkout all give the
    dashboard the same settings: no file watcher, no full GC per run, no Deploy button."""
    settings = _settings()
    assert {"server.fileWatcherType", "runner.postScriptGC", "client.toolbarMode"} <= \
        settings.keys()
    cwd = ROOT if where == "checkout" else tmp_path
    done = subprocess.run(
        [sys.executable, "-c", _RESOLVED, str(jupyter_proxy.dashboard_app()), *settings],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == settings


def test_the_proxy_command_leaves_the_settings_to_the_dashboards_config():
    cmd = jupyter_proxy.dashboard_command(8765, "/user/alice/")
    flags = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert flags == {"--server.address": "127.0.0.1", "--server.port": "8765",
                     "--server.baseUrlPath": "/user/alice/mahiax-dashboard"}


# A JupyterLab log as CI saw it: the proxy relayed a Streamlit message to a tab that had closed.
RELAY_TO_CLOSED_TAB = """\
[I 2026-11-26 19:01:21.837 ServerApp] Websocket connection established to ws://localhost:45003/mahiax-dashboard/_stcore/stream
[E 2026-11-26 19:01:29.030 ServerApp] Uncaught exception
    Traceback (most recent call last):
      File "/x/tornado/websocket.py", line 674, in _run_callback
        result = callback(*args, **kwargs)
                 ^^^^^^^^^^^^^^^^^^^^^^^^^
      File "/x/jupyter_server_proxy/handlers.py", line 663, in message_cb
        self.write_message(message, binary=isinstance(message, bytes))
      File "/x/tornado/websocket.py", line 364, in write_message
        raise WebSocketClosedError()
    tornado.websocket.WebSocketClosedError
[I 2026-11-26 19:01:30.001 ServerApp] Stopping...
"""
# The same relay failing for another reason, and a failure of the app behind the proxy.
RELAY_OTHER_ERROR = RELAY_TO_CLOSED_TAB.replace("tornado.websocket.WebSocketClosedError",
                                                "TypeError: bad message")
APP_ERROR = """\
[E 2026-11-26 19:01:29.030 ServerApp] Uncaught exception
    Traceback (most recent call last):
      File "/x/mahiax/store.py", line 10, in runs
        raise sqlite3.OperationalError("no such table: runs")
    sqlite3.OperationalError: no such table: runs
"""


def test_server_log_check_lets_only_the_proxys_relay_to_a_closed_tab_pass():
    assert unexpected_tracebacks(RELAY_TO_CLOSED_TAB) == []
    assert unexpected_tracebacks("[I ...] nothing went wrong\n") == []
    assert len(unexpected_tracebacks(RELAY_OTHER_ERROR)) == 1
    (app,) = unexpected_tracebacks(RELAY_TO_CLOSED_TAB + APP_ERROR)
    assert app.rstrip().endswith("no such table: runs")
