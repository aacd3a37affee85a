"""``zero_grad()`` is forgotten, so every step applies the sum of all gradients so far.

Reported: https://github.com/pytorch/pytorch/issues/47175. The reporter calls forgetting
``zero_grad()`` (or zeroing once per epoch instead of every iteration) "an extremely nasty
bug" that nothing warns about, and asks for a warning when ``step()`` runs without a
``zero_grad()`` since the last one, silenced for deliberate gradient accumulation over
several mini-batches. The fix is to zero the gradients after each step; ``fixed()`` is the
deliberate accumulation the thread says must stay silent (two micro-batches per step, the loss
divided by two, ``zero_grad()`` after every ``step()``). Reproduced minimally in our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, StaleGradWatch, WatchedLoop, data

SOURCE = "https://github.com/pytorch/pytorch/issues/47175"
KIND = "grads-not-zeroed"
ARCH = "transformer"
STATE = "local"
ERROR = None

ACCUMULATE = 2  # micro-batches per optimizer step in fixed()


class TinyEncoder(nn.Module):
    """Each input feature is a token; one encoder layer, mean-pooled, then a class head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(1, 8)
        self.layer = nn.TransformerEncoderLayer(8, nhead=2, dim_feedforward=16, dropout=0.0,
                                                batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, 3)
        return self.head(self.layer(self.embed(x.unsqueeze(-1))).mean(dim=1))


def _loop(zero_grad: bool) -> Loop:
    torch.manual_seed(0)
    model = TinyEncoder()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(i: int) -> None:
        x, y = data(i)
        loss = F.cross_entropy(model(x), y)
        if zero_grad:
            optimizer.zero_grad()
        loss.backward()  # doctor[buggy]: grads-not-zeroed
        optimizer.step()

    return WatchedLoop(step=step, model=model, optimizer=optimizer,
                       watch=StaleGradWatch(optimizer))


def buggy() -> Loop:
    return _loop(zero_grad=False)


def fixed() -> Loop:
    torch.manual_seed(0)
    model = TinyEncoder()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(i: int) -> None:  # deliberate accumulation: a step every ACCUMULATE micro-batches
        x, y = data(i)
        loss = F.cross_entropy(model(x), y) / ACCUMULATE
        loss.backward()
        if (i + 1) % ACCUMULATE == 0:
            optimizer.step()
            optimizer.zero_grad()

    return WatchedLoop(step=step, model=model, optimizer=optimizer,
                       watch=StaleGradWatch(optimizer))


def applied() -> Loop:
    # doctor's fix: call `optimizer.zero_grad()` once per optimiser step, before the backward
    return _loop(zero_grad=True)


def symptom(loop: Loop) -> bool:
    """True when a step applied a gradient an earlier step had already applied."""
    assert isinstance(loop, WatchedLoop)
    return loop.watch.stale_steps > 0
