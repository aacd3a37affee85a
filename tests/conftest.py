"""Shared test setup, and the one table of which tests share an xdist worker.

``make test`` runs ``pytest -n 2 --dist loadgroup``: two workers on two cores. Tests that start
servers, kernels, browsers or several processes are put in a group below; a group's tests run
one after another on one worker, so at most one test of each group runs at any moment, and
the two groups (each a few minutes long) start first, one on each worker. Every other test
goes to whichever worker is free.

The groups are declared here, not with ``@pytest.mark.xdist_group`` in the test files: with
pytest 9.2 and pytest-xdist 3.8, ``--dist loadgroup`` silently ignores that mark (xdist tags
a test's node id with its group, and pytest 9.2 no longer reads the attribute it writes:
pytest-xdist issue #1386), so this file hands xdist a scheduler that groups by this table,
and refuses the mark so that no test relies on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# group -> tests in it: a test file (all its tests) or "file::test_name_prefix"
XDIST_GROUPS: dict[str, tuple[str, ...]] = {
    # JupyterLab, JupyterHub (system users), the dashboard: servers driven by Chromium
    "servers": (
        "tests/test_bug_lab_e2e.py",
        "tests/test_dashboard_e2e.py",
        "tests/test_dashboard_idle.py",
        "tests/test_hub_e2e.py",
        "tests/test_jupyter_proxy.py::test_launcher_tile_opens_the_dashboard",
        "tests/test_lab_e2e.py",
    ),
    # kernels and process groups: every lesson top to bottom, the lessons benchmark, torchrun
    "kernels": (
        "tests/test_notebooks.py",
        "tests/test_benchmarks.py::test_lessons_benchmark_times_every_code_cell",
        "tests/test_benchmarks.py::test_lessons_benchmark_reports_a_lesson_that_raises",
        "tests/test_distributed.py",
    ),
}

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one intra-op thread each, or they fight over the cores
    torch.set_num_threads(1)


def xdist_group_of(nodeid: str) -> str | None:
    """The group of XDIST_GROUPS that the test ``nodeid`` belongs to, or None."""
    for group, members in XDIST_GROUPS.items():
        for member in members:
            if nodeid.startswith(member + "::" if member.endswith(".py") else member):
                return group
    return None


def pytest_configure(config):
    for members in XDIST_GROUPS.values():
        for member in members:
            if not (ROOT / member.split("::")[0]).is_file():
                raise pytest.UsageError(
                    f"tests/conftest.py XDIST_GROUPS names {member!r}, whose file does not "
                    "exist: name an existing tests/test_*.py file (or file::test_prefix)")


def pytest_collection_modifyitems(config, items):
    marked = [item.nodeid for item in items if item.get_closest_marker("xdist_group")]
    if marked:
        raise pytest.UsageError(
            f"{marked[0]} (and {len(marked) - 1} more) carries @pytest.mark.xdist_group, which "
            "`--dist loadgroup` ignores with this pytest; put the test file (or "
            "file::test_prefix) in a group of XDIST_GROUPS in tests/conftest.py instead")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: absent under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """For ``--dist loadgroup``: xdist's scope scheduler, a scope being a group of
    XDIST_GROUPS or else a single test. Scopes with more tests are handed out first, so
    the groups start at once, one per worker."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class TableGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group_of(nodeid) or nodeid

    return TableGroupScheduling(config, log)
