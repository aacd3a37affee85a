"""Reading runs as pandas DataFrames, while a writer writes, without ever blocking it.

The reader opens the store read-only; in WAL mode each query sees the last committed state
and takes no lock the writer waits on. A store file that does not exist yet reads as a store
with no runs (a dashboard started before training shows nothing, then the run appears).

Columns of :meth:`RunReader.runs` (one row per run, oldest first), also the keys of
:meth:`RunReader.run`:

=================  =========================================================================
``name``           the run's name
``status``         ``running``, ``finished``, ``failed`` or ``interrupted``; a stored
                   ``running`` whose heartbeat is older than ``stale_after_s``, or whose
                   writer process has died (same host), reads as ``interrupted``
``created``        when the run was created (pandas Timestamp, UTC)
``updated``        last write of any kind (Timestamp, UTC)
``heartbeat``      last sign of life from the writer (Timestamp, UTC)
``last_step``      newest committed step (nullable Int64; missing while no step is stored)
``steps``          number of distinct steps with scalars (int)
``error_type``     exception type of a failed run, e.g. ``RuntimeError`` (else missing)
``error_message``  its message
``error_step``     the step it failed at, when the writer was told (nullable Int64)
``device``         e.g. ``cpu`` or ``cuda:0``
``world_size``     number of processes training the run (int)
``config``         the run's configuration (dict)
``bug``            a bug-catalog run's entry id (``mahiax train --bug``); missing for others
``variant``        its variant: ``buggy``, ``summary`` or ``fixed``; missing for others
``cadence``        how often the run took each reading (dict of the
                   :class:`mahiax.telemetry.cadence.Cadence` settings: ``max_vio_window`` ...);
                   missing for a run stored without one (recorded before runs kept it)
=================  =========================================================================

The catalog tag (``bug``, ``variant``) is store data, kept in ``notes``; in stores written
before that, it rode in the config JSON, from where it is read (and left out of ``config``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mahiax.store.connection import DEFAULT_BUSY_TIMEOUT_S, connect_reader, translate
from mahiax.store.errors import RunNotFoundError, SnapshotNotFoundError
from mahiax.store.liveness import STALE_AFTER_S, effective_status
from mahiax.store.paths import resolve_store_path
from mahiax.store.schema import CADENCE_NOTE, CATALOG_NOTE

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

T = TypeVar("T")

RUN_COLUMNS = (
    "name", "status", "created", "updated", "heartbeat", "last_step", "steps", "error_type",
    "error_message", "error_step", "device", "world_size", "config", "bug", "variant",
    "cadence",
)

_RUNS_SQL = """
SELECT r.id, r.name, r.status, r.created, r.updated, r.heartbeat, r.last_step,
       r.error_type, r.error_message, r.error_step, r.device, r.world_size, r.config,
       r.pid, r.notes
