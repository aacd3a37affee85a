"""The Bug lab's view of the runs a verdict measured, side by side.

An entry whose outcomes carry per-step series (``Outcome.figures["series"]``: numbers or a
vector a step) and tail figures (``figures["tail"]``: means over the last steps) gets this
view under its verdict: one column per variant with its tail figures and its vector series
(a heatmap per variant on one colour range; the selection bias as one line per expert),
then one chart per number series with a line per variant. ``router-collapse`` is the entry
that does (balance none / aux / bias); the view reads only those keys, so another entry that
measures series gets it too. The figures come from the verdict's own process
(``dashboard/verdict_jobs.py``): what the page shows is what the verdict measured."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import charts, processing

# series key -> (chart title, y or colour-bar title); other keys are shown by their name
SERIES_LABELS = {
    "max_vio": ("MaxVio = max load / mean load − 1 (0 = balanced)", "MaxVio"),
    "dead": ("Dead experts (no token) per step", "experts"),
    "task_loss": ("Task loss (mean over tasks)", "loss"),
    "tokens_per_expert": ("Tokens per expert", "tokens"),
    "bias": ("Selection bias per expert", "bias"),
}
LINE_VECTORS = {"bias"}  # vector series drawn as a line per entry rather than a heatmap
# tail key -> (label, format); other keys are shown by their name
TAIL_LABELS = {
    "max_vio": ("MaxVio", "{:.2f}"),
    "dead": ("dead experts", "{:.1f}"),
    "task_loss": ("task loss", "{:.3f}"),
    "step_ms": ("ms / step", "{:.1f}"),
}
SERIES_HEIGHT = 300  # px: three charts side by side stay compact


def has_series(figures: dict[str, dict]) -> bool:
    """Whether a verdict's outcomes (variant -> figures) carry per-step series to show."""
    return any(isinstance(f.get("series"), dict) and f["series"] for f in figures.values())


def _label(key: str) -> tuple[str, str]:
    return SERIES_LABELS.get(key, (key, ""))


def _is_vector(values: list) -> bool:
    return bool(values) and isinstance(values[0], list | tuple)


def _variant_title(variant: str, labels: dict[str, str], figures: dict) -> str:
    balance = figures.get("balance")
    extra = f" · balance `{balance}`" if balance is not None else ""
    return f"**{variant}** · {labels.get(variant, variant)}{extra}"


_built: OrderedDict[tuple, list[go.Figure]] = OrderedDict()  # figures of measured verdicts
_built_lock = threading.Lock()
MAX_BUILT = 64


def _figures_of(key: tuple, build) -> list[go.Figure]:
    """The figures ``build()`` makes for ``key`` (a measured verdict never changes: built
    once per server, then shared by every session)."""
    with _built_lock:
        found = _built.get(key)
    if found is None:
        found = build()
        with _built_lock:
            _built[key] = found
            while len(_built) > MAX_BUILT:
                _built.popitem(last=False)
    return found


def show(entry_id: str, measured_at: float | None, figures: dict[str, dict],
         labels: dict[str, str]) -> None:
    """The runs the verdict measured, one column per variant (in ``labels``' order), then the
    number series overlaid. ``figures``: variant -> ``Outcome.figures``."""
    variants = [v for v in labels if v in figures] + [v for v in figures if v not in labels]
    series = {v: figures[v].get("series") or {} for v in variants}
    tail_steps = next((f.get("tail_steps") for f in figures.values() if "tail_steps" in f),
                      None)
    over = f"the last {tail_steps} steps" if tail_steps else "the last steps"
    st.markdown(f"**The runs the verdict measured**, side by side: means over {over} "
                "(ms / step: the median step).")
    vector_keys = list(dict.fromkeys(k for s in series.values() for k, v in s.items()
                                     if _is_vector(v)))
    number_keys = list(dict.fromkeys(k for s in series.values() for k, v in s.items()
                                     if v and not _is_vector(v)))

    def build() -> list[go.Figure]:
        from mahiax.bugs.catalog import VARIANT_COLORS  # late: the catalog loads torch

        out = []
        for key in vector_keys:  # variant by variant, on one colour range
            title, unit = _label(key)
            frames = {v: processing.per_step(series[v][key], "expert") for v in variants
                      if series[v].get(key)}
            top = max(float(np.nanmax(f.to_numpy(), initial=0.0)) for f in frames.values())
            for v in variants:
                if v not in frames:
                    out.append(None)
                    continue
                df = frames[v]
                colours = charts.expert_colours(df.shape[1])
                if key in LINE_VECTORS:
                    fig = charts.coloured_lines(df, f"{title} · {v}", unit, colours)
                else:
                    fig = charts.heatmap_over_steps(df, f"{title} · {v}", "expert", unit,
                                                    row_colours=colours, zmax=top or None)
                out.append(fig.update_layout(height=SERIES_HEIGHT))
        for key in number_keys:  # one line per variant
            title, unit = _label(key)
            df = pd.DataFrame({v: processing.per_step(series[v][key], v)[v] for v in variants
                               if series[v].get(key)})
            df.index.name = "step"
            fig = charts.lines(df, title, unit).update_layout(height=SERIES_HEIGHT)
            for trace in fig.data:  # each variant in its colour of the lessons
                if trace.name in VARIANT_COLORS:
                    trace.line.color = VARIANT_COLORS[trace.name]
            out.append(fig)
        return out

    built = _figures_of((entry_id, measured_at), build)
    per_vector = built[: len(vector_keys) * len(variants)]
    overlays = built[len(per_vector):]
    cols = st.columns(len(variants))
    for i, (col, v) in enumerate(zip(cols, variants, strict=True)):
        with col:
            st.markdown(_variant_title(v, labels, figures[v]))
            _tail(figures[v].get("tail") or {})
            for k, key in enumerate(vector_keys):
                fig = per_vector[k * len(variants) + i]
                if fig is not None:
                    st.plotly_chart(fig, width="stretch")
                else:
                    st.caption(f"No {_label(key)[0].lower()}: not measured in this run.")
    for i in range(0, len(overlays), len(variants)):
        for col, fig in zip(st.columns(len(variants)), overlays[i:i + len(variants)],
                            strict=False):
            with col:
                st.plotly_chart(fig, width="stretch")


def _tail(tail: dict) -> None:
    """The tail figures as metrics, two to a row (a third of the page is narrow)."""
    items = [(TAIL_LABELS.get(k, (k, "{:.3g}")), v) for k, v in tail.items()
             if isinstance(v, int | float)]
    for i in range(0, len(items), 2):
        for col, ((label, fmt), value) in zip(st.columns(2), items[i:i + 2], strict=False):
            col.metric(label, "–" if value != value else fmt.format(value))
