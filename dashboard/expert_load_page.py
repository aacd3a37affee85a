"""The Expert load balance page: MaxVio and the balance figures, tokens per expert over
steps beside each expert's selection bias, the loads' percentiles, the current load, the
aux and z losses, dead experts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, data, processing
from dashboard.figure_cache import chart
from dashboard.frame import page
from dashboard.page_charts import downsampled, grid, line_chart, main_only, pick_keys, present
from dashboard.shown import Shown
from mahiax import metric_keys as mk
from mahiax.telemetry.cadence import Cadence


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
    routed = downsampled(tokens)
    left, right = st.columns(2) if not bias.empty else (st.container(), None)
    with left:
        if view == "heatmap":
            chart(lambda: charts.heatmap_over_steps(
                routed, "Tokens per expert over steps (tokens routed, per step)", "expert",
                "tokens", row_colours=colours))
        else:
            chart(lambda: charts.coloured_lines(
                processing.expert_shares(routed), "Share of tokens per expert (per step)",
                "share of the step's tokens", colours, stacked=True))
        main_only(shown, "Tokens per expert")
    if right is not None:
        with right:
            trajectories = downsampled(bias.rename(columns=lambda i: f"expert {i}"))
            chart(lambda: charts.coloured_lines(
                trajectories, "Selection bias per expert (added to routing scores for top-k "
                "only)", "bias", colours[: trajectories.shape[1]]))
            main_only(shown, "Selection bias per expert")
    else:
        balance = (info.get("config") or {}).get("balance")
        why = BALANCE_WORDS.get(balance, f"logged no selection bias (`{mk.MOE_BIAS}`): it "
                                         "balances with the auxiliary loss or not at all")
        st.caption(f"No bias chart: this run {why}, so there is no selection bias. A run "
                   "with `--balance bias` draws each expert's bias here, beside the heatmap.")

    def spread() -> None:
        band = processing.renamed(df, processing.LOAD_PERCENTILES)
        if not band.empty:
            chart(lambda: charts.load_band(
                downsampled(band), "Expert load percentiles (1 = the mean load)",
                "load / mean load"))
            main_only(shown, "Load percentiles")

    def load() -> None:
        chart(lambda: charts.bars(current, f"Load at step {int(tokens.index[-1])}", "expert",
                                  "tokens", reference=float(current.sum()) / max(1, len(current))))
        main_only(shown, "Current load")

    scalars = shown.scalars()
    flipped = any(present(frame, [mk.BIAS_FLIPPED]) for frame in scalars.values())
    cv_entropy = [] if flipped and not shown.comparing else \
        [lambda: line_chart(shown, pick_keys(mk.MOE_CV, mk.MOE_ENTROPY), "Balance: CV and entropy")]
    balances = {(i.get("config") or {}).get("balance", "aux") for i in shown.infos}
    balance = balances.pop() if len(balances) == 1 else None
    aux_title = "Load-balancing (aux) and z losses" if balance == "aux" else \
        f"Aux loss (measured only: balance = {balance} does not train on it) and z loss" \
        if balance is not None else \
        "Aux loss (trained on only by the runs with balance = aux) and z loss"
    grid([lambda: _max_vio(shown), spread, load,
          *([lambda: line_chart(shown, _bias_flipped, "Top-k choices the bias changed (% of the "
                                "step's tokens × k)", "%")] if flipped else []),
          *cv_entropy,
          lambda: line_chart(shown, pick_keys(mk.MOE_AUX_LOSS, mk.MOE_Z_LOSS), aux_title),
          lambda: line_chart(shown, pick_keys(mk.MOE_DEAD), "Dead experts per step", "experts")])


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
    drawn = line_chart(shown, lambda df: processing.renamed(df, labels), MAX_VIO_TITLE, "MaxVio",
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
        value = df[key].dropna().iloc[-1] if present(df, [key]) else np.nan
        col.metric(label, "–" if pd.isna(value) else fmt.format(value))


def experts() -> None:
    """The Expert load balance page."""
    page("Expert load balance", experts_body)

