"""The live dashboard: every page renders for every kind of store without a traceback, the
demo autostarts in its own process, and the pure transforms behave."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
pytest.importorskip("plotly")

from streamlit.testing.v1 import AppTest  # noqa: E402

from dashboard import bug_lab, data, processing, runs, verdict_jobs, verdict_runs  # noqa: E402
from dashboard.navigation import BUG_LAB, MY_ATTEMPTS, PAGES  # noqa: E402
from dashboard.state import COMPARE_KEY, PAGE_KEY, RUN_KEY  # noqa: E402
from mahiax.store.attempts import Attempt, current_learner, record_attempt  # noqa: E402
from mahiax.units import MIB  # noqa: E402
from tests.dashboard import dashboard_fixtures as fx  # noqa: E402

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py")
ALL_PAGES = list(PAGES)


@pytest.fixture(autouse=True)
def _no_autostart(monkeypatch):
    monkeypatch.setenv(runs.AUTOSTART_ENV, "0")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    return {
        "finished": fx.finished_store(root),
        "failed": fx.failed_store(root),
        "interrupted": fx.interrupted_store(root),
        "corrupt": fx.corrupt_store(root),
        "empty": root / "empty" / "mahiax.sqlite",
        "catalog": fx.catalog_store(root),
        "balance": fx.balance_store(root),
    }


def render(monkeypatch, store: Path, page: str, run: str | None = None) -> AppTest:
    """Run the app once on ``page`` against ``store``; fail on any uncaught exception."""
    monkeypatch.setenv("MAHIAX_STORE", str(store))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state[PAGE_KEY] = page
    if run is not None:
        at.session_state[RUN_KEY] = run
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


@pytest.mark.parametrize("page", ALL_PAGES)
def test_empty_store(monkeypatch, stores, page):
    at = render(monkeypatch, stores["empty"], page)
    assert "store is empty" in texts(at.info)
    assert not at.error


def test_start_form_offers_the_config_options(monkeypatch, stores):
    from mahiax.bugs import VARIANTS
    from mahiax.config import PRECISIONS, WEIGHTINGS

    at = render(monkeypatch, stores["finished"], "training")
    boxes = {b.label: list(b.options) for b in at.sidebar.selectbox}
    assert boxes["weighting"] == list(WEIGHTINGS) and boxes["precision"] == list(PRECISIONS)
    assert boxes["variant"] == list(VARIANTS)


@pytest.mark.parametrize("page", ALL_PAGES)
def test_finished_run(monkeypatch, stores, page):
    at = render(monkeypatch, stores["finished"], page)
    assert "Finished" in texts(at.success)
    assert not at.error
    assert at.get("plotly_chart"), "every page of a full run draws charts"


def chart_titled(at: AppTest, prefix: str):
    """The one rendered Plotly chart whose title starts with ``prefix``."""
    found = [c for c in at.get("plotly_chart")
             if json.loads(c.proto.spec)["layout"]["title"]["text"].startswith(prefix)]
    assert len(found) == 1, [json.loads(c.proto.spec)["layout"]["title"]["text"]
                             for c in at.get("plotly_chart")]
    return found[0]


def stack_groups(chart) -> dict[str, str | None]:
    """trace name -> its stack group (None: a line drawn over the stack)."""
    return {t["name"]: t.get("stackgroup") for t in json.loads(chart.proto.spec)["data"]}


def test_memory_page_stacks_the_categories_of_a_cpu_run(monkeypatch, stores):
    at = render(monkeypatch, stores["finished"], "memory")
    assert "**CPU** memory (device `cpu`)" in texts(at.info)
    chart = chart_titled(at, "Memory by category (CPU)")
    groups = stack_groups(chart)
    stacked = ["parameters", "gradients", "optimizer state", "saved for backward"]
    assert [n for n, g in groups.items() if g] == stacked, groups
    assert groups["total"] is None and groups["peak"] is None, "totals drawn over the stack"
    series = chart_series(chart)
    params = series["parameters"]
    assert len(params) == 12 and params.min() > 0 and np.all(params == params[0]), \
        "the tiny model's parameters: the same bytes at every step"
    assert np.all(series["saved for backward"][1:] > 0), "each step's graph saves activations"
    # the CPU scan (memory_every=5) reads the rest at steps 0, 5, 10 and the last, 11: the
    # total is the stack plus what the scan found, so it is never below the stack there
    total = series["total"]
    assert len(total) == 4
    stack = sum(series[n] for n in stacked)[[0, 5, 10, 11]]
    assert np.all(total >= stack)
    assert "other: read only every 5 steps and at step 11" in texts(at.caption)
    labels = [m.label for m in at.metric]
    assert labels[:4] == stacked and "total" in labels, labels
    values = {m.label: m.value for m in at.metric}
    assert all(v.endswith(" MiB") for v in values.values()), values
    assert float(values["parameters"].split()[0]) == pytest.approx(params[0], rel=5e-3), \
        "the metric and the chart read the same figure, in the same unit"
    assert json.loads(chart.proto.spec)["layout"]["yaxis"]["title"]["text"] == "MiB"
    assert "Mixed precision is off for this run (fp32)" in texts(at.caption), \
        "no AMP charts for an fp32 run"


def test_memory_page_labels_a_gpu_run_and_stacks_other(monkeypatch, tmp_path):
    path = fx.gpu_categories_store(tmp_path)
    at = render(monkeypatch, path, "memory")
    assert "**GPU** memory (device `cuda:0`)" in texts(at.info)
    chart = chart_titled(at, "Memory by category (GPU)")
    groups = stack_groups(chart)
    assert [n for n, g in groups.items() if g][-1] == "other", "read every step: stacked"
    assert {"total", "peak", "reserved"} <= {n for n, g in groups.items() if g is None}
    assert not any("read only" in str(c.value) for c in at.caption)


def test_memory_page_says_where_the_spike_snapshot_is(monkeypatch, tmp_path):
    path = fx.gpu_categories_store(tmp_path)
    at = render(monkeypatch, path, "memory")
    warning = texts(at.warning)
    snapshot = tmp_path / "memory_snapshots" / "gpu" / f"spike-step{fx.SPIKE_STEP}.pickle"
    assert f"Memory spike at step {fx.SPIKE_STEP}" in warning and "rose 300.0 MiB" in warning
    assert f"`{snapshot}`" in warning and "https://pytorch.org/memory_viz" in warning
    assert "not on this machine" not in warning
    shapes = json.loads(chart_titled(at, "Memory by category").proto.spec)["layout"]["shapes"]
    assert [s["x0"] for s in shapes] == [fx.SPIKE_STEP], "a line marks the spike's step"


def test_memory_page_of_a_run_without_categories_draws_its_totals(monkeypatch, stores):
    at = render(monkeypatch, stores["failed"], "memory")  # logged mem/rss only
    assert "recorded before categories were logged" in texts(at.info)
    assert chart_titled(at, "Process RSS")


def test_memory_nodes_page_shows_tiny_memory_slots(monkeypatch, stores):
    at = render(monkeypatch, stores["finished"], "memory-nodes")
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"]
              for c in at.get("plotly_chart")]
    assert any(t.startswith("TinyMemory: cosine similarity of its") for t in titles), titles


def plotly_spec(chart) -> dict:
    return json.loads(chart.proto.spec)


def test_experts_page_draws_max_vio_percentiles_and_the_bias(monkeypatch, stores):
    """A real balance = bias run: MaxVio of the batch and of the run's window of steps, the
    loads' percentiles, each expert's bias beside the heatmap in the heatmap's colours, the
    share of choices the bias changed, all equal to what the run logged."""
    from mahiax.store import RunReader
    from mahiax.telemetry.cadence import Cadence

    at = render(monkeypatch, stores["balance"], "experts", run="bias")
    assert not at.error
    reader = RunReader(stores["balance"])
    window = Cadence.of_run(reader.run("bias")).max_vio_window  # as the run was recorded
    assert reader.run("bias")["cadence"]["max_vio_window"] == window
    scal = reader.scalars("bias")
    bias = reader.vectors("bias", "moe/bias")  # (steps, E)
    assert bias.shape == (fx.BALANCE_STEPS, 4), "the tiny preset routes to 4 experts"

    max_vio = chart_series(chart_titled(at, "MaxVio = max load / mean load − 1 (0 = balanced)"))
    assert list(max_vio) == ["this step's batch", f"global: last {window} steps"]
    np.testing.assert_allclose(max_vio["this step's batch"], scal["moe/max_vio"])
    np.testing.assert_allclose(max_vio[f"global: last {window} steps"],
                               scal["moe/max_vio_global"])

    chart = chart_titled(at, "Selection bias per expert")
    trajectories = chart_series(chart)
    assert list(trajectories) == [f"expert {i}" for i in range(4)]
    for i in range(4):
        np.testing.assert_allclose(trajectories[f"expert {i}"], bias[i].to_numpy())
    assert np.abs(bias.to_numpy()[-1]).max() > 0, "the bias moved"
    heatmap = plotly_spec(chart_titled(at, "Tokens per expert over steps"))
    labels = heatmap["layout"]["yaxis"]["ticktext"]
    colours = [t["line"]["color"] for t in plotly_spec(chart)["data"]]
    assert all(f"color:{c}" in label and label.endswith(f"expert {i}")
               for i, (c, label) in enumerate(zip(colours, labels, strict=True))), \
        "each expert's bias line has the colour of its heatmap row"
    assert heatmap["layout"]["yaxis"]["autorange"] == "reversed", "expert 0 on top, as the legend"

    spread = chart_series(chart_titled(at, "Expert load percentiles (1 = the mean load)"))
    assert set(spread) == {"min", "p50", "p90", "p99", "max"}
    for label, key in (("min", "moe/load_min"), ("p50", "moe/load_p50"),
                       ("p99", "moe/load_p99"), ("max", "moe/max_over_mean")):
        np.testing.assert_allclose(spread[label], scal[key])
    assert np.all(spread["min"] <= spread["p50"]) and np.all(spread["p99"] <= spread["max"])

    flipped = chart_series(chart_titled(at, "Top-k choices the bias changed"))
    np.testing.assert_allclose(flipped["changed by the bias"], 100 * scal["moe/bias_flipped"])

    metrics = {m.label: m.value for m in at.metric}
    assert metrics["MaxVio (batch)"] == f"{scal['moe/max_vio'].iloc[-1]:.3f}"
    assert metrics[f"MaxVio (global, {window} steps)"] == \
        f"{scal['moe/max_vio_global'].iloc[-1]:.3f}"
    assert metrics["choices the bias changed"] == f"{scal['moe/bias_flipped'].iloc[-1]:.1%}"
    assert "No bias chart" not in texts(at.caption)
    assert chart_titled(at, "Aux loss (measured only: balance = bias does not train on it)")


@pytest.mark.slow
def test_experts_page_shows_the_max_vio_window_the_run_was_recorded_with(monkeypatch,
                                                                         tmp_path):
    """``--max-vio-window 20``: the run's global MaxVio sums 20 steps, and the Experts page
    says 20 (the window is read from the run, not written into the page); a run stored
    without a cadence (recorded before runs kept it) shows the default."""
    import subprocess
    import sys

    from mahiax.store import RunReader
    from mahiax.telemetry.cadence import MAX_VIO_WINDOW

    store = tmp_path / "mahiax.sqlite"
    subprocess.run(
        [sys.executable, "-m", "mahiax", "train", "--preset", "tiny", "--steps", "25",
         "--run", "w20", "--store", str(store), "--max-vio-window", "20", "--no-progress"],
        cwd=Path(APP).parent.parent, check=True, timeout=600, stdout=subprocess.DEVNULL)
    reader = RunReader(store)
    assert reader.run("w20")["cadence"]["max_vio_window"] == 20
    tokens = reader.vectors("w20", "moe/tokens_per_expert").to_numpy()  # (25, E)
    summed = tokens[5:].sum(axis=0)  # steps 5..24: the last 20
    scal = reader.scalars("w20", ["moe/max_vio_global"])
    assert scal["moe/max_vio_global"].iloc[-1] == pytest.approx(
        summed.max() / summed.mean() - 1), "the probe summed the run's 20 steps"

    at = render(monkeypatch, store, "experts", run="w20")
    assert not at.error
    max_vio = chart_series(chart_titled(at, "MaxVio = max load / mean load"))
    assert list(max_vio) == ["this step's batch", "global: last 20 steps"]
    labels = [m.label for m in at.metric]
    assert "MaxVio (global, 20 steps)" in labels, labels
    assert "50" not in " ".join(labels)

    old = fx.interrupted_store(tmp_path)  # written by RunWriter without a cadence
    assert RunReader(old).run("cut")["cadence"] is None
    at = render(monkeypatch, old, "experts", run="cut")
    assert f"MaxVio (global, {MAX_VIO_WINDOW} steps)" in [m.label for m in at.metric]


def test_experts_page_of_an_aux_run_says_it_has_no_bias(monkeypatch, stores):
    at = render(monkeypatch, stores["balance"], "experts", run="aux")
    assert not at.error
    titles = [plotly_spec(c)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert not any(t.startswith(("Selection bias", "Top-k choices")) for t in titles), titles
    assert "No bias chart: this run balances the load with the auxiliary loss " \
           "(`balance = aux`" in texts(at.caption)
    assert chart_titled(at, "MaxVio = max load") and chart_titled(at, "Expert load percentiles")
    assert "choices the bias changed" not in [m.label for m in at.metric]
    assert chart_titled(at, "Load-balancing (aux) and z losses")


@pytest.mark.parametrize("page", ALL_PAGES)
def test_failed_run(monkeypatch, stores, page):
    at = render(monkeypatch, stores["failed"], page)
    shown = texts(at.error)
    assert "Failed" in shown and "RuntimeError" in shown and "step 3" in shown


def test_failed_run_message_on_training_page(monkeypatch, stores):
    at = render(monkeypatch, stores["failed"], "training")
    assert fx.FAILED_MESSAGE in texts(at.error) + texts(at.code)


@pytest.mark.parametrize("page", ALL_PAGES)
def test_interrupted_run(monkeypatch, stores, page):
    at = render(monkeypatch, stores["interrupted"], page)
    assert "Interrupted" in texts(at.warning)
    assert "--resume" in texts(at.warning)


@pytest.mark.parametrize("page", ALL_PAGES)
def test_corrupt_store(monkeypatch, stores, page):
    at = render(monkeypatch, stores["corrupt"], page)
    shown = texts(at.error)
    assert str(stores["corrupt"]) in shown and "not a MAHIA-X run store" in shown


def test_deleted_run(monkeypatch, stores):
    at = render(monkeypatch, stores["finished"], "training", run="gone")
    assert "no longer in the store" in texts(at.warning)


def test_running_run_reads_new_steps(monkeypatch, tmp_path):
    path, writer = fx.running_writer(tmp_path)
    try:
        for page in ALL_PAGES:
            at = render(monkeypatch, path, page)
            assert "Running" in texts(at.success)
        assert "last step 4" in texts(at.success)
        fx._log_steps(writer, range(5, 9))
        writer.flush()
        at.run()  # the same session: its cache reads only steps after 4
        assert not at.exception
        assert "last step 8" in texts(at.success)
        assert "9 steps stored" in texts(at.success)
    finally:
        writer.close()


# -- runs compared --------------------------------------------------------------------------


def render_compared(monkeypatch, store: Path, page: str, run: str, compared: list[str],
                    **state: object) -> AppTest:
    """``render``, with ``compared`` picked in the sidebar's "Compare with" (and any other
    session ``state``)."""
    monkeypatch.setenv("MAHIAX_STORE", str(store))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state[PAGE_KEY] = page
    at.session_state[RUN_KEY] = run
    at.session_state[COMPARE_KEY] = compared
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def trace_colours(chart) -> dict[str, str]:
    """trace name -> its line colour."""
    return {t["name"]: t["line"]["color"] for t in plotly_spec(chart)["data"]}


def test_compared_runs_overlay_one_trace_per_run_in_one_colour_on_every_page(monkeypatch,
                                                                            stores):
    """Lesson 11's situation: a bias-balanced and an aux-balanced run on one chart. The
    Training page's loss chart has one trace per run, named after it, with that run's
    losses; each run keeps its colour on the other charts and on another page."""
    from mahiax.store import RunReader

    at = render_compared(monkeypatch, stores["balance"], "training", "bias", ["aux"])
    assert not at.error
    picker = at.sidebar.multiselect[0]
    assert picker.label == "Compare with" and list(picker.options) == ["aux"], \
        "every run but the picked one can be compared"
    assert picker.value == ["aux"]
    reader = RunReader(stores["balance"])
    loss = chart_titled(at, "Loss (total)")
    series = chart_series(loss)
    assert list(series) == ["bias", "aux"], "one trace per run, the picked run first"
    for run in ("bias", "aux"):
        np.testing.assert_allclose(series[run], reader.scalars(run, ["loss"])["loss"])
    colours = trace_colours(loss)
    assert colours["bias"] != colours["aux"]
    assert trace_colours(chart_titled(at, "Gradient norm")) == colours
    tasks = trace_colours(chart_titled(at, "Loss per task"))
    assert {name.split(" · ")[0] for name in tasks} == {"bias", "aux"}
    assert all(colour == colours[name.split(" · ")[0]] for name, colour in tasks.items())
    assert "Compared:" in texts(at.caption)

    experts = render_compared(monkeypatch, stores["balance"], "experts", "bias", ["aux"])
    assert not experts.error
    assert trace_colours(chart_titled(experts, "Dead experts per step")) == colours, \
        "the same run, the same colour, on another page"
    max_vio = trace_colours(chart_titled(experts, "MaxVio"))
    assert {c for name, c in max_vio.items() if name.startswith("aux · ")} == {colours["aux"]}
    # the heatmap cannot overlay two runs: it draws the picked one and says so
    assert chart_titled(experts, "Tokens per expert over steps")
    assert "Tokens per expert: **bias** only" in texts(experts.caption)


def test_compared_runs_of_different_lengths_share_the_step_axis(monkeypatch, tmp_path):
    """A 450-step and a 6-step run: each drawn at its own steps; the points per chart apply
    to each run, so the long one is thinned (its spikes kept) and the short one whole."""
    from dashboard.state import POINTS_KEY
    from mahiax.store import RunReader

    store = fx.uneven_store(tmp_path)
    at = render_compared(monkeypatch, store, "training", "long", ["short"],
                         **{POINTS_KEY: 200})
    spec = plotly_spec(chart_titled(at, "Loss (total)"))
    steps = {t["name"]: chart_x(t) for t in spec["data"]}
    assert list(steps) == ["long", "short"]
    assert list(steps["short"]) == list(range(fx.UNEVEN_STEPS["short"]))
    long = steps["long"]
    assert 2 < len(long) <= 200 and long[0] == 0 and long[-1] == fx.UNEVEN_STEPS["long"] - 1
    values = chart_series(chart_titled(at, "Loss (total)"))["long"]
    assert values.max() == RunReader(store).scalars("long", ["loss"])["loss"].max()


def chart_x(trace: dict) -> np.ndarray:
    """A trace's x values (Plotly sends them base64-packed)."""
    x = trace["x"]
    if isinstance(x, dict):
        x = np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"])
    return np.asarray(x, dtype=float)


