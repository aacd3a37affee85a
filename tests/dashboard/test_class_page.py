"""The instructor's Class page (``dashboard/class_page.py``) and the client it reads the class
service with (``mahiax.classroom.class_view.fetch_summary``, ``fetch_export``).

- The client's protocol: against a small real HTTP server in this file, standing in for the
  class service's answers only (the token sent, ETag and If-None-Match, 304 without a body,
  403, a closed port, a body that is not a summary). The real service, behind a real
  JupyterHub, answering the page in Chromium: ``tests/hub/test_hub_class.py``.
- The server's one read shared by its sessions (``class_page.class_view``).
- The page in AppTest off a hub (the local learner as a one-learner class, from a real
  store), and on a "hub" whose service does not answer (a closed port) or whose token is
  missing.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402

from dashboard import class_page, runs  # noqa: E402
from dashboard.navigation import CLASS  # noqa: E402
from dashboard.state import PAGE_KEY  # noqa: E402
from mahiax.classroom.class_view import (  # noqa: E402
    ClassService,
    ClassServiceError,
    NotAnInstructor,
    fetch_export,
    fetch_summary,
)
from mahiax.store.attempts import Attempt, record_attempt  # noqa: E402
from tests.servers import free_port  # noqa: E402

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py")
LESSON = "04_retain_graph_and_encode"
PREFIX = "/services/mahiax-class/"
TEACHER, LEARNER = "teacher-token", "learner-token"


class _Answers(ThreadingHTTPServer):
    """What the stand-in answers, and every request it got (path, headers)."""

    summary: dict
    etag: str
    series: list[dict]
    requests: list[dict[str, str]]

    def reads(self, what: str = "api/summary") -> list[dict[str, str]]:
        return [r for r in self.requests if r["path"].endswith(what)]


class _Handler(BaseHTTPRequestHandler):
    server: _Answers

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.requests.append({"path": self.path, **{k: v for k, v in self.headers.items()}})
        token = self.headers.get("Authorization", "")
        if token not in (f"token {TEACHER}", f"token {LEARNER}"):
            self._send(401, b'{"status": 401, "message": "send a token"}')
        elif token == f"token {LEARNER}":
            self._send(403, b'{"status": 403, "message": "ada is not an instructor"}',
                       Content_Type="application/json")
        elif self.path == PREFIX + "api/summary":
            if self.headers.get("If-None-Match") == self.server.etag:
                self._send(304, ETag=self.server.etag)
            else:
                self._send(200, json.dumps(self.server.summary).encode(), ETag=self.server.etag,
                           Content_Type="application/json")
        elif self.path == PREFIX + "api/series":
            self._send(200, json.dumps({"series": self.server.series}).encode(),
                       Content_Type="application/json")
        elif self.path == PREFIX + "api/attempts.csv":
            self._send(200, b"learner,lesson\nada,04\n", Content_Type="text/csv")
        elif self.path == PREFIX + "broken/api/summary":
            self._send(200, b"<html>not json</html>")
        else:
            self._send(404, b'{"message": "no such path"}')


def _summary(passed: int) -> dict:
    return {"learners": 3, "attempts": 3, "exercises": [{
        "lesson": LESSON, "exercise": "encode-multi-loss", "passed": passed, "trying": 3 - passed,
        "not_started": 0, "passed_learners": [], "trying_learners": [],
        "not_started_learners": [], "not_yet_reasons": []}], "per_learner": []}


@pytest.fixture
def stand_in() -> Iterator[_Answers]:
    server = _Answers(("127.0.0.1", free_port()), _Handler)
    server.summary, server.etag, server.series, server.requests = _summary(0), '"v1"', [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _service(server: _Answers, token: str = TEACHER, prefix: str = PREFIX) -> ClassService:
    return ClassService(url=f"http://127.0.0.1:{server.server_address[1]}{prefix}", token=token)


# -- the client's protocol ----------------------------------------------------------------


def test_the_summary_is_read_with_the_servers_token_and_an_unchanged_class_is_a_304(stand_in):
    service = _service(stand_in)
    first = fetch_summary(service)
    assert not first.unchanged and first.etag == '"v1"'
    assert first.summary["exercises"][0]["passed"] == 0
    assert stand_in.requests[-1]["Authorization"] == f"token {TEACHER}"
    assert "If-None-Match" not in stand_in.requests[-1]

    again = fetch_summary(service, etag=first.etag)
    assert again.unchanged and again.summary is None and again.etag == '"v1"'
    assert stand_in.requests[-1]["If-None-Match"] == '"v1"'

    stand_in.summary, stand_in.etag = _summary(1), '"v2"'  # someone passed
    changed = fetch_summary(service, etag=first.etag)
    assert not changed.unchanged and changed.etag == '"v2"'
    assert changed.summary["exercises"][0]["passed"] == 1


def test_a_learners_token_is_refused_and_a_silent_service_is_named(stand_in):
    with pytest.raises(NotAnInstructor, match="ada is not an instructor"):
        fetch_summary(_service(stand_in, LEARNER))
    with pytest.raises(ClassServiceError, match="did not accept this server's token"):
        fetch_summary(_service(stand_in, "unknown"))
    gone = ClassService(url=f"http://127.0.0.1:{free_port()}{PREFIX}", token=TEACHER)
    with pytest.raises(ClassServiceError, match="did not answer") as e:
        fetch_summary(gone)
    assert gone.url + "api/summary" in str(e.value) and not isinstance(e.value, NotAnInstructor)
    with pytest.raises(ClassServiceError, match="not JSON"):
        fetch_summary(_service(stand_in, prefix=PREFIX + "broken/"))


def test_the_export_is_the_services_csv(stand_in):
    assert fetch_export(_service(stand_in)) == b"learner,lesson\nada,04\n"
    with pytest.raises(NotAnInstructor):
        fetch_export(_service(stand_in, LEARNER))


# -- one read for every session of the server ---------------------------------------------


def test_sessions_share_one_read_and_an_unchanged_class_keeps_its_view(stand_in):
    service = _service(stand_in)
    first = class_page.class_view(service, share_s=60)
    assert class_page.class_view(service, share_s=60) is first
    assert len(stand_in.reads()) == 1, "a second session within share_s reads nothing"
    assert len(stand_in.reads("api/series")) == 1, "the series read with a new summary"
    unchanged = class_page.class_view(service, share_s=0)
    assert unchanged is first and stand_in.reads()[-1]["If-None-Match"] == '"v1"'
    assert len(stand_in.reads("api/series")) == 1, "an unchanged class: the series not read"
    stand_in.summary, stand_in.etag = _summary(2), '"v2"'
    stand_in.series = [{"learner": "ada", "lesson": LESSON, "exercise": "router-collapse",
                        "verdict": "PASS", "at": 5.0, "series": {"MaxVio": [[0, 4.0], [1, 2.5]]}}]
    changed = class_page.class_view(service, share_s=0)
    assert changed.signature != first.signature
    assert changed.summary["exercises"][0]["passed"] == 2
    (ada,) = changed.series
    assert (ada.learner, ada.exercise, ada.passed, ada.series) == (
        "ada", "router-collapse", True, {"MaxVio": ((0, 4.0), (1, 2.5))})

    # the service stops answering: the error and the URL, over the last summary read
    stand_in.shutdown()
    stand_in.server_close()
    failed = class_page.class_view(service, share_s=0)
    assert "did not answer" in failed.error and failed.url == service.url + "api/summary"
    assert failed.summary == changed.summary and failed.signature != changed.signature


def test_a_learners_server_gets_nothing_of_the_class(stand_in):
    view = class_page.class_view(_service(stand_in, LEARNER), share_s=0)
    assert view.not_instructor and view.summary is None and "not an instructor" in view.error


# -- the page -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_autostart(monkeypatch):
    monkeypatch.setenv(runs.AUTOSTART_ENV, "0")


def _render(monkeypatch, store: Path) -> AppTest:
    monkeypatch.setenv("MAHIAX_STORE", str(store))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state[PAGE_KEY] = CLASS
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _plain(frame):
    """A table as the instructor reads it: its Markdown escapes (``class_page.md``) undone."""
    return frame.apply(lambda c: c.map(lambda v: re.sub(r"\\(.)", r"\1", v))
                       if pd.api.types.is_string_dtype(c) else c)


def _try(learner: str, exercise: str, at: float, *reasons: str) -> Attempt:
    return Attempt(learner=learner, lesson=LESSON, exercise=exercise, passed=not reasons,
                   reasons=reasons, message="m", at=at)


def test_off_a_hub_the_class_is_the_local_learner_alone(monkeypatch, tmp_path):
    monkeypatch.delenv("MAHIAX_CLASS_URL", raising=False)
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    store = tmp_path / "mahiax.sqlite"
    for a in (_try("ada", "encode-multi-loss", 1_000.0, "one forward per loss"),
              _try("ada", "encode-multi-loss", 2_000.0, "retain_graph=True"),
              _try("ada", "retain-graph", 3_000.0),
              _try("grace", "retain-graph", 4_000.0, "retain_graph=True")):
        record_attempt(a, store)
    at = _render(monkeypatch, store)
    assert "Class" in _texts(at.title) and not at.error
    assert "the class is **ada** alone" in _texts(at.caption)
    exercises, learners = (_plain(t.value) for t in at.table)
    assert exercises.to_dict("records") == [
        {"lesson": LESSON, "exercise": "encode-multi-loss", "passed": 0, "trying": 1,
         "not started": 0, "NOT YET reasons (learners)": "1: retain_graph=True"},
        {"lesson": LESSON, "exercise": "retain-graph", "passed": 1, "trying": 0,
         "not started": 0, "NOT YET reasons (learners)": ""}]
    (row,) = learners.to_dict("records")
    assert (row["learner"], row["exercise"], row["verdict"], row["attempts"],
            row["exercises passed"]) == ("ada", "retain-graph", "PASS", 3, 1)
    assert "grace" not in exercises.to_string() + learners.to_string()
    assert {m.label: m.value for m in at.metric} == {
        "learners": "1", "attempts": "3", "exercises tried": "2"}


def test_off_a_hub_with_no_attempts_nothing_fails(monkeypatch, tmp_path):
    monkeypatch.delenv("MAHIAX_CLASS_URL", raising=False)
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    at = _render(monkeypatch, tmp_path / "empty" / "mahiax.sqlite")
    assert "No attempts yet" in _texts(at.info) and not at.error
    (learners,) = (_plain(t.value) for t in at.table)  # the learner, not started anywhere
    assert learners[["learner", "verdict", "attempts"]].to_dict("records") == [
        {"learner": "ada", "verdict": "not started", "attempts": 0}]


def test_a_learners_text_is_shown_as_text_not_drawn_as_markdown(monkeypatch, tmp_path):
    """Lessons, exercises and reasons come from the learners' POSTs: a link or an image in
    them is shown as typed on the instructor's page, never drawn."""
    monkeypatch.delenv("MAHIAX_CLASS_URL", raising=False)
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    store = tmp_path / "mahiax.sqlite"
    sneaky = "[click](http://example.invalid/) ![x](http://example.invalid/x.png) $x$"
    record_attempt(_try("ada", sneaky, 1_000.0, "*bold* `code`"), store)
    at = _render(monkeypatch, store)
    exercises = at.table[0].value
    assert class_page.md(sneaky) in set(exercises["exercise"])
    assert _plain(exercises)["exercise"].tolist() == [sneaky]
    assert exercises["NOT YET reasons (learners)"].tolist() == [class_page.md("1: *bold* `code`")]
    assert class_page.md(sneaky) in _texts(at.markdown)  # the names on demand too
    assert re.sub(r"\\(.)", r"\1", class_page.md(sneaky)) == sneaky


