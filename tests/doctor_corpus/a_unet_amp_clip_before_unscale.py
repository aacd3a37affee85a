"""A mixed-precision segmentation loop clips the gradients while the GradScaler still scales them.

Reported: https://github.com/milesial/Pytorch-UNet/issues/468. The U-Net training script called
``clip_grad_norm_`` right after ``grad_scaler.scale(loss).backward()``, so it measured and clipped
the scaled gradients (the threshold is in effect divided by the scale, 65536 at the start). The
fix, merged as https://github.com/milesial/Pytorch-UNet/pull/470, calls
``grad_scaler.unscale_(optimizer)`` before clipping (one commenter argued the order does not
matter since ``step()`` skips overflows). Reproduced minimally in our own code (CPU: bfloat16
autocast, ``GradScaler("cpu")``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop

SOURCE = "https://github.com/milesial/Pytorch-UNet/issues/468"
KIND = "clip-before-unscale"
ARCH = "amp"
STATE = "none"
ERROR = None

BATCH, SIDE, CLASSES, CLIP = 16, 4, 2, 1.0


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, CLASSES, 1))  # (B, 3, H, W) -> (B, K, H, W)


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    image = torch.rand(BATCH, 3, SIDE, SIDE, generator=g)
    return image, (image[:, 0] > 0.5).long()


def _loop(unscale: bool) -> Loop:
    model = _net()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9)
    grad_scaler = torch.amp.GradScaler("cpu")

    def step(i: int) -> None:
        images, masks = _batch(i)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images), masks)
        opt.zero_grad(set_to_none=True)
        grad_scaler.scale(loss).backward()
        if unscale:
            grad_scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)  # doctor[buggy]: clip-before-unscale
        grad_scaler.step(opt)
        grad_scaler.update()

    return Loop(step=step, model=model, optimizer=opt, scaler=grad_scaler)


def buggy() -> Loop:
    return _loop(unscale=False)


def fixed() -> Loop:
    model = _net()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9)
    grad_scaler = torch.amp.GradScaler("cpu")

    def step(i: int) -> None:
        images, masks = _batch(i)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images), masks)
        opt.zero_grad(set_to_none=True)
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        grad_scaler.step(opt)
        grad_scaler.update()

    return Loop(step=step, model=model, optimizer=opt, scaler=grad_scaler)


def applied() -> Loop:
    # the doctor's fix: "call `grad_scaler.unscale_(opt)` before `nn.utils.clip_grad_norm_(...)`"
    return _loop(unscale=True)


def symptom(loop: Loop) -> bool:
    """The gradient the last step applied (unscaled by ``scaler.step``) was clipped to
    ``CLIP / scale``, not ``CLIP``: its norm is orders of magnitude below the threshold."""
    grads = [p.grad for p in loop.model.parameters() if p.grad is not None]
    return bool(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) < CLIP / 1000)
