"""What the real-hub tests share: the hub's own modules (``hub/learners.py``,
``hub/runtime.py``, loaded from their files as the hub loads them) and the rule for when a
hub cannot serve the lab from this checkout."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from tests.notebook_env import ROOT


def load_hub_module(name: str) -> ModuleType:
    """``hub/<name>.py`` as a module (the hub folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"hub_{name}", ROOT / "hub" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


learners, runtime = load_hub_module("learners"), load_hub_module("runtime")


def skip_unless_learners_can_enter_the_checkout() -> None:
    """Skip the calling test module when learner accounts cannot read this checkout (a
    0700 folder above it): a hub could not serve them the lab from here."""
    if runtime.unreachable(ROOT) is not None:
        pytest.skip(f"learner accounts cannot enter {runtime.unreachable(ROOT)}, so a hub "
                    f"cannot serve the lab from this checkout ({ROOT}); a hub needs a "
                    "checkout every user can read", allow_module_level=True)
