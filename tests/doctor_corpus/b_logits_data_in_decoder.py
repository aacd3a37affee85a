"""The decoder returns ``torch.stack(logits, 1).data``, so the loss has no path to the weights.

Reported: https://github.com/facebookresearch/inversecooking/issues/3. The transformer
decoder stacked its per-step logits and returned them through ``.data``, which drops them
from the graph: ``requires_grad`` is False and training cannot run ``loss.backward()``. The
maintainers fixed it (commit 3ab629c) by returning the stacked logits without ``.data``.
Reproduced minimally in our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/facebookresearch/inversecooking/issues/3"
KIND = "loss-cut-from-graph"
ARCH = "transformer"
STATE = "none"
ERROR = "does not require grad"

VOCAB, STEPS = 5, 4


class TinyDecoder(nn.Module):
    """Decodes STEPS tokens from an 8-feature input, one step of logits at a time."""

    def __init__(self, keep_graph: bool):
        super().__init__()
        self.memory = nn.Linear(1, 8)
        self.embed = nn.Embedding(VOCAB, 8)
        self.layer = nn.TransformerDecoderLayer(8, nhead=2, dim_feedforward=16, dropout=0.0,
                                                batch_first=True)
        self.head = nn.Linear(8, VOCAB)
        self.keep_graph = keep_graph

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        memory = self.memory(x.unsqueeze(-1))  # (B, 8, 8): each feature a memory slot
        logits = []
        for t in range(STEPS):  # teacher forcing on the tokens before step t
            h = self.layer(self.embed(tokens[:, : t + 1]), memory)
            logits.append(self.head(h[:, -1]))
        if self.keep_graph:
            return torch.stack(logits, 1)  # the fix
        return torch.stack(logits, 1).data  # doctor[buggy]: loss-cut-from-graph


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = data(i)
    target = (x[:, :STEPS] > 0).long() + 2 * (x[:, STEPS:] > 0).long()  # (B, STEPS) in 0..3
    start = torch.full((x.shape[0], 1), VOCAB - 1)  # the start token
    return x, torch.cat([start, target[:, :-1]], 1), target


def _loop(keep_graph: bool) -> Loop:
    torch.manual_seed(0)
    model = TinyDecoder(keep_graph)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(i: int) -> None:
        x, inputs, target = _batch(i)
        logits = model(x, inputs)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return Loop(step=step, model=model, optimizer=optimizer)


def buggy() -> Loop:
    return _loop(keep_graph=False)


def fixed() -> Loop:
    return _loop(keep_graph=True)


def applied() -> Loop:
    # the doctor's fix: "drop `.data` here", as fixed() does
    return _loop(keep_graph=True)
