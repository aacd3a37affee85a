"""The run store's metric keys, each defined once: what the probes write, what the dashboard,
the lessons and the benchmarks read.

Light on purpose (no torch, no numpy): the dashboard and the store commands import it.
Every key is a named constant here (``LOSS``, ``MAX_VIO_GLOBAL``, ``MEMORY_NODES`` ...) or,
for the per-task keys, a builder (``task_loss("tabular")`` is ``"loss/tabular"``); code
names the constant, never the string. :data:`TRAINING_KEYS` holds, for each key a training
run (``mahiax train --run``, :func:`mahiax.recording.record_training`) writes, its kind and
when it is written, as data: :func:`keys_written` says which keys a run of a given config
and device holds, and ``tests/foundations/test_metric_keys.py`` records a run and checks the store
against it. :data:`CATALOG_KEYS` are the keys a bug-catalog run of the harness writes
(:mod:`mahiax.bugs.harness`).

Keys a training run writes (scalars unless marked; ``<task>`` is each task name):

====================================  ===================================================
``loss``                              weighted total that was backpropagated
``loss/<task>``, ``weight/<task>``    per-task loss and the loss weight in force
``dwa/ratio/<task>``                  DWA descent rate L(t-1)/L(t-2) (DWA only)
``moe/aux_loss``, ``moe/z_loss``      load-balancing and z losses
``moe/cv``, ``moe/entropy``,          balance figures of the step's routing (global batch)
``moe/max_over_mean``, ``moe/dead``
``moe/max_vio``                       MaxVio = max load / mean load - 1 (Wang et al. 2024)
                                      of this step's batch (the paper's MaxVio_batch)
``moe/max_vio_global``                MaxVio of the load summed over the last
                                      ``Cadence.max_vio_window`` steps (50 unless the run
                                      was recorded with another ``--max-vio-window``; the
                                      run store keeps the run's cadence; fewer at the
                                      start and after a resume, which starts the window
                                      afresh): the training-time stand-in for the paper's
                                      MaxVio_global, which sums a whole validation set's
                                      load. Low while max_vio is high: each batch is skewed
                                      but not always to the same experts
``moe/load_min``, ``moe/load_p50``,   percentiles of the E experts' loads, in units of the
``moe/load_p90``, ``moe/load_p99``    mean load (1 = balanced; the max is max_over_mean)
``moe/dropped``                       tokens dropped (always 0: no capacity limit)
``moe/tokens_per_expert`` (vector)    tokens routed to each expert (N*K in total)
``moe/bias`` (vector)                 balance=bias: the selection bias after the step's update
``moe/bias_flipped``                  balance=bias: share of the N*K top-k choices the bias
                                      changed against the unbiased top-k
``fabric/importance`` (vector)        MetaController per-layer importance
``optim/grad_norm``, ``optim/lr``     true grad norm before clipping; learning rate
``amp/scale``, ``amp/skipped``,       loss scale; 1 if this step was skipped; total skips
``amp/skipped_total``                 (written with every precision: fp32 has scale 1)
``time/step_s``, ``time/samples_per_s``
``mem/rss``                           process RSS, bytes (every step: cheap)
``mem/params``, ``mem/grads``,        memory by category on the trainer's device, bytes,
``mem/optimizer``, ``mem/saved``      every ``categories_every`` steps (and with each
                                      full reading), read after the forward (the step's
                                      graph still holds its saved tensors; the gradients
                                      are the previous step's, not yet cleared)
``mem/other``                         with the categories: CUDA: allocated minus them; CPU:
                                      every ``memory_every`` steps and at a recorded run's
                                      last step (a scan of every live object)
``mem/total``, ``mem/peak``           CUDA: every step (memory_allocated,
                                      max_memory_allocated); CPU: with ``mem/other``
``mem/reserved``                      CUDA: the caching allocator's reserve, every step
``mem/tensor_bytes``                  CPU: the same figure as ``mem/total`` (older name)
``mem/allocated``                     CUDA: the same figure as ``mem/total`` (older name)
``mem/spike``                         CUDA: the jump, bytes, at the step that saved a
                                      memory snapshot (see :mod:`mahiax.telemetry.spikes`)
``mem/spike_snapshot`` (snapshot)     that snapshot's path, UTF-8 bytes
                                      (:func:`~mahiax.telemetry.spikes.spike_snapshots`)
``memory/nodes`` (snapshot)           GraphDiffusionMemory nodes (N, D), every
                                      ``snapshot_every`` steps and at the last step
``memory/adjacency`` (snapshot)       its diffusion matrix A (N, N)
``tiny/slots`` (snapshot)             TinyMemory ring buffer (S, D)
====================================  ===================================================

Keys a bug-catalog run of the harness writes (``mahiax train --bug``; scalars), besides
``loss``, ``loss/<task>`` and memory by category (``mem/params`` ... as above):

====================================  ===================================================
``graph_nodes``                       autograd nodes of the step's graph (every step)
``tensor_bytes``                      live tensor bytes (CPU) or allocated (CUDA), every
                                      few steps and at the last one
``grad_diff``                         largest gradient error against the clean reference
                                      (entries that compare gradients)
====================================  ===================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# -- the keys -------------------------------------------------------------------------------

LOSS = "loss"
TASK_LOSS_PREFIX = "loss/"
TASK_WEIGHT_PREFIX = "weight/"
DWA_RATIO_PREFIX = "dwa/ratio/"


def task_loss(task: str) -> str:
    """``loss/<task>``: the task's loss."""
    return TASK_LOSS_PREFIX + task


