"""The Bug lab page: one catalog entry's three variants (the bug, the summary's fix, the right
fix) trained side by side in background processes, their graph size, memory, loss and
gradient error overlaid, each one's error shown as PyTorch wrote it, and the verdict on the
summary's fix, measured in a process of its own (``verdict_jobs``): the server only reads and
draws. ``?entry=ID`` in the page's address opens it on that entry."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, data, processing, runs, slots, verdict_jobs, verdict_runs
from dashboard import page_watch as watch
from dashboard.state import INTERVAL_KEY, LIVE_KEY
from mahiax import metric_keys as mk
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


@dataclass(kw_only=True)
class VariantSet:
    """One request's three runs of an entry (variant -> run name, and its ticket for a core),
    shared by every session of the server that asks for the same entry while it runs."""

    entry_id: str
    steps: int
    names: dict[str, str]
    tickets: dict[str, slots.Ticket]

    @property
    def active(self) -> bool:
        """Some variant still waits for a core or trains."""
        return any(t.waiting or t.running for t in self.tickets.values())


_sets: dict[tuple[str, str], VariantSet] = {}  # (store, entry id) -> the newest set started
_sets_lock = threading.Lock()


def active_set(path: str, entry_id: str) -> VariantSet | None:
    """The set of ``entry_id``'s variants this server is running or has queued, if any."""
    with _sets_lock:
        found = _sets.get((path, entry_id))
    return found if found is not None and found.active else None


def request_variants(path: str, entry_id: str, steps: int,
                     taken: set[str]) -> tuple[VariantSet, bool]:
    """The three variants of ``entry_id`` as background runs, each waiting for a free core
    (``dashboard/slots.py``). When a session of this server already started them and they
    still wait or train, that set is returned and nothing is started: ``(set, False)``;
    else ``(the new set, True)``."""
    with _sets_lock:
        current = _sets.get((path, entry_id))
        if current is not None and current.active:
            return current, False
        taken = set(taken) | set(runs.load_registry(path)) | set(runs.queued_runs(path))
        names, tickets = {}, {}
        for variant in VARIANT_LABELS:
            name = unique_name(f"{entry_id}-{variant}", taken)
            taken.add(name)
            tickets[variant] = runs.start_run(path, runs.RunRequest(
                name=name, steps=steps, bug=entry_id, variant=variant))
            names[variant] = name
        made = _sets[(path, entry_id)] = VariantSet(entry_id=entry_id, steps=steps, names=names,
                                                    tickets=tickets)
        return made, True


def bug_lab() -> None:
    """The page: pick an entry, read what it is about, run its variants, compare them."""
    st.title("Bug lab")
    path = data.session_store()
    if path is None:
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
            chosen, new = request_variants(path, entry_id, int(steps), taken)
        except (ValueError, OSError, StoreError) as e:
            st.error(f"Could not start the variants: {e}")
        else:
            names = ", ".join(chosen.names.values())
            if new:
                st.success(f"Started {names}; they appear below as they train.")
            else:
                st.info(f"These variants were already started ({chosen.steps} steps each) "
                        f"by an earlier request: {names}. Showing them below; nothing new "
                        "started.")
    _comparison(path, entry_id)


def _verdict(entry_id: str, steps: int) -> None:
    """The measured verdict on the summary's fix. It is measured in a process of its own
    (``dashboard/verdict_jobs.py``), after waiting for a free core if every core is busy;
    meanwhile a fragment polls it every second and the rest of the page stays usable."""
    job = verdict_jobs.request(entry_id)
    if not job.running:
        _show_verdict(job, steps)
        return

    @st.fragment(run_every=1.0)
    def poll() -> None:
        current = verdict_jobs.request(entry_id)
        if not current.running:
            st.rerun()  # the whole page, so the finished verdict needs no polling
        place = current.place
        if place is not None:
            st.info(f"The verdict on the summary's fix waits for a free core: number {place} "
                    f"in the queue ({slots.limit()} training processes at a time).",
                    icon=":material/hourglass_top:")
        else:
            st.info(f"Measuring the verdict on the summary's fix: the three variants train "
                    f"in process {current.pid} ({current.elapsed_s():.0f} s so far; a few "
                    "seconds, up to half a minute for the DDP entries).",
                    icon=":material/hourglass_top:")

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
    when = time.strftime("%H:%M:%S", time.localtime(job.measured_at)) \
        if job.measured_at else "?"
    show(f"**Verdict on the summary's fix: {job.label}** (measured by `python -m mahiax bugs "
         f"verdict {job.entry_id}` over {steps} steps per variant, at {when} on torch "
         f"{job.torch_version}). {job.reason}")
    if verdict_runs.has_series(job.figures):  # e.g. router-collapse: its runs side by side
        verdict_runs.show(job.entry_id, job.measured_at, job.figures, VARIANT_LABELS)


