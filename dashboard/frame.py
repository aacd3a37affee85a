"""The frame every run page draws in (:func:`page`): the title, then a live fragment with
the shown runs' status lines and the page's body, re-read only for new steps; every store
fault becomes a message on the page, never a traceback.

A page draws the run picked in the sidebar and the runs compared with it (``COMPARE_KEY``):
its line charts overlay every run, one colour per run (``charts.run_lines``); the charts
that cannot overlay (heatmaps, stacked areas, the PCA of memory nodes) draw the picked run
and say so. The pages import this module; it imports none of them."""

from __future__ import annotations

import html
from collections.abc import Callable

import pandas as pd
import streamlit as st

from dashboard import data, runs
from dashboard import page_watch as watch
from dashboard.figure_cache import drawing
from dashboard.shown import Shown
from dashboard.state import COMPARE_KEY, INTERVAL_KEY, LIVE_KEY, RUN_KEY
from mahiax.store import NotAStoreError, RunNotFoundError, StoreError

Body = Callable[[Shown], None]  # draws a page's charts of the runs shown


def page(title: str, body: Body, *, detailed_status: bool = False) -> None:
    """Title, then a fragment with the runs' status lines and the page's charts (with
    ``detailed_status``, a failed run's whole error message rather than its start).

    The page is redrawn on a timer (every INTERVAL_KEY seconds, the fragment alone) only
    while a run it shows trains: the picked run or one compared with it. Runs that are all
    finished, failed or interrupted are drawn once: the page then only watches, in a
    fragment that draws nothing (``dashboard/page_watch.py``), for the run list or a shown
    run's status to change (a resumed run, a new run), and redraws the whole page when one does."""
    st.title(title)
    path = data.session_store()
    if path is None:
        return
    name = st.session_state.get(RUN_KEY)
    compared = _compared_names() if name is not None else []
    try:
        known = list(data.list_runs(path)["name"])
        status = None if name is None else data.run_info(path, name)["status"]
    except RunNotFoundError:
        status = None
    except StoreError as e:
        _store_error(path, e)
        return
    try:
        others, _ = _compared_infos(path, compared)
    except StoreError as e:
        _store_error(path, e)
        return
    compared = [info["name"] for info in others]
    statuses = (status, *(info["status"] for info in others))
    # live: a shown run trains, or no run is picked yet and one is starting or waiting for a
    # core
    starting = name is None and bool(runs.active_runs(path) or runs.queued_runs(path))
    live = ("running" in statuses or starting) and bool(st.session_state.get(LIVE_KEY, True))
    interval = float(st.session_state.get(INTERVAL_KEY, 2.0))

    @st.fragment(run_every=interval if live else None)
    def refresh() -> None:
        try:
            if list(data.list_runs(path)["name"]) != known:
                st.rerun()  # a run appeared or vanished: the sidebar's pickers must change
            if name is None:
                _no_run(path)
                return
            info = data.run_info(path, name)
            now, gone = _compared_infos(path, compared)
            if (info["status"], *(o["status"] for o in now)) != statuses and not gone:
                st.rerun()  # started or stopped being live: the timer must change
            for other in gone:
                st.warning(f"Compared run {other!r} is no longer in the store (it was "
                           "deleted): the other runs are drawn.")
            shown = Shown(path=path, main=info, others=tuple(now))
            _status(info, detailed=detailed_status)
            if shown.comparing:
                _compared_status(shown)
            with drawing(shown):
                body(shown)
        except RunNotFoundError:
            data.forget_run(path, name)
            st.warning(f"Run {name!r} is no longer in the store (it was deleted). "
                       "Pick another run in the sidebar.")
        except StoreError as e:
            _store_error(path, e)
        except Exception as e:  # a page must never show a traceback
            st.error(f"This page could not be drawn: {type(e).__name__}: {e}")

    refresh()
    if not live and st.session_state.get(LIVE_KEY, True):
        # the watch compares the run list with itself: the fresh statuses above can be ahead
        # of the list (cached for a second), and comparing the two would rerun the page
        # until the list caught up
        shown_names = [name, *compared]
        try:
            drawn = _run_states(path, shown_names)
        except StoreError:  # the page said so; the watch redraws once the store reads again
            drawn = None
        watch.watch(lambda: _run_states(path, shown_names), drawn)


