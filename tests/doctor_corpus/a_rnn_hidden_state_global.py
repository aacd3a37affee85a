"""An RNN regressor feeds its hidden state, still attached to the last batch's graph, to the next.

Reported: https://github.com/MorvanZhou/PyTorch-Tutorial/issues/57. In the tutorial's sin-to-cos
RNN regressor the hidden state is a script-level variable passed from one batch to the next;
commenting out ``h_state = h_state.data`` made the second ``loss.backward()`` fail with "Trying to
backward through the graph a second time". The user found ``retain_graph=True`` also silences it
(it backpropagates into every earlier batch instead); the tutorial keeps the line, which repacks
the state right after the forward. Reproduced minimally in our own code (``.detach()`` for
``.data``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop

SOURCE = "https://github.com/MorvanZhou/PyTorch-Tutorial/issues/57"
KIND = "graph-carried-across-steps"
ARCH = "rnn"
STATE = "global"
ERROR = "backward through the graph a second time"

BATCH, TIME, HIDDEN = 16, 10, 8

h_state: torch.Tensor | None = None  # the carried hidden state, at script level as in the report


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(input_size=1, hidden_size=HIDDEN, batch_first=True)
        self.out = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        r_out, h = self.rnn(x, h)  # r_out: (B, T, H)
        return self.out(r_out), h


def _segment(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ``i`` of the curves: sin as input, cos as target, each ``(B, T, 1)``."""
    phase = torch.linspace(0, 1, BATCH).unsqueeze(1)
    t = phase + torch.linspace(i * torch.pi, (i + 1) * torch.pi, TIME)
    return torch.sin(t).unsqueeze(-1), torch.cos(t).unsqueeze(-1)


def _setup() -> tuple[Regressor, torch.optim.Optimizer]:
    global h_state
    h_state = None
    torch.manual_seed(0)
    model = Regressor()
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def _loop(detach: bool) -> Loop:
    model, opt = _setup()

    def step(i: int) -> None:
        global h_state
        if detach:
            if h_state is not None:
                h_state = h_state.detach()
        x, y = _segment(i)
        prediction, h_state = model(x, h_state)  # doctor[buggy]: graph-carried-across-steps
        loss = F.mse_loss(prediction, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(detach=False)


def fixed() -> Loop:
    model, opt = _setup()

    def step(i: int) -> None:
        global h_state
        x, y = _segment(i)
        prediction, h_state = model(x, h_state)
        h_state = h_state.detach()  # keep the value, cut the connection to this batch's graph
        loss = F.mse_loss(prediction, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step=step, model=model, optimizer=opt)


def applied() -> Loop:
    # doctor's fix: `if h_state is not None: h_state = h_state.detach()` at the start of the step
    return _loop(detach=True)
