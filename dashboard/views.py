"""The dashboard's pages, one function each. Every page draws inside a live fragment that
re-reads only new steps; every store fault becomes a message on the page, never a traceback.

A page draws the run picked in the sidebar and the runs compared with it (``COMPARE_KEY``):
its line charts overlay every run, one colour per run (``charts.run_lines``); the charts
that cannot overlay (heatmaps, stacked areas, the PCA of memory nodes) draw the picked run
and say so."""

from __future__ import annotations

import html
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import bug_lab, charts, class_page, data, my_attempts, processing, runs
from dashboard import page_watch as watch
from dashboard.state import (
    COMPARE_KEY,
    INTERVAL_KEY,
    LIVE_KEY,
    PAGE_KEY,
    POINTS_KEY,
    RUN_KEY,
)
from mahiax import metric_keys as mk
from mahiax.classroom.class_view import CLASS_URL_ENV
from mahiax.store import NotAStoreError, RunNotFoundError, StoreError
from mahiax.telemetry.cadence import Cadence
from mahiax.units import MIB

MAX_SNAPSHOTS = 200  # memory-node snapshots drawn at most (a 100,000-step run stores 4,000)



@dataclass(frozen=True, kw_only=True)
class Shown:
    """The runs a page draws, each as its current row (``data.run_info``): ``main``, the run
    picked in the sidebar, and ``others``, the runs compared with it in the order picked.
    That order (``names``) gives each run its colour, the same on every chart and page."""

    path: str  # the run store
    main: dict
    others: tuple[dict, ...] = ()

    @property
    def infos(self) -> tuple[dict, ...]:
        return (self.main, *self.others)

    @property
    def names(self) -> list[str]:
        return [info["name"] for info in self.infos]

    @property
    def comparing(self) -> bool:
        return bool(self.others)

    @property
    def colours(self) -> dict[str, str]:
        return charts.run_colours(self.names)

    def scalars(self) -> dict[str, pd.DataFrame]:
        """Every shown run's scalars (``data.live_scalars``: only new steps are read, and only
        of a run that trains), by run name, in the order shown."""
        return {info["name"]: data.live_scalars(self.path, info) for info in self.infos}


Body = Callable[[Shown], None]
Pick = Callable[[pd.DataFrame], pd.DataFrame]  # a run's scalars -> the series of one chart


def _max_points() -> int:
    return int(st.session_state.get(POINTS_KEY, 2000))


def _ds(df: pd.DataFrame) -> pd.DataFrame:
    return processing.downsample_minmax(df, _max_points())


def _present(df: pd.DataFrame, keys: list[str]) -> list[str]:
    return [k for k in keys if k in df.columns and df[k].notna().any()]


def _chart(build: Callable[[], go.Figure], *, every_run: bool = False,
           identity: object = ()) -> None:
    """Draw the figure ``build()`` makes, shared by every session drawing the same runs at
    the same step: building a figure (plotly validates every trace) costs more than sending
    it, so thirty viewers of a live run build each chart once per new step, not thirty times.

    The figure is a function of the data the server holds of the runs it draws
    (``data.held_version`` of the picked run of the page's fragment, ``_drawing.shown``, and
    with ``every_run`` of each run compared too, in their order, which sets their colours)
    and of the small values ``build`` closes over (the metric keys, the step picked, log
    scale ...) and ``identity`` (e.g. the function that picks a chart's series): those make
    the key, with where ``build`` is written. A closed-over frame or array is derived from
    the runs' data, so the versions stand for it."""
    shown: Shown | None = getattr(_drawing, "shown", None)
    key = None
    if shown is not None:
        drawn = shown.infos if every_run else (shown.main,)
        key = (tuple(data.held_version(shown.path, info) for info in drawn), _max_points(),
               build.__code__, _closure_key(build), _plain_key(identity))
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
_drawing = threading.local()  # .shown: the Shown runs of the page being drawn


