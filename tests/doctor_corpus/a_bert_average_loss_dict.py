"""A pretraining loop adds each step's loss tensor in place into an ``average_loss`` stat.

Reported: https://github.com/NVIDIA/DeepLearningExamples/issues/1102. In the BERT pretraining
script the process's memory grew after every optimisation step until it threatened the machine;
the culprit was ``stats.device_stat('average_loss').add_(loss)``: the stat tensor joins each
loss's graph, so every earlier step's graph stays alive. The maintainers accepted the
reporter's fix, ``add_(loss.clone().detach())``. Reproduced minimally in our own code.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, graph_nodes

SOURCE = "https://github.com/NVIDIA/DeepLearningExamples/issues/1102"
KIND = "graph-carried-across-steps"
ARCH = "transformer"
STATE = "dict"
ERROR = None

VOCAB, WIDTH, BATCH, SEQ = 16, 8, 16, 6


class TinyBert(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.layer = nn.TransformerEncoderLayer(WIDTH, nhead=2, dim_feedforward=16, dropout=0.0,
                                                batch_first=True)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, S, V)
        return self.head(self.layer(self.embed(tokens)))


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-token batch: inputs with every third token masked (id 0), and the originals."""
    g = torch.Generator().manual_seed(i)
    tokens = torch.randint(1, VOCAB, (BATCH, SEQ), generator=g)
    masked = tokens.clone()
    masked[:, ::3] = 0
    return masked, tokens


def _setup() -> tuple[TinyBert, torch.optim.Optimizer, dict]:
    torch.manual_seed(0)
    model = TinyBert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt, {"average_loss": torch.zeros(()), "steps": 0}


def _loop(item: bool) -> Loop:
    model, opt, stats = _setup()

    def step(i: int) -> None:
        inputs, labels = _batch(i)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), labels.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not item:
            stats["average_loss"].add_(loss)  # doctor[buggy]: graph-carried-across-steps
        else:
            stats["average_loss"].add_(loss.item())
        stats["steps"] += 1

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(item=False)


def fixed() -> Loop:
    model, opt, stats = _setup()

    def step(i: int) -> None:
        inputs, labels = _batch(i)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), labels.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        stats["average_loss"].add_(loss.clone().detach())
        stats["steps"] += 1

    return Loop(step=step, model=model, optimizer=opt)


def applied() -> Loop:
    # the doctor's fix: `stats["average_loss"].add_(loss.item())`
    return _loop(item=True)


def symptom(loop: Loop) -> bool:
    """The stat still holds the graphs of the steps it summed."""
    stats = inspect.getclosurevars(loop.step).nonlocals["stats"]
    return graph_nodes(stats["average_loss"]) > 0
