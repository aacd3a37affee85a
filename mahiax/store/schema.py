"""The store's SQLite schema (version 1) and the settings every connection uses.

The tables are documented column by column in :mod:`mahiax.store` and ``docs/store.md``.
Rows are keyed by ``(run_id, key, step)`` so that reading one key of one run is one index
range, and writes use ``INSERT OR REPLACE`` so that a resumed run may rewrite a step.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

STATUSES = ("running", "finished", "failed", "interrupted")

# the key of ``runs.notes`` that tags a bug-catalog run: {"bug": entry id, "variant": ...}.
# Stores written before tags were notes carry it in the config JSON under the same key; the
# reader takes it from there (and leaves it out of the config it returns).
CATALOG_NOTE = "catalog"

# the key of ``runs.notes`` that holds the cadence a training run was recorded with (the
# fields of :class:`mahiax.telemetry.cadence.Cadence`: snapshot_every, max_vio_window ...); runs
# recorded before the cadence was kept have none
CADENCE_NOTE = "cadence"

TABLES = ("meta", "runs", "scalars", "vectors", "snapshots")

DDL = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY,
    name          TEXT UNIQUE NOT NULL,
    config        TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in STATUSES)})),
    created       REAL NOT NULL,
    updated       REAL NOT NULL,
    heartbeat     REAL,
    pid           INTEGER,
    last_step     INTEGER,
    error_type    TEXT,
    error_message TEXT,
    error_step    INTEGER,
    world_size    INTEGER NOT NULL DEFAULT 1,
    device        TEXT,
    notes         TEXT
);
CREATE TABLE IF NOT EXISTS scalars (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step   INTEGER NOT NULL,
    key    TEXT NOT NULL,
    value  REAL,
    PRIMARY KEY (run_id, key, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vectors (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step   INTEGER NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step   INTEGER NOT NULL,
    key    TEXT NOT NULL,
    dtype  TEXT NOT NULL,
    shape  TEXT NOT NULL,
    data   BLOB NOT NULL,
    PRIMARY KEY (run_id, key, step)
);
"""
DDL_STATEMENTS = tuple(s.strip() for s in DDL.split(";") if s.strip())

# WAL: readers read a consistent snapshot while the one writer appends; they never block it
# and it never blocks them. synchronous=NORMAL: a committed transaction survives the process
# being killed (it is in the OS's hands); a power loss or OS crash may lose the last few.
WRITER_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")

INSERT_SCALARS = "INSERT OR REPLACE INTO scalars (run_id, step, key, value) VALUES (?, ?, ?, ?)"
INSERT_VECTORS = "INSERT OR REPLACE INTO vectors (run_id, step, key, value) VALUES (?, ?, ?, ?)"
INSERT_SNAPSHOTS = (
    "INSERT OR REPLACE INTO snapshots (run_id, step, key, dtype, shape, data) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
