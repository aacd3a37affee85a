"""Resume: ``--steps N --resume`` trains to step N on the schedule of an N-step run, a flag
that conflicts with the stored config is refused in one line, and a resumed run reproduces
the uninterrupted run's losses exactly, dropout included (the RNG states are checkpointed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mahiax.cli import main
from mahiax.config import tiny
from mahiax.recording import checkpoint_path, record_training
from mahiax.store import RunReader
from mahiax.training.checkpoint import load_checkpoint, save_checkpoint
from mahiax.training.trainer import Trainer, lr_at

ROOT = Path(__file__).resolve().parents[2]


def _train(store, name: str, *extra: str) -> int:
    return main(["train", "--run", name, "--store", str(store), "--no-progress", *extra])


@pytest.fixture
def demo(tmp_path):
    """A finished 12-step run 'demo' of the tiny preset (lr 0.003, 4 experts)."""
    store = tmp_path / "s.sqlite"
    assert _train(store, "demo", "--preset", "tiny", "--steps", "12") == 0
    return store


def test_steps_n_resume_trains_to_n_on_the_schedule_of_an_n_step_run(demo, capsys):
    c = tiny()
    assert _train(demo, "demo", "--steps", "24", "--resume") == 0
    assert "Resumed at step 12 and trained to step 24" in capsys.readouterr().out
    reader = RunReader(demo)
    lr = reader.scalars("demo", ["optim/lr"])["optim/lr"]
    assert list(lr.index) == list(range(24))
    # the stored steps keep the LR of the 12-step schedule; from step 12 on, the 24-step one
    assert lr[:12].tolist() == [lr_at(s, c.lr, c.warmup_steps, 12) for s in range(12)]
    assert lr[12:].tolist() == [lr_at(s, c.lr, c.warmup_steps, 24) for s in range(12, 24)]
    assert lr[23] > c.lr * 0.1  # not stuck at the floor of the old schedule...
    assert lr[12] > lr[23]  # ...and decaying toward it again at step 24
    assert reader.config("demo")["max_steps"] == 24
    assert load_checkpoint(checkpoint_path(demo, "demo"))["step"] == 24


def test_resume_without_steps_goes_on_to_the_stored_length(tmp_path):
    """What the dashboard suggests for an interrupted run: ``--run NAME --resume``."""
    c, store = tiny().replace(max_steps=12), tmp_path / "s.sqlite"
    record_training(c, "cut", 6, store=store)  # 6 of the 12 planned steps, then stopped
    assert _train(store, "cut", "--resume") == 0
    losses = RunReader(store).scalars("cut", ["loss"])["loss"]
    assert list(losses.index) == list(range(12))
    assert losses.tolist() == [r.loss for r in Trainer(c).fit(12)]


@pytest.mark.parametrize(("flags", "line"), [
    (["--lr", "0.01"], "--lr 0.01 conflicts with run 'demo' (stored lr=0.003)"),
    (["--experts", "8"], "--experts 8 conflicts with run 'demo' (stored num_experts=4)"),
    (["--weighting", "equal"], "--weighting equal conflicts with run 'demo' (stored "
                               "weighting=dwa)"),
    (["--preset", "teaching"], "--preset teaching (vocab_size=1000) conflicts with run 'demo' "
                               "(stored vocab_size=64)"),
])
def test_a_flag_that_conflicts_with_the_stored_config_is_refused_in_one_line(
    demo, capsys, flags, line
):
    capsys.readouterr()
    assert _train(demo, "demo", "--steps", "24", "--resume", *flags) == 2
    out, err = capsys.readouterr()
    assert err == f"mahiax: error: {line}; resume without it or start a new run\n"
    assert out == ""
    run = RunReader(demo).run("demo")
    assert (run["status"], run["last_step"]) == ("finished", 11)  # nothing was touched


def test_flags_that_match_the_stored_config_pass(demo):
    """Re-running the command that started the run, plus --resume and more steps, works."""
    assert _train(demo, "demo", "--preset", "tiny", "--lr", "0.003", "--experts", "4",
                  "--weighting", "dwa", "--steps", "14", "--resume") == 0
    assert RunReader(demo).run("demo")["last_step"] == 13


def test_steps_not_past_the_checkpoint_are_refused(demo, capsys):
    capsys.readouterr()
    assert _train(demo, "demo", "--steps", "12", "--resume") == 2
    assert capsys.readouterr().err == (
        "mahiax: error: run 'demo' has trained 12 steps already; ask for more "
        "(--steps N with N > 12) to continue it\n"
    )


def test_record_training_refuses_a_config_that_differs_from_the_stored_one(tmp_path):
    c, store = tiny(), tmp_path / "s.sqlite"
    record_training(c, "r", 2, store=store)
    with pytest.raises(ValueError, match=r"seed=1 conflicts with run 'r' \(stored seed=0\)"):
        record_training(c.replace(seed=1), "r", 4, store=store, resume=True)


def test_dropout_resume_reproduces_the_uninterrupted_losses_exactly(tmp_path):
    """Dropout draws from torch's global generator: the checkpoint carries its state."""
    c, store = tiny().replace(dropout=0.1, max_steps=20), tmp_path / "s.sqlite"
    full = [r.loss for r in Trainer(c).fit(20)]
    record_training(c, "d", 10, store=store, checkpoint_every=10)
    record_training(c, "d", 20, store=store, resume=True, checkpoint_every=10)
    assert RunReader(store).scalars("d", ["loss"])["loss"].tolist() == full


