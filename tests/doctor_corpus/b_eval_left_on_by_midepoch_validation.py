"""Validation in the middle of an epoch leaves the model in eval mode for the rest of it.

Reported: https://github.com/wkentaro/pytorch-fcn/pull/56. The trainer validated every few
iterations, not only at the end of an epoch, and its ``validate()`` called ``model.eval()``;
``model.train()`` ran only at the top of each epoch, so every iteration after a mid-epoch
validation trained with dropout off ("Training will have no effect until end of the epoch").
The maintainer fixed it (commit d10dd30) by restoring train mode when validation ends.
Reproduced minimally in our own code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/wkentaro/pytorch-fcn/pull/56"
KIND = "eval-mode-training"
ARCH = "cnn"
STATE = "plain-object"
ERROR = None

ITERS_PER_EPOCH = 6  # the doctor's steps all fall in one epoch
VAL_INTERVAL = 2  # validate every VAL_INTERVAL iterations, mid-epoch


class TinyFCN(nn.Module):
    """Fully convolutional: a class score for every position of a 1-channel signal."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.score = nn.Conv1d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, L) -> (B, 3, L)
        return self.score(self.drop(F.relu(self.conv(x))))


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, _ = data(i)
    target = (x > -0.5).long() + (x > 0.5).long()  # a label per position
    return x.unsqueeze(1), target


class Trainer:
    """The reported trainer's shape: train mode set per epoch, validation every few iterations."""

    def __init__(self, model: nn.Module, optim: torch.optim.Optimizer, back_to_train: bool):
        self.model, self.optim = model, optim
        self.back_to_train = back_to_train
        self.iteration = 0
        self.val_loss = float("nan")

    def validate(self) -> None:
        self.model.eval()  # doctor[buggy]: eval-mode-training
        with torch.no_grad():
            x, y = _batch(1000)
            self.val_loss = F.cross_entropy(self.model(x), y).item()
        if self.back_to_train:
            self.model.train()  # the fix: back to train mode when validation ends

    def train_iteration(self, i: int) -> None:
        if self.iteration % ITERS_PER_EPOCH == 0:
            self.model.train()  # once per epoch, as in the report
        x, y = _batch(i)
        self.optim.zero_grad()
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optim.step()
        self.iteration += 1
        if self.iteration % VAL_INTERVAL == 0:
            self.validate()


@dataclass(kw_only=True)
class WatchedLoop(Loop):
    """A loop that also records the dropout's mode at every forward that builds a graph."""

    dropout_modes: list[bool] = field(default_factory=list)


def _loop(back_to_train: bool) -> WatchedLoop:
    torch.manual_seed(0)
    model = TinyFCN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, opt, back_to_train)
    loop = WatchedLoop(step=trainer.train_iteration, model=model, optimizer=opt)

    def record(module: nn.Module, args: object, out: object) -> None:
        if torch.is_grad_enabled():  # a training forward, not the no_grad validation
            loop.dropout_modes.append(module.training)

    model.drop.register_forward_hook(record)
    return loop


def buggy() -> Loop:
    return _loop(back_to_train=False)


def fixed() -> Loop:
    return _loop(back_to_train=True)


def applied() -> Loop:
    # the doctor's fix, first option: `self.model.train()` at the end of `validate`
    return _loop(back_to_train=True)


def symptom(loop: Loop) -> bool:
    """True when some training forward ran with the dropout in eval mode (dropout off)."""
    assert isinstance(loop, WatchedLoop)
    return not all(loop.dropout_modes)
