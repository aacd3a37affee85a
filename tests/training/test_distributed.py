"""Data-parallel training: two CPU processes with gloo (started by torchrun) stay identical,
match one process on the same global batch, and record one run that the dashboard shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mahiax.errors import BadInput
from mahiax.store import RunReader
from mahiax.training import distributed
from tests.servers import free_port

pytestmark = pytest.mark.kernels  # torchrun process groups: one at a time (docs/tests.md)

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "training" / "ddp_worker.py"
STEPS = 50


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    return env


def torchrun(nproc: int, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node nproc`` on 127.0.0.1 (a free port), waited for."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *argv]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """The same 50 tiny steps (DWA) on 2 ranks and in one process."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    torchrun(2, str(WORKER), str(two), str(STEPS), "dwa")
    subprocess.run([sys.executable, str(WORKER), str(one), str(STEPS), "dwa"], cwd=ROOT,
                   env=_env(), check=True, timeout=300)
    return {"rank0": torch.load(two / "rank0.pt"), "rank1": torch.load(two / "rank1.pt"),
            "single": torch.load(one / "rank0.pt")}


def test_parameters_and_every_buffer_are_identical_across_ranks(runs):
    a, b = runs["rank0"], runs["rank1"]
    assert (a["world_size"], b["world_size"], b["rank"]) == (2, 2, 1)
    # (the router's token counts are a non-persistent buffer: compared through the records)
    buffers = ["fabric.controller.importance", "graph_memory.nodes", "tiny_memory.slots",
               "tiny_memory.count"]
    assert set(buffers) <= set(a["model"]), "the stateful buffers are in the state dict"
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"{key} differs between the ranks"
    assert a["weighting"], "DWA keeps its loss history as buffers"
    for key, value in a["weighting"].items():
        assert torch.equal(value, b["weighting"][key]), f"weighting {key} differs"
    assert int(a["model"]["tiny_memory.count"]) == STEPS
    assert a["tokens_per_expert"] == b["tokens_per_expert"]


def test_one_collective_call_per_step_and_none_from_the_model(runs):
    """The stateful modules stage local sums; the trainer reduces them, with the losses and
    the logged figures, in one flat all-reduce a step (seven calls before: five inside the
    model's forward, two in the trainer). A model on one rank alone calls none, so it cannot
    wait for the other rank."""
    for rank in ("rank0", "rank1"):
        assert runs[rank]["collectives_per_step"] == [["all_reduce"]] * STEPS, rank
        assert runs[rank]["collectives_alone"] == [], rank
    assert runs["single"]["collectives_per_step"] == [[]] * STEPS  # alone: nothing to reduce


def test_two_ranks_match_one_process_on_the_global_batch(runs):
    two, one = runs["rank0"], runs["single"]
    assert one["world_size"] == 1
    # step 0: same weights, the global batch split in two: the mean of the halves' losses
    assert two["loss"][0] == pytest.approx(one["loss"][0], rel=1e-6)
    assert two["task_losses"][0] == pytest.approx(one["task_losses"][0], rel=1e-6)
    # the expert load logged is the global batch's: all-reduced before it is logged
    assert two["tokens_per_expert"] == one["tokens_per_expert"]
    # later steps drift only through the load-balancing loss, computed per rank's tokens
    # (E * sum f_i P_i is not linear in the batch): 6e-5 relative measured over 50 steps
    rel = np.abs(np.array(two["loss"]) - np.array(one["loss"])) / np.array(one["loss"])
    assert rel.max() < 1e-3, f"largest relative loss difference {rel.max():.2e}"
    for key, value in one["model"].items():
        assert torch.allclose(two["model"][key].double(), value.double(), atol=2e-2), key


def test_uncertainty_weighting_parameters_stay_identical(tmp_path):
    """Its log-variances are parameters outside the model: DDP must average their
    gradients too (they live in the loss module it wraps)."""
    torchrun(2, str(WORKER), str(tmp_path), "8", "uncertainty")
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a["weighting"] and all(torch.equal(v, b["weighting"][k])
                                  for k, v in a["weighting"].items())
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def test_selection_bias_stays_identical_across_ranks(tmp_path):
    """balance=bias: the bias moves from the global batch's load (the counts are summed with
    the other staged statistics), so both ranks hold the same bias, bit for bit, at every
    step, and after the first step it is the bias one process makes from the whole batch."""
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    torchrun(2, str(WORKER), str(two), "8", "dwa", "bias")
    subprocess.run([sys.executable, str(WORKER), str(one), "8", "dwa", "bias"], cwd=ROOT,
                   env=_env(), check=True, timeout=300)
    a, b = torch.load(two / "rank0.pt"), torch.load(two / "rank1.pt")
    single = torch.load(one / "rank0.pt")
    key = "text.moe.expert_bias"
    assert torch.equal(a["model"][key], b["model"][key])
    assert a["model"][key].abs().sum() > 0, "the bias moved"
    assert a["bias"] == b["bias"] and len(a["bias"]) == 8
    assert all(v is not None for v in a["bias"])
    assert a["collectives_per_step"] == [["all_reduce"]] * 8  # still one collective a step
    # step 0: same weights, same global batch: the same load, so the same first update
    assert a["tokens_per_expert"][0] == single["tokens_per_expert"][0]
    assert a["bias"][0] == single["bias"][0]


def test_torchrun_cli_records_one_run_from_rank_0(tmp_path, monkeypatch):
    store = tmp_path / "mahiax.sqlite"
    done = torchrun(2, "-m", "mahiax", "--", "train", "--preset", "tiny", "--steps", "12",
                    "--run", "ddp", "--store", str(store), "--no-progress")
    assert done.stdout.count("Trained 12 steps on 2 processes (gloo)") == 1, done.stdout
    reader = RunReader(store)
    assert reader.run_names() == ["ddp"]
    info = reader.run("ddp")
    assert (info["status"], info["world_size"], info["steps"]) == ("finished", 2, 12)
    # ... and the dashboard shows it like any other run, with its world size
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from dashboard.state import PAGE_KEY

    monkeypatch.setenv("MAHIAX_STORE", str(store))
    monkeypatch.setenv("MAHIAX_DASHBOARD_AUTOSTART", "0")
    for page in ("training", "experts", "memory-nodes", "loss-weights", "memory"):
        at = AppTest.from_file(str(ROOT / "dashboard" / "streamlit_app.py"),
                               default_timeout=60)
        at.session_state[PAGE_KEY] = page
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        shown = "\n".join(str(e.value) for e in at.success)
        assert "Finished" in shown and "2 processes (data parallel" in shown, shown
        assert at.get("plotly_chart"), f"{page}: no chart"


def test_batch_must_split_evenly_over_ranks():
    assert distributed.shard_bounds(8, 1, 2) == (4, 8)
    with pytest.raises(BadInput, match=r"batch_size=10 must divide evenly over 4 processes"):
        distributed.shard_bounds(10, 0, 4)


def test_world_size_without_torchrun_is_a_clear_error(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(BadInput, match=r"WORLD_SIZE=2 but RANK, LOCAL_RANK, MASTER_ADDR, "
                                         r"MASTER_PORT not set: start the processes with "
                                         r"`torchrun"):
        distributed.init_from_env(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(BadInput, match=r"WORLD_SIZE='two' is not an integer"):
        distributed.env_world_size()
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.init_from_env(torch.device("cpu")) == distributed.SINGLE