def _closure_key(build: Callable, depth: int = 0) -> tuple:
    """The plain values ``build`` closes over or takes as defaults (see :func:`_plain_key`)."""
    values = [c.cell_contents for c in build.__closure__ or ()] + list(build.__defaults__ or ())
    return tuple(_plain_key(value, depth) for value in values)


_PLAIN = (str, int, float, bool, type(None), np.integer, np.floating)


def _plain_key(value: object, depth: int = 0) -> object:
    """``value`` as part of a figure's key: numbers and strings as they are; lists, tuples
    and dicts of them item by item; a function by its code and what it closes over (a pick
    of series written once and given different keys makes different charts); anything else
    (frames, arrays: derived from the runs' data) only by its type."""
    if isinstance(value, _PLAIN):
        return value
    if depth < 4:
        if isinstance(value, list | tuple):
            return tuple(_plain_key(v, depth + 1) for v in value)
        if isinstance(value, Mapping):
            return tuple((_plain_key(k, depth + 1), _plain_key(v, depth + 1))
                         for k, v in value.items())
        if callable(value) and hasattr(value, "__code__"):
            return value.__code__, _closure_key(value, depth + 1)
    return type(value).__name__


# -- the frame every page shares ------------------------------------------------------------


def _page(title: str, body: Body) -> None:
    """Title, then a fragment with the runs' status lines and the page's charts.

    The page is redrawn on a timer (every INTERVAL_KEY seconds, the fragment alone) only
    while a run it shows trains: the picked run or one compared with it. Runs that are all
    finished, failed or interrupted are drawn once: the page then only watches, in a
    fragment that draws nothing (``dashboard/page_watch.py``), for the run list or a shown run's
    status to change (a resumed run, a new run), and redraws the whole page when one does."""
    st.title(title)
    path = data.session_store()
    if path is None:
        return
    name = st.session_state.get(RUN_KEY)
    compared = _compared_names() if name is not None else []
    try:
        known = list(data.list_runs(path)["name"])
        status = None if name is None else data.run_info(path, name)["status"]
    except RunNotFoundError:
        status = None
    except StoreError as e:
        _store_error(path, e)
        return
    try:
        others, _ = _compared_infos(path, compared)
    except StoreError as e:
        _store_error(path, e)
        return
    compared = [info["name"] for info in others]
    statuses = (status, *(info["status"] for info in others))
    # live: a shown run trains, or no run is picked yet and one is starting or waiting for a
    # core
    starting = name is None and bool(runs.active_runs(path) or runs.queued_runs(path))
    live = ("running" in statuses or starting) and bool(st.session_state.get(LIVE_KEY, True))
    interval = float(st.session_state.get(INTERVAL_KEY, 2.0))

    @st.fragment(run_every=interval if live else None)
    def refresh() -> None:
        try:
            if list(data.list_runs(path)["name"]) != known:
                st.rerun()  # a run appeared or vanished: the sidebar's pickers must change
            if name is None:
                _no_run(path)
                return
            info = data.run_info(path, name)
            now, gone = _compared_infos(path, compared)
            if (info["status"], *(o["status"] for o in now)) != statuses and not gone:
                st.rerun()  # started or stopped being live: the timer must change
            for other in gone:
                st.warning(f"Compared run {other!r} is no longer in the store (it was "
                           "deleted): the other runs are drawn.")
            shown = Shown(path=path, main=info, others=tuple(now))
            _status(info, detailed=body is training_body)
            if shown.comparing:
                _compared_status(shown)
            _drawing.shown = shown
            try:
                body(shown)
            finally:
                _drawing.shown = None
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
        # the watch compares the run list with itself: the fresh statuses above can be ahead
        # of the list (cached for a second), and comparing the two would rerun the page
        # until the list caught up
        shown_names = [name, *compared]
        try:
            drawn = _run_states(path, shown_names)
        except StoreError:  # the page said so; the watch redraws once the store reads again
            drawn = None
        watch.watch(lambda: _run_states(path, shown_names), drawn)


def _compared_names() -> list[str]:
    """The runs picked in the sidebar to compare with the picked run, in the order picked
    (the picked run itself left out)."""
    main = st.session_state.get(RUN_KEY)
    return [str(n) for n in st.session_state.get(COMPARE_KEY) or [] if n != main]


