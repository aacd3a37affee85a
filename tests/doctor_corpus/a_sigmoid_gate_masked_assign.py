"""A gated layer zeroes small sigmoid gates with a masked assignment into the sigmoid's output.

Reported: https://github.com/pytorch/pytorch/issues/9391. Assigning into part of a sigmoid's
output (``b = a.sigmoid(); b[1] = 2``) made backward raise "one of the variables needed for
gradient computation has been modified by an inplace operation", while the same assignment after
the hand-written ``1 / (exp(-a) + 1)`` did not: ``sigmoid`` saves its output to compute its
gradient, the hand-written form does not. The write has to build a new tensor instead (here
``masked_fill``). Reproduced minimally in our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/pytorch/pytorch/issues/9391"
KIND = "inplace-on-saved"
ARCH = "mlp"
STATE = "none"
ERROR = "modified by an inplace operation"

THRESHOLD = 0.3


class SparseGate(nn.Module):
    clone_first = False  # applied(): the doctor's fix, a clone before the masked write

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(8, 8)
        self.value = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(x))  # sigmoid saves g for its backward
        if self.clone_first:
            g = g.clone()
        g[g < THRESHOLD] = 0.0  # doctor[buggy]: inplace-on-saved
        return self.head(g * self.value(x))


class SparseGateCloned(SparseGate):
    clone_first = True


class SparseGateFixed(SparseGate):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(x))
        g = g.masked_fill(g < THRESHOLD, 0.0)  # a new tensor; the saved g is left alone
        return self.head(g * self.value(x))


def _loop(cls: type[SparseGate]) -> Loop:
    torch.manual_seed(0)
    model = cls()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(i: int) -> None:
        x, y = data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(SparseGate)


def fixed() -> Loop:
    return _loop(SparseGateFixed)


def applied() -> Loop:
    # the doctor's fix: "here: `g = g.clone()` before `g[g < THRESHOLD] = 0.0`"
    return _loop(SparseGateCloned)
