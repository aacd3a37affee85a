"""The session-state keys the sidebar (``streamlit_app``), the navigation and the pages
share: one definition, in a module that imports nothing of the dashboard, so that no two
dashboard modules need to import each other."""

from __future__ import annotations

STORE_KEY = "dashboard_store"  # path of the run store this session reads
RUN_KEY = "run"  # the run picked in the sidebar
COMPARE_KEY = "compare_runs"  # the runs drawn over it, in the order picked (a list of names)
PAGE_KEY = "dashboard_page"  # which page opens first (tests set it to render each page)
LIVE_KEY = "live_refresh"  # whether pages re-read the store every INTERVAL_KEY seconds
INTERVAL_KEY = "refresh_s"
POINTS_KEY = "max_points"  # points per chart before min/max downsampling
