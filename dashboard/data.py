"""Store access for the dashboard: one cached reader per store, cached run lists, and a
per-session live cache that reads only the steps newer than those it already holds."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from mahiax.store import RunReader, resolve_store_path

LIVE_KEY = "_live_cache"


def store_path() -> Path:
    """The store this dashboard reads: ``$MAHIAX_STORE``, else ``runs/`` in the cwd."""
    return resolve_store_path(os.environ.get("MAHIAX_STORE") or None)


@st.cache_resource(show_spinner=False)
def get_reader(path: str) -> RunReader:
    """One read-only reader per store path, shared by all sessions (it is thread-safe and
    keeps its connection open, so polling never waits on the writer)."""
    return RunReader(path)


@st.cache_data(ttl=1.0, show_spinner=False)
def list_runs(path: str) -> pd.DataFrame:
    """The runs of the store, oldest first, without their config (cached for a second so
    the sidebar and a page reading in the same rerun share one query)."""
    return get_reader(path).runs().drop(columns=["config"])


@st.cache_data(ttl=1.0, show_spinner=False)
def catalog_runs(path: str) -> pd.DataFrame:
    """The store's bug-catalog runs (``mahiax train --bug``): name, status, bug, variant,
    created; oldest first. Other runs are left out."""
    table = get_reader(path).runs()
    tagged = table["bug"].notna() & table["variant"].notna()
    return table.loc[tagged, ["name", "status", "created", "bug", "variant"]] \
        .reset_index(drop=True)


def latest_variant_runs(path: str, entry_id: str) -> dict[str, str]:
    """variant -> name of the newest recorded run of catalog entry ``entry_id``."""
    runs = catalog_runs(path)
    mine = runs[runs["bug"] == entry_id]
    return {str(v): str(group.iloc[-1]["name"]) for v, group in mine.groupby("variant")}


def run_info(path: str, name: str) -> dict:
    """One run's current row (status, steps, error ...): read fresh, it changes live."""
    return get_reader(path).run(name)


@dataclass
class _Series:
    """What one session holds of one run: scalars, vectors and snapshots read so far."""

    created: pd.Timestamp | None
    scalars: pd.DataFrame = field(default_factory=pd.DataFrame)
    vectors: dict[str, pd.DataFrame] = field(default_factory=dict)
    snapshots: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)


def _entry(path: str, info: dict) -> _Series:
    """This session's cache of run ``info``; a run that was made again (deleted and
    recreated) or rewound (resumed from an older checkpoint) starts afresh."""
    cache: dict[tuple[str, str], _Series] = st.session_state.setdefault(LIVE_KEY, {})
    key = (path, info["name"])
    entry = cache.get(key)
    last = info["last_step"]
    held = entry.scalars.index.max() if entry is not None and len(entry.scalars) else None
    rewound = held is not None and (pd.isna(last) or int(last) < int(held))
    if entry is None or entry.created != info["created"] or rewound:
        entry = cache[key] = _Series(created=info["created"])
    return entry


def _since(df: pd.DataFrame) -> int | None:
    return int(df.index.max()) if len(df) else None


def _append(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    if not len(new):
        return old
    if not len(old):
        return new
    return pd.concat([old, new]).sort_index()


def live_scalars(path: str, info: dict) -> pd.DataFrame:
    """Every scalar of the run (index step, column per key), reading only new steps."""
    entry = _entry(path, info)
    new = get_reader(path).scalars(info["name"], since_step=_since(entry.scalars))
    entry.scalars = _append(entry.scalars, new)
    return entry.scalars


def live_vectors(path: str, info: dict, key: str) -> pd.DataFrame:
    """Vector ``key`` of the run (index step, column per entry), reading only new steps."""
    entry = _entry(path, info)
    reader = get_reader(path)
    old = entry.vectors.get(key, pd.DataFrame())
    if key not in reader.vector_keys(info["name"]):
        return old
    entry.vectors[key] = _append(old, reader.vectors(info["name"], key, since_step=_since(old)))
    return entry.vectors[key]


def live_snapshots(path: str, info: dict, key: str) -> dict[int, np.ndarray]:
    """Snapshots ``key`` of the run by step, reading only those not held yet."""
    entry = _entry(path, info)
    reader = get_reader(path)
    held = entry.snapshots.setdefault(key, {})
    if key not in reader.snapshot_keys(info["name"]):
        return held
    for step in reader.snapshot_steps(info["name"], key):
        if step not in held:
            held[step] = reader.snapshot(info["name"], key, step)
    return held


def spike_snapshots(path: str, info: dict) -> dict[int, Path]:
    """The run's GPU memory-spike snapshots, ``{step: path of the .pickle}`` (usually none:
    at most one per run, and only on a GPU)."""
    from mahiax.telemetry.spikes import SPIKE_SNAPSHOT_KEY
    from mahiax.telemetry.spikes import spike_snapshots as read

    reader = get_reader(path)
    if SPIKE_SNAPSHOT_KEY not in reader.snapshot_keys(info["name"]):
        return {}
    return read(reader, info["name"])


def forget_run(path: str, name: str) -> None:
    """Drop this session's cache of a run (it was deleted)."""
    st.session_state.get(LIVE_KEY, {}).pop((path, name), None)
