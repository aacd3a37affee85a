"""The doctor on a corpus of training-loop bugs PyTorch users reported in public
(``tests/doctor_corpus/``): each report reproduced minimally, beside the fix its thread
accepted.

What a user relies on: the buggy loop really shows the reported harm and the fixed loop does
not (so the corpus is honest), the doctor names the reported kind at the line to change, and
it stays silent on every fixed loop. Cases the doctor does not get yet are listed in
``NOT_YET`` with why: their tests are strict expected failures, so a case that starts passing
fails until it leaves the list.
"""

from __future__ import annotations

import pytest

from mahiax import doctor
from tests.doctor_corpus.common import ARCHS, STATES, cases, expected, run

pytestmark = pytest.mark.slow  # every report's loops trained, buggy and fixed (docs/tests.md)

CASES = cases()

# case -> what the doctor lacks for it (each one a part of the work still open)
NOT_YET: dict[str, str] = {}


def _examine(loop) -> doctor.Report:
    return doctor.examine(loop.step, 6, model=loop.model, optimizer=loop.optimizer,
                          scaler=loop.scaler)


def test_the_corpus_has_30_reports_across_kinds_architectures_and_holders():
    assert len(CASES) >= 30
    kinds = {m.KIND for m in CASES.values()}
    assert kinds <= set(doctor.KINDS), kinds - set(doctor.KINDS)
    assert {"step-before-backward", "graph-carried-across-steps", "inplace-on-saved",
            "backward-per-loss", "clip-before-unscale"} <= kinds
    assert {"gan", "rnn", "lstm", "actor-critic", "amp", "multi-task", "ema"} <= {
        m.ARCH for m in CASES.values()}
    assert {"attribute", "dict", "list", "closure", "global"} <= {
        m.STATE for m in CASES.values()}
    assert set(NOT_YET) <= set(CASES), set(NOT_YET) - set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_case_cites_its_report_and_marks_one_line_of_its_kind(name):
    case = CASES[name]
    assert case.SOURCE.startswith("https://") and case.SOURCE in case.__doc__
    assert case.ARCH in ARCHS and case.STATE in STATES
    (marked,) = expected(case)
    assert marked[0] == case.KIND
    assert expected(case, "fixed") == set()


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_buggy_loop_shows_the_reported_harm_and_the_fixed_one_does_not(name):
    case = CASES[name]
    buggy = case.buggy()
    raised = run(buggy)
    if case.ERROR is not None:
        assert raised is not None and case.ERROR in str(raised), raised
    else:
        assert raised is None, raised
        assert case.symptom(buggy)
    fixed = case.fixed()  # after the buggy run: a case may keep its state in a global
    assert run(fixed) is None
    if case.ERROR is None:
        assert not case.symptom(fixed)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_doctor_names_the_reported_kind_at_the_line_to_change(name, request):
    if name in NOT_YET:
        request.applymarker(pytest.mark.xfail(reason=NOT_YET[name], strict=True))
    case = CASES[name]
    report = _examine(case.buggy())
    assert {(f.kind, f.line) for f in report.findings} == expected(case), str(report)
    assert all(f.file == case.__file__ for f in report.findings)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_doctor_is_silent_on_the_fixed_loop(name):
    report = _examine(CASES[name].fixed())
    assert report.ok, str(report)
    assert report.steps_run == 6


APPLIED = sorted(name for name, case in CASES.items() if hasattr(case, "applied"))


def test_every_case_the_doctor_names_keeps_the_doctors_fix_applied():
    named = set(CASES) - set(NOT_YET)
    assert named <= set(APPLIED), sorted(named - set(APPLIED))


@pytest.mark.parametrize("name", APPLIED)
def test_the_doctors_fix_applied_as_written_runs_and_passes(name):
    """``applied()``: the buggy loop with the fix the doctor prints for it, applied as
    written. It must run, lose the reported harm, and get no finding."""
    case = CASES[name]
    loop = case.applied()
    assert run(loop) is None
    if case.ERROR is None:
        assert not case.symptom(loop)
    report = _examine(case.applied())
    assert report.ok, str(report)