def _compared_infos(path: str, names: list[str]) -> tuple[list[dict], list[str]]:
    """The current rows of the compared runs ``names`` that are in the store, and the names
    of those no longer there (deleted: the server forgets their series)."""
    infos, gone = [], []
    for other in names:
        try:
            infos.append(data.run_info(path, other))
        except RunNotFoundError:
            data.forget_run(path, other)
            gone.append(other)
    return infos, gone


def _run_states(path: str, names: list[str | None]) -> tuple[list[str], tuple]:
    """The run names of the store and the status of each run of ``names`` (None when not
    there), from the run list all sessions share."""
    table = data.list_runs(path)
    status = dict(zip(table["name"], table["status"], strict=True))
    return list(table["name"]), tuple(None if n not in status else str(status[n])
                                      for n in names)


def _compared_status(shown: Shown) -> None:
    """One line naming each shown run in its chart colour, with where each compared run
    stands; which charts overlay them."""
    colours = shown.colours

    def swatch(info: dict) -> str:
        last = info["last_step"]
        step = "no step yet" if pd.isna(last) else f"last step {int(last)}"
        where = "" if info is shown.main else f" · {info['status']} · {step}"
        return (f'<span style="color:{colours[info["name"]]}">■</span> '
                f"<b>{html.escape(info['name'])}</b>{html.escape(where)}")

    st.caption("Compared: " + " &nbsp; ".join(swatch(i) for i in shown.infos)
               + ". The line charts overlay every run, one colour per run; the figures above "
                 "and the charts that cannot overlay are the picked run's.",
               unsafe_allow_html=True)


def _main_only(shown: Shown, what: str) -> None:
    """While runs are compared, say that ``what`` (a chart that cannot overlay runs) shows
    the picked run only."""
    if shown.comparing:
        st.caption(f"{what}: **{shown.main['name']}** only (comparing draws the line charts "
                   "of every run).")


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


def _lines(shown: Shown, pick: Pick, title: str, y_title: str = "", *, log_y: bool = False,
           markers: bool = False, styles: Mapping[str, dict] | None = None) -> bool:
    """A line chart of the series ``pick`` takes from a run's scalars (a frame, index step,
    a column per series): the picked run's alone, or while runs are compared every shown
    run's, overlaid in its colour (``charts.run_lines``). Each run is downsampled on its own
    (at most the chosen points per chart). A run's series without any value are left out;
    a chart no shown run has a value for is not drawn (returns False). ``styles``: series ->
    trace properties (``line``, ``marker``) added to its traces."""
    frames = {}
    for run, df in shown.scalars().items():
        part = pick(df)
        part = part.loc[:, part.notna().any()]
        if not part.empty:
            frames[run] = part
    if not frames:
        return False
    if not shown.comparing:
        (only,) = frames.values()

        def build() -> go.Figure:
            shown_df = _ds(only)
            fig = charts.markers(shown_df, title, y_title) if markers else \
                charts.lines(shown_df, title, y_title, log_y=log_y)
            for label, style in (styles or {}).items():
                fig.update_traces(selector=dict(name=label), **style)
            return fig
    else:
        colours = shown.colours

        def build() -> go.Figure:
            return charts.run_lines({run: _ds(df) for run, df in frames.items()}, title,
                                    y_title, log_y=log_y, markers=markers, colours=colours,
                                    styles=styles)
    _chart(build, every_run=True, identity=(pick, styles))
    return True


def _keys(*keys: str) -> Pick:
    """A pick of the scalars ``keys`` (those a run has)."""
    return lambda df: df[[k for k in keys if k in df.columns]]


def _grid(draws: list[Callable[[], object]]) -> None:
    """Draw the charts ``draws`` two to a row."""
    for i in range(0, len(draws), 2):
        for col, draw in zip(st.columns(2), draws[i:i + 2], strict=False):
            with col:
                draw()


