"""The class service: learners' exercise attempts reach the instructor through the hub.

A JupyterHub-managed service (``hub/jupyterhub_config.py`` registers it as ``mahiax-class``;
the hub starts it, restarts it if it exits, and stops it with the hub). It listens on
127.0.0.1 only, under the prefix the hub gives it (``/services/mahiax-class/``), and keeps
the class's attempts in its own SQLite file in the hub's root-only state folder (the
``attempts`` table of :mod:`mahiax.store.attempts`).

Every request is authenticated by JupyterHub (:class:`jupyterhub.services.auth.HubAuth`): the
``Authorization: token ...`` header must carry a hub API token whose scopes include access
to this service (``access:services!service=mahiax-class``; the config grants it to every
user and to learners' server tokens). Without a token, or with one the hub does not know:
401. With a token of someone not allowed: 403.

``POST   api/attempts``          a learner's attempt, recorded under the token's user (a body
                                 naming anyone else is refused, 403). 201.
``GET    api/summary``           the class summary
                                 (:func:`mahiax.classroom.class_view.class_summary`), JSON.
                                 Instructors only.
``GET    api/series``            per exercise, each learner's latest attempt that carries what
                                 its check measured per step
                                 (:func:`mahiax.classroom.class_view.latest_series`), JSON.
                                 Instructors only.
``GET    api/attempts.csv``      every attempt, CSV. Instructors only.
``GET    api/attempts.parquet``  the same, Parquet. Instructors only.
``DELETE api/attempts``          delete every attempt (``?learner=NAME``: only theirs).
                                 Instructors only.

Instructors are the hub's admins and the members of the hub group ``--instructors-group``
(``mahiax-instructors``). The class (for "not started") is the hub's users and the members
of the system group ``--learners-group`` (``mahiax-learners``), less the instructors.

Usage (the hub runs it, with JUPYTERHUB_* in its environment):
``python hub/class_service.py --store /var/lib/mahiax-hub/class-attempts.sqlite``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import grp
import io
import json
import logging
import os
import pwd
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

from jupyterhub.services.auth import HubAuth, HubAuthenticated, UserNotAllowed
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from mahiax.classroom.class_view import ATTEMPTS_PATH, SERIES_PATH, class_summary, latest_series
from mahiax.store.attempts import Attempt, delete_attempts, read_attempts, record_attempt

log = logging.getLogger("mahiax.class_service")

INSTRUCTORS_GROUP = "mahiax-instructors"
LEARNERS_GROUP = "mahiax-learners"
# an attempt is a few hundred bytes, a few KB with its series (at most 4 x 200 points);
# anything this large is not one
MAX_BODY = 64 * 1024
MAX_REASONS = 32
ROSTER_TTL_S = 15.0  # how long the list of the hub's users is reused
# what a POST body may hold; the learner is the token's user and the time the service's
FIELDS = {"learner", "lesson", "exercise", "passed", "reasons", "message", "series"}
REQUIRED = ("lesson", "exercise", "passed")
CSV_COLUMNS = ["learner", "lesson", "exercise", "verdict", "reasons", "message", "at", "when"]


class Refused(web.HTTPError):
    """A request refused with a status and a message for the client (JSON ``message``)."""

    def __init__(self, status: int, message: str):
        super().__init__(status, reason=None)
        self.message = message


@dataclass(kw_only=True)
class ClassState:
    """What the handlers share: the store, who teaches, and the summary last computed."""

    store: Path
    hub_auth: HubAuth
    instructors_group: str = INSTRUCTORS_GROUP
    learners_group: str | None = LEARNERS_GROUP
    version: int = 0  # bumped by every write: the summary is recomputed only when it moves
    _roster: tuple[float, tuple[str, ...], tuple[str, ...]] | None = None  # at, class, teach
    _summary: tuple[object, bytes] | None = None  # (key, JSON)
    _series: tuple[object, bytes] | None = None  # (key, JSON)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def is_instructor(self, model: dict[str, Any]) -> bool:
        return model.get("kind", "user") == "user" and (
            bool(model.get("admin")) or self.instructors_group in model.get("groups", ()))

    async def roster(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(the class, the instructors): the hub's users and the learners' system group,
        less the instructors (admins and the instructors group). Reused for ROSTER_TTL_S;
        when the hub cannot be asked, the last answer (or only the system group)."""
        now = time.monotonic()
        if self._roster is not None and now - self._roster[0] < ROSTER_TTL_S:
            return self._roster[1], self._roster[2]
        learners: set[str] = set(self._system_learners())
        teach: set[str] = set()
        try:
            for user in await self._hub_users():
                if user.get("admin") or self.instructors_group in user.get("groups", ()):
                    teach.add(user["name"])
                else:
                    learners.add(user["name"])
        except (HTTPClientError, OSError, ValueError) as e:
            log.warning("could not list the hub's users (%s): the class is the learners' "
                        "group and those with attempts", e)
            if self._roster is not None:
                return self._roster[1], self._roster[2]
        self._roster = (now, tuple(sorted(learners - teach)), tuple(sorted(teach)))
        return self._roster[1], self._roster[2]

    def _system_learners(self) -> list[str]:
        if not self.learners_group:
            return []
        try:
            group = grp.getgrnam(self.learners_group)
        except KeyError:
            return []
        primary = [u.pw_name for u in pwd.getpwall() if u.pw_gid == group.gr_gid]
        return [*group.gr_mem, *primary]

    async def _hub_users(self) -> list[dict[str, Any]]:
        """Every user of the hub (name, admin, groups), page by page."""
        client, users, offset, limit = AsyncHTTPClient(), [], 0, 200
        while True:
            url = (self.hub_auth.api_url.rstrip("/") + "/users?"
                   + urlencode({"offset": offset, "limit": limit}))
            r = await client.fetch(url, headers={
                "Authorization": f"token {self.hub_auth.api_token}"}, request_timeout=5)
            page = json.loads(r.body)
            users.extend(page)
            if len(page) < limit:
                return users
            offset += limit

    async def summary_json(self) -> bytes:
        """The class summary as JSON, recomputed only when an attempt or the roster changed."""
        async with self._lock:
            learners, teach = await self.roster()
            key = (self.version, learners, teach)
            if self._summary is None or self._summary[0] != key:
                summary = class_summary(read_attempts(self.store), learners, exclude=teach)
                body = {**summary.to_dict(), "instructors": list(teach),
                        "version": self.version}
                self._summary = (key, json.dumps(body).encode())
            return self._summary[1]

    async def series_json(self) -> bytes:
        """Each learner's latest measured series per exercise as JSON, recomputed only when
        an attempt or the roster changed."""
        async with self._lock:
            _, teach = await self.roster()
            key = (self.version, teach)
            if self._series is None or self._series[0] != key:
                attempts = read_attempts(self.store, series=True)
                body = {"series": [s.to_dict() for s in latest_series(attempts, exclude=teach)],
                        "version": self.version}
                self._series = (key, json.dumps(body).encode())
            return self._series[1]

    def record(self, attempt: Attempt) -> None:
        record_attempt(attempt, self.store)
        self.version += 1

    def delete(self, learner: str | None = None) -> int:
        """Delete every attempt (``learner``: only theirs), with its series; returns how
        many."""
        gone = delete_attempts(self.store, learner)
        self.version += 1
        return gone