def _comparison(path: str, entry_id: str) -> None:
    """A fragment: the newest run of each variant (or the set this server runs or queues),
    side by side, and overlays. Redrawn on a timer only while a variant waits or trains;
    otherwise a watch (``dashboard/page_watch.py``) redraws the page when new runs of the entry
    appear."""
    enabled = bool(st.session_state.get(LIVE_KEY, True))
    interval = float(st.session_state.get(INTERVAL_KEY, 2.0))
    try:
        drawn = _signature(path, entry_id)
    except StoreError:
        drawn = None
    live = enabled and drawn is not None and drawn.busy

    @st.fragment(run_every=interval if live else None)
    def refresh() -> None:
        try:
            ongoing = active_set(path, entry_id)
            latest = data.latest_variant_runs(path, entry_id)
            if ongoing is not None:
                latest |= ongoing.names
            if not latest:
                st.info(f"No recorded runs of `{entry_id}` yet. Press the button above, or "
                        f"run `python -m mahiax train --bug {entry_id} --variant buggy "
                        f"--run {entry_id}-buggy`.")
                return
            recorded = set(data.list_runs(path)["name"])
            infos = {v: data.run_info(path, latest[v]) for v in VARIANT_LABELS
                     if latest.get(v) in recorded}
            if live and not _signature(path, entry_id).busy:
                st.rerun()  # the last variant ended: drawn once more, then the timer stops
            cols = st.columns(len(VARIANT_LABELS))
            for col, variant in zip(cols, VARIANT_LABELS, strict=True):
                with col:
                    if variant in infos or variant not in latest:
                        _variant_card(variant, infos.get(variant))
                    else:
                        _pending_card(variant, latest[variant], ongoing)
            scalars = {v: data.live_scalars(path, info) for v, info in infos.items()}
            _overlays(scalars)
            _memory_categories(scalars, infos)
        except StoreError as e:
            st.error(f"Cannot read the run store at `{path}`: {e}")
        except Exception as e:  # a page must never show a traceback
            st.error(f"This page could not be drawn: {type(e).__name__}: {e}")

    refresh()
    if not live and enabled:
        watch.watch(lambda: _signature(path, entry_id), drawn)


@dataclass(frozen=True, kw_only=True)
class _Signature:
    """What the comparison is drawn from: the watch redraws the page once it differs from
    the one the page was drawn from, and the page is live while ``busy``."""

    newest: dict[str, tuple[str, str]]  # variant -> (its newest recorded run, that run's status)
    busy: bool  # a variant waits or trains


def _signature(path: str, entry_id: str) -> _Signature:
    """What the comparison is drawn from: each variant's newest recorded run with its status
    (from the run table all sessions share), and whether a variant waits or trains."""
    table = data.catalog_runs(path)
    mine = table[table["bug"] == entry_id]
    newest = {str(v): (str(g.iloc[-1]["name"]), str(g.iloc[-1]["status"]))
              for v, g in mine.groupby("variant")}
    busy = active_set(path, entry_id) is not None or \
        any(status == "running" for _, status in newest.values())
    return _Signature(newest=newest, busy=busy)


def _pending_card(variant: str, name: str, ongoing: VariantSet | None) -> None:
    """A variant asked for that has stored nothing yet: its place in the queue, or starting."""
    st.markdown(f"**{variant}** · {VARIANT_LABELS[variant]}")
    ticket = None if ongoing is None else ongoing.tickets.get(variant)
    place = None if ticket is None else slots.position(ticket)
    if place is not None:
        st.info(f"`{name}` · waiting for a free core: number {place} in the queue "
                f"({slots.limit()} training processes at a time)",
                icon=":material/hourglass_top:")
    elif ticket is not None and ticket.error is not None:
        st.error(f"`{name}` could not start: {ticket.error}")
    else:
        pid = "" if ticket is None or ticket.pid is None else f" (process {ticket.pid})"
        st.info(f"`{name}` · starting{pid}; it appears once its first step is stored.")


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
    (mk.GRAPH_NODES, "Autograd graph size per step", "nodes", False, False),
    (mk.TENSOR_BYTES, "Live tensor memory", "MiB", False, True),
    (mk.LOSS, "Total loss", "", True, False),
    (mk.GRAD_DIFF, "Largest gradient error vs the clean reference", "", False, False),
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
        if key == mk.TENSOR_BYTES:
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
                                                y_max=1.05 * top or None, every=m.every),
                            width="stretch")
