"""Synthetic multi-task data, generated deterministically from ``(seed, step)``.

Every batch is a pure function of the seed and the step number, so a resumed run sees exactly
the batches an uninterrupted run would have seen, and two runs with one seed are identical.

Shapes: B batch, T ``seq_len``, F ``tab_dim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mahiax.config import MahiaConfig
from mahiax.tasks import MODIFIER_KEYS, NEGATIVE_KEYS, POSITIVE_KEYS, RESERVED


@dataclass(kw_only=True)
class Batch:
    """One batch: token ids, tabular features and one target tensor per task."""

    tokens: torch.Tensor  # (B, T) int64 ids in [0, vocab_size)
    tabular: torch.Tensor  # (B, F) float32
    targets: dict[str, torch.Tensor]  # classification: (B,) int64; regression: (B,) float32

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        return Batch(
            tokens=self.tokens.to(device),
            tabular=self.tabular.to(device),
            targets={k: v.to(device) for k, v in self.targets.items()},
        )

    def rows(self, start: int, stop: int) -> Batch:
        """Samples ``[start, stop)``: one rank's shard of a global batch."""
        return Batch(tokens=self.tokens[start:stop], tabular=self.tabular[start:stop],
                     targets={k: v[start:stop] for k, v in self.targets.items()})

    @property
    def size(self) -> int:
        """Number of samples (B)."""
        return int(self.tokens.shape[0])


_STEP_STRIDE = 1_000_003  # a prime, so (seed, step) pairs map to distinct generator seeds
_EVAL_OFFSET = 10**12  # eval batches live far from any training step


class SyntheticMultiTask:
    """Deterministic generator of :class:`Batch` objects for the config's tasks."""

    def __init__(self, config: MahiaConfig):
        self.config = config

    def batch(self, step: int, batch_size: int | None = None) -> Batch:
        """The training batch of ``step`` (same seed and step: same batch, always)."""
        return self._make(self.config.seed * _STEP_STRIDE + step, batch_size)

    def eval_batch(self, index: int = 0, batch_size: int = 512) -> Batch:
        """A held-out batch, never used for training."""
        return self._make(self.config.seed * _STEP_STRIDE + _EVAL_OFFSET + index, batch_size)

    def _make(self, gen_seed: int, batch_size: int | None) -> Batch:
        c = self.config
        b = batch_size or c.batch_size
        g = torch.Generator().manual_seed(gen_seed)
        tokens = torch.randint(RESERVED, c.vocab_size, (b, c.seq_len), generator=g)  # (B, T)
        tab = torch.randn(b, c.tab_dim, generator=g)  # (B, F)
        # one random permutation of positions per sample: key tokens go to distinct places
        order = torch.argsort(torch.rand(b, c.seq_len, generator=g), dim=1)  # (B, T)
        targets: dict[str, torch.Tensor] = {}
        used = 0  # positions of `order` already taken by an earlier task
        if "keywords" in c.tasks:
            label = torch.randint(0, 2, (b,), generator=g)
            n_major = torch.randint(1, 4, (b,), generator=g)  # 1..3 keys of the label's set
            n_minor = (torch.rand(b, generator=g) * n_major).floor().long()  # fewer distractors
            # sample i plants n_major[i] keys of its label's set, then n_minor[i] of the other,
            # in slots 0..4 of its positions order[i, used:used + 5] (distinct positions)
            positive = (label == 1).unsqueeze(1)  # (B, 1)
            major = torch.where(positive, torch.tensor(POSITIVE_KEYS), torch.tensor(NEGATIVE_KEYS))
            minor = torch.where(positive, torch.tensor(NEGATIVE_KEYS), torch.tensor(POSITIVE_KEYS))
            slot = torch.arange(5)  # (5,): n_major <= 3 and n_minor <= 2
            n_maj = n_major.unsqueeze(1)  # (B, 1)
            is_major = slot < n_maj  # (B, 5)
            planted = slot < n_maj + n_minor.unsqueeze(1)  # (B, 5)
            key = torch.where(is_major, major[:, slot % 4],
                              minor.gather(1, (slot - n_maj).clamp(min=0) % 4))  # (B, 5)
            rows = torch.arange(b).unsqueeze(1).expand(b, 5)  # (B, 5)
            tokens[rows[planted], order[:, used:used + 5][planted]] = key[planted]
            used += 5
            targets["keywords"] = label
        if "tabular" in c.tasks:
            x = tab
            y = torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.25 * x[:, 3] ** 2 - 0.25
            targets["tabular"] = (y / math.sqrt(0.68)).float()  # ~unit variance
        if "mixed" in c.tasks:
            has_mod = torch.rand(b, generator=g) < 0.5
            mod_id = torch.tensor(MODIFIER_KEYS)[torch.randint(0, 2, (b,), generator=g)]
            pos = order[:, used]
            rows = torch.arange(b)
            tokens[rows[has_mod], pos[has_mod]] = mod_id[has_mod]
            score = (tab[:, 4] + tab[:, 5] - tab[:, 6]) / math.sqrt(3) + 1.5 * has_mod - 0.75
            targets["mixed"] = (score > 0).long()
        targets = {t: targets[t] for t in c.tasks}
        return Batch(tokens=tokens, tabular=tab, targets=targets)