FROM runs r
"""

# the distinct keys of one run, one index seek per key (SQLite has no loose index scan)
_KEYS_SQL = """
WITH RECURSIVE k(key) AS (
    SELECT (SELECT MIN(key) FROM {table} WHERE run_id = :run)
    UNION ALL
    SELECT (SELECT MIN(key) FROM {table} WHERE run_id = :run AND key > k.key)
    FROM k WHERE k.key IS NOT NULL
)
SELECT key FROM k WHERE key IS NOT NULL
"""


def _one_snapshot(method: Callable[..., T]) -> Callable[..., T]:
    """Run a reader method inside one read transaction, so its queries agree."""

    @functools.wraps(method)
    def wrapper(self: RunReader, *args: Any, **kwargs: Any) -> T:
        with self._snapshot():
            return method(self, *args, **kwargs)

    return wrapper


@dataclass(frozen=True, kw_only=True)
class _StepCount:
    """A run's distinct scalar steps as last counted: the next count reads only the steps
    after ``newest`` and adds them."""

    created: float  # the run's creation time: a run deleted and made again is counted afresh
    count: int  # distinct steps with scalars, up to ``newest``
    newest: int  # the newest step counted (-1: none yet)


class RunReader:
    """Read-only access to the store at ``path`` (see :func:`resolve_store_path`).

    Safe to share between threads (calls are serialised). Every method reads the current
    committed state; nothing is cached between calls except the connection.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        stale_after_s: float = STALE_AFTER_S,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ):
        self.path = resolve_store_path(path)
        self.stale_after_s = float(stale_after_s)
        self.busy_timeout_s = float(busy_timeout_s)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()  # one call at a time; a call may nest snapshots
        self._step_counts: dict[int, _StepCount] = {}  # run id -> its steps as last counted

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunReader({str(self.path)!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection | None:
        """The open connection; opened on first use; None while the store has no tables."""
        if self._conn is None:
            opened = connect_reader(self.path, self.busy_timeout_s)
            if opened is None:
                return None
            conn, ready = opened
            if not ready:  # an empty database: look again next time
                conn.close()
                return None
            self._conn = conn
        return self._conn

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """One read transaction: every query inside sees the same committed state.

        In WAL mode this takes no lock the writer waits on; it is kept only for one call.
        """
        with self._lock:
            conn = self._connection()
            if conn is None or conn.in_transaction:  # no store yet, or already inside one
                yield
                return
            try:
                conn.execute("BEGIN")
            except sqlite3.Error as e:
                raise translate(e, self.path) from e
            try:
                yield
            finally:
                try:
                    conn.execute("COMMIT")  # ends the read transaction; nothing to commit
                except sqlite3.Error:
                    pass

    def _query(self, sql: str, params: Sequence | dict = ()) -> list[tuple]:
        """Rows of one statement; [] while the store does not exist or has no tables."""
        with self._lock:
            conn = self._connection()
            if conn is None:
                return []
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise translate(e, self.path) from e

    def _run_id(self, name: str) -> int:
        rows = self._query("SELECT id FROM runs WHERE name = ?", (name,))
        if not rows:
            raise RunNotFoundError(name, self.path, self.run_names())
        return int(rows[0][0])

    # -- runs -------------------------------------------------------------------------------

    def run_names(self) -> list[str]:
        """Names of the runs, oldest first."""
        return [r[0] for r in self._query("SELECT name FROM runs ORDER BY created, id")]

    @_one_snapshot
    def run_records(self) -> list[dict[str, Any]]:
        """One dict per run, oldest first, keyed as the columns of :meth:`runs`, with times
        as Unix seconds: what :meth:`runs` holds, without pandas (the CLI's ``runs list``
        prints it, and starts faster for not importing pandas)."""
        return [self._record(row, stamps=False)
                for row in self._query(_RUNS_SQL + "ORDER BY created, id")]

    @_one_snapshot
    def runs(self) -> pd.DataFrame:
        """One row per run, oldest first, with the columns listed in the module docstring."""
        import pandas as pd

        records = [self._record(row) for row in self._query(_RUNS_SQL + "ORDER BY created, id")]
        df = pd.DataFrame.from_records(records, columns=list(RUN_COLUMNS))
        for col in ("created", "updated", "heartbeat"):
            df[col] = pd.to_datetime(df[col], utc=True)
        for col in ("last_step", "error_step"):
            df[col] = df[col].astype("Int64")
        for col in ("steps", "world_size"):
            df[col] = df[col].astype("int64")
        return df

    @_one_snapshot
    def run(self, name: str, *, stamps: bool = True) -> dict[str, Any]:
        """One run as a dict with the keys of :meth:`runs` (RunNotFoundError if missing);
        ``stamps=False``: its times as Unix seconds, without pandas."""
        rows = self._query(_RUNS_SQL + "WHERE r.name = ?", (name,))
        if not rows:
            raise RunNotFoundError(name, self.path, self.run_names())
        return self._record(rows[0], stamps=stamps)

    @_one_snapshot
    def last_values(self, name: str) -> tuple[int | None, dict[str, float]]:
        """The newest step with scalars and its values by key (NaN and ±inf left out), or
        ``(None, {})``: the last row of :meth:`scalars`, read without pandas."""
        run_id = self._run_id(name)
        rows = self._query(
            "SELECT step, key, value FROM scalars WHERE run_id = :run AND step = "
            "(SELECT MAX(step) FROM scalars WHERE run_id = :run) ORDER BY key", {"run": run_id})
        if not rows:
            return None, {}
        return int(rows[0][0]), {key: value for _, key, value in rows if value is not None}

    def config(self, name: str) -> dict:
        """The configuration run ``name`` was written with."""
        rows = self._query("SELECT config, notes FROM runs WHERE name = ?", (name,))
        if not rows:
            raise RunNotFoundError(name, self.path, self.run_names())
        config, _ = _config_and_tag(rows[0][0], _notes(rows[0][1]))
        return config

    def _record(self, row: tuple, stamps: bool = True) -> dict[str, Any]:
        """A ``runs`` row as a dict; times as pandas Timestamps (UTC), or with ``stamps=False``
        as Unix seconds."""
        (run_id, name, status, created, updated, heartbeat, last_step, error_type,
         error_message, error_step, device, world_size, config, pid, notes) = row
        notes_dict = _notes(notes)
        config_dict, tag = _config_and_tag(config, notes_dict)
        status = effective_status(status, heartbeat, pid, notes_dict, self.stale_after_s,
                                  now=time.time())

        def stamp(t: float | None) -> pd.Timestamp | float | None:
            if t is None or not stamps:
                return t
            import pandas as pd

            return pd.Timestamp(t, unit="s", tz="UTC")

        return {
            "name": name,
            "status": status,
            "created": stamp(created),
            "updated": stamp(updated),
            "heartbeat": stamp(heartbeat),
            "last_step": last_step,
            "steps": self._count_steps(run_id, created, last_step),
            "error_type": error_type,
            "error_message": error_message,
            "error_step": error_step,
            "device": device,
            "world_size": int(world_size),
            "config": config_dict,
            "bug": None if tag is None else tag["bug"],
            "variant": None if tag is None else tag["variant"],
            "cadence": _cadence(notes_dict),
        }

    def _count_steps(self, run_id: int, created: float, last_step: int | None) -> int:
        """Distinct steps with scalars, counted incrementally: a call reads only the steps
        newer than those the previous call counted (a full count reads every row of the run).

        Steps are committed in increasing order; a run whose ``last_step`` went back (rewound)
        or that was deleted and made again is counted afresh.
        """
        with self._lock:
            cached = self._step_counts.get(run_id)
            if last_step is None:
                self._step_counts.pop(run_id, None)
                return 0
            base, after = 0, -1
            if cached is not None and cached.created == created and last_step >= cached.newest:
                base, after = cached.count, cached.newest
            keys = [r[0] for r in self._query(_KEYS_SQL.format(table="scalars"), {"run": run_id})]
            if not keys:
                return 0
            new, newest = self._query(  # one index range per key, as in scalars()
                f"SELECT COUNT(DISTINCT step), MAX(step) FROM scalars "
                f"WHERE run_id = ? AND key IN ({', '.join('?' * len(keys))}) AND step > ?",
                (run_id, *keys, after),
            )[0]
            count = base + int(new)
            self._step_counts[run_id] = _StepCount(
                created=created, count=count, newest=after if newest is None else newest)
            return count

    # -- scalars and vectors ----------------------------------------------------------------

    @_one_snapshot
    def scalar_keys(self, name: str) -> list[str]:
        """The scalar keys of run ``name``, sorted."""
        run = self._run_id(name)
        return [r[0] for r in self._query(_KEYS_SQL.format(table="scalars"), {"run": run})]

    @_one_snapshot
    def vector_keys(self, name: str) -> list[str]:
        """The vector keys of run ``name``, sorted."""
        run = self._run_id(name)
        return [r[0] for r in self._query(_KEYS_SQL.format(table="vectors"), {"run": run})]

    @_one_snapshot
    def scalars(
        self,
        name: str,
        keys: Sequence[str] | None = None,
        since_step: int | None = None,
    ) -> pd.DataFrame:
        """Scalars of run ``name`` as a wide table: index ``step`` (int, sorted), one float
        column per key (sorted, or in the order of ``keys``; a key never logged is all NaN).

        A value that was NaN, infinite or not logged at a step is NaN. With ``since_step``,
        only steps after it: a live view polls with the last step it has.
        """
        import numpy as np
        import pandas as pd

        run = self._run_id(name)
        if keys is None:
            keys = self.scalar_keys(name)
        elif isinstance(keys, str):
            keys = [keys]
        keys = list(dict.fromkeys(keys))
        after = -1 if since_step is None else int(since_step)
        columns: dict[str, np.ndarray] = {}
        for key in keys:  # one index range per key, already in step order
            rows = self._query(
                "SELECT step, value FROM scalars WHERE run_id = ? AND key = ? AND step > ? "
                "ORDER BY step",
                (run, key, after),
            )
            columns[key] = np.array(rows, dtype=np.float64).reshape(-1, 2)  # NULL -> NaN
        steps = np.unique(np.concatenate([c[:, 0] for c in columns.values()] or [[]]))
        data = {}
        for key, col in columns.items():
            if len(col) == len(steps):  # the usual case: the key is at every step
                data[key] = col[:, 1]
            else:
                data[key] = np.full(len(steps), np.nan)
                data[key][np.searchsorted(steps, col[:, 0])] = col[:, 1]
        index = pd.Index(steps.astype(np.int64), name="step")
        return pd.DataFrame(data, index=index, columns=pd.Index(keys, dtype=object))

    @_one_snapshot
    def vectors(self, name: str, key: str, since_step: int | None = None) -> pd.DataFrame:
        """Vector ``key`` of run ``name``: index ``step``, columns ``0 .. n-1`` (float; a
        shorter vector is padded with NaN, as are NaN/inf entries)."""
        import numpy as np
        import pandas as pd

        run = self._run_id(name)
        after = -1 if since_step is None else int(since_step)
        rows = self._query(
            "SELECT step, value FROM vectors WHERE run_id = ? AND key = ? AND step > ? "
            "ORDER BY step",
            (run, key, after),
        )
        values = [[math.nan if v is None else v for v in json.loads(r[1])] for r in rows]
        width = max((len(v) for v in values), default=0)
        data = np.full((len(values), width), np.nan)
        for i, v in enumerate(values):
            data[i, : len(v)] = v
        index = pd.Index([r[0] for r in rows], dtype="int64", name="step")
        return pd.DataFrame(data, index=index, columns=pd.RangeIndex(width))

    # -- snapshots --------------------------------------------------------------------------

    @_one_snapshot
    def snapshot_keys(self, name: str) -> list[str]:
        """The snapshot keys of run ``name``, sorted."""
        run = self._run_id(name)
        return [r[0] for r in self._query(_KEYS_SQL.format(table="snapshots"), {"run": run})]

    @_one_snapshot
    def snapshot_steps(self, name: str, key: str) -> list[int]:
        """The steps at which ``key`` was snapshotted, ascending."""
        run = self._run_id(name)
        rows = self._query(
            "SELECT step FROM snapshots WHERE run_id = ? AND key = ? ORDER BY step", (run, key)
        )
        return [int(r[0]) for r in rows]

    @_one_snapshot
    def snapshot(self, name: str, key: str, step: int) -> np.ndarray:
        """The tensor ``key`` as logged at ``step``: same dtype, shape and values."""
        run = self._run_id(name)
        rows = self._query(
            "SELECT dtype, shape, data FROM snapshots WHERE run_id = ? AND key = ? AND step = ?",
            (run, key, int(step)),
        )
        if not rows:
            steps = self.snapshot_steps(name, key)
            have = f"steps with it: {_shorten(steps)}" if steps else "no snapshots under it"
            raise SnapshotNotFoundError(
                f"run {name!r} has no snapshot {key!r} at step {step}; {have}"
            )
        return _array(*rows[0])

    @_one_snapshot
    def snapshots(self, name: str, key: str) -> dict[int, np.ndarray]:
        """Every snapshot of ``key``, by step, ascending."""
        run = self._run_id(name)
        rows = self._query(
            "SELECT step, dtype, shape, data FROM snapshots WHERE run_id = ? AND key = ? "
            "ORDER BY step",
            (run, key),
        )
        return {int(r[0]): _array(*r[1:]) for r in rows}

    # -- export -----------------------------------------------------------------------------

    def export(self, name: str, dest: str | os.PathLike, fmt: str = "csv") -> Path:
        """Write the scalars of run ``name`` (a ``step`` column, then one per key) to ``dest``
        as ``csv`` or ``parquet`` (pyarrow); return the path."""
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"export format {fmt!r} is not supported; use 'csv' or 'parquet'")
        table = self.scalars(name).reset_index()
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            table.to_csv(dest, index=False)
        else:
            table.to_parquet(dest, engine="pyarrow", index=False)
        return dest


def _notes(text: str | None) -> dict:
    """A run's ``notes`` as a dict ({} when missing or not a JSON object)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _cadence(notes: dict) -> dict | None:
    """The cadence a run's notes hold (setting -> steps), or None."""
    value = notes.get(CADENCE_NOTE)
    return dict(value) if isinstance(value, dict) else None


def _is_tag(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(value.get(k), str)
                                           for k in ("bug", "variant"))


def _config_and_tag(config_json: str, notes: dict) -> tuple[dict, dict | None]:
    """The run's config and its catalog tag (None: not a catalog run). The tag is in the
    notes; a run stored before that carries it in the config, which is returned without it."""
    config = json.loads(config_json)
    tag = notes.get(CATALOG_NOTE)
    if _is_tag(tag):
        return config, tag
    if isinstance(config, dict) and _is_tag(config.get(CATALOG_NOTE)):
        return {k: v for k, v in config.items() if k != CATALOG_NOTE}, config[CATALOG_NOTE]
    return config, None


def _array(dtype: str, shape: str, data: bytes) -> np.ndarray:
    """Rebuild a stored tensor: little-endian bytes to a native-order array."""
    import numpy as np

    native = np.dtype(dtype)
    flat = np.frombuffer(data, dtype=native.newbyteorder("<"))
    return flat.reshape(json.loads(shape)).astype(native, copy=True)


def _shorten(steps: list[int]) -> str:
    shown = ", ".join(map(str, steps[:10]))
    return shown + (f" ... ({len(steps)} in all)" if len(steps) > 10 else "")
