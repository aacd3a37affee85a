"""The catalog: one entry per claim of the summary, each with three runnable variants.

An entry knows how to *run* a variant (``buggy``: the original pattern; ``summary``: the fix
exactly as the summary states it; ``fixed``: the correct fix) and returns a measured
:class:`~mahiax.bugs.outcome.Outcome`. The verdict on the summary's fix is derived from those
outcomes every time (:mod:`mahiax.bugs.verdicts`); nothing here stores a verdict.

Each entry is a :class:`BugEntry` defined in one module of ``mahiax/bugs``; :data:`CATALOG`
below lists them in teaching order, and that list is the catalog.
"""

from __future__ import annotations

import importlib
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

# what trains an entry's variants: "harness" (mahiax.bugs.harness.train_variant, which also
# reads the memory categories at every step), "trainer" (the Trainer, with the entry's
# run_config) or "ddp" (gloo processes, outside the harness)
TRAINED_BY = ("harness", "trainer", "ddp")


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
    # the lessons that teach it (notebooks/src/<name>.py), the one that tells its story first;
    # lesson 00's catalog card reads them
    lessons: tuple[str, ...]
    runner: Runner
    trained_by: str = "harness"  # one of TRAINED_BY
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

    def __post_init__(self) -> None:
        if self.trained_by not in TRAINED_BY:
            raise ValueError(
                f"{self.id!r}: trained_by={self.trained_by!r}; allowed: {' | '.join(TRAINED_BY)}"
            )
        if not self.lessons:
            raise ValueError(f"{self.id!r}: name the lesson that teaches it (lessons=...)")

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


# The catalog, in the order learners meet it (the summary's order, then the claims it does not
# make): each line names an entry by the module of mahiax/bugs that defines it and the entry's
# name in that module. A new entry is its module plus one line here (docs/catalog.md, "Adding
# an entry"); `entries()` lists exactly these lines, in this order, and nothing else.
CATALOG: tuple[tuple[str, str], ...] = (
    # section 1 of the summary
    ("expert_index", "EXPERT_INDEX"),
    # section 2, top to bottom
    ("accumulate", "FABRIC_ACCUMULATE"),
    ("accumulate", "LAYER_ROUTER_ACCUMULATE"),
    ("stateful", "GRAPH_MEMORY_UPDATE"),
    ("stateful", "CONTROLLER_IMPORTANCE"),
    ("stateful", "TINY_MEMORY_WRITE"),
    ("stateful", "DWA_WEIGHTS"),
    # section 3
    ("loops", "RETAIN_GRAPH"),
    ("loops", "ENCODE_MULTI_LOSS"),
    # the summary's remaining issues
    ("profiling", "MEMORY_ZERO_CPU"),
    ("persistent", "PERSISTENT_INPLACE"),
    # not in the summary: mixed precision, DDP, MoE load balance
    ("loops", "AMP_CLIP_BEFORE_UNSCALE"),
    ("ddp", "DDP_UNUSED_EXPERTS"),
    ("ddp", "DDP_BROADCAST_BUFFERS"),
    ("balance", "ROUTER_COLLAPSE"),
)


def entries() -> list[BugEntry]:
    """Every entry of :data:`CATALOG`, in its order.

    Each entry is read from its module at every call, so after ``importlib.reload`` (or a
    lesson's ``%autoreload``) of an entry module the catalog holds the reloaded entry, once.
    Two lines that give the same id are an error, not a silent overwrite.
    """
    found: list[BugEntry] = []
    line_of: dict[str, str] = {}
    for module, name in CATALOG:
        entry = _entry(module, name)
        if entry.id in line_of:
            raise ValueError(
                f"catalog id {entry.id!r} is given twice in CATALOG: by {line_of[entry.id]} "
                f"and by {module}.{name}"
            )
        line_of[entry.id] = f"{module}.{name}"
        found.append(entry)
    return found


def get(entry_id: str) -> BugEntry:
    """The entry called ``entry_id``; unknown ids list the ones there are."""
    by_id = {e.id: e for e in entries()}
    if entry_id not in by_id:
        raise BadInput(f"unknown bug id {entry_id!r}; allowed: {', '.join(by_id)}")
    return by_id[entry_id]


def _entry(module: str, name: str) -> BugEntry:
    """The entry a line of :data:`CATALOG` names, imported now (a line that names nothing
    says which line and what the module holds instead)."""
    defined_in = importlib.import_module(f"mahiax.bugs.{module}")
    entry = getattr(defined_in, name, None)
    if not isinstance(entry, BugEntry):
        there = sorted(k for k, v in vars(defined_in).items() if isinstance(v, BugEntry))
        raise LookupError(
            f"CATALOG line ({module!r}, {name!r}): mahiax/bugs/{module}.py has no BugEntry "
            f"called {name} (its entries: {', '.join(there) or 'none'})"
        )
    return entry