def test_a_deleted_compared_run_is_dropped_with_a_warning(monkeypatch, stores):
    at = render_compared(monkeypatch, stores["balance"], "training", "bias", ["gone", "aux"])
    assert "Compared run 'gone' is no longer in the store" in texts(at.warning)
    assert not at.error
    assert list(chart_series(chart_titled(at, "Loss (total)"))) == ["bias", "aux"], \
        "the page still draws the picked run and the compared run that is there"
    assert at.session_state[COMPARE_KEY] == ["aux"], "dropped from the selection"
    alone = render_compared(monkeypatch, stores["balance"], "experts", "bias", ["gone"])
    assert "no longer in the store" in texts(alone.warning) and not alone.error
    assert chart_titled(alone, "Dead experts per step"), "drawn as a single run"
    assert "Compared:" not in texts(alone.caption)


def test_a_page_refreshes_while_a_compared_run_trains(monkeypatch, tmp_path):
    """A finished run compared with a live one: the page refreshes on its timer and shows
    the live run's new steps; once no shown run trains, only the watch is left."""
    import streamlit

    from dashboard import page_watch as watch
    from mahiax.store import RunWriter

    timers: list[float | None] = []
    real = streamlit.fragment

    def recording(func=None, *, run_every=None):
        timers.append(run_every)
        return real(func, run_every=run_every) if func is not None else \
            real(run_every=run_every)

    monkeypatch.setattr(streamlit, "fragment", recording)
    path, writer = fx.running_writer(tmp_path)
    done = RunWriter("done", {}, path=path, device="cpu")
    fx._log_steps(done, range(3))
    done.finish("finished")
    done.close()
    try:
        at = render_compared(monkeypatch, path, "training", "done", ["live"])
        assert timers == [2.0], "a timer at the refresh interval, no watch"
        assert list(chart_x(t)[-1] for t in plotly_spec(
            chart_titled(at, "Gradient norm"))["data"]) == [2, 4]
        fx._log_steps(writer, range(5, 9))
        writer.flush()
        time.sleep(data.READ_GAP_S)
        timers.clear()
        at.run()
        assert not at.exception
        assert list(chart_x(t)[-1] for t in plotly_spec(
            chart_titled(at, "Gradient norm"))["data"]) == [2, 8], "the live run's new steps"
        writer.finish("finished")
    finally:
        writer.close()
    timers.clear()
    at.run()
    assert timers == [None, watch.WATCH_S], "drawn once, then only the watch"


