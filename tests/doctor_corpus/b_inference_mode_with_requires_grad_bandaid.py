"""A fine-tuning step runs under ``@torch.inference_mode()``; ``requires_grad_`` hides it.

Reported: https://github.com/replicate/cog/issues/1681. A prediction that fine-tunes a model
raised "element 0 of tensors does not require grad and does not have a grad_fn" at
``loss.backward()``; calling ``loss.requires_grad_(True)`` silenced it, but the gradients were
None, the weights were not updated and the loss never decreased. The reporter found the cause:
an ``inference_mode`` decorator over the predict function (no graph is recorded under it);
removing the decorator fixed it. Reproduced minimally in our own code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/replicate/cog/issues/1681"
KIND = "loss-cut-from-graph"
ARCH = "mlp"
STATE = "plain-object"
ERROR = None


class Predictor:
    """A model server's predictor whose ``predict`` fine-tunes the model on what it gets."""

    def __init__(self, bandaid: bool = True):
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.bandaid = bandaid

    @torch.inference_mode()  # doctor[buggy]: loss-cut-from-graph
    def predict(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return self._fit(x, y)

    def predict_with_grad(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return self._fit(x, y)  # the fix: the same method without the decorator

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.model(x), y)
        if self.bandaid:
            loss.requires_grad_(True)  # the band-aid that silenced the error
        loss.backward()
        self.optimizer.step()
        return loss.item()


@dataclass(kw_only=True)
class SnapshotLoop(Loop):
    """A loop that also keeps the model's parameters as they were before the run."""

    before: dict[str, torch.Tensor]


def _loop(decorated: bool, bandaid: bool = True) -> SnapshotLoop:
    torch.manual_seed(0)
    predictor = Predictor(bandaid)
    predict = predictor.predict if decorated else predictor.predict_with_grad

    def step(i: int) -> None:
        predict(*data(i))

    before = {n: p.detach().clone() for n, p in predictor.model.named_parameters()}
    return SnapshotLoop(step=step, model=predictor.model, optimizer=predictor.optimizer,
                        before=before)


def buggy() -> Loop:
    return _loop(decorated=True)


def fixed() -> Loop:
    return _loop(decorated=False)


def applied() -> Loop:
    # doctor's fix: forward and loss outside the decorator; drop the `requires_grad_(True)`
    return _loop(decorated=False, bandaid=False)


def symptom(loop: Loop) -> bool:
    """True when no parameter of the model changed over the run (nothing was trained)."""
    assert isinstance(loop, SnapshotLoop) and loop.model is not None
    return all(torch.equal(p, loop.before[n]) for n, p in loop.model.named_parameters())
