"""How often a recorded run takes each kind of reading: one definition for the probes, the
CLI's flags and the dashboard's run launcher.

Light on purpose (no torch): ``mahiax train --help`` and the store commands read it.
The CLI's recording flags are made from the fields here (:func:`add_flags`), so a flag's
name, default and help cannot drift from the setting it fills.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

# Steps between two readings of memory by category in training runs. One reading walks the
# step's autograd graph in Python (where the time goes: :mod:`mahiax.telemetry.categories`);
# ``make bench`` (``benchmarks/bench_telemetry.py``) measures what each cadence costs.
# ``Cadence(categories_every=1)`` reads every step (lessons, short runs, a big model whose
# step dwarfs the walk).
CATEGORIES_EVERY = 10

# Steps between two full memory readings on a CPU, which also take one at a recorded run's
# last step. The reading scans every object Python's garbage collector tracks (a training
# process holds hundreds of thousands once ``torch.optim`` has imported its compiler stack):
# :mod:`mahiax.telemetry.memory_meter`; one scan's time: ``make bench``, row ``telemetry``.
# Between two of them, ``mem/rss`` (every step) and the categories show a leak's growth.
MEMORY_EVERY = 1000

# Steps whose expert loads ``moe/max_vio_global`` sums: long enough that one skewed batch
# does not set it, short enough that it follows the router as training moves it.
MAX_VIO_WINDOW = 50


def _setting(default: int | None, help: str, *, none_allowed: bool = False):
    """A cadence field with the help its CLI flag shows."""
    return field(default=default, metadata={"help": help, "none_allowed": none_allowed})


@dataclass(frozen=True, kw_only=True)
class Cadence:
    """How often each kind of reading is taken (in steps), and when memory is a spike.

    Scalars are written every step; memory by category every ``categories_every`` steps.
    """

    snapshot_every: int = _setting(
        25, "snapshot the memory nodes, adjacency and ring buffer every N steps")
    categories_every: int = _setting(
        CATEGORIES_EVERY, "record memory by category (parameters, gradients, optimizer "
        "state, saved for backward) every N steps")
    memory_every: int = _setting(
        MEMORY_EVERY, "CPU: take the full memory reading (a scan of every live object, for "
        "mem/other and mem/total) every N steps and at a recorded run's last step")
    spike_bytes: int | None = _setting(
        128 * 2**20, "CUDA: save one memory snapshot at a step whose allocated or peak "
        "memory rises by more than N bytes ('none': never)", none_allowed=True)
    spike_history: int = _setting(
        100_000, "CUDA: allocation events a spike snapshot's ring buffer keeps")
    max_vio_window: int = _setting(
        MAX_VIO_WINDOW, "steps of expert load summed for moe/max_vio_global")

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.metadata["none_allowed"]:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                allowed = "a positive integer" + (" or None" if f.metadata["none_allowed"] else "")
                raise ValueError(f"{f.name}={v!r} must be {allowed}")

    def to_dict(self) -> dict[str, int | None]:
        """Every setting by name: what the run store keeps with a run
        (``RunWriter(cadence=...)``)."""
        return asdict(self)

    @classmethod
    def of_run(cls, run: Mapping) -> Cadence:
        """The cadence run ``run`` (a :meth:`mahiax.store.RunReader.run` dict) was recorded
        with: its stored ``cadence``, a setting it lacks at its default; the defaults for a
        run stored without one (recorded before runs kept it) or with one that is not valid."""
        stored = run.get("cadence")
        if not isinstance(stored, Mapping):
            return cls()
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in stored.items() if k in names})
        except (TypeError, ValueError):
            return cls()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser_for(none_allowed: bool):
    def parse(text: str) -> int | None:
        if none_allowed and text.strip().lower() == "none":
            return None
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            allowed = "a positive integer" + (" or 'none'" if none_allowed else "")
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}")
        return value
    return parse


def add_flags(group: argparse._ActionsContainer) -> None:
    """One flag per :class:`Cadence` field (``--categories-every N``, ...), its default and
    help taken from the field."""
    for f in fields(Cadence):
        none_allowed = f.metadata["none_allowed"]
        group.add_argument(_flag(f.name), dest=f.name, type=_parser_for(none_allowed),
                           default=f.default, metavar="N",
                           help=f"{f.metadata['help']} (default: {f.default})")


def from_args(args: argparse.Namespace) -> Cadence:
    """The :class:`Cadence` the flags of :func:`add_flags` ask for, field by field."""
    return Cadence(**{f.name: getattr(args, f.name) for f in fields(Cadence)})
