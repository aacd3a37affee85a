"""The class's view of exercise attempts: a summary for the instructor, how a learner's
kernel sends its attempts to the hub's class service (``hub/class_service.py``), and how the
instructor's dashboard reads the class back.

On a JupyterHub, each check a learner runs (:func:`mahiax.lessons.check`) is recorded in the
learner's own store and also sent to the class service with the learner's own API token
(:func:`send_attempt`); the service keeps the class's attempts and answers the instructor's
class page (``dashboard/class_page.py``) with :func:`class_summary`, which that page fetches
with its server's token (:func:`fetch_summary`, :func:`fetch_export`). Off a hub (no
``MAHIAX_CLASS_URL``), nothing is sent.

Light on purpose (no torch, no jupyterhub): the service, the dashboard and the kernels import
it.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mahiax.store.attempts import MAX_SERIES, Attempt, Series, series_json, thin_series

# where a learner's server finds the class service: the hub's config sets it for every
# learner's server (hub/jupyterhub_config.py), e.g. http://127.0.0.1:8002/services/mahiax-class/
CLASS_URL_ENV = "MAHIAX_CLASS_URL"
TOKEN_ENV = "JUPYTERHUB_API_TOKEN"  # the learner's server's token, set by JupyterHub
SEND_TIMEOUT_S = 3.0  # a check cell waits at most this long for the class service
FETCH_TIMEOUT_S = 5.0  # the class page waits at most this long for the summary
ATTEMPTS_PATH = "api/attempts"  # under the service's prefix
SUMMARY_PATH = "api/summary"  # instructors only
SERIES_PATH = "api/series"  # instructors only
EXPORT_PATHS = {"csv": "api/attempts.csv", "parquet": "api/attempts.parquet"}
NO_REASON = "(no reason named)"  # a NOT YET whose checker named no reason


class ClassServiceError(OSError):
    """The class service could not be reached or refused a request; the message says why."""


class NotAnInstructor(ClassServiceError):
    """The class service answered 403 to a read of the class: the token's user is neither
    a hub admin nor in the instructors' group (a learner opening the class page)."""


# -- the summary --------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ReasonCount:
    """One NOT YET reason and the learners whose latest NOT YET on an exercise named it."""

    reason: str
    learners: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"reason": self.reason, "count": len(self.learners),
                "learners": list(self.learners)}


@dataclass(frozen=True, kw_only=True)
class ExerciseSummary:
    """Where the class stands on one exercise of one lesson."""

    lesson: str
    exercise: str
    passed: tuple[str, ...]  # learners with a PASS
    trying: tuple[str, ...]  # learners with attempts and no PASS
    not_started: tuple[str, ...]  # learners of the class with no attempt on it
    reasons: tuple[ReasonCount, ...]  # the trying learners' latest NOT YET, most named first

    def to_dict(self) -> dict[str, object]:
        return {"lesson": self.lesson, "exercise": self.exercise,
                "passed": len(self.passed), "trying": len(self.trying),
                "not_started": len(self.not_started),
                "passed_learners": list(self.passed), "trying_learners": list(self.trying),
                "not_started_learners": list(self.not_started),
                "not_yet_reasons": [r.to_dict() for r in self.reasons]}


@dataclass(frozen=True, kw_only=True)
class LearnerSummary:
    """Where one learner is: their latest attempt (None for a learner with none yet)."""

    learner: str
    attempts: int
    exercises_passed: int
    last: Attempt | None

    def to_dict(self) -> dict[str, object]:
        last = self.last
        return {"learner": self.learner, "attempts": self.attempts,
                "exercises_passed": self.exercises_passed,
                "lesson": last.lesson if last else None,
                "exercise": last.exercise if last else None,
                "verdict": last.verdict if last else None,
                "reasons": list(last.reasons) if last else [],
                "at": last.at if last else None}


@dataclass(frozen=True, kw_only=True)
class ClassSummary:
    """The class page's figures: per exercise and per learner."""

    learners: tuple[str, ...]  # the class: the roster and everyone with an attempt
    exercises: tuple[ExerciseSummary, ...]  # by lesson, then exercise
    per_learner: tuple[LearnerSummary, ...]  # by name
    attempts: int  # how many attempts the summary counts

    def to_dict(self) -> dict[str, object]:
        return {"learners": len(self.learners), "attempts": self.attempts,
                "exercises": [e.to_dict() for e in self.exercises],
                "per_learner": [p.to_dict() for p in self.per_learner]}


