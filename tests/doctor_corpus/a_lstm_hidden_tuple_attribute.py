"""An LSTM classifier keeps its ``(h, c)`` tuple on the module and feeds it to the next batch.

Reported: https://github.com/sgadgil6/cnslab_fmri/issues/4. The fMRI LSTM stored the state the
LSTM returned in ``self.hidden`` and passed it back in on the next forward; ``loss.backward()``
then failed with "Trying to backward through the graph a second time", and
``retain_graph=True`` ran out of memory instead. The accepted fix (merged as the repository's
"lstm fix" pull request) stops passing the stored state: each batch starts from a fresh state.
Reproduced minimally in our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop

SOURCE = "https://github.com/sgadgil6/cnslab_fmri/issues/4"
KIND = "graph-carried-across-steps"
ARCH = "lstm"
STATE = "attribute"
ERROR = "backward through the graph a second time"

BATCH, TIME, WIDTH = 16, 5, 8


class SeriesLSTM(nn.Module):
    """Reads a (B, T, W) series of region signals, says one of two classes."""

    detach_hidden = False  # applied(): the doctor's fix, at the start of the forward

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(WIDTH, WIDTH, batch_first=True)
        self.linear = nn.Linear(WIDTH, 1)
        self.hidden = (torch.randn(1, BATCH, WIDTH), torch.randn(1, BATCH, WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.detach_hidden:
            self.hidden = tuple(t.detach() for t in self.hidden)
        out, self.hidden = self.lstm(x, self.hidden)  # doctor[buggy]: graph-carried-across-steps
        return torch.sigmoid(self.linear(out[:, -1]))


class DetachedStateLSTM(SeriesLSTM):
    detach_hidden = True


class FreshStateLSTM(SeriesLSTM):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # no state passed in: every batch starts from zeros
        return torch.sigmoid(self.linear(out[:, -1]))


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    x = torch.randn(BATCH, TIME, WIDTH, generator=g)
    return x, (x[:, :, 0].mean(1, keepdim=True) > 0).float()


def _loop(cls: type[SeriesLSTM]) -> Loop:
    torch.manual_seed(0)
    model = cls()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)

    def step(i: int) -> None:
        x, y = _batch(i)
        loss = F.binary_cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(SeriesLSTM)


def fixed() -> Loop:
    return _loop(FreshStateLSTM)


def applied() -> Loop:
    # doctor's fix: `self.hidden = tuple(t.detach() for t in self.hidden)` where steps read it
    return _loop(DetachedStateLSTM)
