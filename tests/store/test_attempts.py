"""Exercise attempts: a lesson's check records who tried what, PASS or NOT YET and why, in the
learner's run store, and the learner reads their own history back (``lessons.my_attempts``).
Real checks (``mahiax.bugs``), a real SQLite store."""

from __future__ import annotations

import pytest

from mahiax import bugs, lessons
from mahiax.config import tiny
from mahiax.store import RunReader, RunWriter
from mahiax.store.attempts import Attempt, current_learner, read_attempts, record_attempt


@pytest.fixture
def in_lesson(monkeypatch, tmp_path):
    """A kernel of lesson 04 whose store is a fresh file; yields the store's path."""
    store = tmp_path / "runs" / "mahiax.sqlite"
    monkeypatch.setenv("MAHIAX_STORE", str(store))
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/ada/notebooks/04_retain_graph_and_encode.ipynb")
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    return store


def test_a_lessons_checks_are_recorded_and_read_back_in_order(in_lesson):
    entry = bugs.get("encode-multi-loss")
    first = lessons.check("encode-multi-loss", entry.candidates()["buggy"])
    second = lessons.check("encode-multi-loss", entry.candidates()["fixed"])
    assert not first.holds and second.holds
    mine = lessons.my_attempts()
    assert list(mine["verdict"]) == ["NOT YET", "PASS"]
    assert list(mine["why not"]) == ["one forward per loss", ""]
    assert set(mine["lesson"]) == {"04_retain_graph_and_encode"}
    assert set(mine["exercise"]) == {"encode-multi-loss"}
    stored = read_attempts(in_lesson)
    assert [a.learner for a in stored] == ["ada", "ada"]
    assert stored[0].message == first.message and stored[0].reasons == ("one forward per loss",)


def test_a_learner_reads_only_their_own_attempts(in_lesson, monkeypatch):
    def attempt(learner: str, passed: bool) -> Attempt:
        return Attempt(learner=learner, lesson="11_router_collapse", exercise="router-collapse",
                       passed=passed, reasons=() if passed else ("the bias weighs the mix",),
                       message="m", at=1.0)

    record_attempt(attempt("ada", False))
    record_attempt(attempt("grace", True))
    assert current_learner() == "ada"
    assert list(lessons.my_attempts()["verdict"]) == ["NOT YET"]
    assert [a.learner for a in read_attempts(in_lesson)] == ["ada", "grace"]


def test_a_store_from_before_attempts_has_none_and_takes_them(tmp_path):
    store = tmp_path / "old.sqlite"
    with RunWriter("r", tiny().to_dict(), path=store) as w:
        w.log({"loss": 1.0}, 0)
    assert read_attempts(store) == []
    assert read_attempts(tmp_path / "no-file-yet.sqlite") == []
    record_attempt(Attempt(learner="ada", lesson="l", exercise="e", passed=True, reasons=(),
                           message="", at=2.0), store)
    assert len(read_attempts(store)) == 1
    assert RunReader(store).run_names() == ["r"]  # the runs are untouched


def test_a_store_that_cannot_be_written_costs_a_warning_not_the_answer(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # the store's folder would have to be made where a file already is
    monkeypatch.setenv("MAHIAX_STORE", str(blocker / "mahiax.sqlite"))
    with pytest.warns(UserWarning, match="your attempt was not recorded") as caught:
        result = lessons.check("encode-multi-loss",
                               bugs.get("encode-multi-loss").candidates()["fixed"])
    assert result.holds
    assert caught[0].filename == __file__, "the warning points at the learner's line"


@pytest.mark.parametrize(("fields", "says"), [
    ({"lesson": " "}, "an attempt's lesson must be a non-empty string"),
    ({"passed": 1}, "an attempt's passed must be True or False"),
    ({"passed": True, "reasons": ("x",)}, "a passed attempt has no reasons"),
    ({"at": float("nan")}, "an attempt's time must be a finite number"),
])
def test_an_attempt_that_makes_no_sense_is_refused_by_name(fields, says):
    base = {"learner": "ada", "lesson": "l", "exercise": "e", "passed": False,
            "reasons": ("r",), "message": "", "at": 1.0}
    with pytest.raises(ValueError, match=says):
        Attempt(**(base | fields))