class _Handler(HubAuthenticated, web.RequestHandler):
    """A request authenticated by JupyterHub: the token's owner (a user model, with its
    ``name``, ``admin``, ``groups`` and the token's ``scopes``) is ``self.current_user``."""

    def initialize(self, state: ClassState) -> None:
        self.state = state
        self.hub_auth = state.hub_auth

    async def prepare(self) -> None:
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            raise Refused(401, "send a JupyterHub API token the hub knows: "
                               "'Authorization: token <token>'")
        try:
            self.current_user = self.check_hub_user(model)
        except UserNotAllowed:
            raise Refused(403, f"the token of {model.get('kind', 'user')} {model['name']} "
                               f"does not give access to this service (it needs "
                               f"{' or '.join(sorted(self.hub_scopes or ()))})") from None

    def instructor_only(self) -> None:
        if not self.state.is_instructor(self.current_user):
            raise Refused(403, f"{self.current_user['name']} is not an instructor: only the "
                               f"hub's admins and the group {self.state.instructors_group} "
                               "see the class")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        message = getattr(error, "message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))


class AttemptsHandler(_Handler):
    async def post(self) -> None:
        """Record the token's user's attempt."""
        user = self.current_user
        if user.get("kind", "user") != "user":
            raise Refused(403, f"attempts come from a learner's token, not {user['kind']} "
                               f"{user['name']}")
        attempt = parse_attempt(self.request.body, user["name"])
        self.state.record(attempt)
        self.set_status(201)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"recorded": attempt.to_dict()}))

    async def delete(self) -> None:
        """Delete the class's attempts (``?learner=NAME``: one learner's)."""
        self.instructor_only()
        learner = self.get_argument("learner", None)
        gone = self.state.delete(learner)
        log.info("%s deleted %d attempts%s", self.current_user["name"], gone,
                 f" of {learner}" if learner else "")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"deleted": gone}))