def test_a_service_that_does_not_answer_is_named_with_the_url_tried(monkeypatch, tmp_path):
    url = f"http://127.0.0.1:{free_port()}{PREFIX}"  # nothing listens there
    monkeypatch.setenv("MAHIAX_CLASS_URL", url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TEACHER)
    at = _render(monkeypatch, tmp_path / "mahiax.sqlite")
    error = _texts(at.error)
    assert "did not answer" in error and f"{url}api/summary" in error, error
    assert not at.table and not at.warning


def test_a_class_url_without_a_token_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("MAHIAX_CLASS_URL", f"http://127.0.0.1:{free_port()}{PREFIX}")
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    at = _render(monkeypatch, tmp_path / "mahiax.sqlite")
    assert "JUPYTERHUB_API_TOKEN is not" in _texts(at.error) and not at.table


# -- the class's runs: what each check measured per step ----------------------------------


def _measured(learner: str, exercise: str, at: float, values: list[float],
              *reasons: str) -> Attempt:
    return Attempt(learner=learner, lesson=LESSON, exercise=exercise, passed=not reasons,
                   reasons=reasons, message="m", at=at,
                   series={"MaxVio": [[i, v] for i, v in enumerate(values)]})


def test_an_attempts_series_is_kept_in_a_side_table_and_read_only_when_asked(tmp_path):
    import sqlite3

    from mahiax.store.attempts import delete_attempts, read_attempts

    store = tmp_path / "mahiax.sqlite"
    record_attempt(_try("ada", "retain-graph", 1.0, "retain_graph=True"), store)
    assert read_attempts(store, series=True)[0].series == {}, "no series yet: no side table"
    tables = {r[0] for r in sqlite3.connect(store).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "attempt_series" not in tables, "a store of attempts without series is as before"
    record_attempt(_measured("ada", "router-collapse", 2.0, [4.0, float("nan"), 0.5]), store)
    plain, measured = read_attempts(store), read_attempts(store, series=True)
    assert [a.series for a in plain] == [{}, {}], "not asked: the side table is not read"
    assert measured[1].series == {"MaxVio": ((0, 4.0), (1, None), (2, 0.5))}
    assert measured[1].to_dict()["series"] == {"MaxVio": [[0, 4.0], [1, None], [2, 0.5]]}
    assert "series" not in measured[0].to_dict()
    assert delete_attempts(store, "ada") == 2
    assert sqlite3.connect(store).execute("SELECT count(*) FROM attempt_series").fetchone() \
        == (0,)


def test_a_series_is_bounded_and_thinned_to_its_ends_and_evenly_between():
    from mahiax.store.attempts import MAX_POINTS, checked_series, thin_series

    points = [(i, float(i)) for i in range(1000)]
    kept = thin_series(points)
    assert len(kept) == MAX_POINTS and kept[0] == (0, 0.0) and kept[-1] == (999, 999.0)
    gaps = {b[0] - a[0] for a, b in zip(kept, kept[1:], strict=False)}
    assert gaps <= {5, 6}, gaps
    for bad, words in [({f"s{i}": [] for i in range(5)}, "at most 4 series"),
                       ({"MaxVio": [[0, 1.0]] * (MAX_POINTS + 1)}, "at most 200"),
                       ({"MaxVio": [[0.5, 1.0]]}, "a step is an integer"),
                       ({"MaxVio": [[0, "x"]]}, "a value is a number"),
                       ({"": [[0, 1.0]]}, "a series name"), ([1], "must be a dict")]:
        with pytest.raises(ValueError, match=words):
            checked_series(bad)


def test_a_check_carries_what_it_measured_per_step():
    from mahiax import bugs
    from mahiax.classroom.class_view import outcome_series

    collapse = bugs.check("router-collapse", bugs.get("router-collapse").candidates()["buggy"],
                          steps=12)  # a short run: its steps, one point each
    got = outcome_series(collapse.outcome)
    per_step = collapse.outcome.figures["series"]
    assert [v for _, v in got["MaxVio"]] == per_step["max_vio"]
    assert [v for _, v in got["task loss"]] == pytest.approx(per_step["task_loss"])
    assert [s for s, _ in got["MaxVio"]] == list(range(len(per_step["max_vio"])))
    encode = bugs.check("encode-multi-loss", bugs.get("encode-multi-loss").candidates()["fixed"])
    got = outcome_series(encode.outcome)
    assert [v for _, v in got["graph nodes"]] == encode.outcome.graph_nodes
    assert set(got) == {"graph nodes", "live tensors (KiB)", "saved for backward (KiB)"}


def test_each_learners_latest_measured_check_per_exercise():
    from mahiax.classroom.class_view import latest_series

    got = latest_series([
        _measured("ada", "router-collapse", 1.0, [4.0, 3.0], "MaxVio stays high"),
        _measured("ada", "router-collapse", 3.0, [4.0, 0.2]),
        _try("ada", "router-collapse", 4.0, "raises NotImplementedError"),  # measured nothing
        _measured("bob", "router-collapse", 2.0, [4.0, 4.5], "MaxVio stays high"),
        _measured("teach", "router-collapse", 2.0, [1.0, 1.0]),
    ], exclude=["teach"])
    assert [(s.learner, s.passed, s.series["MaxVio"][-1][1]) for s in got] == [
        ("ada", True, 0.2), ("bob", False, 4.5)]


def test_the_service_takes_an_attempts_series_within_its_limits():
    from tests.classroom.test_classroom import _service_module

    svc = _service_module()
    body = {"lesson": LESSON, "exercise": "router-collapse", "passed": True, "reasons": [],
            "message": "PASS", "series": {"MaxVio": [[0, 4.0], [1, 0.5]]}}
    got = svc.parse_attempt(json.dumps(body).encode(), "ada")
    assert got.series == {"MaxVio": ((0, 4.0), (1, 0.5))}
    for series in ({"MaxVio": [[0, 1.0]] * 201}, {"MaxVio": "x"}, [1, 2]):
        with pytest.raises(svc.Refused) as e:
            svc.parse_attempt(json.dumps({**body, "series": series}).encode(), "ada")
        assert e.value.status_code == 400, e.value.message
    big = {f"s{i}": [[j, 1.0e-300 * j] for j in range(200)] for i in range(4)}
    assert len(json.dumps({**body, "series": big})) < svc.MAX_BODY, "the largest series fit"


def test_off_a_hub_the_page_overlays_the_learners_measured_runs(monkeypatch, tmp_path):
    monkeypatch.delenv("MAHIAX_CLASS_URL", raising=False)
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    store = tmp_path / "mahiax.sqlite"
    record_attempt(_measured("ada", "router-collapse", 1.0, [4.0, 3.9, 4.1], "MaxVio"), store)
    record_attempt(_measured("ada", "router-collapse", 2.0, [4.0, 1.0, 0.3]), store)
    at = _render(monkeypatch, store)
    assert "The class's runs, overlaid" in _texts(at.subheader)
    (chart,) = at.get("plotly_chart")
    figure = json.loads(chart.proto.spec)
    (trace,) = figure["data"]
    y = trace["y"]  # plotly packs arrays: {"dtype": ..., "bdata": base64}
    values = np.frombuffer(base64.b64decode(y["bdata"]), y["dtype"]) if "bdata" in y else y
    assert trace["name"] == "ada (PASS)" and list(values) == [4.0, 1.0, 0.3]