def test_run_colours_follow_the_order_the_runs_are_shown():
    from dashboard import charts

    colours = charts.run_colours(["a", "b", "c"])
    assert len(set(colours.values())) == 3
    assert charts.run_colours(["a", "b"]) == {k: colours[k] for k in ("a", "b")}
    fig = charts.run_lines({"a": pd.DataFrame({"x": [1.0, 2.0]}),
                            "b": pd.DataFrame({"x": [3.0]}, index=[5])}, "t")
    assert [(t.name, t.line.color) for t in fig.data] == [("a", colours["a"]),
                                                          ("b", colours["b"])]
    assert list(fig.data[1].x) == [5]


def test_autostart_starts_demo_in_a_process(monkeypatch, tmp_path):
    monkeypatch.setenv(runs.AUTOSTART_ENV, "1")
    store = tmp_path / "mahiax.sqlite"
    at = render(monkeypatch, store, "training")
    try:
        active = runs.active_runs(store)
        assert runs.DEMO_NAME in active
        assert "Starting 'demo'" in texts(at.info)
        at.run()  # a rerun does not start a second demo
        assert not at.exception
        assert list(runs.active_runs(store)) == [runs.DEMO_NAME]
    finally:
        assert runs.stop_run(store, runs.DEMO_NAME)
    assert runs.active_runs(store) == {}
    assert not runs.maybe_start_demo(store, 0), "a demo is started once per store"


