"""End to end: the real dashboard (``streamlit run dashboard``) in a real headless Chromium.

A store holds a finished tiny run, and a child process trains a ``live`` run (``--balance
bias``) into the same store during the test. The test opens every page through the sidebar
navigation, checks each draws Plotly charts without a Streamlit exception (the Memory page:
the memory categories stacked, labelled CPU, read every 10th step of the live run as the
command line recorded it), checks the Training page's "last step N" grows
while the live run trains and the Expert load balance page's MaxVio and selection-bias charts
gain steps, opens the Bug lab on two recorded variants of ``retain-graph`` (their overlays
and memory by category), and saves a screenshot of every page to
``test-artifacts/dashboard/``. A run picked in the sidebar's "Compare with" is drawn beside
the picked run, both named in the legend. Every page opens at its own address, and the
toolbar has no Deploy button.

Skipped where ``/usr/bin/chromium`` or the ``playwright`` package is missing (Debian's
chromium is used; ``playwright install`` is never run).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import CHROMIUM, CHROMIUM_ARGS, free_port, stop, wait_until_up

pytestmark = pytest.mark.servers  # the real dashboard in Chromium: one at a time (docs/tests.md)

if not CHROMIUM.exists():
    pytest.skip(f"end-to-end dashboard test needs Debian's chromium at {CHROMIUM}",
                allow_module_level=True)
pytest.importorskip("playwright.sync_api",
                    reason="end-to-end dashboard test needs the playwright Python package")
pytest.importorskip("streamlit")
pytest.importorskip("plotly")

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from dashboard import data  # noqa: E402
from mahiax.config import tiny  # noqa: E402
from mahiax.recording import record_bug, record_training  # noqa: E402
from mahiax.store import RunReader  # noqa: E402
from mahiax.telemetry.cadence import Cadence  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
# url path -> page title, in menu order (dashboard/navigation.py PAGES)
PAGES = {
    "training": "Training",
    "experts": "Expert load balance",
    "memory-nodes": "Memory-node evolution",
    "loss-weights": "Loss weights",
    "memory": "Memory",
}
CHART = '[data-testid="stPlotlyChart"], .js-plotly-plot'
EXCEPTION = '[data-testid="stException"]'
LAST_STEP = re.compile(r"last step (\d+)")
LIVE_MAX_VIO_WINDOW = 30  # the live run's --max-vio-window: the Experts page must say it
expect.set_options(timeout=20_000)  # pages re-render every 2 s while a run is live


def _child_env(store: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MAHIAX_STORE=str(store), MAHIAX_DASHBOARD_AUTOSTART="0", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("e2e_store") / "mahiax.sqlite"
    record_training(tiny().replace(max_steps=40), "done", 40, store=path,
                    cadence=Cadence(snapshot_every=10, memory_every=10))
    for variant in ("summary", "fixed"):  # for the Bug lab: retain_graph's growth vs the fix
        record_bug("retain-graph", variant, f"retain-graph-{variant}", 8, store=path)
    return path


@pytest.fixture(scope="module")
def live_run(store, server, tmp_path_factory):
    """``python -m mahiax train ... --balance bias --max-vio-window 30 --run live`` writing
    into ``store``; stopped by the test once its live checks are done (10,000 steps: it must
    still train then, and 2000 tiny steps take only about half a minute). Started only once
    the dashboard is up."""
    log = open(tmp_path_factory.mktemp("e2e_logs") / "live.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "mahiax", "train", "--preset", "tiny", "--steps", "10000",
         "--balance", "bias", "--max-vio-window", str(LIVE_MAX_VIO_WINDOW), "--run", "live",
         "--store", str(store), "--no-progress"],
        cwd=ROOT, env=_child_env(store), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"live run exited early ({proc.returncode})"
            runs = data.list_runs(str(store))
            live = runs[runs["name"] == "live"]
            if len(live) and live["last_step"].notna().all():
                break
            time.sleep(0.3)
        else:
            pytest.fail("the live run stored no step within 30 s")
        yield proc
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """The dashboard on 127.0.0.1:<free port>; yields its base URL."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("e2e_logs") / "streamlit.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=_child_env(store), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/_stcore/health", proc, 30, "streamlit")
        yield url
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Playwright's sync API allows one at a time)."""
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def page(server, browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


def _nav_link(pg, title: str):
    nav = pg.locator('[data-testid="stSidebarNav"]')
    return nav.get_by_role("link").filter(
        has=pg.get_by_text(title, exact=True))


def _open(pg, title: str, timeout_ms: float = 20_000) -> None:
    """Click the page's sidebar link and wait for its title and its charts."""
    link = _nav_link(pg, title).first
    if link.get_attribute("aria-current") != "page":  # already there: a click may not land
        link.click()
    expect(pg.get_by_role("heading", name=title, exact=True)).to_be_visible()
    expect(pg.locator(CHART).first).to_be_visible(timeout=timeout_ms)


def _last_step(pg) -> int:
    text = pg.locator('[data-testid="stMain"]').inner_text()
    m = LAST_STEP.search(text)
    assert m, f"no 'last step N' on the page:\n{text[:500]}"
    return int(m.group(1))


# (title, trace names, and the last x of each trace) of every drawn chart whose title
# starts with the argument, read from the Plotly graph divs' own data
# (Streamlit's theme wraps a title in <b> tags: the text is compared without tags; the
# x values are read from _fullData, where Plotly has decoded the base64 arrays it was sent)
_TRACES_JS = """(prefix) => Array.from(document.querySelectorAll('.js-plotly-plot'))
    .filter(el => ((el.layout && el.layout.title && el.layout.title.text) || '')
                  .replace(/<[^>]*>/g, '').startsWith(prefix))
    .map(el => el._fullData.map(d => [d.name, d.x && d.x.length
                                                ? Number(d.x[d.x.length - 1]) : null]))"""


# the steps (x) of each stacked trace of the newest chart titled like the argument
_STACKED_JS = """(prefix) => Array.from(document.querySelectorAll('.js-plotly-plot'))
    .filter(el => ((el.layout && el.layout.title && el.layout.title.text) || '')
                  .replace(/<[^>]*>/g, '').startsWith(prefix))
    .slice(-1)
    .map(el => el._fullData.filter(d => d.stackgroup)
                           .map(d => Array.from(d.x, Number)))"""


def _last_x(pg, prefix: str) -> dict[str, float]:
    """trace name -> its newest step, of the chart titled ``prefix``... (while a live page
    redraws, the browser may briefly hold the chart twice, as drawn before and after the
    newest steps: the newest figure is kept)"""
    found = pg.evaluate(_TRACES_JS, prefix)
    assert found, f"no chart titled {prefix!r}"
    assert all(x is not None for chart in found for _, x in chart), found
    return dict(max(found, key=lambda chart: [x for _, x in chart]))


def _charts_gain_steps(pg, prefixes: tuple[str, ...], timeout_s: float = 20) -> None:
    """Each chart titled by one of ``prefixes`` has traces, and every trace's newest step
    grows while the live run trains (a hang guard only bounds the wait)."""
    for prefix in prefixes:
        # no scrolling: a live page redraws its charts, and an element scrolled to can be
        # replaced in between (seen under load); the check reads the page's data, not pixels
        expect(pg.locator(".js-plotly-plot .gtitle").filter(has_text=prefix).first).to_be_visible()
    first = {p: _last_x(pg, p) for p in prefixes}
    deadline = time.monotonic() + timeout_s
    while True:
        now = {p: _last_x(pg, p) for p in prefixes}
        if all(now[p].keys() == first[p].keys() and
               all(now[p][k] > first[p][k] for k in first[p]) for p in prefixes):
            return
        assert time.monotonic() < deadline, f"charts did not gain steps: {first} -> {now}"
        pg.wait_for_timeout(500)


def _select_run(pg, name: str) -> None:
    box = pg.locator('[data-testid="stSidebar"]').get_by_role("combobox", name="Run")
    box.click()
    pg.get_by_role("option").filter(has_text=re.compile(rf"^{re.escape(name)} ·")).click()
    expect(box).to_have_value(re.compile(rf"^{re.escape(name)} ·"))


def test_dashboard_pages_and_live_refresh(server, page, live_run, store):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto(server)
    expect(page.get_by_role("heading", name="Training", exact=True)).to_be_visible(
        timeout=30_000)

    # the live run first (2000 tiny steps take about half a minute here): Training's
    # "last step N" grows while it trains
    _select_run(page, "live")
    _open(page, "Training")
    expect(page.get_by_text(re.compile(r"Running \(live\)"))).to_be_visible()
    first = latest = _last_step(page)
    deadline = time.monotonic() + 15
    while latest <= first and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        latest = _last_step(page)
    assert latest > first, f"last step stayed at {first} for 15 s while the run trained"
    assert page.locator(EXCEPTION).count() == 0, "live Training: Streamlit exception shown"
    page.screenshot(path=str(ARTIFACTS / "live-training.png"))

    # the run balances with the bias: MaxVio and each expert's bias gain steps, live
    _open(page, "Expert load balance")
    _charts_gain_steps(page, ("MaxVio = max load / mean load", "Selection bias per expert"))
    bias = _last_x(page, "Selection bias per expert")
    assert list(bias) == [f"expert {i}" for i in range(4)], "one line per expert of tiny"
    window = Cadence.of_run(RunReader(store).run("live")).max_vio_window  # the run's own
    assert window == LIVE_MAX_VIO_WINDOW
    assert list(_last_x(page, "MaxVio = max load / mean load")) == \
        ["this step's batch", f"global: last {window} steps"]
    assert page.locator(EXCEPTION).count() == 0, "live Expert load balance: exception shown"
    page.screenshot(path=str(ARTIFACTS / "live-experts.png"), full_page=True)
    # the CLI-started run's memory by category: stacked, one reading every
    # categories_every steps, none missing (the default cadence, as the command recorded it)
    _open(page, "Memory")
    expect(page.locator(".js-plotly-plot .gtitle").filter(
        has_text="Memory by category (CPU)")).to_be_visible()
    stacks = [steps for chart in page.evaluate(_STACKED_JS, "Memory by category")
              for steps in chart]
    every = Cadence().categories_every
    assert stacks and all(len(x) >= 3 for x in stacks), stacks
    for x in stacks:  # each category's trace: every 10th step from 0, no gap
        assert x == list(range(0, every * len(x), every)), x[:20]
    expect(page.get_by_text(f"read every {every} steps", exact=False)).to_be_visible()
    # stop training now: on a small machine (2 cores) the trainer, the server and Chromium
    # redrawing every 2 s together starve the browser, and clicks then time out
    stop(live_run)

    # every page of the finished run draws charts, no exception; screenshot each
    _select_run(page, "done")
    for key, title in PAGES.items():
        _open(page, title)
        page.wait_for_timeout(500)  # let the remaining charts lay out before the shot
        assert page.locator(EXCEPTION).count() == 0, f"{title}: Streamlit exception shown"
        assert page.locator(CHART).count() >= 1, f"{title}: no Plotly chart"
        if key == "memory":  # the categories stacked, on the device the run measured
            expect(page.get_by_text("CPU memory (device cpu)", exact=False)).to_be_visible()
            expect(page.locator(".js-plotly-plot .gtitle").filter(
                has_text="Memory by category (CPU)")).to_be_visible()
            legend = page.locator(".js-plotly-plot .legendtext")
            for name in ("parameters", "gradients", "optimizer state", "saved for backward"):
                expect(legend.filter(has_text=name).first).to_be_visible()
            assert page.locator(".js-plotly-plot .fills path").count() >= 4, \
                "stacked areas: one filled path per category"
        page.screenshot(path=str(ARTIFACTS / f"done-{key}.png"))

    # the Bug lab opens on the recorded entry: measured verdict, errors, overlaid curves
    _open(page, "Bug lab", timeout_ms=60_000)
    # the verdict is measured meanwhile, in a process of its own (seconds)
    expect(page.get_by_text("Verdict on the summary's fix: hides-the-error")).to_be_visible(
        timeout=120_000)
    expect(page.get_by_text(re.compile(r"^RuntimeError at step 4 ·"))).to_be_visible()
    expect(page.get_by_text("Autograd graph size per step")).to_be_visible()
    assert page.locator(EXCEPTION).count() == 0, "Bug lab: Streamlit exception shown"
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "bug-lab.png"), full_page=True)
    # below: each variant's memory by category, the summary's saved-for-backward growing
    heading = page.get_by_text(re.compile(r"^Memory by category \(CPU\), each variant"))
    heading.scroll_into_view_if_needed()
    expect(heading).to_be_visible()
    for title in ("summary: the summary's fix", "fixed: the right fix"):
        expect(page.locator(".js-plotly-plot .gtitle").filter(has_text=title)).to_be_visible()
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "bug-lab-memory.png"))


