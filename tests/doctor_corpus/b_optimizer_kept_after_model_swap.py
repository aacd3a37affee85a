"""The network is swapped for a new one after the optimizer was built on the old one.

Reported: https://github.com/pytorch/pytorch/issues/54765. The user built
``optim.Adam(net1.parameters())``, later rebound ``net1`` to a different network to change
its structure during training, kept the old optimizer, and asked whether it still optimizes
the new network (it ran without error). The answer: the optimizer must be created again, since
it knows nothing about the new network's parameters; ``fixed()`` rebuilds it right after the
swap. Reproduced minimally in our own code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/pytorch/pytorch/issues/54765"
KIND = "optimizer-misses-parameters"
ARCH = "mlp"
STATE = "local"
ERROR = None


class Net(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(8, hidden)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@dataclass(kw_only=True)
class SnapshotLoop(Loop):
    """A loop that also keeps the trained model's parameters as they were before the run."""

    before: dict[str, torch.Tensor]


def _loop(rebuild_optimizer: bool, build_after: bool = False) -> SnapshotLoop:
    torch.manual_seed(0)
    net = Net(hidden=8)  # the first network
    if not build_after:
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-2)
    net = Net(hidden=16)  # doctor[buggy]: optimizer-misses-parameters
    if build_after:
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-2)
    if rebuild_optimizer:
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-2)  # the fix

    def step(i: int) -> None:
        x, y = data(i)
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()

    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    return SnapshotLoop(step=step, model=net, optimizer=optimizer, before=before)


def buggy() -> Loop:
    return _loop(rebuild_optimizer=False)


def fixed() -> Loop:
    return _loop(rebuild_optimizer=True)


def applied() -> Loop:
    # the doctor's fix, first option: "build the optimiser after the last change to the model"
    return _loop(rebuild_optimizer=False, build_after=True)


def symptom(loop: Loop) -> bool:
    """True when some parameter of the trained network never changed over the run."""
    assert isinstance(loop, SnapshotLoop) and loop.model is not None
    return any(torch.equal(p, loop.before[n]) for n, p in loop.model.named_parameters())
