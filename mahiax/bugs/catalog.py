"""The catalog: one entry per claim of the summary, each with three runnable variants.

An entry knows how to *run* a variant (``buggy``: the original pattern; ``summary``: the fix
exactly as the summary states it; ``fixed``: the correct fix) and returns a measured
:class:`~mahiax.bugs.outcome.Outcome`. The verdict on the summary's fix is derived from those
outcomes every time (:mod:`mahiax.bugs.verdicts`); nothing here stores a verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mahiax.bugs.outcome import Outcome
from mahiax.bugs.variants import VARIANTS
from mahiax.config import MahiaConfig
from mahiax.errors import BadInput

# one colour per variant, the same in every lesson and on the dashboard's Bug lab (Plotly's
# default qualitative palette)
VARIANT_COLORS = {
    "buggy": "#EF553B", "summary": "#636EFA", "fixed": "#00CC96", "candidate": "#AB63FA",
}

# run(variant, steps, candidate) -> Outcome; variant may also be "candidate"
Runner = Callable[[str, int, object], Outcome]


@dataclass(frozen=True, kw_only=True)
class BugEntry:
    """One claim of the summary, turned into something that runs."""

    id: str
    section: str  # where the summary makes the claim, e.g. "2" or "remaining 1"
    component: str  # the MAHIA-X part involved
    title: str
    pattern: str  # the buggy line(s), as code
    summary_fix: str  # what the summary did, as code or words
    right_fix: str  # what actually fixes it
    explanation: str  # why, in a few sentences
    runner: Runner
    steps: int = 6  # steps for a quick run (enough for every buggy variant to show itself)
    candidate_kind: str = ""  # what `check()` accepts, in words
    probes: tuple[str, ...] = ()  # extra measured runs that the verdict reads
    devices: tuple[str, ...] = ("cpu", "cuda")  # device types its runs can train on
    device_note: str = ""  # what changes on another device, and why (measured by gpu-check)
    # the buggy, summary and fixed variants as candidates for check(), plus the band-aids
    # the lessons warn against ("band-aid: <what>"); what the checker-strength test pins
    candidates: Callable[[], dict[str, object]] | None = None
    # a sentence the verdict's reason ends with, read from all three outcomes (an entry whose
    # fixed variant is a second cure compares the two)
    compare: Callable[[dict[str, Outcome]], str] | None = None
    # the config a variant trains with, for entries that train the trainer's own model rather
    # than the harness's (what a recording of the variant stores as the run's config)
    run_config: Callable[[str, int], MahiaConfig] | None = None

    def run(self, variant: str, steps: int | None = None, candidate: object = None) -> Outcome:
        """Run one variant (or a learner's candidate) and return what was measured."""
        allowed = VARIANTS + self.probes + ("candidate",)
        if variant not in allowed:
            raise ValueError(
                f"unknown variant {variant!r} for {self.id!r}; allowed: {' | '.join(allowed)}"
            )
        if variant == "candidate" and candidate is None:
            raise ValueError("variant 'candidate' needs the candidate to run")
        n = self.steps if steps is None else steps
        if n < 1:
            raise ValueError(f"steps={n} must be a positive integer")
        from mahiax.bugs.harness import current_device  # late: the harness imports the model

        device = current_device()
        if device.type not in self.devices:
            raise ValueError(
                f"{self.id!r} runs on {' | '.join(self.devices)}, not {device.type!r}"
                + (f": {self.device_note}" if self.device_note else "")
            )
        return self.runner(variant, n, candidate)


_REGISTRY: dict[str, BugEntry] = {}
_LOADED = False

# the summary's order: section 1, section 2 top to bottom, section 3, remaining issues, extras
ORDER = (
    "expert-index", "fabric-accumulate", "layer-router-accumulate", "graph-memory-update",
    "controller-importance", "tiny-memory-write", "dwa-weights", "retain-graph",
    "encode-multi-loss", "memory-zero-cpu", "persistent-inplace", "amp-clip-before-unscale",
    "ddp-unused-experts", "ddp-broadcast-buffers", "router-collapse",
)


def register(entry: BugEntry) -> BugEntry:
    """Add an entry to the catalog (ids are unique)."""
    if entry.id in _REGISTRY:
        raise ValueError(f"duplicate catalog id {entry.id!r}")
    _REGISTRY[entry.id] = entry
    return entry


def entries() -> list[BugEntry]:
    """Every entry, in the summary's order."""
    _load()
    return list(_REGISTRY.values())


def get(entry_id: str) -> BugEntry:
    """The entry called ``entry_id``; unknown ids list the ones there are."""
    _load()
    if entry_id not in _REGISTRY:
        raise BadInput(f"unknown bug id {entry_id!r}; allowed: {', '.join(_REGISTRY)}")
    return _REGISTRY[entry_id]


def _load() -> None:
    """Import the modules that define entries (once; order = the summary's order)."""
    global _LOADED
    if _LOADED:
        return
    from mahiax.bugs import (  # noqa: F401  (imported for their register() calls)
        accumulate,
        balance,
        ddp,
        expert_index,
        loops,
        persistent,
        profiling,
        stateful,
    )

    rank = {k: i for i, k in enumerate(ORDER)}
    ordered = sorted(_REGISTRY.values(), key=lambda e: rank.get(e.id, len(rank)))
    _REGISTRY.clear()
    _REGISTRY.update((e.id, e) for e in ordered)
    _LOADED = True
