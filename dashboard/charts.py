"""Plotly figure builders: pure functions from DataFrames/arrays to figures, no Streamlit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go

from dashboard.processing import reading_runs

# legend below the plot: above it, a long legend wraps over the chart's title
_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), height=340, hovermode="x unified",
               legend=dict(orientation="h", yanchor="top", y=-0.22, x=0))


def lines(df: pd.DataFrame, title: str, y_title: str = "", log_y: bool = False) -> go.Figure:
    """One line per column against the index (steps); gaps from NaN are bridged."""
    fig = go.Figure()
    for col in df.columns:
        fig.add_trace(go.Scatter(x=df.index, y=df[col], mode="lines", name=str(col),
                                   connectgaps=True))
    fig.update_layout(title=title, xaxis_title=df.index.name or "step", yaxis_title=y_title,
                      **_LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


# One colour per run when runs are compared (Plotly's qualitative "D3"): a run's colour is its
# place among the runs shown together, so no two of them share one (up to ten runs), and a
# run keeps its colour on every chart and page as long as the selection is the same.
RUN_COLOURS = plotly.colors.qualitative.D3
# one dash per series of a run (the first solid), so a run's colour stays its own on a chart
# of several series (e.g. each task's loss)
SERIES_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def run_colours(names: Sequence[str]) -> dict[str, str]:
    """Each run's colour, by its place in ``names`` (the order the runs are shown in: on
    the dashboard the picked run first, then the compared runs in the order picked)."""
    return {name: RUN_COLOURS[i % len(RUN_COLOURS)] for i, name in enumerate(names)}


def run_lines(frames: Mapping[str, pd.DataFrame], title: str, y_title: str = "", *,
              log_y: bool = False, markers: bool = False,
              colours: Mapping[str, str] | None = None,
              styles: Mapping[str, dict] | None = None) -> go.Figure:
    """Several runs' series overlaid on one step axis: ``frames`` maps a run's name to its
    frame (index step, a column per series), in the order the runs are shown.

    Each run is drawn in its colour (``colours``, else :func:`run_colours` of the frames'
    order), each series with its own dash, the same for every run; a trace is named after
    its run, ``run · series`` when the chart has several series, so the legend and the hover
    name both. Runs of different lengths each draw the steps they have. ``styles``: series ->
    trace properties to add (e.g. ``{"line": {"width": 1}}`` for a noisy series); a style's
    colour is ignored, the run's colour is what tells the runs apart."""
    colours = colours or run_colours(list(frames))
    series = list(dict.fromkeys(col for df in frames.values() for col in df.columns))
    fig = go.Figure()
    for run, df in frames.items():
        colour = colours.get(run, RUN_COLOURS[0])
        for col in df.columns:
            style = dict((styles or {}).get(col, {}))
            line = {"dash": SERIES_DASHES[series.index(col) % len(SERIES_DASHES)],
                    **style.pop("line", {}), "color": colour}
            marker = {**style.pop("marker", {}), "color": colour}
            name = str(run) if len(series) == 1 else f"{run} · {col}"
            fig.add_trace(go.Scatter(x=df.index, y=df[col], name=name, connectgaps=True,
                                     mode="lines+markers" if markers else "lines",
                                     line=line, marker=marker, **style))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=y_title, **_LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def markers(df: pd.DataFrame, title: str, y_title: str = "") -> go.Figure:
    """Sparse series (e.g. readings every N steps) as lines with markers."""
    fig = lines(df, title, y_title)
    fig.update_traces(mode="lines+markers")
    return fig


def stacked_area(df: pd.DataFrame, title: str, y_title: str = "") -> go.Figure:
    """Columns stacked as areas over the index (e.g. each expert's share of tokens)."""
    fig = go.Figure()
    for col in df.columns:
        fig.add_trace(go.Scatter(x=df.index, y=df[col], mode="lines", name=str(col),
                                 stackgroup="one", line=dict(width=0.5)))
    fig.update_layout(title=title, xaxis_title=df.index.name or "step", yaxis_title=y_title,
                      **_LAYOUT)
    return fig


# one colour per memory category, the same on every chart (Plotly's qualitative "Safe")
_CATEGORY_COLOURS = plotly.colors.qualitative.Safe
_TOTAL_STYLES = {  # lines drawn over the stack
    "total": dict(color="black", width=1.5),
    "peak": dict(color="black", width=1.5, dash="dash"),
    "reserved": dict(color="grey", width=1.5, dash="dot"),
}


