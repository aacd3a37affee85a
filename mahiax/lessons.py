"""What the lesson notebooks share: show an error, a verdict, a step chart, a variant switch.

The notebooks in ``notebooks/`` import from ``mahiax`` and define no library code, so that
what a lesson shows is what the package does (one source of truth). The helpers here only
*present*: every figure comes from :mod:`mahiax.bugs` runs or the run store, measured when the
cell runs.

Charts are Plotly (``plotly`` is a runtime dependency); widgets are ipywidgets, imported only
when a widget is built (the ``lab`` extra), so importing this module needs neither Jupyter
nor a browser.
"""

from __future__ import annotations

import contextlib
import inspect
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mahiax.bugs.catalog import VARIANT_COLORS  # noqa: F401  (the lessons read it here)
from mahiax.bugs.cli import describe
from mahiax.bugs.outcome import Outcome
from mahiax.units import MIB

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from mahiax.bugs import BugEntry, Verdict



@dataclass(kw_only=True)
class Caught:
    """The exception a block raised (``None`` until it has, and when it ran clean): filled
    by :func:`expect_error` and :func:`attempt`."""

    error: BaseException | None = None

    @property
    def message(self) -> str:
        return str(self.error) if self.error is not None else ""

    def expect(self, exc_type: type[BaseException] | None, contains: str = "") -> None:
        """Check, after the reveal, what an :func:`attempt` block did: raised ``exc_type``
        with ``contains`` in its message, or (``exc_type=None``) raised nothing. An
        ``AssertionError`` says what happened instead, so a lesson cannot go on telling a
        story the code no longer shows."""
        got = "nothing" if self.error is None else f"{type(self.error).__name__}: {self.error}"
        if exc_type is None:
            assert self.error is None, f"expected no error, got {got}"
            return
        assert isinstance(self.error, exc_type), f"expected {exc_type.__name__}, got {got}"
        assert contains in self.message, f"expected {contains!r} in the message, got {got}"


@contextlib.contextmanager
def expect_error(exc_type: type[BaseException], contains: str) -> Iterator[Caught]:
    """Run a block that must raise ``exc_type`` with ``contains`` in its message.

    Prints PyTorch's own error, word for word, so the lesson shows it; fails with an
    ``AssertionError`` when nothing (or something else) was raised, so a lesson can never go
    on telling a story the code no longer shows. An exception of another type propagates.
    For the cell a **Predict.** prompt asks about, use :func:`attempt` instead: this one
    names the answer in the cell.
    """
    caught = Caught()
    try:
        yield caught
    except exc_type as e:
        caught.error = e
        print(f"{type(e).__name__}: {e}")
        assert contains in str(e), f"expected {contains!r} in the message, got: {e}"
    else:
        raise AssertionError(f"expected {exc_type.__name__} ({contains!r}); nothing was raised")


@contextlib.contextmanager
def attempt() -> Iterator[Caught]:
    """Run a block that may raise, and print what happened without saying what was expected:
    PyTorch's error word for word (``Type: message``), or ``no error``.

    For the cell a **Predict.** prompt asks about: the class predicts, this cell shows the
    outcome, and a check cell after the reveal asserts it with :meth:`Caught.expect`. Any
    ``Exception`` is caught here (the check cell fails if it was not the one the lesson
    tells); ``KeyboardInterrupt`` and the like still stop the cell.
    """
    caught = Caught()
    try:
        yield caught
    except Exception as e:  # shown, then checked by Caught.expect after the reveal
        caught.error = e
        print(f"{type(e).__name__}: {e}")
    else:
        print("no error")


