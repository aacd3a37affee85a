"""The synthetic tasks: what each one asks of the model and how hard it is.

Three tasks of different difficulty, so that Dynamic Weight Averaging has something to weigh:

- ``keywords`` (classification, 2 classes, text only): which of two sets of key tokens is
  in the majority. Needs the token path (embedding + MoE) to notice a few ids among 32.
- ``tabular`` (regression, tabular only): a smooth nonlinear function of four features.
- ``mixed`` (classification, 2 classes, both inputs): a linear score of three tabular
  features, shifted when a modifier token is present. Needs the fusion of both paths.

Reserved token ids (never used as filler): 1-4 positive keys, 5-8 negative keys,
9-10 modifiers; filler ids are drawn from ``RESERVED .. vocab_size - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

POSITIVE_KEYS = (1, 2, 3, 4)
NEGATIVE_KEYS = (5, 6, 7, 8)
MODIFIER_KEYS = (9, 10)
RESERVED = 16  # ids below this are never drawn as filler


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """What a task predicts, and the smallest inputs it can be generated for."""

    name: str
    kind: str  # "classification" | "regression"
    num_classes: int  # 1 for regression (one output)
    description: str
    min_vocab: int = RESERVED + 1
    min_tab_dim: int = 1
    min_seq_len: int = 1

    @property
    def out_dim(self) -> int:
        """Width of the task head's output."""
        return self.num_classes if self.kind == "classification" else 1


TASKS: dict[str, TaskSpec] = {
    "keywords": TaskSpec(
        name="keywords", kind="classification", num_classes=2,
        description="majority of positive vs negative key tokens in the text", min_seq_len=6,
    ),
    "tabular": TaskSpec(
        name="tabular", kind="regression", num_classes=1,
        description="sin(2 x0) + 0.5 x1 x2 + 0.25 x3^2 from the tabular features", min_tab_dim=4,
    ),
    "mixed": TaskSpec(
        name="mixed", kind="classification", num_classes=2,
        description="sign of x4 + x5 - x6 shifted by a modifier token in the text",
        min_tab_dim=7, min_seq_len=6,
    ),
}
