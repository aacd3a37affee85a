"""Data-parallel training with ``torch.distributed``: the process group, and the one reduction
a training step needs beyond DDP's gradients.

``torchrun --nproc-per-node N -m mahiax train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_from_env`
joins them into one group (gloo on CPU, NCCL on CUDA). Gradients are averaged by
DistributedDataParallel. Buffers are not synced by DDP before each forward (that overwrites
every rank's buffers with rank 0's, discarding the other ranks' updates; they are synced once,
when DDP is built). Instead the stateful modules stage the *statistics* of their update as sums
over this rank's samples, with no collective inside the model; the trainer adds every staged
statistic up over the ranks with :func:`sum_over_ranks` (one flat all-reduce per step) before
``commit()``, and every rank applies the same update, so the buffers stay identical. In a single
process the sum is the identity, so the same code trains alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mahiax.errors import BadInput


@dataclass(frozen=True, kw_only=True)
class DistInfo:
    """Where this process stands in the group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run store, checkpoints and prints."""
        return self.rank == 0


SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, backend="none")


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset); a bad value is a clear error."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(raw)
    except ValueError:
        raise BadInput(f"WORLD_SIZE={raw!r} is not an integer; torchrun sets it") from None
    if n < 1:
        raise BadInput(f"WORLD_SIZE={n} must be at least 1")
    return n


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes; :data:`SINGLE` when there is none.

    gloo on CPU, NCCL on CUDA (each rank then uses GPU ``LOCAL_RANK``).
    """
    world = env_world_size()
    if world == 1:
        return SINGLE
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise BadInput(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the "
                         "processes with `torchrun --nproc-per-node N -m mahiax train ...`")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend=backend)
    return current()


def current() -> DistInfo:
    """This process's place in the initialised group (:data:`SINGLE` outside one)."""
    if not active():
        return SINGLE
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                    backend=str(dist.get_backend()))


def active() -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def sum_over_ranks(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over the ranks, with **one** ``all_reduce`` for all of them.

    The tensors (any shapes and dtypes, one device) are flattened into one float64 buffer,
    reduced once and split back into new tensors of their own shapes and dtypes: a step pays
    one collective, not one per statistic. float64 holds integer counts exactly and, for two
    ranks, rounds each float32 sum once, as a float32 all-reduce would. Alone (no group of
    more than one rank) the tensors come back as they are, and nothing is communicated.
    """
    tensors = list(tensors)
    if not active() or not tensors:
        return tensors
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])  # (sum n_i,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    parts = flat.split([t.numel() for t in tensors])
    return [p.reshape(t.shape).to(t.dtype) for p, t in zip(parts, tensors, strict=True)]


def world_size() -> int:
    """Processes in the running group (1 outside one)."""
    return dist.get_world_size() if active() else 1


def shard_bounds(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a global batch that ``rank`` trains on (equal shards)."""
    if batch_size % world_size:
        raise BadInput(f"batch_size={batch_size} must divide evenly over {world_size} "
                         f"processes; choose a multiple of {world_size}")
    per = batch_size // world_size
    return rank * per, (rank + 1) * per


def shutdown() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