def task_weight(task: str) -> str:
    """``weight/<task>``: the task's loss weight."""
    return TASK_WEIGHT_PREFIX + task


def dwa_ratio(task: str) -> str:
    """``dwa/ratio/<task>``: the task's DWA descent ratio."""
    return DWA_RATIO_PREFIX + task


MOE_AUX_LOSS = "moe/aux_loss"
MOE_Z_LOSS = "moe/z_loss"
MOE_CV = "moe/cv"
MOE_ENTROPY = "moe/entropy"
MOE_MAX_OVER_MEAN = "moe/max_over_mean"
MOE_DEAD = "moe/dead"
MAX_VIO = "moe/max_vio"
MAX_VIO_GLOBAL = "moe/max_vio_global"
LOAD_MIN = "moe/load_min"
LOAD_P50 = "moe/load_p50"
LOAD_P90 = "moe/load_p90"
LOAD_P99 = "moe/load_p99"
MOE_DROPPED = "moe/dropped"
TOKENS_PER_EXPERT = "moe/tokens_per_expert"
MOE_BIAS = "moe/bias"
BIAS_FLIPPED = "moe/bias_flipped"
FABRIC_IMPORTANCE = "fabric/importance"
GRAD_NORM = "optim/grad_norm"
LR = "optim/lr"
AMP_SCALE = "amp/scale"
AMP_SKIPPED = "amp/skipped"
AMP_SKIPPED_TOTAL = "amp/skipped_total"
STEP_S = "time/step_s"
SAMPLES_PER_S = "time/samples_per_s"
MEM_RSS = "mem/rss"
MEM_PARAMS = "mem/params"
MEM_GRADS = "mem/grads"
MEM_OPTIMIZER = "mem/optimizer"
MEM_SAVED = "mem/saved"
MEM_OTHER = "mem/other"
MEM_TOTAL = "mem/total"
MEM_PEAK = "mem/peak"
MEM_RESERVED = "mem/reserved"
MEM_TENSOR_BYTES = "mem/tensor_bytes"
MEM_ALLOCATED = "mem/allocated"
MEM_SPIKE = "mem/spike"
MEM_SPIKE_SNAPSHOT = "mem/spike_snapshot"
MEMORY_NODES = "memory/nodes"
MEMORY_ADJACENCY = "memory/adjacency"
TINY_SLOTS = "tiny/slots"

# the harness's keys (bug-catalog runs)
GRAPH_NODES = "graph_nodes"
TENSOR_BYTES = "tensor_bytes"
GRAD_DIFF = "grad_diff"

# groups of keys, by the prefix they share (the dashboard's pages pick columns by them)
MOE_PREFIX = "moe/"
MEM_PREFIX = "mem/"
AMP_PREFIX = "amp/"
TIME_PREFIX = "time/"
DWA_PREFIX = "dwa/"

# Memory by category: MemoryCategories' field -> its key, in the order as_metrics writes
# them (the first five are the stacking order of the dashboard's chart)
MEMORY_FIELDS = {
    "params": MEM_PARAMS,
    "grads": MEM_GRADS,
    "optimizer": MEM_OPTIMIZER,
    "saved": MEM_SAVED,
    "other": MEM_OTHER,
    "total": MEM_TOTAL,
    "reserved": MEM_RESERVED,
    "peak": MEM_PEAK,
}

# -- what each key is, and when a run writes it ---------------------------------------------

SCALAR, VECTOR, SNAPSHOT = "scalar", "vector", "snapshot"
KINDS = (SCALAR, VECTOR, SNAPSHOT)

