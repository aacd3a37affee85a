"""Memory per learner on the workshop hub: what one more learner costs the machine.

The measurement is the hub's end-to-end test (``tests/hub/test_hub_e2e.py``), run as it is: a
real JupyterHub on 127.0.0.1 with three learners who sign in through headless Chromium, run
lesson 00, record a 3-step run and open the dashboard tile. After each learner's session the
test reads, with psutil, the RSS, PSS and USS of that learner's processes by kind (Jupyter
server, kernel, dashboard) and writes them to ``test-artifacts/hub/memory-per-learner.json``;
this benchmark runs the test and summarises that file (median over the three learners). PSS
splits the pages learners share (torch's libraries) among them: it is what each extra learner
adds. It needs root (learners are system users) and Debian's chromium; without them the row
says why and measures nothing. No goal: the figure sizes a machine for a class.

The instructor's Class page (``dashboard/class_page.py``) with a class of 30 simulated
learners (:func:`class_page_costs`): a real JupyterHub with the class service, 30 hub users
(no system accounts, no servers) each posting one attempt of ``encode-multi-loss`` with their
own token (a pass, the band-aid's ``retain_graph=True`` or the bug's ``one forward per loss``,
with a 4-step graph-nodes series), and the instructor's dashboard (``streamlit run``, the
admin's token). Measured: the page's rerun time (AppTest in this process) when the class
changed (summary and series read, every table and chart drawn) and when it did not (a 304),
and the CPU of the dashboard's server and of the class service per idle instructor view
(simulated viewers, ``benchmarks/viewers.py``, on the open page). Needs root and
``make hub-setup``; without them the row says why.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "test-artifacts" / "hub" / "memory-per-learner.json"
KINDS = ("server", "kernel", "dashboard")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root: the hub's learners are system users"
    if shutil.which("chromium") is None and not Path("/usr/bin/chromium").exists():
        return "no chromium: learners sign in through the browser"
    return None


def run() -> dict:
    """Memory per learner (the hub e2e test) and the instructor's class page's costs."""
    result = memory_per_learner()
    result["class_page"] = class_page_costs()
    result["met"] = bool(result["met"] and result["class_page"]["met"])
    return result


CLASS_LEARNERS = 30
CLASS_VIEWERS = (1, 5)  # idle instructor views (an instructor has a tab or two; five bounds it)
IDLE_GOAL = 1.0  # % of one core per idle view, as for the dashboard's other pages
SERVICE = "mahiax-class"


def _call(method: str, url: str, token: str | None = None, body: object = None) -> tuple:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method=method, data=None if body is None else
                                     json.dumps(body).encode())
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _class_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root: the hub runs as root"
    if not (ROOT / "build" / "hub" / ".installed").exists():
        return "build/hub is missing (`make hub-setup`)"
    return None


def class_page_costs(window_s: float = 12.0, reruns: int = 5) -> dict:
    """The class page's rerun time and idle CPU per view with CLASS_LEARNERS simulated
    learners' attempts on a real hub (module docstring)."""
    import secrets
    import tempfile
    import time

    reason = _class_skip_reason()
    name = "class page, 30 simulated learners"
    if reason is not None:
        return {"name": name, "skipped": reason, "met": True}
    import psutil
    from streamlit.testing.v1 import AppTest

    from benchmarks.viewers import Viewers
    from dashboard.state import PAGE_KEY
    from tests.notebook_env import environ_set
    from tests.servers import free_port, start_dashboard, stop, wait_until_up

    access = f"access:services!service={SERVICE}"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        admin, admin_password = f"mxb{secrets.token_hex(3)}i", secrets.token_urlsafe(40)
        port, class_port = free_port(), free_port()
        env = {**os.environ, "MAHIAX_HUB_STATE_DIR": str(tmp / "state"),
               "MAHIAX_HUB_PASSWORD": secrets.token_urlsafe(12), "MAHIAX_HUB_ADMIN": admin,
               "MAHIAX_HUB_ADMIN_PASSWORD": admin_password, "MAHIAX_HUB_PORT": str(port),
               "MAHIAX_HUB_API_PORT": str(free_port()),
               "MAHIAX_HUB_PROXY_API_PORT": str(free_port()),
               "MAHIAX_HUB_CLASS_PORT": str(class_port)}
        log = tmp / "hub.log"
        with log.open("w") as out:
            hub = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f",
                                    str(ROOT / "hub" / "jupyterhub_config.py")], cwd=tmp,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        dashboard = None
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(f"{base}/hub/health", hub, 90, "JupyterHub",
                          lambda: log.read_text()[-3000:])
            status, body = _call("POST", f"{base}/hub/api/users/{admin}/tokens", body={
                "auth": {"username": admin, "password": admin_password}, "note": "bench"})
            assert status == 201, (status, body)
            teacher = body["token"]
            service = f"http://127.0.0.1:{class_port}/services/{SERVICE}/"
            kinds = [(True, []), (False, ["retain_graph=True"]),
                     (False, ["one forward per loss"])]
            tokens = []
            for i in range(CLASS_LEARNERS):  # simulated learners: hub users, no accounts
                learner = f"sim{i:02d}"
                _call("POST", f"{base}/hub/api/users/{learner}", teacher)
                status, body = _call("POST", f"{base}/hub/api/users/{learner}/tokens",
                                     teacher, {"scopes": [access], "note": "bench"})
                assert status == 201, (status, body)
                tokens.append(body["token"])

            def post(i: int) -> None:
                passed, reasons = kinds[i % len(kinds)]
                status, body = _call("POST", service + "api/attempts", tokens[i], {
                    "lesson": "04_retain_graph_and_encode", "exercise": "encode-multi-loss",
                    "passed": passed, "reasons": reasons, "message": "simulated",
                    "series": {"graph nodes": [[s, 211.0 + 18 * min(s, 1)] for s in range(4)]}})
                assert status == 201, (status, body)

            for i in range(CLASS_LEARNERS):
                post(i)
            service_proc = next(p for p in psutil.Process(hub.pid).children(recursive=True)
                                if "class_service.py" in " ".join(p.cmdline()))
            page_env = {"MAHIAX_CLASS_URL": service, "JUPYTERHUB_API_TOKEN": teacher,
                        "MAHIAX_DASHBOARD_AUTOSTART": "0", "MAHIAX_STORE": str(tmp / "m.sqlite")}

            # the page's rerun, in this process (AppTest): a changed class, then an unchanged
            with environ_set(page_env):
                at = AppTest.from_file(str(ROOT / "dashboard" / "streamlit_app.py"),
                                       default_timeout=120)
                at.session_state[PAGE_KEY] = "class"
                at.run()
                changed, unchanged = [], []
                for i in range(reruns):
                    post(i)  # one more attempt: the summary and the series change
                    time.sleep(1.1)  # past the one-second shared read
                    t0 = time.perf_counter()
                    at.run()
                    changed.append(time.perf_counter() - t0)
                    time.sleep(1.1)
                    t0 = time.perf_counter()
                    at.run()
                    unchanged.append(time.perf_counter() - t0)
                    assert not at.exception, [e.value for e in at.exception]
                assert at.table, "the class page drew no table"

            # idle instructor views of the served page
            dashboard, url = start_dashboard(tmp / "m.sqlite", tmp / "streamlit.log",
                                             **page_env)

            def cpu(proc) -> float:
                t = proc.cpu_times()
                return t.user + t.system

            def window() -> tuple[float, float]:
                procs = (psutil.Process(dashboard.pid), service_proc)
                c0, t0 = [cpu(p) for p in procs], time.monotonic()
                time.sleep(window_s)
                c1, t1 = [cpu(p) for p in procs], time.monotonic()
                return tuple(100 * (b - a) / (t1 - t0) for a, b in zip(c0, c1, strict=True))

            idle = window()
            views = {}
            for n in CLASS_VIEWERS:
                with Viewers(url, "class", n) as viewers:
                    viewers.wait_ready(120)
                    time.sleep(2.0)
                    server_pct, service_pct = window()
                    if any(v.not_found or v.exceptions for v in viewers.stats):
                        raise RuntimeError("a class page view got 'page not found' or an "
                                           "exception")
                views[n] = {"server_pct": server_pct, "service_pct": service_pct,
                            "per_view_pct": (server_pct - idle[0]) / n,
                            "service_per_view_pct": (service_pct - idle[1]) / n}
        finally:
            if dashboard is not None:
                stop(dashboard)
            stop(hub, timeout_s=60)
    worst = max(v["per_view_pct"] + v["service_per_view_pct"] for v in views.values())
    return {"name": name, "learners": CLASS_LEARNERS, "window_s": window_s,
            "changed_s": {"median": statistics.median(changed), "max": max(changed)},
            "unchanged_s": {"median": statistics.median(unchanged), "max": max(unchanged)},
            "idle": {"server_pct": idle[0], "service_pct": idle[1]}, "views": views,
            "met": bool(worst <= IDLE_GOAL)}


