"""Telemetry: measurements of a running model that never print a silent zero."""

from mahiax.telemetry.categories import MemoryCategories
from mahiax.telemetry.memory_meter import MemoryMeter, MemoryReading, legacy_cuda_reading
from mahiax.telemetry.spikes import (
    SPIKE_KEY,
    SPIKE_SNAPSHOT_KEY,
    Spike,
    SpikeCapture,
    spike_snapshots,
)

__all__ = [
    "SPIKE_KEY",
    "SPIKE_SNAPSHOT_KEY",
    "MemoryCategories",
    "MemoryMeter",
    "MemoryReading",
    "Spike",
    "SpikeCapture",
    "legacy_cuda_reading",
    "spike_snapshots",
]