def test_a_run_picked_in_compare_with_is_drawn_beside_the_picked_run(server, browser):
    """The sidebar's "Compare with": picking a second run draws both on the Training page's
    loss chart, each named in the legend, in colours of their own (the 40-step ``done`` and
    the 8-step ``retain-graph-fixed`` on one step axis); the Loss weights page names both
    in the same colours."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    try:
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(f"{server}/training")
        expect(pg.get_by_role("heading", name="Training", exact=True)).to_be_visible()
        _select_run(pg, "done")
        sidebar = pg.locator('[data-testid="stSidebar"]')
        sidebar.locator('[data-testid="stMultiSelect"]').filter(
            has_text="Compare with").locator("input").click()
        pg.get_by_role("option", name="retain-graph-fixed", exact=True).click()
        pg.keyboard.press("Escape")
        loss = pg.locator(".js-plotly-plot").filter(
            has=pg.locator(".gtitle", has_text="Loss (total)"))
        legend = loss.locator(".legendtext")
        expect(legend).to_have_text(["done", "retain-graph-fixed"])
        found = pg.evaluate(_TRACES_JS, "Loss (total)")
        assert found and dict(found[-1]) == {"done": 39, "retain-graph-fixed": 7}, found
        colours = pg.evaluate(_COLOURS_JS, "Loss (total)")[-1]
        assert len(set(colours.values())) == 2, colours
        expect(pg.get_by_text("Compared:", exact=False)).to_be_visible()
        assert pg.locator(EXCEPTION).count() == 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "compare-training.png"))
        _open(pg, "Loss weights")  # the selection holds on every page
        per_task = pg.locator(".js-plotly-plot").filter(
            has=pg.locator(".gtitle", has_text="Loss per task"))
        expect(per_task.locator(".legendtext").filter(has_text="retain-graph-fixed · ").first
               ).to_be_visible()
        tasks = pg.evaluate(_COLOURS_JS, "Loss per task")[-1]
        assert {c for name, c in tasks.items() if name.startswith("done · ")} == \
            {colours["done"]}, "the same run, the same colour, on another page"
        assert pg.locator(EXCEPTION).count() == 0
    finally:
        context.close()


# trace name -> line colour of each chart titled like the argument (from Plotly's own data)
_COLOURS_JS = """(prefix) => Array.from(document.querySelectorAll('.js-plotly-plot'))
    .filter(el => ((el.layout && el.layout.title && el.layout.title.text) || '')
                  .replace(/<[^>]*>/g, '').startsWith(prefix))
    .map(el => Object.fromEntries(el._fullData.map(d => [d.name, d.line.color])))"""


def test_every_page_opens_at_its_own_address_and_no_deploy_button(server, browser):
    """A bookmark or a link to any page opens that page, the first one (``/training``)
    included; the root opens the first page at its address; the toolbar has no Deploy."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        for key, title in {**PAGES, "bug-lab": "Bug lab", "my-attempts": "My attempts"}.items():
            pg.goto(f"{server}/{key}")
            expect(pg.get_by_role("heading", name=title, exact=True)).to_be_visible()
            pg.wait_for_timeout(1000)  # a "Page not found" dialog would be up by now
            assert pg.get_by_text("Page not found").count() == 0, f"/{key}: page not found"
            assert pg.url.split("?")[0].rstrip("/").endswith(f"/{key}"), pg.url
            assert pg.locator(EXCEPTION).count() == 0, f"/{key}: Streamlit exception"
        pg.goto(server)
        expect(pg.get_by_role("heading", name="Training", exact=True)).to_be_visible()
        expect(pg).to_have_url(re.compile(r"/training$"))
        nav = _nav_link(pg, "Training").first
        expect(nav).to_have_attribute("aria-current", "page")
        pg.wait_for_timeout(1000)
        assert pg.get_by_text("Page not found").count() == 0
        assert pg.locator('[data-testid="stAppDeployButton"]').count() == 0
        assert pg.get_by_role("button", name="Deploy").count() == 0
        assert pg.get_by_text("Deploy", exact=True).count() == 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "toolbar-no-deploy.png"))
    finally:
        context.close()