class SummaryHandler(_Handler):
    async def get(self) -> None:
        """The class summary; tornado answers 304 to an ``If-None-Match`` of its ETag, so
        a page polling an idle class gets no body."""
        self.instructor_only()
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-cache, private")
        self.finish(await self.state.summary_json())


class SeriesHandler(_Handler):
    async def get(self) -> None:
        """What the learners' latest checks measured per step, for the class page to
        overlay; 304 to an unchanged ``If-None-Match``, as the summary."""
        self.instructor_only()
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-cache, private")
        self.finish(await self.state.series_json())


class ExportHandler(_Handler):
    async def get(self, kind: str) -> None:
        """Every attempt, as CSV or Parquet, for the instructor to keep or hand on."""
        self.instructor_only()
        attempts = read_attempts(self.state.store)
        self.set_header("Cache-Control", "no-store")
        if kind == "csv":
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", 'attachment; filename="class-attempts.csv"')
            self.finish(attempts_csv(attempts))
            return
        try:
            import pandas as pd
            frame = pd.DataFrame([export_row(a, spreadsheet=False) for a in attempts],
                                 columns=CSV_COLUMNS)
            frame["reasons"] = [list(a.reasons) for a in attempts]
            out = io.BytesIO()
            frame.to_parquet(out, index=False)
        except ImportError as e:
            raise Refused(501, f"Parquet needs pandas and pyarrow ({e}); "
                               "api/attempts.csv has the same rows") from e
        self.set_header("Content-Type", "application/vnd.apache.parquet")
        self.set_header("Content-Disposition",
                        'attachment; filename="class-attempts.parquet"')
        self.finish(out.getvalue())