# -- Bug lab --------------------------------------------------------------------------------


def render_lab(monkeypatch, store: Path, entry: str | None = None,
               measured: bool = True) -> AppTest:
    """The Bug lab page against ``store`` (optionally on ``entry``); no uncaught exception.
    With ``measured``, once the verdict's process has ended (the page is drawn again)."""
    monkeypatch.setenv("MAHIAX_STORE", str(store))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[PAGE_KEY] = BUG_LAB
    if entry is not None:
        at.session_state[bug_lab.ENTRY_KEY] = entry
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if measured:
        wait_for_verdict(at.selectbox(key=bug_lab.ENTRY_KEY).value)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def wait_for_verdict(entry_id: str, timeout_s: float = 180) -> verdict_jobs.VerdictJob:
    """The server's job for ``entry_id`` once its process has ended (a hang guard only)."""
    deadline = time.monotonic() + timeout_s
    while (job := verdict_jobs.request(entry_id)).running:
        assert time.monotonic() < deadline, f"the verdict of {entry_id} ran over {timeout_s} s"
        time.sleep(0.3)
    return job


def chart_series(chart) -> dict[str, np.ndarray]:
    """trace name -> y values of a rendered Plotly chart (Plotly sends them base64-packed)."""
    out = {}
    for trace in json.loads(chart.proto.spec)["data"]:
        y = trace["y"]
        if isinstance(y, dict):
            y = np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"])
        out[trace["name"]] = np.asarray(y, dtype=float)
    return out


