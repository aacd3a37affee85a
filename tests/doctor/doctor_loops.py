"""Plain-PyTorch training loops for ``tests/doctor/test_doctor.py``: the bugs learners write, and
textbook loops that are right.

Written for the doctor's tests, not taken from the catalog. Each factory builds a fresh,
seeded setup and returns a :class:`Loop`. The lines the doctor must name end with a marker
comment ``# doctor[<loop name>]: <kind>``; :func:`expected` reads them from this file at run
time, so editing the file cannot desync the tests. A correct loop has no marker.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import clip_grad_norm_

FILE = str(Path(__file__).resolve())
D, B, C = 8, 16, 3  # width, batch, classes
_MARK = re.compile(r"#\s*doctor\[([\w-]+)\]:\s*([\w-]+)\s*$")


def expected(name: str) -> set[tuple[str, int]]:
    """``{(kind, line)}`` marked for loop ``name`` in this file."""
    found = set()
    for number, text in enumerate(Path(FILE).read_text().splitlines(), 1):
        m = _MARK.search(text)
        if m and m.group(1) == name:
            found.add((m.group(2), number))
    return found


@dataclass
class Loop:
    step: Callable[[int], object]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: object = None


def _data(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return torch.randn(B, D, generator=g), torch.randint(0, C, (B,), generator=g)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(D, D)
        self.fc2 = nn.Linear(D, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _plain(model: nn.Module, lr: float = 1e-2) -> tuple[nn.Module, torch.optim.Optimizer]:
    return model, torch.optim.SGD(model.parameters(), lr=lr)


# ---- in-place writes ---------------------------------------------------------------------
class GatedMLP(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc1(x))  # sigmoid saves its output for backward
        gate.mul_(2.0)  # doctor[inplace-gate]: inplace-on-saved
        return self.fc2(gate)


def inplace_gate() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(GatedMLP())

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


class SlotMemory(nn.Module):
    """Reads a memory of slots, then writes this batch's summary into one slot."""

    def __init__(self, slots: int = 4, data_write: bool = False):
        super().__init__()
        self.fc = nn.Linear(D, D)
        self.head = nn.Linear(D, C)
        self.register_buffer("slots", torch.zeros(slots, D))
        self.data_write = data_write
        self.ptr = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (B, D)
        attn = torch.softmax(h @ self.slots.T, dim=-1)  # (B, S): mm saved the slots
        out = h + attn @ self.slots
        summary = h.detach().mean(dim=0)
        if self.data_write:
            self.slots.data[self.ptr] = summary  # doctor[data-write-slot]: silent-write
        else:
            self.slots[self.ptr] = summary  # doctor[write-slot]: inplace-on-saved
        self.ptr = (self.ptr + 1) % self.slots.shape[0]
        return self.head(out)


def _slot_loop(data_write: bool) -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(SlotMemory(data_write=data_write))
    with torch.no_grad():
        model.slots.normal_()

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


def write_slot() -> Loop:
    return _slot_loop(data_write=False)


def data_write_slot() -> Loop:
    return _slot_loop(data_write=True)


