"""The loss is taken on ``argmax`` of the predicted bins, which has no gradient.

Reported: https://github.com/LZGMatrix/BOP19_CDPN_2019ICCV/issues/4. The network predicts,
for every pixel, scores over coordinate bins; the user's training script turned them into
coordinates with ``torch.argmax`` over the bins and computed the loss on those, and
``loss.backward()`` raised "element 0 of tensors does not require grad and does not have a
grad_fn". The author answered that ``argmax`` is not differentiable and the loss must be
taken before it (on the bin scores). Reproduced minimally in our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/LZGMatrix/BOP19_CDPN_2019ICCV/issues/4"
KIND = "loss-cut-from-graph"
ARCH = "cnn"
STATE = "none"
ERROR = "does not require grad"

BINS = 8


class BinNet(nn.Module):
    """Scores over BINS coordinate bins for every position of a 1-channel signal."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 3, padding=1)
        self.bins = nn.Conv1d(8, BINS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, L) -> (B, BINS, L)
        return self.bins(F.relu(self.conv(x)))


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, _ = data(i)
    coord = torch.tanh(x)  # the ground-truth coordinate of every position, in [-1, 1]
    return x.unsqueeze(1), coord


def _to_bin(coord: torch.Tensor) -> torch.Tensor:
    return ((coord + 1) / 2 * (BINS - 1)).round().long()


def _loop(loss_on_scores: bool) -> Loop:
    torch.manual_seed(0)
    model = BinNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(i: int) -> None:
        x, coord = _batch(i)
        scores = model(x)
        pred_bin = torch.argmax(scores, dim=1)  # doctor[buggy]: loss-cut-from-graph
        pred = 2.0 * pred_bin.float() / (BINS - 1) - 1.0  # back to [-1, 1]
        if not loss_on_scores:
            loss = F.l1_loss(pred, coord)
        else:
            loss = F.cross_entropy(scores, _to_bin(coord))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return Loop(step=step, model=model, optimizer=optimizer)


def buggy() -> Loop:
    return _loop(loss_on_scores=False)


def fixed() -> Loop:
    torch.manual_seed(0)
    model = BinNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(i: int) -> None:
        x, coord = _batch(i)
        scores = model(x)
        loss = F.cross_entropy(scores, _to_bin(coord))  # the loss before argmax, on the bins
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return Loop(step=step, model=model, optimizer=optimizer)


def applied() -> Loop:
    # the doctor's fix: the loss from the scores (`cross_entropy(scores, target)`, the bins)
    return _loop(loss_on_scores=True)
