"""Probes, recorded runs, and the `train --run` / `runs` commands. (Checkpoints and resume:
``tests/training/test_resume.py``.)"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mahiax.cli import main
from mahiax.config import tiny
from mahiax.recording import record_bug, record_training
from mahiax.store import RunReader, RunWriter
from mahiax.telemetry.cadence import MAX_VIO_WINDOW, Cadence
from mahiax.telemetry.probes import LoadWindow, TrainingProbe
from mahiax.training.trainer import Trainer


@pytest.mark.slow
def test_probes_do_not_change_what_the_model_computes(tmp_path):
    """Training with every probe writing gives bit-identical losses to training without:
    memory by category walks each step's graph between the forward and the backward, and
    the full memory scan runs at every step."""
    c = tiny().replace(max_steps=30)
    plain = [r.loss for r in Trainer(c).fit(30)]
    trainer = Trainer(c)
    writer = RunWriter("probed", c.to_dict(), path=tmp_path / "s.sqlite")
    probe = TrainingProbe(writer, Cadence(snapshot_every=1, memory_every=1), trainer=trainer)
    probed = []
    for _ in range(30):
        rec = trainer.step()
        probe.observe(trainer, rec)
        probed.append(rec.loss)
    writer.finish("finished")
    writer.close()
    assert probed == plain


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A 30-step tiny run recorded into a fresh store."""
    store = tmp_path_factory.mktemp("store") / "runs.sqlite"
    c = tiny().replace(max_steps=30)
    record_training(c, "tiny-30", 30, store=store, checkpoint_every=10,
                    cadence=Cadence(snapshot_every=10, memory_every=10, categories_every=1))
    return store, c


def test_recorded_run_has_every_documented_series(recorded):
    store, c = recorded
    reader = RunReader(store)
    runs = reader.runs()
    row = runs[runs["name"] == "tiny-30"].iloc[0]
    assert row["status"] == "finished" and row["last_step"] == 29
    scal = reader.scalars("tiny-30")
    assert list(scal.index) == list(range(30))
    expected = {"loss", "moe/aux_loss", "moe/z_loss", "moe/cv", "moe/entropy",
                "moe/max_over_mean", "moe/dead", "moe/dropped", "optim/grad_norm",
                "optim/lr", "amp/scale", "amp/skipped", "amp/skipped_total", "time/step_s",
                "time/samples_per_s", "mem/rss", "mem/tensor_bytes", "mem/peak", "mem/params",
                "mem/grads", "mem/optimizer", "mem/saved", "mem/other", "mem/total"}
    expected |= {f"{p}/{t}" for t in c.tasks for p in ("loss", "weight", "dwa/ratio")}
    assert expected <= set(scal.columns)
    # the full reading: every memory_every steps (10 here) and at the last step
    assert scal["mem/tensor_bytes"].dropna().index.tolist() == [0, 10, 20, 29]
    assert not {"mem/allocated", "mem/reserved", "mem/spike"} & set(scal.columns)  # a CPU run
    tpe = reader.vectors("tiny-30", "moe/tokens_per_expert")
    assert tpe.shape == (30, c.num_experts)
    assert (tpe.sum(axis=1) == c.batch_size * c.seq_len * c.top_k).all()
    assert reader.vectors("tiny-30", "fabric/importance").shape == (30, c.fabric_layers)
    assert reader.snapshot_steps("tiny-30", "memory/nodes") == [0, 10, 20, 29]  # + final
    nodes = reader.snapshot("tiny-30", "memory/nodes", 20)
    assert nodes.shape == (c.memory_nodes, c.d_model)
    adj = reader.snapshot("tiny-30", "memory/adjacency", 0)
    assert adj.shape == (c.memory_nodes, c.memory_nodes)
    assert abs(float(adj.sum(axis=1).mean()) - 1.0) < 1e-5  # row-stochastic


