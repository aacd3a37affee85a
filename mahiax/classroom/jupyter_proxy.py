"""The dashboard inside JupyterLab: a ``jupyter-server-proxy`` server named ``mahiax-dashboard``.

``pyproject.toml`` declares :func:`setup_dashboard` under the ``jupyter_serverproxy_servers``
entry point, so any Jupyter server with ``jupyter-server-proxy`` and this package installed
(``make lab``, a learner's server on a JupyterHub, Binder) gets

- a "MAHIA-X dashboard" tile in the JupyterLab launcher, and
- the Streamlit dashboard at ``<server base URL>mahiax-dashboard/``, started on the first
  request by the proxy (as the server's own user) and stopped with the server.

Streamlit is told the full public path (``--server.baseUrlPath``) and the proxy forwards the
full path (``absolute_url``), because the page loads its scripts and its websocket
(``_stcore/stream``) from addresses under that path. It listens on 127.0.0.1 only: the proxy,
which checks the Jupyter login, is the one way in.

The dashboard reads the run store of the server's user: ``MAHIAX_STORE`` when the server
has it (a hub sets it for the learner's server and kernels alike), otherwise
``runs/mahiax.sqlite`` under the server's working directory, which is where a kernel started
there writes by default (:func:`mahiax.store.paths.resolve_store_path`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mahiax.store.paths import DEFAULT_DIR, ENV_VAR, FILE_NAME

NAME = "mahiax-dashboard"  # the URL segment: <server base URL>mahiax-dashboard/
TITLE = "MAHIA-X dashboard"  # the launcher tile's label
ICON = Path(__file__).resolve().parents[1] / "icons" / "dashboard.svg"  # mahiax/icons
STARTUP_TIMEOUT_S = 60.0  # a cold Streamlit (torch, pandas imports) on a busy 2-core machine


def dashboard_app() -> Path:
    """``dashboard/streamlit_app.py``: beside the package in a checkout (or an editable
    install), and in ``site-packages`` when the package is installed from a wheel."""
    app = Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py"
    if not app.is_file():
        raise FileNotFoundError(
            f"the dashboard app is not at {app}; install MAHIA-X Lab from its repository "
            "(pip install <checkout>) so that dashboard/ is installed with mahiax/")
    return app


def store_for_server(cwd: str | os.PathLike | None = None,
                     env: dict[str, str] | None = None) -> Path:
    """The store the dashboard of a Jupyter server reads: ``$MAHIAX_STORE`` when set,
    otherwise ``<cwd>/runs/mahiax.sqlite`` (``cwd`` defaults to the server's own)."""
    env = os.environ if env is None else env
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    return Path(cwd if cwd is not None else os.getcwd()) / DEFAULT_DIR / FILE_NAME


def dashboard_command(port: int, base_url: str) -> list[str]:
    """The command the proxy runs: Streamlit on ``127.0.0.1:port`` under
    ``<base_url>mahiax-dashboard``.

    Every other setting (headless, no usage statistics, no Deploy button, no per-session
    file watcher, no full garbage collection after each run) comes from
    ``dashboard/.streamlit/config.toml``, which Streamlit reads beside the app it runs,
    whatever folder the Jupyter server runs in."""
    base_path = f"{base_url.rstrip('/')}/{NAME}"  # e.g. /user/alice/mahiax-dashboard
    return [
        sys.executable, "-m", "streamlit", "run", str(dashboard_app()),
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.baseUrlPath", base_path,
    ]


def dashboard_environment() -> dict[str, str]:
    """The variables the proxy adds to the server's environment for Streamlit: the store,
    made explicit so that the dashboard and the lessons' kernels agree on one file."""
    return {ENV_VAR: str(store_for_server())}


def setup_dashboard() -> dict[str, Any]:
    """The ``jupyter_serverproxy_servers`` entry point: how to start and show the dashboard.

    Keys as jupyter-server-proxy's ``ServerProcess`` reads them; ``command`` and
    ``environment`` are callables so that the port, base URL and store are those of the
    server that runs them.
    """
    return {
        "command": dashboard_command,
        "environment": dashboard_environment,
        "absolute_url": True,
        "timeout": STARTUP_TIMEOUT_S,
        "new_browser_tab": True,
        "launcher_entry": {
            "enabled": True,
            "title": TITLE,
            "icon_path": str(ICON),
            "category": "Notebook",
        },
    }
