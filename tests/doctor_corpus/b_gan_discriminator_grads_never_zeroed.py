"""The discriminator's optimizer is never zeroed, so its gradients pile up from step to step.

Reported: https://github.com/Hsintien-Ng/idinvert_pytorch-reproduced/issues/1. The encoder
training loop (an encoder trained against a discriminator, the generator frozen) called
``optimizer_D.step()`` after ``loss_D.backward()`` with no ``optimizer_D.zero_grad()``
before the backward, so every discriminator step applied the sum of all earlier gradients
(and the encoder's adversarial gradients that flowed into the discriminator). The author
confirmed it was forgotten and added the ``zero_grad()`` before the backward. Reproduced
minimally in our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, StaleGradWatch, WatchedLoop, data

SOURCE = "https://github.com/Hsintien-Ng/idinvert_pytorch-reproduced/issues/1"
KIND = "grads-not-zeroed"
ARCH = "gan"
STATE = "dict"
ERROR = None



def _loop(zero_discriminator: bool) -> WatchedLoop:
    torch.manual_seed(0)
    nets = {
        "E": nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)),  # image -> code
        "G": nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8)),  # code -> image
        "D": nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)),
    }
    nets["G"].requires_grad_(False)  # the pretrained generator stays fixed
    opt_e = torch.optim.Adam(nets["E"].parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(nets["D"].parameters(), lr=1e-3)

    def step(i: int) -> None:
        x, _ = data(i)
        # discriminator update
        fake = nets["G"](nets["E"](x)).detach()
        loss_d = F.softplus(nets["D"](fake)).mean() + F.softplus(-nets["D"](x)).mean()
        if zero_discriminator:
            opt_d.zero_grad()  # the fix: zero the discriminator's gradients first
        loss_d.backward()  # doctor[buggy]: grads-not-zeroed
        opt_d.step()
        # encoder update: reconstruct through the fixed generator, fool the discriminator
        opt_e.zero_grad()
        rec = nets["G"](nets["E"](x))
        loss_e = F.mse_loss(rec, x) + 0.1 * F.softplus(-nets["D"](rec)).mean()
        loss_e.backward()
        opt_e.step()

    # model: both trained nets; optimizer: the discriminator's, the one the report is about
    # (the encoder's own optimizer is stepped in the same loop)
    model = nn.ModuleDict({"encoder": nets["E"], "discriminator": nets["D"]})
    return WatchedLoop(step=step, model=model, optimizer=opt_d, watch=StaleGradWatch(opt_d))


def buggy() -> Loop:
    return _loop(zero_discriminator=False)


def fixed() -> Loop:
    return _loop(zero_discriminator=True)


def applied() -> Loop:
    # doctor's fix: `opt_d.zero_grad()` once per optimiser step, before `loss_d.backward()`
    return _loop(zero_discriminator=True)


def symptom(loop: Loop) -> bool:
    """True when a discriminator step applied a gradient an earlier step had already applied."""
    assert isinstance(loop, WatchedLoop)
    return loop.watch.stale_steps > 0
