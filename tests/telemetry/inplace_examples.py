"""Small in-place bugs from the summary, for ``tests/telemetry/test_locator.py``.

Lines the tests look for end with a marker comment: ``# MUTATION <name>`` on the write that
breaks backward, ``# SAVED <name>`` on the forward line that saved the tensor (the one anomaly
mode names). :func:`line_of` finds them at run time, so editing this file cannot desync tests.
Each factory returns a fresh, seeded :class:`Example` whose ``run()`` raises PyTorch's
"modified by an inplace operation" error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FILE = str(Path(__file__).resolve())
D = 8  # d_model of every example


def line_of(marker: str) -> int:
    """Line number of the line ending with ``# <marker>``."""
    for number, text in enumerate(Path(FILE).read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# {marker}"):
            return number
    raise LookupError(marker)


@dataclass
class Example:
    model: nn.Module
    run: Callable[[], object]
    mutation: str  # marker of the mutating line
    saved: str  # marker of the line that saved the tensor
    module: str  # module path the locator should name for the write ("" = none)
    ops: tuple[str, ...]  # aten ops that may perform the write


# ---- (a) DynamicNeuroFabric / DynamicLayerRouter: accumulate into what the layers read ------
class Fabric(nn.Module):
    def __init__(self, n_layers: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(D, D) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        output = x  # the bug: output aliases x, which the layers save for backward
        for b in range(x.shape[0]):
            h = self.layers[int(route[b])](x[b])  # SAVED fabric
            output[b] += 0.5 * h  # MUTATION fabric
        return output


class FabricNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(D, D)
        self.fabric = Fabric()

    def forward(self, x: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        return self.fabric(self.encoder(x), route)


def fabric() -> Example:
    torch.manual_seed(0)
    model, x, route = FabricNet(), torch.randn(3, D), torch.tensor([0, 1, 0])
    return Example(model, lambda: model(x, route).sum().backward(),
                   "MUTATION fabric", "SAVED fabric", "model.fabric", ("aten.add_",))


# ---- (b) TinyMemory: a buffer read in the forward, then written in the same forward ---------
class TinyMemory(nn.Module):
    memory: torch.Tensor

    def __init__(self, write: str, slots: int = 4):
        super().__init__()
        self.register_buffer("memory", torch.randn(slots, D))
        self.write, self.ptr = write, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        read = torch.softmax(x @ self.memory.t(), -1) @ self.memory  # SAVED tiny
        slot, avg = self.ptr % self.memory.shape[0], x.mean(0).detach()
        if self.write == "setitem":
            self.memory[slot] = avg  # MUTATION tiny-setitem
        else:  # the summary's "fix": the very same write
            self.memory[slot].copy_(avg)  # MUTATION tiny-copy
        self.ptr += 1
        return x + read


class MemoryNet(nn.Module):
    def __init__(self, memory: nn.Module):
        super().__init__()
        self.encoder = nn.Linear(D, D)
        self.memory = memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.memory(self.encoder(x))


def tiny_memory(write: str) -> Example:
    torch.manual_seed(0)
    model, x = MemoryNet(TinyMemory(write)), torch.randn(3, D)
    return Example(model, lambda: model(x).sum().backward(),
                   f"MUTATION tiny-{write}", "SAVED tiny", "model.memory", ("aten.copy_",))


# ---- (c) GraphDiffusionMemory with the summary's copy_ fix, under no_grad -------------------
class NodeMemory(nn.Module):
    nodes: torch.Tensor

    def __init__(self, num_nodes: int = 4):
        super().__init__()
        self.register_buffer("nodes", torch.randn(num_nodes, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        read = torch.softmax(x @ self.nodes.t(), -1) @ self.nodes  # SAVED nodes
        new_nodes = 0.9 * self.nodes + 0.1 * x.mean(0, keepdim=True)
        with torch.no_grad():  # no_grad does not stop the version counter
            self.nodes.copy_(new_nodes)  # MUTATION nodes
        return x + read


def node_memory() -> Example:
    torch.manual_seed(0)
    model, x = MemoryNet(NodeMemory()), torch.randn(3, D)
    return Example(model, lambda: model(x).sum().backward(),
                   "MUTATION nodes", "SAVED nodes", "model.memory", ("aten.copy_",))


# ---- (d) retain_graph across steps: optimizer.step() changes a weight the old graph saved ----
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(D, 16), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))  # SAVED mlp


def train_retained(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                   y: torch.Tensor, steps: int = 2) -> None:
    loss = F.mse_loss(model(x), y)  # one graph, reused every step: the summary's loop
    for _ in range(steps):
        opt.zero_grad()
        loss.backward(retain_graph=True)
        opt.step()  # MUTATION optimizer


def retained_graph(optimizer: str) -> Example:
    torch.manual_seed(0)
    model, x, y = MLP(), torch.randn(4, D), torch.randn(4, 1)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.1, foreach=True)
    ops = ("aten.add_", "aten._foreach_add_", "aten.addcdiv_", "aten._foreach_addcdiv_")
    return Example(model, lambda: train_retained(model, opt, x, y),
                   "MUTATION optimizer", "SAVED mlp", "", ops)


EXAMPLES: dict[str, Callable[[], Example]] = {
    "fabric": fabric,
    "tiny-setitem": lambda: tiny_memory("setitem"),
    "tiny-copy": lambda: tiny_memory("copy"),
    "nodes-no-grad": node_memory,
    "optimizer-sgd": lambda: retained_graph("sgd"),
    "optimizer-adam-foreach": lambda: retained_graph("adam"),
}


# ---- a model with no bug, for "the locator changes nothing" ----------------------------------
class CleanNet(nn.Module):
    """Linear, LayerNorm, an in-place ReLU that is legal, attention over a read-only buffer."""

    keys: torch.Tensor

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(D, D)
        self.norm = nn.LayerNorm(D)
        self.register_buffer("keys", torch.randn(4, D))
        self.head = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x).relu_()  # legal: nothing saved the encoder's output
        h = self.norm(h)
        h = h + torch.softmax(h @ self.keys.t(), -1) @ self.keys
        return self.head(F.gelu(h))


# ---- a tensor saved as an op's *output* (exp saves its result), then written ----------------
def exp_then_add() -> None:
    x = torch.randn(4, requires_grad=True)
    y = x.exp()  # SAVED exp
    y.add_(1)  # MUTATION exp
    y.sum().backward()
