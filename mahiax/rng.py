"""The random-number state a training step draws from, saved and restored with a checkpoint.

Only torch's global generators draw during training: dropout in the fabric's blocks on the CPU
generator, or on the device's generator for CUDA. Batches use a private
``torch.Generator`` seeded from ``(seed, step)`` (:mod:`mahiax.model.data`), so they need no saved
state; Python's ``random`` and NumPy are not used by a step, so they are not saved either.
With this state in the checkpoint a resumed run with ``dropout > 0`` draws the same masks as
the uninterrupted run.

Under ``torchrun`` the checkpoint holds rank 0's states and every rank restores them. That is
exact while the ranks' generators stay in step, as they do on the CPU (every rank's shard
draws as many dropout numbers; checked with 2 gloo ranks); where they do not (CUDA's
generator advances per kernel launch, and the ranks' routing launches different kernels), a
resumed run is still deterministic but its dropout masks differ from the uninterrupted run's.
"""

from __future__ import annotations

import torch


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators' states: ``cpu`` always, ``cuda`` when ``device`` is a CUDA device."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Put the generators back to ``state`` (from :func:`rng_state`)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
