"""Pure pandas/numpy transforms behind the charts: no Streamlit, no store, easy to test."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mahiax import metric_keys as mk
from mahiax.units import MIB


def downsample_minmax(df: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """At most ``max_points`` rows of ``df`` (sorted by its index), keeping in every bucket of
    consecutive rows the rows holding each column's minimum and maximum.

    Plotting every step of a long run is slow; plain striding hides spikes. Keeping each
    bucket's extremes (and the first and last row) keeps every spike visible, the global
    minimum and maximum of every column included. Rows are kept whole, so no value is made up.
    """
    if max_points < 2:
        raise ValueError(f"max_points={max_points} must be at least 2")
    n = len(df)
    if n <= max_points:
        return df
    numeric = df.select_dtypes("number")
    ncols = max(1, numeric.shape[1])
    n_buckets = max(1, (max_points - 2) // (2 * ncols))
    bucket = np.arange(n) * n_buckets // n
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    keep = [np.array([0, n - 1])]
    for col in numeric.columns:
        values = numeric[col].to_numpy(dtype=np.float64)
        for fill, reduce in ((-np.inf, np.maximum), (np.inf, np.minimum)):
            v = np.where(np.isnan(values), fill, values)
            extreme = reduce.reduceat(v, starts)
            hits = np.flatnonzero(v == extreme[bucket])
            _, first = np.unique(bucket[hits], return_index=True)
            keep.append(hits[first])
    rows = np.unique(np.concatenate(keep))
    return df.iloc[rows]


def to_mib(df: pd.DataFrame) -> pd.DataFrame:
    """Byte counts in MiB (2^20 bytes), the lab's one unit for memory, for charts."""
    return df / MIB


@dataclass(frozen=True, kw_only=True)
class Pca:
    """A 2-D PCA: ``mean`` (D,) and ``components`` (2, D), fitted once on every snapshot so
    that frames of different steps share one projection and can be compared."""

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray  # fraction of variance per component


def pca_fit(arrays: list[np.ndarray] | Mapping[int, np.ndarray]) -> Pca:
    """Fit a 2-D PCA on the rows of all arrays (each (N, D)); D < 2 or rank < 2 pads with
    zero components so projections are always (N, 2)."""
    if isinstance(arrays, Mapping):
        arrays = list(arrays.values())
    if not arrays:
        raise ValueError("pca_fit needs at least one array")
    x = np.concatenate([np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in arrays])
    x = np.nan_to_num(x)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = np.zeros((2, x.shape[1]))
    k = min(2, vt.shape[0])
    comps[:k] = vt[:k]
    var = s**2
    explained = np.zeros(2)
    if var.sum() > 0:
        explained[:k] = var[:k] / var.sum()
    return Pca(mean=mean, components=comps, explained=explained)


def pca_project(pca: Pca, x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, D) in the PCA's 2-D plane: (N, 2)."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    return (x - pca.mean) @ pca.components.T


def thin_steps(steps: list[int], max_n: int) -> list[int]:
    """At most ``max_n`` of the sorted ``steps``, evenly spread, the first and last kept:
    a 100,000-step run has 4,000 snapshots, more than a chart or a slider can show usefully."""
    if max_n < 2:
        raise ValueError(f"max_n={max_n} must be at least 2")
    steps = sorted(steps)
    if len(steps) <= max_n:
        return steps
    picks = np.unique(np.linspace(0, len(steps) - 1, max_n).round().astype(int))
    return [steps[i] for i in picks]


def _stack(snapshots: Mapping[int, np.ndarray]) -> tuple[list[int], np.ndarray | None]:
    """Sorted steps and the snapshots as one (S, N, D) float64 array (None if shapes differ)."""
    steps = sorted(snapshots)
    arrays = [np.asarray(snapshots[s], dtype=np.float64) for s in steps]
    if not arrays or any(a.shape != arrays[0].shape for a in arrays):
        return steps, None
    return steps, np.stack([a.reshape(len(a), -1) for a in arrays])


