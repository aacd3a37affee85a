"""Dashboard figures (issues 5 and 14): a refresh's server time on a 100,000-step run, what
viewers cost the server and a training run (1, 10 and 30 simulated viewers of a finished
and of a live run), and the delay from a step being written to it being on screen with 30
viewers.

Refresh: a run with the keys, vectors and snapshots a real run logs (27 scalars and 2 vectors
a step, 3 snapshots every 25 steps; values synthetic, written through the real RunWriter) is
opened with Streamlit's AppTest on each page. The first render reads the whole run; each
later one is what a live refresh does: read the steps written since (10 here), downsample,
rebuild every chart. A rerun executes the whole script (sidebar too), so it bounds the
fragment's own cost from above.

Latency: the real server (``streamlit run dashboard``) in headless Chromium, a child process
logging one step every 0.1 s through RunWriter (it flushes every 0.5 s), and a
MutationObserver in the page noting when each "last step N" appears. For every step written,
the delay is the time until the page first shows that step or a later one, while 29
simulated viewers watch the same page. Needs Debian's chromium and the playwright package;
skipped (and said so) without them.

Viewers: Streamlit websocket clients (``benchmarks/viewers.py``), which ask for a page and
keep the fragment timers the server sends as the browser's frontend does, but draw nothing:
thirty Chromium pages would need more cores than the server they measure.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mahiax import metric_keys as mk
from mahiax.config import MahiaConfig
from mahiax.store import RunWriter
from tests.servers import CHROMIUM, CHROMIUM_ARGS, free_port, start_dashboard, stop, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "streamlit_app.py"
REFRESH_GOAL_S = 1.0
LATENCY_GOAL_S = 2.0  # judged on the median delay over every step written
WARM_S = 10.0  # steps written later than this after the first are the steady state
PAGES = ("training", "experts", "memory-nodes", "loss-weights", "memory")
TASKS = ("keywords", "mixed", "tabular")
EXPERTS = 8


def _step_metrics(step: int, rng: np.random.Generator) -> dict[str, float]:
    """One step's scalars, with the keys and cadence of the real probes."""
    loss = {t: float(1.0 / (1 + step / 5000) + 0.05 * rng.random()) for t in TASKS}
    row = {mk.LOSS: sum(loss.values()), **{mk.task_loss(t): v for t, v in loss.items()},
           **{mk.task_weight(t): float(1 + 0.1 * rng.normal()) for t in TASKS},
           **{mk.dwa_ratio(t): float(1 + 0.01 * rng.normal()) for t in TASKS},
           mk.AMP_SCALE: 1.0, mk.AMP_SKIPPED: 0.0, mk.AMP_SKIPPED_TOTAL: 0.0,
           mk.MEM_RSS: 5e8 + 1e3 * step, mk.MOE_AUX_LOSS: float(1 + 0.01 * rng.random()),
           mk.MOE_CV: float(0.2 * rng.random()), mk.MOE_DEAD: 0.0, mk.MOE_DROPPED: 0.0,
           mk.MOE_ENTROPY: float(0.99 - 0.01 * rng.random()), mk.MOE_MAX_OVER_MEAN: 1.2,
           mk.MOE_Z_LOSS: float(rng.random()), mk.GRAD_NORM: float(rng.gamma(2.0)),
           mk.LR: 1e-3, mk.SAMPLES_PER_S: 800.0, mk.STEP_S: 0.04}
    if step % 250 == 0:
        row.update({mk.MEM_TENSOR_BYTES: 2e6, mk.MEM_PEAK: 2.2e6})
    return row


def _log_step(writer: RunWriter, step: int, rng: np.random.Generator) -> None:
    writer.log(_step_metrics(step, rng), step)
    writer.log_vector(mk.TOKENS_PER_EXPERT, rng.multinomial(1024, [1 / EXPERTS] * EXPERTS),
                      step)
    writer.log_vector(mk.FABRIC_IMPORTANCE, rng.dirichlet(np.ones(4)), step)
    if step % 25 == 0:
        writer.log_tensor(mk.MEMORY_NODES, rng.normal(size=(16, 64)).astype(np.float32), step)
        writer.log_tensor(mk.MEMORY_ADJACENCY, rng.random((16, 16)).astype(np.float32), step)
        writer.log_tensor(mk.TINY_SLOTS, rng.normal(size=(8, 64)).astype(np.float32), step)