def class_summary(attempts: Iterable[Attempt], roster: Iterable[str] = (), *,
                  exclude: Iterable[str] = ()) -> ClassSummary:
    """Summarise a class's ``attempts`` for the instructor.

    The class is ``roster`` (the learners on the hub, with or without attempts) and every
    learner with an attempt, less ``exclude`` (the instructors: their own tries are not the
    class's). Per (lesson, exercise) that anyone tried: who passed (a PASS at any time), who
    is trying (attempts, no PASS) and who has not started (no attempt on it); and the NOT YET
    reasons of the learners still trying, from each one's latest attempt on that exercise, so
    a learner counts once per reason however often they retried. Per learner: their latest
    attempt, how many attempts and how many exercises passed.

    Attempts are taken in time order (ties keep their given order)."""
    excluded = set(exclude)
    ordered = sorted((a for a in attempts if a.learner not in excluded), key=lambda a: a.at)
    learners = sorted(set(roster).union(a.learner for a in ordered) - excluded)

    by_exercise: dict[tuple[str, str], dict[str, list[Attempt]]] = {}
    by_learner: dict[str, list[Attempt]] = {}
    for a in ordered:
        by_exercise.setdefault((a.lesson, a.exercise), {}).setdefault(a.learner, []).append(a)
        by_learner.setdefault(a.learner, []).append(a)

    exercises = []
    passed_count: Counter[str] = Counter()
    for (lesson, exercise), tries in sorted(by_exercise.items()):
        passed = sorted(n for n, mine in tries.items() if any(a.passed for a in mine))
        trying = sorted(n for n in tries if n not in passed)
        passed_count.update(passed)
        named: dict[str, list[str]] = {}
        for name in trying:
            for reason in tries[name][-1].reasons or (NO_REASON,):
                named.setdefault(reason, []).append(name)
        reasons = sorted((ReasonCount(reason=r, learners=tuple(n)) for r, n in named.items()),
                         key=lambda r: (-len(r.learners), r.reason))
        exercises.append(ExerciseSummary(
            lesson=lesson, exercise=exercise, passed=tuple(passed), trying=tuple(trying),
            not_started=tuple(n for n in learners if n not in tries), reasons=tuple(reasons)))

    per_learner = tuple(
        LearnerSummary(learner=n, attempts=len(by_learner.get(n, [])),
                       exercises_passed=passed_count[n],
                       last=by_learner[n][-1] if n in by_learner else None)
        for n in learners)
    return ClassSummary(learners=tuple(learners), exercises=tuple(exercises),
                        per_learner=per_learner, attempts=len(ordered))


# -- what the checks measured, per step -------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class LearnerSeries:
    """One learner's latest attempt on one exercise that carries series, for the class
    page's overlay of the class's runs."""

    learner: str
    lesson: str
    exercise: str
    passed: bool
    at: float
    series: dict[str, Series]

    def to_dict(self) -> dict[str, object]:
        return {"learner": self.learner, "lesson": self.lesson, "exercise": self.exercise,
                "verdict": "PASS" if self.passed else "NOT YET", "at": self.at,
                "series": series_json(self.series)}


def latest_series(attempts: Iterable[Attempt], *,
                  exclude: Iterable[str] = ()) -> tuple[LearnerSeries, ...]:
    """Per (lesson, exercise) and learner (less ``exclude``, the instructors), the latest
    attempt that carries series; by lesson, exercise, then learner."""
    excluded = set(exclude)
    latest: dict[tuple[str, str, str], Attempt] = {}
    for a in sorted(attempts, key=lambda a: a.at):
        if a.series and a.learner not in excluded:
            latest[(a.lesson, a.exercise, a.learner)] = a
    return tuple(LearnerSeries(learner=a.learner, lesson=a.lesson, exercise=a.exercise,
                               passed=a.passed, at=a.at, series=a.series)
                 for _, a in sorted(latest.items()))


def _points(values: Iterable[object], every: int = 1, first: int = 0,
            ) -> list[tuple[int, float | None]]:
    """(step, value) pairs of per-step readings (every ``every`` steps from ``first``),
    thinned to what an attempt keeps."""
    points = []
    for i, v in enumerate(values):
        value = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
        points.append((first + i * every, value))
    return thin_series(points)


def outcome_series(outcome: object) -> dict[str, Series]:
    """What a check's run measured per step, as an attempt carries it (at most MAX_SERIES
    series, thinned): for router-collapse its MaxVio and task loss; for the other entries
    the autograd graph's nodes, the live tensor memory (KiB) and the memory saved for
    backward (KiB), where the run measured them over two steps or more. ``outcome`` is a
    :class:`mahiax.bugs.Outcome`, read by its attributes (this module imports no torch)."""
    found: dict[str, list[tuple[int, float | None]]] = {}
    figures = getattr(outcome, "figures", None) or {}
    per_step = figures.get("series") if isinstance(figures.get("series"), dict) else {}
    for key, name in (("max_vio", "MaxVio"), ("task_loss", "task loss")):
        values = per_step.get(key) or []
        if len(values) >= 2 and all(isinstance(v, int | float) for v in values):
            found[name] = _points(values)
    nodes = list(getattr(outcome, "graph_nodes", None) or [])
    if len(nodes) >= 2:
        found["graph nodes"] = _points(nodes)
    live = list(getattr(outcome, "tensor_bytes", None) or [])
    if len(live) >= 2:
        every = max(1, int(getattr(outcome, "memory_every", 1) or 1))
        found["live tensors (KiB)"] = _points((b / 1024 for b in live), every)
    saved = [(c.get("step"), c.get("saved")) for c in
             (getattr(outcome, "memory_categories", None) or []) if isinstance(c, dict)]
    saved = [(int(step), float(v) / 1024) for step, v in saved
             if isinstance(step, int) and isinstance(v, int | float)]
    if len(saved) >= 2:
        found["saved for backward (KiB)"] = thin_series(saved)
    return {name: tuple(points) for name, points in list(found.items())[:MAX_SERIES]}