def test_bug_lab_compares_recorded_variants(monkeypatch, stores):
    at = render_lab(monkeypatch, stores["catalog"])
    assert at.selectbox(key=bug_lab.ENTRY_KEY).value == "retain-graph", \
        "the lab opens on the newest recorded entry"
    assert "Verdict on the summary's fix: hides-the-error" in texts(at.warning)
    errors = texts(at.error)
    assert "**RuntimeError** at step 0 · `retain-graph-buggy` · 0 steps ran" in errors
    assert "**RuntimeError** at step 4 · `retain-graph-summary` · 4 steps ran" in errors
    code = texts(at.code)
    assert "Trying to backward through the graph a second time" in code
    assert "modified by an inplace operation" in code
    assert "No error · `retain-graph-fixed` · 8 steps ran" in texts(at.success)
    charts = at.get("plotly_chart")
    assert len(charts) == 4 + 2, "graph size, memory, loss and gradient error overlays, " \
        "then memory by category of the two variants that ran a step"
    graph = chart_series(charts[0])
    assert list(graph) == ["summary", "fixed"], "the bug fails at step 0: nothing to draw"
    grown = graph["summary"][~np.isnan(graph["summary"])]
    assert len(grown) == 4 and np.all(np.diff(grown) > 0), "retain_graph grows the graph"
    assert graph["fixed"][-1] == graph["fixed"][1], "the right fix keeps it constant"


def test_bug_lab_shows_retain_graph_saving_more_every_step(monkeypatch, stores):
    at = render_lab(monkeypatch, stores["catalog"])
    charts = {json.loads(c.proto.spec)["layout"]["title"]["text"]: c
              for c in at.get("plotly_chart")}
    summary = chart_series(charts["summary: the summary's fix"])
    saved, params = summary["saved for backward"], summary["parameters"]
    assert len(saved) == 4 and np.all(np.diff(saved) > 0), \
        "retain_graph: every step's graph stays alive, saved tensors pile up"
    assert np.all(params == params[0]), "while the parameters stay the same size"
    fixed = chart_series(charts["fixed: the right fix"])
    assert fixed["saved for backward"][-1] <= fixed["saved for backward"][1], \
        "the right fix frees each step's graph"
    assert "buggy: no step measured." in texts(at.caption)


def test_bug_lab_empty_and_corrupt_store(monkeypatch, stores):
    at = render_lab(monkeypatch, stores["empty"], entry="expert-index")
    assert "No recorded runs of `expert-index` yet" in texts(at.info)
    assert "Verdict on the summary's fix: wrong-diagnosis" in texts(at.warning)
    at = render_lab(monkeypatch, stores["corrupt"], entry="expert-index")
    assert "not a MAHIA-X run store" in texts(at.error)


def plotly_array(value) -> np.ndarray:
    """A Plotly array as sent to the page (a list, or base64-packed with dtype and shape)."""
    if isinstance(value, dict):
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")  # "rows, cols"
        return flat if shape is None else flat.reshape([int(n) for n in str(shape).split(",")])
    return np.asarray(value, dtype=float)


@pytest.mark.integration
def test_bug_lab_shows_the_router_collapse_runs_side_by_side(monkeypatch, tmp_path):
    """router-collapse's verdict measured for real, in its own process as the page does:
    the three runs (balance none / aux / bias) side by side, each with its tail figures and
    its tokens per expert, the bias of the bias run, and MaxVio, dead experts and task loss
    overlaid: the figures the verdict measured."""
    at = render_lab(monkeypatch, tmp_path / "mahiax.sqlite", entry="router-collapse")
    job = wait_for_verdict("router-collapse")
    assert job.error is None and job.reason in texts(at.success) + texts(at.warning)
    figures, variants = job.figures, list(bug_lab.VARIANT_LABELS)
    balances = {"buggy": "none", "summary": "aux", "fixed": "bias"}
    assert {v: figures[v]["balance"] for v in variants} == balances
    shown = texts(at.markdown)
    for v in variants:
        assert f"**{v}** · {bug_lab.VARIANT_LABELS[v]} · balance `{balances[v]}`" in shown
    assert f"means over the last {figures['fixed']['tail_steps']} steps" in shown

    metrics = [(m.label, m.value) for m in at.metric]
    expected = [(label, fmt.format(figures[v]["tail"][key])) for v in variants
                for key, (label, fmt) in verdict_runs.TAIL_LABELS.items()]
    assert metrics == expected, "each run's tail figures, column by column"

    heatmaps = [plotly_spec(chart_titled(at, f"Tokens per expert · {v}"))["data"][0]
                for v in variants]
    for v, heatmap in zip(variants, heatmaps, strict=True):
        z = plotly_array(heatmap["z"])  # (E, steps)
        np.testing.assert_allclose(z.T, figures[v]["series"]["tokens_per_expert"])
    assert len({h["zmax"] for h in heatmaps}) == 1, "the three heatmaps share a colour range"

    bias = chart_series(chart_titled(at, "Selection bias per expert · fixed"))
    measured = np.asarray(figures["fixed"]["series"]["bias"])  # (steps, E)
    assert list(bias) == [f"expert {i}" for i in range(measured.shape[1])]
    for i in range(measured.shape[1]):
        np.testing.assert_allclose(bias[f"expert {i}"], measured[:, i])
    assert texts(at.caption).count("No selection bias per expert: not measured") == 2, \
        "balance none and aux have no bias"

    for key in ("max_vio", "dead", "task_loss"):
        overlay = chart_series(chart_titled(at, verdict_runs.SERIES_LABELS[key][0]))
        assert list(overlay) == variants
        for v in variants:
            np.testing.assert_allclose(overlay[v], figures[v]["series"][key])


def _recording(calls: list[str], name: str, fn):
    def wrapper(*args, **kwargs):
        calls.append(name)
        return fn(*args, **kwargs)
    return wrapper


@pytest.fixture
def global_effects(monkeypatch) -> list[str]:
    """Records every call in this process that starts a process group, forks a rank,
    reseeds the global RNG or installs a global module hook (the calls still happen)."""
    import multiprocessing.process

    import torch
    import torch.distributed as dist
    from torch.nn.modules import module

    calls: list[str] = []
    for owner, name in ((dist, "init_process_group"), (torch, "manual_seed"),
                        (module, "register_module_forward_hook"),
                        (module, "register_module_forward_pre_hook"),
                        (multiprocessing.process.BaseProcess, "start")):
        monkeypatch.setattr(owner, name, _recording(calls, name, getattr(owner, name)))
    return calls


def test_the_global_effects_fixture_sees_a_verdict_measured_in_process(global_effects):
    from mahiax import bugs

    bugs.run("ddp-unused-experts", "fixed", steps=1)
    assert {"init_process_group", "manual_seed"} <= set(global_effects)


