"""The My attempts page: the learner's own exercise checks, as the lessons recorded them in
the run store this dashboard reads (``mahiax.store.attempts``): every attempt, newest first,
with its verdict and the checker's short reasons, and where each exercise stands (passed, or
still trying).

Only the current learner's attempts are listed (``current_learner``: the hub's user, else
the account the server runs under), as ``lessons.my_attempts()`` lists them in a notebook.
The page reads the attempts once and then only watches (``dashboard/page_watch.py``) the store's
attempts version, one small query a second for all sessions (``data.attempts_version``):
it redraws when a check is recorded, and costs one fragment run every WATCH_S when idle."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard import page_watch as watch
from dashboard.state import LIVE_KEY
from mahiax.store import NotAStoreError, StoreError
from mahiax.store.attempts import Attempt, current_learner

ATTEMPT_COLUMNS = ["when", "lesson", "exercise", "verdict", "why not", "message"]
STATUS_COLUMNS = ["lesson", "exercise", "status", "tries", "last tried", "last why not"]
PASSED, TRYING = "passed", "trying"


def _when(at: float) -> str:
    """A time as the learner's notebook shows it (``lessons.my_attempts``): local time."""
    return dt.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def attempts_table(attempts: Sequence[Attempt]) -> pd.DataFrame:
    """Every attempt, newest first: when, lesson, exercise, PASS or NOT YET, why not (the
    checker's short reasons), and the checker's message."""
    newest = sorted(attempts, key=lambda a: a.at, reverse=True)
    rows = [{"when": _when(a.at), "lesson": a.lesson, "exercise": a.exercise,
             "verdict": a.verdict, "why not": "; ".join(a.reasons), "message": a.message}
            for a in newest]
    return pd.DataFrame(rows, columns=ATTEMPT_COLUMNS)


def exercise_status(attempts: Sequence[Attempt]) -> pd.DataFrame:
    """One row per exercise tried (a lesson's exercise), in lesson order: ``passed`` once any
    attempt passed, else ``trying``; how many tries, the last one's time and, while trying,
    the last attempt's reasons."""
    groups: dict[tuple[str, str], list[Attempt]] = {}
    for a in sorted(attempts, key=lambda a: a.at):
        groups.setdefault((a.lesson, a.exercise), []).append(a)
    rows = []
    for (lesson, exercise), tries in sorted(groups.items(), key=lambda g: (g[0][0], g[1][0].at)):
        passed = any(a.passed for a in tries)
        last = tries[-1]
        rows.append({"lesson": lesson, "exercise": exercise,
                     "status": PASSED if passed else TRYING, "tries": len(tries),
                     "last tried": _when(last.at),
                     "last why not": "" if passed else "; ".join(last.reasons)})
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)


def _store_error(path: str, e: StoreError) -> None:
    if isinstance(e, NotAStoreError):
        st.error(f"Cannot read the run store at `{path}`: {e}. Point `MAHIAX_STORE` at a "
                 "MAHIA-X run store; this file was left untouched.")
    else:
        st.error(f"Cannot read the run store at `{path}`: {e}")


def my_attempts() -> None:
    """The page: the current learner's attempts and where each exercise stands."""
    st.title("My attempts")
    path = data.session_store()
    if path is None:
        return
    learner = current_learner()
    st.caption(f"The exercise checks of **{learner}**, as the lessons recorded them in this "
               "run store (`lessons.my_attempts()` in a notebook lists the same). Only your "
               "own are shown here.")
    version = None
    try:
        version = data.attempts_version(path)
        attempts = data.learner_attempts(path, learner, version)
    except StoreError as e:
        _store_error(path, e)
    else:
        _draw(attempts)
    if st.session_state.get(LIVE_KEY, True):
        # redraws once a check is recorded (or the store reads again after a fault)
        watch.watch(lambda: data.attempts_version(path), version)


def _draw(attempts: Sequence[Attempt]) -> None:
    if not attempts:
        st.info("No attempts recorded yet. Each time a lesson's exercise cell checks your "
                "fix (`lessons.check(...)`), the attempt appears here.")
        return
    status = exercise_status(attempts)
    passed = int((status["status"] == PASSED).sum())
    left, mid, right = st.columns(3)
    left.metric("exercises passed", f"{passed} of {len(status)} tried")
    mid.metric("attempts", len(attempts))
    right.metric("last attempt", _when(max(a.at for a in attempts)))
    st.subheader("Per exercise")
    st.dataframe(status, hide_index=True, width="stretch")
    st.subheader("Every attempt, newest first")
    st.dataframe(attempts_table(attempts), hide_index=True, width="stretch",
                 column_config={"message": st.column_config.TextColumn(width="large")})