def parse_attempt(body: bytes, learner: str) -> Attempt:
    """The attempt a POST body describes, recorded under ``learner`` (the token's user) at
    the service's clock. :class:`Refused` with what is wrong and what is allowed."""
    if len(body) > MAX_BODY:
        raise Refused(413, f"an attempt is at most {MAX_BODY} bytes of JSON, got {len(body)}")
    try:
        data = json.loads(body or b"null")
    except ValueError as e:
        raise Refused(400, f"the body must be a JSON object: {e}") from None
    if not isinstance(data, dict):
        raise Refused(400, f"the body must be a JSON object with {sorted(FIELDS)}, "
                           f"got {type(data).__name__}")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise Refused(400, f"unknown fields {unknown}: an attempt has {sorted(FIELDS)}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise Refused(400, f"missing fields {missing}: an attempt needs {list(REQUIRED)}")
    if "learner" in data and data["learner"] != learner:
        raise Refused(403, f"attempts are recorded under the token's user ({learner}); "
                           f"the body names {data['learner']!r}")
    reasons, message = data.get("reasons", []), data.get("message", "")
    if not isinstance(reasons, list) or len(reasons) > MAX_REASONS:
        raise Refused(400, f"reasons must be a list of at most {MAX_REASONS} strings, "
                           f"got {reasons!r:.200}")
    if not isinstance(message, str):
        raise Refused(400, f"message must be a string, got {type(message).__name__}")
    try:
        return Attempt(learner=learner, lesson=data["lesson"], exercise=data["exercise"],
                       passed=data["passed"], reasons=tuple(reasons), message=message,
                       at=time.time(), series=data.get("series") or {})
    except ValueError as e:
        raise Refused(400, str(e)) from None


def _cell(text: str, spreadsheet: bool) -> str:
    """A text cell; for a spreadsheet, one a spreadsheet will not run as a formula (a
    learner's text starting with = + - @ gets a leading ')."""
    return "'" + text if spreadsheet and text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_row(a: Attempt, *, spreadsheet: bool = True) -> dict[str, object]:
    when = dt.datetime.fromtimestamp(a.at, dt.UTC).isoformat(timespec="seconds")
    return {"learner": _cell(a.learner, spreadsheet), "lesson": _cell(a.lesson, spreadsheet),
            "exercise": _cell(a.exercise, spreadsheet), "verdict": a.verdict,
            "reasons": _cell("; ".join(a.reasons), spreadsheet),
            "message": _cell(a.message, spreadsheet), "at": a.at, "when": when}


def attempts_csv(attempts: list[Attempt]) -> str:
    """The attempts as CSV, one row each, oldest first (CSV_COLUMNS)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(export_row(a) for a in attempts)
    return out.getvalue()


def make_app(state: ClassState, prefix: str) -> web.Application:
    """The service's routes under ``prefix`` (the hub's ``/services/<name>/``)."""
    prefix = "/" + prefix.strip("/") + "/"
    routes = [
        (prefix + ATTEMPTS_PATH, AttemptsHandler),
        (prefix + r"api/attempts\.(csv|parquet)", ExportHandler),
        (prefix + "api/summary", SummaryHandler),
        (prefix + SERIES_PATH, SeriesHandler),
    ]
    return web.Application([(path, handler, {"state": state}) for path, handler in routes])


def listen_address(url: str) -> tuple[str, int]:
    """The 127.0.0.1 port of the service's URL (``JUPYTERHUB_SERVICE_URL``); any other host
    is refused: the service is reached through the hub's proxy or on this machine."""
    parsed = urlparse(url)
    if parsed.hostname != "127.0.0.1" or not parsed.port:
        raise SystemExit(f"the class service listens on 127.0.0.1 only: its URL must be "
                         f"http://127.0.0.1:PORT, got {url!r}")
    return parsed.hostname, parsed.port


async def serve(args: argparse.Namespace) -> None:
    host, port = listen_address(os.environ.get("JUPYTERHUB_SERVICE_URL", ""))
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/mahiax-class/")
    state = ClassState(store=args.store, hub_auth=HubAuth(),
                       instructors_group=args.instructors_group,
                       learners_group=args.learners_group or None)
    # bodies far past an attempt's size are cut off before they are read into memory
    make_app(state, prefix).listen(port, address=host, max_body_size=4 * MAX_BODY)
    log.info("class service on http://%s:%d%s, attempts in %s", host, port, prefix,
             args.store)
    stopped = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # the hub stops it with SIGINT, then SIGTERM
        asyncio.get_running_loop().add_signal_handler(sig, stopped.set)
    await stopped.wait()
    log.info("class service stopped")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True,
                    help="the class's attempts (SQLite), in the hub's root-only state folder")
    ap.add_argument("--instructors-group", default=INSTRUCTORS_GROUP,
                    help="hub group whose members see the class, besides the admins")
    ap.add_argument("--learners-group", default=LEARNERS_GROUP,
                    help="system group of the learners (counted as not started until they "
                         "try); '' for none")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="[%(levelname).1s %(asctime)s mahiax-class] %(message)s")
    os.umask(0o077)  # the store and its WAL files: readable by the service's user only
    args.store.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