def _losses(df: pd.DataFrame) -> pd.DataFrame:
    """The total loss, then each task's (``loss/<task>``, tasks in name order)."""
    tasks = sorted(c for c in df.columns if c.startswith(mk.TASK_LOSS_PREFIX))
    return df[[c for c in (mk.LOSS,) if c in df.columns] + tasks]


def training_body(shown: Shown) -> None:
    """Losses, gradient norm, step time and throughput."""
    df = data.live_scalars(shown.path, shown.main)
    if df.empty and not shown.comparing:
        st.info("No steps stored yet.")
        return
    last = df.ffill().iloc[-1] if len(df) else pd.Series(dtype=float)
    cols = st.columns(5)
    for col, (label, key, fmt) in zip(cols, (
            ("loss", mk.LOSS, "{:.4f}"), ("grad norm", mk.GRAD_NORM, "{:.3f}"),
            ("step time (s)", mk.STEP_S, "{:.3f}"),
            ("samples / s", mk.SAMPLES_PER_S, "{:.0f}"), ("lr", mk.LR, "{:.2e}")),
            strict=True):
        value = last.get(key, np.nan)
        col.metric(label, "–" if pd.isna(value) else fmt.format(value))
    log_y = st.toggle("log scale for losses", value=True, key="loss_log")
    if shown.comparing:  # a chart per figure, as the runs overlay: the total, then each task
        losses = [lambda: _lines(shown, _keys(mk.LOSS), "Loss (total)", log_y=log_y),
                  lambda: _lines(shown, _prefixed(mk.TASK_LOSS_PREFIX), "Loss per task",
                                 log_y=log_y)]
    else:
        losses = [lambda: _lines(shown, _losses, "Losses (total and per task)", log_y=log_y)]
    _grid([*losses,
           lambda: _lines(shown, _keys(mk.GRAD_NORM), "Gradient norm (before clipping)"),
           lambda: _lines(shown, _keys(mk.STEP_S), "Step time", "seconds"),
           lambda: _lines(shown, _keys(mk.SAMPLES_PER_S), "Throughput", "samples / s")])
    shown_prefixes = (mk.LOSS, mk.TASK_LOSS_PREFIX, mk.GRAD_NORM, mk.TIME_PREFIX,
                      mk.MOE_PREFIX, mk.TASK_WEIGHT_PREFIX, mk.DWA_PREFIX, mk.MEM_PREFIX,
                      mk.AMP_PREFIX, mk.LR)
    other = list(dict.fromkeys(
        c for frame in shown.scalars().values() for c in frame.columns
        if not c.startswith(shown_prefixes) and frame[c].notna().any()))
    if other:
        with st.expander(f"Other metrics of {'these runs' if shown.comparing else 'this run'} "
                         f"({len(other)})", expanded=True):
            for key in other:
                _lines(shown, _keys(key), key)


def max_vio_labels(window: int) -> dict[str, str]:
    """MaxVio's two readings as the probes log them, key -> legend label; ``window``: the
    steps the run's global MaxVio sums (its ``Cadence.max_vio_window``)."""
    return {mk.MAX_VIO: "this step's batch", mk.MAX_VIO_GLOBAL: f"global: last {window} steps"}


MAX_VIO_TITLE = "MaxVio = max load / mean load − 1 (0 = balanced)"
BALANCE_WORDS = {  # config balance -> why the run has no selection bias to draw
    "aux": "balances the load with the auxiliary loss (`balance = aux`, the Switch loss)",
    "none": "does not balance the load at all (`balance = none`)",
}