def _compared_names() -> list[str]:
    """The runs picked in the sidebar to compare with the picked run, in the order picked
    (the picked run itself left out)."""
    main = st.session_state.get(RUN_KEY)
    return [str(n) for n in st.session_state.get(COMPARE_KEY) or [] if n != main]


def _compared_infos(path: str, names: list[str]) -> tuple[list[dict], list[str]]:
    """The current rows of the compared runs ``names`` that are in the store, and the names
    of those no longer there (deleted: the server forgets their series)."""
    infos, gone = [], []
    for other in names:
        try:
            infos.append(data.run_info(path, other))
        except RunNotFoundError:
            data.forget_run(path, other)
            gone.append(other)
    return infos, gone


def _run_states(path: str, names: list[str | None]) -> tuple[list[str], tuple]:
    """The run names of the store and the status of each run of ``names`` (None when not
    there), from the run list all sessions share."""
    table = data.list_runs(path)
    status = dict(zip(table["name"], table["status"], strict=True))
    return list(table["name"]), tuple(None if n not in status else str(status[n])
                                      for n in names)


def _compared_status(shown: Shown) -> None:
    """One line naming each shown run in its chart colour, with where each compared run
    stands; which charts overlay them."""
    colours = shown.colours

    def swatch(info: dict) -> str:
        last = info["last_step"]
        step = "no step yet" if pd.isna(last) else f"last step {int(last)}"
        where = "" if info is shown.main else f" · {info['status']} · {step}"
        return (f'<span style="color:{colours[info["name"]]}">■</span> '
                f"<b>{html.escape(info['name'])}</b>{html.escape(where)}")

    st.caption("Compared: " + " &nbsp; ".join(swatch(i) for i in shown.infos)
               + ". The line charts overlay every run, one colour per run; the figures above "
                 "and the charts that cannot overlay are the picked run's.",
               unsafe_allow_html=True)


def _store_error(path: str, e: StoreError) -> None:
    if isinstance(e, NotAStoreError):
        st.error(f"Cannot read the run store at `{path}`: {e}. Point `MAHIAX_STORE` at a "
                 "MAHIA-X run store (or a folder for a new one); this file was left untouched.")
    else:
        st.error(f"Cannot read the run store at `{path}`: {e}")


def _no_run(path: str) -> None:
    starting = runs.active_runs(path)
    queued = runs.queued_runs(path)
    if starting:
        names = ", ".join(f"{n!r} (process {p})" for n, p in starting.items())
        st.info(f"Starting {names}; it appears here as soon as it writes its first step.")
    elif queued:
        names = ", ".join(f"{n!r} (number {p} in the queue)" for n, p in queued.items())
        st.info(f"Waiting for a free core: {names}. Every core trains a run already; it "
                "starts on its own.")
    elif not runs.autostart_enabled():
        st.info("The run store is empty. Start a run with the form in the sidebar, or run "
                "`python -m mahiax train --run demo --steps 300`.")
    else:
        st.info("No run selected. Start one with the form in the sidebar.")
    tail = runs.log_tail(path, runs.DEMO_NAME)
    if tail and not starting:
        st.error("The demo run ended before writing anything; its output:")
        st.code(tail)


def _status(info: dict, detailed: bool) -> None:
    """One line on where the run stands; a failure or interruption spelled out."""
    status, name = info["status"], info["name"]
    last = info["last_step"]
    step = "no step yet" if pd.isna(last) else f"last step {int(last)}"
    where = f"**{name}** · {step} · {info['steps']} steps stored · device `{info['device']}`"
    world = info.get("world_size") or 1
    if world > 1:
        where += f" · {world} processes (data parallel; figures over the global batch)"
    if status == "running":
        st.success(f"Running (live) · {where}")
    elif status == "finished":
        st.success(f"Finished · {where}")
    elif status == "interrupted":
        st.warning(f"Interrupted · {where}. The process stopped without finishing; continue "
                   f"it with `python -m mahiax train --run {name} --resume`.")
    elif status == "failed":
        at = "" if pd.isna(info["error_step"]) else f" at step {int(info['error_step'])}"
        st.error(f"Failed{at} · {where}\n\n**{info['error_type']}**{at}: "
                 + ("" if detailed else _short(info["error_message"])))
        if detailed and info["error_message"]:
            st.code(info["error_message"], language=None, wrap_lines=True)
    else:
        st.info(f"{status} · {where}")


def _short(text: str | None, limit: int = 300) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + " ..."