def memory_stack(stacked: pd.DataFrame, totals: pd.DataFrame, title: str,
                 y_title: str = "MiB", y_max: float | None = None,
                 marks: dict[int, str] | None = None, every: int | None = None) -> go.Figure:
    """Memory categories stacked as areas over steps, the total, peak and reserve as lines.

    ``stacked``: column per category (same order and colours on every chart); ``totals``: any
    of ``total``, ``peak``, ``reserved``, NaN where not read. ``every``: the steps between two
    readings of the stack; past one, each reading is a marker, and where readings are
    missing (a gap longer than their cadence) the areas stop rather than join across steps
    nothing read. Totals read at under half the stack's steps are markers only.
    ``y_max`` fixes the y range, so charts of several runs can be compared by eye; ``marks``
    draws a dotted vertical line at each step given, with its label (e.g. a spike)."""
    fig = go.Figure()
    runs = reading_runs(stacked.index, every)
    for r, steps in enumerate(runs):
        part = stacked.loc[steps]
        for i, col in enumerate(stacked.columns):
            colour = _CATEGORY_COLOURS[i % len(_CATEGORY_COLOURS)]
            fig.add_trace(go.Scatter(
                x=part.index, y=part[col], name=str(col), legendgroup=str(col),
                showlegend=r == 0, mode="lines+markers" if every and every > 1 else "lines",
                marker=dict(size=4), stackgroup=f"memory-{r}",
                line=dict(width=0.5, color=colour), fillcolor=colour))
    for col in totals.columns:
        series = totals[col].dropna()
        sparse = len(series) < 0.5 * max(1, len(stacked))
        fig.add_trace(go.Scatter(x=series.index, y=series, name=str(col),
                                 mode="markers" if sparse else "lines",
                                 line=_TOTAL_STYLES.get(str(col), {})))
    for step, label in (marks or {}).items():
        fig.add_vline(x=step, line_dash="dot", line_color="red", annotation_text=label)
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=y_title, **_LAYOUT)
    if y_max is not None:
        fig.update_yaxes(range=[0, y_max])
    return fig


def heatmap_over_steps(df: pd.DataFrame, title: str, row_label: str,
                       colorbar: str = "", row_colours: list[str] | None = None,
                       zmax: float | None = None) -> go.Figure:
    """Columns as rows of a heatmap over steps (x), e.g. tokens per expert. With
    ``row_colours``, the first column is the top row and each row's label carries its colour
    (a square), so a line chart of the same columns in those colours reads beside it.
    ``zmax`` fixes the colour range to 0..zmax, so heatmaps of several runs compare by eye."""
    scale = {} if zmax is None else dict(zmin=0.0, zmax=zmax)
    fig = go.Figure(go.Heatmap(z=df.to_numpy().T, x=df.index, y=[str(c) for c in df.columns],
                               colorscale="Viridis", colorbar=dict(title=colorbar), **scale))
    fig.update_layout(title=title, xaxis_title=df.index.name or "step", yaxis_title=row_label,
                      **{**_LAYOUT, "hovermode": "closest"})
    if row_colours is not None:
        names = [str(c) for c in df.columns]
        fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=names,
                         ticktext=[f'<span style="color:{colour}">■</span> {name}'
                                   for name, colour in zip(names, row_colours, strict=True)])
    return fig


# one colour per expert, the same on the heatmap's labels, the share and the bias charts
EXPERT_COLOURS = plotly.colors.qualitative.Dark24


def expert_colours(n: int) -> list[str]:
    """The colours of experts 0 .. n-1 (the palette repeats past 24 experts)."""
    return [EXPERT_COLOURS[i % len(EXPERT_COLOURS)] for i in range(n)]


# lines beyond this many (e.g. 16 experts' bias) go without a legend, which would take more
# room than the chart: the heatmap's row labels beside them carry the same colours, and the
# hover names each line
MAX_LEGEND = 8


def coloured_lines(df: pd.DataFrame, title: str, y_title: str, colours: list[str],
                   stacked: bool = False) -> go.Figure:
    """One line per column in the given colours, legend in column order (e.g. one per
    expert; none past MAX_LEGEND lines); ``stacked`` stacks them as areas (shares)."""
    fig = stacked_area(df, title, y_title) if stacked else lines(df, title, y_title)
    for trace, colour in zip(fig.data, colours, strict=True):
        trace.line.color = colour
        if stacked:
            trace.fillcolor = colour
    fig.update_layout(legend_traceorder="normal",
                      showlegend=stacked or len(df.columns) <= MAX_LEGEND)
    return fig


# percentile bands of the expert loads: label -> line style (the band spans min to max)
_BAND_LINES = {
    "p99": dict(color="#d62728", width=1.5, dash="dot"),
    "p90": dict(color="#ff7f0e", width=1.5, dash="dash"),
    "p50": dict(color="#1f77b4", width=2),
}