def write_long_run(path: Path, steps: int, name: str = "long") -> RunWriter:
    """A run of ``steps`` steps written through RunWriter; returned open (status running)."""
    rng = np.random.default_rng(0)
    writer = RunWriter(name, MahiaConfig().to_dict(), path=path, device="cpu",
                       flush_rows=50_000)
    for step in range(steps):
        _log_step(writer, step, rng)
    writer.flush()
    return writer


def refresh_times(steps: int = 100_000, reruns: int = 5) -> dict:
    """Per page: the first render and the median of ``reruns`` live refreshes, in seconds."""
    os.environ["MAHIAX_DASHBOARD_AUTOSTART"] = "0"
    from streamlit.testing.v1 import AppTest

    from dashboard.data import READ_GAP_S

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mahiax.sqlite"
        t0 = time.perf_counter()
        writer = write_long_run(path, steps)
        write_s = time.perf_counter() - t0
        os.environ["MAHIAX_STORE"] = str(path)
        rng = np.random.default_rng(1)
        step = steps
        try:
            for page in PAGES:
                at = AppTest.from_file(str(APP), default_timeout=600)
                at.session_state["dashboard_page"] = page
                t0 = time.perf_counter()
                at.run()
                first = time.perf_counter() - t0
                if at.exception:
                    raise RuntimeError(f"{page}: {at.exception[0].value}")
                times = []
                for _ in range(reruns):
                    for _ in range(10):  # ten new steps between refreshes
                        _log_step(writer, step, rng)
                        step += 1
                    writer.flush()
                    time.sleep(READ_GAP_S)  # a live run is read at most this often
                    t0 = time.perf_counter()
                    at.run()
                    times.append(time.perf_counter() - t0)
                    if at.exception:
                        raise RuntimeError(f"{page}: {at.exception[0].value}")
                shown = "\n".join(str(e.value) for e in at.success)
                if f"last step {step - 1}" not in shown:
                    raise RuntimeError(f"{page}: the refresh did not show step {step - 1}")
                out[page] = {"first_s": first, "refresh_median_s": statistics.median(times),
                             "refresh_min_s": min(times), "refresh_max_s": max(times)}
        finally:
            writer.close()
    worst = max(p["refresh_median_s"] for p in out.values())
    return {"steps": steps, "write_s": write_s, "pages": out, "worst_refresh_median_s": worst,
            "met": worst < REFRESH_GOAL_S}


# -- write-to-screen latency ----------------------------------------------------------------

_WRITER_CHILD = """
import json, sys, time
import numpy as np
from benchmarks.bench_dashboard import _log_step
from mahiax.config import MahiaConfig
from mahiax.store import RunWriter
from tests.servers import CHROMIUM, CHROMIUM_ARGS, free_port, stop, wait_until_up
path, steps, every, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
writer = RunWriter("live", MahiaConfig().to_dict(), path=path, device="cpu")
written = []
start = time.time()
for step in range(steps):
    time.sleep(max(0.0, start + step * every - time.time()))
    _log_step(writer, step, rng)  # handed to telemetry now; committed by the next flush
    written.append(time.time())
    writer.heartbeat()
writer.finish("finished")
writer.close()
json.dump(written, open(out, "w"))
"""

# records (Date.now() in ms, N) each time the page's "last step N" changes
_OBSERVER_JS = """
() => {
  window.__seen = [];
  let last = -1;
  const look = () => {
    const main = document.querySelector('[data-testid="stMain"]');
    const m = main && main.innerText.match(/last step (\\d+)/);
    if (m && Number(m[1]) !== last) { last = Number(m[1]); window.__seen.push([Date.now(), last]); }
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true,
                                                     characterData: true});
  look();
}
"""


