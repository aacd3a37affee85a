"""The Memory-node evolution page: the graph memory's nodes in one shared 2-D PCA plane,
their norms, motion, cosine similarity and diffusion matrix, and TinyMemory's slots. A
line or a point per node, so every chart is the picked run's."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboard import charts, data, processing
from dashboard.figure_cache import chart
from dashboard.frame import page
from dashboard.page_charts import main_only
from dashboard.shown import Shown
from mahiax import metric_keys as mk

MAX_SNAPSHOTS = 200  # memory-node snapshots drawn at most (a 100,000-step run stores 4,000)


def memory_nodes_body(shown: Shown) -> None:
    """Graph-memory nodes in one shared 2-D PCA plane, their norms, motion and matrices: a
    line per node, so every chart here is the picked run's, compared runs or not."""
    path, info = shown.path, shown.main
    main_only(shown, "Memory nodes (a line or a point per node on every chart)")
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

    chart(trajectories)
    left, right = st.columns(2)
    with left:
        chart(lambda: charts.markers(processing.node_norms(snaps), "Node norms", "L2 norm"))
    with right:
        chart(lambda: charts.markers(processing.node_displacement(snaps),
                                     "Distance moved from the first snapshot", "L2 distance"))
    left, right = st.columns(2)
    with left:
        chart(lambda: charts.matrix(processing.cosine_similarity(snaps[step]),
                                    f"Cosine similarity of nodes, step {step}", -1.0, 1.0))
    with right:
        adjacency = data.live_snapshots(path, info, mk.MEMORY_ADJACENCY)
        before = [s for s in sorted(adjacency) if s <= step]
        if before:
            chart(lambda: charts.matrix(np.asarray(adjacency[before[-1]], dtype=float),
                                        f"Diffusion matrix A, step {before[-1]}",
                                        colorscale="Viridis"))
        else:
            st.info(f"No diffusion-matrix snapshot (`{mk.MEMORY_ADJACENCY}`) at or before "
                    "this step.")
    slots = data.live_snapshots(path, info, mk.TINY_SLOTS)
    before = [s for s in sorted(slots) if s <= step]
    if before:
        ring = np.asarray(slots[before[-1]], dtype=float)
        chart(lambda: charts.matrix(processing.cosine_similarity(ring),
                                    f"TinyMemory: cosine similarity of its {len(ring)} slots "
                                    f"(recent batch summaries), step {before[-1]}", -1.0, 1.0,
                                    label="slot"))


def memory_nodes() -> None:
    """The Memory-node evolution page."""
    page("Memory-node evolution", memory_nodes_body)

