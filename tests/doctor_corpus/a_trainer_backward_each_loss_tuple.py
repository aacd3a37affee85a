"""A trainer calls ``backward()`` on each loss of the tuple a model returns for one forward.

Reported: https://github.com/mosaicml/composer/pull/1240. Composer's trainer accepted models
whose loss is a tuple of losses, but ran ``backward()`` on each of them in turn; when the losses
share part of one forward's graph the second call fails with "Trying to backward through the
graph a second time". The merged change sums the losses and calls ``backward()`` once on the
sum (a reviewer noted the gradients should be the same). Reproduced minimally in our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/mosaicml/composer/pull/1240"
KIND = "backward-per-loss"
ARCH = "multi-task"
STATE = "none"
ERROR = "backward through the graph a second time"


class AutoencoderClassifier(nn.Module):
    """An encoder shared by a reconstruction loss and a classification loss."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 4), nn.Tanh())
        self.decoder = nn.Linear(4, 8)
        self.classifier = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.decoder(z), self.classifier(z)

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: tuple
             ) -> tuple[torch.Tensor, torch.Tensor]:
        (recon, logits), (x, y) = outputs, batch
        return F.mse_loss(recon, x), F.cross_entropy(logits, y)


def _setup() -> tuple[AutoencoderClassifier, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = AutoencoderClassifier()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def _loop(summed: bool) -> Loop:
    model, opt = _setup()

    def step(i: int) -> None:
        batch = data(i)
        losses = model.loss(model(batch[0]), batch)
        opt.zero_grad()
        if not summed:
            for loss in losses:
                loss.backward()  # doctor[buggy]: backward-per-loss
        else:
            sum(losses).backward()
        opt.step()

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(summed=False)


def fixed() -> Loop:
    model, opt = _setup()

    def step(i: int) -> None:
        batch = data(i)
        losses = model.loss(model(batch[0]), batch)
        opt.zero_grad()
        total = sum(losses)
        total.backward()
        opt.step()

    return Loop(step=step, model=model, optimizer=opt)


def applied() -> Loop:
    # the doctor's fix: "add the losses up and call backward() once on the sum"
    return _loop(summed=True)
