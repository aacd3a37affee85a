"""Input checks that run before any tensor reaches an embedding or a matmul.

The summary's first bug ("index out of range in self") came from token ids outside the
embedding table. Checking here turns that deep torch traceback into one sentence that says
what was expected and what arrived.
"""

from __future__ import annotations

import torch

from mahiax.config import MahiaConfig
from mahiax.tasks import TASKS

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tokens(tokens: object, config: MahiaConfig) -> None:
    """Token ids: an integer tensor (B, T) with T <= seq_len and ids in [0, vocab_size)."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(
            f"tokens must be a torch.Tensor of shape (B, T), got {type(tokens).__name__}"
        )
    if tokens.dtype not in _INT_DTYPES:
        raise TypeError(
            f"tokens must hold integer ids (torch.int64 or another integer dtype), "
            f"got dtype {tokens.dtype}"
        )
    if tokens.dim() != 2:
        raise ValueError(
            f"tokens must have shape (batch, seq_len) = (B, {config.seq_len}), "
            f"got shape {tuple(tokens.shape)}"
        )
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must not be empty, got shape {tuple(tokens.shape)}")
    if tokens.shape[1] > config.seq_len:
        raise ValueError(
            f"tokens have {tokens.shape[1]} positions but the model was built for at most "
            f"seq_len={config.seq_len} (got shape {tuple(tokens.shape)})"
        )
    lo, hi = int(tokens.min()), int(tokens.max())  # host sync: once per batch
    if lo < 0 or hi >= config.vocab_size:
        bad = ((tokens < 0) | (tokens >= config.vocab_size)).sum().item()
        raise ValueError(
            f"token ids must lie in [0, {config.vocab_size}) (vocab_size={config.vocab_size}); "
            f"got ids from {lo} to {hi}, {bad} of {tokens.numel()} out of range. "
            f"This is what makes an embedding fail with 'index out of range in self'."
        )


def check_tabular(tabular: object, config: MahiaConfig, batch_size: int | None = None) -> None:
    """Tabular features: a finite floating tensor (B, tab_dim)."""
    if not isinstance(tabular, torch.Tensor):
        raise TypeError(
            f"tabular must be a torch.Tensor of shape (B, {config.tab_dim}), "
            f"got {type(tabular).__name__}"
        )
    if tabular.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"tabular must be a floating tensor (torch.float32 expected), got dtype {tabular.dtype}"
        )
    if tabular.dim() != 2 or tabular.shape[1] != config.tab_dim:
        raise ValueError(
            f"tabular must have shape (batch, tab_dim) = (B, {config.tab_dim}), "
            f"got shape {tuple(tabular.shape)}"
        )
    if batch_size is not None and tabular.shape[0] != batch_size:
        raise ValueError(
            f"batch sizes differ: tokens have {batch_size} samples, "
            f"tabular has {tabular.shape[0]}"
        )
    finite = torch.isfinite(tabular)
    if not bool(finite.all()):
        rows = (~finite).any(dim=1).nonzero().flatten()[:5].tolist()
        n = int((~finite).sum())
        raise ValueError(
            f"tabular features must be finite; got {n} NaN/inf value(s), first in sample(s) "
            f"{rows}"
        )


def check_targets(targets: object, config: MahiaConfig, batch_size: int) -> None:
    """One target per configured task: class ids (B,) int64 or regression values (B,) float."""
    if not isinstance(targets, dict):
        raise TypeError(f"targets must be a dict task -> tensor, got {type(targets).__name__}")
    missing = [t for t in config.tasks if t not in targets]
    extra = [t for t in targets if t not in config.tasks]
    if missing or extra:
        raise ValueError(
            f"targets must have exactly the tasks {list(config.tasks)}; "
            f"missing {missing}, unexpected {extra}"
        )
    for name in config.tasks:
        y, spec = targets[name], TASKS[name]
        if not isinstance(y, torch.Tensor) or y.shape != (batch_size,):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"target '{name}' must have shape ({batch_size},), got {shape}")
        if spec.kind == "classification":
            if y.dtype not in _INT_DTYPES:
                raise TypeError(f"target '{name}' must hold class ids (int64), got {y.dtype}")
            if int(y.min()) < 0 or int(y.max()) >= spec.num_classes:
                raise ValueError(
                    f"target '{name}' class ids must lie in [0, {spec.num_classes}), "
                    f"got {int(y.min())} to {int(y.max())}"
                )
        else:
            if y.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"target '{name}' must be floating (float32), got {y.dtype}")
            if not bool(torch.isfinite(y).all()):
                raise ValueError(f"target '{name}' must be finite, got NaN/inf values")


def check_inputs(tokens: object, tabular: object, config: MahiaConfig) -> None:
    """Both model inputs, and that their batch sizes agree."""
    check_tokens(tokens, config)
    assert isinstance(tokens, torch.Tensor)
    check_tabular(tabular, config, batch_size=int(tokens.shape[0]))
