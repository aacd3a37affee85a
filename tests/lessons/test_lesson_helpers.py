"""The presentation helpers lessons use (``mahiax.lessons``) show what a run measured."""

from __future__ import annotations

from mahiax import bugs, lessons


def test_category_figure_shows_saved_for_backward_growing_only_under_the_band_aid():
    """Lesson 04's chart: the summary's retain_graph loop keeps every graph, so the memory
    saved for backward grows each step while parameters stay flat; the right fix frees it."""
    verdict = bugs.verdict("retain-graph")
    summary = lessons.category_table(verdict.outcomes["summary"])
    fixed = lessons.category_table(verdict.outcomes["fixed"])
    saved = summary["saved for backward"].tolist()
    assert all(b > a for a, b in zip(saved, saved[1:], strict=False)), saved
    assert summary["parameters"].nunique() == 1
    assert (fixed["saved for backward"] == 0).all()
    fig = lessons.category_figure(verdict.outcomes)
    panels = [a.text for a in fig.layout.annotations]
    assert panels == ["summary", "fixed"]  # the buggy loop failed at step 0: no reading
    stacked = {t.name for t in fig.data}
    assert stacked == set(lessons.CATEGORY_NAMES.values())


def test_attempt_shows_the_outcome_unnamed_and_expect_checks_it_after_the_reveal(capsys):
    import pytest
    import torch

    x = torch.ones(2, requires_grad=True)
    with lessons.attempt() as caught:
        y = x.exp().sum()
        y.backward()
        y.backward()  # the graph's saved tensors were freed by the first backward
    shown = capsys.readouterr().out
    assert shown.startswith("RuntimeError: Trying to backward through the graph a second")
    caught.expect(RuntimeError, "Trying to backward through the graph a second time")
    with pytest.raises(AssertionError, match="expected ValueError, got RuntimeError"):
        caught.expect(ValueError)
    with pytest.raises(AssertionError, match="expected no error, got RuntimeError"):
        caught.expect(None)
    with lessons.attempt() as clean:
        (x * 2).sum().backward()
    assert capsys.readouterr().out == "no error\n"
    clean.expect(None)
    with pytest.raises(AssertionError, match="expected RuntimeError, got nothing"):
        clean.expect(RuntimeError)
