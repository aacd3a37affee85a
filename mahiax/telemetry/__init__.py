"""Telemetry: measurements of a running model that never print a silent zero."""

from mahiax.telemetry.categories import MemoryCategories
from mahiax.telemetry.memory_meter import MemoryMeter, MemoryReading, legacy_cuda_reading

__all__ = ["MemoryCategories", "MemoryMeter", "MemoryReading", "legacy_cuda_reading"]