def delays(written: list[float], seen: list[tuple[float, int]]) -> list[float]:
    """For every step written, seconds until the screen first showed it or a later step;
    steps written after the last screen update are left out (never shown in the window)."""
    out = []
    j = 0
    seen = sorted(seen)
    for step, at in enumerate(written):
        while j < len(seen) and (seen[j][0] < at or seen[j][1] < step):
            j += 1
        if j == len(seen):
            break
        out.append(seen[j][0] - at)
    return out


def screen_latency(seconds: float = 30.0, every_s: float = 0.1, refresh_s: float = 2.0,
                   extra_viewers: int = 0) -> dict:
    """Write-to-screen delays over ``seconds`` of a run logging a step every ``every_s``,
    seen in Chromium while ``extra_viewers`` simulated viewers watch the same page."""
    from benchmarks.viewers import Viewers

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "the playwright package is not installed", "met": True}
    if not CHROMIUM.exists():
        return {"skipped": f"no chromium at {CHROMIUM} (make browser installs it)", "met": True}
    steps = int(seconds / every_s)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "mahiax.sqlite"  # empty: the run appears once the child writes
        env = {**os.environ, "MAHIAX_STORE": str(store), "MAHIAX_DASHBOARD_AUTOSTART": "0",
               "OMP_NUM_THREADS": "1"}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(  # outside the checkout, as the JupyterLab tile starts it
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard"),
             "--server.port", str(port), "--server.address", "127.0.0.1"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        child = None
        try:
            wait_until_up(f"{url}/_stcore/health", server, 60, "streamlit")
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True,
                    args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    page.goto(url)
                    page.get_by_role("heading", name="Training", exact=True).wait_for(
                        timeout=60_000)
                    page.evaluate(_OBSERVER_JS)
                    others = Viewers(url, "training", extra_viewers).start()
                    try:
                        others.wait_ready(120)
                        written_file = Path(tmp) / "written.json"
                        child = subprocess.Popen(
                            [sys.executable, "-c", _WRITER_CHILD, str(store), str(steps),
                             str(every_s), str(written_file)], cwd=ROOT, env=env)
                        child.wait(timeout=seconds + 120)
                        page.wait_for_timeout(1000 * (refresh_s + 1.5))
                        seen = [(ms / 1000, n) for ms, n in page.evaluate("window.__seen")]
                    finally:
                        others.close()
                finally:
                    browser.close()
            written = json.loads(written_file.read_text())
        finally:
            if child is not None:
                stop(child)
            stop(server)
    d = delays(written, seen)
    if not d:
        raise RuntimeError("the page never showed a step of the live run")
    q = np.quantile(d, [0.5, 0.95])
    # steady state: steps written once the run has been on screen for WARM_S (the first
    # seconds include the run appearing: a full rerun and every chart drawn cold)
    warm = [x for x, at in zip(d, written, strict=False) if at - written[0] >= WARM_S]
    return {"steps_written": len(written), "steps_measured": len(d),
            "screen_updates": len(seen), "refresh_s": refresh_s, "write_every_s": every_s,
            "median_s": float(q[0]), "p95_s": float(q[1]), "max_s": float(max(d)),
            "steady_median_s": float(np.median(warm)) if warm else float("nan"),
            "steady_max_s": float(max(warm)) if warm else float("nan"),
            "viewers": 1 + extra_viewers, "met": float(q[0]) < LATENCY_GOAL_S}


# -- what viewers cost the server, and the training run --------------------------------------

VIEWER_COUNTS = (1, 10, 30)
IDLE_GOAL = 1.0  # % of one core per viewer of a finished run
SLOWDOWN_GOAL = 10.0  # % fewer training steps per second with 30 viewers than with none


def _cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _window(server: subprocess.Popen, seconds: float, steps=None) -> dict:
    """Server CPU (% of one core), this process's CPU (the simulated viewers) and, with
    ``steps`` (a function returning the run's last step), training steps per second."""
    c0, me0, t0 = _cpu_s(server.pid), time.process_time(), time.monotonic()
    s0 = steps() if steps else None
    time.sleep(seconds)
    c1, me1, t1 = _cpu_s(server.pid), time.process_time(), time.monotonic()
    out = {"server_pct": 100 * (c1 - c0) / (t1 - t0),
           "viewers_process_pct": 100 * (me1 - me0) / (t1 - t0)}
    if steps:
        out["steps_per_s"] = (steps() - s0) / (t1 - t0)
    return out


def _with_viewers(server: subprocess.Popen, url: str, page: str, n: int, seconds: float,
                  steps=None) -> dict:
    """Measure a window while ``n`` simulated viewers watch ``page``."""
    from benchmarks.viewers import Viewers

    if n == 0:
        return _window(server, seconds, steps)
    with Viewers(url, page, n) as viewers:
        viewers.wait_ready(180)
        time.sleep(2.0)  # the first renders are over; the steady state is measured
        out = _window(server, seconds, steps)
        stats = viewers.stats
    if any(s.not_found or s.exceptions for s in stats):
        raise RuntimeError(f"{page}: a viewer got 'page not found' or an exception")
    out["runs_per_viewer_per_min"] = 60 * statistics.mean(s.runs_finished for s in stats) \
        / (seconds + 2.0)
    return out


CHROMIUM_VIEWERS = 6  # real browser pages on the finished run (the measurement)


def _with_chromium(server: subprocess.Popen, url: str, page: str, n: int,
                   seconds: float) -> dict:
    """Measure a window while ``n`` pages of one headless Chromium show ``page``: the
    frontend as users run it (its timers, its reruns), not a simulation."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            tabs = [browser.new_page() for _ in range(n)]
            for tab in tabs:
                tab.goto(f"{url}/{page}")
            for tab in tabs:  # drawn: the page's first chart is on screen
                tab.wait_for_selector(".js-plotly-plot", timeout=120_000)
            time.sleep(5.0)  # the first renders are over; the steady state is measured
            return _window(server, seconds)
        finally:
            browser.close()


def viewer_costs(window_s: float = 12.0) -> dict:
    """Server CPU per viewer of a finished run and of a live run at 1, 10 and 30 viewers, and
    the training run's steps per second with 0 to 30 viewers (see ``benchmarks/viewers.py``
    for how viewers are simulated)."""
    from mahiax.store import RunReader

    out: dict = {"window_s": window_s, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        # a finished 2,000-step run on Expert load balance (the page the issue measured)
        store = Path(tmp) / "finished.sqlite"
        writer = write_long_run(store, 2000)
        writer.finish("finished")
        writer.close()
        server, url = start_dashboard(store, Path(tmp) / "finished.log")
        try:
            idle = _window(server, window_s)
            rows = {}
            for n in VIEWER_COUNTS:
                r = _with_viewers(server, url, "experts", n, window_s)
                r["per_viewer_pct"] = (r["server_pct"] - idle["server_pct"]) / n
                rows[n] = r
            chromium = None
            if CHROMIUM.exists():
                chromium = _with_chromium(server, url, "experts", CHROMIUM_VIEWERS, window_s)
                chromium["viewers"] = CHROMIUM_VIEWERS
                chromium["per_viewer_pct"] = \
                    (chromium["server_pct"] - idle["server_pct"]) / CHROMIUM_VIEWERS
        finally:
            stop(server)
        out["finished"] = {"idle_server_pct": idle["server_pct"], "viewers": rows,
                           "chromium": chromium}

        # a live run: the tiny preset training (one thread) while viewers watch Training
        store = Path(tmp) / "live.sqlite"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MAHIAX_DASHBOARD_AUTOSTART": "0"}
        with open(Path(tmp) / "train.log", "wb") as log:
            trainer = subprocess.Popen(
                [sys.executable, "-m", "mahiax", "train", "--preset", "tiny", "--steps",
                 "1000000", "--run", "live", "--store", str(store), "--no-progress"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        server = None
        try:
            reader = RunReader(store)
            deadline = time.monotonic() + 120
            while not (store.exists() and "live" in reader.run_names()):
                if trainer.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the live run did not start: "
                                       + (Path(tmp) / "train.log").read_text()[-2000:])
                time.sleep(0.5)

            def last_step() -> int:
                last = reader.run("live")["last_step"]
                return 0 if last is None else int(last)

            server, url = start_dashboard(store, Path(tmp) / "live.log")
            time.sleep(3.0)  # the trainer's first steps are slower (warm-up)
            rows = {0: _with_viewers(server, url, "training", 0, window_s, last_step)}
            for n in VIEWER_COUNTS:
                rows[n] = _with_viewers(server, url, "training", n, window_s, last_step)
            again = _with_viewers(server, url, "training", 0, window_s, last_step)
            reader.close()
        finally:
            if server is not None:
                stop(server)
            stop(trainer)
        base = (rows[0]["steps_per_s"] + again["steps_per_s"]) / 2
        for n in VIEWER_COUNTS:
            rows[n]["per_viewer_pct"] = (rows[n]["server_pct"] - rows[0]["server_pct"]) / n
            rows[n]["slowdown_pct"] = 100 * (1 - rows[n]["steps_per_s"] / base)
        out["live"] = {"viewers": rows, "no_viewers_after": again, "steps_per_s_base": base}
    worst_idle = max(r["per_viewer_pct"] for r in [
        *out["finished"]["viewers"].values(), *filter(None, [out["finished"]["chromium"]])])
    slowdown = out["live"]["viewers"][max(VIEWER_COUNTS)]["slowdown_pct"]
    out["met"] = bool(worst_idle <= IDLE_GOAL and slowdown <= SLOWDOWN_GOAL)
    return out


def run() -> dict:
    """The dashboard's figures: refresh time, what viewers cost, write-to-screen delay with
    30 viewers."""
    refresh = refresh_times()
    viewers = viewer_costs()
    latency = screen_latency(extra_viewers=max(VIEWER_COUNTS) - 1)
    return {"refresh": refresh, "viewers": viewers, "latency": latency,
            "met": bool(refresh["met"] and viewers["met"] and latency["met"])}


def markdown(r: dict) -> str:
    """The results as a Markdown section for benchmarks/results/latest.md."""
    f = r["refresh"]
    lines = ["### Dashboard", "",
             f"Refresh on a {f['steps']:,}-step run (27 scalars, 2 vectors a step; 3 snapshots "
             "every 25 steps); a refresh reads the 10 new steps, downsamples to 2,000 points "
             "per chart and redraws the page (AppTest, whole script). The first page opened "
             "reads the whole run; the server keeps it for every session, so the other "
             "pages' first opens only draw.", "",
             "| page | first open (s) | refresh, median (min-max) (s) | goal | met |",
             "|---|---|---|---|---|"]
    for page, p in f["pages"].items():
        ok = "yes" if p["refresh_median_s"] < REFRESH_GOAL_S else "NO"
        lines.append(f"| {page} | {p['first_s']:.2f} | {p['refresh_median_s']:.3f} "
                     f"({p['refresh_min_s']:.3f}-{p['refresh_max_s']:.3f}) | < 1 s | {ok} |")
    lines += ["", *_viewer_lines(r["viewers"])]
    lat = r["latency"]
    lines.append("")
    if "skipped" in lat:
        lines.append(f"Write-to-screen latency: skipped ({lat['skipped']}).")
    else:
        lines += [
            f"Write-to-screen delay with {lat.get('viewers', 1)} viewers: the real server, "
            "one viewer in headless Chromium (where the delay is measured), the others "
            "simulated as above, all on the Training page; a child process logs "
            f"a step every {lat['write_every_s']} s (the writer commits every 0.5 s); the page "
            f"refreshes every {lat['refresh_s']:.0f} s (the default). For each step, the time "
            "until the page first shows it or a later one.", "",
            "| write-to-screen delay | median (s) | p95 (s) | max (s) | steady state "
            f"(after {WARM_S:.0f} s): median / max (s) | goal | met |",
            "|---|---|---|---|---|---|---|",
            f"| {lat['steps_measured']} steps | {lat['median_s']:.2f} | {lat['p95_s']:.2f} | "
            f"{lat['max_s']:.2f} | {lat['steady_median_s']:.2f} / {lat['steady_max_s']:.2f} | "
            f"median < 2 s | {'yes' if lat['met'] else 'NO'} |",
            "",
            "The worst delays come in the first seconds, while the new run appears (a full "
            "rerun, every chart drawn cold); after that a step waits at most one refresh "
            "interval plus the writer's 0.5 s commit and the redraw.",
        ]
    return "\n".join(lines)


def _viewer_lines(v: dict) -> list[str]:
    """The viewer-cost tables."""
    fin, live = v["finished"], v["live"]
    lines = [
        "What viewers cost. Viewers are simulated (`benchmarks/viewers.py`): Streamlit "
        "websocket clients in one process that ask for the page by its address and keep "
        "the fragment timers the server sends, as the browser's frontend does, but draw "
        "nothing and report no cached messages. Server CPU is the Streamlit process's user "
        f"+ system time over {v['window_s']:.0f} s, in % of one core ({v['cores']} cores "
        "here); per viewer is (with n viewers - with none) / n.", "",
        f"Finished 2,000-step run, Expert load balance page (the server alone: "
        f"{fin['idle_server_pct']:.2f} %):", "",
        "| viewers | server CPU (% of a core) | per viewer | goal | met | page runs per "
        "viewer per minute | viewers' process CPU |",
        "|---|---|---|---|---|---|---|"]
    for n, r in fin["viewers"].items():
        ok = "yes" if r["per_viewer_pct"] <= IDLE_GOAL else "NO"
        lines.append(f"| {n} | {r['server_pct']:.2f} | {r['per_viewer_pct']:.3f} | "
                     f"<= {IDLE_GOAL:.0f} % | {ok} | {r['runs_per_viewer_per_min']:.1f} | "
                     f"{r['viewers_process_pct']:.1f} % |")
    chromium = fin.get("chromium")
    if chromium is not None:
        ok = "yes" if chromium["per_viewer_pct"] <= IDLE_GOAL else "NO"
        lines += [
            "", f"The same page in {chromium['viewers']} pages of one headless Chromium (the "
            "real frontend), the server started outside the checkout as in every row here "
            "(the JupyterLab tile and the hub start it there; its settings are the "
            "script-level `dashboard/.streamlit/config.toml`):", "",
            "| Chromium viewers | server CPU (% of a core) | per viewer | goal | met |",
            "|---|---|---|---|---|",
            f"| {chromium['viewers']} | {chromium['server_pct']:.2f} | "
            f"{chromium['per_viewer_pct']:.3f} | <= {IDLE_GOAL:.0f} % | {ok} |"]
    rows = live["viewers"]
    lines += [
        "", "Live run: `mahiax train --preset tiny` (one thread, `OMP_NUM_THREADS=1`) while "
        "the viewers watch the Training page (refresh every 2 s). Training speed without "
        f"viewers is the mean of a window before and after ({live['steps_per_s_base']:.1f} "
        "steps/s).", "",
        "| viewers | server CPU (% of a core) | per viewer | page runs per viewer per "
        "minute | training steps/s | slower than with none | goal | met |",
        "|---|---|---|---|---|---|---|---|"]
    for n, r in rows.items():
        if n == 0:
            lines.append(f"| 0 | {r['server_pct']:.2f} | – | – | {r['steps_per_s']:.1f} | – "
                         "| | |")
            continue
        goal = f"<= {SLOWDOWN_GOAL:.0f} %" if n == max(VIEWER_COUNTS) else ""
        ok = ("yes" if r["slowdown_pct"] <= SLOWDOWN_GOAL else "NO") if goal else ""
        lines.append(f"| {n} | {r['server_pct']:.2f} | {r['per_viewer_pct']:.2f} | "
                     f"{r['runs_per_viewer_per_min']:.1f} | {r['steps_per_s']:.1f} | "
                     f"{r['slowdown_pct']:.1f} % | {goal} | {ok} |")
    lines += ["", "A live page runs about 30 times a minute (a refresh every 2 s), a finished "
              "one about 20 (its watch every 3 s: no chart is drawn again). Training slowdown "
              "is judged on a quiet machine: other load on the cores moves steps/s more than "
              "the viewers do."]
    return lines


if __name__ == "__main__":
    result = run()
    print(json.dumps(result, indent=2))
    print(markdown(result))
