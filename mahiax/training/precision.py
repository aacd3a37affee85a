"""Mixed precision: autocast, a GradScaler where it applies, unscale *before* clipping.

- ``fp32``: no autocast, no scaler.
- ``bf16``: autocast to bfloat16; bf16 has fp32's exponent range, so no scaler is needed.
- ``fp16``: autocast to float16 plus a ``torch.amp.GradScaler``: small fp16 gradients
  underflow to zero unless the loss is scaled up first. The scaler skips the optimiser step
  when a scaled gradient overflowed to inf/NaN and lowers the scale; those skips are counted.

Clipping must see the *true* gradients: ``clip_grad_norm_`` on scaled gradients compares a
norm inflated by the scale (65536 at the start) against ``max_norm``: whenever that scaled
norm exceeds ``max_norm`` (almost always), the update applied after unscaling has norm
``max_norm / scale``, whatever the true norm was. :meth:`PrecisionManager.clip` therefore
calls ``scaler.unscale_`` first (PyTorch AMP docs, "Gradient clipping").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionManager:
    """Autocast + GradScaler for one device; reports the scale and skipped steps."""

    def __init__(self, precision: str, device: torch.device | str):
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision {precision!r} is not one of fp32 | bf16 | fp16")
        self.precision = precision
        self.device = torch.device(device)
        self.dtype = _DTYPES.get(precision)
        # GradScaler only for fp16; it exists for CPU too, so the lesson runs without a GPU
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.skipped_steps = 0

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast region for the forward pass (a no-op for fp32)."""
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    @property
    def scale(self) -> float:
        """Current loss scale (1.0 when no scaler is in use)."""
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        """One backward of the (scaled) loss. Called once per step: no retain_graph."""
        self.scaler.scale(loss).backward()

    def clip(
        self, optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor], max_norm: float
    ) -> float:
        """Unscale, then clip to ``max_norm`` (0 = measure only); returns the true grad norm."""
        self.scaler.unscale_(optimizer)  # grads now hold their true values
        params = [p for p in params if p.grad is not None]
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        return float(norm)  # host sync: once per step

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Optimizer step through the scaler; returns False if the step was skipped."""
        if not self.scaler.is_enabled():
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        skipped = self.scaler.get_scale() < before  # the scaler backs off only on inf/NaN
        self.skipped_steps += int(skipped)
        return not skipped

    def state_dict(self) -> dict[str, object]:
        """The scaler's state (``{}`` when it is disabled) and the count of skipped steps."""
        return {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Inverse of :meth:`state_dict`."""
        if state["scaler"]:  # an enabled scaler's state; a disabled one saved {}
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state["skipped_steps"])