def test_recorded_run_has_memory_by_category_every_step(recorded):
    """Read after each forward: parameters flat, the step's saved activations present at
    every step; the CPU scan ("other", the total) at the memory cadence, adding up."""
    store, _ = recorded
    mem = RunReader(store).scalars("tiny-30", ["mem/params", "mem/grads", "mem/optimizer",
                                                "mem/saved", "mem/other", "mem/total",
                                                "mem/tensor_bytes", "mem/peak"])
    every = mem[["mem/params", "mem/grads", "mem/optimizer", "mem/saved"]]
    assert every.notna().all().all() and list(every.index) == list(range(30))
    assert mem["mem/params"].nunique() == 1 and (mem["mem/saved"] > 0).all()
    assert mem["mem/grads"].iloc[0] == 0  # step 0's forward: no gradient exists yet
    grads = mem["mem/grads"].iloc[1:]  # the last step's (a fabric block no sample chose has
    assert ((grads > 0) & (grads <= mem["mem/params"].iloc[1:])).all()  # none)
    assert mem["mem/optimizer"].iloc[0] == 0 and (mem["mem/optimizer"].iloc[1:] > 0).all()
    full = mem.dropna()
    assert list(full.index) == [0, 10, 20, 29]  # and the last step
    parts = full[["mem/params", "mem/grads", "mem/optimizer", "mem/saved", "mem/other"]]
    assert (parts.sum(axis=1) == full["mem/total"]).all()
    assert (full["mem/tensor_bytes"] == full["mem/total"]).all()  # the older name, same figure
    assert (full["mem/peak"] >= full["mem/total"]).all()


class KeepScalars:
    """A logger that keeps each step's scalars in memory (vectors and tensors dropped)."""

    def __init__(self):
        self.metrics: dict[int, dict] = {}

    def log(self, metrics, step):
        self.metrics[step] = dict(metrics)

    def log_vector(self, key, values, step):
        pass

    def log_tensor(self, key, tensor, step):
        pass


def test_probe_measures_the_trainers_device_on_a_gpu_machine(tmp_path, monkeypatch):
    """A GPU exists (simulated) but the trainer runs on the CPU: the probe reads the CPU,
    and spike capture says it is off and why."""

    trainer, keep = Trainer(tiny()), KeepScalars()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    probe = TrainingProbe(keep, Cadence(memory_every=1), trainer=trainer)
    probe.observe(trainer, trainer.step())
    assert probe.meter.device == torch.device("cpu") and probe.meter.label == "CPU"
    m = keep.metrics[0]
    assert m["mem/tensor_bytes"] == m["mem/total"] > 0 and "mem/allocated" not in m
    assert "measured on the CPU" in probe.spikes.status and not probe.spikes.enabled


def test_memory_by_category_follows_its_cadence(tmp_path):
    """Categories at every ``categories_every``-th step (and at each full memory reading);
    the cheap figures at every step."""

    trainer, keep = Trainer(tiny()), KeepScalars()
    probe = TrainingProbe(keep, Cadence(categories_every=4, memory_every=6), trainer=trainer)
    for _ in range(13):
        probe.observe(trainer, trainer.step())
    assert [s for s, m in keep.metrics.items() if "mem/saved" in m] == [0, 4, 6, 8, 12]
    assert [s for s, m in keep.metrics.items() if "mem/total" in m] == [0, 6, 12]
    assert all("mem/rss" in m for m in keep.metrics.values())
    assert Cadence().categories_every == 10


def test_probe_cadence_validates_spike_settings():
    with pytest.raises(ValueError, match=r"spike_bytes=0 must be a positive integer or None"):
        Cadence(spike_bytes=0)
    assert Cadence(spike_bytes=None).spike_bytes is None


def test_bug_run_records_its_failure_and_growth_live(tmp_path):
    store = tmp_path / "b.sqlite"
    out = record_bug("retain-graph", "summary", "rg", 8, store=store)
    assert out.error_step == 4
    reader = RunReader(store)
    info = reader.run("rg")
    assert info["status"] == "failed" and info["error_type"] == "RuntimeError"
    assert info["error_step"] == 4
    assert "modified by an inplace operation" in info["error_message"]
    nodes = reader.scalars("rg", ["graph_nodes"])["graph_nodes"].tolist()
    assert len(nodes) == 4 and all(b > a for a, b in zip(nodes, nodes[1:], strict=False))


