"""``python -m mahiax doctor FILE.py:FUNCTION --steps 6 [--json]``.

The file's top level builds the model and the optimiser (a script of the usual shape);
``FUNCTION(i)`` runs one training step. The model, optimiser and GradScaler are found among
the module's globals: the one named ``model`` / ``optimizer`` / ``opt`` / ``scaler`` if there
is one, else the only one of its type (for the model, else the one whose parameters the
optimiser trains); the first line says which it watches. Exit status 1 when the report
has a finding or the loop raised, 0 when it is clean; a bad request (no such file or
function) is one line, status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from mahiax.errors import BadInput


def load_target(target: str) -> tuple[Callable[[int], Any], ModuleType]:
    """Import ``FILE.py`` (running its top level) and return ``(FUNCTION, module)``."""
    path, sep, name = target.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise BadInput(f"expected FILE.py:FUNCTION (e.g. train.py:step), got {target!r}")
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise BadInput(f"no such file: {path}")
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(stem, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"{path} is not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(path))  # the script's own imports, as `python FILE`
    sys.modules[stem] = module
    spec.loader.exec_module(module)  # the user's setup: its errors keep their traceback
    fn = getattr(module, name, None)
    if not callable(fn):
        defined = sorted(k for k, v in vars(module).items()
                         if callable(v) and getattr(v, "__module__", None) == stem)
        raise BadInput(f"{os.path.basename(path)} has no function {name!r}; functions there: "
                       f"{', '.join(defined) or 'none'}")
    return fn, module


def _pick(module: ModuleType, kind: type, names: tuple[str, ...],
          prefer: Callable[[Any], float] | None = None) -> tuple[str | None, Any, list[str]]:
    """``(name, value, all names)``: the global of type ``kind`` named one of ``names``, else
    the only one of that type, else the one ``prefer`` scores highest (if it is alone
    there); ``(None, None, all names)`` when none or no single one."""
    found = {k: v for k, v in vars(module).items()
             if isinstance(v, kind) and not k.startswith("_")}
    for n in names:
        if n in found:
            return n, found[n], list(found)
    if len(found) == 1:
        (k, v), = found.items()
        return k, v, list(found)
    if prefer is not None and found:
        scores = {k: prefer(v) for k, v in found.items()}
        best = max(scores.values())
        top = [k for k, s in scores.items() if s == best]
        if best > 0 and len(top) == 1:
            return top[0], found[top[0]], list(found)
    return None, None, list(found)


def _watched(what: str, name: str | None, value: Any, names: list[str], hint: str) -> str:
    if name is not None:
        return f"{what} `{name}` ({type(value).__name__})"
    if names:
        return (f"no {what} ({len(names)} candidates: {', '.join(names)}; {hint})")
    return f"no {what}"


def _together(module: Any, names: list[str]) -> Any:
    """The script's models as one ``nn.ModuleDict`` (those not inside another), so that a
    loop with several (a GAN's generator and discriminator) is checked whole."""
    import torch

    models = {n: getattr(module, n) for n in names}
    inside = {id(m) for top in models.values() for m in list(top.modules())[1:]}
    return torch.nn.ModuleDict({n: m for n, m in models.items() if id(m) not in inside})


def run_command(args: argparse.Namespace) -> int:
    import torch

    from mahiax import doctor

    if args.steps < 1:
        raise BadInput(f"--steps must be a positive integer, got {args.steps}")
    fn, module = load_target(args.target)
    opt_name, optimizer, opt_names = _pick(module, torch.optim.Optimizer,
                                           ("optimizer", "opt", "optim"))
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]} \
        if optimizer is not None else set()
    model_name, model, model_names = _pick(
        module, torch.nn.Module, ("model", "net"),
        prefer=lambda m: sum(id(p) in trained for p in m.parameters()))  # what it trains
    scaler_name, scaler, scaler_names = _pick(module, torch.amp.GradScaler, ("scaler",))
    if model is None and len(model_names) > 1:  # a GAN's G and D: watch them together
        model, model_name = _together(module, model_names), " and ".join(model_names)
    watched = ", ".join([
        _watched("model", model_name, model, model_names, "name the one to check `model`"),
        _watched("optimizer", opt_name, optimizer, opt_names, "name one `optimizer`"),
        _watched("GradScaler", scaler_name, scaler, scaler_names, "name one `scaler`"),
    ])
    report = doctor.examine(fn, args.steps, model=model, optimizer=optimizer, scaler=scaler)
    if args.json:
        out = report.to_dict()
        out["watched"] = {"model": model_name, "optimizer": opt_name, "scaler": scaler_name}
        print(json.dumps(out, indent=2))
    else:
        print(f"mahiax doctor: watching {watched}, from the globals of "
              f"{os.path.basename(module.__file__ or args.target)}.")
        print(report)
    return 0 if report.ok else 1
