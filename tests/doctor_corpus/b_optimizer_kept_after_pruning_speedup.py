"""Pruning replaces layers with smaller copies after the optimizer was built; they never train.

Reported: https://github.com/microsoft/nni/issues/4521. After pruning, the speed-up step
replaced the pruned layers of the model with smaller ones (copying the kept weights) and the
user fine-tuned with the optimizer built before, so the pruned model's parameters were not
updated. The maintainer explained that the optimizer still holds the replaced layers'
parameters and that the fix is a new optimizer built after the speed-up, which solved it.
Reproduced minimally in our own code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/microsoft/nni/issues/4521"
KIND = "optimizer-misses-parameters"
ARCH = "cnn"
STATE = "attribute"
ERROR = None


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, L)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.mean(dim=2))


def speed_up(model: ConvNet, keep: int) -> None:
    """Replace conv1 by a conv with its ``keep`` largest filters, and conv2 to match."""
    old1, old2 = model.conv1, model.conv2
    kept = old1.weight.detach().abs().sum(dim=(1, 2)).topk(keep).indices
    new1 = nn.Conv1d(1, keep, 3, padding=1)
    new2 = nn.Conv1d(keep, old2.out_channels, 3, padding=1)
    with torch.no_grad():
        new1.weight.copy_(old1.weight[kept])
        new1.bias.copy_(old1.bias[kept])
        new2.weight.copy_(old2.weight[:, kept])
        new2.bias.copy_(old2.bias)
    model.conv1, model.conv2 = new1, new2


@dataclass(kw_only=True)
class SnapshotLoop(Loop):
    """A loop that also keeps the model's parameters as they were before the run."""

    before: dict[str, torch.Tensor]


def _loop(new_optimizer: bool, build_after: bool = False) -> SnapshotLoop:
    torch.manual_seed(0)
    model = ConvNet()
    if not build_after:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    speed_up(model, keep=4)  # doctor[buggy]: optimizer-misses-parameters
    if build_after:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if new_optimizer:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # the fix

    def step(i: int) -> None:  # fine-tuning the pruned model
        x, y = data(i)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x.unsqueeze(1)), y)
        loss.backward()
        optimizer.step()

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    return SnapshotLoop(step=step, model=model, optimizer=optimizer, before=before)


def buggy() -> Loop:
    return _loop(new_optimizer=False)


def fixed() -> Loop:
    return _loop(new_optimizer=True)


def applied() -> Loop:
    # the doctor's fix, first option: "build the optimiser after the last change to the model"
    return _loop(new_optimizer=False, build_after=True)


def symptom(loop: Loop) -> bool:
    """True when some parameter of the fine-tuned model never changed over the run."""
    assert isinstance(loop, SnapshotLoop) and loop.model is not None
    return any(torch.equal(p, loop.before[n]) for n, p in loop.model.named_parameters())
