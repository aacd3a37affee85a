"""A GAN loop steps the discriminator before the generator's backward walks through it.

Reported: https://github.com/pytorch/pytorch/issues/39141. A small GAN fitting curves took one
discriminator pass over the fakes for both losses, called ``opt_D.step()`` after the
discriminator's backward and only then ``G_loss.backward()``; from PyTorch 1.5 this raises "one of
the variables needed for gradient computation has been modified by an inplace operation". The fix
adopted from the issue (the tutorial's https://github.com/MorvanZhou/PyTorch-Tutorial/pull/91)
trains the generator first, then gives the discriminator a fresh pass over detached fakes.
Reproduced minimally in our own code.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.doctor_corpus.common import Loop

SOURCE = "https://github.com/pytorch/pytorch/issues/39141"
KIND = "step-before-backward"
ARCH = "gan"
STATE = "local"
ERROR = "modified by an inplace operation"

NOISE, POINTS, BATCH = 4, 8, 16


def _nets() -> nn.ModuleDict:
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(NOISE, 16), nn.ReLU(), nn.Linear(16, POINTS))
    disc = nn.Sequential(nn.Linear(POINTS, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
    return nn.ModuleDict({"G": gen, "D": disc})


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real curves ``a * x**2 + (a - 1)`` with a random ``a`` in [1, 2), and the noise for G."""
    g = torch.Generator().manual_seed(i)
    a = 1 + torch.rand(BATCH, 1, generator=g)
    x = torch.linspace(-1, 1, POINTS)
    return a * x**2 + (a - 1), torch.randn(BATCH, NOISE, generator=g)


def _loop(forward_again: bool) -> Loop:
    nets = _nets()
    gen, disc = nets["G"], nets["D"]
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)

    def step(i: int) -> None:
        real, noise = _batch(i)
        fake = gen(noise)
        p_real = disc(real)
        p_fake = disc(fake)  # one pass over the fakes, shared by both losses
        loss_d = -torch.mean(torch.log(p_real) + torch.log(1.0 - p_fake))
        loss_g = torch.mean(torch.log(1.0 - p_fake))
        opt_d.zero_grad()
        loss_d.backward(retain_graph=True)
        opt_d.step()  # doctor[buggy]: step-before-backward
        if forward_again:
            p_fake = disc(fake)
            loss_g = torch.mean(torch.log(1.0 - p_fake))
        opt_g.zero_grad()
        loss_g.backward()  # walks D's graph, which saved the weights opt_d just changed
        opt_g.step()

    return Loop(step=step, model=nets, optimizer=opt_g)


def buggy() -> Loop:
    return _loop(forward_again=False)


def fixed() -> Loop:
    nets = _nets()
    gen, disc = nets["G"], nets["D"]
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)

    def step(i: int) -> None:
        real, noise = _batch(i)
        fake = gen(noise)
        loss_g = torch.mean(torch.log(1.0 - disc(fake)))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        p_real = disc(real)
        p_fake = disc(fake.detach())  # a fresh pass, after G's step, that stops at the fakes
        loss_d = -torch.mean(torch.log(p_real) + torch.log(1.0 - p_fake))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()

    return Loop(step=step, model=nets, optimizer=opt_g)


def applied() -> Loop:
    # doctor's fix, first option: run the forward `loss_g.backward()` needs again after the step
    return _loop(forward_again=True)
