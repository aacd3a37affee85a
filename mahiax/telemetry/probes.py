"""Probes: read what the model and the loop did in a step, and hand it to a logger.

"The model counts, the loop writes": the model keeps its routing counts and state in
buffers; after each step the probes *read* them (under ``no_grad``, copies only) and the
logger writes them. Nothing here changes what the model computes;
``tests/telemetry/test_telemetry.py`` trains with and without probes and compares the
losses bit for bit.

The keys written, their kinds and when each is written are defined, documented and checked
in one place, :mod:`mahiax.metric_keys` (its docstring has the table of every key); the probes
name its constants.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch

from mahiax import metric_keys as mk
from mahiax.model.hybrid import ModelState
from mahiax.store.paths import snapshot_dir
from mahiax.telemetry.cadence import MAX_VIO_WINDOW, Cadence
from mahiax.telemetry.categories import MemoryCategories
from mahiax.telemetry.memory_meter import MemoryMeter, ProcessRSS
from mahiax.telemetry.spikes import SPIKE_KEY, SPIKE_SNAPSHOT_KEY, SpikeCapture, encode_path


class Logger(Protocol):
    """Where probes write: the run store's writer, or anything with these methods."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_vector(self, key: str, values: Sequence[float], step: int) -> None: ...

    def log_tensor(self, key: str, tensor: torch.Tensor, step: int) -> None: ...


class LoadWindow:
    """The expert loads of the last ``steps`` steps, and the MaxVio of their sum.

    MaxVio of the summed load is the training-time form of Wang et al. 2024's global MaxVio
    (their MaxVio_global sums a validation set's load; MaxVio_batch is one batch's):
    a router that sends each batch to different experts has a high batch MaxVio and a low
    global one; a router that favours the same experts every step has both high."""

    def __init__(self, steps: int = MAX_VIO_WINDOW):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r} must be a positive integer")
        self._loads: deque[tuple[float, ...]] = deque(maxlen=steps)
        self._sum: list[float] = []  # (E,) the loads in the window, summed

    def add(self, tokens_per_expert: Sequence[float]) -> float:
        """Add one step's tokens per expert (E,); return MaxVio of the window's summed load
        (the steps so far while fewer than ``steps``). The sum is kept as the window moves
        (the step leaving it subtracted), so a step costs O(E), not O(window * E); token
        counts are integers, exact in floats, so the kept sum equals a fresh one.

        Plain Python floats, not numpy: E is a handful of experts, and the call runs once per
        training step right after the step, where each numpy call's fixed cost is many times
        the arithmetic (``make bench``'s telemetry row)."""
        load = tuple(map(float, tokens_per_expert))
        if len(load) != len(self._sum):
            self._loads.clear()
            self._sum = [0.0] * len(load)
        total = self._sum
        if len(self._loads) == self._loads.maxlen:
            total = [a - b for a, b in zip(total, self._loads[0], strict=True)]
        self._loads.append(load)
        self._sum = total = [a + b for a, b in zip(total, load, strict=True)]
        mean = sum(total) / len(total) if total else 0.0
        return max(total) / mean - 1.0 if mean > 0 else 0.0


