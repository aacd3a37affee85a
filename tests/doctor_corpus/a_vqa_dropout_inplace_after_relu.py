"""A VQA answer classifier puts ``nn.Dropout(inplace=True)`` right after a ReLU.

Reported: https://github.com/BierOne/bottom-up-attention-vqa/issues/6. Training raised "one of the
variables needed for gradient computation has been modified by an inplace operation: ...
which is output 0 of ReluBackward0": ReLU saves its output for backward and the in-place dropout
overwrote it. The fix given in the thread is ``nn.Dropout(dropout, inplace=False)`` in the
classifier. Reproduced minimally in our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/BierOne/bottom-up-attention-vqa/issues/6"
KIND = "inplace-on-saved"
ARCH = "mlp"
STATE = "none"
ERROR = "modified by an inplace operation"

HIDDEN, ANSWERS = 16, 3


class TinyVQA(nn.Module):
    """Question and image features fused by a product, then the answer classifier."""

    def __init__(self):
        super().__init__()
        self.q_net = nn.Linear(4, HIDDEN)
        self.v_net = nn.Linear(4, HIDDEN)
        self.classifier = nn.Sequential(
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Dropout(0.5, inplace=True),  # doctor[buggy]: inplace-on-saved
            nn.Linear(HIDDEN, ANSWERS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, v = x[:, :4], x[:, 4:]
        return self.classifier(self.q_net(q) * self.v_net(v))


class TinyVQAFixed(TinyVQA):
    def __init__(self):
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Dropout(0.5, inplace=False),
            nn.Linear(HIDDEN, ANSWERS),
        )


def _loop(cls: type[TinyVQA]) -> Loop:
    torch.manual_seed(0)
    model = cls()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def step(i: int) -> None:
        x, y = data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(TinyVQA)


def fixed() -> Loop:
    return _loop(TinyVQAFixed)


def applied() -> Loop:
    # the doctor's fix: "here: `nn.Dropout(0.5, inplace=False)`", as TinyVQAFixed builds it
    return _loop(TinyVQAFixed)