def memory_per_learner() -> dict:
    """Run the hub e2e test once and summarise the memory it measured per learner."""
    reason = _skip_reason()
    if reason is not None:
        return {"name": "memory per learner on the hub", "skipped": reason, "met": True}
    RESULT.unlink(missing_ok=True)
    test = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "-p", "no:cacheprovider",
         "tests/hub/test_hub_e2e.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    if test.returncode != 0 or not RESULT.exists():
        tail = (test.stdout + test.stderr)[-1500:]
        return {"name": "memory per learner on the hub", "skipped": f"the hub test did not "
                f"pass (exit {test.returncode}): {tail}", "met": False}
    learners = json.loads(RESULT.read_text())["learners"]
    kinds: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        rows = [m[kind] for m in learners.values() if kind in m]
        kinds[kind] = {key: statistics.median(r[key] for r in rows)
                       for key in ("rss_mib", "pss_mib", "uss_mib")}
    totals = {key: sum(k[key] for k in kinds.values()) for key in ("rss_mib", "pss_mib",
                                                                     "uss_mib")}
    return {"name": "memory per learner on the hub", "learners": len(learners),
            "kinds": kinds, "per_learner": totals, "met": True}


def markdown(r: dict) -> str:
    """The results as Markdown sections for benchmarks/results/latest.md."""
    parts = [memory_markdown(r)]
    if "class_page" in r:
        parts.append(class_page_markdown(r["class_page"]))
    return "\n\n".join(parts)


