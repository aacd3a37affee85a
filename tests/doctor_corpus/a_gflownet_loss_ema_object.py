"""A GFlowNet agent keeps exponential moving averages of its losses as tensors on a plain object.

Reported: https://github.com/alexhernandezgarcia/gflownet/pull/133. The agent tracked running
averages (EMAs) of the loss on terminal and non-terminal states with PyTorch tensors and no
detach, so each EMA chained onto every earlier step's graph and memory grew fast with every
iteration. The merged fix computes the EMAs outside PyTorch (from ``.item()``), which the author
measured to remove almost all of the growth. Reproduced minimally in our own code.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data, graph_nodes

SOURCE = "https://github.com/alexhernandezgarcia/gflownet/pull/133"
KIND = "graph-carried-across-steps"
ARCH = "ema"
STATE = "plain-object"
ERROR = None


class LossTracker:
    """Plain-object state: the smoothed losses the agent logs."""

    def __init__(self):
        self.terminal = 0.0
        self.flow = 0.0


class FlowNet(nn.Module):
    """Predicts a state's log-flow and the log-flows of its 3 outgoing edges."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.body(states)
        return out[:, 0], out[:, 1:]  # log F(s), log F(s -> s')


def _losses(model: FlowNet, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    states, kind = data(i)
    log_flow, log_edges = model(states)
    log_reward = states[:, 0]  # terminal states: the flow must match the reward
    terminal = kind == 0
    loss_terminal = F.mse_loss(log_flow[terminal], log_reward[terminal])
    loss_flow = F.mse_loss(torch.logsumexp(log_edges, 1)[~terminal], log_flow[~terminal])
    return loss_terminal, loss_flow


def _setup() -> tuple[FlowNet, torch.optim.Optimizer, LossTracker]:
    torch.manual_seed(0)
    model = FlowNet()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3), LossTracker()


def _loop(no_grad: bool) -> Loop:
    model, opt, ema = _setup()

    def step(i: int) -> None:
        loss_terminal, loss_flow = _losses(model, i)
        loss = loss_terminal + loss_flow
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.terminal = 0.9 * ema.terminal + 0.1 * loss_terminal.item()
        if not no_grad:
            ema.flow = 0.9 * ema.flow + 0.1 * loss_flow  # doctor[buggy]: graph-carried-across-steps
        else:
            with torch.no_grad():
                ema.flow = 0.9 * ema.flow + 0.1 * loss_flow

    return Loop(step=step, model=model, optimizer=opt)


def buggy() -> Loop:
    return _loop(no_grad=False)


def fixed() -> Loop:
    model, opt, ema = _setup()

    def step(i: int) -> None:
        loss_terminal, loss_flow = _losses(model, i)
        loss = loss_terminal + loss_flow
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.terminal = 0.9 * ema.terminal + 0.1 * loss_terminal.item()
        ema.flow = 0.9 * ema.flow + 0.1 * loss_flow.item()

    return Loop(step=step, model=model, optimizer=opt)


def applied() -> Loop:
    # the doctor's fix: "compute it under `with torch.no_grad():`" (FlowNet has no dropout/BN)
    return _loop(no_grad=True)


def symptom(loop: Loop) -> bool:
    """The EMA is a tensor chained onto the graph of every step it averaged."""
    ema = inspect.getclosurevars(loop.step).nonlocals["ema"]
    return graph_nodes(ema.flow) > 0
