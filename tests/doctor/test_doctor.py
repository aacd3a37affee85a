"""The doctor: every loop bug it knows, at the line to change; no finding on correct loops.

Three sources of loops: plain-PyTorch loops written for these tests (``doctor_loops.py``,
expected kinds and lines marked in the file), the catalog's variants (buggy: the finding of
the entry's kind at the catalog's buggy line; fixed: none), and the lab's own Trainer.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as nn_module
from torch.overrides import _get_current_function_mode_stack
from torch.utils._python_dispatch import _get_current_dispatch_mode

from mahiax import bugs, doctor
from mahiax.bugs import accumulate, harness, loops, stateful
from mahiax.cli import main
from mahiax.doctor import exercise, exercise_eval
from mahiax.doctor.on_catalog import examine_entry
from mahiax.errors import BadInput
from tests.doctor import doctor_loops
from tests.doctor.doctor_loops import BUGGY, CORRECT, FILE, expected

ROOT = Path(__file__).resolve().parents[2]


def _examine(make, steps: int = 6) -> doctor.Report:
    loop = make()
    return doctor.examine(loop.step, steps, model=loop.model, optimizer=loop.optimizer,
                          scaler=loop.scaler)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUGGY))
def test_each_buggy_loop_gets_exactly_its_finding_at_its_line(name):
    report = _examine(BUGGY[name])
    got = {(f.kind, f.line) for f in report.findings}
    assert got == expected(name), str(report)
    assert all(f.file == FILE for f in report.findings)


def test_the_buggy_loops_cover_every_kind():
    # the loops written for these tests and the corpus of real reports, together
    from tests.doctor_corpus.common import cases

    kinds = {kind for name in BUGGY for kind, _ in expected(name)}
    kinds |= {case.KIND for case in cases().values()}
    assert kinds >= set(doctor.KINDS), set(doctor.KINDS) - kinds
    assert len(BUGGY) >= 10


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_loops_get_no_finding(name):
    report = _examine(CORRECT[name])
    assert report.ok, str(report)
    assert report.steps_run == 6


def test_the_trainer_step_gets_no_finding():
    from mahiax.config import tiny
    from mahiax.training.trainer import Trainer

    trainer = Trainer(tiny())
    report = doctor.examine(lambda i: trainer.step(), 6, model=trainer.model,
                            optimizer=trainer.optimizer)
    assert report.ok, str(report)


def _line_of(obj: object, text: str) -> tuple[str, int]:
    lines, start = inspect.getsourcelines(obj)
    hits = [start + i for i, ln in enumerate(lines) if text in ln]
    assert len(hits) == 1, (text, hits)
    return inspect.getsourcefile(obj), hits[0]


# entry -> (kind, where the buggy line is, text of that line)
CATALOG = {
    "fabric-accumulate": ("inplace-on-saved", accumulate._per_sample_inplace,
                          "output[batch_idx] += layer_weight * layer_output"),
    "layer-router-accumulate": ("inplace-on-saved", accumulate._per_sample_inplace,
                                "output[batch_idx] += layer_weight * layer_output"),
    "graph-memory-update": ("graph-carried-across-steps", stateful.BuggyGraphMemory.forward,
                            "self.nodes = (1 - s) * self.nodes"),
    "tiny-memory-write": ("inplace-on-saved", stateful.BuggyTinyMemory.forward,
                          "self.slots[ptr] = x.mean(dim=0).detach()"),
    "dwa-weights": ("graph-carried-across-steps", stateful.BuggyDWA.combine,
                    "self.w = F.softmax(-losses, dim=0)"),
    "retain-graph": ("backward-per-loss", loops.backward_per_loss,
                     "term.backward()  # the second call"),
    "encode-multi-loss": ("backward-per-loss", loops.forward_per_loss, "term.backward()"),
    "persistent-inplace": ("inplace-on-saved", harness.StepContext.finish,
                           "self.optimizer.step()"),
    "amp-clip-before-unscale": ("clip-before-unscale", loops.amp_loop,
                                "MAX_NORM)  # ...then clip"),
}
# entries whose bug is not a misuse of autograd the watchers can see
NOT_A_LOOP_BUG = {
    "expert-index": "an IndexError: kept in report.error and explained, not a finding",
    "controller-importance": "an EMA of the wrong slots, written through .data into a buffer "
                             "no live graph saved: gradients are right, the numbers are not",
    "memory-zero-cpu": "a profiler reading 0 MB on the CPU: a measurement bug, not the loop",
    "ddp-unused-experts": "runs two gloo ranks in child processes; the single-process "
                          "unused-parameters finding is tested on doctor_loops.unused_head",
    "ddp-broadcast-buffers": "runs two gloo ranks in child processes",
    "router-collapse": "a load imbalance that training dynamics build up: no autograd misuse, "
                       "read on the dashboard's MaxVio, not by the watchers",
}


def test_every_catalog_entry_is_covered_or_excluded_with_a_reason():
    assert set(CATALOG) | set(NOT_A_LOOP_BUG) == {e.id for e in bugs.entries()}
    assert not set(CATALOG) & set(NOT_A_LOOP_BUG)


@pytest.mark.slow
@pytest.mark.parametrize("eid", sorted(CATALOG))
def test_catalog_buggy_variant_found_at_the_buggy_line(eid):
    kind, where, text = CATALOG[eid]
    report = examine_entry(eid, "buggy")
    file, line = _line_of(where, text)
    hits = [f for f in report.findings if f.kind == kind]
    assert [(Path(f.file), f.line) for f in hits] == [(Path(file), line)], str(report)


@pytest.mark.slow
@pytest.mark.parametrize("eid", sorted(set(CATALOG) | {"expert-index", "controller-importance",
                                                       "memory-zero-cpu"}))
def test_catalog_fixed_variant_gets_no_finding(eid):
    report = examine_entry(eid, "fixed")
    assert report.ok, str(report)


# the catalog's band-aids that write through .data: no error, silently wrong gradients
DATA_BAND_AIDS = [
    ("tiny-memory-write", "band-aid: the write through .data",
     stateful.DataWriteTinyMemory.forward, "self.slots.data[ptr] = x.detach().mean(dim=0)"),
    ("graph-memory-update", "band-aid: .data.copy_", stateful.DataCopyGraphMemory.forward,
     "self.nodes.data.copy_(new_nodes)"),
    ("dwa-weights", "band-aid: the summary's copy_ through .data", stateful.DataWriteDWA.combine,
     "self.w.data.copy_("),
]


@pytest.mark.slow
@pytest.mark.parametrize(("eid", "name", "where", "text"), DATA_BAND_AIDS)
def test_catalog_data_band_aids_are_silent_writes_at_their_line(eid, name, where, text):
    report = examine_entry(eid, "candidate", candidate=bugs.get(eid).candidates()[name])
    assert report.error is None
    file, line = _line_of(where, text)
    assert [(f.kind, Path(f.file), f.line) for f in report.findings] == [
        ("silent-write", Path(file), line)], str(report)


def test_an_error_of_the_loop_is_kept_and_explained():
    report = examine_entry("expert-index", "buggy")
    assert report.findings == []
    e = report.error
    assert e is not None and e.type == "IndexError" and e.step == 0
    assert "index out of range" in e.message
    assert "01_expert_router_index" in e.explanation


def test_an_inplace_error_keeps_pytorchs_message_and_names_the_write():
    report = _examine(BUGGY["inplace-gate"])
    e = report.error
    assert e.type == "RuntimeError" and e.step == 0
    assert "modified by an inplace operation" in e.message
    assert Path(e.file) == Path(FILE)  # the user's line that raised: the backward() call
    assert "gate.mul_(2.0)" in str(report)
    (finding,) = report.findings
    assert f"doctor_loops.py:{finding.line}" in e.explanation


def test_state_on_a_plain_object_is_named_with_its_storing_line():
    # a plain class's attributes live inline (Python 3.11+): the instance itself refers to
    # the tensor; the report names `CarriedState.h` and its line, not the backward() line
    report = _examine(BUGGY["plain-state"])
    (finding,) = report.findings
    assert "CarriedState.h holds a tensor" in finding.message
    assert report.error is not None and "second time" in report.error.message
    assert f"doctor_loops.py:{finding.line}" in report.error.explanation
    assert "could not name" not in report.error.explanation


def _global_state() -> tuple:
    return (
        torch.Tensor.backward, torch.autograd.backward, torch.nn.utils.clip_grad_norm_,
        torch.nn.utils.clip_grad_value_, torch.amp.GradScaler.scale,
        torch.amp.GradScaler.unscale_, torch.amp.GradScaler.step,
        len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks),
        torch._C._autograd._top_saved_tensors_default_hooks(False),
        _get_current_dispatch_mode(), len(_get_current_function_mode_stack()),
    )


@pytest.mark.parametrize("name", ["inplace-gate", "clip-scaled", "clip-imported", "classifier"])
def test_everything_installed_is_removed_afterwards(name):
    before = _global_state()
    make = BUGGY.get(name) or CORRECT[name]
    loop = make()
    hooks = [(len(m._forward_pre_hooks), [len(p._post_accumulate_grad_hooks or {})
                                          for p in m.parameters(recurse=False)])
             for m in loop.model.modules()]
    doctor.examine(loop.step, 3, model=loop.model, optimizer=loop.optimizer)
    assert _global_state() == before
    assert doctor_loops.clip_grad_norm_ is torch.nn.utils.clip_grad_norm_  # imported by name
    assert [(len(m._forward_pre_hooks), [len(p._post_accumulate_grad_hooks or {})
                                         for p in m.parameters(recurse=False)])
            for m in loop.model.modules()] == hooks


def test_graphs_retained_during_the_examination_are_freed_with_their_loop():
    loop = BUGGY["retain-anyway"]()
    kept = []

    def step(i):
        x = torch.randn(4, 8)
        h = torch.sigmoid(loop.model.fc1(x))  # sigmoid saves its output
        kept.append(weakref.ref(h))
        h.sum().backward(retain_graph=True)

    doctor.examine(step, 2, model=loop.model, optimizer=loop.optimizer)
    gc.collect()
    assert [r() for r in kept] == [None, None]


def test_the_doctor_does_not_change_what_the_loop_computes():
    plain, watched = CORRECT["classifier"](), CORRECT["classifier"]()
    for i in range(3):
        plain.step(i)
    doctor.examine(watched.step, 3, model=watched.model, optimizer=watched.optimizer)
    for a, b in zip(plain.model.parameters(), watched.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_report_reads_in_a_terminal_a_notebook_and_json():
    report = _examine(BUGGY["total-loss"])
    text = str(report)
    (f,) = report.findings
    assert text.startswith("mahiax doctor: 6 of 6 steps ran; 1 finding.")
    assert f"doctor_loops.py:{f.line}" in text and "running_total += loss" in text
    assert "Fix:" in f.message and "Lesson: 03a_memories" in f.message
    assert "global `running_total`" in f.message
    html = report._repr_html_()
    assert "<table>" in html and "graph-carried-across-steps" in html
    data = json.loads(report.to_json())
    assert data["findings"][0]["kind"] == "graph-carried-across-steps"
    assert data["findings"][0]["line"] == f.line


def test_bad_arguments_are_refused_with_what_is_allowed():
    loop = CORRECT["classifier"]()
    with pytest.raises(BadInput, match="positive integer"):
        doctor.examine(loop.step, 0)
    with pytest.raises(BadInput, match="step must be a function"):
        doctor.examine("train", 2)
    with pytest.raises(BadInput, match="torch.nn.Module"):
        doctor.examine(loop.step, 2, model=loop.optimizer)
    with pytest.raises(ValueError, match="unknown finding kind"):
        doctor.Finding(kind="leak", file="", line=0, message="")


# ---- the command line ---------------------------------------------------------------------------
def test_cli_on_the_example_finds_its_bug_and_exits_1(capsys):
    example = ROOT / "examples" / "my_loop.py"
    code = main(["doctor", f"{example}:train_step", "--steps", "4"])
    out = capsys.readouterr().out
    assert code == 1
    marked = [n for n, t in enumerate(example.read_text().splitlines(), 1)
              if "# the bug" in t]
    assert f"my_loop.py:{marked[0]}" in out


LOOP_FILE = """
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
seen = []


