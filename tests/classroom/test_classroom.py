"""The class's view of attempts (``mahiax.classroom.class_view``): the instructor's summary
computed from attempts, what the class service accepts in a POST and exports, and a learner's kernel
sending its attempts (to a local HTTP server standing in for the service). The real service
behind a real JupyterHub: ``tests/hub/test_hub_class.py``."""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import json
import sys
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mahiax import bugs, lessons
from mahiax.classroom.class_view import (
    NO_REASON,
    ClassService,
    ClassServiceError,
    class_summary,
    send_attempt,
)
from mahiax.store.attempts import Attempt, read_attempts

LESSON = "04_retain_graph_and_encode"


def _try(learner: str, at: float, *reasons: str, exercise: str = "retain-graph",
         lesson: str = LESSON) -> Attempt:
    """An attempt: PASS when no reasons are given, else NOT YET for them."""
    return Attempt(learner=learner, lesson=lesson, exercise=exercise, passed=not reasons,
                   reasons=reasons, message="m", at=at)


def test_per_exercise_passed_trying_and_not_started_count_learners_not_attempts():
    attempts = [
        _try("ada", 1, "retain_graph=True"), _try("ada", 2, "retain_graph=True"), _try("ada", 3),
        _try("bob", 4, "retain_graph=True"), _try("bob", 5, "retain_graph=True"),
        _try("cy", 6, "one forward per loss"),
    ]
    s = class_summary(attempts, roster=["ada", "bob", "cy", "dee"])
    (ex,) = s.exercises
    assert (ex.lesson, ex.exercise) == (LESSON, "retain-graph")
    assert ex.passed == ("ada",) and ex.trying == ("bob", "cy") and ex.not_started == ("dee",)
    d = ex.to_dict()
    assert (d["passed"], d["trying"], d["not_started"]) == (1, 2, 1)
    # bob retried twice with the same reason: counted once; ada passed: not counted
    assert [(r["reason"], r["count"], r["learners"]) for r in d["not_yet_reasons"]] == [
        ("one forward per loss", 1, ["cy"]), ("retain_graph=True", 1, ["bob"])]
    assert s.attempts == 6 and s.learners == ("ada", "bob", "cy", "dee")


def test_a_learners_latest_not_yet_names_the_reasons_counted_most_first():
    attempts = [
        _try("ada", 1, "one forward per loss"), _try("ada", 2, "retain_graph=True"),
        _try("bob", 3, "retain_graph=True", "graph grows"),
        _try("cy", 4, "retain_graph=True"),
        # a NOT YET whose checker named nothing is still counted
        Attempt(learner="dee", lesson=LESSON, exercise="retain-graph", passed=False,
                reasons=(), message="m", at=5),
    ]
    (ex,) = class_summary(attempts).exercises
    assert [(r.reason, len(r.learners)) for r in ex.reasons] == [
        ("retain_graph=True", 3), (NO_REASON, 1), ("graph grows", 1)]
    assert "one forward per loss" not in {r.reason for r in ex.reasons}  # ada moved on


def test_attempts_are_taken_in_time_order_whatever_order_they_come_in():
    late_pass, early_fail = _try("ada", 9), _try("ada", 1, "retain_graph=True")
    s = class_summary([late_pass, early_fail])
    (me,) = s.per_learner
    assert me.last == late_pass and me.to_dict()["verdict"] == "PASS"
    assert s.exercises[0].reasons == ()


def test_per_learner_where_they_are_and_a_learner_with_none_yet():
    attempts = [_try("ada", 1), _try("ada", 2, "graph grows", exercise="encode-multi-loss"),
                _try("bob", 3, lesson="11_router_collapse", exercise="router-collapse")]
    s = class_summary(attempts, roster=["ada", "bob", "cy"])
    rows = {p["learner"]: p for p in s.to_dict()["per_learner"]}
    assert rows["ada"] == {"learner": "ada", "attempts": 2, "exercises_passed": 1,
                           "lesson": LESSON, "exercise": "encode-multi-loss",
                           "verdict": "NOT YET", "reasons": ["graph grows"], "at": 2}
    assert rows["bob"]["lesson"] == "11_router_collapse" and rows["bob"]["verdict"] == "PASS"
    assert rows["cy"]["verdict"] is None and rows["cy"]["attempts"] == 0
    assert [(e.lesson, e.exercise) for e in s.exercises] == [
        (LESSON, "encode-multi-loss"), (LESSON, "retain-graph"),
        ("11_router_collapse", "router-collapse")]
    # every exercise's three groups cover the class
    for e in s.exercises:
        assert sorted(e.passed + e.trying + e.not_started) == ["ada", "bob", "cy"]


