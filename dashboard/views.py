"""The dashboard's pages, one function each. Every page draws inside a live fragment that
re-reads only new steps; every store fault becomes a message on the page, never a traceback."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import bug_lab, charts, data, processing, runs, watch
from dashboard.state import INTERVAL_KEY, LIVE_KEY, PAGE_KEY, POINTS_KEY, RUN_KEY, STORE_KEY
from mahiax import metric_keys as mk
from mahiax.cadence import Cadence
from mahiax.store import NotAStoreError, RunNotFoundError, StoreError
from mahiax.units import MIB

MAX_SNAPSHOTS = 200  # memory-node snapshots drawn at most (a 100,000-step run stores 4,000)

Body = Callable[[str, dict], None]


def _max_points() -> int:
    return int(st.session_state.get(POINTS_KEY, 2000))


def _ds(df: pd.DataFrame) -> pd.DataFrame:
    return processing.downsample_minmax(df, _max_points())


def _present(df: pd.DataFrame, keys: list[str]) -> list[str]:
    return [k for k in keys if k in df.columns and df[k].notna().any()]


def _chart(build: Callable[[], go.Figure]) -> None:
    """Draw the figure ``build()`` makes, shared by every session drawing the same run at the
    same step: building a figure (plotly validates every trace) costs more than sending it,
    so thirty viewers of a live run build each chart once per new step, not thirty times.

    The figure is a function of the data the server holds of the run (``data.held_version``
    of the run the page's fragment draws, ``_drawing.run``) and of the small values
    ``build`` closes over (the metric keys, the step picked, log scale ...): those make the
    key, with where ``build`` is written. A closed-over frame or array is derived from the
    run's data, so the version stands for it."""
    drawing = getattr(_drawing, "run", None)
    key = None if drawing is None else \
        (data.held_version(*drawing), _max_points(), build.__code__, _closure_key(build))
    fig = None
    if key is not None:
        with _figures_lock:
            fig = _figures.get(key)
            if fig is not None:
                _figures.move_to_end(key)
    if fig is None:
        fig = build()
        fig.__class__ = SharedFigure  # the same figure, its dict form computed once
        if key is not None:
            with _figures_lock:
                _figures[key] = fig
                while len(_figures) > MAX_FIGURES:
                    _figures.popitem(last=False)
    st.plotly_chart(fig, width="stretch")


class SharedFigure(go.Figure):
    """A figure drawn by several sessions: ``st.plotly_chart`` asks for ``to_dict()`` every
    time it draws it (a deep copy, the data packed in base64: most of a chart's cost once
    the figure is built), so the dict is made once and shared. Read only: neither Streamlit
    nor the pages change a figure once it is drawn."""

    def to_dict(self) -> dict:
        shared = getattr(self, "_shared_dict", None)
        if shared is None:
            shared = self._shared_dict = super().to_dict()
        return shared


MAX_FIGURES = 256  # figures kept for the server's sessions; the least recently drawn go first
_figures: OrderedDict[tuple, go.Figure] = OrderedDict()
_figures_lock = threading.Lock()
_drawing = threading.local()  # .run: (store, run info) of the page being drawn


def _closure_key(build: Callable) -> tuple:
    """The plain values ``build`` closes over or takes as defaults (numbers, strings, and
    lists of them); other values (frames, arrays) only by their type."""
    plain = (str, int, float, bool, type(None), np.integer, np.floating)
    key = []
    values = [c.cell_contents for c in build.__closure__ or ()] + list(build.__defaults__ or ())
    for value in values:
        if isinstance(value, plain):
            key.append(value)
        elif isinstance(value, list | tuple) and all(isinstance(v, plain) for v in value):
            key.append(tuple(value))
        else:
            key.append(type(value).__name__)
    return tuple(key)


# -- the frame every page shares ------------------------------------------------------------


def _page(title: str, body: Body) -> None:
    """Title, then a fragment with the run's status line and the page's charts.

    Only a live run is redrawn on a timer (every INTERVAL_KEY seconds, the fragment alone).
    A finished, failed or interrupted run is drawn once: the page then only watches, in a
    fragment that draws nothing (``dashboard/watch.py``), for the run list or this run's status to
    change (a resumed run, a new run), and redraws the whole page when one does."""
    st.title(title)
    path = st.session_state.get(STORE_KEY)
    if path is None:
        st.error("No run store is configured.")
        return
    name = st.session_state.get(RUN_KEY)
    try:
        known = list(data.list_runs(path)["name"])
        status = None if name is None else data.run_info(path, name)["status"]
    except RunNotFoundError:
        status = None
    except StoreError as e:
        _store_error(path, e)
        return
    # live: the run trains, or no run is picked yet and one is starting or waiting for a core
    starting = name is None and bool(runs.active_runs(path) or runs.queued_runs(path))
    live = (status == "running" or starting) and bool(st.session_state.get(LIVE_KEY, True))
    interval = float(st.session_state.get(INTERVAL_KEY, 2.0))

    @st.fragment(run_every=interval if live else None)
    def refresh() -> None:
        try:
            if list(data.list_runs(path)["name"]) != known:
                st.rerun()  # a run appeared or vanished: the sidebar's picker must change
            if name is None:
                _no_run(path)
                return
            info = data.run_info(path, name)
            if info["status"] != status:
                st.rerun()  # started or stopped being live: the timer must change
            _status(info, detailed=body is training_body)
            _drawing.run = (path, info)
            try:
                body(path, info)
            finally:
                _drawing.run = None
        except RunNotFoundError:
            data.forget_run(path, name)
            st.warning(f"Run {name!r} is no longer in the store (it was deleted). "
                       "Pick another run in the sidebar.")
        except StoreError as e:
            _store_error(path, e)
        except Exception as e:  # a page must never show a traceback
            st.error(f"This page could not be drawn: {type(e).__name__}: {e}")

    refresh()
    if not live and st.session_state.get(LIVE_KEY, True):
        watch.watch(lambda: _run_states(path, name), (known, status))


def _run_states(path: str, name: str | None) -> tuple[list[str], str | None]:
    """The run names of the store and the status of run ``name`` (None when not there),
    from the run list all sessions share."""
    table = data.list_runs(path)
    mine = table.loc[table["name"] == name, "status"]
    return list(table["name"]), (str(mine.iloc[0]) if len(mine) else None)


def _store_error(path: str, e: StoreError) -> None:
    if isinstance(e, NotAStoreError):
        st.error(f"Cannot read the run store at `{path}`: {e}. Point `MAHIAX_STORE` at a "
                 "MAHIA-X run store (or a folder for a new one); this file was left untouched.")
    else:
        st.error(f"Cannot read the run store at `{path}`: {e}")


def _no_run(path: str) -> None:
    starting = runs.active_runs(path)
    queued = runs.queued_runs(path)
    if starting:
        names = ", ".join(f"{n!r} (process {p})" for n, p in starting.items())
        st.info(f"Starting {names}; it appears here as soon as it writes its first step.")
    elif queued:
        names = ", ".join(f"{n!r} (number {p} in the queue)" for n, p in queued.items())
        st.info(f"Waiting for a free core: {names}. Every core trains a run already; it "
                "starts on its own.")
    elif not runs.autostart_enabled():
        st.info("The run store is empty. Start a run with the form in the sidebar, or run "
                "`python -m mahiax train --run demo --steps 300`.")
    else:
        st.info("No run selected. Start one with the form in the sidebar.")
    tail = runs.log_tail(path, runs.DEMO_NAME)
    if tail and not starting:
        st.error("The demo run ended before writing anything; its output:")
        st.code(tail)


def _status(info: dict, detailed: bool) -> None:
    """One line on where the run stands; a failure or interruption spelled out."""
    status, name = info["status"], info["name"]
    last = info["last_step"]
    step = "no step yet" if pd.isna(last) else f"last step {int(last)}"
    where = f"**{name}** · {step} · {info['steps']} steps stored · device `{info['device']}`"
    world = info.get("world_size") or 1
    if world > 1:
        where += f" · {world} processes (data parallel; figures over the global batch)"
    if status == "running":
        st.success(f"Running (live) · {where}")
    elif status == "finished":
        st.success(f"Finished · {where}")
    elif status == "interrupted":
        st.warning(f"Interrupted · {where}. The process stopped without finishing; continue "
                   f"it with `python -m mahiax train --run {name} --resume`.")
    elif status == "failed":
        at = "" if pd.isna(info["error_step"]) else f" at step {int(info['error_step'])}"
        st.error(f"Failed{at} · {where}\n\n**{info['error_type']}**{at}: "
                 + ("" if detailed else _short(info["error_message"])))
        if detailed and info["error_message"]:
            st.code(info["error_message"], language=None, wrap_lines=True)
    else:
        st.info(f"{status} · {where}")


def _short(text: str | None, limit: int = 300) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + " ..."


# -- pages ----------------------------------------------------------------------------------


def training_body(path: str, info: dict) -> None:
    """Losses, gradient norm, step time and throughput."""
    df = data.live_scalars(path, info)
    if df.empty:
        st.info("No steps stored yet.")
        return
    last = df.ffill().iloc[-1]
    cols = st.columns(5)
    for col, (label, key, fmt) in zip(cols, (
            ("loss", mk.LOSS, "{:.4f}"), ("grad norm", mk.GRAD_NORM, "{:.3f}"),
            ("step time (s)", mk.STEP_S, "{:.3f}"),
            ("samples / s", mk.SAMPLES_PER_S, "{:.0f}"), ("lr", mk.LR, "{:.2e}")),
            strict=True):
        value = last.get(key, np.nan)
        col.metric(label, "–" if pd.isna(value) else fmt.format(value))
    log_y = st.toggle("log scale for losses", value=True, key="loss_log")
    left, right = st.columns(2)
    with left:
        loss_keys = _present(df, [mk.LOSS, *sorted(c for c in df
                                                    if c.startswith(mk.TASK_LOSS_PREFIX))])
        _chart(lambda: charts.lines(_ds(df[loss_keys]), "Losses (total and per task)", log_y=log_y))
    with right:
        if _present(df, [mk.GRAD_NORM]):
            _chart(lambda: charts.lines(_ds(df[[mk.GRAD_NORM]]),
                                        "Gradient norm (before clipping)"))
    left, right = st.columns(2)
    with left:
        if _present(df, [mk.STEP_S]):
            _chart(lambda: charts.lines(_ds(df[[mk.STEP_S]]), "Step time", "seconds"))
    with right:
        if _present(df, [mk.SAMPLES_PER_S]):
            _chart(lambda: charts.lines(_ds(df[[mk.SAMPLES_PER_S]]), "Throughput",
                                        "samples / s"))
    shown = (mk.LOSS, mk.TASK_LOSS_PREFIX, mk.GRAD_NORM, mk.TIME_PREFIX, mk.MOE_PREFIX,
             mk.TASK_WEIGHT_PREFIX, mk.DWA_PREFIX, mk.MEM_PREFIX, mk.AMP_PREFIX, mk.LR)
    other = [c for c in df.columns if not c.startswith(shown) and df[c].notna().any()]
    if other:
        with st.expander(f"Other metrics of this run ({len(other)})", expanded=True):
            for key in other:
                _chart(lambda key=key: charts.lines(_ds(df[[key]]), key))


def max_vio_labels(window: int) -> dict[str, str]:
    """MaxVio's two readings as the probes log them, key -> legend label; ``window``: the
    steps the run's global MaxVio sums (its ``Cadence.max_vio_window``)."""
    return {mk.MAX_VIO: "this step's batch", mk.MAX_VIO_GLOBAL: f"global: last {window} steps"}


MAX_VIO_TITLE = "MaxVio = max load / mean load − 1 (0 = balanced)"
BALANCE_WORDS = {  # config balance -> why the run has no selection bias to draw
    "aux": "balances the load with the auxiliary loss (`balance = aux`, the Switch loss)",
    "none": "does not balance the load at all (`balance = none`)",
}


def experts_body(path: str, info: dict) -> None:
    """Expert load balance: MaxVio and balance figures, tokens per expert over steps with the
    selection bias beside it (balance = bias), the loads' percentiles, the share of top-k
    choices the bias changed, the current load, aux and z losses, dead experts."""
    tokens = data.live_vectors(path, info, mk.TOKENS_PER_EXPERT)
    if tokens.empty:
        st.info(f"This run logged no expert routing (`{mk.TOKENS_PER_EXPERT}`).")
        return
    tokens = tokens.rename(columns=lambda i: f"expert {i}")
    colours = charts.expert_colours(tokens.shape[1])
    bias = data.live_vectors(path, info, mk.MOE_BIAS)
    df = data.live_scalars(path, info)
    window = Cadence.of_run(info).max_vio_window  # the run's own, else the default
    _expert_metrics(df, has_bias=not bias.empty, window=window)
    current = tokens.iloc[-1]
    dead = [c for c in tokens.columns if current[c] == 0]
    if dead:
        st.warning(f"Dead at step {int(tokens.index[-1])} (no tokens): {', '.join(dead)}")
    view = st.radio("tokens per expert as", ["heatmap", "stacked area (share)"],
                    horizontal=True, key="expert_view")
    shown = _ds(tokens)
    left, right = st.columns(2) if not bias.empty else (st.container(), None)
    with left:
        if view == "heatmap":
            _chart(lambda: charts.heatmap_over_steps(
                shown, "Tokens per expert over steps (tokens routed, per step)", "expert",
                "tokens", row_colours=colours))
        else:
            _chart(lambda: charts.coloured_lines(
                processing.expert_shares(shown), "Share of tokens per expert (per step)",
                "share of the step's tokens", colours, stacked=True))
    if right is not None:
        with right:
            trajectories = _ds(bias.rename(columns=lambda i: f"expert {i}"))
            _chart(lambda: charts.coloured_lines(
                trajectories, "Selection bias per expert (added to routing scores for top-k "
                "only)", "bias", colours[: trajectories.shape[1]]))
    else:
        balance = (info.get("config") or {}).get("balance")
        why = BALANCE_WORDS.get(balance, f"logged no selection bias (`{mk.MOE_BIAS}`): it "
                                         "balances with the auxiliary loss or not at all")
        st.caption(f"No bias chart: this run {why}, so there is no selection bias. A run "
                   "with `--balance bias` draws each expert's bias here, beside the heatmap.")
    left, right = st.columns(2)
    with left:
        labels = max_vio_labels(window)
        max_vio = processing.renamed(df, labels)
        if not max_vio.empty:
            batch, windowed = labels.values()

            def max_vio_chart() -> go.Figure:
                fig = charts.lines(_ds(max_vio), MAX_VIO_TITLE, "MaxVio")
                # the noisy per-batch figure thin and light, the windowed one bold over it
                fig.update_traces(selector=dict(name=batch), line=dict(width=1,
                                                                       color="#9ecae1"))
                fig.update_traces(selector=dict(name=windowed), line=dict(width=2.5,
                                                                          color="#d62728"))
                return fig

            _chart(max_vio_chart)
    with right:
        spread = processing.renamed(df, processing.LOAD_PERCENTILES)
        if not spread.empty:
            _chart(lambda: charts.load_band(
                _ds(spread), "Expert load percentiles (1 = the mean load)",
                "load / mean load"))
    left, right = st.columns(2)
    with left:
        _chart(lambda: charts.bars(current, f"Load at step {int(tokens.index[-1])}", "expert",
                                   "tokens", reference=float(current.sum()) / max(1, len(current))))
    with right:
        if _present(df, [mk.BIAS_FLIPPED]):
            _chart(lambda: charts.lines(
                _ds(df[[mk.BIAS_FLIPPED]] * 100).rename(columns={mk.BIAS_FLIPPED:
                                                                 "changed by the bias"}),
                "Top-k choices the bias changed (% of the step's tokens × k)", "%"))
        else:
            keys = _present(df, [mk.MOE_CV, mk.MOE_ENTROPY])
            if keys:
                _chart(lambda: charts.lines(_ds(df[keys]), "Balance: CV and entropy"))
    left, right = st.columns(2)
    with left:
        keys = _present(df, [mk.MOE_AUX_LOSS, mk.MOE_Z_LOSS])
        balance = (info.get("config") or {}).get("balance", "aux")
        title = "Load-balancing (aux) and z losses" if balance == "aux" else \
            f"Aux loss (measured only: balance = {balance} does not train on it) and z loss"
        if keys:
            _chart(lambda: charts.lines(_ds(df[keys]), title))
    with right:
        if _present(df, [mk.MOE_DEAD]):
            _chart(lambda: charts.lines(_ds(df[[mk.MOE_DEAD]]), "Dead experts per step",
                                        "experts"))


def _expert_metrics(df: pd.DataFrame, has_bias: bool, window: int) -> None:
    """The latest balance figures in a row: MaxVio of the batch and global (over the run's
    ``window`` steps), CV, entropy, dead experts, and with a bias the share of choices it
    changed."""
    shown = [("MaxVio (batch)", mk.MAX_VIO, "{:.3f}"),
             (f"MaxVio (global, {window} steps)", mk.MAX_VIO_GLOBAL, "{:.3f}"),
             ("CV", mk.MOE_CV, "{:.3g}"), ("entropy", mk.MOE_ENTROPY, "{:.3g}"),
             ("dead experts", mk.MOE_DEAD, "{:.0f}")]
    if has_bias:
        shown.append(("choices the bias changed", mk.BIAS_FLIPPED, "{:.1%}"))
    for col, (label, key, fmt) in zip(st.columns(len(shown)), shown, strict=True):
        value = df[key].dropna().iloc[-1] if _present(df, [key]) else np.nan
        col.metric(label, "–" if pd.isna(value) else fmt.format(value))


def memory_nodes_body(path: str, info: dict) -> None:
    """Graph-memory nodes in one shared 2-D PCA plane, their norms, motion and matrices."""
    snaps = data.live_snapshots(path, info, mk.MEMORY_NODES)
    if not snaps:
        st.info(f"This run stored no memory-node snapshots (`{mk.MEMORY_NODES}`).")
        return
    every = sorted(snaps)
    steps = processing.thin_steps(every, MAX_SNAPSHOTS)
    if len(steps) < len(every):
        st.caption(f"Showing {len(steps)} of {len(every)} snapshots, evenly spread (first and "
                   "newest included): trails, PCA and charts stay readable and fast.")
        snaps = {s: snaps[s] for s in steps}
    follow = st.checkbox("follow the newest snapshot", value=True, key="nodes_follow")
    chosen = st.session_state.get("nodes_step")
    if follow or not isinstance(chosen, int | np.integer):
        st.session_state["nodes_step"] = steps[-1]
    elif chosen not in steps:  # the thinned steps moved as the run grew: keep the place
        st.session_state["nodes_step"] = min(steps, key=lambda s: abs(s - chosen))
    step = steps[0]
    if len(steps) > 1:
        step = st.select_slider("step", options=steps, key="nodes_step")
    else:
        st.caption(f"One snapshot so far, at step {step}.")
    def trajectories() -> go.Figure:
        pca = processing.pca_fit(snaps)  # fitted on every snapshot: frames share one plane
        return charts.node_trajectories(processing.node_paths(snaps, pca), step,
                                        "Memory nodes (PCA of all snapshots)", pca.explained)

    _chart(trajectories)
    left, right = st.columns(2)
    with left:
        _chart(lambda: charts.markers(processing.node_norms(snaps), "Node norms", "L2 norm"))
    with right:
        _chart(lambda: charts.markers(processing.node_displacement(snaps),
                                      "Distance moved from the first snapshot", "L2 distance"))
    left, right = st.columns(2)
    with left:
        _chart(lambda: charts.matrix(processing.cosine_similarity(snaps[step]),
                                     f"Cosine similarity of nodes, step {step}", -1.0, 1.0))
    with right:
        adjacency = data.live_snapshots(path, info, mk.MEMORY_ADJACENCY)
        before = [s for s in sorted(adjacency) if s <= step]
        if before:
            _chart(lambda: charts.matrix(np.asarray(adjacency[before[-1]], dtype=float),
                                         f"Diffusion matrix A, step {before[-1]}",
                                         colorscale="Viridis"))
        else:
            st.info(f"No diffusion-matrix snapshot (`{mk.MEMORY_ADJACENCY}`) at or before "
                    "this step.")
    slots = data.live_snapshots(path, info, mk.TINY_SLOTS)
    before = [s for s in sorted(slots) if s <= step]
    if before:
        ring = np.asarray(slots[before[-1]], dtype=float)
        _chart(lambda: charts.matrix(processing.cosine_similarity(ring),
                                     f"TinyMemory: cosine similarity of its {len(ring)} slots "
                                     f"(recent batch summaries), step {before[-1]}", -1.0, 1.0,
                                     label="slot"))


def loss_weights_body(path: str, info: dict) -> None:
    """Loss weight per task, per-task losses and DWA descent ratios."""
    df = data.live_scalars(path, info)
    weights = processing.columns_with_prefix(df, mk.TASK_WEIGHT_PREFIX)
    losses = processing.columns_with_prefix(df, mk.TASK_LOSS_PREFIX)
    ratios = processing.columns_with_prefix(df, mk.DWA_RATIO_PREFIX)
    weighting = (info.get("config") or {}).get("weighting", "unknown")
    st.caption(f"Weighting: **{weighting}**")
    if weights.empty and losses.empty:
        st.info("This run logged no per-task losses or weights.")
        return
    left, right = st.columns(2)
    with left:
        if not weights.empty:
            _chart(lambda: charts.lines(_ds(weights), "Loss weight per task"))
        else:
            st.info("No loss weights were logged.")
    with right:
        if not losses.empty:
            _chart(lambda: charts.lines(_ds(losses), "Loss per task", log_y=True))
    if not ratios.dropna(how="all").empty:
        _chart(lambda: charts.lines(_ds(ratios), "DWA descent ratio L(t-1) / L(t-2) per task"))
    else:
        st.info("No DWA ratios: they are logged only with `--weighting dwa`.")


def memory_body(path: str, info: dict) -> None:
    """Memory by category (parameters, gradients, optimizer state, saved for backward, other)
    stacked over steps, on the device the run measured, with total and peak; then AMP."""
    df = data.live_scalars(path, info)
    device = str(info.get("device") or "")
    gpu = device.startswith("cuda")
    where = f"**{'GPU' if gpu else 'CPU'}** memory (device `{device or 'unknown'}`)"
    # the run's own full-reading cadence where it kept one (the readings alone cannot tell a
    # cadence from the extra reading at a run's last step)
    stored = Cadence.of_run(info).memory_every if info.get("cadence") else None
    mem = processing.memory_by_category(df, sparse_every=stored)
    spikes = data.spike_snapshots(path, info)
    if mem.empty:
        st.info(f"{where}. This run logged no memory by category (it was recorded before "
                "categories were logged): showing the totals it has.")
        _memory_totals(df, gpu)
    else:
        _memory_categories(df, mem, gpu, where, spikes)
    _memory_spikes(df, spikes)
    _amp(df, info)


def _memory_categories(df: pd.DataFrame, mem: processing.MemoryByCategory, gpu: bool,
                       where: str, spikes: dict[int, Path]) -> None:
    """Latest figures, then the stacked chart of the categories with total and peak."""
    if gpu:
        st.info(f"{where}, read from the CUDA allocator every step: 'other' is allocated "
                "minus the known categories; reserved is what the caching allocator holds.")
    else:
        read = "every step" if (mem.every or 1) == 1 else \
            f"read every {mem.every} steps (the markers; a line joins two readings only " \
            "where none is missing)"
        st.info(f"{where}: the bytes of the tensors each category holds, {read}.")
    if mem.sparse:
        every = f"every {mem.sparse_every} steps" if mem.sparse_every else "at some steps"
        if mem.sparse_every and mem.sparse_last and mem.sparse_last % mem.sparse_every:
            every += f" and at step {mem.sparse_last}"
        st.caption(f"{', '.join(mem.sparse)}: read only {every} (a scan of every live "
                   "tensor), so not stacked; the markers are the measured total at those "
                   "steps, and the gap above the stack is what the scan found.")
    last = processing.latest_values(mem.stacked) | processing.latest_values(mem.totals)
    shown = [*mem.stacked.columns, *(c for c in ("total", "peak", "reserved") if c in last)]
    newest = max((step for step, _ in last.values()), default=None)
    cols = st.columns(len(shown))
    for col, label in zip(cols, shown, strict=True):
        step, value = last.get(label, (newest, None))
        older = f" (step {step})" if step != newest else ""
        col.metric(label + older, "–" if value is None else _mib(value))
    stacked, totals = _ds(mem.stacked), mem.totals
    if len(totals) > _max_points():
        totals = _ds(totals)
    title = f"Memory by category ({'GPU' if gpu else 'CPU'})"
    every = processing.usual_gap(stacked.index)  # of the points drawn (maybe downsampled)
    _chart(lambda: charts.memory_stack(stacked, totals, title, every=every,
                                       marks={s: "spike" for s in spikes}))
    if not gpu and _present(df, [mk.MEM_RSS]):
        _chart(lambda: charts.lines(_ds(processing.to_mib(df[[mk.MEM_RSS]])),
                                    "Process RSS (all memory of the process, not only tensors)",
                                    "MiB"))


def _mib(value: float) -> str:
    """A figure already in MiB, labelled, with three significant figures at most, so eight
    figures fit side by side."""
    return f"{value:.0f} MiB" if value >= 100 else f"{value:.3g} MiB"


def _memory_spikes(df: pd.DataFrame, spikes: dict[int, Path]) -> None:
    """Where the memory snapshot of a spike was saved, and how to open it."""
    from mahiax.telemetry.spikes import VIEWER

    for step, file in sorted(spikes.items()):
        jump = df[mk.MEM_SPIKE].get(step) if mk.MEM_SPIKE in df.columns else None
        rose = "" if jump is None or pd.isna(jump) else \
            f": allocated memory rose {jump / MIB:.1f} MiB in one step"
        here = "" if file.exists() else " (not on this machine: the run trained elsewhere)"
        st.warning(f"**Memory spike at step {step}**{rose}. A snapshot of the allocator's "
                   f"history around it was saved to `{file}`{here}. Open it at {VIEWER} "
                   "(drop the file on the page) to see every allocation with the Python "
                   "stack that made it.")


def _memory_totals(df: pd.DataFrame, gpu: bool) -> None:
    """What a run recorded before categories has: allocator totals, or tensor bytes and RSS."""
    if gpu:
        keys = _present(df, [mk.MEM_ALLOCATED, mk.MEM_RESERVED, mk.MEM_PEAK])
        if keys:
            _chart(lambda: charts.lines(_ds(processing.to_mib(df[keys])),
                                        "CUDA allocator", "MiB"))
        else:
            st.info("No CUDA memory readings stored yet.")
        return
    left, right = st.columns(2)
    with left:
        keys = _present(df, [mk.MEM_TENSOR_BYTES, mk.MEM_PEAK, mk.TENSOR_BYTES])
        if keys:
            def tensor_bytes() -> go.Figure:
                sparse = processing.to_mib(df[keys].dropna(how="all"))
                fig = charts.markers(_ds(sparse), "Live tensor bytes", "MiB")
                # the peak so far often equals the reading: dashed, so both stay visible
                fig.update_traces(selector=dict(name=mk.MEM_PEAK), line=dict(dash="dash"),
                                  marker=dict(symbol="circle-open", size=9))
                return fig

            _chart(tensor_bytes)
        else:
            st.info("No tensor-bytes reading stored yet.")
    with right:
        if _present(df, [mk.MEM_RSS]):
            _chart(lambda: charts.lines(_ds(processing.to_mib(df[[mk.MEM_RSS]])),
                                        "Process RSS", "MiB"))
        else:
            st.info("No RSS reading stored.")


def _amp(df: pd.DataFrame, info: dict) -> None:
    """The GradScaler's loss scale and skipped steps (nothing for fp32 runs, said why)."""
    precision = (info.get("config") or {}).get("precision")
    if precision == "fp32":
        st.caption("Mixed precision is off for this run (fp32): no loss scaling, no skipped "
                   "steps. Start a run with precision fp16 to watch the GradScaler.")
        return
    if precision == "bf16":
        st.caption("bf16 autocast needs no loss scaling: the scale stays 1 and no step is "
                   "skipped.")
    if not _present(df, [mk.AMP_SCALE, mk.AMP_SKIPPED]):
        st.info(f"No mixed-precision readings (`{mk.AMP_PREFIX}*`) in this run.")
        return
    total = df[mk.AMP_SKIPPED_TOTAL].dropna() if mk.AMP_SKIPPED_TOTAL in df else pd.Series()
    st.metric("skipped steps (total)", int(total.iloc[-1]) if len(total) else 0)
    left, right = st.columns(2)
    with left:
        _chart(lambda: charts.lines(_ds(df[_present(df, [mk.AMP_SCALE])]), "AMP loss scale",
                                    log_y=True))
    with right:
        if _present(df, [mk.AMP_SKIPPED]):
            _chart(lambda: charts.lines(_ds(df[[mk.AMP_SKIPPED]]),
                                        "Skipped steps (1 = skipped)"))


def training() -> None:
    _page("Training", training_body)


def experts() -> None:
    _page("Expert load balance", experts_body)


def memory_nodes() -> None:
    _page("Memory-node evolution", memory_nodes_body)


def loss_weights() -> None:
    _page("Loss weights", loss_weights_body)


def memory() -> None:
    _page("Memory", memory_body)


PAGES: dict[str, tuple[Callable[[], None], str, str]] = {
    "training": (training, "Training", ":material/show_chart:"),
    "experts": (experts, "Expert load balance", ":material/balance:"),
    "memory-nodes": (memory_nodes, "Memory-node evolution", ":material/hub:"),
    "loss-weights": (loss_weights, "Loss weights", ":material/tune:"),
    "memory": (memory, "Memory", ":material/memory:"),
}


BUG_LAB = "bug-lab"  # url path of the Bug lab page (dashboard/bug_lab.py), after PAGES
ROOT_PAGE = "start"  # the hidden page at the root, which opens the first page


def navigate():
    """Declare the pages (``st.navigation``) and return the one to run. Every listed page has
    its own address, ``/training`` included: Streamlit serves its default page at the root
    only, so the root is a hidden page, and opening it switches at once, before anything is
    drawn, to the first page: ``st.session_state[PAGE_KEY]``, Training unless set (tests
    set it to open each page). The menu lists the run pages (PAGES), then the Bug lab, which
    compares catalog runs rather than showing the picked run."""
    first = st.session_state.get(PAGE_KEY, "training")
    listed = [*((key, func, title, icon) for key, (func, title, icon) in PAGES.items()),
              (BUG_LAB, bug_lab.bug_lab, "Bug lab", ":material/bug_report:")]
    shown = [st.Page(func, title=title, icon=icon, url_path=key)
             for key, func, title, icon in listed]
    target = next(p for p in shown if p.url_path == first)
    root = st.Page(lambda: st.switch_page(target), title="MAHIA-X Lab", url_path=ROOT_PAGE,
                   default=True, visibility="hidden")
    page = st.navigation([root, *shown])
    if page is root:
        st.switch_page(target, query_params=st.query_params.to_dict())
    return page