def step(i):
    x = torch.randn(8, 4)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    seen.append({keep})
"""


@pytest.mark.integration
def test_cli_on_a_file_in_a_temp_dir_json_and_exit_codes(tmp_path):
    bad, good = tmp_path / "bad_loop.py", tmp_path / "good_loop.py"
    bad.write_text(textwrap.dedent(LOOP_FILE.format(keep="loss")))
    good.write_text(textwrap.dedent(LOOP_FILE.format(keep="loss.item()")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "mahiax", "doctor"]
    out = subprocess.run(run + [f"{bad}:step", "--steps", "3", "--json"], capture_output=True,
                         text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    (f,) = data["findings"]
    assert f["kind"] == "graph-carried-across-steps" and f["file"] == str(bad)
    assert f["line"] == LOOP_FILE.splitlines().index("    seen.append({keep})") + 1
    ok = subprocess.run(run + [f"{good}:step", "--steps", "3"], capture_output=True, text=True,
                        env=env, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 findings" in ok.stdout


def test_cli_bad_requests_get_one_line(tmp_path, capsys):
    f = tmp_path / "loop.py"
    f.write_text("def step(i):\n    pass\n")
    for target, says in [
        (str(f), "FILE.py:FUNCTION"),
        (f"{tmp_path / 'missing.py'}:step", "no such file"),
        (f"{f}:train", "has no function 'train'"),
    ]:
        assert main(["doctor", target]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err


# ---- lesson 10's exercise ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(exercise.candidates()))
def test_exercise_checker_rejects_the_bug_and_both_band_aids(name):
    result = exercise.check(exercise.candidates()[name])
    assert result.holds == (name == "fixed"), str(result)
    if name == "band-aid: reset the hidden state every chunk":
        assert result.report.ok and "do not drop it" in result.message
    elif name != "fixed":
        assert not result.report.ok


@pytest.mark.parametrize("name", sorted(exercise_eval.candidates()))
def test_second_exercise_checker_rejects_the_bug_and_each_band_aid(name):
    result = exercise_eval.check(exercise_eval.candidates()[name])
    assert result.holds == (name == "fixed"), str(result)
    kinds = set(result.report.kinds())
    expected = {
        "buggy": {"eval-mode-training", "grads-not-zeroed"},
        "band-aid: model.train() once before the loop": {"eval-mode-training"},
        "band-aid: zero_grad() once at the start": {"grads-not-zeroed"},
    }
    assert kinds == expected.get(name, set()), str(result.report)
    if name == "band-aid: zero_grad() between backward and step":
        assert "did not learn what it should" in result.message
        assert "exactly where they started" in result.message  # no step changed them
    if name == "band-aid: drop the validation":
        assert "keep the validation" in result.message


def test_second_exercise_accepts_the_fix_written_another_way():
    def train_step(r, i):  # train mode at the start of each step, reset after the step
        r.model.train()
        x, y = r.batch(i)
        loss = F.cross_entropy(r.model(x), y)
        loss.backward()
        r.optimizer.step()
        r.optimizer.zero_grad(set_to_none=False)
        if i % exercise_eval.VALIDATE_EVERY == exercise_eval.VALIDATE_EVERY - 1:
            r.accuracy.append(exercise_eval.evaluate(r))

    assert exercise_eval.check(train_step).holds


@pytest.mark.parametrize(("module", "name", "reasons"), [
    (exercise, "buggy", ["graph-carried-across-steps", "raises RuntimeError"]),
    (exercise, "band-aid: reset the hidden state every chunk", ["hidden state not carried"]),
    (exercise, "fixed", []),
    (exercise_eval, "buggy", ["eval-mode-training", "grads-not-zeroed"]),
    (exercise_eval, "band-aid: zero_grad() between backward and step", ["weights unmoved"]),
    (exercise_eval, "band-aid: drop the validation", ["validation dropped"]),
])
@pytest.mark.slow
def test_exercise_check_records_the_attempt_with_the_findings_kinds_as_reasons(
        module, name, reasons, monkeypatch, tmp_path):
    # lesson 10's exercise cell: check(..., record=True) records as lessons.check does
    from mahiax.store.attempts import read_attempts

    store = tmp_path / "mahiax.sqlite"
    monkeypatch.setenv("MAHIAX_STORE", str(store))
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/ada/notebooks/10_your_own_loop.ipynb")
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    candidate = module.candidates()[name]
    assert module.check(candidate).reasons == reasons
    assert read_attempts(store) == [], "a check without record=True records nothing"
    result = module.check(candidate, record=True)
    (attempt,) = read_attempts(store)
    assert (attempt.learner, attempt.lesson, attempt.exercise) == (
        "ada", "10_your_own_loop", module.EXERCISE)
    assert attempt.passed == result.holds == (name == "fixed")
    assert list(attempt.reasons) == result.reasons == reasons
    assert attempt.message == result.message


def test_exercise_check_on_a_hub_reaches_the_class_service(monkeypatch, tmp_path):
    # as lessons.check: the learner's own store, and the class service with their token
    from mahiax.store.attempts import read_attempts
    from tests.classroom.test_classroom import _FakeService

    service = _FakeService()
    try:
        monkeypatch.setenv("MAHIAX_STORE", str(tmp_path / "mahiax.sqlite"))
        monkeypatch.setenv("JPY_SESSION_NAME", "/home/ada/notebooks/10_your_own_loop.ipynb")
        monkeypatch.setenv("JUPYTERHUB_USER", "ada")
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "adas-token")
        monkeypatch.setenv("MAHIAX_CLASS_URL", service.url)
        result = exercise_eval.check(exercise_eval.buggy_step, record=True)
        (sent,) = service.requests
        assert sent["auth"] == "token adas-token"
        assert sent["body"] == {"learner": "ada", "lesson": "10_your_own_loop",
                                "exercise": exercise_eval.EXERCISE, "passed": False,
                                "reasons": ["eval-mode-training", "grads-not-zeroed"],
                                "message": result.message}
        assert len(read_attempts()) == 1
    finally:
        service.close()
    monkeypatch.setenv("MAHIAX_CLASS_URL", service.url)  # closed: nothing listens
    with pytest.warns(UserWarning, match="did not reach the class page .*answer stands"):
        assert exercise.check(exercise.fixed_step, record=True).holds
    assert [a.passed for a in read_attempts()] == [False, True]


def test_exercise_check_that_cannot_record_warns_and_answers(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="your attempt was not recorded") as caught:
        result = exercise.check(exercise.fixed_step, record=True,
                                store=blocker / "mahiax.sqlite")
    assert result.holds
    assert caught[0].filename == __file__, "the warning points at the caller's line"


def test_exercise_bug_is_named_at_the_line_that_stores_the_hidden_state():
    # the state lives on a dataclass (inline attributes): named by its storing line, not
    # at loss.backward() (lesson 10, question 2)
    result = exercise.check(exercise.buggy_step)
    file, line = _line_of(exercise.buggy_step, "logits, s.hidden = s.model(x, s.hidden)")
    assert [(f.kind, Path(f.file), f.line) for f in result.report.findings] == [
        ("graph-carried-across-steps", Path(file), line)], str(result.report)
    assert "Stream.hidden" in result.report.findings[0].message


def test_when_the_optimiser_is_the_writer_the_fix_is_the_graph_kept_alive():
    # retain_graph=True on a carried hidden state: optimizer.step() rewrites weights the
    # previous chunk's graph saved; rewriting the step line is not the fix
    report = exercise.check(exercise.retain_graph_step).report
    inplace = next(f for f in report.findings if f.kind == "inplace-on-saved")
    assert sites_text(inplace) == "s.optimizer.step()"
    assert "The writer is the optimiser" in inplace.message
    assert "compute a new tensor instead" not in inplace.message
    assert "retain_graph=True" in inplace.message
    carried = next(f for f in report.findings if f.kind == "graph-carried-across-steps")
    assert f"finding at {carried.where}" in inplace.message
    assert "graph from an earlier step" in report.error.explanation
    # the optimiser writing weights an old graph saved is lesson 06's subject
    assert inplace.message.endswith("Lesson: 06_finding_the_mutation.")
    # a write by the user's own code keeps the out-of-place advice (lesson 02)
    gate = _examine(BUGGY["inplace-gate"]).findings[0]
    assert "compute a new tensor instead" in gate.message
    assert "The writer is the optimiser" not in gate.message
    assert gate.message.endswith("Lesson: 02_inplace_accumulation.")


def test_the_catalog_harness_reference_backward_is_not_counted_as_the_loops():
    # the summary's loop calls backward() once per task loss; the harness's clean reference
    # takes one more of its own each step, which is not the loop's
    tasks = len(harness.harness_config().tasks)
    grads = harness.Reference.grads
    report = examine_entry("retain-graph", "summary", steps=1)
    (per_loss,) = [f for f in report.findings if f.kind == "backward-per-loss"]
    assert f"{tasks} backward() calls in step 0" in per_loss.message, per_loss.message
    assert harness.Reference.grads is grads  # the watch's wrapper is removed afterwards


def test_the_inplace_finding_names_the_tensor_pytorchs_error_names():
    # before the backward runs, the doctor walks the saved tensors to weigh them, and that
    # walk reads stale ones too; only the backward's own read is what it tripped on. The
    # summary's loop steps the optimiser every ACCUMULATE micro-batches and trips at that step
    report = examine_entry("retain-graph", "summary")
    assert report.error.step == loops.ACCUMULATE
    said = re.search(r"\[torch\.(\w+)Tensor \[([\d, ]*)\]\].* is at version (\d+); expected "
                     r"version (\d+)", report.error.message)
    assert said is not None, report.error.message
    dtype = {"Double": "float64", "Float": "float32"}[said[1]]
    (inplace,) = [f for f in report.findings if f.kind == "inplace-on-saved"]
    assert f" a {dtype}[{said[2]}] tensor " in inplace.message, inplace.message
    assert f"Its version was {said[4]} when saved" in inplace.message, inplace.message
    found = said[3]
    assert (f"tripped on it at version {found} " in inplace.message
            or f"and {found} after this write; backward() tripped on it:" in inplace.message), \
        inplace.message


def test_exercise_checker_says_what_it_measured_when_the_weights_did_not_move():
    # zero_grad() between backward() and step(): the doctor is quiet, the weights never
    # move; the message says so instead of blaming the hidden state
    def train_step(s, i):
        x, y = s.batch(i)
        logits, hidden = s.model(x, s.hidden)
        s.hidden = hidden.detach()
        loss = exercise.loss_of(s, logits, y)
        loss.backward()
        s.optimizer.zero_grad()
        s.optimizer.step()

    result = exercise.check(train_step)
    assert result.report.ok and not result.holds
    assert "exactly where they started" in result.message, result.message
    assert "do not drop it" not in result.message


def sites_text(f) -> str:
    from mahiax.doctor import sites

    return sites.line_text(f.file, f.line)


def test_clip_before_unscale_says_what_it_does_to_this_optimiser():
    # the clip rescales every gradient to norm max_norm/scale: with SGD the update shrinks by
    # the scale; AdamW cancels a common factor, so the clip normalises every step's gradient
    # (an ordinary step's as much as a spike's): it acts, it is not off
    (sgd,) = _examine(BUGGY["clip-scaled"]).findings
    (adamw,) = _examine(BUGGY["clip-adamw"]).findings
    for f in (sgd, adamw):
        assert "rescaled the gradients to norm 1/65536 = 1.53e-05" in f.message, f.message
        assert "where clipping after unscale_ gives min(" in f.message
        assert "silently off" not in f.message and "never cut" not in f.message
    assert "The optimiser is SGD" in sgd.message and "training just crawls" in sgd.message
    assert "times smaller than with the clip after unscale_" in sgd.message
    assert "The optimiser is AdamW" in adamw.message and "crawls" not in adamw.message
    assert "every step's gradient is rescaled to the same norm" in adamw.message


def test_adam_after_a_clip_of_scaled_gradients_is_adam_on_normalised_gradients():
    # what the AdamW message says, measured: a clip before unscale_ gives every step's
    # gradient the norm max_norm/scale, and Adam then steps as it does on gradients each
    # divided by its own norm (up to eps): the clip acts, on every step
    target = torch.tensor([-0.6, 0.4, 0.3, -0.4])

    def run(scaled: bool) -> tuple[torch.Tensor, list[float]]:
        w = torch.zeros(4, requires_grad=True)
        opt = torch.optim.Adam([w], lr=0.1)
        scaler = torch.amp.GradScaler("cpu")
        norms = []
        for i in range(10):
            loss = 0.5 * (w - target).pow(2).sum() * (1000.0 if i == 3 else 1.0)
            opt.zero_grad()
            if scaled:
                scaler.scale(loss).backward()
                torch.nn.utils.clip_grad_norm_([w], 1.0)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                with torch.no_grad():
                    w.grad /= w.grad.norm()
                opt.step()
            norms.append(float(w.grad.norm()))
        return w.detach(), norms

    (clipped, norms), (normalised, _) = run(True), run(False)
    assert norms == pytest.approx([1 / 65536] * 10, rel=1e-4)
    assert torch.allclose(clipped, normalised, atol=1e-3)
    assert not torch.allclose(clipped, torch.zeros(4), atol=0.1)  # it trained


def test_a_loop_that_never_unscales_is_told_to_call_unscale_not_to_move_its_step():
    # scaler.step() calls unscale_ itself: that is not a line of the loop's to move
    (f,) = _examine(BUGGY["clip-scaled"]).findings
    assert "Fix: call `scaler.unscale_(opt)` before" in f.message, f.message
    assert "Fix: move" not in f.message


def test_unused_parameters_says_what_ddp_does_and_counts_in_words():
    (head,) = _examine(BUGGY["unused-head"]).findings
    (temp,) = _examine(BUGGY["detached-param"]).findings
    for f in (head, temp):  # lesson 09: the next forward raises, it does not hang
        assert "next forward raises 'Expected to have finished reduction" in f.message
        assert "forever" not in f.message and "detach()" in f.message
    assert "(2 parameter tensors, 9 numbers)" in head.message
    assert "model.temperature (1 parameter tensor, 1 number)" in temp.message


@pytest.mark.slow
def test_carried_graph_fix_is_written_in_the_loops_own_expressions():
    # state the next step reads: detach once where it starts reading, not in the time loop
    (state,) = _examine(BUGGY["time-loop"]).findings
    assert "`self.state = self.state.detach()` once, where the next step starts" in \
        state.message
    assert "not inside the time loop" in state.message
    (hidden,) = _examine(BUGGY["hidden-state"]).findings
    assert "`self.h = self.h.detach()`" in hidden.message
    assert "time loop" not in hidden.message
    # totals and logs: keep numbers, the user's own line rewritten
    (total,) = _examine(BUGGY["total-loss"]).findings
    assert "`running_total += loss.item()`" in total.message
    (meter,) = _examine(BUGGY["average-meter"]).findings
    assert "`self.total += value.item()`" in meter.message
    (hist,) = _examine(BUGGY["loss-history"]).findings
    assert "`history.append(loss.item())`" in hist.message


@pytest.mark.slow
def test_a_validation_loop_without_no_grad_is_told_to_use_it_with_the_growth():
    (val,) = _examine(BUGGY["val-with-grad"]).findings
    assert "holds 6 tensors" in val.message
    assert "No backward() ever ran through them" in val.message
    assert "with torch.no_grad():" in val.message
    assert "`val_history.append(val_loss.item())`" in val.message
    assert " a step from step 1 to step 5" in val.message
    # a kept training loss was walked by its backward: no no_grad advice there
    (hist,) = _examine(BUGGY["loss-history"]).findings
    assert "no_grad" not in hist.message


TWO_MODULES = """
import torch
from torch import nn