def load_band(df: pd.DataFrame, title: str, y_title: str = "") -> go.Figure:
    """The spread of the expert loads over steps: a shaded band from ``min`` to ``max``,
    lines for ``p50``, ``p90``, ``p99`` (any of these columns present), and a dashed line at
    1 (every expert at the mean load)."""
    fig = go.Figure()
    band = dict(mode="lines", line=dict(width=0.5, color="rgba(90,90,90,0.6)"),
                connectgaps=True)
    if "max" in df:
        fig.add_trace(go.Scatter(x=df.index, y=df["max"], name="max", **band))
    if "min" in df:
        fill = dict(fill="tonexty", fillcolor="rgba(90,90,90,0.15)") if "max" in df else {}
        fig.add_trace(go.Scatter(x=df.index, y=df["min"], name="min", **band, **fill))
    for label, style in _BAND_LINES.items():
        if label in df:
            fig.add_trace(go.Scatter(x=df.index, y=df[label], name=label, mode="lines",
                                     line=style, connectgaps=True))
    fig.add_hline(y=1.0, line_dash="dash", line_color="black", annotation_text="mean load")
    fig.update_layout(title=title, xaxis_title=df.index.name or "step", yaxis_title=y_title,
                      **_LAYOUT)
    return fig


def bars(values: pd.Series, title: str, x_title: str, y_title: str,
         reference: float | None = None) -> go.Figure:
    """A bar per entry, with an optional dashed reference line (e.g. the uniform load)."""
    fig = go.Figure(go.Bar(x=[str(i) for i in values.index], y=values.to_numpy()))
    if reference is not None:
        fig.add_hline(y=reference, line_dash="dash", annotation_text="uniform")
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title,
                      **{**_LAYOUT, "hovermode": "closest"})
    return fig


def matrix(m: np.ndarray, title: str, zmin: float | None = None, zmax: float | None = None,
           colorscale: str = "RdBu_r", label: str = "node") -> go.Figure:
    """A square matrix (similarity, adjacency) as a heatmap, row 0 at the top."""
    labels = [str(i) for i in range(m.shape[0])]
    fig = go.Figure(go.Heatmap(z=m, x=labels, y=labels, zmin=zmin, zmax=zmax,
                               colorscale=colorscale))
    fig.update_layout(title=title, xaxis_title=label, yaxis_title=label,
                      **{**_LAYOUT, "height": 380, "hovermode": "closest"})
    fig.update_yaxes(autorange="reversed", scaleanchor="x")
    return fig


def node_trajectories(paths: pd.DataFrame, step: int, title: str,
                      explained: np.ndarray | None = None) -> go.Figure:
    """Each node's 2-D path up to ``step`` (faint line) and its position at ``step`` (marker).

    The axes are fixed to the range of all steps, so moving the slider shows motion rather
    than rescaling."""
    fig = go.Figure()
    upto = paths[paths["step"] <= step]
    palette = plotly.colors.qualitative.Dark24  # one colour per node, trail and dot alike

    def colour(node: object) -> str:
        return palette[int(node) % len(palette)]

    for node, track in upto.groupby("node", sort=True):
        fig.add_trace(go.Scatter(x=track["x"], y=track["y"], mode="lines",
                                 line=dict(width=1, color=colour(node)), opacity=0.45,
                                 showlegend=False, hoverinfo="skip", legendgroup=str(node)))
    now = upto[upto["step"] == upto["step"].max()] if len(upto) else upto
    fig.add_trace(go.Scatter(x=now["x"], y=now["y"], mode="markers+text",
                             text=[str(n) for n in now["node"]], textposition="top center",
                             marker=dict(size=10, color=[colour(n) for n in now["node"]]),
                             name=f"step {step}", showlegend=False))
    if len(paths):
        fig.update_xaxes(range=_padded(paths["x"].min(), paths["x"].max()))
        fig.update_yaxes(range=_padded(paths["y"].min(), paths["y"].max()))
    share = ""
    if explained is not None:
        share = f" (PC1 {explained[0]:.0%}, PC2 {explained[1]:.0%} of variance)"
    fig.update_layout(title=title + share, xaxis_title="PC1", yaxis_title="PC2",
                      **{**_LAYOUT, "height": 460, "hovermode": "closest"})
    return fig


def _padded(lo: float, hi: float) -> tuple[float, float]:
    """An axis range with 5% room on both sides."""
    room = 0.05 * (hi - lo) + 1e-9
    return lo - room, hi + room