def test_make_dashboard_opens_a_live_demo_run(tmp_path, browser):
    """``make dashboard`` with nothing else: an empty store gets a demo run, trained in its
    own process, and the Training page shows it live (its last step grows)."""
    store = tmp_path / "fresh" / "mahiax.sqlite"
    port = free_port()
    env = {**os.environ, "MAHIAX_STORE": str(store), "PYTHONUNBUFFERED": "1"}
    env.pop("MAHIAX_DASHBOARD_AUTOSTART", None)
    log = open(tmp_path / "make-dashboard.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        ["make", "-s", "dashboard",
         f"STREAMLIT_ARGS=--server.port {port} --server.address 127.0.0.1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/_stcore/health", server, 60, "make dashboard")
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        try:
            pg = context.new_page()
            pg.set_default_timeout(60_000)
            pg.goto(url)
            expect(pg.get_by_text(re.compile(r"Running \(live\) · demo · last step \d+"))
                   ).to_be_visible(timeout=90_000)
            first = latest = _last_step(pg)
            deadline = time.monotonic() + 30
            while latest <= first and time.monotonic() < deadline:
                pg.wait_for_timeout(500)
                latest = _last_step(pg)
            assert latest > first, f"the demo's last step stayed at {first} for 30 s"
            expect(pg.locator(CHART).first).to_be_visible()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / "make-dashboard-demo.png"))
        finally:
            context.close()
    finally:
        from dashboard import runs

        if server.poll() is None:
            os.killpg(server.pid, 15)  # make and the streamlit it started
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait(timeout=10)
        runs.stop_run(store, runs.DEMO_NAME)  # the demo is its own process: stop it too
        assert runs.active_runs(store) == {}
        log.close()
