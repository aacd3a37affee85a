"""End to end: a workshop on a real JupyterHub (``hub/jupyterhub_config.py``, ``make hub``).

The test creates three learner accounts (``hub/learners.py``: ``useradd``, group
``mahiax-learners``, homes 0700) and removes them afterwards, whatever happens. It starts
JupyterHub with configurable-http-proxy on free 127.0.0.1 ports, its state in a root-only
temp folder, and in headless Chromium each learner

1. signs in on the hub's login page with the workshop password (their server starts as
   their own system user, lessons copied into ``~/lessons``),
2. opens ``lessons/00_tour.ipynb`` in JupyterLab and runs every cell,
3. in that kernel records a 3-step run named after them (into ``$MAHIAX_STORE``, their
   ``~/runs``) and tries to list the other learners' homes and read the hub's cookie secret:
   each attempt must raise ``PermissionError``,
4. clicks the "MAHIA-X dashboard" tile and sees their own run, and no one else's.

A wrong workshop password, the right one for an account outside the learners' group
(``root``), and the right one from another browser for a name a learner already claimed are
refused. The memory (RSS) of each learner's server, kernel and dashboard is
written to ``test-artifacts/hub/memory-per-learner.json`` (docs/workshop.md quotes it).

Needs root (it creates system users and runs the hub as root) and Debian's chromium;
``make test`` installs the rest (``make hub-setup``).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hub.hub_env import learners, skip_unless_learners_can_enter_the_checkout
from tests.notebook_env import ROOT
from tests.servers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    open_launcher_tile,
    run_all_cells,
    stop,
    unexpected_tracebacks,
    wait_until_up,
)

pytestmark = pytest.mark.servers  # a real JupyterHub driven by Chromium (docs/tests.md)

if os.geteuid() != 0:
    pytest.skip("the hub test needs root: it creates system users and runs the hub as root",
                allow_module_level=True)
if not CHROMIUM.exists():
    pytest.skip(f"the hub test needs Debian's chromium at {CHROMIUM}", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("jupyterhub")

RUNTIME = ROOT / "build" / "hub"
ARTIFACTS = ROOT / "test-artifacts" / "hub"
TILE = "MAHIA-X dashboard"



skip_unless_learners_can_enter_the_checkout()

# runs code in the open notebook's kernel; returns its reply status and printed text
EXECUTE = """async (code) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const out = [];
  const future = kernel.requestExecute({code, stop_on_error: true});
  future.onIOPub = (msg) => {
    const t = msg.header.msg_type;
    if (t === 'stream') out.push(msg.content.text);
    if (t === 'error') out.push(msg.content.ename + ': ' + msg.content.evalue);
  };
  const reply = await future.done;
  return {status: reply.content.status, out: out.join('')};
}"""

# what each learner's kernel does after the lesson: a run of their own, then try to read
# the others' homes and the hub's cookie secret
KERNEL_CODE = """
import json, os
from mahiax.config import tiny
from mahiax.recording import record_training
from mahiax.store.paths import resolve_store_path
record_training(tiny().replace(max_steps=3), {run!r}, steps=3)
tried = {{}}
for path in {paths!r}:
    try:
        os.listdir(path) if os.path.isdir(path) else open(path).read()
        tried[path] = "read"
    except PermissionError:
        tried[path] = "PermissionError"
    except OSError as e:
        tried[path] = type(e).__name__
print(json.dumps({{"store": str(resolve_store_path()), "tried": tried,
                   "user": os.environ.get("USER"), "uid": os.getuid()}}))
