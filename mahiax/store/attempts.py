"""Exercise attempts: one row per check a learner ran, in the learner's run store.

A lesson's exercise cell checks the learner's fix (:func:`mahiax.lessons.check`); each check
is an :class:`Attempt`: who, which lesson and exercise, PASS or NOT YET, and why not in the
checker's short names (:attr:`mahiax.bugs.CheckResult.reasons`, e.g. ``"retain_graph=True"``),
so a learner can read back their own history and a class's attempts can be grouped by reason.
An attempt may also carry a compact series of what its check measured per step (MaxVio for
router-collapse, graph nodes or saved memory for the memory entries: :attr:`Attempt.series`),
for the instructor's page to overlay the class's runs.

The ``attempts`` table is created the first time an attempt is written, and the
``attempt_series`` side table (one row per attempt that carries series) the first time one
does: a store made before either reads as having none, a reader that does not ask for series
never reads the side table, and every reader of runs ignores both. Light on purpose (no
torch): the dashboard and the CLI read it.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
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
# what an attempt's check measured, per step: one row per attempt that carries series
SERIES_DDL = """
CREATE TABLE IF NOT EXISTS attempt_series (
    attempt_id INTEGER PRIMARY KEY,  -- attempts.id
    series     TEXT NOT NULL         -- JSON {name: [[step, value or null], ...]}
)
"""
_INSERT = ("INSERT INTO attempts (learner, lesson, exercise, passed, reasons, message, at) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)")
_COLUMNS = "id, learner, lesson, exercise, passed, reasons, message, at"

MAX_SERIES = 4  # series an attempt carries at most
MAX_POINTS = 200  # points a series keeps at most (thin_series keeps the ends, evenly between)
MAX_SERIES_NAME = 64

# a series: (step, value) pairs in step order; a value that was not finite is None
Series = tuple[tuple[int, float | None], ...]

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
    # what the check measured per step, by name (e.g. "MaxVio"): at most MAX_SERIES series
    # of at most MAX_POINTS (step, value) points; empty when the check measured none
    series: dict[str, Series] = field(default_factory=dict)

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
        object.__setattr__(self, "series", checked_series(self.series))

    @property
    def verdict(self) -> str:
        """``PASS`` or ``NOT YET``, the words the checker prints."""
        return "PASS" if self.passed else "NOT YET"

    def to_dict(self) -> dict[str, object]:
        """The attempt as JSON; ``series`` only when it carries some (as a service that
        predates series reads it)."""
        d: dict[str, object] = {
            "learner": self.learner, "lesson": self.lesson, "exercise": self.exercise,
            "passed": self.passed, "reasons": list(self.reasons), "message": self.message,
            "at": self.at}
        if self.series:
            d["series"] = series_json(self.series)
        return d


def series_json(series: dict[str, Series]) -> dict[str, list[list[float | None]]]:
    """``series`` as JSON: ``{name: [[step, value or null], ...]}``."""
    return {name: [[step, value] for step, value in points] for name, points in series.items()}


def thin_series(points: list[tuple[int, float | None]],
                max_points: int = MAX_POINTS) -> list[tuple[int, float | None]]:
    """At most ``max_points`` of ``points``: the first and the last, and evenly spaced ones
    between (a check's run is short and smooth enough that this keeps its shape)."""
    if len(points) <= max_points:
        return list(points)
    last = len(points) - 1
    picks = sorted({round(i * last / (max_points - 1)) for i in range(max_points)})
    return [points[i] for i in picks]


def checked_series(series: object) -> dict[str, Series]:
    """``series`` as an attempt holds it, or ValueError saying what is wrong: a dict of at
    most MAX_SERIES names (non-empty strings of at most MAX_SERIES_NAME characters), each a
    sequence of at most MAX_POINTS ``[step, value]`` pairs (an integer step, a number or
    None; a value that is not finite becomes None)."""
    if not isinstance(series, dict):
        raise ValueError(f"an attempt's series must be a dict of name -> [[step, value], ...], "
                         f"got {type(series).__name__}")
    if len(series) > MAX_SERIES:
        raise ValueError(f"an attempt carries at most {MAX_SERIES} series, got {len(series)}")
    out: dict[str, Series] = {}
    for name, points in series.items():
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_SERIES_NAME:
            raise ValueError(f"a series name must be a non-empty string of at most "
                             f"{MAX_SERIES_NAME} characters, got {name!r:.80}")
        if not isinstance(points, list | tuple) or len(points) > MAX_POINTS:
            raise ValueError(f"series {name!r} must be a list of at most {MAX_POINTS} "
                             "[step, value] pairs")
        kept = []
        for point in points:
            if not isinstance(point, list | tuple) or len(point) != 2:
                raise ValueError(f"series {name!r}: a point is [step, value], got {point!r:.80}")
            step, value = point
            if isinstance(step, bool) or not isinstance(step, int):
                raise ValueError(f"series {name!r}: a step is an integer, got {step!r:.80}")
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)):
                raise ValueError(f"series {name!r}: a value is a number or null, "
                                 f"got {value!r:.80}")
            kept.append((step, float(value) if value is not None and math.isfinite(value)
                         else None))
        out[name] = tuple(kept)
    return out


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
            row = conn.execute(_INSERT, (
                _cut(attempt.learner), _cut(attempt.lesson), _cut(attempt.exercise),
                int(attempt.passed), json.dumps([_cut(r) for r in attempt.reasons]),
                _cut(attempt.message), float(attempt.at))).lastrowid
            if attempt.series:
                conn.execute(SERIES_DDL)
                conn.execute("INSERT INTO attempt_series (attempt_id, series) VALUES (?, ?)",
                             (row, json.dumps(series_json(attempt.series))))
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
                  series: bool = False,
                  busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> list[Attempt]:
    """The attempts in the store at ``path``, oldest first (``learner``: only theirs; with
    ``series``, each with the series its check measured, else without: the side table is
    not read). A store with no attempts yet, or no file yet, gives ``[]``."""
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
        measured: dict[int, str] = {}
        if series and rows:
            try:
                measured = dict(conn.execute("SELECT attempt_id, series FROM attempt_series"))
            except sqlite3.OperationalError as e:
                if "no such table" not in str(e):  # no attempt carried series yet
                    raise translate(e, store) from e
    finally:
        conn.close()
    return [Attempt(learner=r[1], lesson=r[2], exercise=r[3], passed=bool(r[4]),
                    reasons=tuple(json.loads(r[5])), message=r[6], at=r[7],
                    series=json.loads(measured[r[0]]) if r[0] in measured else {})
            for r in rows]


