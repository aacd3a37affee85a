"""The MoE and training-step benchmarks at tiny sizes: the shape of their results, and that the
implementations they race compute the same thing. No timing is asserted here: speed targets
live in the benchmarks' own ``met`` flags, measured by ``make bench``."""

from __future__ import annotations

import json

import nbformat
import pytest
import torch
import torch.nn.functional as F

from benchmarks import (
    bench_doctor,
    bench_lessons,
    bench_moe,
    bench_moe_matrix,
    bench_train_step,
    run_all,
)
from benchmarks.bench_moe import FLOOR, OURS, PER_TOKEN, Size
from mahiax.config import tiny
from mahiax.model.moe import ExpertRouter

# both goal-bearing size names, at shapes that run in milliseconds
TINY_SIZES = {
    "teaching": Size(name="teaching", batch=2, seq=6, d_model=8, hidden=12, experts=4, top_k=2),
    "medium": Size(name="medium", batch=3, seq=4, d_model=16, hidden=24, experts=4, top_k=1),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from a second intra-op thread, and on a busy 2-core machine
    its spin-waiting made these steps ~100x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def moe_result() -> dict:
    return bench_moe.run(rounds={"teaching": 2, "medium": 2},
                         per_token_every={"teaching": 1, "medium": 2}, sizes=TINY_SIZES)


@pytest.fixture(scope="module")
def train_result() -> dict:
    # 6 steps: the carried-state band-aid steps the optimiser after step 3 and fails at step 4
    return bench_train_step.run(steps=6, block=2, config=tiny())


def test_both_benchmarks_are_registered():
    assert run_all.BENCHMARKS["moe"] == "bench_moe"
    assert run_all.BENCHMARKS["train_step"] == "bench_train_step"
    assert run_all.BENCHMARKS["doctor"] == "bench_doctor"
    assert run_all.BENCHMARKS["hub"] == "bench_hub"


@pytest.mark.slow
def test_doctor_benchmark_reports_each_loop_plain_and_examined():
    result = bench_doctor.run(rounds=2, steps=2)
    assert set(result["arms"]) == set(bench_doctor.LOOPS) and result["met"]
    for a in result["arms"].values():
        assert a["plain_ms"] > 0 and a["doctor_ms"] > 0
        assert a["slowdown"] == pytest.approx(a["doctor_ms"] / a["plain_ms"])
    assert "slowdown" in bench_doctor.markdown(result)
    c = result["corpus"]
    assert c["cases"] >= 30 and 0 <= c["hits"] <= c["cases"]
    assert c["hits"] + len(c["missed"]) == c["cases"]
    assert 0 <= c["applied_ok"] <= c["applied"] and c["max_s"] >= c["median_s"] > 0
    assert f"| {c['cases']} | {c['hits']} |" in bench_doctor.markdown(result)


def test_moe_result_has_every_arm_with_times_and_paired_ratios(moe_result):
    for name, size in moe_result["sizes"].items():
        arms = size["arms"]
        assert set(arms) == {FLOOR, OURS, PER_TOKEN, bench_moe.SUMMARY, bench_moe.MIXTRAL,
                             bench_moe.MIXTRAL_GROUPED}, name
        for arm, a in arms.items():
            assert a["ms"]["min"] <= a["ms"]["median"] <= a["ms"]["max"], arm
            if arm != FLOOR:
                assert a["over_floor"]["min"] <= a["over_floor"]["median"]
        assert arms[PER_TOKEN]["runs"] == (2 if name == "teaching" else 1)


def test_moe_goals_are_judged_and_met_is_their_conjunction(moe_result):
    goals = [g for s in moe_result["sizes"].values() for g in s["goals"].values()]
    assert {"ours/floor", "mixtral eager/ours", "per-token/ours"} <= set(
        moe_result["sizes"]["medium"]["goals"])
    assert all(isinstance(g["met"], bool) for g in goals)
    assert moe_result["met"] == all(g["met"] for g in goals)


def test_moe_arms_compute_the_same_output_and_input_gradient(moe_result):
    """Every raced implementation (loops, ours, both Mixtral implementations) agrees with
    ours within 1e-5: same weights, same routing, same result."""
    for size in moe_result["sizes"].values():
        for arm, a in size["arms"].items():
            if arm in (FLOOR, OURS):
                continue
            diff = a["max_abs_diff_vs_ours"]
            assert diff["output"] <= 1e-5 and diff["input_grad"] <= 1e-5, (arm, diff)


@pytest.mark.parametrize("cls", [bench_moe.PerTokenRouter, bench_moe.SummaryLoopRouter])
def test_original_layout_loops_give_our_weight_gradients(cls):
    """The original-layout loops hold copies of the expert weights: their gradients are the
    per-expert slices of ours, and the router's gradient is ours."""
    torch.manual_seed(0)
    moe = ExpertRouter(d_model=8, num_experts=4, top_k=2, expert_hidden=12).train()
    loop = bench_moe.original_style(cls, moe)
    x = torch.randn(2, 6, 8)

    moe(x).hidden.sum().backward()
    loop(x).hidden.sum().backward()

    experts = loop.expert_list()
    for name in ("w_gate", "w_up", "w_down"):
        theirs = torch.stack([getattr(e, name).grad for e in experts])  # (E, ., .)
        torch.testing.assert_close(theirs, getattr(moe.experts, name).grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(loop.router.weight.grad, moe.router.weight.grad, atol=1e-5,
                               rtol=0)


def test_floor_runs_k_times_the_tokens():
    arms = bench_moe.build_arms(TINY_SIZES["teaching"], names=[FLOOR])
    arms[FLOOR]()
    assert arms[FLOOR].out.shape == (2 * 6 * 2, 8)  # (K*N, D)


def test_moe_markdown_has_a_table_per_size_and_the_goals(moe_result):
    text = bench_moe.markdown(moe_result)
    assert text.startswith("### MoE layer")
    assert text.count("| arm | runs |") == 2
    assert "| ours/floor |" in text


def test_training_loops_compute_the_same_gradients():
    """The summary's two retain_graph loops and the one-backward loop apply the same
    gradients on the same first step (float32)."""
    grads = {}
    for name, loop in bench_train_step.LOOPS.items():
        arm = bench_train_step.TrainArm(tiny(), loop)
        arm.step()
        grads[name] = arm.gradients()
    ref = grads[bench_train_step.ONE_BACKWARD]
    for name, g in grads.items():
        assert g.keys() == ref.keys(), name
        for k in ref:
            torch.testing.assert_close(g[k], ref[k], atol=1e-5, rtol=1e-5, msg=f"{name} {k}")


@pytest.mark.slow
def test_train_step_result_structure_and_goals(train_result):
    arms = train_result["arms"]
    assert set(arms) == set(bench_train_step.LOOPS)
    for a in arms.values():
        assert a["steps"] == 6
        assert a["min_step_ms"] <= a["median_step_ms"] <= a["max_step_ms"]
    assert "over_one_backward" in arms[bench_train_step.SUMMARY_FORWARDS]
    assert all(isinstance(g["met"], bool) for g in train_result["goals"].values())
    assert train_result["met"] == all(g["met"] for g in train_result["goals"].values())


@pytest.mark.slow
def test_one_backward_keeps_live_tensor_bytes_flat(train_result):
    """A memory figure, not a timing: nothing carries graph from step to step."""
    assert train_result["arms"][bench_train_step.ONE_BACKWARD]["bytes_growth_per_step"] == 0


def test_carried_state_band_aid_grows_then_fails(train_result):
    c = train_result["carried_state"]
    assert c["error"] is not None and c["error"]["type"] == "RuntimeError"
    assert c["error"]["step"] == 4  # the first backward after optimizer.step()
    nodes = c["graph_nodes"]
    assert all(b > a for a, b in zip(nodes, nodes[1:], strict=False)), nodes
    assert c["bytes_growth_per_step"] > 0


def test_train_step_markdown(train_result):
    text = bench_train_step.markdown(train_result)
    assert text.startswith("### Training step")
    assert "RuntimeError" in text


# ---- lessons' cell time -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lesson_result(tmp_path_factory) -> dict:
    """Two tiny notebooks, two rounds: one that runs (a tagged error cell included, as in the
    lessons), one whose untagged cell raises."""
    folder = tmp_path_factory.mktemp("lessons")
    cells = {
        "ok": [("import os\nassert os.environ['CUDA_VISIBLE_DEVICES'] == ''", []),
               ("1 / 0", ["raises-exception"]), ("x = sum(range(1000))", [])],
        "broken": [("x = 1", []), ("raise KeyError('no such node')", []), ("y = 2", [])],
    }
    for name, sources in cells.items():
        nb = nbformat.v4.new_notebook()
        for source, tags in sources:
            cell = nbformat.v4.new_code_cell(source)
            if tags:
                cell.metadata["tags"] = tags
            nb.cells.append(cell)
        nbformat.write(nb, folder / f"{name}.ipynb")
    return bench_lessons.run(["ok", "broken"], rounds=2, notebooks=folder, warm_up=False)


def test_lessons_benchmark_is_registered():
    assert run_all.BENCHMARKS["lessons"] == "bench_lessons"


@pytest.mark.kernels
def test_lessons_benchmark_times_every_code_cell_and_judges_the_goal(lesson_result):
    ok = lesson_result["lessons"]["ok"]
    assert ok["error"] is None  # the tagged cell's error is expected, as in a lesson
    assert ok["cell_s"]["min"] <= ok["cell_s"]["median"] <= ok["cell_s"]["max"]
    assert sorted(c["cell"] for c in ok["slowest_cells"]) == [0, 1, 2]
    assert ok["met"] == (ok["cell_s"]["median"] < bench_lessons.GOAL_S)
    assert lesson_result["met"] == all(r["met"] for r in lesson_result["lessons"].values())


@pytest.mark.kernels
def test_lessons_benchmark_reports_a_lesson_that_raises_as_not_met(lesson_result):
    broken = lesson_result["lessons"]["broken"]
    assert broken["error"]["cell"] == 1 and "KeyError" in broken["error"]["message"]
    assert broken["met"] is False and lesson_result["met"] is False
    text = bench_lessons.markdown(lesson_result)
    assert text.startswith("### Lessons")
    assert "| broken |" in text and "stopped at cell 1" in text and "| NO |" in text


@pytest.mark.kernels
def test_lessons_benchmark_refuses_an_unknown_lesson(tmp_path):
    with pytest.raises(ValueError, match="no notebook for 99_nothing"):
        bench_lessons.run(["99_nothing"], notebooks=tmp_path, warm_up=False)


# --- the MoE matrix under forced routings (issue 16) -------------------------------------

TINY_SHAPE = bench_moe_matrix.Shape(name="tiny", d_model=8, hidden=12, experts=4, top_k=2, seq=16)


def test_moe_matrix_is_registered_right_after_moe():
    names = list(run_all.BENCHMARKS)
    assert run_all.BENCHMARKS["moe_matrix"] == "bench_moe_matrix"
    assert names.index("moe_matrix") == names.index("moe") + 1


@pytest.mark.parametrize("routing", bench_moe_matrix.ROUTINGS)
def test_forced_routing_has_the_promised_shape(routing):
    n, e, k, seq = 4096, 8, 2, 32
    ids, w = bench_moe_matrix.forced_routing(routing, n, e, k, seq)
    assert ids.shape == w.shape == (n, k) and ids.dtype == torch.int64
    assert (ids[:, 0] != ids[:, 1]).all(), "a token's experts are distinct"
    torch.testing.assert_close(w.sum(-1), torch.ones(n))
    assert (w[:, 0] > w[:, 1]).all(), "slot 0 is the first choice"
    counts = torch.bincount(ids.reshape(-1), minlength=e)
    if routing == "one-hot":
        assert (ids[:, 0] == bench_moe_matrix.HOT).all()
    elif routing == "rotating":
        assert torch.equal(ids[:, 0], (torch.arange(n) // seq) % e)
    elif routing == "zipf":  # popularity ~ 1/rank^s: expert 0 first, the last expert least
        assert counts.argmax() == 0 and counts.argmin() == e - 1
    else:
        assert counts.min() > 0.8 * counts.float().mean()


@pytest.mark.parametrize("routing", bench_moe_matrix.ROUTINGS)
def test_forced_routing_reaches_every_arm_identically(routing):
    """Every arm routes exactly the forced ids with the forced weights: ours counts the
    forced load, its output is the hand-computed mixture, and Mixtral's blocks agree with
    it on the output and on the gradients of the input and of the router weight."""
    size = TINY_SHAPE.size(64)
    ids, w = bench_moe_matrix.forced_routing(routing, 64, 4, 2, TINY_SHAPE.seq)
    arms, blocks = bench_moe_matrix.build_forced_arms(size, ids, w)
    for arm in arms.values():
        arm()
    moe = blocks[OURS]
    for name, block in blocks.items():
        router = block.router if name == OURS else block.gate
        assert torch.equal(router.last_ids, ids), name
    assert torch.equal(moe.tokens_per_expert, torch.bincount(ids.reshape(-1), minlength=4).float())
    x = arms[OURS].x.detach().reshape(-1, 8)  # (N, D)
    ex = moe.experts
    expected = torch.zeros_like(x)
    for slot in range(2):
        e = ids[:, slot]
        h = F.silu(torch.bmm(x[:, None], ex.w_gate[e])) * torch.bmm(x[:, None], ex.w_up[e])
        expected += w[:, slot, None] * torch.bmm(h, ex.w_down[e])[:, 0]
    torch.testing.assert_close(arms[OURS].out.reshape(-1, 8), expected.detach(), atol=1e-5,
                               rtol=1e-5)
    for name in (bench_moe.MIXTRAL, bench_moe.MIXTRAL_GROUPED):
        torch.testing.assert_close(arms[name].out, arms[OURS].out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(arms[name].x.grad, arms[OURS].x.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(blocks[name].gate.weight.grad, moe.router.weight.grad,
                                   atol=1e-5, rtol=1e-5)
    assert moe.router.weight.grad.abs().sum() > 0, "the router weight still learns"


def test_peak_bytes_counts_what_each_call_holds_at_its_highest():
    kept: list[torch.Tensor] = []

    def transient() -> None:  # 8 KiB, then 16 KiB at once, nothing kept
        t = torch.ones(2048)
        u = t + 1
        del t, u

    found = bench_moe_matrix.peak_bytes({"keep": lambda: kept.append(torch.ones(1024)),
                                         "transient": transient, "free": kept.clear})
    assert found["keep"] == 4096
    assert 16384 <= found["transient"] < 16384 + 64
    assert found["free"] == 0


def test_crossovers_on_a_hand_made_table():
    table = {64: {OURS: 2.0, bench_moe.MIXTRAL: 1.5, FLOOR: 1.0},
             256: {OURS: 1.5, bench_moe.MIXTRAL: 1.52, FLOOR: 1.0},
             1024: {OURS: 1.2, bench_moe.MIXTRAL: 1.6, FLOOR: 1.0},
             4096: {OURS: 1.1, bench_moe.MIXTRAL: 1.5, FLOOR: 1.0}}
    found = bench_moe_matrix.crossovers(table, tie=0.05)
    assert found["ranking"][64] == [FLOOR, bench_moe.MIXTRAL, OURS]
    assert found["ranking"][256] == [FLOOR, OURS, bench_moe.MIXTRAL]
    assert found["ranking_changes"] == [256]
    pair = found["pairs"][f"{OURS} vs {bench_moe.MIXTRAL}"]
    assert pair["verdicts"] == {64: bench_moe.MIXTRAL, 256: "tie", 1024: OURS, 4096: OURS}
    assert pair["points"] == [256, 1024]
    assert pair["sentence"] == (f"{OURS} vs {bench_moe.MIXTRAL}: {bench_moe.MIXTRAL} faster at "
                                f"64 tokens; within 5% at 256 tokens; {OURS} faster from 1024 "
                                "tokens on.")
    floor = found["pairs"][f"{OURS} vs {FLOOR}"]
    assert floor["points"] == []
    assert floor["sentence"] == f"{FLOOR} is faster than {OURS} at every size (64-4096 tokens)."


@pytest.fixture(scope="module")
def matrix_result() -> dict:
    return bench_moe_matrix.run(plan={TINY_SHAPE: {32: 1, 64: 2}})


def test_moe_matrix_result_has_every_routing_arm_and_size(matrix_result):
    json.dumps(matrix_result)  # what run_all writes
    routings = matrix_result["shapes"]["tiny"]["routings"]
    assert list(routings) == list(bench_moe_matrix.ROUTINGS)
    assert matrix_result["met"] == (not matrix_result["misses"])
    for r in routings.values():
        assert list(r["cells"]) == ["32", "64"]
        for c in r["cells"].values():
            assert c["same_ids"] and not c["failed"]
            assert set(c["arms"]) == set(bench_moe_matrix.ARMS)
            for name, a in c["arms"].items():
                assert a["ms"]["min"] <= a["ms"]["median"] <= a["ms"]["max"]
                assert a["peak_mib"] > 0, name
                if name not in (OURS, FLOOR):
                    diff = a["max_abs_diff_vs_ours"]
                    assert diff["output"] <= 1e-5 and diff["input_grad"] <= 1e-5, name
        assert set(r["crossovers"]["ranking"]) == {"32", "64"}


def test_moe_matrix_goal_names_a_row_where_a_peer_is_faster_beyond_the_tie():
    """A peer more than 5% below ours misses the goal at that row; within 5% is a tie."""
    def cell(ours: float, peer: float) -> dict:
        return {"arms": {OURS: {"over_floor": {"median": ours}}, FLOOR: {},
                         "mixtral eager": {"over_floor": {"median": peer}}}}

    result = {"tie": 0.05, "shapes": {"tiny": {"routings": {"uniform": {"cells": {
        "64": cell(2.0, 1.80), "256": cell(2.0, 1.95), "1024": cell(2.0, 2.5)}}}}}}
    found = bench_moe_matrix.misses(result)

    assert [(m["tokens"], m["peer"]) for m in found] == [(64, "mixtral eager")]
    assert found[0]["ours_over_floor"] == 2.0 and found[0]["peer_over_floor"] == 1.80


def test_moe_matrix_markdown_prints_every_routing_and_its_crossovers(matrix_result):
    text = bench_moe_matrix.markdown(matrix_result)
    assert text.startswith("### MoE layer under forced routings")
    assert "Machine: " in text
    for routing in bench_moe_matrix.ROUTINGS:
        assert f"**{TINY_SHAPE.label()}, {routing} routing**" in text
    assert text.count("- Ranking at 32 tokens (fastest first): ") == 4
    assert text.count(f"{OURS} vs {bench_moe.MIXTRAL}") + text.count(
        f"than {OURS}") + text.count(f"{OURS} is faster") >= 4