def test_cli_records_lists_shows_and_exports(tmp_path, capsys):
    store = str(tmp_path / "c.sqlite")
    assert main(["train", "--preset", "tiny", "--steps", "5", "--run", "cli-run",
                 "--store", store, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["runs", "list", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "cli-run" in out and "finished" in out
    assert main(["runs", "show", "cli-run", "--store", store]) == 0
    assert "last step 4:" in capsys.readouterr().out
    for fmt in ("csv", "parquet"):
        dest = tmp_path / f"e.{fmt}"
        assert main(["runs", "export", "cli-run", "--store", store, "--format", fmt,
                     "--out", str(dest)]) == 0
        df = pd.read_csv(dest) if fmt == "csv" else pd.read_parquet(dest)
        assert len(df) == 5 and "loss" in df.columns


def test_cli_bug_run_exits_1_with_the_error(tmp_path, capsys):
    store = str(tmp_path / "c.sqlite")
    code = main(["train", "--bug", "tiny-memory-write", "--variant", "buggy", "--run", "tm",
                 "--steps", "4", "--store", store])
    assert code == 1
    out = capsys.readouterr().out
    assert "tiny-memory-write / buggy: RuntimeError at step 1" in out
    assert RunReader(store).run("tm")["status"] == "failed"
    run = RunReader(store).run("tm")
    assert (run["bug"], run["variant"]) == ("tiny-memory-write", "buggy"), \
        "the lab groups by this"
    # a catalog run is a few steps long: resuming it is refused with one clear line
    assert main(["train", "--run", "tm", "--resume", "--steps", "8", "--store", store]) == 2
    err = capsys.readouterr().err
    assert "'tm' is a bug-catalog run (tiny-memory-write / buggy)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("argv", "says"), [
    (["train", "--run", "a/b", "--steps", "2"], "run name"),
    (["train", "--bug", "tiny-memory-write", "--steps", "2"], "--bug and --variant go together"),
    (["train", "--resume", "--steps", "2"], "--resume needs --run NAME"),
    (["train", "--bug", "retain-graph", "--variant", "fixed", "--run", "r", "--resume"],
     "--bug runs cannot be resumed"),
    (["runs", "show", "nope"], "nope"),
])
def test_cli_bad_requests_get_one_clear_line(tmp_path, capsys, argv, says):
    argv = argv + ["--store", str(tmp_path / "x.sqlite")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mahiax: error: ") and says in err
    assert "Traceback" not in err


def test_probe_cadence_is_validated():
    with pytest.raises(ValueError, match=r"snapshot_every=0 must be a positive integer"):
        Cadence(snapshot_every=0)


def test_probe_snapshot_tensors_are_copies():
    """A probe's snapshot is a copy: later steps do not change what was logged."""

    class Keep:
        def __init__(self):
            self.tensors = {}

        def log(self, metrics, step):
            pass

        def log_vector(self, key, values, step):
            pass

        def log_tensor(self, key, tensor, step):
            self.tensors[(key, step)] = tensor

    trainer, keep = Trainer(tiny()), Keep()
    probe = TrainingProbe(keep, Cadence(snapshot_every=1))
    probe.observe(trainer, trainer.step())
    first = keep.tensors[("memory/nodes", 0)].clone()
    trainer.step()
    assert torch.equal(keep.tensors[("memory/nodes", 0)], first)


def test_global_max_vio_sums_the_load_of_the_last_steps():
    """MaxVio of a window's summed load (Wang et al. 2024's global MaxVio, in training):
    batches each skewed to a different expert are balanced together."""
    window = LoadWindow(steps=2)
    assert window.add([4, 0, 0, 0]) == pytest.approx(3.0)  # one batch: all on expert 0
    assert window.add([0, 4, 0, 0]) == pytest.approx(1.0)  # [4, 4, 0, 0]: max 4 / mean 2
    assert window.add([0, 4, 0, 0]) == pytest.approx(3.0)  # step 0 left: [0, 8, 0, 0]
    window = LoadWindow(steps=4)
    for load in ([4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]):
        window.add(load)
    assert window.add([0, 0, 0, 4]) == pytest.approx(0.0), "each expert once: balanced"
    with pytest.raises(ValueError, match=r"steps=0 must be a positive integer"):
        LoadWindow(steps=0)
    with pytest.raises(ValueError, match=r"max_vio_window=0 must be a positive integer"):
        Cadence(max_vio_window=0)


def test_recorded_global_max_vio_is_the_max_vio_of_the_summed_load(recorded):
    store, c = recorded
    reader = RunReader(store)
    tpe = reader.vectors("tiny-30", "moe/tokens_per_expert").to_numpy()  # (30, E)
    scal = reader.scalars("tiny-30", ["moe/max_vio", "moe/max_vio_global"])
    assert c.max_steps < MAX_VIO_WINDOW, "the window holds every step of this run"
    for step in (0, 9, 29):
        summed = tpe[: step + 1].sum(axis=0)
        assert scal.loc[step, "moe/max_vio_global"] == pytest.approx(
            summed.max() / summed.mean() - 1)
    assert scal.loc[0, "moe/max_vio_global"] == pytest.approx(scal.loc[0, "moe/max_vio"])
