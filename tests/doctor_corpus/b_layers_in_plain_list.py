"""Hidden layers kept in a plain Python list are not registered, so nothing trains them.

Reported: https://github.com/pytorch/pytorch/issues/715. A module built its hidden layers in a
``for`` loop into ``self.hids = []`` and found they were missing from ``parameters()`` (and so
from the optimizer); only the classifier assigned directly to ``self`` showed up. The answer
(the issue was closed as expected behaviour): wrap the list in ``nn.ModuleList`` so the layers
are registered. Reproduced minimally in our own code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/pytorch/pytorch/issues/715"
KIND = "unregistered-parameter"
ARCH = "mlp"
STATE = "list"
ERROR = None


class Net(nn.Module):
    def __init__(self, n_layers: int, registered: bool):
        super().__init__()
        hids = [nn.Linear(8, 8) for _ in range(n_layers)]
        if registered:
            self.hids = nn.ModuleList(hids)  # the fix
        else:
            self.hids = hids  # doctor[buggy]: unregistered-parameter
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hids:
            x = torch.tanh(layer(x))
        return self.classifier(x)


@dataclass(kw_only=True)
class SnapshotLoop(Loop):
    """A loop that also keeps the hidden layers and their weights before the run."""

    hidden: list[nn.Linear]
    hidden_before: list[torch.Tensor]


def _loop(registered: bool) -> SnapshotLoop:
    torch.manual_seed(0)
    model = Net(n_layers=2, registered=registered)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(i: int) -> None:
        x, y = data(i)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    hidden = list(model.hids)
    return SnapshotLoop(step=step, model=model, optimizer=optimizer, hidden=hidden,
                        hidden_before=[h.weight.detach().clone() for h in hidden])


def buggy() -> Loop:
    return _loop(registered=False)


def fixed() -> Loop:
    return _loop(registered=True)


def applied() -> Loop:
    # the doctor's fix: "keep them in an `nn.ModuleList` (`self.hids = nn.ModuleList(...)`)"
    return _loop(registered=True)


def symptom(loop: Loop) -> bool:
    """True when some hidden layer's weight never changed over the run."""
    assert isinstance(loop, SnapshotLoop)
    return any(torch.equal(h.weight, w) for h, w in zip(loop.hidden, loop.hidden_before,
                                                        strict=True))