class Temperature(MLP):
    """A learned-looking temperature that is really state, updated by swapping .data."""

    def __init__(self):
        super().__init__()
        self.register_buffer("temp", torch.ones(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x) * self.temp  # mul saved temp for backward
        new = 0.9 * self.temp + 0.1 * logits.detach().std(0)
        self.temp.data = new  # doctor[data-swap]: silent-write
        return logits


def data_swap() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(Temperature())

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


# ---- graphs kept across steps ---------------------------------------------------------------
class Recurrent(nn.Module):
    """A cell whose hidden state is carried from batch to batch."""

    def __init__(self, detach: bool):
        super().__init__()
        self.inp = nn.Linear(D, D)
        self.rec = nn.Linear(D, D)
        self.head = nn.Linear(D, C)
        self.detach = detach
        self.h = torch.zeros(B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.detach:
            self.h = self.h.detach()  # truncated backpropagation through time
        pre = self.inp(x) + self.rec(self.h)
        self.h = torch.tanh(pre)  # doctor[hidden-state]: graph-carried-across-steps
        return self.head(self.h)


def _recurrent(detach: bool) -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(Recurrent(detach))

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


def hidden_state() -> Loop:
    return _recurrent(detach=False)


running_total = 0.0
history: list = []


def total_loss() -> Loop:
    global running_total
    torch.manual_seed(0)
    model, opt = _plain(MLP())
    running_total = 0.0

    def step(i: int) -> None:
        global running_total
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running_total += loss  # doctor[total-loss]: graph-carried-across-steps

    return Loop(step, model, opt)


def loss_history() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(MLP())
    history.clear()

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss)  # doctor[loss-history]: graph-carried-across-steps

    return Loop(step, model, opt)


class Unrolled(nn.Module):
    """An RNN cell unrolled over the time steps of each batch; the state it ends with is
    where the next batch starts."""

    def __init__(self):
        super().__init__()
        self.cell = nn.RNNCell(D, D)
        self.head = nn.Linear(D, C)
        self.state = torch.zeros(B, D)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:  # xs: (T, B, D)
        for x in xs:
            self.state = self.cell(x, self.state)  # doctor[time-loop]: graph-carried-across-steps
        return self.head(self.state)  # (B, C)


def time_loop_state() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(Unrolled())

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(torch.stack([x, x.flip(0), -x])), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


val_history: list = []


def validation_with_grad() -> Loop:
    """A validation pass after each step, forgetting ``torch.no_grad()``, its loss kept."""
    torch.manual_seed(0)
    model, opt = _plain(MLP())
    val_history.clear()

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        vx, vy = _data(1000 + i)
        val_loss = F.cross_entropy(model(vx), vy)
        val_history.append(val_loss)  # doctor[val-with-grad]: graph-carried-across-steps

    return Loop(step, model, opt)


class CarriedState:
    """State kept on a plain object (not a module): its attributes live inline in the
    instance (Python 3.11+), so no ``__dict__`` refers to the held tensor."""

    def __init__(self):
        self.h = torch.zeros(B, D)


def plain_state() -> Loop:
    torch.manual_seed(0)
    cell, head = nn.GRUCell(D, D), nn.Linear(D, C)
    model, opt = _plain(nn.ModuleList([cell, head]))
    state = CarriedState()

    def step(i: int) -> None:
        x, y = _data(i)
        state.h = cell(x, state.h)  # doctor[plain-state]: graph-carried-across-steps
        loss = F.cross_entropy(head(state.h), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


class AverageMeter:
    """The running average of the loss every tutorial prints, fed the loss tensor itself."""

    def __init__(self):
        self.total = 0.0
        self.count = 0

    def update(self, value) -> None:
        self.total += value  # doctor[average-meter]: graph-carried-across-steps
        self.count += 1


def average_meter() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(MLP())
    meter = AverageMeter()

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        meter.update(loss)

    return Loop(step, model, opt)


class Bank(MLP):
    """Contrastive-style memory bank of past features that is never trimmed."""

    def __init__(self):
        super().__init__()
        self.bank = torch.zeros(0, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))  # (B, D)
        self.bank = torch.cat([self.bank, h.detach()])  # (N + B, D), no graph, but unbounded
        sim = h @ self.bank.T  # (B, N + B): saves the whole bank for backward
        return self.fc2(h) + sim.mean(dim=1, keepdim=True)


def memory_bank() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(Bank())

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()  # doctor[memory-bank]: growing-graph
        opt.step()

    return Loop(step, model, opt)


# ---- backward calls ------------------------------------------------------------------------
class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(D, D)
        self.cls = nn.Linear(D, C)
        self.reg = nn.Linear(D, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        return self.cls(h), self.reg(h).squeeze(-1)


def backward_each_loss() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(TwoHeads())

    def step(i: int) -> None:
        x, y = _data(i)
        logits, value = model(x)
        loss_cls = F.cross_entropy(logits, y)
        loss_reg = F.mse_loss(value, y.float())
        opt.zero_grad()
        loss_cls.backward(retain_graph=True)
        loss_reg.backward()  # doctor[backward-each-loss]: backward-per-loss
        opt.step()

    return Loop(step, model, opt)


def forward_each_loss() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(TwoHeads())

    def step(i: int) -> None:
        x, y = _data(i)
        opt.zero_grad()
        for k in range(2):
            out = model(x)[k]
            loss = F.cross_entropy(out, y) if k == 0 else F.mse_loss(out, y.float())
            loss.backward()  # doctor[forward-each-loss]: backward-per-loss
        opt.step()

    return Loop(step, model, opt)


def retain_anyway() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(MLP())

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward(retain_graph=True)  # doctor[retain-anyway]: retain-graph
        opt.step()

    return Loop(step, model, opt)


# ---- mixed precision --------------------------------------------------------------------------
def _amp(unscale_first: bool) -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(MLP())
    scaler = torch.amp.GradScaler("cpu")

    def step(i: int) -> None:
        x, y = _data(i)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        if unscale_first:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        else:
            params = model.parameters()
            nn.utils.clip_grad_norm_(params, 1.0)  # doctor[clip-scaled]: clip-before-unscale
        scaler.step(opt)
        scaler.update()

    return Loop(step, model, opt, scaler)


def clip_scaled() -> Loop:
    return _amp(unscale_first=False)


def clip_imported() -> Loop:
    """The clip imported by name (``from torch.nn.utils import clip_grad_norm_``)."""
    torch.manual_seed(0)
    model, opt = _plain(MLP())
    scaler = torch.amp.GradScaler("cpu")

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        clip_grad_norm_(model.parameters(), 5.0)  # doctor[clip-imported]: clip-before-unscale
        scaler.step(opt)
        scaler.update()

    return Loop(step, model, opt, scaler)


def clip_scaled_adamw() -> Loop:
    """Clip before unscale under AdamW: the update is scale-invariant, the clip is a no-op."""
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        params = model.parameters()
        nn.utils.clip_grad_norm_(params, 1.0)  # doctor[clip-adamw]: clip-before-unscale
        scaler.step(opt)
        scaler.update()

    return Loop(step, model, opt, scaler)


# ---- parameters and state ---------------------------------------------------------------------
class AuxHead(MLP):
    def __init__(self):
        super().__init__()
        self.aux = nn.Linear(D, 1)  # doctor[unused-head]: unused-parameters


def unused_head() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(AuxHead())

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


class Tempered(MLP):
    """A learned temperature read through ``detach()``: used, yet never given a gradient."""

    def __init__(self):
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(()))  # doctor[detached-param]: unused-parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / self.temperature.detach()


def detached_param() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(Tempered())

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


class Scaled(MLP):
    def __init__(self):
        super().__init__()
        ones = torch.ones(C, requires_grad=True)
        self.register_buffer("scale", ones)  # doctor[buffer-grad]: buffer-requires-grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def buffer_grad() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(Scaled())

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


BUGGY: dict[str, Callable[[], Loop]] = {
    "inplace-gate": inplace_gate,
    "write-slot": write_slot,
    "data-write-slot": data_write_slot,
    "data-swap": data_swap,
    "hidden-state": hidden_state,
    "total-loss": total_loss,
    "loss-history": loss_history,
    "plain-state": plain_state,
    "val-with-grad": validation_with_grad,
    "time-loop": time_loop_state,
    "average-meter": average_meter,
    "memory-bank": memory_bank,
    "backward-each-loss": backward_each_loss,
    "forward-each-loss": forward_each_loss,
    "retain-anyway": retain_anyway,
    "clip-scaled": clip_scaled,
    "clip-imported": clip_imported,
    "clip-adamw": clip_scaled_adamw,
    "unused-head": unused_head,
    "detached-param": detached_param,
    "buffer-grad": buffer_grad,
}


# ---- textbook loops that are right --------------------------------------------------------------
def classifier() -> Loop:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses: list[float] = []

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    return Loop(step, model, opt)


def amp_unscale_then_clip() -> Loop:
    return _amp(unscale_first=True)


def truncated_bptt() -> Loop:
    return _recurrent(detach=True)


def accumulation() -> Loop:
    """Gradient accumulation: one backward per micro-batch, one optimiser step per batch."""
    torch.manual_seed(0)
    model, opt = _plain(MLP())

    def step(i: int) -> None:
        x, y = _data(i)
        opt.zero_grad()
        for xs, ys in zip(x.chunk(4), y.chunk(4), strict=True):
            (F.cross_entropy(model(xs), ys) / 4).backward()
        opt.step()

    return Loop(step, model, opt)


class CommittedMemory(SlotMemory):
    """The slot memory done right: the write waits until after the optimiser step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        attn = torch.softmax(h @ self.slots.T, dim=-1)
        self.pending = h.detach().mean(dim=0)
        return self.head(h + attn @ self.slots)

    @torch.no_grad()
    def commit(self) -> None:
        self.slots[self.ptr] = self.pending
        self.ptr = (self.ptr + 1) % self.slots.shape[0]


def committed_memory() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(CommittedMemory())

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.commit()

    return Loop(step, model, opt)


def manual_sgd() -> Loop:
    """The oldest textbook update: ``p.data -= lr * p.grad`` after backward (no live graph)."""
    torch.manual_seed(0)
    model, opt = _plain(MLP())

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        for p in model.parameters():
            p.data -= 1e-2 * p.grad

    return Loop(step, model, opt)


def summed_losses() -> Loop:
    torch.manual_seed(0)
    model, opt = _plain(TwoHeads())

    def step(i: int) -> None:
        x, y = _data(i)
        logits, value = model(x)
        loss = F.cross_entropy(logits, y) + 0.5 * F.mse_loss(value, y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


def _sam(carry_first_loss: bool) -> Loop:
    """Sharpness-aware minimisation: two forwards and backwards on one batch, by design, with
    the weights moved to a nearby worse point in between (another computation, not a
    repeated one). ``carry_first_loss``: the second pass adds the first pass's loss into its
    own (kept with retain_graph=True), so its backward walks the graph from before the
    weights moved."""
    torch.manual_seed(0)
    model, opt = _plain(MLP())
    rho = 0.05

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        loss.backward(retain_graph=carry_first_loss)
        with torch.no_grad():
            norm = torch.stack([p.grad.norm() for p in model.parameters()]).norm()
            eps = [rho * p.grad / (norm + 1e-12) for p in model.parameters()]
            for p, e in zip(model.parameters(), eps, strict=True):
                p.add_(e)
        opt.zero_grad()
        if carry_first_loss:
            loss = loss + F.cross_entropy(model(x), y)  # doctor[sam-carried]: step-before-backward
        else:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        with torch.no_grad():
            for p, e in zip(model.parameters(), eps, strict=True):
                p.sub_(e)
        opt.step()
        opt.zero_grad()

    return Loop(step, model, opt)


def sharpness_aware() -> Loop:
    return _sam(carry_first_loss=False)


def sam_carried() -> Loop:
    return _sam(carry_first_loss=True)


def frozen_backbone() -> Loop:
    """Fine-tuning a head on a frozen feature extractor kept in eval mode on purpose (its
    batch norm statistics and dropout fixed): no graph runs through the backbone."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(D, 4 * D), nn.BatchNorm1d(4 * D), nn.ReLU(),
                             nn.Dropout(0.2))
    head = nn.Linear(4 * D, C)
    model = nn.Sequential(backbone, head)
    backbone.requires_grad_(False)
    backbone.eval()
    opt = torch.optim.SGD(head.parameters(), lr=0.1)

    def step(i: int) -> None:
        x, y = _data(i)
        loss = F.cross_entropy(head(backbone(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


class _FrozenNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(D, D), nn.BatchNorm1d(D), nn.Linear(D, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def frozen_batch_norm() -> Loop:
    """The whole model trains, with its batch norm layers switched to eval mode one by one
    at each step (detection fine-tuning keeps their statistics)."""
    torch.manual_seed(0)
    model, opt = _plain(_FrozenNorm())

    def step(i: int) -> None:
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.eval()
        x, y = _data(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Loop(step, model, opt)


CORRECT: dict[str, Callable[[], Loop]] = {
    "classifier": classifier,
    "amp-unscale-then-clip": amp_unscale_then_clip,
    "truncated-bptt": truncated_bptt,
    "accumulation": accumulation,
    "committed-memory": committed_memory,
    "manual-sgd": manual_sgd,
    "summed-losses": summed_losses,
    "sharpness-aware": sharpness_aware,
    "frozen-backbone": frozen_backbone,
    "frozen-batch-norm": frozen_batch_norm,
}
BUGGY["sam-carried"] = sam_carried  # beside its correct twin, sharpness-aware
