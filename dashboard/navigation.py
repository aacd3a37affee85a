"""The dashboard's pages and their addresses (:data:`PAGES` and the pages after them), and
:func:`navigate`, which declares them to Streamlit and picks the one to run. The only
module that imports every page."""

from __future__ import annotations

import os
from collections.abc import Callable

import streamlit as st

from dashboard import (
    bug_lab,
    class_page,
    expert_load_page,
    loss_weights_page,
    memory_nodes_page,
    memory_page,
    my_attempts,
    training_page,
)
from dashboard.state import PAGE_KEY
from mahiax.classroom.class_view import CLASS_URL_ENV

# url path -> (the page, its title, its icon): the run pages, in menu order
PAGES: dict[str, tuple[Callable[[], None], str, str]] = {
    "training": (training_page.training, "Training", ":material/show_chart:"),
    "experts": (expert_load_page.experts, "Expert load balance", ":material/balance:"),
    "memory-nodes": (memory_nodes_page.memory_nodes, "Memory-node evolution", ":material/hub:"),
    "loss-weights": (loss_weights_page.loss_weights, "Loss weights", ":material/tune:"),
    "memory": (memory_page.memory, "Memory", ":material/memory:"),
}


BUG_LAB = "bug-lab"  # url path of the Bug lab page (dashboard/bug_lab.py), after PAGES
MY_ATTEMPTS = "my-attempts"  # url path of the learner's attempts (dashboard/my_attempts.py)
CLASS = "class"  # url path of the instructor's class page (dashboard/class_page.py)
ROOT_PAGE = "start"  # the hidden page at the root, which opens the first page


def navigate() -> st.Page:
    """Declare the pages (``st.navigation``) and return the one to run. Every listed page has
    its own address, ``/training`` included: Streamlit serves its default page at the root
    only, so the root is a hidden page, and opening it switches at once, before anything is
    drawn, to the first page: ``st.session_state[PAGE_KEY]``, Training unless set (tests
    set it to open each page). The menu lists the run pages (PAGES), then the Bug lab, which
    compares catalog runs rather than showing the picked run, then My attempts, the
    learner's own exercise checks, then the instructor's Class page: listed only on a hub
    (``MAHIAX_CLASS_URL`` set), at its address everywhere."""
    first = st.session_state.get(PAGE_KEY, "training")
    on_hub = bool(os.environ.get(CLASS_URL_ENV, "").strip())
    listed = [*((key, func, title, icon, True) for key, (func, title, icon) in PAGES.items()),
              (BUG_LAB, bug_lab.bug_lab, "Bug lab", ":material/bug_report:", True),
              (MY_ATTEMPTS, my_attempts.my_attempts, "My attempts", ":material/checklist:",
               True),
              (CLASS, class_page.class_page, "Class", ":material/groups:", on_hub)]
    shown = [st.Page(func, title=title, icon=icon, url_path=key,
                     visibility="visible" if visible else "hidden")
             for key, func, title, icon, visible in listed]
    target = next(p for p in shown if p.url_path == first)
    root = st.Page(lambda: st.switch_page(target), title="MAHIA-X Lab", url_path=ROOT_PAGE,
                   default=True, visibility="hidden")
    page = st.navigation([root, *shown])
    if page is root:
        st.switch_page(target, query_params=st.query_params.to_dict())
    return page
