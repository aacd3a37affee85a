"""End to end: two browser sessions ask the real dashboard for two Bug lab verdicts at once.

One of them is ``ddp-broadcast-buffers``, whose measurement forks two ranks joined in a gloo
process group. Both pages must show their measured label, and the server must have done none
of the measuring itself: while they measure, the test samples the server's process tree and
checks that every child of the server is a ``mahiax bugs verdict`` process, and that the DDP
entry's ranks were seen, as children of that process (measured inside the server, they would
be children of the server itself).

Skipped where ``/usr/bin/chromium`` or the ``playwright`` package is missing (Debian's
chromium is used; ``playwright install`` is never run).
"""

from __future__ import annotations

import time

import pytest

from tests.servers import CHROMIUM, CHROMIUM_ARGS, TreeWatch, start_dashboard, stop

pytestmark = pytest.mark.servers  # the real dashboard in Chromium: one at a time (docs/tests.md)

if not CHROMIUM.exists():
    pytest.skip(f"the Bug lab end-to-end test needs Debian's chromium at {CHROMIUM}",
                allow_module_level=True)
pytest.importorskip("playwright.sync_api",
                    reason="the Bug lab end-to-end test needs the playwright package")
pytest.importorskip("streamlit")

from playwright.sync_api import sync_playwright  # noqa: E402

EXCEPTION = '[data-testid="stException"]'
# entry -> the label tests/bugs/test_bugs.py pins for it (measured, never stored by the app)
ASKED = {"ddp-broadcast-buffers": "hides-the-error", "expert-index": "wrong-diagnosis"}
DDP_ENTRY = "ddp-broadcast-buffers"


def _is_verdict_process(cmdline: list[str], entry: str | None = None) -> bool:
    tail = cmdline[-5:]
    return tail[:3] == ["mahiax", "bugs", "verdict"] and tail[-1] == "--json" and \
        (entry is None or tail[3] == entry)


@pytest.mark.timeout(420)
def test_two_sessions_measure_two_verdicts_at_once_outside_the_server(tmp_path):
    store = tmp_path / "mahiax.sqlite"
    server, url = start_dashboard(store, tmp_path / "streamlit.log", PYTHONUNBUFFERED="1")
    try:
        watch = TreeWatch(server.pid)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=CHROMIUM_ARGS)
            try:
                pages = {}
                for entry in ASKED:  # two browser contexts: two Streamlit sessions
                    context = browser.new_context(viewport={"width": 1400, "height": 900})
                    pages[entry] = context.new_page()
                    pages[entry].goto(f"{url}/bug-lab?entry={entry}", wait_until="commit")
                verdicts = {e: pg.get_by_text(f"Verdict on the summary's fix: {label}")
                            for (e, label), pg in zip(ASKED.items(), pages.values(),
                                                      strict=True)}
                deadline = time.monotonic() + 300
                while not all(v.count() for v in verdicts.values()):
                    watch.sample()
                    for entry, pg in pages.items():
                        assert pg.locator(EXCEPTION).count() == 0, f"{entry}: exception"
                        failed = pg.get_by_text("The verdict could not be measured")
                        assert failed.count() == 0, f"{entry}: {failed.first.inner_text()}"
                    assert time.monotonic() < deadline, (
                        "verdicts not shown within 300 s: "
                        + "; ".join(f"{e}: {pg.locator('[data-testid=stMain]').inner_text()}"
                                    [:600] for e, pg in pages.items()))
                    time.sleep(0.2)
                for entry, pg in pages.items():  # each page shows its own entry's verdict
                    other = next(e for e in ASKED if e != entry)
                    assert pg.get_by_text(f"mahiax bugs verdict {entry}").count() >= 1
                    assert pg.get_by_text(f"mahiax bugs verdict {other}").count() == 0
            finally:
                browser.close()
    finally:
        stop(server)

    direct = watch.children_of(server.pid)
    assert direct, "the server started no verdict process"
    assert all(_is_verdict_process(cmd) for cmd in direct.values()), \
        f"the server started something other than verdict processes: {direct}"
    measured = {cmd[-2] for cmd in direct.values()}
    assert measured == set(ASKED), f"one process per entry asked for, got {measured}"
    ddp = [pid for pid, cmd in direct.items() if _is_verdict_process(cmd, DDP_ENTRY)]
    assert len(ddp) == 1
    ranks = watch.children_of(ddp[0])
    assert ranks, "the DDP entry's forked ranks were not seen under its verdict process " \
        "(the sampling would then prove nothing)"
