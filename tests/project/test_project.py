"""The project files a user runs first agree with each other and with the README."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def lock_pins() -> list[str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def environment_pins() -> list[str]:
    """The ``name==version`` entries of environment.yml (its pip section)."""
    pin = re.compile(r"^\s*-\s+([A-Za-z0-9_.\-\[\]]+==\S+)\s*$")
    lines = (ROOT / "environment.yml").read_text().splitlines()
    return [m[1] for ln in lines if (m := pin.match(ln))]


def shell_commands(path: Path) -> list[str]:
    """Non-empty lines of a shell script with comments removed."""
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


def test_requirements_lock_pins_every_package_exactly():
    pins = lock_pins()
    assert pins, "requirements.lock is empty"
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", p) for p in pins), pins
    names = [p.split("==")[0].lower() for p in pins]
    assert len(names) == len(set(names))


def test_environment_yml_has_the_same_pins_as_requirements_lock():
    env = environment_pins()
    assert len(env) == len(set(env))
    assert sorted(env) == sorted(lock_pins())


def test_requirements_lock_pins_torch_2_13_0():
    assert "torch==2.13.0" in lock_pins()


def test_ci_runs_make_test():
    assert "make test" in shell_commands(ROOT / ".ci" / "run")


def test_ci_script_is_executable():
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


def test_readme_gives_the_two_make_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make dashboard" in readme
    assert "make test" in readme


def test_makefile_defines_the_targets_the_readme_names():
    targets = re.findall(r"^([A-Za-z_-]+):", (ROOT / "Makefile").read_text(), re.M)
    assert {"test", "dashboard"} <= set(targets)


def test_streamlit_config_is_headless_local_and_private():
    """One file: the dashboard's (read beside its app), and the checkout's root
    ``.streamlit/config.toml`` is that same file."""
    dashboard = ROOT / "dashboard" / ".streamlit" / "config.toml"
    assert (ROOT / ".streamlit" / "config.toml").resolve() == dashboard.resolve()
    with open(dashboard, "rb") as f:
        config = tomllib.load(f)
    assert config["server"]["headless"] is True
    assert config["server"]["address"] == "localhost"
    assert config["browser"]["gatherUsageStats"] is False


# -- import structure -------------------------------------------------------------------------


def _dashboard_imports(path: Path) -> set[str]:
    """The dashboard modules ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names
                      if a.name.startswith("dashboard.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "dashboard":  # from dashboard import data, views
                found |= {a.name for a in node.names}
            elif node.module.startswith("dashboard."):
                found.add(node.module.split(".")[1])
    return found


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (module -> modules it imports) as a path ``[a, b, ..., a]``,
    or None when there is none (depth-first search, white/grey/black)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "grey":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "black"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_among_dashboard_modules():
    modules = {p.stem: p for p in (ROOT / "dashboard").glob("*.py") if p.stem != "__init__"}
    graph = {name: _dashboard_imports(path) & set(modules) for name, path in modules.items()}
    assert graph["navigation"], "the scan sees the dashboard's imports (navigation imports "\
        "the pages ...)"
    cycle = import_cycle(graph)
    assert cycle is None, "dashboard modules import each other: " + " -> ".join(cycle or [])


def test_the_pages_import_the_frame_and_the_frame_no_page():
    """Imports run one way: the run pages stand on the frame, the page charts, the figure
    cache and the shown runs, which import no page; only the navigation imports the pages."""
    modules = {p.stem: p for p in (ROOT / "dashboard").glob("*.py") if p.stem != "__init__"}
    graph = {name: _dashboard_imports(path) & set(modules) for name, path in modules.items()}
    pages = {name for name in modules if name.endswith("_page")} | {"bug_lab", "my_attempts"}
    shared = {"frame", "page_charts", "figure_cache", "shown"}
    assert {"frame", "page_charts"} <= graph["training_page"]
    for name in shared:
        assert not graph[name] & pages, f"{name} imports a page: {graph[name] & pages}"
    importers = {name for name, imported in graph.items() if imported & pages}
    assert importers == {"navigation"}, importers


def _modules_after(statement: str) -> set[str]:
    """The top-level packages loaded after running ``statement`` in a fresh interpreter."""
    code = f"{statement}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return {m.split(".")[0] for m in json.loads(out)}


def test_importing_the_store_and_the_config_loads_no_torch():
    loaded = _modules_after("import mahiax.store, mahiax.config")
    assert "mahiax" in loaded and "torch" not in loaded
    assert "torch" in _modules_after("import mahiax; mahiax.Trainer"), \
        "the package still offers the model on first use"