# When a key is written: every step, or at the steps a :class:`mahiax.telemetry.cadence.Cadence`
# setting names (the value is the setting's field name), or at a memory spike.
EVERY_STEP = "every step"
EVERY_CATEGORIES = "categories_every"  # every categories_every steps, and with every full reading
EVERY_MEMORY = "memory_every"
EVERY_SNAPSHOT = "snapshot_every"  # and at the last step
AT_SPIKE = "at a memory spike"  # CUDA: the one step whose memory jumped (if any)
WHEN = (EVERY_STEP, EVERY_CATEGORIES, EVERY_MEMORY, EVERY_SNAPSHOT, AT_SPIKE)

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class Setting:
    """A config setting a key needs: the key is written only by runs whose config has
    ``value`` under ``key``."""

    key: str  # a config field: "weighting"
    value: str  # "dwa"


@dataclass(frozen=True, kw_only=True)
class Key:
    """One documented key: its name (``<task>`` stands for each task), kind, when it is
    written on each device (None: never on that device), and the config setting it needs
    (``weighting`` is ``dwa``: DWA only; None: every run)."""

    name: str
    kind: str
    cpu: str | None
    cuda: str | None
    only: Setting | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} is not one of {KINDS}")
        for when in (self.cpu, self.cuda):
            if when is not None and when not in WHEN:
                raise ValueError(f"{self.name}: when {when!r} is not one of {WHEN}")

    @property
    def per_task(self) -> bool:
        return "<task>" in self.name

    def when(self, device: str) -> str | None:
        """When this key is written on ``device`` (``cpu`` or ``cuda``; ``cuda:0`` reads as
        ``cuda``): one of :data:`WHEN`, or None when it never is there."""
        return self.cuda if _device_type(device) == "cuda" else self.cpu

    def applies(self, config: Mapping[str, object], device: str) -> bool:
        """Whether a run of ``config`` (a config dict) on ``device`` writes this key."""
        if self.when(device) is None:
            return False
        return self.only is None or config.get(self.only.key) == self.only.value

    def names(self, tasks: Iterable[str]) -> list[str]:
        """The stored key names: one per task for a per-task key."""
        if self.per_task:
            return [self.name.replace("<task>", t) for t in tasks]
        return [self.name]


_TASK = "<task>"
_STEP = EVERY_STEP
_DWA = Setting(key="weighting", value="dwa")
_BIAS = Setting(key="balance", value="bias")

TRAINING_KEYS: tuple[Key, ...] = (
    Key(name=LOSS, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=task_loss(_TASK), kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=task_weight(_TASK), kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=dwa_ratio(_TASK), kind=SCALAR, cpu=_STEP, cuda=_STEP, only=_DWA),
    Key(name=MOE_AUX_LOSS, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=MOE_Z_LOSS, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=MOE_CV, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=MOE_ENTROPY, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=MOE_MAX_OVER_MEAN, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=MOE_DEAD, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=MAX_VIO, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=MAX_VIO_GLOBAL, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=LOAD_MIN, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=LOAD_P50, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=LOAD_P90, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=LOAD_P99, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=MOE_DROPPED, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=TOKENS_PER_EXPERT, kind=VECTOR, cpu=_STEP, cuda=_STEP),
    Key(name=MOE_BIAS, kind=VECTOR, cpu=_STEP, cuda=_STEP, only=_BIAS),
    Key(name=BIAS_FLIPPED, kind=SCALAR, cpu=_STEP, cuda=_STEP, only=_BIAS),
    Key(name=FABRIC_IMPORTANCE, kind=VECTOR, cpu=_STEP, cuda=_STEP),
    Key(name=GRAD_NORM, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=LR, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=AMP_SCALE, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=AMP_SKIPPED, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=AMP_SKIPPED_TOTAL, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=STEP_S, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=SAMPLES_PER_S, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=MEM_RSS, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=MEM_PARAMS, kind=SCALAR, cpu=EVERY_CATEGORIES, cuda=EVERY_CATEGORIES),
    Key(name=MEM_GRADS, kind=SCALAR, cpu=EVERY_CATEGORIES, cuda=EVERY_CATEGORIES),
    Key(name=MEM_OPTIMIZER, kind=SCALAR, cpu=EVERY_CATEGORIES, cuda=EVERY_CATEGORIES),
    Key(name=MEM_SAVED, kind=SCALAR, cpu=EVERY_CATEGORIES, cuda=EVERY_CATEGORIES),
    Key(name=MEM_OTHER, kind=SCALAR, cpu=EVERY_MEMORY, cuda=EVERY_CATEGORIES),
    Key(name=MEM_TOTAL, kind=SCALAR, cpu=EVERY_MEMORY, cuda=_STEP),
    Key(name=MEM_PEAK, kind=SCALAR, cpu=EVERY_MEMORY, cuda=_STEP),
    Key(name=MEM_RESERVED, kind=SCALAR, cpu=None, cuda=_STEP),
    Key(name=MEM_TENSOR_BYTES, kind=SCALAR, cpu=EVERY_MEMORY, cuda=None),
    Key(name=MEM_ALLOCATED, kind=SCALAR, cpu=None, cuda=_STEP),
    Key(name=MEM_SPIKE, kind=SCALAR, cpu=None, cuda=AT_SPIKE),
    Key(name=MEM_SPIKE_SNAPSHOT, kind=SNAPSHOT, cpu=None, cuda=AT_SPIKE),
    Key(name=MEMORY_NODES, kind=SNAPSHOT, cpu=EVERY_SNAPSHOT, cuda=EVERY_SNAPSHOT),
    Key(name=MEMORY_ADJACENCY, kind=SNAPSHOT, cpu=EVERY_SNAPSHOT, cuda=EVERY_SNAPSHOT),
    Key(name=TINY_SLOTS, kind=SNAPSHOT, cpu=EVERY_SNAPSHOT, cuda=EVERY_SNAPSHOT),
)

