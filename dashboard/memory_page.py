"""The Memory page: memory by category (parameters, gradients, optimizer state, saved for
backward, other) stacked over steps with total and peak, the spikes the run saved a
snapshot of, and mixed precision's loss scale and skipped steps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import charts, data, processing
from dashboard.figure_cache import chart, max_points
from dashboard.frame import page
from dashboard.page_charts import downsampled, grid, line_chart, main_only, pick_keys, present
from dashboard.shown import Shown
from mahiax import metric_keys as mk
from mahiax.telemetry.cadence import Cadence
from mahiax.units import MIB


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
    stacked, totals = downsampled(mem.stacked), mem.totals
    if len(totals) > max_points():
        totals = downsampled(totals)
    title = f"Memory by category ({'GPU' if gpu else 'CPU'})"
    every = processing.usual_gap(stacked.index)  # of the points drawn (maybe downsampled)
    chart(lambda: charts.memory_stack(stacked, totals, title, every=every,
                                      marks={s: "spike" for s in spikes}))
    if shown.comparing:
        main_only(shown, "Memory by category (stacked)")
        line_chart(shown, _memory_totals_mib, "Memory totals (total, peak, reserved)", "MiB",
                   markers=True)
    if not gpu:
        line_chart(shown, _rss_mib, "Process RSS (all memory of the process, not only tensors)",
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
        if not line_chart(shown, lambda df: processing.to_mib(
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
        if not line_chart(shown, lambda df: processing.to_mib(
                df[[k for k in tensor_keys if k in df]].dropna(how="all")),
                "Live tensor bytes", "MiB", markers=True, styles=peak):
            st.info("No tensor-bytes reading stored yet.")
    with right:
        if not line_chart(shown, _rss_mib, "Process RSS", "MiB"):
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
    if not present(df, [mk.AMP_SCALE, mk.AMP_SKIPPED]):
        st.info(f"No mixed-precision readings (`{mk.AMP_PREFIX}*`) in this run.")
        return
    total = df[mk.AMP_SKIPPED_TOTAL].dropna() if mk.AMP_SKIPPED_TOTAL in df else pd.Series()
    st.metric("skipped steps (total)", int(total.iloc[-1]) if len(total) else 0)
    grid([lambda: line_chart(shown, pick_keys(mk.AMP_SCALE), "AMP loss scale", log_y=True),
          lambda: line_chart(shown, pick_keys(mk.AMP_SKIPPED), "Skipped steps (1 = skipped)")])


def memory() -> None:
    """The Memory page."""
    page("Memory", memory_body)

