"""The run store: one SQLite file that a training process writes live and any number of
readers (dashboard, notebooks, CLI) read at the same time.

    from mahiax.store import RunWriter, RunReader

    with RunWriter("baseline", config) as w:          # runs/mahiax.sqlite by default
        for step in range(w.resume_step, 300):
            w.log({"loss": loss}, step)
            w.log_vector("moe/tokens_per_expert", counts, step)
            w.log_tensor("memory/nodes", nodes, step)
            w.heartbeat()
    RunReader().scalars("baseline", ["loss"])         # DataFrame: index step, column loss

Guarantees (details in ``docs/store.md``):

- **WAL mode, one writer per run, readers never blocked.** Readers open read-only and see
  the last committed transaction; the writer is never kept waiting by them.
- **Batched writes.** ``log*`` append to memory; a flush is one transaction every
  ``flush_every_s`` (0.5 s) or ``flush_rows`` (2000) rows, and only ever commits whole steps.
- **Kill-safe.** ``synchronous=NORMAL``: every committed transaction survives the process
  being killed (SIGKILL included); a power loss or OS crash may lose the last one. A killed
  run reads as ``interrupted`` once its heartbeat is older than 15 s, or at once when its
  process is gone (same host).
- **Non-finite scalars** (NaN, ±inf) are stored as SQL NULL and read back as NaN.

Schema, version 1 (``SCHEMA_VERSION``); all times are Unix seconds (UTC):

``meta`` (key TEXT PRIMARY KEY, value TEXT)
    ``schema_version``: the schema the file was written with; a newer one than this
    package reads is refused (:class:`NewerSchemaError`). ``created``: when the file was made.

``runs``, one row per run
    =============  =============  ========================================================
    id             INTEGER        primary key (rows of the other tables point at it)
    name           TEXT UNIQUE    1-64 of ``A-Z a-z 0-9 - _ .``, not starting with ``.``
    config         TEXT NOT NULL  the run's configuration as a JSON object
    status         TEXT NOT NULL  ``running``, ``finished``, ``failed`` or ``interrupted``
                                  (as written; readers derive ``interrupted`` for a dead
                                  ``running`` run)
    created        REAL           creation time
    updated        REAL           last write
    heartbeat      REAL           last sign of life from the writer
    pid            INTEGER        the writer's process id
    last_step      INTEGER        newest committed step (NULL: none yet)
    error_type     TEXT           a failed run's exception type
    error_message  TEXT           its message
    error_step     INTEGER        the step it failed at, when known
    world_size     INTEGER        processes training the run (default 1)
    device         TEXT           e.g. ``cpu``, ``cuda:0``
    notes          TEXT           JSON object of writer bookkeeping: ``host``, ``pid``,
                                  ``pid_started`` (to tell a live writer from a reused pid),
                                  after a failure ``traceback``, for a bug-catalog run
                                  ``catalog``: ``{"bug": entry id, "variant": ...}``, and
                                  ``cadence``: the run's cadence settings (setting -> steps)
    =============  =============  ========================================================

``scalars`` (run_id INTEGER, step INTEGER, key TEXT, value REAL), PRIMARY KEY (run_id, key,
step), WITHOUT ROWID
    One number per key and step; ``value`` is NULL for NaN and ±inf.

``vectors`` (run_id INTEGER, step INTEGER, key TEXT, value TEXT), PRIMARY KEY (run_id, key,
step), WITHOUT ROWID
    ``value``: a JSON array of numbers (``null`` for NaN and ±inf), e.g. tokens per expert.

``snapshots`` (run_id INTEGER, step INTEGER, key TEXT, dtype TEXT, shape TEXT, data BLOB),
PRIMARY KEY (run_id, key, step)
    A tensor: ``dtype`` a numpy dtype name (``float32``, ``int64``, ``bool`` ...; bfloat16
    is stored as ``float32``), ``shape`` a JSON array, ``data`` the C-order little-endian
    bytes.

Rows are written with ``INSERT OR REPLACE``: a resumed run that logs a step again replaces it.
"""

from mahiax.store.errors import (
    BadRunNameError,
    NewerSchemaError,
    NotAStoreError,
    RunExistsError,
    RunNotFoundError,
    SnapshotNotFoundError,
    StoreError,
    StoreLockedError,
)
from mahiax.store.liveness import STALE_AFTER_S
from mahiax.store.paths import DEFAULT_DIR, ENV_VAR, resolve_store_path, validate_run_name
from mahiax.store.reader import RUN_COLUMNS, RunReader
from mahiax.store.schema import SCHEMA_VERSION
from mahiax.store.writer import RunWriter, WriterStats, delete_run

__all__ = [
    "DEFAULT_DIR",
    "ENV_VAR",
    "RUN_COLUMNS",
    "SCHEMA_VERSION",
    "STALE_AFTER_S",
    "BadRunNameError",
    "NewerSchemaError",
    "NotAStoreError",
    "RunExistsError",
    "RunNotFoundError",
    "RunReader",
    "RunWriter",
    "SnapshotNotFoundError",
    "StoreError",
    "StoreLockedError",
    "WriterStats",
    "delete_run",
    "resolve_store_path",
    "validate_run_name",
]
