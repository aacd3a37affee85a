"""Store access for the dashboard: one cached reader per store, cached run lists, and one
live cache per run shared by every session of the server, which reads only the steps newer
than those it holds, once per commit of the writer however many sessions watch the run.

Streamlit runs each session's script in a thread of its own, so the shared cache is guarded
by locks: one for the table of runs, one per run (two sessions asking for the same run wait
for one read; sessions on different runs do not wait for each other)."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard.state import STORE_KEY
from mahiax.store import RunReader, resolve_store_path
from mahiax.store.attempts import Attempt, read_attempts
from mahiax.store.attempts import attempts_version as read_attempts_version


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
    """The runs of the store, oldest first, without their config and cadence (cached for a
    second so the sidebar and a page reading in the same rerun share one query)."""
    return get_reader(path).runs().drop(columns=["config", "cadence"])


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


@st.cache_data(ttl=1.0, show_spinner=False)
def attempts_version(path: str) -> tuple[int, int]:
    """What identifies the exercise attempts the store holds now (how many, the newest id):
    one small query, cached for a second, so the My attempts page of every session watches
    the store with one query a second at most."""
    return read_attempts_version(path)


@st.cache_data(max_entries=16, show_spinner=False)
def learner_attempts(path: str, learner: str, version: tuple[int, int],
                     series: bool = False) -> list[Attempt]:
    """``learner``'s attempts in the store, oldest first (``series``: with what each check
    measured per step), read once per ``version`` (:func:`attempts_version`): attempts are
    only ever appended, so an equal version means the same attempts, and a page redrawn
    without a new check reads nothing."""
    del version  # the cache key: read again only when the attempts changed
    return read_attempts(path, learner=learner, series=series)


def run_info(path: str, name: str) -> dict:
    """One run's current row (status, steps, error ...): read fresh, it changes live."""
    return get_reader(path).run(name)


@dataclass(kw_only=True)
class _Series:
    """What the server holds of one run, for every session: scalars, vectors and snapshots
    read so far, and the run's ``last_step`` when each was last read (``read_at``): a kind is
    read again only once the run has committed a newer step, so thirty sessions refreshing a
    live run cause one read per new commit, not thirty."""

    created: pd.Timestamp | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    scalars: pd.DataFrame = field(default_factory=pd.DataFrame)
    vectors: dict[str, pd.DataFrame] = field(default_factory=dict)
    snapshots: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    read_at: dict[str, object] = field(default_factory=dict)  # kind -> last_step then
    read_when: dict[str, float] = field(default_factory=dict)  # kind -> time.monotonic() then
    epoch: int = 0  # counts the reads that brought new data: figures are keyed by it


MAX_RUNS_HELD = 16  # runs whose series the server keeps; the least recently read goes first

_series: OrderedDict[tuple[str, str], _Series] = OrderedDict()
_series_lock = threading.Lock()


def _entry(path: str, info: dict) -> _Series:
    """The server's series of run ``info``; a run that was made again (deleted and
    recreated) or rewound (resumed from an older checkpoint) starts afresh."""
    key = (path, info["name"])
    last = info["last_step"]
    with _series_lock:
        entry = _series.get(key)
        held = entry.scalars.index.max() if entry is not None and len(entry.scalars) else None
        rewound = held is not None and (pd.isna(last) or int(last) < int(held))
        if entry is None or entry.created != info["created"] or rewound:
            entry = _series[key] = _Series(created=info["created"])
        _series.move_to_end(key)
        while len(_series) > MAX_RUNS_HELD:
            _series.popitem(last=False)
        return entry


def _version(info: dict) -> int | None:
    last = info["last_step"]
    return None if pd.isna(last) else int(last)


READ_GAP_S = 1.0  # a live run is read at most this often, for all sessions together


def _stale(entry: _Series, kind: str, info: dict) -> bool:
    """Whether ``kind`` must be read: never read, or the run committed a step since (the
    store commits whole steps and ``last_step`` with them) and, while the run trains, the
    last read is READ_GAP_S old: the writer commits every 0.5 s, and sessions refreshing at
    different moments then share one read, and the figures drawn from it, per second."""
    if kind not in entry.read_at:
        return True
    if entry.read_at[kind] == _version(info):
        return False
    return info["status"] != "running" or \
        time.monotonic() - entry.read_when.get(kind, 0.0) >= READ_GAP_S


def _mark_read(entry: _Series, kind: str, info: dict, new_rows: int) -> None:
    entry.read_at[kind] = _version(info)
    entry.read_when[kind] = time.monotonic()
    if new_rows:
        entry.epoch += 1


def held_version(path: str, info: dict) -> tuple:
    """What identifies the data the server holds of run ``info`` now: (store, run, created,
    reads that brought new data). Equal versions mean equal data, so a figure drawn from
    it can be shared."""
    entry = _entry(path, info)
    return (path, info["name"], info["created"], entry.epoch)


def _since(df: pd.DataFrame) -> int | None:
    return int(df.index.max()) if len(df) else None


def _append(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    if not len(new):
        return old
    if not len(old):
        return new
    return pd.concat([old, new]).sort_index()


def live_scalars(path: str, info: dict) -> pd.DataFrame:
    """Every scalar of the run (index step, column per key), reading only new steps.

    The frame is shared by every session: read it, never modify it in place."""
    entry = _entry(path, info)
    with entry.lock:
        if _stale(entry, "scalars", info):
            new = get_reader(path).scalars(info["name"], since_step=_since(entry.scalars))
            entry.scalars = _append(entry.scalars, new)
            _mark_read(entry, "scalars", info, len(new))
        return entry.scalars


def live_vectors(path: str, info: dict, key: str) -> pd.DataFrame:
    """Vector ``key`` of the run (index step, column per entry), reading only new steps.
    Shared by every session, like :func:`live_scalars`."""
    entry = _entry(path, info)
    with entry.lock:
        old = entry.vectors.get(key, pd.DataFrame())
        if not _stale(entry, f"vector:{key}", info):
            return old
        reader = get_reader(path)
        new = pd.DataFrame()
        if key in reader.vector_keys(info["name"]):
            new = reader.vectors(info["name"], key, since_step=_since(old))
            entry.vectors[key] = _append(old, new)
        _mark_read(entry, f"vector:{key}", info, len(new))
        return entry.vectors.get(key, old)


def live_snapshots(path: str, info: dict, key: str) -> dict[int, np.ndarray]:
    """Snapshots ``key`` of the run by step, reading only those not held yet. The dict is a
    copy (the arrays are shared: read them, never modify them)."""
    entry = _entry(path, info)
    with entry.lock:
        held = entry.snapshots.setdefault(key, {})
        if _stale(entry, f"snapshot:{key}", info):
            reader = get_reader(path)
            before = len(held)
            if key in reader.snapshot_keys(info["name"]):
                for step in reader.snapshot_steps(info["name"], key):
                    if step not in held:
                        held[step] = reader.snapshot(info["name"], key, step)
            _mark_read(entry, f"snapshot:{key}", info, len(held) - before)
        return dict(held)


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
    """Drop the server's series of a run (it was deleted)."""
    with _series_lock:
        _series.pop((path, name), None)


def session_store() -> str | None:
    """The run store this session reads (the sidebar's choice); None, after saying so on the
    page, when there is none. Every page starts from it."""
    path = st.session_state.get(STORE_KEY)
    if path is None:
        st.error("No run store is configured.")
    return path