def test_bug_lab_measures_the_verdict_in_a_process_of_its_own(monkeypatch, tmp_path,
                                                              global_effects):
    import psutil

    store, entry = tmp_path / "mahiax.sqlite", "ddp-unused-experts"  # a process group
    verdict_jobs.forget(entry)
    first = render_lab(monkeypatch, store, entry=entry, measured=False)
    measuring = texts(first.info)
    assert "Measuring the verdict on the summary's fix" in measuring, "the page is not blocked"
    job = verdict_jobs.request(entry)
    assert f"in process {job.pid}" in measuring
    if job.running:  # (it takes seconds: it is still importing torch)
        assert psutil.Process(job.pid).cmdline()[-5:] == ["mahiax", "bugs", "verdict", entry,
                                                          "--json"]
        second = render_lab(monkeypatch, store, entry=entry, measured=False)
        assert f"in process {job.pid}" in texts(second.info), \
            "a second session waits for the same process, it starts none"
    at = render_lab(monkeypatch, store, entry=entry)
    assert "Verdict on the summary's fix: holds" in texts(at.success)
    assert re.search(r"at \d\d:\d\d:\d\d on torch " + re.escape(version("torch")),
                     texts(at.success)), "the verdict says when and on which torch"
    assert "Measuring the verdict" not in texts(at.info)
    assert global_effects == [], "the server itself started a group, forked, reseeded or hooked"


def test_bug_lab_says_why_a_verdict_failed_and_measures_again(monkeypatch, tmp_path):
    store, entry = tmp_path / "mahiax.sqlite", "fabric-accumulate"
    verdict_jobs.forget(entry)
    with monkeypatch.context() as m:  # a measuring process that fails
        m.setattr(verdict_jobs, "argv", lambda entry_id: [
            sys.executable, "-c", f"import sys; sys.exit('no verdict for {entry_id} today')"])
        at = render_lab(monkeypatch, store, entry=entry)
    assert "no verdict for fabric-accumulate today" in texts(at.error)
    assert "exited with status 1" in texts(at.error)
    next(b for b in at.button if b.label == "Measure again").click()
    at.run()
    wait_for_verdict(entry)
    at.run()
    assert not at.exception
    assert "Verdict on the summary's fix: holds" in texts(at.success)


@pytest.mark.integration
def test_bug_lab_button_runs_three_variants(monkeypatch, tmp_path):
    store = tmp_path / "mahiax.sqlite"
    at = render_lab(monkeypatch, store, entry="tiny-memory-write")
    at.number_input[0].set_value(3)
    next(b for b in at.button if b.label.startswith("Run the three variants")).click()
    at.run()
    assert not at.exception
    names = [f"tiny-memory-write-{v}" for v in ("buggy", "summary", "fixed")]
    assert f"Started {', '.join(names)}" in texts(at.success)
    deadline = time.monotonic() + 120
    while runs.active_runs(store) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert runs.active_runs(store) == {}, "the three variant processes end on their own"
    at.run()
    assert not at.exception
    errors = texts(at.error)
    assert "at step 1 · `tiny-memory-write-buggy`" in errors
    assert "at step 1 · `tiny-memory-write-summary`" in errors  # the same error again
    assert "No error · `tiny-memory-write-fixed` · 3 steps ran" in texts(at.success)


def _training_children(entry: str) -> dict[int, list[str]]:
    """This process's live children that train a variant of ``entry`` (``mahiax train
    ... --bug ENTRY``): the processes the Bug lab started, seen by their command line. Each
    one runs with one intra-op thread: its slot is one core."""
    import psutil

    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = child.cmdline()
            threads = child.environ().get("OMP_NUM_THREADS")
        except psutil.Error:
            continue
        if "train" in cmd and "--bug" in cmd and cmd[cmd.index("--bug") + 1] == entry:
            assert threads == "1", f"a slot is one core, yet OMP_NUM_THREADS={threads}: {cmd}"
            found[child.pid] = cmd
    return found


