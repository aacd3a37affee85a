"""A FactorVAE loop steps the VAE before the discriminator loss, built on its latents, backward.

Reported: https://github.com/YannDubs/disentangling-vae/issues/62. The FactorVAE loss ran
``vae_loss.backward(retain_graph=True)`` and the VAE optimiser's ``step()``, then built the
discriminator's total-correlation loss from the same ``D(z)`` and called ``backward()``; from
PyTorch 1.5 this fails with the in-place error (the encoder weights it saved were updated). The
maintainer's fix moves the VAE optimiser's ``step()`` after the discriminator's backward (a
later issue, https://github.com/YannDubs/disentangling-vae/issues/77, notes that this lets the
discriminator's loss add to the encoder's gradients). Reproduced minimally in our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop, data

SOURCE = "https://github.com/YannDubs/disentangling-vae/issues/62"
KIND = "step-before-backward"
ARCH = "other"
STATE = "local"
ERROR = "modified by an inplace operation"

LATENT, GAMMA = 4, 2.0


def _nets() -> nn.ModuleDict:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, LATENT))
    decoder = nn.Sequential(nn.Linear(LATENT, 16), nn.ReLU(), nn.Linear(16, 8))
    disc = nn.Sequential(nn.Linear(LATENT, 16), nn.LeakyReLU(0.2), nn.Linear(16, 2))
    return nn.ModuleDict({"encoder": encoder, "decoder": decoder, "disc": disc})


def _permute_dims(z: torch.Tensor) -> torch.Tensor:
    """Shuffle each latent dimension across the batch independently (samples of q(z) factorised)."""
    g = torch.Generator().manual_seed(int(z.shape[0]))
    return torch.stack([z[torch.randperm(z.shape[0], generator=g), j]
                        for j in range(z.shape[1])], dim=1)



def _loop(forward_again: bool) -> Loop:
    nets = _nets()
    encoder, decoder, disc = nets["encoder"], nets["decoder"], nets["disc"]
    vae_opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    disc_opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    zeros, ones = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)

    def step(i: int) -> None:
        x, _ = data(i)
        x1, x2 = x.chunk(2)
        z1 = encoder(x1)
        d_z = disc(z1)
        tc = (d_z[:, 0] - d_z[:, 1]).mean()
        vae_loss = F.mse_loss(decoder(z1), x1) + GAMMA * tc
        vae_opt.zero_grad()
        if not forward_again:
            vae_loss.backward(retain_graph=True)  # d_z is used again below
        else:
            vae_loss.backward()
        vae_opt.step()  # doctor[buggy]: step-before-backward
        if forward_again:
            z1 = encoder(x1)
            d_z = disc(z1)
        z_perm = _permute_dims(encoder(x2).detach())
        d_tc_loss = 0.5 * (F.cross_entropy(d_z, zeros) + F.cross_entropy(disc(z_perm), ones))
        disc_opt.zero_grad()
        d_tc_loss.backward()  # back through d_z into the encoder that vae_opt just changed
        disc_opt.step()

    return Loop(step=step, model=nets, optimizer=vae_opt)


def buggy() -> Loop:
    return _loop(forward_again=False)


def fixed() -> Loop:
    nets = _nets()
    encoder, decoder, disc = nets["encoder"], nets["decoder"], nets["disc"]
    vae_opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    disc_opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    zeros, ones = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)

    def step(i: int) -> None:
        x, _ = data(i)
        x1, x2 = x.chunk(2)
        z1 = encoder(x1)
        d_z = disc(z1)
        tc = (d_z[:, 0] - d_z[:, 1]).mean()
        vae_loss = F.mse_loss(decoder(z1), x1) + GAMMA * tc
        vae_opt.zero_grad()
        vae_loss.backward(retain_graph=True)
        z_perm = _permute_dims(encoder(x2).detach())
        d_tc_loss = 0.5 * (F.cross_entropy(d_z, zeros) + F.cross_entropy(disc(z_perm), ones))
        disc_opt.zero_grad()
        d_tc_loss.backward()
        vae_opt.step()  # moved after every backward that needs the encoder's current weights
        disc_opt.step()

    return Loop(step=step, model=nets, optimizer=vae_opt)


def applied() -> Loop:
    # doctor's fix, first option: run the forward again after the step, drop the retain_graph
    return _loop(forward_again=True)