def experts_body(shown: Shown) -> None:
    """Expert load balance: MaxVio and balance figures, tokens per expert over steps with the
    selection bias beside it (balance = bias), the loads' percentiles, the share of top-k
    choices the bias changed, the current load, aux and z losses, dead experts. Compared
    runs overlay on the line charts; the heatmap, the bias per expert, the percentile band
    and the current load are the picked run's."""
    path, info = shown.path, shown.main
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
    routed = _ds(tokens)
    left, right = st.columns(2) if not bias.empty else (st.container(), None)
    with left:
        if view == "heatmap":
            _chart(lambda: charts.heatmap_over_steps(
                routed, "Tokens per expert over steps (tokens routed, per step)", "expert",
                "tokens", row_colours=colours))
        else:
            _chart(lambda: charts.coloured_lines(
                processing.expert_shares(routed), "Share of tokens per expert (per step)",
                "share of the step's tokens", colours, stacked=True))
        _main_only(shown, "Tokens per expert")
    if right is not None:
        with right:
            trajectories = _ds(bias.rename(columns=lambda i: f"expert {i}"))
            _chart(lambda: charts.coloured_lines(
                trajectories, "Selection bias per expert (added to routing scores for top-k "
                "only)", "bias", colours[: trajectories.shape[1]]))
            _main_only(shown, "Selection bias per expert")
    else:
        balance = (info.get("config") or {}).get("balance")
        why = BALANCE_WORDS.get(balance, f"logged no selection bias (`{mk.MOE_BIAS}`): it "
                                         "balances with the auxiliary loss or not at all")
        st.caption(f"No bias chart: this run {why}, so there is no selection bias. A run "
                   "with `--balance bias` draws each expert's bias here, beside the heatmap.")

    def spread() -> None:
        band = processing.renamed(df, processing.LOAD_PERCENTILES)
        if not band.empty:
            _chart(lambda: charts.load_band(
                _ds(band), "Expert load percentiles (1 = the mean load)", "load / mean load"))
            _main_only(shown, "Load percentiles")

    def load() -> None:
        _chart(lambda: charts.bars(current, f"Load at step {int(tokens.index[-1])}", "expert",
                                   "tokens", reference=float(current.sum()) / max(1, len(current))))
        _main_only(shown, "Current load")

    scalars = shown.scalars()
    flipped = any(_present(frame, [mk.BIAS_FLIPPED]) for frame in scalars.values())
    cv_entropy = [] if flipped and not shown.comparing else \
        [lambda: _lines(shown, _keys(mk.MOE_CV, mk.MOE_ENTROPY), "Balance: CV and entropy")]
    balances = {(i.get("config") or {}).get("balance", "aux") for i in shown.infos}
    balance = balances.pop() if len(balances) == 1 else None
    aux_title = "Load-balancing (aux) and z losses" if balance == "aux" else \
        f"Aux loss (measured only: balance = {balance} does not train on it) and z loss" \
        if balance is not None else \
        "Aux loss (trained on only by the runs with balance = aux) and z loss"
    _grid([lambda: _max_vio(shown), spread, load,
           *([lambda: _lines(shown, _bias_flipped, "Top-k choices the bias changed (% of the "
                             "step's tokens × k)", "%")] if flipped else []),
           *cv_entropy,
           lambda: _lines(shown, _keys(mk.MOE_AUX_LOSS, mk.MOE_Z_LOSS), aux_title),
           lambda: _lines(shown, _keys(mk.MOE_DEAD), "Dead experts per step", "experts")])


def _bias_flipped(df: pd.DataFrame) -> pd.DataFrame:
    """The share of top-k choices the selection bias changed, in percent."""
    return (df[[c for c in (mk.BIAS_FLIPPED,) if c in df.columns]] * 100) \
        .rename(columns={mk.BIAS_FLIPPED: "changed by the bias"})


def _max_vio(shown: Shown) -> None:
    """MaxVio of each step's batch (thin) and over the run's window of steps (bold). Runs
    compared with different windows share one label for the windowed figure, and a caption
    gives each run's window."""
    windows = {i["name"]: Cadence.of_run(i).max_vio_window for i in shown.infos}
    labels = max_vio_labels(windows[shown.main["name"]])
    if len(set(windows.values())) > 1:
        labels = {mk.MAX_VIO: labels[mk.MAX_VIO], mk.MAX_VIO_GLOBAL: "global: the run's window"}
    batch, windowed = labels.values()
    # the noisy per-batch figure thin, the windowed one bold over it
    styles = {batch: {"line": {"width": 1, "dash": "dot"}, "opacity": 0.7},
              windowed: {"line": {"width": 2.5, "dash": "solid"}}} if shown.comparing else \
             {batch: {"line": {"width": 1, "color": "#9ecae1"}},
              windowed: {"line": {"width": 2.5, "color": "#d62728"}}}
    drawn = _lines(shown, lambda df: processing.renamed(df, labels), MAX_VIO_TITLE, "MaxVio",
                   styles=styles)
    if drawn and len(set(windows.values())) > 1:
        st.caption("Global MaxVio windows: " + ", ".join(
            f"{name}: last {window} steps" for name, window in windows.items()))


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


