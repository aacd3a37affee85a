"""Exercise attempts: one row per check a learner ran, in the learner's run store.

A lesson's exercise cell checks the learner's fix (:func:`mahiax.lessons.check`); each check
is an :class:`Attempt`: who, which lesson and exercise, PASS or NOT YET, and why not in the
checker's short names (:attr:`mahiax.bugs.CheckResult.reasons`, e.g. ``"retain_graph=True"``),
so a learner can read back their own history and a class's attempts can be grouped by reason.

The ``attempts`` table is created the first time an attempt is written: a store made before
attempts were recorded reads as having none, and every reader of runs ignores the table.
Light on purpose (no torch): the dashboard and the CLI read it.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from mahiax.store.connection import (
    DEFAULT_BUSY_TIMEOUT_S,
    connect_reader,
    connect_writer,
    translate,
    write_transaction,
)
from mahiax.store.errors import StoreError
from mahiax.store.paths import resolve_store_path

ATTEMPTS_DDL = """
CREATE TABLE IF NOT EXISTS attempts (
    id       INTEGER PRIMARY KEY,
    learner  TEXT NOT NULL,
    lesson   TEXT NOT NULL,
    exercise TEXT NOT NULL,
    passed   INTEGER NOT NULL CHECK (passed IN (0, 1)),
    reasons  TEXT NOT NULL,
    message  TEXT NOT NULL,
    at       REAL NOT NULL
)
"""
_INSERT = ("INSERT INTO attempts (learner, lesson, exercise, passed, reasons, message, at) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)")
_COLUMNS = "learner, lesson, exercise, passed, reasons, message, at"

# the longest text kept per field: a checker's message is a few sentences; anything longer is
# cut (with an ellipsis) rather than refused, so a check never fails for being recorded
MAX_TEXT = 2000


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One check of a learner's fix."""

    learner: str  # the user name the check ran under (the hub's user on JupyterHub)
    lesson: str  # the lesson's notebook name, e.g. "04_retain_graph_and_encode"
    exercise: str  # what was checked: the catalog entry id, e.g. "retain-graph"
    passed: bool  # PASS (True) or NOT YET
    reasons: tuple[str, ...]  # why not, in the checker's short names; () when passed
    message: str  # the checker's answer in plain words, as the learner read it
    at: float  # when, Unix seconds

    def __post_init__(self) -> None:
        for name in ("learner", "lesson", "exercise"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"an attempt's {name} must be a non-empty string, "
                                 f"got {value!r}")
        if not isinstance(self.passed, bool):
            raise ValueError(f"an attempt's passed must be True or False, got {self.passed!r}")
        if not all(isinstance(r, str) and r for r in self.reasons):
            raise ValueError(f"an attempt's reasons must be non-empty strings, "
                             f"got {self.reasons!r}")
        if self.passed and self.reasons:
            raise ValueError(f"a passed attempt has no reasons, got {self.reasons!r}")
        if not isinstance(self.at, int | float) or not math.isfinite(self.at):
            raise ValueError(f"an attempt's time must be a finite number, got {self.at!r}")

    @property
    def verdict(self) -> str:
        """``PASS`` or ``NOT YET``, the words the checker prints."""
        return "PASS" if self.passed else "NOT YET"

    def to_dict(self) -> dict[str, object]:
        return {"learner": self.learner, "lesson": self.lesson, "exercise": self.exercise,
                "passed": self.passed, "reasons": list(self.reasons),
                "message": self.message, "at": self.at}


def current_learner() -> str:
    """Who is checking: the hub's user name where JupyterHub started the server
    (``JUPYTERHUB_USER``), else the account the kernel runs under."""
    name = os.environ.get("JUPYTERHUB_USER", "").strip()
    if name:
        return name
    try:
        import getpass

        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (some containers)
        return f"uid-{os.getuid()}" if hasattr(os, "getuid") else "learner"


