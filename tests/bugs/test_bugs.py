"""The bug catalog: each claim of the summary, reproduced and judged by measurement.

The expected errors and verdicts below are what PyTorch 2.13 does (DESIGN.md's table). The
catalog measures them on every run; these tests pin them, so a change in PyTorch's
behaviour shows up here as a failure instead of as a stale lesson.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

import pytest
import torch

from mahiax import bugs
from mahiax.bugs import accumulate, balance, catalog, ddp, harness, loops, profiling, stateful
from mahiax.bugs.cli import describe
from mahiax.bugs.profiling import meter_mb
from mahiax.model.fabric import DynamicNeuroFabric, MetaController
from mahiax.model.memories import GraphDiffusionMemory, TinyMemory
from mahiax.model.moe import SwiGLUExperts
from mahiax.telemetry import legacy_cuda_reading
from mahiax.training.objective import objective

INPLACE = "one of the variables needed for gradient computation has been modified by an inplace"
TWICE = "Trying to backward through the graph a second time"
UNREDUCED = "Expected to have finished reduction in the prior iteration before starting a new one"

# every entry, in the catalog's order (mahiax/bugs/catalog.py's CATALOG)
IDS = [e.id for e in bugs.entries()]

# buggy variants that raise: (exception type, PyTorch's message starts with, step)
RAISES = {
    "expert-index": ("IndexError", "index out of range in self", 0),
    "fabric-accumulate": ("RuntimeError", INPLACE, 0),
    "layer-router-accumulate": ("RuntimeError", INPLACE, 0),
    "graph-memory-update": ("RuntimeError", TWICE, 1),
    "tiny-memory-write": ("RuntimeError", INPLACE, 1),
    "dwa-weights": ("RuntimeError", TWICE, 1),
    "retain-graph": ("RuntimeError", TWICE, 0),
    "persistent-inplace": ("RuntimeError", INPLACE, 1),
    "ddp-unused-experts": ("RuntimeError", UNREDUCED, 1),
}

# the summary's fixes, as measured on torch 2.13 (a new entry pins its own here)
SUMMARY_VERDICTS = {
    "expert-index": "wrong-diagnosis",
    "fabric-accumulate": "holds",
    "layer-router-accumulate": "holds",
    "graph-memory-update": "worse",
    "controller-importance": "no-effect",
    "tiny-memory-write": "same-error",
    "dwa-weights": "worse",
    "retain-graph": "hides-the-error",
    "encode-multi-loss": "holds",
    "memory-zero-cpu": "no-effect",
    "persistent-inplace": "wrong-diagnosis",
    "amp-clip-before-unscale": "no-effect",
    "ddp-unused-experts": "holds",
    "ddp-broadcast-buffers": "hides-the-error",
    "router-collapse": "holds",
}


@pytest.fixture(scope="module")
def verdicts() -> dict[str, bugs.Verdict]:
    """Every entry judged once (buggy, summary and fixed at each entry's default steps)."""
    return {eid: bugs.verdict(eid) for eid in IDS}


def test_catalog_lists_its_entries_in_the_summarys_order_each_complete():
    """Learners meet the entries in the summary's order, a section's claims together and the
    summary's own claims before the others; every entry says what it is and where it is
    taught."""
    entries = bugs.entries()
    assert IDS[0] == "expert-index"  # section 1 of the summary
    assert len(set(IDS)) == len(IDS)
    sections = [e.section for e in entries]
    runs = [s for i, s in enumerate(sections) if i == 0 or s != sections[i - 1]]
    assert len(runs) == len(set(runs)), f"a section's entries are not together: {runs}"
    in_summary = ["not in the summary" not in s for s in sections]
    assert in_summary == sorted(in_summary, reverse=True), sections
    lessons = Path(catalog.__file__).resolve().parents[2] / "notebooks" / "src"
    for e in entries:
        assert e.section and e.component and e.explanation and e.summary_fix and e.right_fix
        for lesson in e.lessons:
            assert (lessons / f"{lesson}.py").is_file(), f"{e.id}: no lesson {lesson}"


def test_every_entry_an_entry_module_defines_has_its_line_in_the_catalog():
    """An entry defined in mahiax/bugs but forgotten in CATALOG would never be listed, run or
    taught: each one found must be an entry of the catalog."""
    listed = {id(e) for e in bugs.entries()}
    forgotten = []
    for info in pkgutil.iter_modules(bugs.__path__):
        module = importlib.import_module(f"mahiax.bugs.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, catalog.BugEntry) and id(value) not in listed:
                forgotten.append(f'("{info.name}", "{name}")  # id {value.id!r}')
    assert not forgotten, (
        "entries defined in mahiax/bugs but missing from CATALOG in mahiax/bugs/catalog.py; "
        "add these lines where they are taught:\n    " + "\n    ".join(forgotten)
    )


def test_a_catalog_line_that_names_no_entry_or_repeats_an_id_is_an_error(monkeypatch):
    """Nothing in the list is skipped or overwritten silently."""
    monkeypatch.setattr(catalog, "CATALOG", (*catalog.CATALOG, ("loops", "RETAIN_GRAF")))
    with pytest.raises(LookupError, match=r"\('loops', 'RETAIN_GRAF'\): mahiax/bugs/loops.py "
                       r"has no BugEntry called RETAIN_GRAF \(its entries: .*RETAIN_GRAPH"):
        bugs.entries()
    monkeypatch.setattr(catalog, "CATALOG", (*catalog.CATALOG[:-1], ("loops", "RETAIN_GRAPH")))
    with pytest.raises(ValueError, match=r"catalog id 'retain-graph' is given twice"):
        bugs.get("dwa-weights")


def test_reloading_an_entry_module_leaves_the_reloaded_entry_once():
    """A lesson's ``%autoreload`` re-imports an edited entry module: the catalog then lists
    the reloaded entry, once, in its place, and runs it."""
    before = bugs.get("memory-zero-cpu")
    importlib.reload(profiling)
    after = bugs.get("memory-zero-cpu")
    assert after is profiling.MEMORY_ZERO_CPU and after is not before
    assert [e.id for e in bugs.entries()] == IDS
    assert bugs.run("memory-zero-cpu", "buggy", steps=1).steps_run == 1


def test_unknown_entry_and_variant_get_clear_errors():
    allowed = f"unknown bug id 'nope'; allowed: {', '.join(IDS)}"
    with pytest.raises(ValueError, match=re.escape(allowed)):
        bugs.get("nope")
    with pytest.raises(ValueError, match=r"unknown variant 'best' .* buggy \| summary \| fixed"):
        bugs.run("dwa-weights", "best")
    with pytest.raises(ValueError, match=r"steps=0 must be a positive integer"):
        bugs.run("dwa-weights", "buggy", steps=0)


@pytest.mark.verdicts
@pytest.mark.parametrize("eid", sorted(RAISES))
def test_buggy_variant_raises_pytorchs_own_error(verdicts, eid):
    """The buggy pattern reproduces the summary's error: its type, message and step."""
    out = verdicts[eid].outcomes["buggy"]
    etype, message, step = RAISES[eid]
    assert (out.error_type, out.error_step) == (etype, step)
    assert out.error_message.startswith(message)


@pytest.mark.verdicts
def test_silent_bugs_show_their_measured_damage(verdicts):
    """Bugs that raise nothing still show what they break, in numbers."""
    ctl = verdicts["controller-importance"].outcomes["buggy"]
    assert ctl.passed and ctl.state_diff > 0.01  # importance per slot, not per layer
    enc = verdicts["encode-multi-loss"].outcomes
    assert enc["buggy"].passed and enc["buggy"].figures["forwards_per_step"] == 3
    assert enc["summary"].figures["forwards_per_step"] == 1  # encode() once...
    assert enc["summary"].figures["backwards_per_step"] == 3  # ...then one backward per loss
    fixed = enc["fixed"].figures
    assert fixed["forwards_per_step"] == fixed["backwards_per_step"] == 1
    mem = verdicts["memory-zero-cpu"].outcomes["buggy"]
    if not torch.cuda.is_available():
        assert mem.figures["reported_mb"] == [0.0] * mem.steps_run
        assert min(mem.figures["tensor_mb"]) > 0.1 and mem.state_diff == 1.0
    amp = verdicts["amp-clip-before-unscale"].outcomes["buggy"]
    assert amp.passed and amp.state_diff > 1e-3  # the applied gradient is far off


@pytest.mark.verdicts
def test_router_collapse_collapses_unbalanced_and_each_cure_balances(verdicts):
    """No balancing: the load collapses over the steps (MaxVio climbs toward its ceiling and
    an expert dies); the aux loss and the bias update each keep it balanced, measured."""
    v = verdicts["router-collapse"]
    c = balance.collapse_config("none")
    ceiling = c.num_experts / c.top_k - 1  # one expert among every token's K choices
    none = v.outcomes["buggy"].figures["series"]
    first, last = none["max_vio"][:10], none["max_vio"][-balance.TAIL:]
    assert sum(last) / len(last) > sum(first) / len(first) + 1.0  # it gets worse as it trains
    assert sum(last) / len(last) > 0.8 * ceiling
    assert max(none["dead"]) >= 1
    assert v.outcomes["buggy"].state_diff > balance.MAXVIO_TOL
    for variant, mode in (("summary", "aux"), ("fixed", "bias")):
        out = v.outcomes[variant]
        assert out.figures["balance"] == mode
        assert out.passed and out.state_diff <= balance.MAXVIO_TOL, (variant, out.state_diff)
        assert out.figures["tail"]["dead"] == 0
    bias = v.outcomes["fixed"].figures["series"]["bias"]
    assert len(bias) == v.outcomes["fixed"].steps_run and len(bias[0]) == c.num_experts
    assert "bias" not in v.outcomes["summary"].figures["series"]
    # the reason compares the two cures on what was measured
    assert "none / aux / bias: MaxVio " in v.reason and "ms a step" in v.reason


def test_router_collapse_records_the_full_telemetry(tmp_path):
    """A recorded variant (the Bug lab's runs) writes the expert load like a training run:
    the dashboard's Expert load page can draw it, with the entry's own config."""
    from mahiax.recording import record_bug
    from mahiax.store import RunReader

    # no steps given, as `mahiax train --bug router-collapse --variant fixed` without --steps
    out = record_bug("router-collapse", "fixed", "rc", store=tmp_path / "runs.sqlite")
    assert out.steps_run == bugs.get("router-collapse").steps
    reader = RunReader(tmp_path / "runs.sqlite")
    assert reader.config("rc")["balance"] == "bias"
    assert reader.config("rc")["num_experts"] == balance.collapse_config("bias").num_experts
    assert {"moe/max_vio", "moe/dead"} <= set(reader.scalar_keys("rc"))
    assert {"moe/tokens_per_expert", "moe/bias"} <= set(reader.vector_keys("rc"))
    assert len(reader.vectors("rc", "moe/bias")) == out.steps_run


@pytest.mark.verdicts
@pytest.mark.parametrize("eid", IDS)
def test_summary_verdict_is_the_measured_one(verdicts, eid):
    """The verdict on the summary's fix, derived from fresh runs, is what torch 2.13 gives."""
    v = verdicts[eid]
    assert eid in SUMMARY_VERDICTS, f"pin {eid}'s measured verdict {v.label!r} in SUMMARY_VERDICTS"
    assert v.label == SUMMARY_VERDICTS[eid], v.reason
    assert v.reason


@pytest.mark.verdicts
def test_wrong_diagnosis_of_bug_1_names_both_errors(verdicts):
    d = verdicts["expert-index"].outcomes["summary"].figures["diagnosis"]
    assert d["reported_error"] == "IndexError: index out of range in self"
    assert d["error_the_fix_removes"].startswith(
        "TypeError: only integer tensors of a single element can be converted to an index"
    )


@pytest.mark.verdicts
def test_anomaly_mode_points_away_from_the_mutation(verdicts):
    """Anomaly mode names the forward line that saved the tensor, not optimizer.step()."""
    f = verdicts["persistent-inplace"].outcomes["summary"].figures
    step_line = _line_of(harness.StepContext.finish, "self.optimizer.step()")
    assert f["mutation_at"] == f"bugs/harness.py:{step_line}"
    assert f["anomaly_points_to"] and f["anomaly_points_to"] != f["mutation_at"]
    assert f["mutating_op"].startswith("aten.")


@pytest.mark.verdicts
def test_retain_graph_grows_every_step_then_fails_after_the_optimizer_step(verdicts):
    """retain_graph=True: graph and memory grow each step, the in-place error returns once
    optimizer.step() has changed a weight an old graph saved; the fixed loop stays flat."""
    s = verdicts["retain-graph"].outcomes["summary"]
    g, m = s.graph_nodes, s.tensor_bytes
    assert len(g) == loops.ACCUMULATE and all(b > a for a, b in zip(g, g[1:], strict=False))
    assert all(b > a for a, b in zip(m, m[1:], strict=False))
    assert s.error_type == "RuntimeError" and s.error_message.startswith(INPLACE)
    assert s.error_step == loops.ACCUMULATE  # the first backward after optimizer.step()
    f = verdicts["retain-graph"].outcomes["fixed"]
    assert f.passed and f.graph_growth() == 0 and not f.grows()
    assert f.max_grad_diff is not None and f.max_grad_diff <= 1e-6  # accumulated, as the ref


@pytest.mark.verdicts
def test_retain_graph_variants_share_one_setting(verdicts):
    """buggy, summary and fixed all run the original's graph-carrying memory with an optimiser
    step every ACCUMULATE micro-batches, and all are compared with the same reference (so
    their memory readings share one baseline)."""
    outs = verdicts["retain-graph"].outcomes
    assert outs["summary"].max_grad_diff is not None  # measured against the reference too
    carried = bugs.check("retain-graph", harness.clean_loop)  # one backward, state kept
    assert carried.outcome.error_step == 1 and TWICE in carried.message
    assert outs["fixed"].tensor_bytes and outs["summary"].tensor_bytes[0] > 0


def test_graph_retained_tells_a_kept_graph_from_a_freed_one():
    w = torch.randn(3, requires_grad=True)
    loss = torch.tanh(2 * w).pow(2).sum()
    assert loops.graph_retained(loss)  # before backward: saved tensors are there
    loss.backward()
    assert not loops.graph_retained(loss)
    kept = torch.tanh(2 * w).pow(2).sum()
    kept.backward(retain_graph=True)
    assert loops.graph_retained(kept)


@pytest.mark.verdicts
def test_retain_graph_alone_keeps_memory_flat_without_carried_state(verdicts):
    """retain_graph=True on every backward, no carried state: the graph dies with the step,
    nothing grows (lesson 04); only the counted rule rejects it."""
    result = bugs.check(
        "retain-graph", loops.after_detach(loops.backward_per_loss(retain=True))
    )
    out = result.outcome
    assert out.passed and not out.grows() and out.graph_growth() == 0
    assert result.message.startswith("3 backward passes a step: ")
    assert "backpropagate the weighted sum of the losses once" in result.message


# an entry the Trainer trains (router-collapse) trains the trainer's own model: its fixed
# variant is the clean code, whose gradients tests/model/test_balance.py checks
LONG_RUNS = [e.id for e in bugs.entries() if e.trained_by != "trainer"]


@pytest.mark.slow
@pytest.mark.parametrize("eid", LONG_RUNS)
def test_fixed_variant_runs_200_steps(eid):
    """The right fix: 200 steps, gradients equal to the clean reference in float64, autograd
    graph and memory flat. (Anomaly mode would add nothing here: with check_nan=False it only
    records forward tracebacks, and it doubles the time; tests/training/test_training.py
    trains under it.)"""
    out = bugs.run(eid, "fixed", steps=200)
    assert out.passed, f"{out.error_type}: {out.error_message}"
    assert out.steps_run == 200
    assert out.max_grad_diff is not None and out.max_grad_diff <= 1e-6
    assert out.graph_growth() == 0
    assert out.memory_growth() < 4096, out.tensor_bytes


def _line_of(obj: object, text: str) -> int:
    """Line number of the source line of ``obj`` that contains ``text``."""
    lines, start = inspect.getsourcelines(obj)
    hits = [start + i for i, ln in enumerate(lines) if text in ln]
    assert len(hits) == 1, (text, hits)
    return hits[0]


LOCATED = [
    ("fabric-accumulate", "buggy", accumulate._per_sample_inplace,
     "output[batch_idx] += layer_weight * layer_output"),
    ("layer-router-accumulate", "buggy", accumulate._per_sample_inplace,
     "output[batch_idx] += layer_weight * layer_output"),
    ("graph-memory-update", "summary", stateful.SummaryGraphMemory.forward,
     "self.nodes.copy_(new_memory_nodes)"),
    ("tiny-memory-write", "buggy", stateful.BuggyTinyMemory.forward,
     "self.slots[ptr] = x.mean(dim=0).detach()"),
    ("tiny-memory-write", "summary", stateful.SummaryTinyMemory.forward,
     "self.slots[ptr].copy_("),
    ("dwa-weights", "summary", stateful.SummaryDWA.combine, "self.w.copy_("),
    ("retain-graph", "summary", loops.accumulating, "ctx.optimizer.step()"),
    ("persistent-inplace", "buggy", harness.StepContext.finish, "self.optimizer.step()"),
]


@pytest.mark.parametrize(("eid", "variant", "where", "text"), LOCATED)
def test_locator_names_the_line_that_mutated_the_saved_tensor(eid, variant, where, text):
    """For every in-place error of the catalog, the locator names the mutating file:line."""
    out, muts = bugs.locate(eid, variant)
    assert out.error_type == "RuntimeError" and INPLACE in out.error_message
    first = muts[0]
    assert first.tripped_backward
    assert Path(first.file) == Path(inspect.getsourcefile(where))
    assert first.line == _line_of(where, text)


@pytest.mark.slow
def test_check_accepts_the_right_fixes():
    for eid, candidate in [
        ("tiny-memory-write", TinyMemory),
        ("graph-memory-update", GraphDiffusionMemory),
        ("dwa-weights", stateful.OneStepDWA),
        ("fabric-accumulate", DynamicNeuroFabric),
        ("controller-importance", MetaController),
        ("retain-graph", loops.detached_loop),
        ("encode-multi-loss", harness.clean_loop),
        ("persistent-inplace", loops.detached_loop),
        ("amp-clip-before-unscale", loops.amp_loop(unscale_first=True)),
        ("memory-zero-cpu", meter_mb),
        ("expert-index", lambda tokens, vocab: tokens % vocab),
        ("ddp-unused-experts", SwiGLUExperts),
        ("ddp-broadcast-buffers", ddp.all_reduce_statistics),
    ]:
        result = bugs.check(eid, candidate, steps=4)
        assert result.holds, f"{eid}: {result.message}"
        assert str(result).startswith(f"[PASS] {eid}: it holds")


class _InPlaceIntoCloneFabric(DynamicNeuroFabric):
    """Lesson 02's question 3: the original per-sample ``+=`` loop, but into ``x.clone()``,
    a tensor no operation saved. Correct, written differently from the clean fabric."""

    def forward(self, x):
        routing = self.router(x)
        if self.training:
            self.controller.observe(routing)
        output = x.clone()  # (B, D) its own memory and version counter
        for b in range(x.shape[0]):
            for k in range(routing.ids.shape[1]):
                w = routing.weights[b, k].to(x.dtype)
                output[b] += w * self.blocks[int(routing.ids[b, k])](x[b])  # (D,)
        return output, routing


@pytest.mark.parametrize(("eid", "candidate"), [
    ("fabric-accumulate", _InPlaceIntoCloneFabric),
    # lesson 01: clamping keeps every valid id, as folding with % does
    ("expert-index", lambda tokens, vocab: tokens.clamp(max=vocab - 1)),
], ids=["in-place into a clone", "clamp"])
def test_check_accepts_right_fixes_written_differently(eid, candidate):
    result = bugs.check(eid, candidate)
    assert result.holds, f"{eid}: {result.message}"


# every candidate an entry lists: its variants as candidates, and the lessons' band-aids
CANDIDATES = [(e.id, name) for e in bugs.entries() for name in (e.candidates or dict)()]
# what the checker must grade: all of them but the summary's fixes that hold
GRADED = [
    (eid, name) for eid, name in CANDIDATES
    if not (name == "summary" and SUMMARY_VERDICTS[eid] == "holds")
]


def test_every_entry_with_an_exercise_lists_its_variants_as_candidates():
    for e in bugs.entries():
        assert e.candidate_kind and e.candidates is not None, e.id
        assert {"buggy", "summary", "fixed"} <= e.candidates().keys(), e.id
    names = {name for eid, name in CANDIDATES if eid == "retain-graph"}
    assert "band-aid: retain_graph=True, carried state detached" in names
    assert "band-aid: one forward per loss, carried state detached" in names


@pytest.mark.parametrize(("eid", "name"), GRADED)
def test_checker_grades_each_variant_and_band_aid(eid, name):
    """In the setting of the entry's variants: the bug, the summary's fix where its verdict
    is not `holds`, and every band-aid get NOT YET; the right fix gets PASS."""
    if eid == "memory-zero-cpu" and name != "fixed" and torch.cuda.is_available():
        pytest.skip("on a GPU the CUDA reading is the real figure")
    result = bugs.check(eid, bugs.get(eid).candidates()[name])
    if name == "fixed":
        assert result.holds, result.message
        assert result.reasons == []
    else:
        assert not result.holds, f"{name} passed: {result.message}"
        assert str(result).startswith(f"[NOT YET] {eid}: ")
        # the short names a class's attempts are grouped by: one at least, no figures in them
        assert result.reasons and not any(ch.isdigit() for r in result.reasons for ch in r), \
            result.reasons


@pytest.mark.parametrize(("name", "reasons"), [
    ("buggy", ["one forward per loss"]),
    ("summary", ["one backward per loss"]),
    ("band-aid: retain_graph=True, one backward per loss", ["one backward per loss"]),
    ("band-aid: one backward of the sum with retain_graph=True", ["retain_graph=True"]),
])
def test_check_names_the_rule_a_candidate_broke(name, reasons):
    """What an instructor groups a class's NOT YET by: the rule, the same in every run."""
    candidate = bugs.get("encode-multi-loss").candidates()[name]
    assert bugs.check("encode-multi-loss", candidate).reasons == reasons


@pytest.mark.parametrize(("eid", "name", "says"), [
    ("retain-graph", "summary", "3 backward passes a step: "),
    ("retain-graph", "band-aid: retain_graph=True, carried state detached",
     "3 backward passes a step: each one walks the shared graph again"),
    ("retain-graph", "band-aid: one backward of the sum, carried state kept",
     "raised RuntimeError at step 1: " + TWICE),
    ("retain-graph", "band-aid: one backward of the sum with retain_graph=True",
     "keeps the graph's saved tensors after its backward (retain_graph=True)"),
    ("encode-multi-loss", "buggy", "3 forwards (encode() calls) a step: one forward per loss"),
    ("encode-multi-loss", "summary", "3 backward passes a step: "),
    ("persistent-inplace", "band-aid: retain_graph=True, carried state detached",
     "3 backward passes a step: "),
    ("amp-clip-before-unscale", "band-aid: unscale first, with retain_graph=True",
     "drop retain_graph"),
    ("amp-clip-before-unscale", "band-aid: clip after scaler.step()",
     "gradients differ from the clean reference"),
    ("amp-clip-before-unscale", "band-aid: no clipping", "gradients differ from the clean"),
    ("graph-memory-update", "band-aid: .data.copy_", "gradients differ from the clean reference"),
    ("graph-memory-update", "band-aid: copy_ under no_grad", "raised RuntimeError at step 0"),
    ("tiny-memory-write", "band-aid: the write under no_grad", "raised RuntimeError at step 1"),
    ("tiny-memory-write", "band-aid: the write through .data",
     "gradients differ from the clean reference"),
    ("dwa-weights", "band-aid: the summary's copy_ through .data",
     "gradients differ from the clean reference"),
    ("dwa-weights", "band-aid: softmax(-L) from detached losses",
     "loss weights vs DWA (one-step windows, T = 2) is off by"),
    ("tiny-memory-write", "wrong: a memory that never writes",
     "The memory does not hold what it was told to remember: after step 0, its count of "
     "writes is 0, not 1"),
    ("tiny-memory-write", "wrong: every summary into slot 0",
     "after step 1, slot 0 changed, though step 1 writes slot 1"),
    ("graph-memory-update", "wrong: the nodes never move", "The nodes did not move at step 0"),
    ("graph-memory-update", "wrong: random nodes every step",
     "The nodes after step 0 are not where an update toward the batch puts them"),
])
def test_checker_says_why_in_plain_words(eid, name, says):
    result = bugs.check(eid, bugs.get(eid).candidates()[name])
    assert says in result.message
    if name == "buggy" and eid == "encode-multi-loss":  # one backward per forward: no retain
        assert "backward passes" not in result.message


@pytest.mark.parametrize(("eid", "candidate", "says"), [
    ("tiny-memory-write", stateful.BuggyTinyMemory, "raised RuntimeError at step 1: " + INPLACE),
    ("tiny-memory-write", stateful.SummaryTinyMemory, "raised RuntimeError at step 1"),
    ("graph-memory-update", stateful.SummaryGraphMemory, "raised RuntimeError at step 0"),
    ("graph-memory-update", stateful.BuggyGraphMemory, "raised RuntimeError at step 1: " + TWICE),
    ("dwa-weights", stateful.BuggyDWA, "raised RuntimeError at step 1"),
    ("dwa-weights", stateful.SummaryDWA, "raised RuntimeError at step 0"),
    ("fabric-accumulate", accumulate.BuggyFabric, "raised RuntimeError at step 0"),
    ("controller-importance", stateful.SummaryController, "layer importance vs the per-layer"),
    ("retain-graph", loops.backward_per_loss(retain=False), "raised RuntimeError at step 0"),
    ("amp-clip-before-unscale", loops.amp_loop(unscale_first=False),
     "gradients differ from the clean reference"),
    ("memory-zero-cpu", legacy_cuda_reading, "reported MB"),
    ("expert-index", lambda tokens, vocab: tokens, "raised IndexError at step 0"),
    ("ddp-unused-experts", ddp.ExpertList, "raised RuntimeError at step 1: " + UNREDUCED),
    ("ddp-broadcast-buffers", lambda sums, counts: (sums, counts), "gradients differ"),
    ("router-collapse", balance.plain_top_k, "(at most 1.5 counts as fixed)"),
])
def test_check_rejects_the_bug_and_the_wrong_fixes(eid, candidate, says):
    if eid == "memory-zero-cpu" and torch.cuda.is_available():
        pytest.skip("on a GPU the CUDA reading is the real figure")
    result = bugs.check(eid, candidate, steps=4)
    assert not result.holds
    assert says in result.message
    assert str(result).startswith(f"[NOT YET] {eid}: ")


@pytest.mark.parametrize(("name", "says"), [
    ("band-aid: the bias in the mixing weights too",
     "the mixing weights are not the router's probabilities of the chosen experts"),
    ("band-aid: the whole selection under no_grad", "the mixing weights are detached"),
])
def test_router_collapse_checker_names_the_rule_a_band_aid_breaks(name, says):
    # 20 steps: the bias has moved (and the collapse is not cured yet: both are reported)
    result = bugs.check("router-collapse", bugs.get("router-collapse").candidates()[name],
                        steps=20)
    assert not result.holds and result.message.startswith(says), result.message


def _round_robin(probs, bias, k):
    """Perfectly balanced ids that ignore the router: the checker must not be fooled."""
    n, e = probs.shape
    ids = (torch.arange(n * k, device=probs.device) % e).view(n, k)  # (N, K)
    return probs.gather(-1, ids), ids


def _top_1_twice(probs, bias, k):
    ids = torch.topk(probs + bias, 1, dim=-1).indices.expand(-1, k)  # (N, K) one expert k times
    return probs.gather(-1, ids), ids


@pytest.mark.parametrize(("rule", "says"), [
    (_round_robin, "the ids are not the top-k of probs + bias"),
    (_top_1_twice, "a token's ids repeat an expert"),
])
def test_router_collapse_checker_rejects_ids_that_are_not_the_biased_top_k(rule, says):
    result = bugs.check("router-collapse", rule, steps=20)
    assert not result.holds and says in result.message, result.message


def test_router_collapse_checker_accepts_the_rule_written_another_way():
    def by_argsort(probs, bias, k):
        with torch.no_grad():
            ids = torch.argsort(probs + bias, dim=-1, descending=True)[:, :k]  # (N, K)
        return torch.take_along_dim(probs, ids, dim=-1), ids

    result = bugs.check("router-collapse", by_argsort)
    assert result.holds, result.message
    assert "MaxVio, mean of the last 30 steps is" in result.message
    assert "gradients match" not in result.message  # this entry compares no gradients


def test_router_collapse_checker_accepts_weights_returned_already_renormalised():
    # the router renormalises what select returns over the K chosen experts: returning the
    # chosen probabilities renormalised already is the same layer (same output, gradient)
    def renormalised(probs, bias, k):
        with torch.no_grad():
            ids = torch.topk(probs + bias, k, dim=-1).indices  # (N, K)
        top_p = probs.gather(-1, ids)  # (N, K)
        return top_p / top_p.sum(dim=-1, keepdim=True), ids

    result = bugs.check("router-collapse", renormalised)
    assert result.holds, result.message


def test_router_collapse_checker_rejects_the_right_values_without_their_gradient():
    # the values of probs.gather(-1, ids), but the gradient goes around the gather
    def values_only(probs, bias, k):
        with torch.no_grad():
            ids = torch.topk(probs + bias, k, dim=-1).indices  # (N, K)
        return probs.gather(-1, ids).detach() + 0 * probs[:, :k], ids

    result = bugs.check("router-collapse", values_only, steps=4)
    assert not result.holds
    assert "do not send the router the gradient of probs.gather(-1, ids)" in result.message


def test_router_collapse_checker_reads_a_short_run_whole():
    # 20 steps: the damage is the mean over those 20, and says so
    result = bugs.check("router-collapse", balance.plain_top_k, steps=20)
    assert "MaxVio, mean of the last 20 steps is" in result.message, result.message


def _amp_loop(clip: str, did_step: bool = True):
    """A correct AMP step written another way than the catalog's: ``clip`` picks how the
    true gradients are clipped to 1.0 before ``scaler.step``."""
    scaler = torch.amp.GradScaler("cpu")

    def loop(ctx) -> None:
        obj = objective(ctx.model, ctx.weighting, ctx.batch)
        ctx.weights, ctx.losses, ctx.total = obj.weights, obj.losses, obj.total
        ctx.zero_grad()
        scaler.scale(ctx.total).backward()
        params = [p for p in ctx.model.parameters() if p.grad is not None]  # explicit list
        if clip == "norm, then clip with it":
            scaler.unscale_(ctx.optimizer)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            torch.nn.utils.clip_grads_with_norm_(params, 1.0, norm)
        elif clip == "scaled gradients to 1.0 x scale":  # the same clip in scaled units
            torch.nn.utils.clip_grad_norm_(params, 1.0 * scaler.get_scale())
        else:  # unscale_, then clip_grad_norm_ without foreach on the explicit list
            scaler.unscale_(ctx.optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=False)
        scaler.step(ctx.optimizer)
        scaler.update()
        ctx.did_step = did_step

    return loop


@pytest.mark.parametrize("clip", [
    "norm, then clip with it", "scaled gradients to 1.0 x scale", "unscale_, clip a list",
])
def test_amp_checker_accepts_a_right_order_written_another_way(clip):
    result = bugs.check("amp-clip-before-unscale", _amp_loop(clip))
    assert result.holds, result.message


def test_amp_checker_reads_the_gradients_the_optimiser_stepped_with():
    """Clipping after scaler.step() leaves clipped gradients in .grad that the update never
    used; the checker compares what optimizer.step() found (a step pre-hook), so it fails."""
    after = bugs.check("amp-clip-before-unscale",
                       bugs.get("amp-clip-before-unscale").candidates()[
                           "band-aid: clip after scaler.step()"])
    never = bugs.check("amp-clip-before-unscale",
                       bugs.get("amp-clip-before-unscale").candidates()["band-aid: no clipping"])
    assert not after.holds and not never.holds
    assert after.outcome.max_grad_diff == pytest.approx(never.outcome.max_grad_diff)
    assert after.outcome.figures["optimizer_steps"] == [1] * after.outcome.steps_run


def test_amp_checker_counts_the_optimiser_steps():
    """A loop that steps through the scaler but leaves ctx.did_step False gets a second,
    plain optimizer.step() from the harness: two updates a step."""
    result = bugs.check("amp-clip-before-unscale", _amp_loop("unscale_", did_step=False))
    assert not result.holds
    assert result.message.startswith("the optimiser stepped 2 times in one training step")


class _RingByCat(TinyMemory):
    """Lesson 03a's exercise written another way: the ring rebuilt with torch.cat."""

    def forward(self, x):
        out = self.read(x)
        if self.training:
            i = int(self.count) % self.num_slots
            summary = x.detach().mean(dim=0, keepdim=True)  # (1, D)
            self.slots = torch.cat([self.slots[:i], summary, self.slots[i + 1:]])  # (S, D)
            self.count = self.count + 1
        return out


class _RingStagedForCommit(TinyMemory):
    """Another way: the summary staged in forward, written out of place by commit()."""

    def forward(self, x):
        out = self.read(x)
        if self.training:
            self.pending = x.detach().mean(dim=0)  # (D,)
        return out

    def commit(self):
        if getattr(self, "pending", None) is not None:
            slot = torch.tensor([int(self.count) % self.num_slots])
            self.slots = self.slots.index_copy(0, slot, self.pending.unsqueeze(0))
            self.count, self.pending = self.count + 1, None


class _NodesByLerp(GraphDiffusionMemory):
    """Lesson 06's exercise written another way: torch.lerp toward the batch mean."""

    def forward(self, x):
        out = self.read(x)
        if self.training:
            mean = x.detach().mean(dim=0, keepdim=True).expand_as(self.nodes)  # (N, D)
            self.nodes = torch.lerp(self.nodes, mean, self.write_rate)
        return out


@pytest.mark.parametrize(("eid", "candidate"), [
    ("tiny-memory-write", _RingByCat), ("tiny-memory-write", _RingStagedForCommit),
    ("graph-memory-update", _NodesByLerp),
], ids=["tiny-memory-cat", "tiny-memory-staged", "graph-memory-lerp"])
def test_memory_checkers_accept_a_right_answer_written_another_way(eid, candidate):
    result = bugs.check(eid, candidate)
    assert result.holds, result.message


def test_check_says_what_kind_of_candidate_it_needs():
    with pytest.raises(TypeError, match=r"must be a subclass of TinyMemory"):
        bugs.check("tiny-memory-write", GraphDiffusionMemory)
    with pytest.raises(TypeError, match=r"is a loop function"):
        bugs.check("retain-graph", 42)
    with pytest.raises(TypeError, match=r"router-collapse checks a selection function"):
        bugs.check("router-collapse", 42)
    with pytest.raises(TypeError, match=r"is an nn.Module class Experts\(num_experts"):
        bugs.check("ddp-unused-experts", SwiGLUExperts(2, 4, 4))
    with pytest.raises(TypeError, match=r"is a function sync\(sums"):
        bugs.check("ddp-broadcast-buffers", 42)


# ---- DistributedDataParallel entries ---------------------------------------------------------


@pytest.mark.verdicts
def test_ddp_unused_experts_error_names_the_idle_experts_parameters(verdicts):
    """DDP's message lists parameter indices; they are exactly the idle experts' weights."""
    buggy = verdicts["ddp-unused-experts"].outcomes["buggy"]
    (idle,) = buggy.figures["idle_experts"]  # step 0 ran; step 1's forward raised
    assert len(idle) >= 2  # 3 tokens x top-2 = 6 assignments for 8 experts
    named = ddp.unused_named_in(buggy.error_message)
    assert named == [f"experts.experts.{e}.{w}" for e in idle for w in ("w_gate", "w_up", "w_down")]


@pytest.mark.verdicts
def test_ddp_find_unused_parameters_and_stacked_experts_both_train_with_idle_experts(verdicts):
    """The usual fix and the right one both run with idle experts at every step, gradients
    equal to the same model without DDP."""
    for variant in ("summary", "fixed"):
        out = verdicts["ddp-unused-experts"].outcomes[variant]
        assert out.passed and out.max_grad_diff == 0.0
        assert all(len(idle) >= 2 for idle in out.figures["idle_experts"])
    assert verdicts["ddp-unused-experts"].outcomes["summary"].figures["find_unused_parameters"]


def test_ddp_on_two_ranks_idle_experts_differ_and_every_rank_raises():
    ranks = ddp.per_rank_idle_experts(steps=2)
    assert [r["rank"] for r in ranks] == [0, 1]
    idle = [r["steps"][0]["idle"] for r in ranks]
    assert idle[0] != idle[1]
    for r, experts in zip(ranks, idle, strict=True):
        assert r["steps"][0]["no_grad"] == [
            f"experts.experts.{e}.{w}" for e in experts for w in ("w_gate", "w_up", "w_down")
        ]
        assert r["error"][0] == "RuntimeError" and r["error"][1].startswith(UNREDUCED)
        assert r["error_step"] == 1


@pytest.mark.verdicts
def test_ddp_buffer_broadcast_bumps_no_version_but_overwrites_rank_1(verdicts):
    """torch 2.13: the per-forward broadcast keeps the version counter (two forwards before one
    backward raise nothing) and silently writes rank 0's nodes over rank 1's own update."""
    outs = verdicts["ddp-broadcast-buffers"].outcomes
    buggy = outs["buggy"]
    assert buggy.passed and buggy.figures["forwards_per_step"] == 2
    assert buggy.figures["version_bumps_by_forward"] == [0, 0]
    rank0, rank1 = buggy.figures["overwritten_by_forward"]
    assert max(rank0) == 0.0 and max(rank1[1:]) > 0.1  # from step 1 on: rank 0's nodes
    assert buggy.max_grad_diff < 1e-12 and buggy.state_diff > 0.1  # the damage is the state
    summary = outs["summary"]  # broadcast_buffers=False: ranks drift apart, gradients disagree
    assert summary.figures["rank_spread"] > 0.1 and summary.max_grad_diff > 1e-3
    assert "`broadcast_buffers` is deprecated" in summary.figures["ddp_warnings"][0]
    fixed = outs["fixed"]
    assert fixed.figures["rank_spread"] == 0.0 and fixed.state_diff < 1e-12
    assert fixed.figures["ddp_warnings"] == []


def _averaged_statistics(sums, counts):
    """Lesson 09's exercise written differently: the ranks' mean sums and mean counts. The
    update reads only sums / counts and counts > 0, so this is the summed statistics' update."""
    sums, counts = sums.clone(), counts.clone()  # (S, D), (S,)
    torch.distributed.all_reduce(sums)
    torch.distributed.all_reduce(counts)
    world = torch.distributed.get_world_size()
    return sums / world, counts / world


def _mean_of_means(sums, counts):
    """A wrong sync: every node's mean over the ranks where it attracted tokens, whatever
    their counts (a mean of means: right only when the ranks' counts are equal)."""
    hit = counts > 0  # (S,)
    means = sums / torch.where(hit, counts, torch.ones_like(counts)).unsqueeze(-1)  # (S, D)
    ranks = hit.to(sums.dtype)  # (S,) 1 where this rank counts
    torch.distributed.all_reduce(means)
    torch.distributed.all_reduce(ranks)
    return means / ranks.clamp(min=1).unsqueeze(-1), ranks


def test_ddp_buffers_checker_accepts_averaged_statistics_and_rejects_a_mean_of_means():
    averaged = bugs.check("ddp-broadcast-buffers", _averaged_statistics)
    assert averaged.holds, averaged.message
    wrong = bugs.check("ddp-broadcast-buffers", _mean_of_means)
    assert not wrong.holds and "vs the update with the whole batch is off by" in wrong.message


def test_ddp_entries_leave_no_process_group_behind():
    import sys

    import torch.distributed as dist

    hook = sys.excepthook
    bugs.run("ddp-unused-experts", "fixed", steps=1)
    bugs.run("ddp-broadcast-buffers", "fixed", steps=1)
    assert not dist.is_initialized()
    assert sys.excepthook is hook  # init_process_group's "[rank0]:" prefix is undone


def test_cli_lists_runs_and_judges(capsys):
    from mahiax.cli import main

    assert main(["bugs", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(eid in listed for eid in IDS)
    assert main(["bugs", "list", "--json"]) == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)] == IDS

    assert main(["bugs", "run", "tiny-memory-write", "--variant", "buggy"]) == 0
    text = capsys.readouterr().out
    assert "RuntimeError at step 1" in text and INPLACE in text

    assert main(["bugs", "verdict", "dwa-weights", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "worse" and data["outcomes"]["buggy"]["error_step"] == 1

    assert main(["bugs", "verdict", "tiny-memory-write"]) == 0
    text = capsys.readouterr().out
    assert "tiny-memory-write: the summary's fix -> same-error" in text
    assert "why: it raises the bug's own error again" in text

    assert main(["bugs", "run", "nope", "--variant", "buggy"]) == 2
    assert "mahiax: error: unknown bug id 'nope'" in capsys.readouterr().err


def test_describe_shows_the_exact_pytorch_message():
    out = bugs.run("dwa-weights", "buggy")
    text = describe(out)
    assert text.startswith("RuntimeError at step 1 (1 of 6 steps ran):")
    assert out.error_message.splitlines()[0] in text


# ---- the device catalog runs train on ---------------------------------------------------


def test_catalog_refuses_a_device_it_cannot_train_on_and_says_what_is_allowed():
    with pytest.raises(ValueError, match=r"'tpu' is not supported; allowed: cpu, cuda"):
        bugs.verdict("tiny-memory-write", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"no CUDA device here; allowed: cpu"):
            bugs.run("tiny-memory-write", "buggy", device="cuda")


def test_cpu_only_entry_refuses_cuda_and_says_why():
    """The DDP entries use gloo ranks on the CPU: asked for CUDA they refuse before running,
    naming the devices they take and the catalog's reason (what gpu-check reports)."""
    from mahiax.bugs import harness

    token = harness._DEVICE.set(torch.device("cuda", 0))  # no CUDA work happens before the check
    try:
        with pytest.raises(ValueError, match=r"runs on cpu, not 'cuda': its ranks are"):
            bugs.get("ddp-unused-experts").run("buggy", 1)
    finally:
        harness._DEVICE.reset(token)
    assert bugs.current_device() == torch.device("cpu")


def test_run_on_the_cpu_device_is_the_default_run():
    default = bugs.run("tiny-memory-write", "buggy")
    explicit = bugs.run("tiny-memory-write", "buggy", device="cpu")
    assert (explicit.error_type, explicit.error_step) == (default.error_type, default.error_step)
    assert explicit.error_message == default.error_message
    assert explicit.graph_nodes == default.graph_nodes
