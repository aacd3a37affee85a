"""Telemetry: measurements of a running model that never print a silent zero.

- :mod:`~mahiax.telemetry.memory_meter`: bytes held, by device (``MemoryMeter``);
- :mod:`~mahiax.telemetry.categories`: memory by category (weights, gradients, optimiser
  state, activations, ...);
- :mod:`~mahiax.telemetry.spikes`: allocation spikes and their snapshots;
- :mod:`~mahiax.telemetry.probes`: the training probe that writes a run's readings;
- :mod:`~mahiax.telemetry.cadence`: how often each reading is taken (light: no torch);
- :mod:`~mahiax.telemetry.locator`: the mutation locator (which op wrote into a tensor a
  live graph saved).

The names below are imported on first use (PEP 562), so ``from mahiax.telemetry import
cadence`` (the CLI's store commands) loads no torch.
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "SPIKE_KEY": "mahiax.telemetry.spikes",
    "SPIKE_SNAPSHOT_KEY": "mahiax.telemetry.spikes",
    "MemoryCategories": "mahiax.telemetry.categories",
    "MemoryMeter": "mahiax.telemetry.memory_meter",
    "MemoryReading": "mahiax.telemetry.memory_meter",
    "Spike": "mahiax.telemetry.spikes",
    "SpikeCapture": "mahiax.telemetry.spikes",
    "legacy_cuda_reading": "mahiax.telemetry.memory_meter",
    "spike_snapshots": "mahiax.telemetry.spikes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import a public name's module the first time the name is asked for."""
    if name not in _EXPORTS:  # AttributeError lets `from mahiax.telemetry import cadence` work
        raise AttributeError(f"module 'mahiax.telemetry' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
