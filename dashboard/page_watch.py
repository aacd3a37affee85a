"""The watch of a page that is not live: it draws nothing and costs one small fragment run
every WATCH_S seconds, and redraws the whole page once what the page was drawn from changed
(a finished run resumed, a run started or deleted, new Bug lab runs of the entry)."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

WATCH_S = 3.0  # how often a page that is not live checks whether it should be (s)


def watch(signature: Callable[[], object], drawn: object) -> None:
    """A fragment that draws nothing and, every WATCH_S seconds, reruns the whole page once
    ``signature()`` differs from ``drawn``, what the page was drawn from. ``signature`` must
    read only data shared by the server's sessions (``data.list_runs`` is one query a
    second for all of them), so an idle page costs one small fragment run every WATCH_S."""

    @st.fragment(run_every=WATCH_S)
    def check() -> None:
        try:
            now = signature()
        except Exception:  # the page itself shows store faults; a watch keeps quiet
            return
        if now != drawn:
            st.rerun()

    check()
