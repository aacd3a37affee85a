"""The Training page: the latest figures, losses, gradient norm, step time, throughput and
every other scalar the shown runs logged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.frame import page
from dashboard.page_charts import grid, line_chart, pick_keys, pick_prefixed
from dashboard.shown import Shown
from mahiax import metric_keys as mk


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
        losses = [lambda: line_chart(shown, pick_keys(mk.LOSS), "Loss (total)", log_y=log_y),
                  lambda: line_chart(shown, pick_prefixed(mk.TASK_LOSS_PREFIX),
                                     "Loss per task", log_y=log_y)]
    else:
        losses = [lambda: line_chart(shown, _losses, "Losses (total and per task)",
                                     log_y=log_y)]
    grid([*losses,
          lambda: line_chart(shown, pick_keys(mk.GRAD_NORM),
                             "Gradient norm (before clipping)"),
          lambda: line_chart(shown, pick_keys(mk.STEP_S), "Step time", "seconds"),
          lambda: line_chart(shown, pick_keys(mk.SAMPLES_PER_S), "Throughput",
                             "samples / s")])
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
                line_chart(shown, pick_keys(key), key)


def training() -> None:
    """The Training page; a failed run's status line gives its whole error message."""
    page("Training", training_body, detailed_status=True)
