"""One process of the data-parallel tests (started by torchrun, or alone as the reference).

Trains the tiny preset for ``steps`` steps, then saves its parameters, every buffer, the
weighting's state and the per-step figures to ``<out>/rank<R>.pt``.

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py OUT STEPS WEIGHTING
    python tests/ddp_worker.py OUT STEPS WEIGHTING        # one process, the same global batch
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mahiax import distributed
from mahiax.config import tiny
from mahiax.train import Trainer


def main(out: Path, steps: int, weighting: str) -> None:
    torch.set_num_threads(1)
    config = tiny().replace(max_steps=steps, weighting=weighting)
    info = distributed.init_from_env(torch.device("cpu"))
    try:
        trainer = Trainer(config)
        records = trainer.fit(steps)
        torch.save({
            "rank": info.rank,
            "world_size": info.world_size,
            "model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "weighting": {k: v.detach().clone()
                          for k, v in trainer.weighting.state_dict().items()},
            "loss": [r.loss for r in records],
            "task_losses": [r.task_losses for r in records],
            "tokens_per_expert": [r.load["tokens_per_expert"] for r in records],
        }, out / f"rank{info.rank}.pt")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