def test_instructors_are_not_the_class():
    s = class_summary([_try("teach", 1), _try("ada", 2, "x")], roster=["ada", "teach"],
                      exclude=["teach"])
    assert s.learners == ("ada",) and s.attempts == 1
    assert s.exercises[0].passed == () and s.exercises[0].trying == ("ada",)
    json.dumps(s.to_dict())  # the service answers it as JSON


def test_no_attempts_is_an_empty_class_page():
    s = class_summary([], roster=["ada"])
    assert s.exercises == () and s.per_learner[0].last is None


# -- what the service takes and gives (hub/class_service.py, without a hub) --------------
@functools.cache
def _service_module():
    """``hub/class_service.py``, imported as the hub runs it (a script of ``hub/``)."""
    from tests.notebook_env import ROOT

    pytest.importorskip("jupyterhub")
    spec = importlib.util.spec_from_file_location("class_service",
                                                  ROOT / "hub" / "class_service.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("class_service", module)  # its dataclasses look themselves up
    spec.loader.exec_module(module)
    return module


def test_a_posted_attempt_is_recorded_under_the_tokens_user_and_bad_bodies_say_why():
    svc = _service_module()
    body = {"lesson": LESSON, "exercise": "retain-graph", "passed": False,
            "reasons": ["retain_graph=True"], "message": "NOT YET"}
    got = svc.parse_attempt(json.dumps(body).encode(), "ada")
    assert got.learner == "ada" and got.reasons == ("retain_graph=True",)
    assert svc.parse_attempt(json.dumps({**body, "learner": "ada"}).encode(), "ada").learner \
        == "ada"

    def refused(data, status: int, words: str):
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        with pytest.raises(svc.Refused) as e:
            svc.parse_attempt(raw, "ada")
        assert e.value.status_code == status and words in e.value.message, e.value.message

    refused({**body, "learner": "bob"}, 403, "the body names 'bob'")
    refused(b"{not json", 400, "must be a JSON object")
    refused([1], 400, "must be a JSON object")
    refused({**body, "at": 1.0}, 400, "unknown fields ['at']")
    refused({"lesson": LESSON}, 400, "missing fields ['exercise', 'passed']")
    refused({**body, "passed": "yes"}, 400, "passed must be True or False")
    refused({**body, "lesson": ""}, 400, "lesson must be a non-empty string")
    refused({**body, "reasons": "retain_graph=True"}, 400, "reasons must be a list")
    refused({**body, "passed": True}, 400, "a passed attempt has no reasons")
    refused(b" " * (svc.MAX_BODY + 1), 413, "at most")


def test_the_export_has_a_row_per_attempt_that_a_spreadsheet_will_not_run():
    svc = _service_module()
    rows = list(csv.DictReader(io.StringIO(svc.attempts_csv([
        _try("ada", 0, "retain_graph=True", "graph grows"),
        Attempt(learner="bob", lesson=LESSON, exercise="x", passed=True, reasons=(),
                message="=HYPERLINK(\"http://example.invalid\")", at=60)]))))
    assert [r["learner"] for r in rows] == ["ada", "bob"]
    assert rows[0]["verdict"] == "NOT YET"
    assert rows[0]["reasons"] == "retain_graph=True; graph grows"
    assert rows[0]["when"] == "1970-01-01T00:00:00+00:00" and rows[1]["verdict"] == "PASS"
    assert rows[1]["message"].startswith("'=")


def test_the_service_listens_on_loopback_only():
    svc = _service_module()
    assert svc.listen_address("http://127.0.0.1:8002") == ("127.0.0.1", 8002)
    for url in ("http://0.0.0.0:8002", "http://example.org:8002", "http://127.0.0.1", ""):
        with pytest.raises(SystemExit, match="127.0.0.1 only"):
            svc.listen_address(url)


# -- the learner's side: a kernel sends its attempts ------------------------------------
class _FakeService:
    """An HTTP server on 127.0.0.1 that records what reaches it and answers ``status``."""

    def __init__(self, status: int = 201, message: str = ""):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers["Content-Length"])
                outer.requests.append({"path": self.path,
                                       "auth": self.headers.get("Authorization"),
                                       "body": json.loads(self.rfile.read(length))})
                reply = json.dumps({"message": message}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/mahiax-class/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def on_a_hub(monkeypatch, tmp_path):
    """A lesson 04 kernel of learner ada on a hub with a class service (a fake one)."""
    service = _FakeService()
    monkeypatch.setenv("MAHIAX_STORE", str(tmp_path / "runs" / "mahiax.sqlite"))
    monkeypatch.setenv("JPY_SESSION_NAME", f"/home/ada/lessons/{LESSON}.ipynb")
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "adas-token")
    monkeypatch.setenv("MAHIAX_CLASS_URL", service.url)
    yield service
    service.close()


