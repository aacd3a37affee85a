"""Run stores for the dashboard tests: one per situation the dashboard must handle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mahiax.config import tiny
from mahiax.recording import record_training
from mahiax.store import RunWriter
from mahiax.telemetry.cadence import Cadence
from mahiax.units import MIB

FAILED_MESSAGE = "one of the variables needed for gradient computation has been modified"


def finished_store(root: Path) -> Path:
    """A tiny preset trained 12 steps: every key the probes write, snapshots included."""
    path = root / "finished.sqlite"
    record_training(tiny(), "done", 12, store=path,
                    cadence=Cadence(snapshot_every=4, memory_every=5, categories_every=1))
    return path


def _log_steps(writer: RunWriter, steps: range) -> None:
    for step in steps:
        writer.log({"loss": 1.0 / (step + 1), "loss/keywords": 0.5, "weight/keywords": 1.0,
                    "optim/grad_norm": 0.1 * step, "time/step_s": 0.01,
                    "mem/rss": 3e8}, step)
        writer.log_vector("moe/tokens_per_expert", [4, 0, 2, 2], step)
        writer.log_tensor("memory/nodes", np.random.default_rng(step).normal(size=(6, 16)),
                          step)


def failed_store(root: Path) -> Path:
    """A run that failed at step 3 with an in-place RuntimeError."""
    path = root / "failed.sqlite"
    writer = RunWriter("bad", tiny().to_dict(), path=path, device="cpu")
    _log_steps(writer, range(3))
    writer.finish("failed", error=RuntimeError(FAILED_MESSAGE), error_step=3)
    writer.close()
    return path


def interrupted_store(root: Path) -> Path:
    """A run closed without finishing: recorded interrupted."""
    path = root / "interrupted.sqlite"
    writer = RunWriter("cut", tiny().to_dict(), path=path, device="cpu")
    _log_steps(writer, range(4))
    writer.close()
    return path


def running_writer(root: Path) -> tuple[Path, RunWriter]:
    """A run still being written (the caller closes the writer): status running."""
    path = root / "running.sqlite"
    writer = RunWriter("live", tiny().to_dict(), path=path, device="cpu")
    _log_steps(writer, range(5))
    writer.flush()
    return path, writer


def corrupt_store(root: Path) -> Path:
    """A file that is not an SQLite database at all."""
    path = root / "corrupt.sqlite"
    path.write_bytes(b"this is not a run store\n" * 200)
    return path


SPIKE_STEP = 5


def gpu_categories_store(root: Path) -> Path:
    """A run recorded on ``cuda:0`` (written here: the dashboard only reads the figures), with
    every memory category every step, as the probes log them on a GPU, and one memory spike
    at ``SPIKE_STEP`` whose snapshot file lies beside the store."""
    from mahiax.telemetry.spikes import SPIKE_KEY, SPIKE_SNAPSHOT_KEY, encode_path

    path = root / "gpu.sqlite"
    snapshot = root / "memory_snapshots" / "gpu" / f"spike-step{SPIKE_STEP}.pickle"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_bytes(b"")  # the dashboard only says where it is
    writer = RunWriter("gpu", tiny().replace(precision="fp16").to_dict(), path=path,
                       device="cuda:0")
    for step in range(10):
        known = {"mem/params": 4e6, "mem/grads": 4e6, "mem/optimizer": 8e6,
                 "mem/saved": 1e6 * (1 + step % 3)}
        other = 2e6
        total = sum(known.values()) + other
        writer.log({**known, "mem/other": other, "mem/total": total,
                    "mem/reserved": 40e6, "mem/peak": 30e6, "loss": 1.0,
                    "amp/scale": 65536.0, "amp/skipped": 0.0, "amp/skipped_total": 0.0}, step)
        if step == SPIKE_STEP:
            writer.log({SPIKE_KEY: 300 * MIB}, step)
            writer.log_tensor(SPIKE_SNAPSHOT_KEY, encode_path(snapshot, root), step)
    writer.finish("finished")
    writer.close()
    return path


def catalog_store(root: Path) -> Path:
    """The three variants of ``retain-graph`` recorded (8 steps each), plus a plain run."""
    from mahiax.recording import record_bug

    path = root / "catalog.sqlite"
    record_training(tiny(), "plain", 2, store=path)
    for variant in ("buggy", "summary", "fixed"):
        record_bug("retain-graph", variant, f"retain-graph-{variant}", 8, store=path)
    return path


BALANCE_STEPS = 12


def balance_store(root: Path) -> Path:
    """Two runs of the tiny preset trained ``BALANCE_STEPS`` steps: ``bias`` (balance = bias,
    the selection bias logged every step) and ``aux`` (the auxiliary loss: no bias)."""
    path = root / "balance.sqlite"
    for balance in ("bias", "aux"):
        record_training(tiny().replace(balance=balance), balance, BALANCE_STEPS, store=path)
    return path


UNEVEN_STEPS = {"long": 450, "short": 6}


def uneven_store(root: Path) -> Path:
    """Two finished runs of different lengths (``UNEVEN_STEPS``), loss and grad norm every
    step, for comparing runs on one chart."""
    path = root / "uneven.sqlite"
    for name, steps in UNEVEN_STEPS.items():
        writer = RunWriter(name, tiny().to_dict(), path=path, device="cpu")
        for step in range(steps):
            writer.log({"loss": 1.0 / (step + 1) + (0.5 if name == "short" else 0.0),
                        "optim/grad_norm": 0.1 * (step % 7)}, step)
        writer.finish("finished")
        writer.close()
    return path
