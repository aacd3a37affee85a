"""``optimizer.zero_grad()`` runs once per epoch, so within an epoch the gradients add up.

Reported: https://github.com/heartcored98/Standalone-DeepLearning/issues/11. The CIFAR-10 CNN
lab called ``optimizer.zero_grad()`` once at the top of each epoch, outside the loop over
batches, and then ``loss.backward()`` / ``optimizer.step()`` for every batch; the reporter
asked whether it should run before every ``backward()``. The maintainer agreed it was a
mistake and moved it into the batch loop in every lab that had it. Reproduced minimally in our
own code (one step of the loop is one short epoch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, StaleGradWatch, WatchedLoop, data

SOURCE = "https://github.com/heartcored98/Standalone-DeepLearning/issues/11"
KIND = "grads-not-zeroed"
ARCH = "cnn"
STATE = "local"
ERROR = None

BATCHES_PER_EPOCH = 3


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 4, 2)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x)).mean(dim=(2, 3))
        return self.fc(x)


def _loop(zero_at: str) -> WatchedLoop:
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def train_batch(x: torch.Tensor, y: torch.Tensor) -> None:
        if zero_at == "batch":
            optimizer.zero_grad()  # the fix: before every backward
        loss = F.cross_entropy(model(x.view(-1, 1, 4, 2)), y)
        if zero_at == "backward":
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def step(epoch: int) -> None:  # one short epoch
        if zero_at == "epoch":
            optimizer.zero_grad()  # doctor[buggy]: grads-not-zeroed
        for b in range(BATCHES_PER_EPOCH):
            train_batch(*data(BATCHES_PER_EPOCH * epoch + b))

    return WatchedLoop(step=step, model=model, optimizer=optimizer,
                       watch=StaleGradWatch(optimizer))


def buggy() -> Loop:
    return _loop(zero_at="epoch")


def fixed() -> Loop:
    return _loop(zero_at="batch")


def applied() -> Loop:
    # the doctor's fix: "move it where it runs once per optimiser step: just before the backward"
    return _loop(zero_at="backward")


def symptom(loop: Loop) -> bool:
    """True when a step applied a gradient an earlier step had already applied."""
    assert isinstance(loop, WatchedLoop)
    return loop.watch.stale_steps > 0
