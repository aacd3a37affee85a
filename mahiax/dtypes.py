"""Dtype helpers shared by the model's numerically sensitive spots."""

from __future__ import annotations

import torch


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or kept in float64 if it already is.

    Softmaxes, log-sum-exps and losses run in float32 under bf16/fp16 autocast (near-equal
    logits round to ties in half precision and routing flips); float64 stays float64 so the
    gradient checks see full precision.
    """
    return t if t.dtype == torch.float64 else t.float()