CATALOG_KEYS: tuple[Key, ...] = (
    Key(name=GRAPH_NODES, kind=SCALAR, cpu=_STEP, cuda=_STEP),
    Key(name=TENSOR_BYTES, kind=SCALAR, cpu=EVERY_MEMORY, cuda=EVERY_MEMORY),
    Key(name=GRAD_DIFF, kind=SCALAR, cpu=_STEP, cuda=_STEP),
)


def _device_type(device: str) -> str:
    kind = str(device).split(":", 1)[0]
    if kind not in DEVICES:
        raise ValueError(f"device {device!r}: expected one of {DEVICES} (e.g. cuda:0)")
    return kind


def keys_written(config: Mapping[str, object], device: str = "cpu", *,
                 spikes: bool = False) -> dict[str, set[str]]:
    """The keys a training run of ``config`` (a config dict: ``tasks``, ``weighting``,
    ``balance`` are read) on ``device`` writes, by kind (``{"scalar": {...}, "vector": ...,
    "snapshot": ...}``), read from :data:`TRAINING_KEYS`. Every cadence writes at step 0,
    so a run of one step or more holds them all. The keys written only at a memory spike
    (CUDA) are left out unless ``spikes``: whether a run has one depends on its memory."""
    tasks = list(config.get("tasks") or ())
    out: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for key in TRAINING_KEYS:
        if not key.applies(config, device):
            continue
        if key.when(device) == AT_SPIKE and not spikes:
            continue
        out[key.kind].update(key.names(tasks))
    return out


def steps_written(when: str, cadence: object, steps: int) -> list[int]:
    """The steps of a run of ``steps`` steps (from 0), recorded by
    :func:`mahiax.recording.record_training`, at which a key written ``when`` is written under
    ``cadence`` (a :class:`mahiax.telemetry.cadence.Cadence`): snapshots and the full memory reading
    (with the categories it includes) also at the last step. Not for :data:`AT_SPIKE`."""
    every = range(steps)
    last = {steps - 1} if steps else set()
    if when == EVERY_STEP:
        return list(every)
    if when == EVERY_CATEGORIES:
        c, m = cadence.categories_every, cadence.memory_every  # type: ignore[attr-defined]
        return sorted({s for s in every if s % c == 0 or s % m == 0} | last)
    if when == EVERY_MEMORY:
        m = cadence.memory_every  # type: ignore[attr-defined]
        return sorted({s for s in every if s % m == 0} | last)
    if when == EVERY_SNAPSHOT:
        n = cadence.snapshot_every  # type: ignore[attr-defined]
        return sorted({s for s in every if s % n == 0} | last)
    raise ValueError(f"no fixed steps for keys written {when!r}")


def documented(name: str, kind: str | None = None) -> Key | None:
    """The documented key (training or catalog) a stored key ``name`` is, or None; with
    ``kind``, only a key of that kind."""
    for key in (*TRAINING_KEYS, *CATALOG_KEYS):
        if kind is not None and key.kind != kind:
            continue
        if key.per_task:
            prefix = key.name[: key.name.index("<task>")]
            rest = name[len(prefix):]
            if name.startswith(prefix) and rest and "/" not in rest:
                return key
        elif key.name == name:
            return key
    return None