def memory_nodes_body(shown: Shown) -> None:
    """Graph-memory nodes in one shared 2-D PCA plane, their norms, motion and matrices: a
    line per node, so every chart here is the picked run's, compared runs or not."""
    path, info = shown.path, shown.main
    _main_only(shown, "Memory nodes (a line or a point per node on every chart)")
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


def loss_weights_body(shown: Shown) -> None:
    """Loss weight per task, per-task losses and DWA descent ratios, every shown run's."""
    weightings = {i["name"]: (i.get("config") or {}).get("weighting", "unknown")
                  for i in shown.infos}
    if shown.comparing:
        st.caption("Weighting: " + ", ".join(f"{name} **{w}**"
                                             for name, w in weightings.items()))
    else:
        st.caption(f"Weighting: **{weightings[shown.main['name']]}**")
    weights = _prefixed(mk.TASK_WEIGHT_PREFIX)
    if not any(not p(df).empty for df in shown.scalars().values()
               for p in (weights, _prefixed(mk.TASK_LOSS_PREFIX))):
        st.info("This run logged no per-task losses or weights.")
        return
    left, right = st.columns(2)
    with left:
        if not _lines(shown, weights, "Loss weight per task"):
            st.info("No loss weights were logged.")
    with right:
        _lines(shown, _prefixed(mk.TASK_LOSS_PREFIX), "Loss per task", log_y=True)
    if not _lines(shown, _prefixed(mk.DWA_RATIO_PREFIX),
                  "DWA descent ratio L(t-1) / L(t-2) per task"):
        st.info("No DWA ratios: they are logged only with `--weighting dwa`.")


def _prefixed(prefix: str) -> Pick:
    """A pick of the scalars ``<prefix><task>``, named by their task."""
    return lambda df: processing.columns_with_prefix(df, prefix)


def memory_body(shown: Shown) -> None:
    """Memory by category (parameters, gradients, optimizer state, saved for backward, other)
    stacked over steps, on the device the run measured, with total and peak; then AMP.
    Compared runs: the stack is the picked run's, their totals overlay below it."""
    path, info = shown.path, shown.main
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
        _memory_totals(shown, gpu)
    else:
        _memory_categories(shown, mem, gpu, where, spikes)
    _memory_spikes(df, spikes)
    _amp(shown)


def _memory_categories(shown: Shown, mem: processing.MemoryByCategory, gpu: bool,
                       where: str, spikes: dict[int, Path]) -> None:
    """Latest figures, then the stacked chart of the categories with total and peak (the
    picked run's); compared runs' totals overlaid on a chart of their own."""
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
    figures = [*mem.stacked.columns, *(c for c in ("total", "peak", "reserved") if c in last)]
    newest = max((step for step, _ in last.values()), default=None)
    cols = st.columns(len(figures))
    for col, label in zip(cols, figures, strict=True):
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
    if shown.comparing:
        _main_only(shown, "Memory by category (stacked)")
        _lines(shown, _memory_totals_mib, "Memory totals (total, peak, reserved)", "MiB",
               markers=True)
    if not gpu:
        _lines(shown, _rss_mib, "Process RSS (all memory of the process, not only tensors)",
               "MiB")


def _rss_mib(df: pd.DataFrame) -> pd.DataFrame:
    """The process's resident memory in MiB."""
    return processing.to_mib(df[[k for k in (mk.MEM_RSS,) if k in df.columns]])