classifier = nn.Linear(4, 3)
teacher = nn.Linear(4, 3)
unused = nn.Parameter(torch.ones(2))
classifier.extra = nn.Linear(4, 1)  # never used in the forward
opt = torch.optim.SGD(classifier.parameters(), lr=0.1)


def step(i):
    loss = classifier(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

NO_MODEL = """
import torch

w = torch.randn(4, requires_grad=True)


def step(i):
    (w * 2).sum().backward()
"""


def test_cli_says_which_globals_it_watches_and_what_it_could_not_check(tmp_path, capsys):
    two, none = tmp_path / "two_modules.py", tmp_path / "no_model.py"
    two.write_text(TWO_MODULES)
    none.write_text(NO_MODEL)
    # two modules, neither named `model`: the one the optimiser trains is picked, and said
    assert main(["doctor", f"{two}:step", "--steps", "3"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(
        "mahiax doctor: watching model `classifier` (Linear), optimizer `opt` (SGD), "
        "no GradScaler")
    assert "unused-parameters" in out and "model.extra" in out
    # no module at all: said, and "nothing wrong" does not claim the model's checks
    assert main(["doctor", f"{none}:step", "--steps", "3"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "watching no model, no optimizer, no GradScaler" in out
    assert "No model was given, so these were not checked: unused-parameters" in \
        " ".join(out.split())
    assert "gradients reach every parameter" not in out


CELL = """
import torch
from torch import nn

model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
total = 0.0


def step(i):
    global total
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    total += loss
"""


def test_a_notebook_cell_is_named_as_this_cell_not_its_temp_file():
    import linecache

    file = "/tmp/ipykernel_4242/3879659301.py"  # where ipykernel compiles a cell
    linecache.cache[file] = (len(CELL), None, CELL.splitlines(True), file)
    try:
        ns: dict = {"__name__": "__main__"}  # a kernel's globals: no __file__
        exec(compile(CELL, file, "exec"), ns)
        report = doctor.examine(ns["step"], 3, model=ns["model"], optimizer=ns["opt"])
    finally:
        del linecache.cache[file]
    (f,) = report.findings
    line = CELL.splitlines().index("    total += loss") + 1
    assert f.where == f"this cell, line {line}" and f.line == line
    assert "3879659301" not in str(report) and "3879659301" not in report._repr_html_()


def test_quoted_lines_drop_comments_and_inplace_fix_shows_the_out_of_place_line():
    report = _examine(BUGGY["inplace-gate"])
    (f,) = report.findings
    assert "here: `gate = gate.mul(2.0)`" in f.message
    assert "doctor[" not in str(report) and "doctor[" not in report._repr_html_()


def test_a_clean_report_says_what_it_checked_and_over_how_many_steps():
    report = _examine(CORRECT["classifier"], steps=4)
    text = str(report)
    assert "Nothing wrong seen: over 4 steps" in text
    flat = " ".join(text.split())
    for kind in doctor.KINDS.values():
        assert kind.checked and kind.checked in flat, kind.name
    loop = CORRECT["classifier"]()
    bare = doctor.examine(loop.step, 3)  # no model: the model's checks are named as skipped
    assert bare.ok and "over 3 steps" in bare.checked()
    skipped = bare.checked().split("not checked: ")[1]
    assert {k.name for k in doctor.KINDS.values() if k.needs_model} == {
        name.strip(" ") for name in skipped.split(" (pass")[0].split(",")}
    for kind in doctor.KINDS.values():
        assert (kind.checked in bare.checked()) != kind.needs_model, kind.name


def _raising_loop(kind: str):
    """One-line training steps that raise PyTorch's common errors; returns the step and the
    line of the step that raises."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 8)

    def step(i: int) -> None:
        opt.zero_grad()
        if kind == "shape":
            loss = model(torch.randn(16, 10)).sum()  # raises: shape
        elif kind == "dtype":
            loss = model(x.double()).sum()  # raises: dtype
        elif kind == "label":
            loss = F.cross_entropy(model(x), torch.full((16,), 3))  # raises: label
        elif kind == "label-dtype":
            loss = F.cross_entropy(model(x), torch.zeros(16))  # raises: label-dtype
        elif kind == "non-scalar":
            loss = F.cross_entropy(model(x), torch.zeros(16, dtype=torch.long),
                                   reduction="none")
            loss.backward()  # raises: non-scalar
        loss.backward()
        opt.step()

    line = next(n for n, text in enumerate(inspect.getsource(_raising_loop).splitlines(),
                                           inspect.getsourcelines(_raising_loop)[1])
                if text.endswith(f"# raises: {kind}"))
    return step, model, opt, line


@pytest.mark.parametrize(("kind", "said"), [
    ("shape", ["10 features per row where the weight expects 8", "in_features=10"]),
    ("dtype", ["Double and Float", "x.float()"]),
    ("label", ["A class label is 3", "count from 0"]),
    ("label-dtype", ["The class labels are Float", "y.long()"]),
    ("non-scalar", ["reduce the loss to one number", "loss.mean()"]),
])
def test_pytorchs_common_errors_are_explained_at_the_users_line(kind, said):
    step, model, opt, line = _raising_loop(kind)
    report = doctor.examine(step, 2, model=model, optimizer=opt)
    assert report.error is not None and report.error.line == line, str(report)
    for words in said:
        assert words in report.error.explanation, report.error.explanation


# ---- what a cold reviewer's own loops found (GAN, LSTM, AMP) --------------------------------
def _gan(detach_fake: bool, reuse_d_fake: bool, retain: bool):
    """A small GAN; returns (step, model, opt_d, G, D)."""
    torch.manual_seed(0)
    data = torch.randn(256, 2)
    G = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    opt_g = torch.optim.Adam(G.parameters(), 1e-3)
    opt_d = torch.optim.Adam(D.parameters(), 1e-3)
    bce = F.binary_cross_entropy_with_logits

    def step(i: int) -> None:
        real = data[(i * 16) % 256:(i * 16) % 256 + 16]
        fake = G(torch.randn(16, 8))
        d_real, d_fake = D(real), D(fake.detach() if detach_fake else fake)
        opt_d.zero_grad()
        loss_d = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        loss_d.backward(retain_graph=retain)
        opt_d.step()
        d_out = d_fake if reuse_d_fake else D(fake)
        opt_g.zero_grad()
        loss_g = bce(d_out, torch.ones_like(d_out))
        loss_g.backward()
        opt_g.step()

    return step, nn.ModuleDict({"G": G, "D": D}), opt_d


def test_gan_fix_keeps_the_retain_graph_the_generators_graph_still_needs():
    # D(fake) not detached: after the forward is run again, loss_g still walks G's graph,
    # which loss_d's backward would free without retain_graph=True
    step, model, opt_d = _gan(detach_fake=False, reuse_d_fake=True, retain=True)
    (f,) = doctor.examine(step, 4, model=model, optimizer=opt_d).findings
    assert f.kind == "step-before-backward" and "drop the `retain_graph=True`" not in f.message
    step, model, opt_d = _gan(detach_fake=False, reuse_d_fake=False, retain=True)  # applied
    assert doctor.examine(step, 4, model=model, optimizer=opt_d).ok


def test_a_graph_walked_twice_in_one_step_is_explained_where_it_was_built():
    step, model, opt_d = _gan(detach_fake=False, reuse_d_fake=False, retain=False)
    report = doctor.examine(step, 4, model=model, optimizer=opt_d)
    why = report.error.explanation
    assert "already walked and freed, built by `fake = G(torch.randn(16, 8))`" in why
    assert "fake.detach()" in why
    step, model, opt_d = _gan(detach_fake=True, reuse_d_fake=False, retain=False)
    assert doctor.examine(step, 4, model=model, optimizer=opt_d).ok


class _SeqModel(nn.Module):
    def __init__(self, keep_state: bool):
        super().__init__()
        self.lstm, self.head = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 4)
        self.keep_state = keep_state
        self.state = None

    def forward(self, x, state=None):
        if self.keep_state:
            y, self.state = self.lstm(x, self.state)
        else:
            y, state = self.lstm(x, state)
        return self.head(y), state


lstm_state = None


def test_carried_state_named_at_the_loops_line_and_fixed_where_it_is_read():
    # a global `state` and the forward's own variable `state`: the loop's line is named
    global lstm_state
    torch.manual_seed(0)
    model = _SeqModel(keep_state=False)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    seq = torch.randn(2, 61, 4)
    lstm_state = None

    def step(i):
        global lstm_state
        x, t = seq[:, i * 10:(i + 1) * 10], seq[:, i * 10 + 1:(i + 1) * 10 + 1]
        out, lstm_state = model(x, lstm_state)
        loss = F.mse_loss(out, t)
        opt.zero_grad()
        loss.backward()
        opt.step()

    (f,) = doctor.examine(step, 4, model=model, optimizer=opt).findings
    assert sites_text(f) == "out, lstm_state = model(x, lstm_state)"
    assert "`if lstm_state is not None: lstm_state = tuple(t.detach() for t in lstm_state)`" \
        in f.message
    # state kept on the model: the fix goes where the model reads it, not in the step
    torch.manual_seed(0)
    model = _SeqModel(keep_state=True)
    opt = torch.optim.Adam(model.parameters(), 1e-2)

    def step2(i):
        x, t = seq[:, i * 10:(i + 1) * 10], seq[:, i * 10 + 1:(i + 1) * 10 + 1]
        loss = F.mse_loss(model(x)[0], t)
        opt.zero_grad()
        loss.backward()
        opt.step()

    (f,) = doctor.examine(step2, 4, model=model, optimizer=opt).findings
    assert "at the top of `forward`, before it reads `self.state`" in f.message


def test_clip_before_a_late_unscale_is_told_to_move_the_unscale():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")

    def step(i):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(torch.randn(16, 8)).float().pow(2).mean()
        opt.zero_grad()
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()

    (f,) = doctor.examine(step, 3, model=model, optimizer=opt, scaler=scaler).findings
    assert f.kind == "clip-before-unscale"
    assert "Fix: move `scaler.unscale_(opt)`" in f.message


GAN_SCRIPT = """
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
G = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
D = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
opt_g = torch.optim.Adam(G.parameters(), 1e-3)
opt_d = torch.optim.Adam(D.parameters(), 1e-3)


def step(i):
    fake = G(torch.randn(16, 4))
    d_out = D(fake.detach())
    loss_d = F.binary_cross_entropy_with_logits(d_out, torch.zeros_like(d_out))
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    d_out = D(fake.detach())
    loss_g = F.binary_cross_entropy_with_logits(d_out, torch.ones_like(d_out))
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
"""


def test_cli_watches_two_models_together_and_finds_the_one_that_never_trains(tmp_path, capsys):
    # the generator's own loss reaches it through `fake.detach()`: it never gets a gradient,
    # which only a check of both models can see
    script = tmp_path / "gan.py"
    script.write_text(GAN_SCRIPT)
    assert main(["doctor", f"{script}:step", "--steps", "3"]) == 1
    out = capsys.readouterr().out
    assert "watching model `G and D` (ModuleDict)" in out
    assert "unused-parameters" in out and "model.G" in out
    assert "at gan.py:7   G = nn.Sequential(" in out  # a line, not "?"


def test_a_global_is_told_apart_from_a_functions_own_variable_of_the_same_name(tmp_path):
    from mahiax.doctor import sites

    src = tmp_path / "names.py"
    src.write_text(
        "state = None\n"                      # 1  module level
        "def f(x):\n"
        "    out = model(x, state=state)\n"   # 3  a keyword argument reads the global
        "    history.append(out)\n"           # 4  mutating a global needs no declaration
        "def g(state):\n"
        "    state = 1\n"                     # 6  a parameter
        "def h():\n"
        "    global state\n"
        "    state = 2\n"                     # 9  declared global
        "def k():\n"
        "    state = 3\n")                    # 11 the function's own variable
    said = [sites.binds_global(str(src), n, name) for n, name in
            [(1, "state"), (3, "state"), (4, "history"), (6, "state"), (9, "state"),
             (11, "state")]]
    assert said == [True, True, True, False, True, False]