def current_lesson() -> str:
    """The notebook this kernel runs, by name (``04_retain_graph_and_encode``): Jupyter
    servers (2.0 and later) tell their kernels its path in ``JPY_SESSION_NAME``; elsewhere
    (a script, a console) ``"outside a lesson"``. As :func:`mahiax.lessons.current_lesson`
    reads it, for the recordings that do not go through the lessons (lesson 10's doctor
    exercises, :func:`record_check`)."""
    session = os.environ.get("JPY_SESSION_NAME", "").strip()
    return Path(session).stem if session else "outside a lesson"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def record_attempt(attempt: Attempt, path: str | os.PathLike | None = None,
                   busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> Path:
    """Append ``attempt`` to the store at ``path`` (:func:`resolve_store_path`: the
    ``MAHIAX_STORE`` variable, else ``runs/mahiax.sqlite``); returns the store's path."""
    store = resolve_store_path(path)
    conn = connect_writer(store, busy_timeout_s)
    try:
        with write_transaction(conn, store, busy_timeout_s):
            conn.execute(ATTEMPTS_DDL)
            conn.execute(_INSERT, (
                _cut(attempt.learner), _cut(attempt.lesson), _cut(attempt.exercise),
                int(attempt.passed), json.dumps([_cut(r) for r in attempt.reasons]),
                _cut(attempt.message), float(attempt.at)))
    finally:
        conn.close()
    return store


def attempts_version(path: str | os.PathLike | None = None,
                     busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> tuple[int, int]:
    """What identifies the attempts the store at ``path`` holds now, in one small query:
    (how many, the newest row's id); ``(0, 0)`` for none. Rows are only ever appended, so
    equal versions mean equal attempts: a reader re-reads them only when this changes."""
    store = resolve_store_path(path)
    opened = connect_reader(store, busy_timeout_s)
    if opened is None:
        return (0, 0)
    conn, ready = opened
    try:
        if not ready:
            return (0, 0)
        try:
            count, last = conn.execute("SELECT count(*), max(id) FROM attempts").fetchone()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return (0, 0)
            raise translate(e, store) from e
    finally:
        conn.close()
    return (int(count), int(last or 0))


def read_attempts(path: str | os.PathLike | None = None, *, learner: str | None = None,
                  busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> list[Attempt]:
    """The attempts in the store at ``path``, oldest first (``learner``: only theirs).
    A store with no attempts yet, or no file yet, gives ``[]``."""
    store = resolve_store_path(path)
    opened = connect_reader(store, busy_timeout_s)
    if opened is None:
        return []
    conn, ready = opened
    try:
        if not ready:
            return []
        sql = f"SELECT {_COLUMNS} FROM attempts"
        args: tuple = ()
        if learner is not None:
            sql, args = sql + " WHERE learner = ?", (learner,)
        try:
            rows = conn.execute(sql + " ORDER BY at, id", args).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise translate(e, store) from e
    finally:
        conn.close()
    return [Attempt(learner=r[0], lesson=r[1], exercise=r[2], passed=bool(r[3]),
                    reasons=tuple(json.loads(r[4])), message=r[5], at=r[6]) for r in rows]


def new_attempt(*, lesson: str, exercise: str, passed: bool, reasons: list[str] | tuple[str, ...],
                message: str, learner: str | None = None) -> Attempt:
    """An :class:`Attempt` made now, by :func:`current_learner` unless ``learner`` is given."""
    return Attempt(learner=learner if learner is not None else current_learner(),
                   lesson=lesson, exercise=exercise, passed=passed, reasons=tuple(reasons),
                   message=message, at=time.time())


def record_check(exercise: str, *, passed: bool, reasons: list[str] | tuple[str, ...],
                 message: str, store: str | os.PathLike | None = None,
                 stacklevel: int = 2) -> Attempt:
    """Record a lesson's check of the learner's own fix: by :func:`current_learner`, in
    :func:`current_lesson`, in the store at ``store`` (default: the one this kernel writes);
    returns the attempt (for the class service, :func:`mahiax.classroom.send_attempt`).
    Recording never costs the learner the answer: a store that cannot be written gives a
    warning (pointing ``stacklevel`` frames up, at the learner's cell), and the attempt is
    returned all the same."""
    import warnings

    attempt = new_attempt(lesson=current_lesson(), exercise=exercise, passed=passed,
                          reasons=reasons, message=message)
    try:
        record_attempt(attempt, store)
    except (StoreError, OSError) as e:
        warnings.warn(f"your attempt was not recorded ({e}); the check's answer stands",
                      stacklevel=stacklevel + 1)
    return attempt