# -- the learner's side: send an attempt to the class service ---------------------------
@dataclass(frozen=True, kw_only=True)
class ClassService:
    """Where the class service is and the token to reach it with."""

    url: str  # the service's base URL, ending in "/"
    token: str = field(repr=False)  # the server's JupyterHub API token (its user's)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ClassService | None:
        """The class service this server was given (``MAHIAX_CLASS_URL`` and
        ``JUPYTERHUB_API_TOKEN``), or None where there is none (not on a hub).
        :class:`ClassServiceError` when the URL is set but the token is not."""
        env = os.environ if environ is None else environ
        url = env.get(CLASS_URL_ENV, "").strip()
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise ClassServiceError(f"{CLASS_URL_ENV}={url!r} is not an http(s) URL")
        token = env.get(TOKEN_ENV, "").strip()
        if not token:
            raise ClassServiceError(f"{CLASS_URL_ENV} is set but {TOKEN_ENV} is not: only a "
                                    "server started by JupyterHub can send attempts")
        return cls(url=url if url.endswith("/") else url + "/", token=token)


def send_attempt(attempt: Attempt, service: ClassService | None = None, *,
                 timeout_s: float = SEND_TIMEOUT_S) -> bool:
    """Send ``attempt`` to the class service (``service``: by default the one this server
    was given, :meth:`ClassService.from_env`), authenticated with the learner's own token.
    Returns False when there is no class service (off a hub), True once the service has it.

    Raises :class:`ClassServiceError` saying why when it cannot be delivered (no answer
    within ``timeout_s``, refused): the caller decides what a failure costs (a lesson's
    check warns and keeps its answer)."""
    service = service if service is not None else ClassService.from_env()
    if service is None:
        return False
    body = {k: v for k, v in attempt.to_dict().items() if k != "at"}  # the service's clock
    request = urllib.request.Request(
        service.url + ATTEMPTS_PATH, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"token {service.token}",
                 "Content-Type": "application/json"})
    try:
        with _opener(service).open(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as e:
        raise ClassServiceError(f"the class service refused it ({e.code}: "
                                f"{_reason(e)})") from e
    except (urllib.error.URLError, OSError) as e:  # no answer, timed out, connection refused
        why = getattr(e, "reason", e)
        raise ClassServiceError(f"the class service at {service.url} did not answer "
                                f"({why})") from e
    return True


def _opener(service: ClassService) -> urllib.request.OpenerDirector:
    """An opener for requests to ``service``. They carry a hub token: to a service on this
    machine they go straight there, never through an HTTP proxy the environment may name."""
    local = urllib.parse.urlsplit(service.url).hostname in ("127.0.0.1", "localhost", "::1")
    return urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if local else []))


# -- the instructor's side: read the class back -------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SummaryReply:
    """The class service's answer to a read of the summary."""

    # the summary's JSON (ClassSummary.to_dict, and the instructors); None when unchanged
    summary: dict[str, Any] | None
    etag: str | None  # the service's ETag for it: sent back as If-None-Match next time
    unchanged: bool  # the service answered 304: the summary is the one of ``etag``


def _read_error(service: ClassService, url: str, e: Exception) -> ClassServiceError:
    """The error to raise for a failed read of ``url``: :class:`NotAnInstructor` for a 403,
    else a :class:`ClassServiceError` naming the status (or why nothing answered) and the
    URL tried."""
    if isinstance(e, urllib.error.HTTPError):
        if e.code == 403:
            return NotAnInstructor(_reason(e))
        if e.code == 401:
            return ClassServiceError(f"the class service at {url} did not accept this "
                                     f"server's token (401: {_reason(e)})")
        return ClassServiceError(f"the class service at {url} answered {e.code}: "
                                 f"{_reason(e)}")
    why = getattr(e, "reason", e)
    return ClassServiceError(f"the class service at {url} did not answer ({why})")


