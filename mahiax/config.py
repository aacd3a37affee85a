"""One configuration for the model, the data and the training loop.

Vocabulary, written once and used everywhere in the package:

- ``vocab_size``: number of token ids; valid ids are ``0 .. vocab_size - 1``.
- ``seq_len``: tokens per sample (T).
- ``tab_dim``: tabular features per sample (F).
- ``d_model``: width of every hidden feature (D).
- ``num_experts`` / ``top_k``: experts in the MoE layer (E) and experts per token (K).
- ``expert_hidden``: hidden width of one SwiGLU expert (H).
- ``fabric_layers`` / ``fabric_active``: candidate blocks in the DynamicNeuroFabric (L) and
  blocks each sample runs through.
- ``memory_nodes``: nodes of the GraphDiffusionMemory (N).
- ``tiny_slots``: slots of the TinyMemory ring buffer (S).
- ``tasks``: task names from :data:`mahiax.tasks.TASKS`.
- ``precision``: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 adds a GradScaler).
- ``balance``: how the MoE's expert load is balanced: ``aux`` (the Switch load-balancing
  loss, weighted by ``aux_loss_coef``), ``bias`` (DeepSeek-V3's auxiliary-loss-free bias on
  the top-k selection, moved by ``bias_update_rate`` a step) or ``none``.

Invalid values raise :class:`~mahiax.errors.BadInput` (a ``ValueError``) naming the field,
the value and what is allowed, before any tensor is made.

A resumed run keeps its config; only ``max_steps`` (``--steps``) may change
(:data:`RESUME_MAY_CHANGE`, :func:`continue_config`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mahiax.errors import BadInput, ResumeConflict, shown
from mahiax.tasks import TASKS

PRECISIONS = ("fp32", "bf16", "fp16")
WEIGHTINGS = ("dwa", "equal", "uncertainty")
DEVICES = ("cpu", "cuda", "auto")
BALANCES = ("aux", "bias", "none")  # see mahiax.model.moe.MixtureOfExperts


@dataclass(frozen=True, kw_only=True)
class MahiaConfig:
    """Everything a run needs; defaults train 300 steps in seconds on 2 CPU cores."""

    # --- data ---
    vocab_size: int = 1000  # token ids 0..999 (lesson 01 feeds ids from 10000: out of range)
    seq_len: int = 32  # tokens per sample
    tab_dim: int = 16  # tabular features per sample
    tasks: tuple[str, ...] = ("keywords", "tabular", "mixed")  # see mahiax.tasks.TASKS
    # --- model ---
    d_model: int = 64  # width of every hidden feature
    num_experts: int = 8  # experts in the MoE layer
    top_k: int = 2  # experts per token (Mixtral uses 2)
    expert_hidden: int = 128  # hidden width of one SwiGLU expert
    fabric_layers: int = 4  # candidate blocks in the DynamicNeuroFabric
    fabric_active: int = 2  # blocks each sample runs through
    memory_nodes: int = 16  # nodes of the GraphDiffusionMemory
    tiny_slots: int = 8  # batch summaries kept by the TinyMemory ring buffer
    memory_write_rate: float = 0.1  # how far a node moves toward its inputs per step
    importance_momentum: float = 0.9  # EMA momentum of the MetaController
    dropout: float = 0.0  # 0 keeps gradient checks and seeded runs exact
    # --- loss ---
    weighting: str = "dwa"  # dwa | equal | uncertainty
    dwa_temperature: float = 2.0  # T of Liu et al. 2019
    dwa_window: int = 10  # steps averaged into one DWA "epoch" loss
    balance: str = "aux"  # aux | bias | none: how the expert load is balanced
    aux_loss_coef: float = 0.01  # Switch-style load-balancing loss coefficient (balance=aux)
    bias_update_rate: float = 1e-3  # bias step per training step (balance=bias; Megatron-LM's
    #                                 moe_router_bias_update_rate default)
    z_loss_coef: float = 0.001  # router z-loss coefficient (ST-MoE), with any balance
    # --- optimisation ---
    batch_size: int = 32  # samples per step
    lr: float = 3e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 20  # linear warm-up before the cosine decay
    max_steps: int = 300  # length of the cosine schedule
    grad_clip: float = 1.0  # max global grad norm (after unscaling)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "cpu"  # cpu | cuda | auto
    seed: int = 0  # seeds the weights and the synthetic data

    def __post_init__(self) -> None:
        validate_config(self)

    def replace(self, **changes: Any) -> MahiaConfig:
        """A copy with ``changes`` applied and validated again."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise BadInput(f"unknown config field(s) {unknown}; allowed: {field_names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tasks as a list)."""
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MahiaConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise BadInput(f"unknown config field(s) {unknown}; allowed: {field_names()}")
        data = dict(data)
        if "tasks" in data:
            data["tasks"] = tuple(data["tasks"])
        return cls(**data)


def field_names() -> list[str]:
    """Public config field names, in declaration order."""
    return [f.name for f in dataclasses.fields(MahiaConfig)]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite real number (bools, NaN and inf are not)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise BadInput(f"config field '{name}' = {value!r} is invalid; allowed: {allowed}")


def validate_config(c: MahiaConfig) -> None:
    """Check every field and every combination; raise BadInput on the first problem."""
    positive = (
        "vocab_size seq_len tab_dim d_model num_experts top_k expert_hidden fabric_layers "
        "fabric_active memory_nodes tiny_slots dwa_window batch_size max_steps"
    ).split()
    for name in positive:
        v = getattr(c, name)
        _require(_is_int(v) and v > 0, name, v, "a positive integer")
    _require(
        _is_int(c.warmup_steps) and c.warmup_steps >= 0,
        "warmup_steps", c.warmup_steps, "an integer >= 0",
    )
    _require(_is_int(c.seed) and c.seed >= 0, "seed", c.seed, "an integer >= 0")
    _require(
        c.top_k <= c.num_experts,
        "top_k", c.top_k, f"1 .. num_experts ({c.num_experts})",
    )
    _require(
        c.fabric_active <= c.fabric_layers,
        "fabric_active", c.fabric_active, f"1 .. fabric_layers ({c.fabric_layers})",
    )
    for name, lo, hi in (
        ("memory_write_rate", 0.0, 1.0),
        ("importance_momentum", 0.0, 1.0),
    ):
        v = getattr(c, name)
        _require(
            _is_number(v) and lo <= v <= hi, name, v, f"a number in [{lo}, {hi}]"
        )
    _require(
        _is_number(c.dropout) and 0.0 <= c.dropout < 1.0,
        "dropout", c.dropout, "a number in [0, 1)",
    )
    for name in ("dwa_temperature", "lr", "bias_update_rate"):
        v = getattr(c, name)
        _require(_is_number(v) and v > 0, name, v, "a finite number > 0")
    for name in ("weight_decay", "aux_loss_coef", "z_loss_coef", "grad_clip"):
        v = getattr(c, name)
        _require(_is_number(v) and v >= 0, name, v, "a finite number >= 0")
    _require(c.precision in PRECISIONS, "precision", c.precision, " | ".join(PRECISIONS))
    _require(c.weighting in WEIGHTINGS, "weighting", c.weighting, " | ".join(WEIGHTINGS))
    _require(c.device in DEVICES, "device", c.device, " | ".join(DEVICES))
    _require(c.balance in BALANCES, "balance", c.balance, " | ".join(BALANCES))
    _require(
        isinstance(c.tasks, tuple) and len(c.tasks) > 0,
        "tasks", c.tasks, f"a non-empty tuple of names from {sorted(TASKS)}",
    )
    unknown = [t for t in c.tasks if t not in TASKS]
    _require(not unknown, "tasks", c.tasks, f"names from {sorted(TASKS)} (unknown: {unknown})")
    _require(len(set(c.tasks)) == len(c.tasks), "tasks", c.tasks, "each task at most once")
    for t in c.tasks:
        need = TASKS[t].min_vocab
        _require(
            c.vocab_size >= need,
            "vocab_size", c.vocab_size, f">= {need} (task '{t}' reserves key tokens)",
        )
        need_tab = TASKS[t].min_tab_dim
        _require(
            c.tab_dim >= need_tab,
            "tab_dim", c.tab_dim, f">= {need_tab} (task '{t}' reads that many features)",
        )
        need_seq = TASKS[t].min_seq_len
        _require(
            c.seq_len >= need_seq,
            "seq_len", c.seq_len, f">= {need_seq} (task '{t}' plants key tokens)",
        )


# --- resuming a run ---

# Fields a resumed run may change. ``max_steps`` is the length of the cosine schedule: asking
# a run to train to step N stretches its schedule to N (see ``mahiax.training.trainer.lr_at``). Any
# other change would make the resumed run a different run than the one its checkpoint continues.
RESUME_MAY_CHANGE = ("max_steps",)


def config_differences(
    stored: MahiaConfig, given: MahiaConfig, ignore: tuple[str, ...] = RESUME_MAY_CHANGE
) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored value, given value)}`` for every field that differs, but ``ignore``."""
    return {
        f: (getattr(stored, f), getattr(given, f))
        for f in field_names()
        if f not in ignore and getattr(stored, f) != getattr(given, f)
    }


