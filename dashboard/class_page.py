"""The Class page: where the workshop's class stands on each exercise, for the instructor.

On a JupyterHub the dashboard's server has ``MAHIAX_CLASS_URL`` (the class service,
``hub/class_service.py``) and its own ``JUPYTERHUB_API_TOKEN``; the page reads the class
summary from the service with that token (:func:`mahiax.classroom.class_view.fetch_summary`). Per
lesson and exercise: how many learners passed, are trying, have not started (names on
demand), and the NOT YET reasons of those trying, grouped with their counts, most common
first; per learner: their latest attempt (lesson, exercise, verdict, reasons, when); the
class's runs overlaid, one colour per learner (what each learner's latest check of an
exercise measured per step: MaxVio for router-collapse, graph nodes and memory for the
memory entries); and an export of every attempt as CSV. The service answers only the hub's
admins and the ``mahiax-instructors`` group: a learner opening the page is told it is for
the instructors (403), and sees nothing of the class.

Cost: every session of the server shares one read of the summary (:func:`class_view`: at
most one request per SHARE_S, whoever asks), sent with the ETag of the summary held, so an
unchanged class costs a 304 without a body; the measured series are read only when the
summary changed (a new attempt). While the page is open, its watch
(``dashboard/page_watch.py``) asks every WATCH_S and redraws the page only when the summary (its
ETag) or the service's state changed; a closed page asks nothing.

Off a hub (no ``MAHIAX_CLASS_URL``) the page shows the local learner's own attempts, read
from this dashboard's run store, as a one-learner class; the navigation lists it only on a
hub (it stays reachable at its address, ``/class``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, data
from dashboard import page_watch as watch
from dashboard.state import LIVE_KEY
from mahiax.classroom.class_view import (
    CLASS_URL_ENV,
    SUMMARY_PATH,
    ClassService,
    ClassServiceError,
    LearnerSeries,
    NotAnInstructor,
    class_summary,
    fetch_export,
    fetch_series,
    fetch_summary,
    latest_series,
)
from mahiax.store import NotAStoreError, StoreError
from mahiax.store.attempts import current_learner

SHARE_S = 1.0  # one read of the summary serves every session asking within this long (s)
EXERCISE_COLUMNS = ["lesson", "exercise", "passed", "trying", "not started",
                    "NOT YET reasons (learners)"]
LEARNER_COLUMNS = ["learner", "lesson", "exercise", "verdict", "why not", "when", "attempts",
                   "exercises passed"]
INSTRUCTORS_ONLY = "This page is for the workshop's instructors."
SERIES_KEY = "class_series_exercise"  # the exercise whose runs are overlaid


@dataclass(frozen=True, kw_only=True)
class ClassView:
    """What the server knows of the class now, as every session's page draws it."""

    url: str  # the summary's URL, as tried
    summary: dict[str, Any] | None  # the last summary read (None: none read yet)
    etag: str | None  # the summary's ETag, sent back as If-None-Match
    read_at: float | None  # when the summary was read or confirmed unchanged (Unix s)
    error: str | None = None  # why the last read failed (the summary is then the last one)
    not_instructor: bool = False  # 403: the server's user may not read the class
    # each learner's latest measured series per exercise, read with the summary
    series: tuple[LearnerSeries, ...] = ()
    series_error: str | None = None  # why they could not be read (the summary still shows)

    @property
    def signature(self) -> tuple[str | None, str | None, bool]:
        """What the page is drawn from: it is redrawn when this changes."""
        return (self.etag, self.error, self.not_instructor)


