"""``test()`` calls ``model.eval()`` and the next epoch's ``train()`` never calls ``model.train()``.

Reported: https://github.com/pytorch/tutorials/issues/1624. The quickstart loop calls
``train(...)`` then ``test(...)`` every epoch; ``test`` sets ``model.eval()`` and ``train``
never sets train mode, so from the second epoch on the model trains in eval mode (harmless in
the tutorial's model, which has no dropout, but not once a dropout layer is added). The fix
the reporter proposed (the issue has no maintainer answer) is ``model.train()`` at the start
of ``train()``. Reproduced minimally in our own code, with a dropout layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/pytorch/tutorials/issues/1624"
KIND = "eval-mode-training"
ARCH = "mlp"
STATE = "global"
ERROR = None


class NeuralNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.stack = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(x)


model: nn.Module | None = None  # the script's global model, rebuilt by buggy()/fixed()
loss_fn = nn.CrossEntropyLoss()


def train(batch, model: nn.Module, loss_fn, optimizer, set_train_mode: bool) -> None:
    if set_train_mode:
        model.train()  # the fix: train mode at the start of train()
    x, y = batch
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test(batch, model: nn.Module, loss_fn) -> float:
    model.eval()  # doctor[buggy]: eval-mode-training
    x, y = batch
    with torch.no_grad():
        return loss_fn(model(x), y).item()


@dataclass(kw_only=True)
class WatchedLoop(Loop):
    """A loop that also records the dropout's mode at every forward that builds a graph."""

    dropout_modes: list[bool] = field(default_factory=list)


def _loop(set_train_mode: bool, train_each_step: bool = False) -> WatchedLoop:
    global model
    torch.manual_seed(0)
    model = NeuralNetwork()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)

    def step(epoch: int) -> None:  # one step is one (one-batch) epoch of the quickstart
        if train_each_step:
            model.train()
        train(data(epoch), model, loss_fn, optimizer, set_train_mode)
        test(data(1000 + epoch), model, loss_fn)

    loop = WatchedLoop(step=step, model=model, optimizer=optimizer)

    def record(module: nn.Module, args: object, out: object) -> None:
        if torch.is_grad_enabled():
            loop.dropout_modes.append(module.training)

    model.stack[2].register_forward_hook(record)
    return loop


def buggy() -> Loop:
    return _loop(set_train_mode=False)


def fixed() -> Loop:
    return _loop(set_train_mode=True)


def applied() -> Loop:
    # the doctor's fix, its second option: `model.train()` at the start of every training step
    return _loop(set_train_mode=False, train_each_step=True)


def symptom(loop: Loop) -> bool:
    """True when some training forward ran with the dropout in eval mode (dropout off)."""
    assert isinstance(loop, WatchedLoop)
    return not all(loop.dropout_modes)
