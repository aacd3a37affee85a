"""The Bug lab page: one catalog entry's three variants (the bug, the summary's fix, the right
fix) trained side by side in background processes, their graph size, memory, loss and
gradient error overlaid, each one's error shown as PyTorch wrote it, and the verdict on the
summary's fix, measured in a process of its own (``verdict_jobs``): the server only reads and
draws. ``?entry=ID`` in the page's address opens it on that entry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, data, processing, runs, verdict_jobs
from dashboard.state import INTERVAL_KEY, LIVE_KEY, STORE_KEY
from mahiax.store import StoreError

ENTRY_KEY = "bug_lab_entry"
VARIANT_LABELS = {"buggy": "the bug", "summary": "the summary's fix", "fixed": "the right fix"}
MAX_STEPS = 200


@st.cache_resource(show_spinner=False)
def _catalog() -> dict:
    """The catalog entries by id (imported once per server)."""
    from mahiax.bugs import entries

    return {e.id: e for e in entries()}


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base-2``, ``base-3`` ... : the first name not in ``taken``."""
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def _start_variants(path: str, entry_id: str, steps: int, taken: set[str]) -> list[str]:
    """Start the three variants of ``entry_id`` as background runs; returns their names."""
    started = []
    taken = set(taken) | set(runs.load_registry(path))
    for variant in VARIANT_LABELS:
        name = unique_name(f"{entry_id}-{variant}", taken)
        taken.add(name)
        runs.start_run(path, runs.RunRequest(name=name, steps=steps, bug=entry_id,
                                             variant=variant))
        started.append(name)
    return started


def bug_lab() -> None:
    """The page: pick an entry, read what it is about, run its variants, compare them."""
    st.title("Bug lab")
    path = st.session_state.get(STORE_KEY)
    if path is None:
        st.error("No run store is configured.")
        return
    catalog = _catalog()
    ids = list(catalog)
    asked = st.query_params.get("entry")
    if ENTRY_KEY not in st.session_state and asked in ids:  # a link to one entry
        st.session_state[ENTRY_KEY] = asked
    if st.session_state.get(ENTRY_KEY) not in ids:  # open on the newest recorded entry
        try:
            recorded = [b for b in data.catalog_runs(path)["bug"] if b in ids]
        except StoreError:
            recorded = []
        st.session_state[ENTRY_KEY] = recorded[-1] if recorded else ids[0]
    entry_id = st.selectbox("Catalog entry", ids, key=ENTRY_KEY,
                            format_func=lambda i: f"{i} · {catalog[i].title}")
    entry = catalog[entry_id]
    st.caption(f"Summary section {entry.section} · component `{entry.component}`")
    left, mid, right = st.columns(3)
    left.markdown("**The bug**")
    left.code(entry.pattern, language="python", wrap_lines=True)
    mid.markdown("**The summary's fix, as written**")
    mid.code(entry.summary_fix, language="python", wrap_lines=True)
    right.markdown("**The right fix**")
    right.code(entry.right_fix, language="python", wrap_lines=True)
    with st.expander("Why", expanded=False):
        st.markdown(entry.explanation)

    _verdict(entry_id, entry.steps)

    with st.form("bug_lab_start"):
        steps = st.number_input("steps per variant", min_value=1, max_value=MAX_STEPS,
                                value=max(entry.steps, 20), step=5,
                                help="each variant stops at its first error")
        go = st.form_submit_button("Run the three variants side by side",
                                   icon=":material/play_arrow:")
    if go:
        try:
            taken = set(data.list_runs(path)["name"])
            names = _start_variants(path, entry_id, int(steps), taken)
        except (ValueError, OSError, StoreError) as e:
            st.error(f"Could not start the variants: {e}")
        else:
            st.success(f"Started {', '.join(names)}; they appear below as they train.")
    _comparison(path, entry_id)


def _verdict(entry_id: str, steps: int) -> None:
    """The measured verdict on the summary's fix. It is measured in a process of its own
    (``dashboard/verdict_jobs.py``); while that runs, a fragment polls it every second and
    the rest of the page stays usable."""
    job = verdict_jobs.request(entry_id)
    if not job.running:
        _show_verdict(job, steps)
        return

    @st.fragment(run_every=1.0)
    def poll() -> None:
        current = verdict_jobs.request(entry_id)
        if current.running:
            st.info(f"Measuring the verdict on the summary's fix: the three variants train "
                    f"in process {current.pid} ({current.elapsed_s():.0f} s so far; a few "
                    "seconds, up to half a minute for the DDP entries).",
                    icon=":material/hourglass_top:")
        else:
            st.rerun()  # the whole page, so the finished verdict needs no polling

    poll()


def _show_verdict(job: verdict_jobs.VerdictJob, steps: int) -> None:
    if job.error is not None:
        st.error(f"The verdict could not be measured: {job.error}")
        if st.button("Measure again", key=f"remeasure_{job.entry_id}",
                     icon=":material/refresh:"):
            verdict_jobs.forget(job.entry_id)
            st.rerun()
        return
    show = st.success if job.label == "holds" else st.warning
    show(f"**Verdict on the summary's fix: {job.label}** (measured by `python -m mahiax bugs "
         f"verdict {job.entry_id}` over {steps} steps per variant). {job.reason}")


