"""The groups of ``tests/conftest.py`` on their own: a test's group is its marker, and a test
that needs a group without carrying its marker is refused by name, so a renamed or moved
test cannot leave its group silently. (That the scheduler keeps a group on one worker is
seen in ``make test``'s output: each group's tests run on one ``[gwN]``.)"""

from __future__ import annotations

import pytest

from tests.conftest import GROUPS, group_of, group_problems, groups_needed
from tests.servers import start_dashboard


class Item:
    """What the conftest reads of a collected test."""

    def __init__(self, function, *marks: str, fixtures: tuple[str, ...] = ()):
        self.nodeid = f"tests/x/test_x.py::{function.__name__}"
        self.function = function
        self.fixturenames = list(fixtures)
        self._marks = [getattr(pytest.mark, m).mark for m in marks]

    def iter_markers(self, name=None):
        return (m for m in self._marks if name is None or m.name == name)


def _opens_the_dashboard():
    start_dashboard  # noqa: B018  (named, never run: the conftest reads names, not calls)


def _through_a_helper():
    _opens_the_dashboard()


def _plain():
    return 1


# reached through a dict, so that these tests themselves name no helper that starts a server
FN = {"dashboard": _opens_the_dashboard, "helper": _through_a_helper, "plain": _plain}


def test_a_test_is_in_the_group_its_marker_names():
    assert group_of(Item(FN["plain"], "verdicts")) == "verdicts"
    assert group_of(Item(FN["plain"])) is None
    assert set(GROUPS) == {"servers", "kernels", "verdicts", "default_run"}


def test_a_test_needs_the_group_of_what_it_names_directly_or_through_a_helper():
    assert set(groups_needed(Item(FN["dashboard"]))) == {"servers"}
    assert set(groups_needed(Item(FN["helper"]))) == {"servers"}
    assert groups_needed(Item(FN["plain"], fixtures=("tmp_path",))) == {}
    assert set(groups_needed(Item(FN["plain"], fixtures=("default_run",)))) == {"default_run"}


def test_a_test_that_needs_a_group_without_its_marker_is_refused_by_name():
    assert group_problems([Item(FN["helper"], "servers"),
                           Item(FN["plain"], "verdicts", fixtures=("verdicts",))]) == []
    (problem,) = group_problems([Item(FN["plain"], fixtures=("verdicts",))])
    assert problem.startswith("tests/x/test_x.py::_plain uses the fixture 'verdicts'")
    assert "@pytest.mark.verdicts" in problem and "docs/tests.md" in problem
    (problem,) = group_problems([Item(FN["dashboard"], "kernels")])
    assert "calls 'start_dashboard'" in problem and "@pytest.mark.servers" in problem
    (problem,) = group_problems([Item(FN["plain"], "servers", "kernels")])
    assert "carries the group markers ['kernels', 'servers']" in problem
