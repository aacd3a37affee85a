"""The model's forward returns ``outputs.data``; ``Variable(loss, requires_grad=True)`` hides it.

Reported: https://github.com/huggingface/torchMoji/issues/21. Fine-tuning raised "element 0 of
tensors does not require grad and does not have a grad_fn" unless the loss was re-wrapped as
``loss = Variable(loss, requires_grad=True)``; with that line the error went away but the loss
stayed the same epoch after epoch. A commenter traced it to ``outputs = outputs.data`` at the
end of the model's ``forward`` (taken when ``return_tensor`` is set): removing those lines (and
with them the need for the re-wrap) made the loss improve. Reproduced minimally in our own
code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Variable

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/huggingface/torchMoji/issues/21"
KIND = "loss-cut-from-graph"
ARCH = "lstm"
STATE = "none"
ERROR = None


class TinyMoji(nn.Module):
    """An LSTM over the 8 input features as a sequence, classifying from its last state."""

    def __init__(self, cut: bool):
        super().__init__()
        self.lstm = nn.LSTM(1, 8, batch_first=True)
        self.out = nn.Linear(8, 3)
        self.return_tensor = True
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x.unsqueeze(-1))
        outputs = self.out(h[:, -1])
        if self.return_tensor and self.cut:
            outputs = outputs.data  # doctor[buggy]: loss-cut-from-graph
        return outputs


@dataclass(kw_only=True)
class SnapshotLoop(Loop):
    """A loop that also keeps the model's parameters as they were before the run."""

    before: dict[str, torch.Tensor]


def _loop(cut: bool) -> SnapshotLoop:
    torch.manual_seed(0)
    model = TinyMoji(cut)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def step(i: int) -> None:
        x, y = data(i)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if cut:
            loss = Variable(loss, requires_grad=True)  # the band-aid that silences the error
        loss.backward()
        optimizer.step()

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    return SnapshotLoop(step=step, model=model, optimizer=optimizer, before=before)


def buggy() -> Loop:
    return _loop(cut=True)


def fixed() -> Loop:
    return _loop(cut=False)


def applied() -> Loop:
    # the doctor's fix: "drop `.data` here ..., and drop the ... re-wrapping", as fixed() does
    return _loop(cut=False)


def symptom(loop: Loop) -> bool:
    """True when no parameter of the model changed over the run (nothing was trained)."""
    assert isinstance(loop, SnapshotLoop) and loop.model is not None
    return all(torch.equal(p, loop.before[n]) for n, p in loop.model.named_parameters())