def _press_run(at: AppTest, steps: int) -> None:
    at.number_input[0].set_value(steps)
    next(b for b in at.button if b.label.startswith("Run the three variants")).click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def _sample_until_ended(entry: str, store: Path, seen: dict, most: list[int],
                        timeout_s: float = 180) -> None:
    """Sample the training children until none is alive and none waits (a hang guard)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = _training_children(entry)
        seen.update(now)
        most.append(len(now))
        if not now and not runs.queued_runs(store) and not runs.active_runs(store):
            return
        assert time.monotonic() < deadline, f"the variants of {entry} ran over {timeout_s} s"
        time.sleep(0.05)


@pytest.mark.integration
def test_two_sessions_asking_for_the_same_entry_start_three_processes(monkeypatch, tmp_path):
    store, entry = tmp_path / "mahiax.sqlite", "tiny-memory-write"
    first = render_lab(monkeypatch, store, entry=entry)
    second = render_lab(monkeypatch, store, entry=entry)  # another session, same server
    seen: dict[int, list[str]] = {}
    _press_run(first, 20)
    seen.update(_training_children(entry))
    _press_run(second, 20)
    _sample_until_ended(entry, store, seen, [])
    names = [f"{entry}-{v}" for v in ("buggy", "summary", "fixed")]
    assert f"Started {', '.join(names)}" in texts(first.success)
    shown = f"already started (20 steps each) by an earlier request: {', '.join(names)}"
    assert shown in texts(second.info), "the second session is shown the first one's runs"
    assert len(seen) == 3, f"three training processes, not six: {list(seen.values())}"
    assert sorted(cmd[cmd.index("--variant") + 1] for cmd in seen.values()) == \
        ["buggy", "fixed", "summary"]
    assert sorted(data.catalog_runs(str(store))["name"]) == sorted(names), "three runs stored"
    for at in (first, second):  # both pages draw the same three runs
        at.run()
        assert "No error · `tiny-memory-write-fixed` · 20 steps ran" in texts(at.success)


@pytest.mark.integration
def test_at_most_one_training_process_per_core_the_rest_wait_in_line(monkeypatch, tmp_path):
    from dashboard import slots

    store, entry = tmp_path / "mahiax.sqlite", "fabric-accumulate"
    at = render_lab(monkeypatch, store, entry=entry)  # its verdict measured: no slot taken
    monkeypatch.setattr(slots, "_limit", lambda: 1)  # a one-core machine
    seen: dict[int, list[str]] = {}
    most: list[int] = []
    _press_run(at, 3)
    waiting = texts(at.info)
    assert "`fabric-accumulate-summary` · waiting for a free core: number 1 in the queue " \
        "(1 training processes at a time)" in waiting, waiting
    assert "`fabric-accumulate-fixed` · waiting for a free core: number 2 in the queue" in \
        waiting
    _sample_until_ended(entry, store, seen, most)
    assert len(seen) == 3, "each variant ran, one after the other"
    assert max(most) == 1, f"two variants trained at once on one core: {most}"
    at.run()
    assert "No error · `fabric-accumulate-fixed` · 3 steps ran" in texts(at.success)


def test_slots_follow_the_cpu_affinity():
    from dashboard import slots

    assert slots.cores() == len(os.sched_getaffinity(0))


def test_catalog_runs_and_unique_names(stores):
    table = data.catalog_runs(str(stores["catalog"]))
    assert list(table["name"]) == [f"retain-graph-{v}" for v in ("buggy", "summary", "fixed")]
    assert set(table["bug"]) == {"retain-graph"}, "the plain run is left out"
    assert list(table.columns) == ["name", "status", "created", "bug", "variant"]
    assert bug_lab.unique_name("a", {"a", "a-2"}) == "a-3"
    assert bug_lab.unique_name("b", {"a"}) == "b"


def test_a_catalog_run_stored_with_the_old_config_tag_is_still_listed(tmp_path):
    from mahiax.store import RunWriter

    store = tmp_path / "old.sqlite"
    with RunWriter("old-buggy", {"catalog": {"bug": "dwa-weights", "variant": "buggy"}},
                   path=store) as w:
        w.log({"loss": 1.0}, 0)
    table = data.catalog_runs(str(store))
    assert table[["name", "bug", "variant"]].values.tolist() == [
        ["old-buggy", "dwa-weights", "buggy"]]


# -- My attempts ----------------------------------------------------------------------------


def _attempt(learner: str, lesson: str, exercise: str, at: float,
             reasons: tuple[str, ...] = ()) -> Attempt:
    return Attempt(learner=learner, lesson=lesson, exercise=exercise, passed=not reasons,
                   reasons=reasons, message=f"{exercise} at {at}", at=at)


@pytest.fixture
def attempts_store(tmp_path) -> Path:
    """Two learners' attempts, ada's and grace's, interleaved in time (Unix seconds)."""
    store = tmp_path / "attempts.sqlite"
    for a in (
        _attempt("ada", "04_retain_graph_and_encode", "retain-graph", 1_000.0,
                 ("retain_graph=True", "graph grows")),
        _attempt("grace", "04_retain_graph_and_encode", "retain-graph", 1_500.0),
        _attempt("ada", "11_router_collapse", "router-collapse", 2_000.0,
                 ("raises NotImplementedError",)),
        _attempt("ada", "04_retain_graph_and_encode", "retain-graph", 3_000.0),
        _attempt("grace", "03b_controller_and_dwa", "dwa-weights", 4_000.0,
                 ("wrong gradients",)),
    ):
        record_attempt(a, store)
    return store


def _tables(at: AppTest) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The page's per-exercise table and its table of every attempt."""
    status, every = (d.value for d in at.dataframe)
    return status, every


def test_my_attempts_shows_the_current_learners_only_newest_first(monkeypatch,
                                                                  attempts_store):
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    at = render(monkeypatch, attempts_store, MY_ATTEMPTS)
    assert not at.error and "My attempts" in texts(at.title)
    assert "**ada**" in texts(at.caption)
    status, every = _tables(at)
    assert list(every["exercise"]) == ["retain-graph", "router-collapse", "retain-graph"]
    assert list(every["verdict"]) == ["PASS", "NOT YET", "NOT YET"]
    assert list(every["why not"]) == ["", "raises NotImplementedError",
                                      "retain_graph=True; graph grows"]
    assert "dwa-weights" not in set(every["exercise"]), "grace's attempts are not ada's"
    assert every["when"].is_monotonic_decreasing
    assert status.to_dict("records") == [
        {"lesson": "04_retain_graph_and_encode", "exercise": "retain-graph",
         "status": "passed", "tries": 2, "last tried": every["when"][0], "last why not": ""},
        {"lesson": "11_router_collapse", "exercise": "router-collapse", "status": "trying",
         "tries": 1, "last tried": every["when"][1],
         "last why not": "raises NotImplementedError"}]
    assert {m.label: m.value for m in at.metric}["exercises passed"] == "1 of 2 tried"


def test_my_attempts_without_a_hub_user_are_the_os_users(monkeypatch, attempts_store):
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    me = current_learner()
    record_attempt(_attempt(me, "05_memory_meter", "memory-zero-cpu", 5_000.0,
                            ("wrong reading",)), attempts_store)
    at = render(monkeypatch, attempts_store, MY_ATTEMPTS)
    status, every = _tables(at)
    assert list(every["exercise"]) == ["memory-zero-cpu"] and list(status["status"]) == [
        "trying"]


def test_my_attempts_shows_a_new_check_and_reads_nothing_while_none_comes(monkeypatch,
                                                                          attempts_store):
    monkeypatch.setenv("JUPYTERHUB_USER", "grace")
    at = render(monkeypatch, attempts_store, MY_ATTEMPTS)
    assert list(_tables(at)[1]["exercise"]) == ["dwa-weights", "retain-graph"]
    reads = []
    real = data.read_attempts
    monkeypatch.setattr(data, "read_attempts",
                        lambda *a, **k: reads.append(1) or real(*a, **k))
    time.sleep(1.1)  # the attempts version is cached for a second, for every session
    at.run()
    assert not at.exception and reads == [], "no new check: the attempts are not read again"
    record_attempt(_attempt("grace", "03b_controller_and_dwa", "dwa-weights", 6_000.0),
                   attempts_store)
    time.sleep(1.1)
    at.run()
    assert not at.exception and reads == [1]
    status, every = _tables(at)
    assert list(every["verdict"])[:1] == ["PASS"]
    assert dict(zip(status["exercise"], status["status"], strict=True)) == {
        "dwa-weights": "passed", "retain-graph": "passed"}


def test_my_attempts_of_an_empty_and_a_corrupt_store(monkeypatch, stores):
    at = render(monkeypatch, stores["empty"], MY_ATTEMPTS)
    assert "No attempts recorded yet" in texts(at.info) and not at.error
    assert not at.dataframe
    at = render(monkeypatch, stores["corrupt"], MY_ATTEMPTS)
    assert "Cannot read the run store" in texts(at.error)


def test_a_store_of_runs_only_has_no_attempts(monkeypatch, stores):
    at = render(monkeypatch, stores["finished"], MY_ATTEMPTS)
    assert "No attempts recorded yet" in texts(at.info) and not at.error


