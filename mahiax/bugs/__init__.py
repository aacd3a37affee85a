"""The bug catalog: every claim of the fix summary, reproduced, measured and judged.

>>> from mahiax import bugs
>>> [e.id for e in bugs.entries()][:2]
['expert-index', 'fabric-accumulate']
>>> bugs.run("tiny-memory-write", "buggy").error_type          # doctest: +SKIP
'RuntimeError'
>>> bugs.verdict("dwa-weights").label                           # doctest: +SKIP
'worse'
>>> bugs.check("fabric-accumulate", MyFabric).holds             # doctest: +SKIP

Nothing here stores a verdict: each one is derived from fresh runs (see ``verdicts``).
"""

from __future__ import annotations

import importlib
from typing import Any

from mahiax.bugs.variants import VARIANTS

# Each public name and the module that defines it. They are loaded on first use (PEP 562),
# so a command that only parses its arguments (``mahiax runs list``) never imports torch.
_DEFINED_IN = {
    "BugEntry": "catalog", "entries": "catalog", "get": "catalog",
    "current_device": "harness", "on_device": "harness", "watching_mutations": "harness",
    "Outcome": "outcome",
    "VERDICTS": "verdicts", "Verdict": "verdicts",
    "CheckResult": "api", "check": "api", "locate": "api", "run": "api", "verdict": "api",
}


def __getattr__(name: str) -> Any:
    if name not in _DEFINED_IN:
        raise AttributeError(f"module 'mahiax.bugs' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mahiax.bugs.{_DEFINED_IN[name]}"), name)
    globals()[name] = value
    return value


__all__ = ["VARIANTS", *_DEFINED_IN]