class Markdown:
    """Markdown text that Jupyter renders (and ``print`` shows as plain text)."""

    def __init__(self, text: str):
        self.text = text

    def _repr_markdown_(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


def source(obj: Any, title: str | None = None) -> Markdown:
    """The source of a function or class from the package, as a highlighted code block.

    Lessons show the catalog's buggy and summary variants this way instead of copying them,
    so the text a learner reads is the code that runs.
    """
    code = textwrap.dedent(inspect.getsource(obj)).rstrip()
    where = f"`{obj.__module__}.{obj.__qualname__}`"
    head = f"**{title}** ({where})\n\n" if title else f"{where}\n\n"
    return Markdown(f"{head}```python\n{code}\n```")


def entry_card(entry: BugEntry) -> Markdown:
    """The catalog's record of one claim: the bug, the summary's fix, the right fix, why."""
    return Markdown(
        f"**{entry.title}** (`{entry.id}`, summary section {entry.section}, "
        f"{entry.component})\n\n"
        f"- the bug: `{entry.pattern.splitlines()[0]}`\n"
        f"- the summary's fix: `{entry.summary_fix}`\n"
        f"- the right fix: {entry.right_fix}\n\n{entry.explanation}"
    )


def outcome_row(out: Outcome) -> dict[str, object]:
    """One outcome as a table row: error, step, steps run, growth, gradient error, damage."""
    return {
        "variant": out.variant,
        "error": f"{out.error_type} at step {out.error_step}" if out.error_type else "none",
        "steps run": f"{out.steps_run} / {out.steps_requested}",
        "graph nodes (last step)": out.graph_nodes[-1] if out.graph_nodes else None,
        "graph growth / step": out.graph_growth(),
        "memory growth / step (KB)": round(out.memory_growth() / 1024, 1),
        "max grad diff": out.max_grad_diff,
        "damage": out.state_diff,
    }


def outcome_table(outcomes: Mapping[str, Outcome] | Sequence[Outcome]) -> pd.DataFrame:
    """A DataFrame with one row per outcome (see :func:`outcome_row`)."""
    import pandas as pd

    outs = outcomes.values() if isinstance(outcomes, Mapping) else outcomes
    return pd.DataFrame([outcome_row(o) for o in outs]).set_index("variant")


def verdict_report(v: Verdict) -> Markdown:
    """The measured verdict on the summary's fix, its one-sentence reason, and each variant's
    error as PyTorch wrote it (first line)."""
    lines = [f"**Measured verdict on the summary's fix: `{v.label}`**", "", f"Why: {v.reason}", ""]
    for name, out in v.outcomes.items():
        first = (out.error_message or "").strip().splitlines()
        what = f"`{out.error_type}` at step {out.error_step}: {first[0]}" if first else (
            f"no error, {out.steps_run} steps ran"
        )
        lines.append(f"- **{name}**: {what}")
    return Markdown("\n".join(lines))


def step_figure(
    outcomes: Mapping[str, Outcome] | Sequence[Outcome],
    field: str = "graph_nodes",
    title: str | None = None,
) -> go.Figure:
    """Plotly lines of a per-step measurement, one line per variant.

    ``field`` is ``graph_nodes`` (autograd nodes reachable from the loss) or ``tensor_mb``
    (live tensor memory, MiB). A run that failed ends where it failed, with an ``x`` marker.
    """
    import plotly.graph_objects as go

    outs = list(outcomes.values() if isinstance(outcomes, Mapping) else outcomes)
    fig = go.Figure()
    for out in outs:
        ys = out.graph_nodes if field == "graph_nodes" else [b / MIB for b in out.tensor_bytes]
        if not ys:
            continue
        fig.add_trace(go.Scatter(
            x=list(range(len(ys))), y=ys, mode="lines+markers", name=out.variant,
            line={"color": VARIANT_COLORS.get(out.variant)},
        ))
        if out.error_type is not None:
            fig.add_trace(go.Scatter(
                x=[len(ys) - 0.5], y=[ys[-1]], mode="markers", showlegend=False,
                marker={"symbol": "x", "size": 14, "color": VARIANT_COLORS.get(out.variant)},
                hovertext=f"{out.error_type} at step {out.error_step}", hoverinfo="text",
            ))
    label = "autograd nodes in the step's graph" if field == "graph_nodes" else "live tensor MiB"
    fig.update_layout(
        title=title or label, xaxis_title="step", yaxis_title=label, height=360,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


# the memory categories a catalog run records every step (Outcome.memory_categories), in
# stacking order, with the names a chart shows
CATEGORY_NAMES = {
    "params": "parameters", "grads": "gradients", "optimizer": "optimizer state",
    "saved": "saved for backward",
}


def category_table(out: Outcome) -> pd.DataFrame:
    """One run's memory by category per step (MiB): what the harness's meter read after each
    step's backward, on the device the run trained on."""
    import pandas as pd

    rows = [{CATEGORY_NAMES[k]: r[k] / MIB for k in CATEGORY_NAMES} | {"step": r["step"]}
            for r in out.memory_categories]
    return pd.DataFrame(rows).set_index("step") if rows else pd.DataFrame()


def category_figure(
    outcomes: Mapping[str, Outcome] | Sequence[Outcome], title: str | None = None
) -> go.Figure:
    """Memory by category stacked over steps, one panel per variant, on one shared y scale
    (so a category that grows in one variant and stays flat in another is seen at a glance).
    """
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    outs = [o for o in (outcomes.values() if isinstance(outcomes, Mapping) else outcomes)
            if o.memory_categories]
    fig = make_subplots(rows=1, cols=max(1, len(outs)), shared_yaxes=True,
                        subplot_titles=[o.variant for o in outs])
    colours = dict(zip(CATEGORY_NAMES.values(), qualitative.Safe, strict=False))
    for col, out in enumerate(outs, start=1):
        table = category_table(out)
        for name in table.columns:
            fig.add_trace(go.Scatter(
                x=table.index, y=table[name], name=name, stackgroup=f"v{col}",
                mode="lines", line={"width": 0.5, "color": colours[name]},
                fillcolor=colours[name], legendgroup=name, showlegend=col == 1,
            ), row=1, col=col)
        fig.update_xaxes(title_text="step", row=1, col=col)
    device = outs[0].memory_categories[0].get("label", "") if outs else ""
    fig.update_yaxes(title_text="MiB", row=1, col=1)
    fig.update_layout(
        title=title or f"memory by category after each step ({device})", height=380,
        margin={"l": 60, "r": 20, "t": 70, "b": 40}, legend={"orientation": "h", "y": -0.25},
    )
    return fig


def variant_switch(outcomes: Mapping[str, Outcome], field: str = "graph_nodes") -> Any:
    """A widget: toggle between variants; shows each one's error (or what ran) and its chart.

    The runs are already measured (``verdict.outcomes``), so switching is instant.
    """
    import ipywidgets as w

    names = list(outcomes)
    pick = w.ToggleButtons(options=names, value=names[0], description="variant")
    text = w.HTML()
    out = w.Output()

    def show(name: str) -> None:
        o = outcomes[name]
        text.value = f"<pre style='white-space:pre-wrap'>{_escape(describe(o))}</pre>"
        out.clear_output(wait=True)
        with out:
            step_figure([o], field, title=f"{name}: per step").show()

    pick.observe(lambda change: show(change["new"]), names="value")
    show(names[0])
    return w.VBox([pick, text, out])


def step_scrubber(
    steps: Sequence[int], render: Any, description: str = "step"
) -> Any:
    """A widget: a slider over ``steps``; ``render(step)`` returns what to show at that step
    (a Plotly figure, a DataFrame or text)."""
    import ipywidgets as w
    from IPython.display import display

    slider = w.SelectionSlider(options=list(steps), value=steps[0], description=description,
                               continuous_update=False)
    out = w.Output()

    def show(step: int) -> None:
        out.clear_output(wait=True)
        with out:
            shown = render(step)
            if hasattr(shown, "show") and callable(shown.show):
                shown.show()
            else:
                display(shown)

    slider.observe(lambda change: show(change["new"]), names="value")
    show(steps[0])
    return w.VBox([slider, out])


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


SUMMARY_PATH = Path(__file__).resolve().parents[1] / "docs" / "FIXES_SUMMARY.md"


def fixes_summary() -> Markdown:
    """The user's bug-fix summary, the document every lesson tests, as it was written."""
    return Markdown(SUMMARY_PATH.read_text())


def dashboard_link(store: str | Path | None = None) -> Markdown:
    """Where to open the live dashboard from this notebook, on a hub and locally alike.

    Inside JupyterLab the dashboard is the "MAHIA-X dashboard" launcher tile, served by
    jupyter-server-proxy under the server's own address (``mahiax/classroom/jupyter_proxy.py``): on
    a JupyterHub that is ``$JUPYTERHUB_SERVICE_PREFIX`` (``/user/<name>/``), in a local
    JupyterLab the server's root. Outside JupyterLab, ``make dashboard`` serves it on
    http://localhost:8501. The link is root-relative, so it works from whatever host the
    browser reached the server on.

    ``store``: the run store the lesson wrote (default: the one this kernel writes,
    ``$MAHIAX_STORE`` or ``runs/`` here). The tile reads ``$MAHIAX_STORE`` when the server has
    it, else ``runs/`` in the folder the server started in; the terminal command names the
    store explicitly.
    """
    import os

    from mahiax.classroom.jupyter_proxy import NAME
    from mahiax.store.paths import ENV_VAR, resolve_store_path

    path = resolve_store_path(store)
    on_hub = "JUPYTERHUB_SERVICE_PREFIX" in os.environ
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    text = (f"**[Open the MAHIA-X dashboard]({prefix}{NAME}/)** (in "
            f"{'your JupyterHub server' if on_hub else 'JupyterLab'}; it is also the "
            f"**MAHIA-X dashboard** tile in the Launcher). Run store: `{path}`.")
    if not on_hub:
        text += (f"\n\nOutside JupyterLab, from a terminal at the repository root: "
                 f"`{ENV_VAR}={path} make dashboard`, then open <http://localhost:8501>.")
    return Markdown(text)


# ---- the exercises' checks, recorded ----------------------------------------------------------


def current_lesson() -> str:
    """The notebook this kernel runs, by name (``04_retain_graph_and_encode``): Jupyter
    servers (2.0 and later) tell their kernels its path in ``JPY_SESSION_NAME``; elsewhere
    (a script, a console) ``"outside a lesson"``. One definition,
    :func:`mahiax.store.attempts.current_lesson`, which lesson 10's doctor exercises record
    with too."""
    from mahiax.store.attempts import current_lesson as lesson_of_this_kernel

    return lesson_of_this_kernel()


def check(entry_id: str, candidate: object, *, store: str | Path | None = None,
          **kwargs: Any):
    """An exercise's check: :func:`mahiax.bugs.check` on your candidate (``kwargs`` go to
    it), and the attempt recorded in your run store (``store``: by default the one this
    kernel writes), with what the check measured per step for the class page
    (:func:`mahiax.classroom.class_view.outcome_series`), so that :func:`my_attempts` shows your
    history. Returns the
    :class:`~mahiax.bugs.CheckResult`; print it to read PASS or NOT YET and why.

    On a JupyterHub with the class service (``MAHIAX_CLASS_URL``), the attempt is also sent
    to it with your own API token, for the instructor's class page
    (:func:`mahiax.classroom.class_view.send_attempt`).

    Recording never costs you the answer: if the store cannot be written, or the class
    service does not take the attempt within a few seconds, a warning says why and the
    result is returned all the same."""
    from mahiax import bugs
    from mahiax.classroom.class_view import outcome_series, record_learner_check

    result = bugs.check(entry_id, candidate, **kwargs)
    record_learner_check(entry_id, passed=result.holds, reasons=result.reasons,
                         message=result.message, store=store,
                         series=outcome_series(result.outcome), stacklevel=2)
    return result


def my_attempts(store: str | Path | None = None) -> pd.DataFrame:
    """Your recorded attempts, oldest first: when, lesson, exercise, PASS or NOT YET, and
    why not (the checker's short reasons)."""
    import datetime as dt

    import pandas as pd

    from mahiax.store.attempts import current_learner, read_attempts

    rows = [{"when": dt.datetime.fromtimestamp(a.at).strftime("%Y-%m-%d %H:%M:%S"),
             "lesson": a.lesson, "exercise": a.exercise, "verdict": a.verdict,
             "why not": "; ".join(a.reasons)}
            for a in read_attempts(store, learner=current_learner())]
    return pd.DataFrame(rows, columns=["when", "lesson", "exercise", "verdict", "why not"])