def _memory_totals_mib(df: pd.DataFrame) -> pd.DataFrame:
    """The measured total, peak and reserve in MiB, at the steps any was read."""
    keys = [k for k in processing.MEMORY_TOTALS if k in df.columns]
    return processing.to_mib(df[keys].dropna(how="all")) \
        .rename(columns=processing.MEMORY_TOTALS)


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


def _memory_totals(shown: Shown, gpu: bool) -> None:
    """What a run recorded before categories has: allocator totals, or tensor bytes and RSS
    (every shown run's)."""
    if gpu:
        if not _lines(shown, lambda df: processing.to_mib(
                df[[k for k in (mk.MEM_ALLOCATED, mk.MEM_RESERVED, mk.MEM_PEAK) if k in df]]),
                "CUDA allocator", "MiB"):
            st.info("No CUDA memory readings stored yet.")
        return
    left, right = st.columns(2)
    with left:
        tensor_keys = (mk.MEM_TENSOR_BYTES, mk.MEM_PEAK, mk.TENSOR_BYTES)
        # the peak so far often equals the reading: dashed and open, so both stay visible
        peak = {mk.MEM_PEAK: {"line": {"dash": "dash"},
                              "marker": {"symbol": "circle-open", "size": 9}}}
        if not _lines(shown, lambda df: processing.to_mib(
                df[[k for k in tensor_keys if k in df]].dropna(how="all")),
                "Live tensor bytes", "MiB", markers=True, styles=peak):
            st.info("No tensor-bytes reading stored yet.")
    with right:
        if not _lines(shown, _rss_mib, "Process RSS", "MiB"):
            st.info("No RSS reading stored.")


def _amp(shown: Shown) -> None:
    """The GradScaler's loss scale and skipped steps (nothing for fp32 runs, said why), as
    the picked run's precision has them; compared runs overlay."""
    df = data.live_scalars(shown.path, shown.main)
    precision = (shown.main.get("config") or {}).get("precision")
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
    _grid([lambda: _lines(shown, _keys(mk.AMP_SCALE), "AMP loss scale", log_y=True),
           lambda: _lines(shown, _keys(mk.AMP_SKIPPED), "Skipped steps (1 = skipped)")])


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
MY_ATTEMPTS = "my-attempts"  # url path of the learner's attempts (dashboard/my_attempts.py)
CLASS = "class"  # url path of the instructor's class page (dashboard/class_page.py)
ROOT_PAGE = "start"  # the hidden page at the root, which opens the first page


def navigate():
    """Declare the pages (``st.navigation``) and return the one to run. Every listed page has
    its own address, ``/training`` included: Streamlit serves its default page at the root
    only, so the root is a hidden page, and opening it switches at once, before anything is
    drawn, to the first page: ``st.session_state[PAGE_KEY]``, Training unless set (tests
    set it to open each page). The menu lists the run pages (PAGES), then the Bug lab, which
    compares catalog runs rather than showing the picked run, then My attempts, the
    learner's own exercise checks, then the instructor's Class page: listed only on a hub
    (``MAHIAX_CLASS_URL`` set), at its address everywhere."""
    first = st.session_state.get(PAGE_KEY, "training")
    on_hub = bool(os.environ.get(CLASS_URL_ENV, "").strip())
    listed = [*((key, func, title, icon, True) for key, (func, title, icon) in PAGES.items()),
              (BUG_LAB, bug_lab.bug_lab, "Bug lab", ":material/bug_report:", True),
              (MY_ATTEMPTS, my_attempts.my_attempts, "My attempts", ":material/checklist:",
               True),
              (CLASS, class_page.class_page, "Class", ":material/groups:", on_hub)]
    shown = [st.Page(func, title=title, icon=icon, url_path=key,
                     visibility="visible" if visible else "hidden")
             for key, func, title, icon, visible in listed]
    target = next(p for p in shown if p.url_path == first)
    root = st.Page(lambda: st.switch_page(target), title="MAHIA-X Lab", url_path=ROOT_PAGE,
                   default=True, visibility="hidden")
    page = st.navigation([root, *shown])
    if page is root:
        st.switch_page(target, query_params=st.query_params.to_dict())
    return page
