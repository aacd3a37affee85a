"""Opening a store file: the checks that turn SQLite's errors into clear ones, and the
write transaction every change goes through.

Writers open the file read-write (creating it and its tables on first use); readers open it
with ``mode=ro`` so that nothing they do can change or lock it against the writer.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mahiax.store.errors import NewerSchemaError, NotAStoreError, StoreError, StoreLockedError
from mahiax.store.schema import DDL_STATEMENTS, SCHEMA_VERSION, TABLES, WRITER_PRAGMAS

DEFAULT_BUSY_TIMEOUT_S = 5.0


def is_busy(e: sqlite3.Error) -> bool:
    """Whether SQLite refused because another connection holds a lock."""
    name = getattr(e, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(e)


def translate(e: sqlite3.Error, path: Path, waited_s: float = 0.0) -> Exception:
    """The store error that says what ``e`` means for the store at ``path``."""
    name = getattr(e, "sqlite_errorname", "") or ""
    if is_busy(e):
        return StoreLockedError(path, waited_s)
    if name == "SQLITE_NOTADB":
        return NotAStoreError(path, "not an SQLite database")
    if name.startswith("SQLITE_CORRUPT"):
        return StoreError(f"run store {path} is damaged (SQLite: {e}); move it aside to start anew")
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_FULL",
                        "SQLITE_IOERR")):
        return StoreError(f"run store {path} cannot be used (SQLite: {e}); check the file, "
                          f"its folder's permissions and free disk space")
    return e


def check_store(conn: sqlite3.Connection, path: Path) -> bool:
    """Raise unless ``conn`` is a store this mahiax can read; False for an empty database.

    An empty database (no tables at all) is what a writer creates an instant before it adds
    the tables, so readers treat it as a store with no runs and writers initialise it.
    """
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return False
        if "meta" not in tables:
            raise NotAStoreError(path, "no 'meta' table", is_sqlite=True)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.Error as e:
        raise translate(e, path) from e
    if row is None:
        raise NotAStoreError(path, "its 'meta' table has no schema_version", is_sqlite=True)
    try:
        version = int(row[0])
    except (TypeError, ValueError):
        raise NotAStoreError(
            path, f"its schema_version {row[0]!r} is not a number", is_sqlite=True
        ) from None
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(path, version, SCHEMA_VERSION)
    missing = [t for t in TABLES if t not in tables]
    if missing:
        raise NotAStoreError(path, f"missing tables: {', '.join(missing)}", is_sqlite=True)
    return True


@contextmanager
def write_transaction(
    conn: sqlite3.Connection, path: Path, busy_timeout_s: float
) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, waiting up to ``busy_timeout_s`` for the lock.

    SQLite's own busy handler waits inside each attempt; an attempt refused at once (as during
    another process's recovery) is retried with a growing pause until the timeout has passed,
    then :class:`StoreLockedError` is raised. Any error inside rolls the transaction back.
    """
    start = time.monotonic()
    pause = 0.005
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as e:
            waited = time.monotonic() - start
            if not is_busy(e):
                raise translate(e, path) from e
            if waited >= busy_timeout_s:
                raise StoreLockedError(path, waited) from e
            time.sleep(min(pause, busy_timeout_s - waited))
            pause = min(pause * 2, 0.1)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as e:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one to report
        if isinstance(e, sqlite3.Error):
            raise translate(e, path, time.monotonic() - start) from e
        raise


def connect_writer(
    path: Path, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
) -> sqlite3.Connection:
    """A read-write connection to the store at ``path``, created with its tables if missing."""
    if not path.exists():
        _create_store(path)
    try:
        # one writer thread at a time uses it: the RunWriter's own, or its committer
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s,
                               check_same_thread=False)
    except sqlite3.Error as e:
        raise translate(e, path) from e
    try:
        ready = check_store(conn, path)  # before WAL: never convert someone else's database
        for pragma in WRITER_PRAGMAS:
            _with_retry(conn, pragma, path, busy_timeout_s)
        if not ready:  # an empty database file (e.g. made by `touch`): initialise it in place
            with write_transaction(conn, path, busy_timeout_s):
                if not check_store(conn, path):  # another writer may have won the race
                    _create_tables(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _create_store(path: Path) -> None:
    """Build a new store beside ``path`` and link it into place, whole and in WAL mode.

    Readers polling for the file never see it half made (no tables yet, or still in rollback
    journal mode, where creating it would lock them out for a moment).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            for pragma in WRITER_PRAGMAS:
                conn.execute(pragma).fetchall()
            conn.execute("BEGIN IMMEDIATE")
            _create_tables(conn)
            conn.execute("COMMIT")
        finally:
            conn.close()  # checkpoints and removes the temporary -wal and -shm files
        try:
            os.link(tmp, path)  # fails if a store appeared meanwhile: then that one is used
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(tmp, path)
    except sqlite3.Error as e:
        raise translate(e, path) from e
    finally:
        tmp.unlink(missing_ok=True)


def _create_tables(conn: sqlite3.Connection) -> None:
    """The tables and the meta rows, inside the caller's transaction."""
    for statement in DDL_STATEMENTS:  # one by one: executescript would commit first
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("schema_version", str(SCHEMA_VERSION)), ("created", str(time.time()))],
    )


def connect_reader(
    path: Path, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
) -> tuple[sqlite3.Connection, bool] | None:
    """A read-only connection and whether the store has its tables; None if no file yet.

    ``mode=ro`` still lets SQLite create the ``-shm`` index WAL readers need when the folder
    is writable. The connection may be used from several threads (the dashboard's), one call
    at a time: callers serialise with a lock.
    """
    if not path.exists():
        return None
    if path.is_dir():
        raise StoreError(f"run store {path} is a folder, not a file")
    try:
        conn = sqlite3.connect(
            path.as_uri() + "?mode=ro", uri=True, isolation_level=None,
            timeout=busy_timeout_s, check_same_thread=False,
        )
    except sqlite3.Error as e:
        raise translate(e, path) from e
    try:
        ready = check_store(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn, ready


def _with_retry(conn: sqlite3.Connection, sql: str, path: Path, busy_timeout_s: float) -> None:
    """Run one statement outside a transaction, retrying while the store is busy."""
    start = time.monotonic()
    while True:
        try:
            conn.execute(sql).fetchall()
            return
        except sqlite3.OperationalError as e:
            waited = time.monotonic() - start
            if not is_busy(e):
                raise translate(e, path) from e
            if waited >= busy_timeout_s:
                raise StoreLockedError(path, waited) from e
            time.sleep(0.01)


def run_names(conn: sqlite3.Connection) -> list[str]:
    """Names of the runs in the store, oldest first (for messages that list them)."""
    return [r[0] for r in conn.execute("SELECT name FROM runs ORDER BY created, id")]