def fetch_summary(service: ClassService, *, etag: str | None = None,
                  timeout_s: float = FETCH_TIMEOUT_S) -> SummaryReply:
    """Read the class summary (``GET api/summary``) with the token of ``service``.

    ``etag``: the ETag of the summary held already, sent as ``If-None-Match``; the service
    then answers 304 without a body while the class is unchanged, so polling an idle class
    costs almost nothing. Raises :class:`NotAnInstructor` when the token's user may not read
    the class (403), :class:`ClassServiceError` naming the URL when the service refuses
    otherwise, answers something that is not JSON, or does not answer within ``timeout_s``."""
    url = service.url + SUMMARY_PATH
    headers = {"Authorization": f"token {service.token}", "Accept": "application/json"}
    if etag:
        headers["If-None-Match"] = etag
    request = urllib.request.Request(url, headers=headers)
    try:
        with _opener(service).open(request, timeout=timeout_s) as response:
            body, got_etag = response.read(), response.headers.get("ETag")
    except urllib.error.HTTPError as e:
        if e.code == 304:
            return SummaryReply(summary=None, etag=e.headers.get("ETag") or etag,
                                unchanged=True)
        raise _read_error(service, url, e) from e
    except (urllib.error.URLError, OSError) as e:
        raise _read_error(service, url, e) from e
    try:
        summary = json.loads(body)
    except ValueError as e:
        raise ClassServiceError(f"the class service at {url} answered something that is "
                                f"not JSON ({e}): {body[:200]!r}") from e
    if not isinstance(summary, dict) or not isinstance(summary.get("exercises"), list):
        raise ClassServiceError(f"the class service at {url} answered JSON that is not a "
                                f"class summary: {body[:200]!r}")
    return SummaryReply(summary=summary, etag=got_etag, unchanged=False)


def fetch_series(service: ClassService, *,
                 timeout_s: float = FETCH_TIMEOUT_S) -> tuple[LearnerSeries, ...]:
    """Each learner's latest measured series per exercise (``GET api/series``), read with
    the token of ``service``. Raises as :func:`fetch_summary`."""
    url = service.url + SERIES_PATH
    request = urllib.request.Request(url, headers={"Authorization": f"token {service.token}",
                                                   "Accept": "application/json"})
    try:
        with _opener(service).open(request, timeout=timeout_s) as response:
            body = json.loads(response.read())
        return tuple(LearnerSeries(learner=d["learner"], lesson=d["lesson"],
                                   exercise=d["exercise"], passed=d["verdict"] == "PASS",
                                   at=float(d["at"]),
                                   series={k: tuple((int(p[0]), p[1]) for p in v)
                                           for k, v in d["series"].items()})
                     for d in body["series"])
    except (urllib.error.URLError, OSError) as e:
        raise _read_error(service, url, e) from e
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ClassServiceError(f"the class service at {url} answered JSON that is not the "
                                f"class's series ({e})") from e


def fetch_export(service: ClassService, kind: str = "csv", *,
                 timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """Every attempt of the class as the service exports it (``kind``: ``csv`` or
    ``parquet``), read with the token of ``service``. Raises as :func:`fetch_summary`."""
    url = service.url + EXPORT_PATHS[kind]
    request = urllib.request.Request(url, headers={"Authorization": f"token {service.token}"})
    try:
        with _opener(service).open(request, timeout=timeout_s) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as e:
        raise _read_error(service, url, e) from e


def _reason(e: urllib.error.HTTPError) -> str:
    """The service's own words for an error (its JSON ``message``), else the HTTP reason."""
    try:
        return str(json.loads(e.read().decode())["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(e.reason)


def record_learner_check(exercise: str, *, passed: bool, reasons: list[str] | tuple[str, ...],
                         message: str, store: str | os.PathLike | None = None,
                         series: dict[str, Series] | None = None,
                         stacklevel: int = 2) -> Attempt:
    """Record a lesson's check of the learner's own fix, as every exercise does
    (:func:`mahiax.lessons.check`, the doctor exercises' ``check(..., record=True)``): in the
    learner's run store (:func:`mahiax.store.attempts.record_check`) and, on a hub, sent to
    the class service (:func:`send_attempt`). A store that cannot be written, or a class
    service that does not take the attempt, costs a warning pointing ``stacklevel`` frames up
    (at the learner's cell), never the check's answer. ``series``: what the check measured
    per step (:func:`outcome_series`), for the class page's overlay. Returns the attempt."""
    import warnings

    from mahiax.store.attempts import record_check

    attempt = record_check(exercise, passed=passed, reasons=reasons, message=message,
                           store=store, series=series, stacklevel=stacklevel + 1)
    try:
        send_attempt(attempt)
    except ClassServiceError as e:
        warnings.warn(f"your attempt did not reach the class page ({e}); the check's answer "
                      "stands", stacklevel=stacklevel + 1)
    return attempt