def test_trainer_state_round_trips_through_a_checkpoint(tmp_path):
    """fp16 with its GradScaler, DWA and dropout: K steps, save, load into a new trainer,
    K more steps equal the last K of an uninterrupted 2K-step run, loss scale included."""
    c = tiny().replace(dropout=0.1, precision="fp16", max_steps=8)
    whole = [(r.loss, r.scale, r.weights) for r in Trainer(c).fit(8)]
    first = Trainer(c)
    first.fit(4)
    path = save_checkpoint(first.state_dict(), tmp_path / "t.pt")
    second = Trainer(c)
    second.load_state_dict(load_checkpoint(path))
    assert second.step_num == 4
    assert [(r.loss, r.scale, r.weights) for r in second.fit(4)] == whole[4:]


def test_a_trainer_refuses_the_state_of_another_run():
    state = Trainer(tiny()).state_dict()
    with pytest.raises(ValueError, match=r"another config \(lr: 0.003 saved, 0.01 now\)"):
        Trainer(tiny().replace(lr=0.01)).load_state_dict(state)
    Trainer(tiny().replace(max_steps=99)).load_state_dict(state)  # a longer schedule is fine


def test_resumed_run_reproduces_the_uninterrupted_losses_exactly(tmp_path):
    c = tiny().replace(max_steps=40)
    store = tmp_path / "r.sqlite"
    full = [r.loss for r in Trainer(c).fit(40)]
    record_training(c, "split", 20, store=store, checkpoint_every=10)
    record_training(c, "split", 40, store=store, resume=True, checkpoint_every=10)
    scal = RunReader(store).scalars("split", ["loss"])
    assert list(scal.index) == list(range(40))
    assert scal["loss"].tolist() == full


def _train_cmd(store: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mahiax", "train", "--preset", "tiny", "--steps", "120",
            "--run", name, "--store", str(store), "--checkpoint-every", "10", "--no-progress",
            *extra]


@pytest.mark.integration
def test_killed_training_resumes_to_the_same_losses(tmp_path):
    """SIGKILL mid-run, then --resume: the store opens, shows the run interrupted, and the
    finished run's losses equal an uninterrupted run's, step for step.

    Every run is a separate process with one thread: float sums are only bit-identical
    between runs that use the same number of threads.
    """
    store = tmp_path / "k.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = dict(cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    subprocess.run(_train_cmd(store, "whole"), check=True, timeout=300, **run)
    proc = subprocess.Popen(_train_cmd(store, "killed"), **run)
    ckpt = checkpoint_path(store, "killed")
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader = RunReader(store)
    assert reader.runs().set_index("name").loc["killed", "status"] == "interrupted"
    assert reader.run("killed")["last_step"] < 119  # it really was cut short
    subprocess.run(_train_cmd(store, "killed", "--resume"), check=True, timeout=300, **run)
    whole = reader.scalars("whole", ["loss"])
    resumed = reader.scalars("killed", ["loss"])
    assert list(resumed.index) == list(range(120))
    assert resumed["loss"].tolist() == whole["loss"].tolist()
    assert reader.runs().set_index("name").loc["killed", "status"] == "finished"


def test_checkpoint_is_written_atomically_and_checked_on_load(tmp_path):
    trainer = Trainer(tiny())
    trainer.fit(2)
    path = save_checkpoint(trainer.state_dict(), tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    state = load_checkpoint(path)
    assert state["step"] == 2
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pt is not a readable MAHIA-X checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
