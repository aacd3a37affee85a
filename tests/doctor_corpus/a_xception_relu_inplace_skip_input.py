"""An Xception-style block applies ``nn.ReLU(inplace=True)`` to an input its skip conv saved.

Reported: https://github.com/osmr/imgclsmob/issues/13. Training the collection's Xception raised
"one of the variables needed for gradient computation has been modified by an inplace
operation"; the models apply ``nn.ReLU(inplace=True)`` to tensors that are still needed. The
reporter found that removing ``inplace=True`` fixes it; the issue was labelled a bug and closed.
Reproduced minimally in our own code: the block's body starts with the in-place ReLU on ``x``,
which its 1x1 identity convolution already saved for its weight gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop

SOURCE = "https://github.com/osmr/imgclsmob/issues/13"
KIND = "inplace-on-saved"
ARCH = "cnn"
STATE = "none"
ERROR = "modified by an inplace operation"

BATCH, SIDE, CLASSES = 16, 4, 3


class XceptionBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.identity_conv = nn.Conv2d(cin, cout, 1, stride=2)
        self.activ = nn.ReLU(inplace=True)  # doctor[buggy]: inplace-on-saved
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.identity_conv(x)  # saves x to compute its weight's gradient
        x = self.activ(x)
        return self.conv(x) + identity


class XceptionBlockFixed(XceptionBlock):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout)
        self.activ = nn.ReLU()  # out of place: the skip conv's saved input stays intact


class XceptionBlockApplied(XceptionBlock):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout)
        self.activ = nn.ReLU(inplace=False)


class TinyXception(nn.Module):
    def __init__(self, block: type[XceptionBlock]):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = block(4, 8)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return (torch.randn(BATCH, 1, SIDE, SIDE, generator=g),
            torch.randint(0, CLASSES, (BATCH,), generator=g))


def _loop(block: type[XceptionBlock]) -> Loop:
    torch.manual_seed(0)
    model = TinyXception(block)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step(i: int) -> None:
        x, y = _batch(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(XceptionBlock)


def fixed() -> Loop:
    return _loop(XceptionBlockFixed)


def applied() -> Loop:
    # the doctor's fix: "here: `self.activ = nn.ReLU(inplace=False)`"
    return _loop(XceptionBlockApplied)
