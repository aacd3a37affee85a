"""The Loss weights page: each task's loss weight and loss, and DWA's descent ratios."""

from __future__ import annotations

import streamlit as st

from dashboard.frame import page
from dashboard.page_charts import line_chart, pick_prefixed
from dashboard.shown import Shown
from mahiax import metric_keys as mk


def loss_weights_body(shown: Shown) -> None:
    """Loss weight per task, per-task losses and DWA descent ratios, every shown run's."""
    weightings = {i["name"]: (i.get("config") or {}).get("weighting", "unknown")
                  for i in shown.infos}
    if shown.comparing:
        st.caption("Weighting: " + ", ".join(f"{name} **{w}**"
                                             for name, w in weightings.items()))
    else:
        st.caption(f"Weighting: **{weightings[shown.main['name']]}**")
    weights = pick_prefixed(mk.TASK_WEIGHT_PREFIX)
    if not any(not p(df).empty for df in shown.scalars().values()
               for p in (weights, pick_prefixed(mk.TASK_LOSS_PREFIX))):
        st.info("This run logged no per-task losses or weights.")
        return
    left, right = st.columns(2)
    with left:
        if not line_chart(shown, weights, "Loss weight per task"):
            st.info("No loss weights were logged.")
    with right:
        line_chart(shown, pick_prefixed(mk.TASK_LOSS_PREFIX), "Loss per task", log_y=True)
    if not line_chart(shown, pick_prefixed(mk.DWA_RATIO_PREFIX),
                      "DWA descent ratio L(t-1) / L(t-2) per task"):
        st.info("No DWA ratios: they are logged only with `--weighting dwa`.")


def loss_weights() -> None:
    """The Loss weights page."""
    page("Loss weights", loss_weights_body)