def node_paths(snapshots: Mapping[int, np.ndarray], pca: Pca) -> pd.DataFrame:
    """Long table of every node's 2-D position per step: columns step, node, x, y."""
    steps, stacked = _stack(snapshots)
    if not steps:
        return pd.DataFrame(columns=["step", "node", "x", "y"])
    if stacked is None:  # the memory was resized between snapshots: one step at a time
        frames = []
        for step in steps:
            xy = pca_project(pca, snapshots[step])
            frames.append(pd.DataFrame({"step": step, "node": np.arange(len(xy)),
                                        "x": xy[:, 0], "y": xy[:, 1]}))
        return pd.concat(frames, ignore_index=True)
    n_steps, n_nodes, _ = stacked.shape
    xy = (np.nan_to_num(stacked) - pca.mean) @ pca.components.T  # (S, N, 2)
    return pd.DataFrame({"step": np.repeat(steps, n_nodes),
                         "node": np.tile(np.arange(n_nodes), n_steps),
                         "x": xy[..., 0].ravel(), "y": xy[..., 1].ravel()})


def node_norms(snapshots: Mapping[int, np.ndarray]) -> pd.DataFrame:
    """L2 norm of each node per step: index step, one column per node."""
    steps, stacked = _stack(snapshots)
    if stacked is not None:
        return _per_node(steps, list(np.linalg.norm(stacked, axis=2)))
    data = [np.linalg.norm(np.asarray(snapshots[s], dtype=np.float64), axis=1) for s in steps]
    return _per_node(steps, data)


def node_displacement(snapshots: Mapping[int, np.ndarray]) -> pd.DataFrame:
    """How far each node has moved from its first snapshot (L2): index step, column per node."""
    steps, stacked = _stack(snapshots)
    if not steps:
        return pd.DataFrame()
    if stacked is not None:
        return _per_node(steps, list(np.linalg.norm(stacked - stacked[:1], axis=2)))
    first = np.asarray(snapshots[steps[0]], dtype=np.float64)
    data = []
    for s in steps:
        x = np.asarray(snapshots[s], dtype=np.float64)
        if x.shape != first.shape:  # a resized memory: distance is undefined
            data.append(np.full(len(x), np.nan))
        else:
            data.append(np.linalg.norm(x - first, axis=1))
    return _per_node(steps, data)


def _per_node(steps: list[int], rows: list[np.ndarray]) -> pd.DataFrame:
    width = max((len(r) for r in rows), default=0)
    table = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        table[i, : len(r)] = r
    return pd.DataFrame(table, index=pd.Index(steps, name="step"),
                        columns=[f"node {i}" for i in range(width)])


