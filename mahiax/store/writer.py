"""The writer of one run: buffers what the training loop logs and commits it in batches.

``log``, ``log_vector`` and ``log_tensor`` only append to lists in memory (plus the copy of
a tensor's bytes). A batch is committed as one ``BEGIN IMMEDIATE ... COMMIT`` transaction
when ``flush_every_s`` has passed since the last one or ``flush_rows`` rows are waiting; an
automatic flush only commits *complete* steps, the steps before the newest one logged, so a
killed process never leaves half a step behind. ``flush()`` and ``finish()`` commit
everything.

An automatic flush (from ``log*`` or ``heartbeat``) is written by a committer thread, so the
training thread only hands over the batch: SQLite works with the GIL released while the
training step goes on. One batch is in flight at a time (rows logged meanwhile wait for the
next flush); ``flush()``, ``rewind()`` and ``finish()`` wait for it and commit on the
caller's thread; an error of the committer (the run deleted or taken over, a busy store) is
raised by the writer's next call. ``background=False`` commits every flush on the caller's
thread.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import socket
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mahiax.store.connection import (
    DEFAULT_BUSY_TIMEOUT_S,
    connect_writer,
    run_names,
    write_transaction,
)
from mahiax.store.errors import RunExistsError, RunNotFoundError, StoreError
from mahiax.store.liveness import STALE_AFTER_S, effective_status, owner_notes
from mahiax.store.paths import resolve_store_path, validate_run_name
from mahiax.store.schema import (
    CADENCE_NOTE,
    CATALOG_NOTE,
    INSERT_SCALARS,
    INSERT_SNAPSHOTS,
    INSERT_VECTORS,
)

ENDINGS = ("finished", "failed", "interrupted")
_MAX_TEXT = 20_000  # characters kept of an error message or traceback

# writers open in this process, by (store path, run name): a second one is refused
_OPEN: weakref.WeakValueDictionary[tuple[str, str], RunWriter] = weakref.WeakValueDictionary()


@dataclass(kw_only=True)
class WriterStats:
    """What a writer has cost so far (for the telemetry-overhead benchmark)."""

    rows_written: int = 0  # scalar, vector and snapshot rows committed
    flushes: int = 0  # transactions that committed rows
    flush_seconds: float = 0.0  # wall time spent inside those transactions


class _Rows:
    """Rows waiting to be written, one list per table, as their INSERT parameters."""

    __slots__ = ("scalars", "vectors", "snapshots")

    def __init__(self) -> None:
        self.scalars: list[tuple] = []
        self.vectors: list[tuple] = []
        self.snapshots: list[tuple] = []

    def __len__(self) -> int:
        return len(self.scalars) + len(self.vectors) + len(self.snapshots)

    def extend(self, other: _Rows) -> None:
        self.scalars += other.scalars
        self.vectors += other.vectors
        self.snapshots += other.snapshots

    def max_step(self) -> int | None:
        steps = [r[1] for rows in (self.scalars, self.vectors, self.snapshots) for r in rows]
        return max(steps) if steps else None

    def drop_from(self, step: int) -> None:
        """Forget rows at ``step`` or later."""
        self.scalars = [r for r in self.scalars if r[1] < step]
        self.vectors = [r for r in self.vectors if r[1] < step]
        self.snapshots = [r for r in self.snapshots if r[1] < step]


class RunWriter:
    """The one writer of run ``name`` in the store at ``path`` (see :func:`resolve_store_path`).

    A new run is created with status ``running``; with ``resume=True`` an existing run is
    reopened and set running again (its error, if any, is cleared; its config replaced by
    ``config``). A run another live process is writing is refused in both cases.

    Use it as a context manager, or call :meth:`finish`: leaving the ``with`` block normally
    records ``finished``, with an exception ``failed`` (type and message; ``error_step`` is
    left empty as the writer cannot know it), with ``KeyboardInterrupt`` or ``SystemExit``
    ``interrupted``. :meth:`close` without :meth:`finish` records ``interrupted``: a run is
    only ``finished`` when the caller says so.

    Values: ``None`` scalars are skipped; NaN and ±inf are stored as SQL NULL and read back as
    NaN. Steps are integers >= 0. Not thread-safe: call it from the training thread (its
    own committer thread writes the automatic flushes, see the module's docstring).

    ``catalog=(entry id, variant)`` tags a run of the bug catalog (``mahiax train --bug``):
    stored in ``notes``, read back as the ``bug`` and ``variant`` columns, kept on resume.

    ``cadence`` (a mapping of setting -> steps, e.g. ``Cadence.to_dict()`` of a
    :class:`mahiax.telemetry.cadence.Cadence`) is how often the run's readings are taken: stored in
    ``notes``, read back as the ``cadence`` column (the dashboard reads MaxVio's window
    from it); a resume without one keeps the stored one.
    """

    def __init__(
        self,
        name: str,
        config: Mapping[str, Any],
        *,
        path: str | os.PathLike | None = None,
        resume: bool = False,
        device: str = "cpu",
        world_size: int = 1,
        catalog: tuple[str, str] | None = None,
        cadence: Mapping[str, int | None] | None = None,
        flush_every_s: float = 0.5,
        flush_rows: int = 2000,
        heartbeat_s: float = 2.0,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        background: bool = True,
    ):
        self.name = validate_run_name(name)
        _check_number("flush_every_s", flush_every_s, minimum=0)
        _check_number("heartbeat_s", heartbeat_s, minimum=0)
        _check_number("busy_timeout_s", busy_timeout_s, minimum=0)
        _check_int("flush_rows", flush_rows, minimum=1)
        _check_int("world_size", world_size, minimum=1)
        config_json = _config_json(config)
        self.path = resolve_store_path(path)
        self.flush_every_s, self.flush_rows = float(flush_every_s), int(flush_rows)
        self.heartbeat_s, self.busy_timeout_s = float(heartbeat_s), float(busy_timeout_s)
        self.stats = WriterStats()
        self._background = bool(background)
        self._committer: threading.Thread | None = None  # the automatic flush in flight
        self._committer_error: BaseException | None = None
        self._committer_failed: tuple[_Rows, int | None] | None = None  # rows, last step
        self._ready = _Rows()  # complete steps, committed at the next flush
        self._pending = _Rows()  # rows of the newest step, which may still get more
        self._newest: int | None = None
        self._finished = self._closed = False
        self._notes = owner_notes()
        if catalog is not None:
            self._notes[CATALOG_NOTE] = _catalog_tag(catalog)
        if cadence is not None:
            self._notes[CADENCE_NOTE] = _cadence_note(cadence)
        self._conn = connect_writer(self.path, self.busy_timeout_s)
        try:
            self._run_id, self._last_step = self._open_run(config_json, resume, device,
                                                           world_size)
        except BaseException:
            self._conn.close()
            raise
        self._resume_step = 0 if self._last_step is None else self._last_step + 1
        self._last_flush = self._last_beat = time.monotonic()
        _OPEN[(str(self.path), self.name)] = self

    # -- opening ----------------------------------------------------------------------------

    def _open_run(
        self, config_json: str, resume: bool, device: str, world_size: int
    ) -> tuple[int, int | None]:
        now = time.time()
        notes = json.dumps(self._notes)
        with write_transaction(self._conn, self.path, self.busy_timeout_s) as c:
            row = c.execute(
                "SELECT id, status, heartbeat, pid, last_step, notes FROM runs WHERE name = ?",
                (self.name,),
            ).fetchone()
            if row is None:
                if resume:
                    raise RunNotFoundError(self.name, self.path, run_names(c))
                cur = c.execute(
                    "INSERT INTO runs (name, config, status, created, updated, heartbeat, pid, "
                    "world_size, device, notes) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                    (self.name, config_json, now, now, now, os.getpid(), world_size, device,
                     notes),
                )
                return int(cur.lastrowid), None
            run_id, status, heartbeat, pid, last_step, old_notes = row
            if _written_by_live_process(self.path, self.name, status, heartbeat, pid, old_notes):
                raise RunExistsError(self.name, self.path, writer_pid=pid)
            if not resume:
                raise RunExistsError(self.name, self.path)
            old = _json_object(old_notes)
            for note in (CATALOG_NOTE, CADENCE_NOTE):  # a run keeps its tag and cadence
                if old.get(note) is not None and note not in self._notes:
                    self._notes[note] = old[note]
            notes = json.dumps(self._notes)
            c.execute(
                "UPDATE runs SET config = ?, status = 'running', updated = ?, heartbeat = ?, "
                "pid = ?, error_type = NULL, error_message = NULL, error_step = NULL, "
                "world_size = ?, device = ?, notes = ? WHERE id = ?",
                (config_json, now, now, os.getpid(), world_size, device, notes, run_id),
            )
            return int(run_id), last_step

    # -- what the run looks like ------------------------------------------------------------

    @property
    def resume_step(self) -> int:
        """The first step to log: last step committed before this writer opened, plus one."""
        return self._resume_step

    @property
    def last_step(self) -> int | None:
        """The newest step committed so far, or handed to the committer thread (None
        while nothing is)."""
        return self._last_step

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"RunWriter({self.name!r}, path={str(self.path)!r}, {state})"

    # -- logging ----------------------------------------------------------------------------

    def log(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Buffer one scalar per key at ``step``; None is skipped, NaN/±inf become NULL."""
        self._check_open()
        step = _check_step(step)
        rows = [
            (self._run_id, step, _check_key(key), _scalar(key, value, step))
            for key, value in metrics.items()
            if value is not None
        ]
        self._add(step).scalars.extend(rows)
        self._maybe_flush()

    def log_vector(self, key: str, values: Sequence[float], step: int) -> None:
        """Buffer a 1-D sequence of numbers (list, array, tensor) as one JSON array."""
        self._check_open()
        step = _check_step(step)
        key = _check_key(key)
        if hasattr(values, "tolist"):  # numpy arrays and torch tensors
            values = values.tolist()
        if type(values) is not list and (
                isinstance(values, (str, bytes)) or not isinstance(values, Sequence)):
            raise ValueError(
                f"vector {key!r} at step {step} must be a 1-D sequence of numbers, "
                f"got {type(values).__name__}"
            )
        items = [
            (v if math.isfinite(v) else None) if type(v) is float  # the common case, cheaply
            else _scalar(f"{key}[{i}]", v, step)
            for i, v in enumerate(values)
        ]
        self._add(step).vectors.append((self._run_id, step, key, json.dumps(items)))
        self._maybe_flush()

    def log_tensor(self, key: str, tensor: Any, step: int) -> None:
        """Buffer a copy of ``tensor`` (torch or numpy) as little-endian bytes, dtype, shape.

        bfloat16 and other dtypes numpy lacks are stored as float32.
        """
        self._check_open()
        step = _check_step(step)
        key = _check_key(key)
        arr = _to_array(key, tensor)
        row = (self._run_id, step, key, arr.dtype.name, json.dumps(list(arr.shape)),
               arr.tobytes())
        self._add(step).snapshots.append(row)
        self._maybe_flush()

    def _add(self, step: int) -> _Rows:
        """The buffer a row of ``step`` goes to; a newer step completes the pending one."""
        if self._newest is None or step > self._newest:
            self._ready.extend(self._pending)
            self._pending = _Rows()
            self._newest = step
        return self._pending if step == self._newest else self._ready

    def _maybe_flush(self) -> None:
        if not self._ready:
            return
        due = time.monotonic() - self._last_flush >= self.flush_every_s
        if due or len(self._ready) + len(self._pending) >= self.flush_rows:
            self._commit_automatically()

    # -- committing -------------------------------------------------------------------------

    def flush(self) -> None:
        """Commit everything buffered, the newest step included, in one transaction."""
        self._check_open()
        self._ready.extend(self._pending)
        self._pending = _Rows()
        self._commit()

    def heartbeat(self) -> None:
        """Tell readers the writer is alive; writes only if ``heartbeat_s`` has passed."""
        self._check_open()
        if time.monotonic() - self._last_beat < self.heartbeat_s:
            return
        self._commit_automatically()  # complete steps, if any, and the heartbeat

    def rewind(self, step: int) -> None:
        """Delete the run's rows at ``step`` and later (buffered or stored).

        For a resumed run restarting from a checkpoint older than its last stored step: the
        store then holds exactly the history the resumed run continues.
        """
        self._check_open()
        step = _check_step(step)
        self._ready.extend(self._pending)
        self._pending = _Rows()
        self._ready.drop_from(step)
        self._newest = None
        self._commit(rewind_to=step)

    def finish(
        self,
        status: str = "finished",
        error: BaseException | None = None,
        error_step: int | None = None,
    ) -> None:
        """Commit everything and record how the run ended; then close. A second call is a no-op.

        ``status`` is ``finished``, ``failed`` or ``interrupted``; given an ``error``, a
        ``finished`` becomes ``failed`` and the error's type, message and ``error_step`` are
        stored (its traceback goes to ``notes``).
        """
        if self._finished:
            return
        self._check_open()
        if status not in ENDINGS:
            raise ValueError(f"status {status!r} is not one of {', '.join(ENDINGS)}")
        if error_step is not None:
            error_step = _check_step(error_step)
        if error is not None and status == "finished":
            status = "failed"
        notes = dict(self._notes)
        ending: dict[str, Any] = {"status": status, "error_type": None, "error_message": None,
                                  "error_step": error_step}
        if error is not None:
            ending["error_type"] = type(error).__name__
            ending["error_message"] = str(error)[:_MAX_TEXT]
            tb = "".join(traceback.format_exception(error))
            notes["traceback"] = tb[-_MAX_TEXT:]
        ending["notes"] = json.dumps(notes)
        self._ready.extend(self._pending)
        self._pending = _Rows()
        self._commit(ending=ending)
        self._finished = True
        self.close()

    def close(self) -> None:
        """Release the store. Unfinished, the run is committed and recorded ``interrupted``."""
        if self._closed:
            return
        try:
            if not self._finished:
                self.finish("interrupted")
        finally:
            self._closed = True
            if self._committer is not None:  # never close the connection under it
                self._committer.join()
            self._conn.close()
            if _OPEN.get((str(self.path), self.name)) is self:
                del _OPEN[(str(self.path), self.name)]

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._closed:
            return False
        if exc is None:
            self.finish("finished")
            return False
        try:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                self.finish("interrupted")
            else:
                self.finish("failed", error=exc)
        except StoreError as e:  # never hide the training error behind a store error
            warnings.warn(f"run {self.name!r} could not be marked ended: {e}", stacklevel=2)
            self._finished = True
            self.close()
        return False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the RunWriter of run {self.name!r} is closed")

    def _commit(self, ending: dict | None = None, rewind_to: int | None = None) -> None:
        """One transaction on this thread, after the committer's batch in flight, if any:
        the complete-step rows, last_step, heartbeat, and any ending."""
        self._wait_for_committer()
        before = self._last_step
        batch, last = self._take_batch(rewind_to)
        try:
            self._transaction(batch, last, ending, rewind_to)
        except BaseException:
            self._give_back(batch, before)
            raise

    def _commit_automatically(self) -> None:
        """An automatic flush: handed to the committer thread (or committed here with
        ``background=False``). While a batch is still in flight the rows wait."""
        if not self._background:
            self._commit()
            return
        self._raise_committer_error()
        if self._committer is not None:
            if self._committer.is_alive():
                return
            self._committer = None
        before = self._last_step
        batch, last = self._take_batch()
        self._committer = threading.Thread(
            target=self._commit_in_background, args=(batch, last, before),
            name=f"mahiax-store-commit-{self.name}", daemon=True)
        self._committer.start()

    def _commit_in_background(self, batch: _Rows, last: int | None,
                              before: int | None) -> None:
        try:
            self._transaction(batch, last)
        except BaseException as e:  # raised on the training thread by the next call
            self._committer_failed = (batch, before)
            self._committer_error = e

    def _give_back(self, batch: _Rows, last_step: int | None) -> None:
        """Rows a transaction did not write go back ahead of the newer ones, to be
        written by the next flush (e.g. once a lock is released)."""
        batch.extend(self._ready)
        self._ready = batch
        self._last_step = last_step

    def _wait_for_committer(self) -> None:
        if self._committer is not None:
            self._committer.join()
            self._committer = None
        self._raise_committer_error()

    def _raise_committer_error(self) -> None:
        error, self._committer_error = self._committer_error, None
        if error is not None:
            failed, self._committer_failed = self._committer_failed, None
            if failed is not None:
                self._give_back(*failed)
            raise error

    def _take_batch(self, rewind_to: int | None = None) -> tuple[_Rows, int | None]:
        """The rows ready to commit, and the run's last step once they are: the buffer is
        emptied and the writer's bookkeeping moves on as the batch is handed over."""
        batch = self._ready
        newest = batch.max_step()
        last = self._last_step
        if rewind_to is not None and last is not None and last >= rewind_to:
            last = rewind_to - 1 if rewind_to > 0 else None
        if newest is not None:
            last = newest if last is None else max(last, newest)
        self._ready = _Rows()
        self._last_step = last
        self._last_flush = self._last_beat = time.monotonic()
        return batch, last

    def _transaction(self, batch: _Rows, last: int | None, ending: dict | None = None,
                     rewind_to: int | None = None) -> None:
        """Write ``batch`` and the run's row in one transaction (on whichever thread)."""
        now = time.time()
        start = time.perf_counter()
        with write_transaction(self._conn, self.path, self.busy_timeout_s) as c:
            if rewind_to is not None:
                for table in ("scalars", "vectors", "snapshots"):
                    c.execute(f"DELETE FROM {table} WHERE run_id = ? AND step >= ?",
                              (self._run_id, rewind_to))
            if batch.scalars:
                c.executemany(INSERT_SCALARS, batch.scalars)
            if batch.vectors:
                c.executemany(INSERT_VECTORS, batch.vectors)
            if batch.snapshots:
                c.executemany(INSERT_SNAPSHOTS, batch.snapshots)
            cur = c.execute(
                "UPDATE runs SET last_step = ?, updated = ?, heartbeat = ? "
                "WHERE id = ? AND pid = ?",
                (last, now, now, self._run_id, os.getpid()),
            )
            if cur.rowcount != 1:
                self._lost(c)
            if ending is not None:
                cols = ", ".join(f"{k} = ?" for k in ending)
                c.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*ending.values(), self._run_id))
        if batch:
            self.stats.rows_written += len(batch)
            self.stats.flushes += 1
            self.stats.flush_seconds += time.perf_counter() - start

    def _lost(self, c) -> None:
        """Raise: the run was deleted, or taken over by another writer (its heartbeat went
        stale, so it read as interrupted)."""
        row = c.execute("SELECT pid FROM runs WHERE id = ?", (self._run_id,)).fetchone()
        what = "deleted" if row is None else f"taken over by process {row[0]}"
        self._finished = True  # the run is not ours to end: close() only lets go
        raise StoreError(
            f"run {self.name!r} in run store {self.path} was {what} while this process was "
            f"writing it; its rows since the last flush were not written"
        )