def class_page_markdown(c: dict) -> str:
    """The class page's row."""
    lines = ["### The instructor's class page", ""]
    if "skipped" in c:
        return "\n".join([*lines, f"Not measured: {c['skipped']}"])
    lines += [
        f"A real JupyterHub and class service with {c['learners']} **simulated learners** "
        "(hub users with their own tokens posting one attempt each of encode-multi-loss: a "
        "pass, `retain_graph=True` or `one forward per loss`, each with a 4-point "
        "graph-nodes series; no learner servers run). The page's rerun (AppTest, the whole "
        "script) after one more attempt (summary and series read, tables and chart drawn) "
        "and with the class unchanged (the service answers 304; the script still draws the page "
        "from the summary held: an open page's watch does not rerun it then):", "",
        "| rerun | median (s) | max (s) |", "|---|---|---|",
        f"| class changed | {c['changed_s']['median']:.3f} | {c['changed_s']['max']:.3f} |",
        f"| class unchanged | {c['unchanged_s']['median']:.3f} | "
        f"{c['unchanged_s']['max']:.3f} |", "",
        f"Idle instructor views (simulated viewers on the served page; CPU over "
        f"{c['window_s']:.0f} s in % of one core; with none: dashboard "
        f"{c['idle']['server_pct']:.2f} %, class service {c['idle']['service_pct']:.2f} %):",
        "", "| views | dashboard | class service | per view (both) | goal | met |",
        "|---|---|---|---|---|---|"]
    for n, v in c["views"].items():
        per = v["per_view_pct"] + v["service_per_view_pct"]
        lines.append(f"| {n} | {v['server_pct']:.2f} | {v['service_pct']:.2f} | {per:.3f} | "
                     f"<= {IDLE_GOAL:.0f} % | {'yes' if per <= IDLE_GOAL else 'NO'} |")
    return "\n".join(lines)


def memory_markdown(r: dict) -> str:
    """The memory row."""
    lines = ["### Memory per learner on the hub", ""]
    if "skipped" in r:
        return "\n".join([*lines, f"Not measured: {r['skipped']}"])
    lines += [
        f"`tests/hub/test_hub_e2e.py` run as it is: {r['learners']} learners sign in through "
        "headless Chromium, run lesson 00, record a 3-step run and open the dashboard tile; "
        "psutil reads each learner's processes afterwards (median over the learners, MiB). "
        "PSS counts shared pages once across learners: it is what one more learner adds.",
        "",
        "| process | RSS | PSS | USS |",
        "|---|---|---|---|",
    ]
    for kind, m in r["kinds"].items():
        lines.append(f"| {kind} | {m['rss_mib']:.0f} | {m['pss_mib']:.0f} | "
                     f"{m['uss_mib']:.0f} |")
    t = r["per_learner"]
    lines.append(f"| **one learner** | **{t['rss_mib']:.0f}** | **{t['pss_mib']:.0f}** | "
                 f"**{t['uss_mib']:.0f}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