@dataclass(kw_only=True)
class _Feed:
    """The server's read of one class service, shared by its sessions."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    view: ClassView | None = None
    asked_at: float = 0.0  # time.monotonic() of the last request


_feeds: dict[tuple[str, str], _Feed] = {}
_feeds_lock = threading.Lock()


def _feed(service: ClassService) -> _Feed:
    key = (service.url, hashlib.sha256(service.token.encode()).hexdigest())
    with _feeds_lock:
        return _feeds.setdefault(key, _Feed())


def class_view(service: ClassService, *, share_s: float = SHARE_S) -> ClassView:
    """The class as the service last told this server, read again when the last request is
    ``share_s`` old: sessions asking meanwhile get the same view (one asking while a read is
    under way waits for it). A read sends the ETag held, so an unchanged class is a 304
    and the view stays the same object. A refusal (403) leaves nothing of the class; a
    service that fails keeps the last summary, with the error and the URL tried."""
    feed = _feed(service)
    with feed.lock:
        held = feed.view
        if held is not None and time.monotonic() - feed.asked_at < share_s:
            return held
        url = service.url + SUMMARY_PATH
        etag = held.etag if held is not None and held.summary is not None else None
        try:
            reply = fetch_summary(service, etag=etag)
        except NotAnInstructor as e:
            view = ClassView(url=url, summary=None, etag=None, read_at=None, error=str(e),
                             not_instructor=True)
        except ClassServiceError as e:
            view = ClassView(url=url, summary=held.summary if held else None,
                             etag=etag, read_at=held.read_at if held else None, error=str(e),
                             series=held.series if held else ())
        else:
            if reply.unchanged and held is not None and held.error is None:
                view = held  # the same summary: the page keeps what it drew
            elif reply.unchanged and held is not None:
                view = ClassView(url=url, summary=held.summary, etag=held.etag,
                                 read_at=time.time(), series=held.series,
                                 series_error=held.series_error)
            else:  # a new summary: someone checked, so the series may have moved too
                series, series_error = (), None
                try:
                    series = fetch_series(service)
                except ClassServiceError as e:
                    series_error = str(e)
                view = ClassView(url=url, summary=reply.summary, etag=reply.etag,
                                 read_at=time.time(), series=series, series_error=series_error)
        feed.view, feed.asked_at = view, time.monotonic()
        return view


# -- the tables ---------------------------------------------------------------------------
def _when(at: float | None) -> str:
    """A time as the notebooks show it: local time (the hub's)."""
    return "" if at is None else dt.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def reasons_text(reasons: Sequence[dict[str, Any]]) -> str:
    """An exercise's NOT YET reasons as the instructor reads them: ``"2: retain_graph=True ·
    1: one forward per loss"``, most common first (the order the summary gives)."""
    return " · ".join(f"{r['count']}: {r['reason']}" for r in reasons)


def exercise_table(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per exercise anyone tried, by lesson then exercise: passed, trying and not
    started (counts), and the trying learners' NOT YET reasons with their counts."""
    rows = [{"lesson": e["lesson"], "exercise": e["exercise"], "passed": e["passed"],
             "trying": e["trying"], "not started": e["not_started"],
             "NOT YET reasons (learners)": reasons_text(e["not_yet_reasons"])}
            for e in summary.get("exercises", [])]
    return pd.DataFrame(rows, columns=EXERCISE_COLUMNS)


def learner_table(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per learner of the class, by name: where they are (their latest attempt's
    lesson, exercise, verdict, reasons and time; blank for a learner with none yet), how
    many attempts and how many exercises passed."""
    rows = [{"learner": p["learner"], "lesson": p["lesson"] or "", "exercise": p["exercise"] or "",
             "verdict": p["verdict"] or "not started", "why not": "; ".join(p["reasons"]),
             "when": _when(p["at"]), "attempts": p["attempts"],
             "exercises passed": p["exercises_passed"]}
            for p in summary.get("per_learner", [])]
    return pd.DataFrame(rows, columns=LEARNER_COLUMNS)


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text: str) -> str:
    """``text`` as Markdown that shows it as it is: names, lessons, exercises and reasons
    come from the learners' attempts, and ``st.table`` cells and ``st.markdown`` would
    otherwise draw a learner's ``[link](...)``, image or formula on the instructor's page."""
    return _MARKDOWN.sub(r"\\\1", text)


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its text cells as :func:`md` (for ``st.table``, which reads Markdown)."""
    return frame.apply(lambda column: column.map(md) if pd.api.types.is_string_dtype(column)
                       else column)


def _names(names: Sequence[str]) -> str:
    return ", ".join(md(n) for n in names) if names else "nobody"


# -- the page -----------------------------------------------------------------------------
def class_page() -> None:
    """The page: the class from the hub's class service, or off a hub the local learner's
    own attempts as a one-learner class."""
    st.title("Class")
    try:
        service = ClassService.from_env()
    except ClassServiceError as e:
        st.error(f"The class service is not usable from this server: {e}.")
        return
    if service is None:
        _local_class()
    else:
        _hub_class(service)


def _hub_class(service: ClassService) -> None:
    view = class_view(service)
    if view.not_instructor:
        # nothing of the class, and no watch: a reload asks again
        st.warning(f"{INSTRUCTORS_ONLY} The class service shows the class only to the "
                   "hub's admins and the group `mahiax-instructors`. Your own attempts are "
                   "on the **My attempts** page.")
        st.caption(f"The service said: {md(view.error or '')}")
        return
    if view.error is not None:
        st.error(f"Cannot read the class from the class service: {md(view.error)}. URL tried: "
                 f"`{view.url}` ({CLASS_URL_ENV}={service.url}). The page asks again every "
                 f"{watch.WATCH_S:.0f} s.")
        if view.summary is not None:
            st.caption(f"Below: the class as last read, at {_when(view.read_at)}.")
    if view.summary is not None:
        st.caption(f"From the class service ({service.url}), as read at "
                   f"{_when(view.read_at)}. While this page is open it asks again every "
                   f"{watch.WATCH_S:.0f} s and redraws when the class changed.")
        _draw(view.summary)
        if view.series_error is not None:
            st.warning(f"The class's measured runs could not be read: {md(view.series_error)}")
        _overlay(view.series)
        _export(service)
    if st.session_state.get(LIVE_KEY, True):
        watch.watch(lambda: class_view(service).signature, view.signature)


def _local_class() -> None:
    path = data.session_store()
    if path is None:
        return
    learner = current_learner()
    st.caption(f"Not on a JupyterHub (no `{CLASS_URL_ENV}`): the class is **{learner}** "
               "alone, from this run store's attempts. On the workshop's hub this page shows "
               "every learner's, to the instructors.")
    version = None
    try:
        version = data.attempts_version(path)
        attempts = data.learner_attempts(path, learner, version, series=True)
    except StoreError as e:
        if isinstance(e, NotAStoreError):
            st.error(f"Cannot read the run store at `{path}`: {e}. Point `MAHIAX_STORE` at a "
                     "MAHIA-X run store; this file was left untouched.")
        else:
            st.error(f"Cannot read the run store at `{path}`: {e}")
    else:
        _draw(class_summary(attempts, [learner]).to_dict())
        _overlay(latest_series(attempts))
    if st.session_state.get(LIVE_KEY, True):
        watch.watch(lambda: data.attempts_version(path), version)


def _draw(summary: dict[str, Any]) -> None:
    exercises = summary.get("exercises", [])
    left, mid, right = st.columns(3)
    left.metric("learners", summary.get("learners", 0))
    mid.metric("attempts", summary.get("attempts", 0))
    right.metric("exercises tried", len(exercises))
    if not exercises:
        st.info("No attempts yet. Each time a learner's exercise cell checks a fix "
                "(`lessons.check(...)`), it counts here within a few seconds.")
    else:
        st.subheader("Per exercise")
        st.caption("NOT YET reasons: each trying learner's latest attempt, counted once per "
                   "reason; the most common first.")
        st.table(_shown(exercise_table(summary)), hide_index=True)
        with st.expander("Who, per exercise"):
            for e in exercises:
                st.markdown(f"**{md(e['lesson'])} · {md(e['exercise'])}**  \n"
                            f"passed: {_names(e['passed_learners'])}  \n"
                            f"trying: {_names(e['trying_learners'])}  \n"
                            f"not started: {_names(e['not_started_learners'])}")
                for r in e["not_yet_reasons"]:
                    st.markdown(f"- {r['count']}: {md(r['reason'])}: {_names(r['learners'])}")
    if summary.get("per_learner"):
        st.subheader("Per learner: where they are")
        st.table(_shown(learner_table(summary)), hide_index=True)


def series_frames(series: Sequence[LearnerSeries], lesson: str, exercise: str,
                  name: str) -> dict[str, pd.DataFrame]:
    """Series ``name`` of each learner's latest measured check of (``lesson``,
    ``exercise``), as :func:`charts.run_lines` overlays runs: learner (and verdict) -> frame
    (index step, one column ``name``), by learner."""
    frames = {}
    for s in series:
        if (s.lesson, s.exercise) == (lesson, exercise) and name in s.series:
            points = s.series[name]
            frames[f"{s.learner} ({'PASS' if s.passed else 'NOT YET'})"] = pd.DataFrame(
                {name: [v for _, v in points]},
                index=pd.Index([step for step, _ in points], name="step"))
    return frames


def _overlay(series: Sequence[LearnerSeries]) -> None:
    """The class's runs of one exercise overlaid, one colour per learner: each learner's
    latest check that measured something per step; the exercise picked, by default the one
    last checked."""
    if not series:
        return
    st.subheader("The class's runs, overlaid")
    exercises = sorted({(s.lesson, s.exercise) for s in series})
    newest = max(series, key=lambda s: s.at)
    lesson, exercise = st.selectbox(
        "exercise", exercises, index=exercises.index((newest.lesson, newest.exercise)),
        format_func=lambda e: f"{e[0]} · {e[1]}", key=SERIES_KEY,
        help="What each learner's latest check of this exercise measured per step")
    names = list(dict.fromkeys(n for s in series if (s.lesson, s.exercise) == (lesson, exercise)
                               for n in s.series))
    for name in names:
        frames = series_frames(series, lesson, exercise, name)
        st.plotly_chart(charts.run_lines(frames, f"{exercise}: {name}", name),
                        width="stretch", key=f"class_series_{lesson}_{exercise}_{name}")


def _export(service: ClassService) -> None:
    """The CSV of every attempt, read from the service when the button is clicked."""
    st.download_button(
        "Export every attempt (CSV)", data=lambda: fetch_export(service, "csv"),
        file_name="class-attempts.csv", mime="text/csv", on_click="ignore",
        icon=":material/download:",
        help="Every attempt of the class, one row each (learner, lesson, exercise, verdict, "
             "reasons, message, when), as the class service exports it")
