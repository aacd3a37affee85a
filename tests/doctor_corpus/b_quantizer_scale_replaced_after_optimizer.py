"""Range initialisation replaces a quantizer's scale parameter after the optimizer took it.

Reported: https://github.com/openvinotoolkit/nncf/pull/327. The quantizers' range
initialisation can run after the optimizer received the model's parameters; it assigned a new
``nn.Parameter`` to the scale, so the optimizer kept updating the old scale object while the
model used the new one, which no optimizer held ("will break the gradient updates"). The merged
fix writes the initial value into the existing parameter instead of replacing it. Reproduced
minimally in our own code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/openvinotoolkit/nncf/pull/327"
KIND = "optimizer-misses-parameters"
ARCH = "other"
STATE = "attribute"
ERROR = None


class SymmetricQuantizer(nn.Module):
    """Fake-quantizes its input to 4 bits in [-scale, scale]; the scale is learned."""

    def __init__(self, replace_on_init: bool):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.levels = 7
        self.replace_on_init = replace_on_init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale.abs() + 1e-6
        q = torch.clamp(x / s, -1.0, 1.0) * self.levels
        q = q + (q.round() - q).detach()  # straight-through rounding
        return q / self.levels * s

    def init_range(self, x: torch.Tensor) -> None:
        value = x.detach().abs().amax().reshape(1)
        if self.replace_on_init:
            self.scale = nn.Parameter(value)  # doctor[buggy]: optimizer-misses-parameters
        else:
            with torch.no_grad():
                self.scale.copy_(value)  # the fix: set the value, keep the parameter


class QuantizedMLP(nn.Module):
    def __init__(self, replace_on_init: bool):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.quant = SymmetricQuantizer(replace_on_init)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.quant(self.fc1(x))))


@dataclass(kw_only=True)
class SnapshotLoop(Loop):
    """A loop that also keeps the model's parameters as they were before the run."""

    before: dict[str, torch.Tensor]


def _loop(replace_on_init: bool, build_after: bool = False) -> SnapshotLoop:
    torch.manual_seed(0)
    model = QuantizedMLP(replace_on_init)
    if not build_after:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calibration, _ = data(999)  # range initialisation, after the optimizer was built
    model.quant.init_range(model.fc1(calibration))
    if build_after:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(i: int) -> None:
        x, y = data(i)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    return SnapshotLoop(step=step, model=model, optimizer=optimizer, before=before)


def buggy() -> Loop:
    return _loop(replace_on_init=True)


def fixed() -> Loop:
    return _loop(replace_on_init=False)


def applied() -> Loop:
    # the doctor's fix, first option: "build the optimiser after the last change to the model"
    return _loop(replace_on_init=True, build_after=True)


def symptom(loop: Loop) -> bool:
    """True when some parameter of the model never changed over the run."""
    assert isinstance(loop, SnapshotLoop) and loop.model is not None
    return any(torch.equal(p, loop.before[n]) for n, p in loop.model.named_parameters())