def test_a_check_on_a_hub_reaches_the_class_service_with_the_learners_token(
        on_a_hub, monkeypatch):
    # an HTTP proxy in the environment (here one nothing answers) never sees the token
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    entry = bugs.get("encode-multi-loss")
    result = lessons.check("encode-multi-loss", entry.candidates()["buggy"])
    assert not result.holds
    (sent,) = on_a_hub.requests
    assert sent["path"] == "/services/mahiax-class/api/attempts"
    assert sent["auth"] == "token adas-token"
    series = sent["body"].pop("series")  # what the check measured per step (the graph ...)
    assert sent["body"] == {"learner": "ada", "lesson": LESSON, "exercise": "encode-multi-loss",
                            "passed": False, "reasons": ["one forward per loss"],
                            "message": result.message}
    assert [v for _, v in series["graph nodes"]] == result.outcome.graph_nodes
    assert len(read_attempts()) == 1  # and in the learner's own store, as off a hub


def test_a_class_service_that_refuses_or_is_gone_costs_a_warning_not_the_answer(
        on_a_hub, monkeypatch):
    entry = bugs.get("encode-multi-loss")
    refusing = _FakeService(status=403, message="the body names 'bob'")
    try:
        monkeypatch.setenv("MAHIAX_CLASS_URL", refusing.url)
        with pytest.warns(UserWarning, match="did not reach the class page .*403: the body "
                                             "names 'bob'.*answer stands"):
            assert lessons.check("encode-multi-loss", entry.candidates()["fixed"]).holds
    finally:
        refusing.close()
    monkeypatch.setenv("MAHIAX_CLASS_URL", refusing.url)  # closed: nothing listens
    with pytest.warns(UserWarning, match="did not answer"):
        assert lessons.check("encode-multi-loss", entry.candidates()["fixed"]).holds
    assert [a.passed for a in read_attempts()] == [True, True]  # the learner's own store


def test_off_a_hub_nothing_is_sent(monkeypatch, tmp_path):
    monkeypatch.delenv("MAHIAX_CLASS_URL", raising=False)
    assert ClassService.from_env() is None
    assert send_attempt(_try("ada", 1)) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entry = bugs.get("encode-multi-loss")
        lessons.check("encode-multi-loss", entry.candidates()["fixed"],
                      store=tmp_path / "s.sqlite")


def test_a_class_url_without_a_token_or_not_http_is_named():
    with pytest.raises(ClassServiceError, match="JUPYTERHUB_API_TOKEN is not"):
        ClassService.from_env({"MAHIAX_CLASS_URL": "http://127.0.0.1:1/"})
    with pytest.raises(ClassServiceError, match="not an http"):
        ClassService.from_env({"MAHIAX_CLASS_URL": "ftp://x/", "JUPYTERHUB_API_TOKEN": "t"})
    s = ClassService.from_env({"MAHIAX_CLASS_URL": "http://127.0.0.1:1/s",
                               "JUPYTERHUB_API_TOKEN": "a-secret-token"})
    assert s.url == "http://127.0.0.1:1/s/" and "a-secret-token" not in repr(s)
