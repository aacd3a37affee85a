"""MAHIA-X Lab live dashboard: ``streamlit run dashboard`` (or this file).

This script holds only the sidebar (store, run picker and the runs compared with it,
start/stop form, refresh settings) and runs the page ``dashboard/navigation.py`` picks; each
page lives in a module of its own (``training_page``, ``bug_lab`` ...).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `streamlit run dashboard` puts only dashboard/ on the path
    sys.path.insert(0, str(_ROOT))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from dashboard import data, navigation, runs, state  # noqa: E402
from mahiax.config import PRECISIONS, WEIGHTINGS  # noqa: E402
from mahiax.store import StoreError, validate_run_name  # noqa: E402

PENDING_KEY = "dashboard_pending_run"  # a run just started, to select once it appears


def _load_runs(path: str) -> tuple[pd.DataFrame, StoreError | None]:
    try:
        return data.list_runs(path), None
    except StoreError as e:
        return pd.DataFrame(columns=["name", "status", "last_step"]), e


def _run_picker(table: pd.DataFrame) -> None:
    """Select box of runs labelled with their status; newest run preselected."""
    names = list(table["name"])
    status = dict(zip(table["name"], table["status"], strict=True))
    chosen = st.session_state.get(state.RUN_KEY)
    pending = st.session_state.get(PENDING_KEY)
    if pending in names:
        st.session_state[state.RUN_KEY] = pending
        del st.session_state[PENDING_KEY]
    elif chosen is not None and chosen not in names:
        # the select box can hand back its old *label* ("name · status") when a status changes
        base = str(chosen).split(" · ")[0]
        if base in names:
            st.session_state[state.RUN_KEY] = base
        else:
            st.warning(f"Run {base!r} is no longer in the store (it was deleted).")
            del st.session_state[state.RUN_KEY]
    if not names:
        st.caption("No runs in the store yet.")
        st.session_state.pop(state.RUN_KEY, None)
        return
    if state.RUN_KEY not in st.session_state:
        st.session_state[state.RUN_KEY] = names[-1]
    st.selectbox("Run", names, key=state.RUN_KEY,
                 format_func=lambda n: f"{n} · {status.get(n, '?')}")
    _compare_picker(names)


def _compare_picker(names: list[str]) -> None:
    """Multiselect of the runs every page draws over the picked one, one colour per run (in
    the order picked). A compared run no longer in the store is dropped with a warning; the
    picked run is never compared with itself."""
    main = st.session_state.get(state.RUN_KEY)
    chosen = list(st.session_state.get(state.COMPARE_KEY) or [])
    for name in chosen:
        if name not in names:
            st.warning(f"Compared run {name!r} is no longer in the store (it was deleted): "
                       "it is no longer drawn.")
    kept = [n for n in chosen if n in names and n != main]
    if kept != chosen:
        st.session_state[state.COMPARE_KEY] = kept
    st.multiselect("Compare with", [n for n in names if n != main], key=state.COMPARE_KEY,
                   placeholder="choose to overlay",
                   help="Drawn over the picked run on every page's line charts, one colour "
                        "per run (the legend names it)")


def _stop_buttons(path: str) -> None:
    """One stop button per run this dashboard started that is still training; then the runs
    waiting for a free core, with their place in the queue."""
    for name, place in runs.queued_runs(path).items():
        st.caption(f"{name}: waiting for a free core, number {place} in the queue")
    for name, pid in runs.active_runs(path).items():
        if st.button(f"Stop {name} (process {pid})", key=f"stop_{name}",
                     icon=":material/stop_circle:"):
            if runs.stop_run(path, name):
                st.toast(f"Stopped {name}: it shows as interrupted.")
            st.rerun()


def _start_form(path: str, names: list[str]) -> None:
    """Form that starts a training run (or a catalog bug's variant) in the background."""
    from mahiax.bugs import VARIANTS, entries

    with st.form("start_run", clear_on_submit=False):
        st.markdown("**Start a run**")
        name = st.text_input("name", value=f"run-{len(names) + 1}")
        steps = st.number_input("steps", min_value=1, max_value=100_000, value=300, step=50)
        c1, c2 = st.columns(2)
        experts = c1.number_input("experts", min_value=1, max_value=64, value=8)
        top_k = c2.number_input("top-k", min_value=1, max_value=64, value=2)
        weighting = c1.selectbox("weighting", WEIGHTINGS)
        precision = c2.selectbox("precision", PRECISIONS)
        bug = st.selectbox("catalog bug (optional)", ["(none)", *(e.id for e in entries())])
        variant = st.selectbox("variant", VARIANTS,
                               help="used only with a catalog bug")
        submitted = st.form_submit_button("Start", icon=":material/play_arrow:")
    if not submitted:
        return
    try:
        validate_run_name(name)
        if name in names:
            raise ValueError(f"a run named {name!r} is already in the store; choose another")
        if top_k > experts:
            raise ValueError(f"top-k ({top_k}) cannot exceed the number of experts ({experts})")
        request = runs.RunRequest(
            name=name, steps=int(steps), experts=int(experts), top_k=int(top_k),
            weighting=weighting, precision=precision,
            bug=None if bug == "(none)" else bug, variant=variant)
        ticket = runs.start_run(path, request)
    except (ValueError, OSError) as e:
        st.error(str(e))
        return
    st.session_state[PENDING_KEY] = name
    if ticket.pid is None:
        st.info(f"{name!r} waits for a free core (every core trains a run already); it "
                "starts on its own and appears once its first step is stored.")
    else:
        st.success(f"Started {name!r} (process {ticket.pid}); it appears once its first "
                   "step is stored.")


def _settings() -> None:
    st.toggle("Live refresh", value=True, key=state.LIVE_KEY)
    st.slider("refresh every (s)", 1.0, 10.0, 2.0, 0.5, key=state.INTERVAL_KEY)
    st.number_input("max points per chart", min_value=200, max_value=20_000, value=2000,
                    step=200, key=state.POINTS_KEY,
                    help="longer series keep each bucket's min and max, so spikes stay visible")


def main() -> None:
    st.set_page_config(page_title="MAHIA-X Lab", page_icon=":material/monitoring:",
                       layout="wide")
    page = navigation.navigate()
    path = str(data.store_path())
    st.session_state[state.STORE_KEY] = path
    table, error = _load_runs(path)
    if error is None and runs.maybe_start_demo(path, len(table)):
        st.session_state[PENDING_KEY] = runs.DEMO_NAME
    with st.sidebar:
        st.header("MAHIA-X Lab")
        st.caption(f"Run store: `{path}`")
        if error is not None:
            st.error(str(error))
        else:
            _run_picker(table)
            _stop_buttons(path)
            _start_form(path, list(table["name"]))
        with st.expander("Refresh and charts"):
            _settings()
    page.run()


main()
