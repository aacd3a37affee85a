"""MAHIA-X Lab: a correct reference of the MAHIA-X model, and a lab for debugging PyTorch.

Start with :class:`MahiaConfig`, :class:`HybridEfficientModel` and :class:`Trainer`, or run
``python -m mahiax train --steps 300``.

The names below are imported on first use (PEP 562): ``import mahiax.store`` or
``import mahiax.config`` loads neither torch nor the model, so the dashboard and the CLI's
store commands start without it.
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "Batch": "mahiax.model.data",
    "HybridEfficientModel": "mahiax.model.hybrid",
    "MahiaConfig": "mahiax.config",
    "StepRecord": "mahiax.training.trainer",
    "SyntheticMultiTask": "mahiax.model.data",
    "Trainer": "mahiax.training.trainer",
    "preset": "mahiax.config",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    """Import a public name's module the first time the name is asked for."""
    if name not in _EXPORTS:  # AttributeError lets `from mahiax import bugs` import the submodule
        raise AttributeError(f"module 'mahiax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
