"""A multi-task loop backs each task's loss up separately, the first with ``retain_graph=True``.

Reported: https://discuss.pytorch.org/t/multi-task-learning-whats-the-difference-between-jointly-backward-and-backward-with-retain-graph-true/28162.
A user training two heads on a shared trunk called ``loss1.backward(retain_graph=True)`` then
``loss2.backward()`` and asked how that differs from ``(loss1 + loss2).backward()``. The answers:
the gradients are the same (they add up through the shared part by the chain rule), the separate
calls only walk the shared part twice and keep its graph alive in between; the asker concluded
the joint backward is the better way. Reproduced minimally in our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = ("https://discuss.pytorch.org/t/multi-task-learning-whats-the-difference-between-"
          "jointly-backward-and-backward-with-retain-graph-true/28162")
KIND = "backward-per-loss"
ARCH = "multi-task"
STATE = "none"
ERROR = None


class TwoTasks(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.cls = nn.Linear(16, 3)
        self.reg = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.cls(h), self.reg(h).squeeze(-1)


def _setup() -> tuple[TwoTasks, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = TwoTasks()
    # instrumentation for symptom(), not part of the user's loop: count the passes
    model.trunk_forwards, model.trunk_backwards = [], []
    model.trunk.register_forward_hook(lambda *_: model.trunk_forwards.append(1))
    model.trunk[0].weight.register_hook(lambda g: model.trunk_backwards.append(1))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def _loop(summed: bool) -> Loop:
    model, opt = _setup()

    def step(i: int) -> None:
        x, y = data(i)
        logits, value = model(x)
        loss1 = F.cross_entropy(logits, y)
        loss2 = F.mse_loss(value, x.sum(1))
        opt.zero_grad()
        if not summed:
            loss1.backward(retain_graph=True)
            loss2.backward()  # doctor[buggy]: backward-per-loss
        else:
            (loss1 + loss2).backward()
        opt.step()

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(summed=False)


def fixed() -> Loop:
    model, opt = _setup()

    def step(i: int) -> None:
        x, y = data(i)
        logits, value = model(x)
        loss1 = F.cross_entropy(logits, y)
        loss2 = F.mse_loss(value, x.sum(1))
        opt.zero_grad()
        (loss1 + loss2).backward()
        opt.step()

    return Loop(step=step, model=model, optimizer=opt)


def applied() -> Loop:
    # the doctor's fix: "add the losses up and call backward() once on the sum"
    return _loop(summed=True)


def symptom(loop: Loop) -> bool:
    """Backward walked the shared trunk more often than the forward ran it."""
    return len(loop.model.trunk_backwards) > len(loop.model.trunk_forwards)
