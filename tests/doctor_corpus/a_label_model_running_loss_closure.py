"""A label model's training loop sums the loss tensors into a running total for its log line.

Reported: https://github.com/BatsResearch/labelmodels/issues/4. The weak-supervision label model's
training loop kept ``running_loss += loss`` across an epoch's batches; the total is a tensor whose
graph links every batch's graph, so on a large enough training set the GPU ran out of memory. The
fix the maintainer merged is ``running_loss += loss.item()``.
Reproduced minimally in our own code (the total lives in the loop's enclosing scope).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, graph_nodes

SOURCE = "https://github.com/BatsResearch/labelmodels/issues/4"
KIND = "graph-carried-across-steps"
ARCH = "other"
STATE = "closure"
ERROR = None

SOURCES, CLASSES, BATCH = 8, 3, 16


class NaiveBayesLabelModel(nn.Module):
    """Votes of ``SOURCES`` noisy labelling functions (0 = abstain, 1..K = a class) explained by a
    latent true class: one accuracy per labelling function and a class balance."""

    def __init__(self):
        super().__init__()
        self.accuracy = nn.Parameter(torch.full((SOURCES,), 1.0))  # logit of P(vote right)
        self.balance = nn.Parameter(torch.zeros(CLASSES))

    def forward(self, votes: torch.Tensor) -> torch.Tensor:  # (B, S) -> log P(votes), (B,)
        right = F.logsigmoid(self.accuracy)
        wrong = F.logsigmoid(-self.accuracy) - math.log(CLASSES - 1)
        classes = torch.arange(1, CLASSES + 1).view(1, 1, CLASSES)
        v = votes.unsqueeze(-1)  # (B, S, 1)
        ll = torch.where(v == classes, right.view(1, -1, 1), wrong.view(1, -1, 1))
        ll = torch.where(v == 0, torch.zeros(()), ll).sum(1)  # (B, K)
        return torch.logsumexp(ll + F.log_softmax(self.balance, 0), dim=1)


def _votes(i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(i)
    truth = torch.randint(1, CLASSES + 1, (BATCH, 1), generator=g)
    noise = torch.randint(1, CLASSES + 1, (BATCH, SOURCES), generator=g)
    votes = torch.where(torch.rand(BATCH, SOURCES, generator=g) < 0.7, truth, noise)
    return torch.where(torch.rand(BATCH, SOURCES, generator=g) < 0.2, 0, votes)


def _loop(item: bool) -> Loop:
    torch.manual_seed(0)
    model = NaiveBayesLabelModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    running_loss = 0.0

    def step(i: int) -> None:
        nonlocal running_loss
        opt.zero_grad()
        loss = -model(_votes(i)).mean()
        loss.backward()
        opt.step()
        if not item:
            running_loss += loss  # doctor[buggy]: graph-carried-across-steps
        else:
            running_loss += loss.item()

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(item=False)


def fixed() -> Loop:
    torch.manual_seed(0)
    model = NaiveBayesLabelModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    running_loss = 0.0

    def step(i: int) -> None:
        nonlocal running_loss
        opt.zero_grad()
        loss = -model(_votes(i)).mean()
        loss.backward()
        opt.step()
        running_loss += loss.item()

    return Loop(step=step, model=model, optimizer=opt)


def applied() -> Loop:
    # the doctor's fix: `running_loss += loss.item()`
    return _loop(item=True)


def symptom(loop: Loop) -> bool:
    """The running total is a tensor holding the graph of every batch it summed."""
    return graph_nodes(inspect.getclosurevars(loop.step).nonlocals["running_loss"]) > 0
