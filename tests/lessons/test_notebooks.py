"""The lesson notebooks: stored clean, built from their sources, in the classroom form every
lesson shares, run top to bottom on CPU, and stating verdicts that the catalog measures.

A lesson states the verdict it expects for the summary's fix in prose, in one fixed form
(``notebook_env.STATED_VERDICT``); the catalog measures the verdict afresh
(``bugs.verdict``); a disagreement fails here, so a lesson can never go on telling a story
that PyTorch no longer shows.

No test here asserts how long a lesson takes: on a shared 2-core CI machine that flakes (a
12 s lesson once took 93 s). The run test has a generous hang guard only; each lesson's cell
time is measured by ``make bench`` (``benchmarks/bench_lessons.py``, goal: under 20 s).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from mahiax import bugs
from mahiax.doctor import exercise, exercise_eval
from mahiax.store.attempts import current_learner, read_attempts
from tests.lessons.lesson_rules import markdown_in_code, predict_giveaways, unbound_figures
from tests.notebook_env import (
    KERNEL_MAIN,
    KERNEL_NAME,
    KERNEL_STACKS,
    LESSONS,
    NOTEBOOKS,
    ROOT,
    STATED_VERDICT,
    LessonClient,
    first_line,
    jupyter_env,
    notebook_path,
    stated_verdicts,
)

CELL_TIMEOUT_S = 300  # hang guard per cell: far above any lesson's cell (a few s)
HANG_GUARD_S = 900  # hang guard per notebook, kernel start included: not a speed target
TIMING = ROOT / "test-artifacts" / "notebooks"  # where each lesson run's time went (reported)
SUMMARY = ROOT / "docs" / "FIXES_SUMMARY.md"  # the user's summary, which the lessons quote
STALL_S = 60  # a kernel start, cell or stop this long is a stall: stacks are taken (reported)


def _load(name: str) -> dict:
    return json.loads(notebook_path(name).read_text())


def _build_module():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_lesson_of_the_issue_is_there_with_its_source():
    # two digits, an optional part letter (03a_, 03b_), an underscore
    built = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb"))
    sources = sorted(p.stem for p in (NOTEBOOKS / "src").glob("*.py"))
    assert built == list(LESSONS)
    assert sources == list(LESSONS)


@pytest.mark.parametrize("name", LESSONS)
def test_notebook_is_stored_without_outputs(name):
    nb = _load(name)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{name} cell {i} has outputs"
            assert cell["execution_count"] is None, f"{name} cell {i} has an execution count"
    assert "widgets" not in nb["metadata"], f"{name} stores widget state"


def test_notebooks_are_built_from_their_sources():
    """Edit ``notebooks/src/*.py`` and run ``python notebooks/build.py``: never one alone."""
    build = _build_module()
    for src, dest in build.targets().items():
        assert dest.read_text() == build.render(src), (
            f"{dest.name} differs from {src.name}: run .venv/bin/python notebooks/build.py"
        )


def test_build_turns_percent_cells_into_markdown_code_and_tagged_cells():
    build = _build_module()
    nb = build.parse(
        'note\n# %% [markdown]\n# # Title\n#\n# text\n# %%\nx = 1\n'
        '# %% tags=["raises-exception"]\n1 / 0\n', "t"
    )
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]
    assert nb.cells[0].source == "# Title\n\ntext"
    assert nb.cells[2].metadata["tags"] == ["raises-exception"]
    assert [c.id for c in nb.cells] == ["t-0", "t-1", "t-2"]


# ---- stated verdicts ---------------------------------------------------------------------

STATED = [
    (name, eid, label)
    for name in LESSONS if notebook_path(name).exists()  # a missing one fails the test above
    for eid, label in stated_verdicts(_load(name)).items()
]


def test_every_bug_lesson_states_a_verdict_and_every_entry_is_covered():
    by_lesson = {name: stated_verdicts(_load(name)) for name in LESSONS}
    for name in LESSONS[1:]:
        assert by_lesson[name], f"{name} states no expected verdict"
    covered = {eid for found in by_lesson.values() for eid in found}
    assert covered == {e.id for e in bugs.entries()}
    assert {label for _, _, label in STATED} <= set(bugs.VERDICTS)


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_code_never_hard_codes_a_verdict(name):
    """Verdicts are stated in prose and measured in code, never written into code."""
    for i, cell in enumerate(_load(name)["cells"]):
        if cell["cell_type"] != "code":
            continue
        code = "".join(cell["source"])
        for label in bugs.VERDICTS:
            for quoted in (f'"{label}"', f"'{label}'"):
                assert quoted not in code, f"{name} cell {i} hard-codes the verdict {quoted}"


@functools.cache
def _measured(entry_id: str) -> bugs.Verdict:
    return bugs.verdict(entry_id)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "entry_id", "stated"), STATED, ids=[f"{n}:{e}" for n, e, _ in STATED]
)
def test_stated_verdict_is_the_catalogs_measured_verdict(name, entry_id, stated):
    measured = _measured(entry_id)
    assert measured.label == stated, (
        f"{name} says the summary's fix for {entry_id} is {stated!r}, but the catalog "
        f"measured {measured.label!r}: {measured.reason}"
    )


# ---- classroom form ----------------------------------------------------------------------

PREDICT = "**Predict.**"
ANSWER_OPEN = "<details><summary>Answer</summary>"
ANSWER_CLOSE = "</details>"
DOC_LINK = re.compile(r"https://(?:docs\.pytorch\.org/|pytorch\.org/docs/)")
RECONSTRUCTION = "> **Reconstruction.**"
# any emphasised "Reconstruction" (a callout in some other form): **Reconstruction:**, ...
EMPHASISED_RECONSTRUCTION = re.compile(r"[*_]{1,2}\s*Reconstruction", re.IGNORECASE)


def _text(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def classroom_problems(cells: list[dict]) -> list[str]:
    """What keeps a lesson from the classroom form every lesson shares (COMMON.md): an empty
    list when it has it.

    - at least one ``**Predict.**`` markdown cell;
    - every ``**Expected verdict**`` sentence in the exact form, after a Predict cell and
      after at least one code cell that follows that Predict cell (the class predicts, the
      cell measures, then the verdict is revealed);
    - one ``## Check your understanding`` cell with 3-5 folded answers
      (``<details><summary>Answer</summary>`` ... ``</details>``);
    - a link to the PyTorch docs; a ``## Recap`` heading;
    - every Reconstruction callout as a blockquote starting ``> **Reconstruction.**``.
    """
    problems: list[str] = []
    kinds = [c["cell_type"] for c in cells]
    texts = [_text(c) for c in cells]
    md = [i for i, k in enumerate(kinds) if k == "markdown"]
    predicts = [i for i in md if PREDICT in texts[i]]
    if not predicts:
        problems.append(f"no {PREDICT} cell")
    for i in md:
        said = texts[i].count("**Expected verdict**")
        if said != len(STATED_VERDICT.findall(texts[i])):
            problems.append(f"cell {i}: an **Expected verdict** sentence not in the form "
                            "`**Expected verdict** on the summary's fix for `<id>`: **<label>**`")
        if said and not any(kinds[c] == "code" for p in predicts if p < i
                            for c in range(p + 1, i)):
            problems.append(f"cell {i}: **Expected verdict** before a {PREDICT} cell and the "
                            "code cell that measures it")
    quiz = [i for i in md
            if any(ln.strip() == "## Check your understanding" for ln in texts[i].splitlines())]
    if len(quiz) != 1:
        problems.append(f"{len(quiz)} '## Check your understanding' cells (want 1)")
    for i in quiz:
        answers = texts[i].count(ANSWER_OPEN)
        if not 3 <= answers <= 5:
            problems.append(f"cell {i}: {answers} folded answers (want 3-5 {ANSWER_OPEN})")
        if texts[i].count(ANSWER_CLOSE) != answers:
            problems.append(f"cell {i}: {answers} answers opened, "
                            f"{texts[i].count(ANSWER_CLOSE)} {ANSWER_CLOSE} closed")
    if not any(DOC_LINK.search(texts[i]) for i in md):
        problems.append("no link to the PyTorch docs (https://docs.pytorch.org/...)")
    if not any(ln.strip() == "## Recap" for i in md for ln in texts[i].splitlines()):
        problems.append("no '## Recap' heading")
    for i in md:
        for ln in texts[i].splitlines():
            if EMPHASISED_RECONSTRUCTION.search(ln) and not ln.startswith(RECONSTRUCTION + " "):
                problems.append(f"cell {i}: a Reconstruction callout not in the form "
                                f"'{RECONSTRUCTION} ...': {ln.strip()[:60]!r}")
    return problems


def _md(text: str) -> dict:
    return {"cell_type": "markdown", "source": text}


def _code(text: str = "x = 1") -> dict:
    return {"cell_type": "code", "source": text}


_QUIZ = "## Check your understanding\n\n" + "".join(
    f"{n}. Q?\n\n   {ANSWER_OPEN}\n\n   A.\n\n   {ANSWER_CLOSE}\n\n" for n in (1, 2, 3))
_VERDICT = "**Expected verdict** on the summary's fix for `dwa-weights`: **makes-it-worse**"
_GOOD = [
    _md("# T\n\nDocs: [x](https://docs.pytorch.org/docs/stable/notes/ddp.html)"),
    _md(f"{RECONSTRUCTION} The lab assumes X."), _code(),
    _md(f"{PREDICT} What happens?"), _code(), _md(_VERDICT), _md(_QUIZ), _md("## Recap\n\n- x"),
]


@pytest.mark.parametrize(("broken", "problem"), [
    (lambda c: [x for x in c if PREDICT not in x["source"]], "no **Predict.** cell"),
    (lambda c: c[:3] + [c[5], c[3], c[4]] + c[6:], "before a **Predict.** cell"),
    (lambda c: c[:3] + [c[3], c[5], c[4]] + c[6:], "before a **Predict.** cell"),
    (lambda c: c[:5] + [_md(_VERDICT.replace("fix for", "fix to"))] + c[6:], "not in the form"),
    (lambda c: c[:6] + [_md(_QUIZ.replace(ANSWER_OPEN, "<details>", 1))] + c[7:],
     "2 folded answers"),
    (lambda c: c[:6] + [_md(_QUIZ.replace(ANSWER_CLOSE, "", 1))] + c[7:], "closed"),
    (lambda c: c[:6] + c[7:], "0 '## Check your understanding' cells"),
    (lambda c: [_md("# T")] + c[1:], "no link to the PyTorch docs"),
    (lambda c: c[:-1], "no '## Recap' heading"),
    (lambda c: c[:1] + [_md("> **Reconstruction:** the lab assumes X.")] + c[2:],
     "Reconstruction callout not in the form"),
])
def test_classroom_form_check_finds_each_departure(broken, problem):
    assert classroom_problems(_GOOD) == []
    found = classroom_problems(broken(_GOOD))
    assert any(problem in p for p in found), found


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_follows_the_classroom_form(name):
    """Predictions before measurements, the verdict revealed after its measurement, questions
    with folded answers, doc links, a recap, one Reconstruction callout form (COMMON.md)."""
    problems = classroom_problems(_load(name)["cells"])
    assert not problems, f"{name}:\n- " + "\n- ".join(problems)


@pytest.mark.parametrize("name", LESSONS)
def test_no_predict_is_answered_by_the_cell_it_asks_about(name):
    """The class predicts, the cell shows, the reveal explains, a check cell asserts: the
    code a Predict prompt asks about holds no assert, expected error or outcome comment."""
    found = predict_giveaways(_load(name)["cells"])
    assert not found, f"{name}:\n- " + "\n- ".join(found)


@pytest.mark.parametrize("name", LESSONS)
def test_no_markdown_is_left_inside_a_code_cell(name):
    """A heading, Predict, callout or fold written as comments in a code cell never renders
    (a ``# %%`` put into a markdown cell without a ``# %% [markdown]`` after it)."""
    found = markdown_in_code(_load(name)["cells"])
    assert not found, f"{name}:\n- " + "\n- ".join(found)


@pytest.mark.parametrize(("comment", "is_markdown"), [
    ("# ## 2. What .data really does", True), ("# **Predict.** Which fails?", True),
    ("# > **Reconstruction.** The lab assumes", True), ("# <details>", True),
    ("# (tokens, experts): token positions", False), ("x = 1  # ## not a line start", False),
    ("#: bold? **no**", False), ("#\n# Try it: pick how many MiB to keep.", True),
])
def test_markdown_rule_tells_markdown_from_a_comment(comment, is_markdown):
    assert bool(markdown_in_code([_code(f"x = 1\n{comment}")])) == is_markdown


_ASKED = _md(f"{PREDICT} Does the second backward run?")
_REVEAL = _md("It raises: the first backward freed the saved tensors.")


@pytest.mark.parametrize(("measured", "named"), [
    ("y.backward()\nassert x.grad is None", "an assert"),
    ('with lessons.expect_error(RuntimeError, "Trying to backward"):\n    y.backward()',
     "expect_error(...) names"),
    ("with pytest.raises(RuntimeError):\n    y.backward()", "raises(...) names"),
    ("y.backward()  # raises: the graph was freed", "the comment"),
    ('print("x._version (expected 2):", x._version)', "the string"),
    ("flat_graph = [y.grad_fn for _ in range(3)]", "the name 'flat_graph'"),
])
def test_predict_rule_finds_a_measured_cell_that_states_its_answer(measured, named):
    ok = [_ASKED, _code("with lessons.attempt() as caught:\n    y.backward()"), _REVEAL,
          _code('caught.expect(RuntimeError, "Trying to backward")')]
    assert predict_giveaways(ok) == []
    found = predict_giveaways([_ASKED, _code(measured), _REVEAL])
    assert len(found) == 1 and named in found[0] and found[0].startswith("cell 1 "), found


def _ran(source: str, printed: str) -> dict:
    return {"cell_type": "code", "source": source,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": printed}]}


@pytest.mark.parametrize(("prose", "unbound"), [
    ("MaxVio ends at 0.62 after 60 steps.", []),  # 0.6234 printed, 60 set in code
    ("The scale is 65,536 and the clip 1/65,536 of it.", []),
    ("About 6e-8 is float16's smallest step.", []),  # power-of-ten forms: within 5%
    ("MaxVio is 0.2-0.4 with 8 experts.", ["0.2", "0.4", "8"]),
    ("A bright row from about step 50.", ["50"]),
    ("# 11 · Router\n\n## 3. [docs](https://x.org/v/2.13/a1)\n\n1. `topk(7)` float16 03a",
     []),
    ("Liu et al. 2019, #22095, torch 2.6; about 15 minutes; ids up to 10,000", []),
    ("Each step keeps 90 % of it; 62% of the time; 37 % of nothing.", ["37%"]),
])
def test_figures_rule_finds_a_number_no_cell_prints(prose, unbound):
    cells = [_ran("steps, vocab, keep = 60, 10_000, 0.9\nprint(run(steps))",
                  "maxvio 0.6234\nscale 65536.0\ntiny 5.96e-08\n"), _md(prose)]
    assert unbound_figures(cells) == [f"cell 1: {u}" for u in unbound]


# ---- the learner's checks, recorded -------------------------------------------------------

# a check that records the learner's attempt: lessons.check("entry-id", ...), or one of
# lesson 10's doctor exercises checked with record=True; bugs.check records nothing
_LESSONS_CHECK = re.compile(r"\blessons\.check\(\s*[\"']([a-z0-9-]+)[\"']")
_DOCTOR_CHECK = re.compile(r"\b(exercise|exercise_eval)\.check\([^)]*\brecord=True")
_DOCTOR_EXERCISES = {"exercise": exercise.EXERCISE, "exercise_eval": exercise_eval.EXERCISE}
HISTORY = "lessons.my_attempts()"


def recorded_checks(cells: list[dict]) -> list[tuple[int, str]]:
    """(cell index, exercise) of every check a lesson's code records, in order."""
    found = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        code = _text(cell)
        calls = [(m.start(), m[1]) for m in _LESSONS_CHECK.finditer(code)]
        calls += [(m.start(), _DOCTOR_EXERCISES[m[1]]) for m in _DOCTOR_CHECK.finditer(code)]
        found += [(i, ex) for _, ex in sorted(calls)]
    return found


@pytest.mark.parametrize("name", LESSONS)
def test_only_the_learners_own_check_is_recorded_and_the_history_follows(name):
    """Each lesson's exercise cell records the learner's check (``lessons.check``, or the
    doctor's ``record=True``); the lesson's demonstrations and its folded solutions use
    ``bugs.check``, which records nothing; a ``lessons.my_attempts()`` cell after the last
    recorded check shows the learner's history. The tour records nothing: it only shows."""
    cells = _load(name)["cells"]
    checks = recorded_checks(cells)
    history = [i for i, c in enumerate(cells)
               if c["cell_type"] == "code" and _text(c).strip() == HISTORY]
    assert len(history) == 1, f"{name}: {len(history)} '{HISTORY}' cells (want 1)"
    if name == "00_tour":
        assert checks == [], f"{name} records checks: {checks}"
        return
    assert checks, f"{name}: no exercise cell records the learner's check"
    for i, exercise_name in checks:
        cell = cells[i]
        assert "solution" not in cell.get("metadata", {}).get("tags", []), \
            f"{name} cell {i}: a folded solution records {exercise_name} as the learner's"
        assert "TODO" in _text(cell) or "NotImplementedError" in _text(cell), \
            f"{name} cell {i} records {exercise_name} but is not the learner's attempt"
    assert history[0] > checks[-1][0], f"{name}: the history comes before the last check"


def test_recorded_checks_are_found_and_demonstrations_are_not():
    cells = [_code('print(lessons.check("retain-graph", my_loop))'),
             _code('band_aid = bugs.check("retain-graph", loop)'),
             _code("print(exercise_eval.check(train_step, record=True))\n"
                   "result = exercise.check(train_step)"),
             _md('`lessons.check("dwa-weights", ...)` in prose')]
    assert recorded_checks(cells) == [(0, "retain-graph"), (2, exercise_eval.EXERCISE)]


# ---- running every notebook --------------------------------------------------------------


def _files_under(path) -> dict[str, float]:
    return {
        str(p.relative_to(path)): p.stat().st_mtime
        for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }


class StallWatch:
    """Watches the phases of one lesson run (kernel start, each cell, kernel stop). A phase
    that lasts over ``STALL_S`` is a stall: the watch takes every thread's stack of this test
    process and, through faulthandler (``notebook_env.KERNEL_MAIN``), of the kernel, so the
    report says where each side waited. It reports; it never fails a test."""

    def __init__(self, kernel_stacks: Path, stall_s: float = STALL_S):
        self.kernel_stacks = kernel_stacks
        self.stall_s = stall_s
        self.kernel_pid: int | None = None
        self.stalls: list[dict] = []
        self._phase: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self._lock:
            self._phase = (name, time.perf_counter())
        try:
            yield
        finally:
            with self._lock:
                started = self._phase[1] if self._phase else time.perf_counter()
                self._phase = None
            for stall in self.stalls:
                if stall["phase"] == name and "lasted_s" not in stall:
                    stall["lasted_s"] = round(time.perf_counter() - started, 1)

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        noted: set[str] = set()
        while not self._done.wait(min(1.0, self.stall_s / 4)):
            with self._lock:
                phase = self._phase
            if phase is None or phase[0] in noted:
                continue
            if time.perf_counter() - phase[1] >= self.stall_s:
                noted.add(phase[0])
                self.stalls.append({"phase": phase[0], "after_s": self.stall_s,
                                    "test_stacks": self._own_stacks(),
                                    "kernel_stacks": self._kernel_stacks()})

    @staticmethod
    def _own_stacks() -> str:
        names = {t.ident: t.name for t in threading.enumerate()}
        return "\n".join(f"thread {names.get(tid, tid)}:\n" + "".join(traceback.format_stack(f))
                         for tid, f in sys._current_frames().items())

    def _kernel_stacks(self) -> str:
        if self.kernel_pid is None:
            return "(no kernel process yet)"
        before = self.kernel_stacks.stat().st_size if self.kernel_stacks.exists() else 0
        try:
            os.kill(self.kernel_pid, signal.SIGUSR1)
        except OSError as e:
            return f"(kernel {self.kernel_pid}: {e})"
        time.sleep(1.0)  # faulthandler writes from the kernel's signal handler
        with open(self.kernel_stacks, errors="replace") as f:
            f.seek(before)
            return f.read() or "(the kernel wrote no stacks)"


def _write_timing(name: str, kernel_start_s: float, cells: list[tuple[int, float, str]],
                  stop_s: float, stalls: list[dict]) -> None:
    """Where a lesson run spent its time (``cells``: index, seconds, first line), kept under
    ``test-artifacts/notebooks/`` and printed (shown for a failed test): reported so a slow
    run can be explained, never asserted. A run with a stall is also kept under a name of its
    own (a later run of the same lesson does not overwrite it) and named in a warning, which
    pytest's summary shows for a test that passed."""
    cells_s = sum(s for _, s, _ in cells)
    slowest = sorted(cells, key=lambda c: -c[1])[:5]
    TIMING.mkdir(parents=True, exist_ok=True)
    text = json.dumps({
        "kernel_start_s": round(kernel_start_s, 2), "cells_s": round(cells_s, 2),
        "kernel_stop_s": round(stop_s, 2),
        "slowest_cells": [{"index": i, "seconds": round(s, 2), "first_line": line}
                          for i, s, line in slowest],
        "stalls": stalls,
    }, indent=2)
    (TIMING / f"{name}.json").write_text(text)
    print(f"{name}: cells {cells_s:.1f} s, kernel start {kernel_start_s:.1f} s, "
          f"stop {stop_s:.1f} s; slowest "
          + ", ".join(f"cell {i} {s:.1f} s" for i, s, _ in slowest))
    if stalls:
        kept = TIMING / f"{name}-stall-{time.strftime('%Y%m%d-%H%M%S')}.json"
        kept.write_text(text)
        for stall in stalls:
            print(f"STALL in {stall['phase']}:\n--- test process ---\n{stall['test_stacks']}"
                  f"\n--- kernel ---\n{stall['kernel_stacks']}")
        warnings.warn(f"{name}: " + "; ".join(
            f"{st['phase']} took {st.get('lasted_s', '?')} s" for st in stalls)
            + f" (over {STALL_S} s): both sides' stacks in {kept}", stacklevel=2)


@pytest.mark.kernels
@pytest.mark.timeout(HANG_GUARD_S)
@pytest.mark.parametrize("name", LESSONS)
def test_notebook_runs_top_to_bottom_on_cpu(name, tmp_path, monkeypatch):
    """The kernel is this venv's interpreter (a temp kernelspec), on CPU, one thread; the
    working directory is ``notebooks/``, as in ``make lab``, and nothing may be written there.

    Only hangs are guarded (per cell and per notebook); how long the cells take is a
    ``make bench`` figure, never an assertion here.
    """
    for key, value in jupyter_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU, as in CI
    # what a Jupyter server tells its kernel: the lesson an attempt is recorded under
    monkeypatch.setenv("JPY_SESSION_NAME", str(notebook_path(name)))
    nb = nbformat.read(notebook_path(name), as_version=4)
    before = _files_under(NOTEBOOKS)
    client = LessonClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME, startup_timeout=120,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    timed: list[tuple[int, float, str]] = []  # code cells: index, seconds, first line
    watch = StallWatch(tmp_path / "kernel-stacks.txt")
    monkeypatch.setenv(KERNEL_STACKS, str(watch.kernel_stacks))
    try:
        t0 = time.perf_counter()
        with watch.phase("kernel start"):
            client.km = client.create_kernel_manager()
            client.start_new_kernel(env=dict(os.environ))
            watch.kernel_pid = client.km.provisioner.pid
            client.start_new_kernel_client()
        started = time.perf_counter()
        try:
            for index, cell in enumerate(nb.cells):
                c0 = time.perf_counter()
                with watch.phase(f"cell {index}: {first_line(cell.source)}"):
                    client.execute_cell(cell, index)
                if cell.cell_type == "code":
                    timed.append((index, time.perf_counter() - c0, first_line(cell.source)))
        finally:
            ended = time.perf_counter()
            with watch.phase("kernel stop"):
                client._cleanup_kernel()
    finally:
        watch.close()
    _write_timing(name, started - t0, timed, time.perf_counter() - ended, watch.stalls)
    nbformat.write(nb, TIMING / f"{name}.ipynb")  # the executed lesson, for a failure's reader

    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if "raises-exception" in cell.metadata.get("tags", []):
            assert errors, f"{name} cell {i} is tagged raises-exception but raised nothing"
        else:
            assert not errors, f"{name} cell {i}: {errors[0].ename}: {errors[0].evalue}"
    assert _files_under(NOTEBOOKS) == before, f"{name} wrote into notebooks/"
    _assert_recorded_once(name, nb)
    unbound = unbound_figures(nb.cells, also_known=[SUMMARY.read_text()])
    assert not unbound, (
        f"{name}: figures stated in markdown that no cell prints (nor sets in code), so a "
        "change of code would leave the prose behind:\n- " + "\n- ".join(unbound))


def _assert_recorded_once(name: str, nb: nbformat.NotebookNode) -> None:
    """The run recorded exactly the learner's checks, once each, in order, under this lesson
    and learner (none from a demonstration or a solution); each starting attempt is NOT YET
    with a reason; the history cell shows them."""
    attempts = read_attempts(os.environ["MAHIAX_STORE"])
    expected = [ex for _, ex in recorded_checks(nb.cells)]
    assert [a.exercise for a in attempts] == expected, (
        f"{name}: recorded {[a.exercise for a in attempts]}, the learner's cells {expected}")
    for a in attempts:
        assert (a.lesson, a.learner) == (name, current_learner()), a
        assert not a.passed and a.reasons, f"{name}: the starting attempt {a}"
    (history,) = [c for c in nb.cells if c.cell_type == "code" and c.source.strip() == HISTORY]
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in history.outputs)
    for a in attempts:
        assert a.exercise in shown and "NOT YET" in shown, f"{name}: history shows {shown!r}"


# a stand-in kernel: the kernelspec's faulthandler set-up, then a wait in a named function
_WAITING_KERNEL = KERNEL_MAIN.split("from ipykernel")[0] + """
import time
def waiting_for_a_reply():
    time.sleep(60)
waiting_for_a_reply()
"""


@pytest.mark.timeout(60)
def test_a_stalled_phase_reports_where_the_kernel_and_the_test_waited(tmp_path):
    stacks = tmp_path / "kernel-stacks.txt"
    kernel = subprocess.Popen([sys.executable, "-c", _WAITING_KERNEL],
                              env={**os.environ, KERNEL_STACKS: str(stacks)})
    watch = StallWatch(stacks, stall_s=0.5)
    try:
        watch.kernel_pid = kernel.pid
        time.sleep(0.5)  # the stand-in registers its handler first
        with watch.phase("cell 3: x = wait()"):
            time.sleep(2.5)
        with watch.phase("cell 4: quick"):
            pass
    finally:
        watch.close()
        kernel.kill()
        kernel.wait(timeout=10)
    (stall,) = watch.stalls
    assert stall["phase"] == "cell 3: x = wait()" and stall["lasted_s"] >= 2.5
    assert "waiting_for_a_reply" in stall["kernel_stacks"]
    assert "test_a_stalled_phase_reports_where" in stall["test_stacks"]


def test_instructor_notes_cover_every_lesson_with_timing_questions_and_slow_cells():
    """``notebooks/INSTRUCTOR.md``: one section per lesson, in teaching order, each with a
    timing plan, the questions to ask (with answers) and the slow cells."""
    text = (NOTEBOOKS / "INSTRUCTOR.md").read_text()
    heads = [ln[3:].strip() for ln in text.splitlines() if ln.startswith("## ")]
    assert heads == list(LESSONS)
    sections = text.split("\n## ")[1:]
    for name, body in zip(LESSONS, sections, strict=True):
        lower = body.lower()
        for needed in ("timing", "question", "slow"):
            assert needed in lower, f"INSTRUCTOR.md, {name}: no {needed!r}"


def test_kernel_channel_waits_are_sliced_so_a_missed_wakeup_costs_a_slice_not_the_timeout():
    # a poll that missed its wakeup answers only at its timeout: each of ours is short, and
    # the caller's own timeout still holds (Empty once it has passed)
    import asyncio
    from queue import Empty

    from tests.notebook_env import POLL_SLICE_S, _sliced

    asked: list[float | None] = []

    async def poll(timeout=None):
        asked.append(timeout)
        if len(asked) < 3:
            raise Empty  # nothing yet (or an edge missed): the slice ends
        return {"msg_type": "execute_reply"}

    assert asyncio.run(_sliced(poll)(timeout=300))["msg_type"] == "execute_reply"
    assert len(asked) == 3 and all(t <= POLL_SLICE_S for t in asked)
    asked.clear()
    assert asyncio.run(_sliced(poll)(timeout=None))["msg_type"] == "execute_reply"
    assert asked == [POLL_SLICE_S] * 3  # waiting for ever, a slice at a time

    async def never(timeout=None):
        raise Empty

    with pytest.raises(Empty):
        asyncio.run(_sliced(never)(timeout=0.01))
