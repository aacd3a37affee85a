"""The recommender's score goes through a sigmoid and then into ``BCEWithLogitsLoss``.

Reported: https://github.com/yudi-mars/daisyRec/pull/15. The model applied ``sigmoid`` to its
prediction while training with ``BCEWithLogitsLoss``, which applies the sigmoid itself; the PR
says the loss does not converge otherwise. Squashed twice, every prediction lands in
[0.5, 0.73], so no interaction can be scored as negative. The merged fix removes the sigmoid
from the model's output. Reproduced minimally in our own code; the line to change is the
sigmoid in ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tests.doctor_corpus.common import Loop

SOURCE = "https://github.com/yudi-mars/daisyRec/pull/15"
KIND = "probabilities-into-loss"
ARCH = "other"
STATE = "none"
ERROR = None

USERS, ITEMS = 10, 12


class MF(nn.Module):
    """Matrix factorisation: a user-item score is the dot product of their embeddings."""

    def __init__(self, sigmoid_output: bool):
        super().__init__()
        self.user = nn.Embedding(USERS, 8)
        self.item = nn.Embedding(ITEMS, 8)
        self.sigmoid_output = sigmoid_output

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        pred = (self.user(u) * self.item(i)).sum(-1)
        if self.sigmoid_output:
            pred = torch.sigmoid(pred)  # doctor[buggy]: probabilities-into-loss
        return pred


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    u = torch.randint(0, USERS, (16,), generator=g)
    it = torch.randint(0, ITEMS, (16,), generator=g)
    label = ((u + it) % 3 == 0).float()  # observed interaction or sampled negative
    return u, it, label


@dataclass(kw_only=True)
class WatchedLoop(Loop):
    """A loop that also keeps what the loss function was given at each step."""

    loss_inputs: list[torch.Tensor] = field(default_factory=list)


def _loop(sigmoid_output: bool) -> WatchedLoop:
    torch.manual_seed(0)
    model = MF(sigmoid_output)
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def step(i: int) -> None:
        u, it, label = _batch(i)
        optimizer.zero_grad()
        loss = criterion(model(u, it), label)
        loss.backward()
        optimizer.step()

    loop = WatchedLoop(step=step, model=model, optimizer=optimizer)
    criterion.register_forward_hook(
        lambda module, args, out: loop.loss_inputs.append(args[0].detach().clone()))
    return loop


def buggy() -> Loop:
    return _loop(sigmoid_output=True)


def fixed() -> Loop:
    return _loop(sigmoid_output=False)


def applied() -> Loop:
    # the doctor's fix: "give the loss the logits (the output before the ... sigmoid)"
    return _loop(sigmoid_output=False)


def symptom(loop: Loop) -> bool:
    """True when every score given to BCEWithLogitsLoss was in [0, 1]: the loss's own sigmoid
    then maps each to a probability of at least 0.5, so nothing is ever predicted negative."""
    assert isinstance(loop, WatchedLoop)
    return bool(loop.loss_inputs) and all(
        bool(((s >= 0) & (s <= 1)).all()) for s in loop.loss_inputs)