def continue_config(
    stored: MahiaConfig, given: Mapping[str, Any], run: str,
    flags: Mapping[str, str] | None = None,
) -> MahiaConfig:
    """The config resumed run ``run`` continues with: ``stored``, with ``max_steps`` from
    ``given`` if it is there.

    Every other field in ``given`` must equal the stored value; the first that does not raises
    :class:`~mahiax.errors.ResumeConflict` naming it as the person wrote it (``flags`` maps a
    field to its flag, e.g. ``{"lr": "--lr 0.01"}``), with the stored and the given value.
    """
    unknown = sorted(set(given) - set(field_names()))
    if unknown:
        raise BadInput(f"unknown config field(s) {unknown}; allowed: {field_names()}")
    for name, value in given.items():
        value = tuple(value) if name == "tasks" else value
        if name not in RESUME_MAY_CHANGE and value != getattr(stored, name):
            flag = (flags or {}).get(name) or f"{name}={shown(value)}"
            raise ResumeConflict(run, name, getattr(stored, name), value, flag)
    return stored.replace(**{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE})


# --- presets: named functions returning configs (nanoGPT / torchtitan style) ---


def teaching() -> MahiaConfig:
    """The default: small enough for a classroom laptop, big enough that every part works."""
    return MahiaConfig()


def tiny() -> MahiaConfig:
    """Smallest sensible model, for unit tests and float64 gradient checks."""
    return MahiaConfig(
        vocab_size=64, seq_len=8, tab_dim=8, d_model=16, num_experts=4, top_k=2,
        expert_hidden=24, fabric_layers=3, fabric_active=2, memory_nodes=6, tiny_slots=4,
        batch_size=8, dwa_window=2, warmup_steps=2, max_steps=50,
    )


def medium() -> MahiaConfig:
    """The benchmark's medium size: 4,096 tokens per step, width 256, experts 512 wide."""
    return MahiaConfig(
        seq_len=64, batch_size=64, d_model=256, expert_hidden=512, num_experts=8, top_k=2,
        memory_nodes=32,
    )


PRESETS = {"teaching": teaching, "tiny": tiny, "medium": medium}


def preset(name: str) -> MahiaConfig:
    """Config of a named preset; unknown names list the ones there are."""
    if name not in PRESETS:
        raise BadInput(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}")
    return PRESETS[name]()
