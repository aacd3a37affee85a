"""The figures the run pages draw, built once and shared by every session drawing the same
runs at the same step (:func:`chart`): with thirty viewers of a live run, building each
figure (plotly validates every trace) and its dict form would otherwise cost thirty times
per new step. The frame (``dashboard/frame.py``) says which runs a page draws
(:func:`drawing`); the pages call :func:`chart`."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboard import data
from dashboard.shown import Shown
from dashboard.state import POINTS_KEY

MAX_FIGURES = 256  # figures kept for the server's sessions; the least recently drawn go first
_figures: OrderedDict[tuple, go.Figure] = OrderedDict()
_figures_lock = threading.Lock()
_drawing = threading.local()  # .shown: the Shown runs of the page being drawn


def max_points() -> int:
    """The points per chart the session chose (``POINTS_KEY``): longer series are
    downsampled to it, so it is part of every figure's key."""
    return int(st.session_state.get(POINTS_KEY, 2000))


@contextmanager
def drawing(shown: Shown) -> Iterator[None]:
    """Key the figures drawn inside the block by the data the server holds of ``shown``'s
    runs. Outside it a figure is built every time. Per thread: Streamlit runs each
    session's script in a thread of its own."""
    _drawing.shown = shown
    try:
        yield
    finally:
        _drawing.shown = None


def chart(build: Callable[[], go.Figure], *, every_run: bool = False,
          identity: object = ()) -> None:
    """Draw the figure ``build()`` makes, shared by every session drawing the same runs at
    the same step: building a figure (plotly validates every trace) costs more than sending
    it, so thirty viewers of a live run build each chart once per new step, not thirty times.

    The figure is a function of the data the server holds of the runs it draws
    (``data.held_version`` of the picked run of the page :func:`drawing` names, and
    with ``every_run`` of each run compared too, in their order, which sets their colours)
    and of the small values ``build`` closes over (the metric keys, the step picked, log
    scale ...) and ``identity`` (e.g. the function that picks a chart's series): those make
    the key, with where ``build`` is written. A closed-over frame or array is derived from
    the runs' data, so the versions stand for it."""
    shown: Shown | None = getattr(_drawing, "shown", None)
    key = None
    if shown is not None:
        drawn = shown.infos if every_run else (shown.main,)
        key = (tuple(data.held_version(shown.path, info) for info in drawn), max_points(),
               build.__code__, _closure_key(build), _plain_key(identity))
    fig = None
    if key is not None:
        with _figures_lock:
            fig = _figures.get(key)
            if fig is not None:
                _figures.move_to_end(key)
    if fig is None:
        fig = build()
        fig.__class__ = SharedFigure  # the same figure, its dict form computed once
        if key is not None:
            with _figures_lock:
                _figures[key] = fig
                while len(_figures) > MAX_FIGURES:
                    _figures.popitem(last=False)
    st.plotly_chart(fig, width="stretch")


class SharedFigure(go.Figure):
    """A figure drawn by several sessions: ``st.plotly_chart`` asks for ``to_dict()`` every
    time it draws it (a deep copy, the data packed in base64: most of a chart's cost once
    the figure is built), so the dict is made once and shared. Read only: neither Streamlit
    nor the pages change a figure once it is drawn."""

    def to_dict(self) -> dict:
        shared = getattr(self, "_shared_dict", None)
        if shared is None:
            shared = self._shared_dict = super().to_dict()
        return shared


def _closure_key(build: Callable, depth: int = 0) -> tuple:
    """The plain values ``build`` closes over or takes as defaults (see :func:`_plain_key`)."""
    values = [c.cell_contents for c in build.__closure__ or ()] + list(build.__defaults__ or ())
    return tuple(_plain_key(value, depth) for value in values)


_PLAIN = (str, int, float, bool, type(None), np.integer, np.floating)


def _plain_key(value: object, depth: int = 0) -> object:
    """``value`` as part of a figure's key: numbers and strings as they are; lists, tuples
    and dicts of them item by item; a function by its code and what it closes over (a pick
    of series written once and given different keys makes different charts); anything else
    (frames, arrays: derived from the runs' data) only by its type."""
    if isinstance(value, _PLAIN):
        return value
    if depth < 4:
        if isinstance(value, list | tuple):
            return tuple(_plain_key(v, depth + 1) for v in value)
        if isinstance(value, Mapping):
            return tuple((_plain_key(k, depth + 1), _plain_key(v, depth + 1))
                         for k, v in value.items())
        if callable(value) and hasattr(value, "__code__"):
            return value.__code__, _closure_key(value, depth + 1)
    return type(value).__name__