"""


@pytest.fixture
def learner_names():
    """Three learner accounts, removed afterwards even when the test fails."""
    names = [f"mxl{secrets.token_hex(3)}{i}" for i in range(3)]
    group_was_there = _group_exists(learners.GROUP)
    try:
        learners.add(names)
        yield names
    finally:
        for _ in range(40):  # their servers stop with the hub; userdel waits for that
            try:
                learners.remove(names)
                break
            except SystemExit:
                time.sleep(0.5)
        left = [n for n in names if _exists(n)]
        if not group_was_there and _group_exists(learners.GROUP):  # the group add() made
            subprocess.run(["groupdel", learners.GROUP], check=False)
        assert not left, f"learner accounts left behind: {left}"
        assert group_was_there or not _group_exists(learners.GROUP), "group left behind"


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture
def hub(tmp_path, learner_names):
    """A running hub: (base URL, workshop password, state folder). Stopped afterwards."""
    if not (RUNTIME / ".installed").exists():
        pytest.fail("build/hub is missing: `make hub-setup` (part of `make test`) installs "
                    "configurable-http-proxy and the learners' interpreter")
    state = tmp_path / "hub-state"
    password = secrets.token_urlsafe(12)
    port = free_port()
    env = {
        **os.environ,
        "MAHIAX_HUB_STATE_DIR": str(state),
        "MAHIAX_HUB_PASSWORD": password,
        "MAHIAX_HUB_ADMIN_PASSWORD": secrets.token_urlsafe(40),
        "MAHIAX_HUB_PORT": str(port),
        "MAHIAX_HUB_API_PORT": str(free_port()),
        "MAHIAX_HUB_PROXY_API_PORT": str(free_port()),
    }
    log = tmp_path / "hub.log"
    cmd = [str(Path(sys.executable).parent / "jupyterhub"), "-f",
           str(ROOT / "hub" / "jupyterhub_config.py"),
           # lets the test read the notebook's state from the page, as test_lab_e2e does
           "--Spawner.args=--LabApp.expose_app_in_browser=True"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/hub/health", proc, 90, "JupyterHub",
                      lambda: log.read_text()[-4000:])
        yield base, password, state, log
    finally:
        stop(proc, timeout_s=60)  # stops every learner's server (cleanup_servers)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "hub.log").write_text(log.read_text())


def _sign_in(page, base: str, name: str, password: str) -> None:
    page.goto(f"{base}/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")


def _signed_in(ctx) -> bool:
    """Whether the browser holds the hub's login cookie."""
    return any(c["name"] == "jupyterhub-hub-login" for c in ctx.cookies())


def _learner_processes(uid: int) -> dict[str, dict[str, float]]:
    """Memory (RSS, PSS, USS in MiB) and CPU seconds of the learner's server, kernel and
    dashboard processes."""
    import psutil

    kinds = {"jupyterhub.singleuser": "server", "ipykernel_launcher": "kernel",
             "streamlit": "dashboard"}
    found: dict[str, dict[str, float]] = {}
    for p in psutil.process_iter(["uids", "cmdline", "memory_info", "cpu_times"]):
        if p.info["uids"] is None or p.info["uids"].real != uid:
            continue
        cmd = " ".join(p.info["cmdline"] or [])
        for needle, kind in kinds.items():
            if needle in cmd:
                cpu = p.info["cpu_times"]
                slot = found.setdefault(kind, {"rss_mib": 0.0, "pss_mib": 0.0, "uss_mib": 0.0,
                                               "cpu_s": 0.0, "processes": 0})
                slot["rss_mib"] += p.info["memory_info"].rss / 2**20
                try:  # PSS shares the pages several learners map (torch's libraries) fairly
                    full = p.memory_full_info()
                    slot["pss_mib"] += full.pss / 2**20
                    slot["uss_mib"] += full.uss / 2**20
                except psutil.Error:
                    pass
                slot["cpu_s"] += cpu.user + cpu.system
                slot["processes"] += 1
    return found


