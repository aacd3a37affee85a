"""Shared test setup, and the one table of which tests share an xdist worker.

``make test`` runs ``pytest -n 2 --dist loadgroup``: two workers on two cores. Tests that start
servers, kernels, browsers or several processes are put in a group below; a group's tests run
one after another on one worker, so at most one test of each group runs at any moment, and
the two groups (each a few minutes long) start first, one on each worker. The tests that read
a costly module fixture are grouped too, so the fixture is computed once. Every other test
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
        "tests/test_hub_class.py",
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
    # the tests reading a costly module fixture (FIXTURE_GROUPS): on one worker, it is
    # computed once instead of once per worker
    "verdicts": tuple(f"tests/test_bugs.py::{name}" for name in (
        "test_buggy_variant_raises_pytorchs_own_error",
        "test_silent_bugs_show_their_measured_damage",
        "test_router_collapse_collapses_unbalanced_and_each_cure_balances",
        "test_summary_verdict_is_the_measured_one",
        "test_wrong_diagnosis_of_bug_1_names_both_errors",
        "test_anomaly_mode_points_away_from_the_mutation",
        "test_retain_graph_",
        "test_ddp_unused_experts_error_names",
        "test_ddp_find_unused_parameters_and_stacked_experts",
        "test_ddp_buffer_broadcast_bumps_no_version",
    )),
    "default-run": tuple(f"tests/test_training.py::{name}" for name in (
        "test_default_config_runs_300_steps",
        "test_every_task_loss_falls_clearly",
        "test_memory_nodes_",
        "test_layer_importance_stays_finite",
        "test_tiny_memory_counts_every_step",
        "test_held_out_metrics_beat_chance",
    )),
}
# module fixture -> the group every test using it must be in (checked at collection)
FIXTURE_GROUPS: dict[str, str] = {"verdicts": "verdicts", "default_run": "default-run"}

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
    problems = fixture_group_problems(items)
    if problems:
        raise pytest.UsageError(problems[0])


def fixture_group_problems(items) -> list[str]:
    """One sentence per test that reads a fixture of FIXTURE_GROUPS outside its group."""
    return [
        f"{item.nodeid} uses the fixture {fixture!r}: add its name (or a prefix of it) to the "
        f"group {group!r} of XDIST_GROUPS in tests/conftest.py, so the fixture is computed on "
        "one worker only"
        for item in items for fixture, group in FIXTURE_GROUPS.items()
        if fixture in getattr(item, "fixturenames", ()) and xdist_group_of(item.nodeid) != group
    ]


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
