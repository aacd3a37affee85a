"""A scene-completion loop adds each loss tensor of the step's loss dict into a dict of meters.

Reported: https://github.com/jokester-zzz/SSA-SC/issues/2. The semantic scene completion trainer
accumulated its training (and validation) losses per key as ``loss[key]``, the tensors
themselves, and GPU memory rose continuously; the reporter's fix, which the author accepted, is
to accumulate ``loss[key].item()``. Reproduced minimally in our own code.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, graph_nodes

SOURCE = "https://github.com/jokester-zzz/SSA-SC/issues/2"
KIND = "graph-carried-across-steps"
ARCH = "cnn"
STATE = "dict"
ERROR = None

BATCH, SIDE, CLASSES = 16, 4, 3


class TinySSC(nn.Module):
    """From a partial occupancy grid: per-cell class scores and a completion score."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.semantic = nn.Conv2d(8, CLASSES, 1)
        self.completion = nn.Conv2d(8, 1, 1)

    def forward(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(grid)
        return self.semantic(h), self.completion(h).squeeze(1)


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    labels = torch.randint(0, CLASSES, (BATCH, SIDE, SIDE), generator=g)
    occupied = (labels > 0).float()
    seen = occupied * (torch.rand(BATCH, SIDE, SIDE, generator=g) < 0.6)
    return seen.unsqueeze(1), labels, occupied


def _losses(model: TinySSC, i: int) -> dict[str, torch.Tensor]:
    grid, labels, occupied = _batch(i)
    sem, com = model(grid)
    loss = {"semantic": F.cross_entropy(sem, labels),
            "completion": F.binary_cross_entropy_with_logits(com, occupied)}
    loss["total"] = loss["semantic"] + loss["completion"]
    return loss


def _setup() -> tuple[TinySSC, torch.optim.Optimizer, dict[str, float]]:
    torch.manual_seed(0)
    model = TinySSC()
    meters = {"total": 0.0, "semantic": 0.0, "completion": 0.0}
    return model, torch.optim.Adam(model.parameters(), lr=1e-3), meters


def _loop(item: bool) -> Loop:
    model, opt, meters = _setup()

    def step(i: int) -> None:
        loss = _losses(model, i)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
        for key in meters:
            if not item:
                meters[key] += loss[key]  # doctor[buggy]: graph-carried-across-steps
            else:
                meters[key] += loss[key].item()

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(item=False)


def fixed() -> Loop:
    model, opt, meters = _setup()

    def step(i: int) -> None:
        loss = _losses(model, i)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
        for key in meters:
            meters[key] += loss[key].item()

    return Loop(step=step, model=model, optimizer=opt)


def applied() -> Loop:
    # the doctor's fix: `meters[key] += loss[key].item()`
    return _loop(item=True)


def symptom(loop: Loop) -> bool:
    """The meters are tensors holding the graph of every step they summed."""
    meters = inspect.getclosurevars(loop.step).nonlocals["meters"]
    return any(graph_nodes(v) > 0 for v in meters.values())
