"""Shared test setup: the markers that sort tests, and the xdist groups they choose.

Where a test goes, what each marker means and how to run a subset: ``docs/tests.md``.

``make test`` runs ``pytest -n 2 --dist loadgroup``: two workers on two cores. A test's group
is its group marker (``servers``, ``kernels``, ``verdicts`` or ``default_run``, usually set
for a whole module with ``pytestmark``); a group's tests run one after another on one worker,
so at most one test of each group runs at any moment, and the two long groups (servers and
kernels, a few minutes each) start first, one on each worker. The tests that read a costly
module fixture are grouped too, so the fixture is computed once. Every other test goes to
whichever worker is free.

A test that needs a group must carry its marker, or collection stops with a sentence saying
which marker to add: it needs one when it (or a fixture it uses, or a helper function of its
own module that it calls) names one of the group's ``names``, or uses one of its
``fixtures`` (GROUPS below). Renaming or moving a test cannot take it out of its group.

The group markers are read here, not with ``@pytest.mark.xdist_group``: with pytest 9.2 and
pytest-xdist 3.8, ``--dist loadgroup`` silently ignores that mark (xdist tags a test's node id
with its group, and pytest 9.2 no longer reads the attribute it writes: pytest-xdist issue
#1386), so this file refuses that mark and hands xdist a scheduler of its own. The controller
never collects, so each worker writes the group of every grouped test it collected to a file
(``{node id: group}``) before it reports its collection, and the scheduler reads it.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


@dataclass(frozen=True)
class Group:
    """An xdist group: its marker is its name, and its tests get the marker ``implies`` too.
    A test needs it when its code names one of ``names`` (a global or an attribute) or it
    uses one of ``fixtures``."""

    why: str
    implies: str  # the marker its tests get too: "integration" or "slow"
    names: tuple[str, ...] = ()
    fixtures: tuple[str, ...] = ()


GROUPS: dict[str, Group] = {
    "servers": Group(
        "JupyterLab, JupyterHub (system users), the dashboard: servers driven by Chromium",
        "integration",
        names=("start_dashboard", "start_jupyterlab", "wait_until_up", "sync_playwright")),
    "kernels": Group(
        "kernels and process groups: every lesson top to bottom, the lessons benchmark, "
        "torchrun",
        "integration",
        names=("LessonClient", "bench_lessons", "torchrun")),
    "verdicts": Group(
        "the catalog's measured verdicts (module fixture of tests/bugs/test_bugs.py), "
        "computed once", "slow", fixtures=("verdicts",)),
    "default_run": Group(
        "the 300-step default run (module fixture of tests/training/test_training.py), "
        "computed once", "slow", fixtures=("default_run",)),
}
GROUPS_DIR = "mahiax_groups_dir"  # workerinput key: where workers write {node id: group}

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one intra-op thread each, or they fight over the cores
    torch.set_num_threads(1)


def group_of(item) -> str | None:
    """The group marker ``item`` carries, or None (collection refuses two)."""
    found = sorted({m.name for m in item.iter_markers() if m.name in GROUPS})
    return found[0] if found else None


def _names_used(func, module: str, seen: set) -> set[str]:
    """Global and attribute names the code of ``func`` uses (nested functions included),
    following the functions of ``module`` it calls by name."""
    names: set[str] = set()
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None or code in seen:
        return names
    seen.add(code)
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    for name in list(names):
        helper = getattr(func, "__globals__", {}).get(name)
        if inspect.isfunction(helper) and helper.__module__ == module:
            names |= _names_used(helper, module, seen)
    return names


def groups_needed(item) -> dict[str, str]:
    """group -> why ``item`` needs it: a fixture it uses, or a name its code (or the code of
    a fixture of tests/ it uses) names."""
    need: dict[str, str] = {}
    fixtures = set(getattr(item, "fixturenames", ()))
    funcs = [getattr(item, "function", None)]
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    for fixture_defs in defs.values():
        for fd in fixture_defs:
            file = inspect.getsourcefile(inspect.unwrap(fd.func)) or ""
            if Path(file).resolve().is_relative_to(TESTS):
                funcs.append(fd.func)
    names: set[str] = set()
    for func in funcs:
        if func is not None:
            names |= _names_used(func, inspect.unwrap(func).__module__, set())
    for group, spec in GROUPS.items():
        used = sorted(fixtures & set(spec.fixtures))
        named = sorted(names & set(spec.names))
        if used:
            need[group] = f"uses the fixture {used[0]!r}"
        elif named:
            need[group] = f"(or a fixture or helper it uses) calls {named[0]!r}"
    return need


def group_problems(items) -> list[str]:
    """One sentence per test that lacks the group marker it needs, or carries two."""
    problems = []
    for item in items:
        carried = sorted({m.name for m in item.iter_markers() if m.name in GROUPS})
        if len(carried) > 1:
            problems.append(f"{item.nodeid} carries the group markers {carried}: a test runs "
                            "in one xdist group; keep one")
            continue
        for group, why in groups_needed(item).items():
            if group not in carried:
                problems.append(
                    f"{item.nodeid} {why}, so it needs the xdist group {group!r} "
                    f"({GROUPS[group].why}): mark it with @pytest.mark.{group} (or add "
                    f"pytest.mark.{group} to its module's pytestmark); see docs/tests.md")
    return problems


def pytest_configure(config):
    if not hasattr(config, "workerinput") and config.getoption("dist", None) == "loadgroup":
        config._mahiax_groups_dir = tempfile.mkdtemp(prefix="mahiax-xdist-groups-")


def pytest_unconfigure(config):
    folder = getattr(config, "_mahiax_groups_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: absent under -p no:xdist
def pytest_configure_node(node):
    folder = getattr(node.config, "_mahiax_groups_dir", None)
    if folder:
        node.workerinput[GROUPS_DIR] = folder


@pytest.hookimpl(tryfirst=True)  # before -m and -k deselect: every collected test is checked
def pytest_collection_modifyitems(config, items):
    marked = [item.nodeid for item in items if item.get_closest_marker("xdist_group")]
    if marked:
        raise pytest.UsageError(
            f"{marked[0]} (and {len(marked) - 1} more) carries @pytest.mark.xdist_group, which "
            "`--dist loadgroup` ignores with this pytest; mark it with a group marker of "
            "tests/conftest.py (GROUPS) instead")
    problems = group_problems(items)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise pytest.UsageError(problems[0] + more)
    for item in items:
        if group := group_of(item):
            item.add_marker(getattr(pytest.mark, GROUPS[group].implies))
    folder = getattr(config, "workerinput", {}).get(GROUPS_DIR)
    if folder:  # a worker under --dist loadgroup: tell the scheduler the groups
        groups = {item.nodeid: g for item in items if (g := group_of(item))}
        path = Path(folder) / f"{config.workerinput['workerid']}.json"
        path.with_suffix(".tmp").write_text(json.dumps(groups))
        path.with_suffix(".tmp").replace(path)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: absent under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """For ``--dist loadgroup``: xdist's scope scheduler, a scope being a group (from the
    workers' files) or else a single test. Scopes with more tests are handed out first, so
    the groups start at once, one per worker."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    folder = Path(config._mahiax_groups_dir)

    class MarkerGroupScheduling(LoadScopeScheduling):
        groups: dict[str, str] = {}

        def add_node_collection(self, node, collection):
            path = folder / f"{node.workerinput['workerid']}.json"
            if not path.is_file():
                raise RuntimeError(f"worker {node.workerinput['workerid']} wrote no groups "
                                   f"file ({path}): tests/conftest.py did not run there")
            self.groups = {**self.groups, **json.loads(path.read_text())}
            super().add_node_collection(node, collection)

        def _split_scope(self, nodeid: str) -> str:
            return self.groups.get(nodeid, nodeid)

    return MarkerGroupScheduling(config, log)