def delete_attempts(path: str | os.PathLike, learner: str | None = None,
                    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> int:
    """Delete every attempt of the store at ``path`` (``learner``: only theirs), with their
    series; returns how many attempts."""
    store = resolve_store_path(path)
    where, args = ("", ()) if learner is None else (" WHERE learner = ?", (learner,))
    conn = connect_writer(store, busy_timeout_s)
    try:
        with write_transaction(conn, store, busy_timeout_s):
            try:
                conn.execute("DELETE FROM attempt_series WHERE attempt_id IN "
                             f"(SELECT id FROM attempts{where})", args)
            except sqlite3.OperationalError as e:
                if "no such table" not in str(e):
                    raise
            try:
                return conn.execute(f"DELETE FROM attempts{where}", args).rowcount
            except sqlite3.OperationalError as e:
                if "no such table" not in str(e):
                    raise
                return 0
    finally:
        conn.close()


def new_attempt(*, lesson: str, exercise: str, passed: bool, reasons: list[str] | tuple[str, ...],
                message: str, learner: str | None = None,
                series: dict[str, Series] | None = None) -> Attempt:
    """An :class:`Attempt` made now, by :func:`current_learner` unless ``learner`` is given."""
    return Attempt(learner=learner if learner is not None else current_learner(),
                   lesson=lesson, exercise=exercise, passed=passed, reasons=tuple(reasons),
                   message=message, at=time.time(), series=series or {})


def record_check(exercise: str, *, passed: bool, reasons: list[str] | tuple[str, ...],
                 message: str, store: str | os.PathLike | None = None,
                 series: dict[str, Series] | None = None, stacklevel: int = 2) -> Attempt:
    """Record a lesson's check of the learner's own fix: by :func:`current_learner`, in
    :func:`current_lesson`, in the store at ``store`` (default: the one this kernel writes);
    returns the attempt (for the class service, :func:`mahiax.classroom.class_view.send_attempt`).
    Recording never costs the learner the answer: a store that cannot be written gives a
    warning (pointing ``stacklevel`` frames up, at the learner's cell), and the attempt is
    returned all the same."""
    import warnings

    attempt = new_attempt(lesson=current_lesson(), exercise=exercise, passed=passed,
                          reasons=reasons, message=message, series=series)
    try:
        record_attempt(attempt, store)
    except (StoreError, OSError) as e:
        warnings.warn(f"your attempt was not recorded ({e}); the check's answer stands",
                      stacklevel=stacklevel + 1)
    return attempt
