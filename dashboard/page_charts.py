"""The chart helpers the run pages share: a line chart of every shown run
(:func:`line_chart`) and the picks of the series it draws, two charts to a row, the
caption of a chart that cannot overlay compared runs. Every figure goes through the figure
cache (``dashboard/figure_cache.py``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import charts, processing
from dashboard.figure_cache import chart, max_points
from dashboard.shown import Shown

Pick = Callable[[pd.DataFrame], pd.DataFrame]  # a run's scalars -> the series of one chart


def downsampled(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with at most the session's points per chart (each bucket keeps its min and
    max, so spikes stay visible)."""
    return processing.downsample_minmax(df, max_points())


def present(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """The scalars of ``keys`` that ``df`` has a value of."""
    return [k for k in keys if k in df.columns and df[k].notna().any()]


def main_only(shown: Shown, what: str) -> None:
    """While runs are compared, say that ``what`` (a chart that cannot overlay runs) shows
    the picked run only."""
    if shown.comparing:
        st.caption(f"{what}: **{shown.main['name']}** only (comparing draws the line charts "
                   "of every run).")


def line_chart(shown: Shown, pick: Pick, title: str, y_title: str = "", *,
               log_y: bool = False, markers: bool = False,
               styles: Mapping[str, dict] | None = None) -> bool:
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
            shown_df = downsampled(only)
            fig = charts.markers(shown_df, title, y_title) if markers else \
                charts.lines(shown_df, title, y_title, log_y=log_y)
            for label, style in (styles or {}).items():
                fig.update_traces(selector=dict(name=label), **style)
            return fig
    else:
        colours = shown.colours

        def build() -> go.Figure:
            return charts.run_lines({run: downsampled(df) for run, df in frames.items()},
                                    title, y_title, log_y=log_y, markers=markers,
                                    colours=colours, styles=styles)
    chart(build, every_run=True, identity=(pick, styles))
    return True


def pick_keys(*keys: str) -> Pick:
    """A pick of the scalars ``keys`` (those a run has)."""
    return lambda df: df[[k for k in keys if k in df.columns]]


def grid(draws: list[Callable[[], object]]) -> None:
    """Draw the charts ``draws`` two to a row."""
    for i in range(0, len(draws), 2):
        for col, draw in zip(st.columns(2), draws[i:i + 2], strict=False):
            with col:
                draw()


def pick_prefixed(prefix: str) -> Pick:
    """A pick of the scalars ``<prefix><task>``, named by their task."""
    return lambda df: processing.columns_with_prefix(df, prefix)
