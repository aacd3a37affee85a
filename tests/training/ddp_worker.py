"""One process of the data-parallel tests (started by torchrun, or alone as the reference).

Trains the tiny preset for ``steps`` steps, then saves its parameters, every buffer, the
weighting's state, the per-step figures and the collective calls of each step to
``<out>/rank<R>.pt``.

    python -m torch.distributed.run --nproc-per-node 2 tests/training/ddp_worker.py OUT STEPS W
    python tests/training/ddp_worker.py OUT STEPS W    # one process, the same global batch

(``W``: the loss weighting.)

An optional fifth argument sets ``balance`` (aux | bias | none; default aux).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mahiax.config import tiny
from mahiax.model.hybrid import HybridEfficientModel
from mahiax.training import distributed
from mahiax.training.trainer import Trainer

# the collectives of torch.distributed's Python API (DDP's own gradient all-reduce runs in its
# C++ reducer and is not among them): every call the package makes goes through one of these
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object",
               "broadcast", "broadcast_object_list", "reduce", "reduce_scatter",
               "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "barrier")
calls: list[str] = []


def count_collectives() -> None:
    """Wrap each collective so that every call is appended to ``calls`` (then made)."""
    for name in COLLECTIVES:
        real = getattr(dist, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        setattr(dist, name, counted)


def main(out: Path, steps: int, weighting: str, balance: str = "aux") -> None:
    torch.set_num_threads(1)
    count_collectives()
    config = tiny().replace(max_steps=steps, weighting=weighting, balance=balance)
    info = distributed.init_from_env(torch.device("cpu"))
    try:
        trainer = Trainer(config)
        per_step: list[list[str]] = []
        calls.clear()
        records = trainer.fit(steps, on_step=lambda _: (per_step.append(calls[:]),
                                                         calls.clear()))
        # a training-mode forward and commit on this rank alone, inside the group: it must
        # neither wait for the other rank nor call any collective
        alone = HybridEfficientModel(config).train()
        alone.losses(trainer.data.batch(0))
        alone.commit()
        torch.save({
            "rank": info.rank,
            "world_size": info.world_size,
            "model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "weighting": {k: v.detach().clone()
                          for k, v in trainer.weighting.state_dict().items()},
            "loss": [r.loss for r in records],
            "task_losses": [r.task_losses for r in records],
            "tokens_per_expert": [r.load["tokens_per_expert"] for r in records],
            "bias": [r.load.get("bias") for r in records],  # balance=bias: after each step
            "collectives_per_step": per_step,  # the names of the calls each step made
            "collectives_alone": calls[:],  # the lone model's forward and commit
        }, out / f"rank{info.rank}.pt")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], *sys.argv[4:5])