# -- pure transforms ------------------------------------------------------------------------


def test_downsample_keeps_spikes_and_bounds_rows():
    rng = np.random.default_rng(0)
    n = 100_000
    df = pd.DataFrame({"loss": rng.normal(size=n), "grad": rng.random(n)},
                      index=pd.Index(np.arange(n), name="step"))
    df.iloc[54_321, 0] = 1e6
    df.iloc[77_777, 0] = -1e6
    df.iloc[123, 1] = np.nan
    out = processing.downsample_minmax(df, 1000)
    assert len(out) <= 1000
    assert out["loss"].max() == 1e6 and out["loss"].min() == -1e6
    assert out["grad"].max() == df["grad"].max() and out["grad"].min() == df["grad"].min()
    assert out.index.is_monotonic_increasing
    assert out.index[0] == 0 and out.index[-1] == n - 1
    small = df.iloc[:50]
    assert processing.downsample_minmax(small, 1000) is small


def test_downsample_rejects_tiny_budget():
    with pytest.raises(ValueError):
        processing.downsample_minmax(pd.DataFrame({"a": [1.0, 2.0, 3.0]}), 1)


def test_pca_projection_shapes_and_shared_plane():
    rng = np.random.default_rng(1)
    snaps = {s: rng.normal(size=(16, 64)) for s in (0, 25, 50)}
    pca = processing.pca_fit(snaps)
    assert pca.components.shape == (2, 64)
    assert processing.pca_project(pca, snaps[25]).shape == (16, 2)
    paths = processing.node_paths(snaps, pca)
    assert paths.shape == (48, 4) and set(paths["step"]) == {0, 25, 50}
    flat = processing.pca_fit([np.ones((3, 1))])  # one dimension, no variance: still 2-D
    assert processing.pca_project(flat, np.ones((3, 1))).shape == (3, 2)


def test_thin_steps_keeps_ends_and_spreads_evenly():
    steps = list(range(0, 100_000, 25))  # a 100,000-step run's snapshots
    thin = processing.thin_steps(steps, 200)
    assert len(thin) == 200 and thin[0] == 0 and thin[-1] == 99_975
    gaps = np.diff(thin)
    assert gaps.max() - gaps.min() <= 25, "evenly spread"
    assert processing.thin_steps([5, 1, 3], 200) == [1, 3, 5]
    with pytest.raises(ValueError, match="max_n=1 must be at least 2"):
        processing.thin_steps(steps, 1)


def test_node_paths_of_a_resized_memory_still_project():
    rng = np.random.default_rng(2)
    snaps = {0: rng.normal(size=(4, 8)), 10: rng.normal(size=(6, 8))}  # nodes added
    paths = processing.node_paths(snaps, processing.pca_fit(snaps))
    assert len(paths) == 10 and list(paths.groupby("step").size()) == [4, 6]
    assert processing.node_displacement(snaps).loc[10].isna().all()


def test_node_motion_and_similarity():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    snaps = {0: a, 10: a + np.array([[3.0, 4.0], [0.0, 0.0]])}
    moved = processing.node_displacement(snaps)
    assert moved.loc[0].tolist() == [0.0, 0.0] and moved.loc[10].tolist() == [5.0, 0.0]
    assert processing.node_norms(snaps).loc[0].tolist() == [1.0, 2.0]
    sim = processing.cosine_similarity(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(sim, [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_memory_by_category_stacks_dense_categories_only():
    steps = pd.Index(range(6), name="step")
    df = pd.DataFrame({"mem/params": 1.0, "mem/grads": [np.nan] + [1.0] * 5,
                       "mem/saved": 2.0, "mem/other": [3.0, np.nan, np.nan, 4.0, np.nan, np.nan],
                       "mem/total": [7.0, np.nan, np.nan, 8.0, np.nan, np.nan],
                       "mem/rss": 500.0}, index=steps) * MIB
    mem = processing.memory_by_category(df)
    assert list(mem.stacked.columns) == ["parameters", "saved for backward"]
    assert mem.sparse == ["gradients", "other"] and mem.sparse_every == 3
    assert mem.stacked.loc[0, "parameters"] == 1.0, "MiB: 2**20 bytes"
    assert list(mem.totals.index) == [0, 3] and list(mem.totals.columns) == ["total"]
    assert processing.latest_values(mem.totals) == {"total": (3, 8.0)}
    legacy = processing.memory_by_category(df[["mem/rss"]])
    assert legacy.empty and legacy.sparse == []


def test_run_request_command_line(tmp_path):
    req = runs.RunRequest(name="x", steps=5, experts=4, top_k=1, weighting="equal",
                          precision="bf16")
    argv = req.argv(tmp_path / "s.sqlite")
    assert argv[1:4] == ["-m", "mahiax", "train"]
    assert ["--experts", "4"] == argv[argv.index("--experts"):][:2]
    bug = runs.RunRequest(name="b", steps=3, bug="retain-graph", variant="summary")
    assert bug.argv(tmp_path)[-4:] == ["--bug", "retain-graph", "--variant", "summary"]


def test_stop_unknown_run_is_refused(tmp_path):
    assert runs.stop_run(tmp_path / "s.sqlite", "nothing") is False


def test_memory_chart_draws_no_line_across_steps_it_has_no_reading_for():
    """Readings every 10 steps, then none from 100 to 250 (e.g. a run resumed later): each
    reading is a marker, and no stacked trace joins step 100 to step 250."""
    from dashboard import charts

    steps = [*range(0, 110, 10), *range(250, 300, 10)]
    df = pd.DataFrame({"mem/params": 4.0 * MIB, "mem/grads": 4.0 * MIB,
                       "mem/optimizer": 8.0 * MIB, "mem/saved": 2.0 * MIB},
                      index=pd.Index(steps, name="step"))
    mem = processing.memory_by_category(df)
    assert mem.every == 10
    fig = charts.memory_stack(mem.stacked, mem.totals, "Memory by category (CPU)",
                              every=mem.every)
    stacked = [t for t in fig.data if t.stackgroup]
    assert {tuple(t.x) for t in stacked} == {tuple(range(0, 110, 10)),
                                            tuple(range(250, 300, 10))}
    assert all("markers" in t.mode for t in stacked)
    assert [t.showlegend for t in stacked].count(True) == 4, "one legend entry per category"
