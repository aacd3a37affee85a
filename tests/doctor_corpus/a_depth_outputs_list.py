"""A depth-training step appends its loss tensor to the list of the epoch's outputs.

Reported: https://github.com/TRI-ML/packnet-sfm/pull/51. The self-supervised depth trainer
appended each batch's loss, graph and all, to its list of training outputs, so the list kept
every batch's graph alive: a memory leak. The merged fix, titled "Fix memory leak", detaches the
loss before appending it to the list. Reproduced minimally in our own code.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, graph_nodes

SOURCE = "https://github.com/TRI-ML/packnet-sfm/pull/51"
KIND = "graph-carried-across-steps"
ARCH = "cnn"
STATE = "list"
ERROR = None

BATCH, SIDE = 16, 4


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1),
                         nn.Softplus())  # (B, 3, H, W) -> a positive depth map (B, 1, H, W)


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    image = torch.rand(BATCH, 3, SIDE, SIDE, generator=g)
    return image, 1.0 + image.mean(1, keepdim=True)


def _loop(item: bool) -> Loop:
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    outputs: list[dict] = []  # the epoch's per-batch outputs, read at the end of the epoch

    def step(i: int) -> None:
        image, depth = _batch(i)
        pred = model(image)
        loss = F.l1_loss(pred, depth)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not item:
            outputs.append({"loss": loss})  # doctor[buggy]: graph-carried-across-steps
        else:
            outputs.append({"loss": loss.item()})

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(item=False)


def fixed() -> Loop:
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    outputs: list[dict] = []

    def step(i: int) -> None:
        image, depth = _batch(i)
        pred = model(image)
        loss = F.l1_loss(pred, depth)
        opt.zero_grad()
        loss.backward()
        opt.step()
        outputs.append({"loss": loss.detach()})

    return Loop(step=step, model=model, optimizer=opt)


def applied() -> Loop:
    # the doctor's fix: `outputs.append({"loss": loss.item()})`
    return _loop(item=True)


def symptom(loop: Loop) -> bool:
    """The list holds the graph of every batch appended to it."""
    outputs = inspect.getclosurevars(loop.step).nonlocals["outputs"]
    return sum(graph_nodes(o["loss"]) for o in outputs) > 0
