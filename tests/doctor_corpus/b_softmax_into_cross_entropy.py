"""The model ends in a softmax and its probabilities go into ``nn.CrossEntropyLoss``.

Reported: https://github.com/bowang-lab/Transformer-GCN-QA/pull/32. The question-answering
model scored each candidate node with a graph network and applied a softmax at its output,
not knowing that ``CrossEntropyLoss`` applies (log-)softmax itself; the PR says the second
softmax likely smoothed the scores and weakened the gradient signal. The merged fix removes
the softmax from the model so the loss gets the raw scores. Reproduced minimally in our own
code; the line to change is the softmax in ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/bowang-lab/Transformer-GCN-QA/pull/32"
KIND = "probabilities-into-loss"
ARCH = "other"
STATE = "none"
ERROR = None

NODES = 8


def _ring_adjacency(n: int) -> torch.Tensor:
    a = torch.eye(n) + torch.eye(n).roll(1, 0) + torch.eye(n).roll(-1, 0)
    return a / a.sum(1, keepdim=True)


class CandidateGCN(nn.Module):
    """Two graph convolutions over the candidate nodes, then one score per candidate."""

    def __init__(self, softmax_output: bool):
        super().__init__()
        self.register_buffer("adj", _ring_adjacency(NODES))
        self.embed = nn.Linear(1, 8)
        self.gc1 = nn.Linear(8, 8)
        self.gc2 = nn.Linear(8, 8)
        self.score = nn.Linear(8, 1)
        self.softmax_output = softmax_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, NODES) node features
        h = self.embed(x.unsqueeze(-1))  # (B, NODES, 8)
        h = torch.relu(self.adj @ self.gc1(h))
        h = torch.relu(self.adj @ self.gc2(h))
        scores = self.score(h).squeeze(-1)  # (B, NODES)
        if self.softmax_output:
            scores = torch.softmax(scores, dim=-1)  # doctor[buggy]: probabilities-into-loss
        return scores


@dataclass(kw_only=True)
class WatchedLoop(Loop):
    """A loop that also keeps what the loss function was given at each step."""

    loss_inputs: list[torch.Tensor] = field(default_factory=list)


def _loop(softmax_output: bool) -> WatchedLoop:
    torch.manual_seed(0)
    model = CandidateGCN(softmax_output)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def step(i: int) -> None:
        x, _ = data(i, width=NODES)
        answer = x.argmax(dim=1)  # the right candidate: the node with the largest feature
        optimizer.zero_grad()
        loss = criterion(model(x), answer)
        loss.backward()
        optimizer.step()

    loop = WatchedLoop(step=step, model=model, optimizer=optimizer)
    criterion.register_forward_hook(
        lambda module, args, out: loop.loss_inputs.append(args[0].detach().clone()))
    return loop


def buggy() -> Loop:
    return _loop(softmax_output=True)


def fixed() -> Loop:
    return _loop(softmax_output=False)


def applied() -> Loop:
    # the doctor's fix: "give the loss the logits (the output before the softmax ...)"
    return _loop(softmax_output=False)


def symptom(loop: Loop) -> bool:
    """True when CrossEntropyLoss was given probabilities (rows >= 0 summing to 1), which it
    softmaxes again: its loss can then never fall below log(1 + (NODES - 1) / e)."""
    assert isinstance(loop, WatchedLoop)
    return bool(loop.loss_inputs) and all(
        bool((s >= 0).all()) and torch.allclose(s.sum(-1), torch.ones(s.shape[0]), atol=1e-5)
        for s in loop.loss_inputs)