def _learner_session(browser, base: str, name: str, password: str, others: list[str],
                     state: Path, shot: str) -> dict:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = ctx.new_page()
        _sign_in(page, base, name, password)
        page.wait_for_url(f"**/user/{name}/lab**", timeout=150_000)
        assert _signed_in(ctx)

        # the lesson, every cell, in the learner's own JupyterLab
        page.goto(f"{base}/user/{name}/lab/tree/lessons/00_tour.ipynb")
        run_all_cells(page, ready_timeout_ms=120_000, run_timeout_ms=180_000, what=name)
        # the lesson's link to the dashboard is the learner's own proxy address
        link = page.get_by_role("link", name="Open the MAHIA-X dashboard").first
        assert link.get_attribute("href").endswith(f"/user/{name}/mahiax-dashboard/"), \
            link.get_attribute("href")

        # a run of their own, then the others' homes and the hub's secret
        homes = [pwd.getpwnam(o).pw_dir for o in others]
        code = KERNEL_CODE.format(run=f"{name}-run",
                                  paths=[*homes, str(state / "jupyterhub_cookie_secret")])
        reply = page.evaluate(EXECUTE, code)
        assert reply["status"] == "ok", (name, reply["out"])
        kernel = json.loads(reply["out"].strip().splitlines()[-1])

        # the launcher's tile opens the dashboard in a new tab, on the learner's own store
        page.evaluate("() => { window.jupyterapp.commands.execute('launcher:create'); }")
        dash = open_launcher_tile(page, TILE, timeout_ms=60_000)
        assert f"/user/{name}/mahiax-dashboard" in dash.url, dash.url
        dash.get_by_text(f"{name}-run").first.wait_for(state="visible", timeout=150_000)
        dash.locator(".js-plotly-plot svg.main-svg").first.wait_for(state="visible",
                                                                   timeout=120_000)
        dashboard_text = dash.locator("body").inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        dash.screenshot(path=str(ARTIFACTS / f"dashboard-{shot}.png"))
        return {"kernel": kernel, "dashboard_text": dashboard_text}
    except Exception:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(ctx.pages):  # what the learner saw when it failed
            p.screenshot(path=str(ARTIFACTS / f"failed-{shot}-{i}.png"))
        raise
    finally:
        ctx.close()


@pytest.mark.timeout(600)
def test_three_learners_sign_in_run_a_lesson_and_see_only_their_own_runs(hub, learner_names):
    base, password, state, log = hub
    results, memory = {}, {}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            # refused: a wrong workshop password, and the right one for a non-learner account
            ctx = browser.new_context()
            page = ctx.new_page()
            _sign_in(page, base, learner_names[0], password + "x")
            page.get_by_text("Invalid username or password").wait_for(timeout=30_000)
            assert "/hub/login" in page.url
            assert not _signed_in(ctx)
            _sign_in(page, base, "root", password)
            page.wait_for_load_state()
            assert "/user/root" not in page.url
            assert not _signed_in(ctx), page.content()[:2000]
            ctx.close()

            for i, name in enumerate(learner_names):
                others = [o for o in learner_names if o != name]
                results[name] = _learner_session(browser, base, name, password, others, state,
                                                 shot=f"learner{i + 1}")
                uid = pwd.getpwnam(name).pw_uid
                memory[name] = _learner_processes(uid)

            # another browser with the workshop password cannot take a claimed name
            ctx = browser.new_context()
            page = ctx.new_page()
            _sign_in(page, base, learner_names[0], password)
            page.get_by_text("Invalid username or password").wait_for(timeout=30_000)
            assert not _signed_in(ctx)
            ctx.close()
        finally:
            browser.close()

    for name in learner_names:
        home = Path(pwd.getpwnam(name).pw_dir)
        kernel, text = results[name]["kernel"], results[name]["dashboard_text"]
        assert kernel["user"] == name and kernel["uid"] == pwd.getpwnam(name).pw_uid
        assert kernel["store"] == str(home / "runs" / "mahiax.sqlite")
        assert set(kernel["tried"].values()) == {"PermissionError"}, kernel["tried"]
        assert f"{name}-run" in text
        for other in learner_names:
            if other != name:
                assert f"{other}-run" not in text, (name, other)
        assert (home / "lessons" / "00_tour.ipynb").exists()
        assert oct(home.stat().st_mode & 0o777) == "0o700"
        # the server, the kernel and the dashboard all run as the learner
        assert {"server", "kernel", "dashboard"} <= set(memory[name]), (name, memory[name])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "memory-per-learner.json").write_text(json.dumps({
        "measured": "RSS, PSS and USS (MiB) and CPU seconds since start of each learner's "
                    "processes, by psutil, after the learner ran lessons/00_tour.ipynb, recorded a "
                    "3-step tiny run and opened the dashboard tile",
        "learners": memory,
    }, indent=2))
    assert not unexpected_tracebacks(log.read_text()), log.read_text()[-4000:]