def _comparison(path: str, entry_id: str) -> None:
    """A live fragment: the newest run of each variant, side by side, and overlays."""
    live = bool(st.session_state.get(LIVE_KEY, True))
    interval = float(st.session_state.get(INTERVAL_KEY, 2.0)) if live else None

    @st.fragment(run_every=interval)
    def refresh() -> None:
        try:
            latest = data.latest_variant_runs(path, entry_id)
            if not latest:
                st.info(f"No recorded runs of `{entry_id}` yet. Press the button above, or "
                        f"run `python -m mahiax train --bug {entry_id} --variant buggy "
                        f"--run {entry_id}-buggy`.")
                return
            infos = {v: data.run_info(path, latest[v]) for v in VARIANT_LABELS if v in latest}
            cols = st.columns(len(VARIANT_LABELS))
            for col, variant in zip(cols, VARIANT_LABELS, strict=True):
                with col:
                    _variant_card(variant, infos.get(variant))
            scalars = {v: data.live_scalars(path, info) for v, info in infos.items()}
            _overlays(scalars)
            _memory_categories(scalars, infos)
        except StoreError as e:
            st.error(f"Cannot read the run store at `{path}`: {e}")
        except Exception as e:  # a page must never show a traceback
            st.error(f"This page could not be drawn: {type(e).__name__}: {e}")

    refresh()


def _variant_card(variant: str, info: dict | None) -> None:
    """One variant's newest run: status, steps, and its error as PyTorch wrote it."""
    st.markdown(f"**{variant}** · {VARIANT_LABELS[variant]}")
    if info is None:
        st.info("Not run yet.")
        return
    last = info["last_step"]
    ran = 0 if pd.isna(last) else int(last) + 1
    where = f"`{info['name']}` · {ran} step{'s' if ran != 1 else ''} ran"
    status = info["status"]
    if status == "running":
        st.info(f"Running · {where}")
    elif status == "finished":
        st.success(f"No error · {where}")
    elif status == "failed":
        at = "" if pd.isna(info["error_step"]) else f" at step {int(info['error_step'])}"
        st.error(f"**{info['error_type']}**{at} · {where}")
        st.code(info["error_message"] or "", language=None, wrap_lines=True)
    else:
        st.warning(f"{status.capitalize()} · {where}")


# (key, title, y title, log y, sparse)
_OVERLAYS = (
    ("graph_nodes", "Autograd graph size per step", "nodes", False, False),
    ("tensor_bytes", "Live tensor memory", "MiB", False, True),
    ("loss", "Total loss", "", True, False),
    ("grad_diff", "Largest gradient error vs the clean reference", "", False, False),
)


def _overlays(scalars: dict[str, pd.DataFrame]) -> None:
    """One chart per measure, one line per variant."""
    figs = []
    for key, title, y_title, log_y, sparse in _OVERLAYS:
        series = {v: df[key].dropna() for v, df in scalars.items()
                  if key in df.columns and df[key].notna().any()}
        if not series:
            continue
        df = pd.DataFrame(series)
        df.index.name = "step"
        if key == "tensor_bytes":
            df = processing.to_mib(df)
        if sparse:
            figs.append(charts.markers(df, title, y_title))
        else:
            figs.append(charts.lines(df, title, y_title, log_y=log_y))
    if not figs:
        st.info("The variants have not finished a step yet (a variant that fails at step 0 "
                "has nothing to draw: its error is above).")
        return
    for i in range(0, len(figs), 2):
        cols = st.columns(2)
        for col, fig in zip(cols, figs[i:i + 2], strict=False):
            with col:
                st.plotly_chart(fig, width="stretch")


def _memory_categories(scalars: dict[str, pd.DataFrame], infos: dict[str, dict]) -> None:
    """Each variant's memory by category, stacked over steps, on one shared y range: a graph
    kept alive across steps shows as 'saved for backward' growing while parameters stay
    flat."""
    split = {v: processing.memory_by_category(df) for v, df in scalars.items()}
    split = {v: m for v, m in split.items() if not m.empty}
    if not split:
        if scalars:
            st.caption("These runs logged no memory by category (recorded before categories "
                       "were logged): the overlays above show their live tensor bytes.")
        return
    devices = {str(infos[v].get("device") or "cpu") for v in split}
    where = "GPU" if all(d.startswith("cuda") for d in devices) else "CPU"
    st.markdown(f"**Memory by category ({where})**, each variant on the same scale")
    top = max(float(np.nanmax(m.stacked.sum(axis=1).to_numpy(dtype=float), initial=0.0))
              for m in split.values())
    top = max([top] + [float(np.nanmax(m.totals.to_numpy(dtype=float), initial=0.0))
                       for m in split.values() if not m.totals.empty])
    cols = st.columns(len(VARIANT_LABELS))
    for col, variant in zip(cols, VARIANT_LABELS, strict=True):
        with col:
            m = split.get(variant)
            if m is None:
                st.caption(f"{variant}: no step measured.")
                continue
            st.plotly_chart(charts.memory_stack(m.stacked, m.totals, f"{variant}: "
                                                f"{VARIANT_LABELS[variant]}",
                                                y_max=1.05 * top or None),
                            width="stretch")
