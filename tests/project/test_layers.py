"""The package's layers: imports only run downward (docs/architecture.md).

Each module of ``mahiax`` belongs to one layer; a module may import its own layer and the
layers below it, never one above. Imports inside functions count too: a lazy import is still
a dependency. Within the lab layer the doctor may use the catalog, never the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.notebook_env import ROOT

# lowest first; a module is in the layer of its longest matching prefix
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations", ("mahiax.config", "mahiax.errors", "mahiax.units", "mahiax.dtypes",
                     "mahiax.rng", "mahiax.metric_keys", "mahiax.tasks")),
    ("store", ("mahiax.store",)),
    ("model", ("mahiax.model",)),
    ("training", ("mahiax.training",)),
    ("telemetry", ("mahiax.telemetry",)),
    ("lab", ("mahiax.bugs", "mahiax.doctor", "mahiax.classroom")),
    ("entry", ("mahiax.cli", "mahiax.recording", "mahiax.lessons", "mahiax.__main__")),
)
# imports inside one layer that would still point upward
FORBIDDEN_WITHIN = {("mahiax.bugs", "mahiax.doctor"), ("mahiax.classroom", "mahiax.bugs"),
                    ("mahiax.classroom", "mahiax.doctor")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> tuple[int, str] | None:
    """(layer index, the prefix that placed it), or None for the package itself."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    return best


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported mahiax module) for every import in the file, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mahiax":  # `from mahiax import bugs`: the submodules
                found += [(node.lineno, f"mahiax.{a.name}") for a in node.names]
            elif node.module.startswith("mahiax."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("mahiax.")]
    return found


def test_every_module_has_a_layer():
    missing = [_module_name(p) for p in sorted((ROOT / "mahiax").rglob("*.py"))
               if _module_name(p) != "mahiax" and _layer(_module_name(p)) is None]
    assert not missing, f"modules in no layer of tests/project/test_layers.py LAYERS: {missing}"


def upward_imports(files: dict[str, Path]) -> list[str]:
    """``file:line: ...`` for every import in ``files`` (module name -> path) that runs up."""
    upward = []
    for module, path in files.items():
        here = _layer(module)
        if here is None:
            continue
        for line, target in _imports(path):
            there = _layer(target)
            if there is None:
                continue  # the package's lazy __init__ names
            if there[0] > here[0] or (here[1], there[1]) in FORBIDDEN_WITHIN:
                upward.append(f"{path}:{line}: {module} ({LAYERS[here[0]][0]}) "
                              f"imports {target} ({LAYERS[there[0]][0]})")
    return upward


def test_imports_only_run_downward():
    files = {_module_name(p): p.relative_to(ROOT)
             for p in sorted((ROOT / "mahiax").rglob("*.py"))}
    upward = upward_imports({m: ROOT / p for m, p in files.items()})
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_an_upward_import_is_caught(tmp_path):
    """The check itself: a model module importing the trainer lazily, and the catalog
    importing the doctor, are both reported with their line."""
    model = tmp_path / "hybrid.py"
    model.write_text("def f():\n    from mahiax.training.trainer import Trainer\n")
    catalog = tmp_path / "harness.py"
    catalog.write_text("from mahiax import doctor\n")
    found = upward_imports({"mahiax.model.hybrid": model, "mahiax.bugs.harness": catalog})
    assert found == [f"{model}:2: mahiax.model.hybrid (model) imports mahiax.training.trainer "
                     "(training)", f"{catalog}:1: mahiax.bugs.harness (lab) imports "
                     "mahiax.doctor (lab)"]