class TrainingProbe:
    """Turns each :class:`~mahiax.training.trainer.StepRecord` plus the model's state into log rows.

    Memory is measured on the trainer's device. Given the trainer (here or by
    :meth:`attach`), the probe reads memory by category right after each forward, while the
    step's graph still holds what it saved for backward; a probe first meeting its trainer
    in :meth:`observe` reads that first step after it, when the graph is already freed.
    """

    def __init__(self, logger: Logger, cadence: Cadence | None = None, trainer=None,
                 snapshot_dir: str | Path | None = None, last_step: int | None = None):
        self.logger = logger
        self.cadence = cadence or Cadence()
        # the run's last step, when the caller knows it: a full memory reading is taken there
        # too, so a run shorter than ``memory_every`` ends with one
        self.last_step = last_step
        self.meter: MemoryMeter | None = None
        self.spikes: SpikeCapture | None = None
        self._snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else None
        self._trainer = None
        self._reading: MemoryCategories | None = None  # read after the forward of ...
        self._reading_step = -1  # ... this step
        self._rss = ProcessRSS()
        self._load_window = LoadWindow(self.cadence.max_vio_window)
        if trainer is not None:
            self.attach(trainer)

    def attach(self, trainer) -> None:
        """Measure ``trainer``'s device and read memory by category after each of its
        forwards; arm spike capture (CUDA only)."""
        if self._trainer is trainer:
            return
        self._trainer = trainer
        self.meter = MemoryMeter(trainer.device)
        trainer.graph_observers.append(self._after_forward)
        if self.spikes is not None:
            self.spikes.stop()
        self.spikes = SpikeCapture(
            self.meter.device, self.cadence.spike_bytes, self._spike_dir(),
            max_entries=self.cadence.spike_history,
        )
        self.spikes.start()

    def close(self) -> None:
        """Stop the allocator history recording spike capture may have left on."""
        if self.spikes is not None:
            self.spikes.stop()

    def _spike_dir(self) -> Path | None:
        """``<store dir>/memory_snapshots/<run name>`` for a run-store writer."""
        if self._snapshot_dir is not None:
            return self._snapshot_dir
        path, name = getattr(self.logger, "path", None), getattr(self.logger, "name", None)
        if path is None or name is None:
            return None
        return snapshot_dir(Path(path), str(name))

    def _categories(self, trainer, graph: torch.Tensor | None, step: int) -> MemoryCategories:
        assert self.meter is not None
        return self.meter.categories(
            (trainer.model, trainer.weighting), trainer.optimizer, graph,
            full=self.takes_full_reading(step),
        )

    def takes_full_reading(self, step: int) -> bool:
        """Whether ``step`` takes the full memory reading (the CPU's scan of every object)."""
        return step % self.cadence.memory_every == 0 or step == self.last_step

    def _reads_categories(self, step: int) -> bool:
        return step % self.cadence.categories_every == 0 or self.takes_full_reading(step)

    def _after_forward(self, loss: torch.Tensor) -> None:
        trainer = self._trainer
        step = trainer.step_num
        if self._reads_categories(step):
            self._reading, self._reading_step = self._categories(trainer, loss, step), step

    @torch.no_grad()
    def observe(self, trainer, record) -> None:
        """Write everything about the step ``record`` describes (call after ``step()``)."""
        step, c = record.step, self.cadence
        self.attach(trainer)
        m = {mk.LOSS: record.loss}
        for task, v in record.task_losses.items():
            m[mk.task_loss(task)] = v
        for task, v in record.weights.items():
            m[mk.task_weight(task)] = v
        ratios = getattr(trainer.weighting, "ratio_values", None)
        if ratios is not None:
            for task, r in zip(trainer.config.tasks, ratios(), strict=True):
                m[mk.dwa_ratio(task)] = r
        load = record.load
        m.update({
            mk.MOE_AUX_LOSS: record.aux_loss,
            mk.MOE_Z_LOSS: record.z_loss,
            mk.MOE_CV: load["cv"],
            mk.MOE_ENTROPY: load["entropy"],
            mk.MOE_MAX_OVER_MEAN: load["max_over_mean"],
            mk.MAX_VIO: load["max_vio"],
            mk.MAX_VIO_GLOBAL: self._load_window.add(load["tokens_per_expert"]),
            mk.MOE_DEAD: load["dead"],
            mk.LOAD_MIN: load["load_min"],
            mk.LOAD_P50: load["load_p50"],
            mk.LOAD_P90: load["load_p90"],
            mk.LOAD_P99: load["load_p99"],
            mk.MOE_DROPPED: 0.0,
            mk.GRAD_NORM: record.grad_norm,
            mk.LR: record.lr,
            mk.AMP_SCALE: record.scale,
            mk.AMP_SKIPPED: float(record.skipped),
            mk.AMP_SKIPPED_TOTAL: trainer.precision.skipped_steps,
            mk.STEP_S: record.step_time,
            mk.SAMPLES_PER_S: record.samples_per_s,
            mk.MEM_RSS: self._rss.bytes(),
        })
        if "bias" in load:  # balance=bias
            m[mk.BIAS_FLIPPED] = load["bias_flipped"]
        m.update(self._memory(trainer, step))
        self.logger.log(m, step)
        self.logger.log_vector(mk.TOKENS_PER_EXPERT, load["tokens_per_expert"], step)
        if "bias" in load:
            self.logger.log_vector(mk.MOE_BIAS, load["bias"], step)
        importance = trainer.model.fabric.controller.importance  # (L,) read, not copied
        self.logger.log_vector(mk.FABRIC_IMPORTANCE, importance.tolist(), step)
        if step % c.snapshot_every == 0:
            self._log_state(trainer.model.state_snapshot(), step)

    def _memory(self, trainer, step: int) -> dict[str, float]:
        """This step's ``mem/*`` figures; saves a snapshot if memory spiked (CUDA)."""
        reading, self._reading = self._reading, None
        assert self.meter is not None and self.spikes is not None
        m: dict[str, float] = {}
        if reading is not None and self._reading_step == step:
            m = reading.as_metrics()
        elif self._reads_categories(step):  # attached after this forward: its graph is gone
            m = self._categories(trainer, None, step).as_metrics()
        elif self.meter.is_cuda:  # between category readings the allocator's totals are free
            r = self.meter.read()
            m = {mk.MEM_TOTAL: r.allocated, mk.MEM_RESERVED: r.reserved, mk.MEM_PEAK: r.peak}
        if mk.MEM_TOTAL in m:  # the total under its older names
            m[mk.MEM_ALLOCATED if self.meter.is_cuda else mk.MEM_TENSOR_BYTES] = m[mk.MEM_TOTAL]
        spike = self.spikes.after_step(step)
        if spike is not None:
            m[SPIKE_KEY] = float(spike.jump)
            store = getattr(self.logger, "path", None)
            where = encode_path(spike.path, Path(store).parent if store is not None else None)
            self.logger.log_tensor(SPIKE_SNAPSHOT_KEY, where, step)
        return m

    def snapshot(self, trainer, step: int) -> None:
        """Copies of the memory nodes, diffusion matrix and ring buffer at ``step``."""
        self._log_state(trainer.model.state_snapshot(), step)

    def _log_state(self, state: ModelState, step: int) -> None:
        self.logger.log_tensor(mk.MEMORY_NODES, state.memory_nodes, step)
        self.logger.log_tensor(mk.MEMORY_ADJACENCY, state.adjacency, step)
        self.logger.log_tensor(mk.TINY_SLOTS, state.tiny_slots, step)