def delete_run(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
) -> None:
    """Delete run ``name`` and all its rows; refused while a live process writes it."""
    name = validate_run_name(name)
    store = resolve_store_path(path)
    if not store.exists():
        raise RunNotFoundError(name, store, [])
    conn = connect_writer(store, busy_timeout_s)
    try:
        with write_transaction(conn, store, busy_timeout_s) as c:
            row = c.execute(
                "SELECT id, status, heartbeat, pid, notes FROM runs WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise RunNotFoundError(name, store, run_names(c))
            run_id, status, heartbeat, pid, notes = row
            if _written_by_live_process(store, name, status, heartbeat, pid, notes):
                raise RunExistsError(name, store, writer_pid=pid)
            for table in ("scalars", "vectors", "snapshots"):
                c.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            c.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    finally:
        conn.close()


def _written_by_live_process(
    path: Path, name: str, status: str, heartbeat: float | None, pid: int | None,
    notes_json: str | None,
) -> bool:
    """Whether another writer, here or in a live process, still holds run ``name``."""
    writer = _OPEN.get((str(path), name))
    if writer is not None and not writer.closed:
        return True
    notes = _json_object(notes_json)
    if pid == os.getpid() and notes.get("host") == socket.gethostname():
        return False  # this process's earlier writer, abandoned without close()
    return effective_status(status, heartbeat, pid, notes, STALE_AFTER_S) == "running"


def _json_object(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _catalog_tag(catalog: object) -> dict[str, str]:
    """``(entry id, variant)`` as the notes' ``catalog`` object; anything else is refused."""
    if not (isinstance(catalog, tuple) and len(catalog) == 2
            and all(isinstance(part, str) and part for part in catalog)):
        raise ValueError(f"catalog must be (entry id, variant), two non-empty strings, "
                         f"got {catalog!r}")
    return {"bug": catalog[0], "variant": catalog[1]}


def _cadence_note(cadence: object) -> dict[str, int | None]:
    """A cadence as the notes' ``cadence`` object: setting name -> positive int or None."""
    if not isinstance(cadence, Mapping):
        raise TypeError(f"cadence={cadence!r} must be a mapping of setting -> steps")
    out: dict[str, int | None] = {}
    for key, value in cadence.items():
        if not isinstance(key, str) or not (
                value is None or (isinstance(value, int) and not isinstance(value, bool))):
            raise TypeError(f"cadence {key!r}={value!r}: expected a name and an int or None")
        out[key] = value
    return out


def _config_json(config: Mapping[str, Any]) -> str:
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping (a dict), got {type(config).__name__}")
    try:
        return json.dumps(dict(config))
    except (TypeError, ValueError) as e:
        raise ValueError(f"config must be JSON-serialisable: {e}") from None


def _check_number(name: str, value: object, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= minimum:
        raise ValueError(f"{name}={value!r} must be a number >= {minimum}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def _check_step(step: object) -> int:
    if type(step) is int and step >= 0:  # the common case, without the ABC check below
        return step
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step={step!r} must be an integer >= 0")
    return int(step)


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"a metric key must be a non-empty string, got {key!r}")
    return key


def _scalar(key: str, value: object, step: int) -> float | None:
    """``value`` as a float, or None (SQL NULL) when it is NaN or infinite."""
    if type(value) is float:  # the common case: a probe's figure, already a float
        return value if math.isfinite(value) else None
    if isinstance(value, (str, bytes)):
        raise ValueError(f"scalar {key!r} at step {step} must be a number, got {value!r}")
    try:
        v = float(value)  # int, float, numpy scalar, one-element tensor
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"scalar {key!r} at step {step} must be a number, got {type(value).__name__}"
        ) from None
    return v if math.isfinite(v) else None


def _to_array(key: str, tensor: Any) -> np.ndarray:
    """A contiguous little-endian numpy copy of a torch tensor or array-like."""
    if hasattr(tensor, "detach") and hasattr(tensor, "cpu"):  # torch, without importing it
        t = tensor.detach().cpu().resolve_conj().resolve_neg()
        try:
            arr = t.numpy()
        except TypeError:  # bfloat16, float8: no numpy dtype
            arr = t.float().numpy()
    else:
        arr = np.asarray(tensor)
    if arr.dtype.kind not in "biufc":
        raise ValueError(
            f"tensor {key!r} has dtype {arr.dtype}; only bool, integer, float and complex "
            f"tensors can be stored"
        )
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
