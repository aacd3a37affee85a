"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint holds everything a step depends on: model weights *and* state buffers (memory
nodes, ring buffer, layer importance), the optimiser's moments, the loss weighting's state
(DWA windows), the GradScaler and the step number. Batches are a pure function of
``(seed, step)``, so a resumed CPU run reproduces the uninterrupted run's losses exactly.

Writing goes to a temporary file in the same directory, then ``os.replace``: a process killed
mid-write leaves the previous checkpoint, never a torn one. Loading uses
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from mahiax.config import MahiaConfig


def save_checkpoint(trainer, path: str | os.PathLike) -> Path:
    """Write ``trainer``'s full state to ``path`` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": 1,
        "step": trainer.step_num,
        "config": trainer.config.to_dict(),
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "weighting": trainer.weighting.state_dict(),
        "scaler": trainer.precision.scaler.state_dict(),
        "skipped_steps": trainer.precision.skipped_steps,
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: old file or new file, never half of one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``weights_only=True``; a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a foreign or corrupt file
        raise ValueError(f"{path} is not a readable MAHIA-X checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != 1:
        raise ValueError(f"{path} is not a MAHIA-X checkpoint (format 1)")
    return state


def restore(trainer, state: dict) -> None:
    """Load a checkpoint's state into a Trainer built from the same config."""
    saved = MahiaConfig.from_dict(state["config"])
    if saved != trainer.config:
        diff = {
            k: (v, getattr(trainer.config, k))
            for k, v in saved.to_dict().items()
            if k != "tasks" and v != getattr(trainer.config, k)
        }
        raise ValueError(f"checkpoint config differs from this run's: {diff} (saved, now)")
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.weighting.load_state_dict(state["weighting"])
    if state["scaler"]:  # an enabled scaler's state; a disabled one saves {}
        trainer.precision.scaler.load_state_dict(state["scaler"])
    trainer.precision.skipped_steps = int(state["skipped_steps"])
    trainer.step_num = int(state["step"])