def cosine_similarity(x: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of ``x`` (N, D) -> (N, N); zero rows give 0."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def columns_with_prefix(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The columns named ``<prefix><something>``, renamed to ``<something>`` (e.g. tasks)."""
    cols = [c for c in df.columns if isinstance(c, str) and c.startswith(prefix)]
    return df[cols].rename(columns=lambda c: c[len(prefix):])


def expert_shares(tokens: pd.DataFrame) -> pd.DataFrame:
    """Tokens per expert as fractions of each step's total (rows sum to 1)."""
    total = tokens.sum(axis=1).replace(0, np.nan)
    return tokens.div(total, axis=0)


# The expert loads' spread as the probes log it, in units of the mean load: key -> label.
# The maximum is max / mean itself (MaxVio + 1).
LOAD_PERCENTILES = {
    mk.LOAD_MIN: "min",
    mk.LOAD_P50: "p50",
    mk.LOAD_P90: "p90",
    mk.LOAD_P99: "p99",
    mk.MOE_MAX_OVER_MEAN: "max",
}


def renamed(df: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame:
    """The columns of ``df`` named in ``labels`` that hold any value, in ``labels``' order,
    renamed to their labels (e.g. ``moe/load_p50`` -> ``p50``): what a chart's legend shows."""
    keys = [k for k in labels if k in df.columns and df[k].notna().any()]
    return df[keys].rename(columns=dict(labels))


def per_step(values: list, name: str) -> pd.DataFrame:
    """A series measured once a step as a frame indexed by step (0, 1, ...): a list of
    numbers gives one column ``name``; a list of equal-length lists (a vector a step, e.g.
    tokens per expert) gives columns ``<name> 0``, ``<name> 1``, ..."""
    table = np.asarray(values, dtype=np.float64)
    index = pd.RangeIndex(len(table), name="step")
    if table.ndim == 1:
        return pd.DataFrame({name: table}, index=index)
    if table.ndim != 2:
        raise ValueError(f"{name}: expected numbers or vectors per step, got shape "
                         f"{table.shape}")
    return pd.DataFrame(table, index=index,
                        columns=[f"{name} {i}" for i in range(table.shape[1])])


# Memory by category: the keys the probes and the catalog log (mahiax.telemetry's
# MemoryCategories.as_metrics), in stacking order, with the name a chart shows.
MEMORY_CATEGORIES = {
    mk.MEM_PARAMS: "parameters",
    mk.MEM_GRADS: "gradients",
    mk.MEM_OPTIMIZER: "optimizer state",
    mk.MEM_SAVED: "saved for backward",
    mk.MEM_OTHER: "other",
}
# the figures drawn over the stack: the measured total, the peak, the allocator's reserve
MEMORY_TOTALS = {mk.MEM_TOTAL: "total", mk.MEM_PEAK: "peak", mk.MEM_RESERVED: "reserved"}


@dataclass(frozen=True, kw_only=True)
class MemoryByCategory:
    """A run's memory split for a stacked chart, in MiB (2^20 bytes), index step.

    ``stacked`` holds the categories measured at every step that measured any category: they
    stack without gaps. A category read only at some of those steps (on a CPU, ``other`` is
    the rest of the live tensors, found by a slow scan every few hundred steps) is not stacked
    (its gaps would tear the stack) but listed in ``sparse``; ``totals`` then shows the
    measured total at the steps it was read, and the gap above the stack is that category.
    """

    stacked: pd.DataFrame  # column per category label
    totals: pd.DataFrame  # columns among total, peak, reserved (NaN where not read)
    sparse: list[str]  # category labels read at only some steps
    sparse_every: int | None = None  # the number of steps between their readings
    sparse_last: int | None = None  # the last step they were read at
    every: int | None = None  # the usual number of steps between two stacked readings

    @property
    def empty(self) -> bool:
        return self.stacked.empty


def memory_by_category(df: pd.DataFrame, sparse_every: int | None = None) -> MemoryByCategory:
    """Split the ``mem/*`` scalars of ``df`` (index step, bytes) for :func:`charts` stacking.

    ``sparse_every``: the steps between two readings of the sparse categories when the run
    says (its stored cadence's ``memory_every``); otherwise the usual gap between them.
    A run recorded before memory was logged by category gives an empty ``stacked``."""
    present = [k for k in MEMORY_CATEGORIES if k in df.columns and df[k].notna().any()]
    if not present:
        return MemoryByCategory(stacked=pd.DataFrame(), totals=pd.DataFrame(), sparse=[])
    measured = df[present].notna().any(axis=1)
    rows = df.loc[measured]
    dense = [k for k in present if rows[k].notna().all()]
    sparse = [MEMORY_CATEGORIES[k] for k in present if k not in dense]
    stacked = to_mib(rows[dense]).rename(columns=MEMORY_CATEGORIES)
    totals_keys = [k for k in MEMORY_TOTALS if k in df.columns and df[k].notna().any()]
    totals = to_mib(df.loc[df[totals_keys].notna().any(axis=1), totals_keys]) \
        .rename(columns=MEMORY_TOTALS) if totals_keys else pd.DataFrame()
    stacked.index.name = totals.index.name = "step"
    sparse_last = None
    if sparse:
        rarest = min((k for k in present if k not in dense), key=lambda k: rows[k].count())
        read = rows.index[rows[rarest].notna()]
        sparse_last = int(read[-1])
        if sparse_every is None:
            sparse_every = usual_gap(read)
    else:
        sparse_every = None
    return MemoryByCategory(stacked=stacked, totals=totals, sparse=sparse,
                            sparse_every=sparse_every, sparse_last=sparse_last,
                            every=usual_gap(stacked.index))


def usual_gap(steps: pd.Index) -> int | None:
    """The median number of steps between consecutive readings (None: fewer than two)."""
    return int(np.median(np.diff(steps))) if len(steps) > 1 else None


def reading_runs(steps: pd.Index, every: int | None) -> list[pd.Index]:
    """``steps`` cut where a gap is longer than 1.5 readings' usual gap: within a run the
    readings follow their cadence, so a line may join them; between runs there was no
    reading, so none may."""
    if every is None or len(steps) < 2:
        return [steps]
    cuts = np.flatnonzero(np.diff(steps) > 1.5 * every) + 1
    return [steps[a:b] for a, b in zip([0, *cuts], [*cuts, len(steps)], strict=True)]


def latest_values(df: pd.DataFrame) -> dict[str, tuple[int, float]]:
    """Each column's last measured (step, value), NaN skipped; columns never measured left
    out. The step matters: a figure read every few hundred steps may be older than the rest."""
    out = {}
    for col, series in df.items():
        measured = series.dropna()
        if len(measured):
            out[str(col)] = int(measured.index[-1]), float(measured.iloc[-1])
    return out
