"""MAHIA-X Lab: a correct reference of the MAHIA-X model, and a lab for debugging PyTorch.

Start with :class:`MahiaConfig`, :class:`HybridEfficientModel` and :class:`Trainer`, or run
``python -m mahiax train --steps 300``.
"""

from mahiax.config import MahiaConfig, preset
from mahiax.data import Batch, SyntheticMultiTask
from mahiax.model import HybridEfficientModel
from mahiax.train import StepRecord, Trainer

__all__ = [
    "Batch",
    "HybridEfficientModel",
    "MahiaConfig",
    "StepRecord",
    "SyntheticMultiTask",
    "Trainer",
    "preset",
]
__version__ = "0.1.0"
