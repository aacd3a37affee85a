"""A periodic accuracy check puts every model in eval mode and training goes on in eval mode.

Reported: https://github.com/facebookresearch/clevr-iep/pull/22. ``check_accuracy`` runs
every few iterations during training and calls ``set_mode('eval', models)`` on the program
generator and the execution engine, but never sets them back, so after the first check the
BatchNorm and dropout layers train in eval mode. The accepted fix (merged) calls
``set_mode('train', models)`` when the check ends. Reproduced minimally in our own code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/facebookresearch/clevr-iep/pull/22"
KIND = "eval-mode-training"
ARCH = "other"
STATE = "list"
ERROR = None

CHECK_EVERY = 2


def set_mode(mode: str, models: list[nn.Module]) -> None:
    for m in models:
        if mode == "train":
            m.train()
        else:
            m.eval()


def check_accuracy(models: list[nn.Module], back_to_train: bool) -> float:
    set_mode("eval", models)  # doctor[buggy]: eval-mode-training
    generator, engine = models
    with torch.no_grad():
        x, y = data(500)
        acc = (engine(generator(x)).argmax(1) == y).float().mean().item()
    if back_to_train:
        set_mode("train", models)  # the merged fix
    return acc


@dataclass(kw_only=True)
class WatchedLoop(Loop):
    """A loop that also records the BatchNorm's mode at every forward that builds a graph."""

    norm_modes: list[bool] = field(default_factory=list)


def _loop(back_to_train: bool, train_each_step: bool = False) -> WatchedLoop:
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 8))
    engine = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    models = [generator, engine]
    model = nn.ModuleDict({"program_generator": generator, "execution_engine": engine})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    set_mode("train", models)  # once, before the training loop

    def step(i: int) -> None:
        if train_each_step:
            model.train()
        x, y = data(i)
        opt.zero_grad()
        loss = F.cross_entropy(engine(generator(x)), y)
        loss.backward()
        opt.step()
        if (i + 1) % CHECK_EVERY == 0:
            check_accuracy(models, back_to_train)

    loop = WatchedLoop(step=step, model=model, optimizer=opt)

    def record(module: nn.Module, args: object, out: object) -> None:
        if torch.is_grad_enabled():
            loop.norm_modes.append(module.training)

    engine[1].register_forward_hook(record)
    return loop


def buggy() -> Loop:
    return _loop(back_to_train=False)


def fixed() -> Loop:
    return _loop(back_to_train=True)


def applied() -> Loop:
    # the doctor's fix, its second option: `model.train()` at the start of every training step
    return _loop(back_to_train=False, train_each_step=True)


def symptom(loop: Loop) -> bool:
    """True when some training forward normalised with running stats (BatchNorm in eval)."""
    assert isinstance(loop, WatchedLoop)
    return not all(loop.norm_modes)
