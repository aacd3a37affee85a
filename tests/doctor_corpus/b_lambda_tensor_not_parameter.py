"""A learned weighting is a plain tensor with ``requires_grad=True``, not an ``nn.Parameter``.

Reported: https://github.com/CWanli/RecoNet/issues/10. The reconstruction module kept the
weights of its rank-1 components as ``self.lam = torch.ones(self.rank, requires_grad=True)``;
a plain tensor attribute is not registered, so it is not in ``model.parameters()``, the
optimizer never updates it (and a saved checkpoint loses it). The reporter's fix is
``nn.Parameter(torch.ones(self.rank))``; the issue has no maintainer answer. Reproduced
minimally in our own code (the reported ``forward`` also reassigned ``self.lam`` each call,
which we leave out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/CWanli/RecoNet/issues/10"
KIND = "unregistered-parameter"
ARCH = "cnn"
STATE = "attribute"
ERROR = None

RANK = 4


class LowRankGate(nn.Module):
    """A gate rebuilt as a weighted sum of RANK components, each from a 1x1 convolution."""

    def __init__(self, channels: int, registered: bool):
        super().__init__()
        self.parts = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in range(RANK))
        if registered:
            self.lam = nn.Parameter(torch.ones(RANK))  # the fix
        else:
            self.lam = torch.ones(RANK, requires_grad=True)  # doctor[buggy]: unregistered-parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L)
        lam = F.softmax(self.lam, -1)
        pooled = x.mean(dim=2, keepdim=True)
        gate = sum(lam[r] * torch.sigmoid(self.parts[r](pooled)) for r in range(RANK))
        return torch.cat([x, F.relu(x * gate)], dim=1)


class Net(nn.Module):
    def __init__(self, registered: bool):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.gate = LowRankGate(4, registered)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 8) -> (B, 3)
        h = self.gate(F.relu(self.conv(x.unsqueeze(1))))
        return self.head(h.mean(dim=2))


@dataclass(kw_only=True)
class SnapshotLoop(Loop):
    """A loop that also keeps the component weights as they were before the run."""

    lam_before: torch.Tensor


def _loop(registered: bool) -> SnapshotLoop:
    torch.manual_seed(0)
    model = Net(registered)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def step(i: int) -> None:
        x, y = data(i)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return SnapshotLoop(step=step, model=model, optimizer=optimizer,
                        lam_before=model.gate.lam.detach().clone())


def buggy() -> Loop:
    return _loop(registered=False)


def fixed() -> Loop:
    return _loop(registered=True)


def applied() -> Loop:
    # the doctor's fix (its first option): "make it an `nn.Parameter`", as fixed() does
    return _loop(registered=True)


def symptom(loop: Loop) -> bool:
    """True when the component weights never changed over the run."""
    assert isinstance(loop, SnapshotLoop) and loop.model is not None
    return torch.equal(loop.model.gate.lam, loop.lam_before)
