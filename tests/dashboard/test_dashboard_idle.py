"""An idle dashboard costs nothing: the real server (``streamlit run dashboard``) with viewers
simulated as Streamlit websocket clients (``benchmarks/viewers.py``: they keep the fragment
timers the server asks for, as the browser does).

A finished run's page is drawn once: its only timer is the watch (every ``WATCH_S``), which
draws no chart; when the run is resumed, the watch brings the page back to life (a refresh
timer at the chosen interval, new steps shown), and when it finishes again the refresh timer
goes. Then: the server reads a live run's new steps once for all its sessions.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.servers  # the real dashboard server: one at a time (docs/tests.md)

pytest.importorskip("streamlit")
pytest.importorskip("websockets")

from benchmarks.viewers import Viewers  # noqa: E402
from dashboard import data  # noqa: E402
from dashboard.page_watch import WATCH_S  # noqa: E402
from mahiax.config import tiny  # noqa: E402
from mahiax.store import RunReader, RunWriter  # noqa: E402
from tests.dashboard import dashboard_fixtures as fx  # noqa: E402
from tests.servers import start_dashboard, stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REFRESH_S = 2.0  # the dashboard's default refresh interval


@pytest.fixture
def served(tmp_path):
    """A store with one finished run, and the dashboard serving it; yields (store, url)."""
    store = tmp_path / "mahiax.sqlite"
    writer = RunWriter("done", tiny().to_dict(), path=store, device="cpu")
    fx._log_steps(writer, range(5))
    writer.finish("finished")
    writer.close()
    server, url = start_dashboard(store, tmp_path / "streamlit.log")
    try:
        yield store, url
    finally:
        stop(server)


def _until(condition, timeout_s: float, what: str) -> None:
    """Wait for ``condition()`` (a hang guard, not a speed check)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.2)


def _shows(viewer, text: str) -> bool:
    return any(text in t for t in viewer.texts)


@pytest.mark.timeout(180)
def test_a_finished_run_is_drawn_once_and_comes_back_when_resumed(served):
    store, url = served
    with Viewers(url, "training", 1) as viewers:
        viewers.wait_ready(60)
        viewer = viewers.stats[0]
        _until(lambda: _shows(viewer, "last step 4"), 30, "the finished run drawn")
        time.sleep(1.0)
        assert set(viewer.timers.values()) == {WATCH_S}, \
            f"a finished run's page keeps only its watch, got timers {viewer.timers}"
        charts, runs = viewer.charts, viewer.runs_finished
        assert charts >= 1, "the page drew its charts once"
        time.sleep(2 * WATCH_S + 1)
        assert viewer.runs_finished > runs, "the watch ran"
        assert viewer.charts == charts, "the watch redrew charts of a run that did not change"
        assert not viewer.exceptions and not viewer.not_found

        # resumed: the watch sees it running, the page refreshes again and shows new steps
        writer = RunWriter("done", tiny().to_dict(), path=store, device="cpu", resume=True)
        try:
            fx._log_steps(writer, range(5, 10))
            writer.flush()
            _until(lambda: REFRESH_S in viewer.timers.values(), WATCH_S + 15,
                   "the resumed run's page refreshing on a timer")
            _until(lambda: _shows(viewer, "last step 9"), 15, "the new steps shown")
            fx._log_steps(writer, range(10, 12))
            writer.flush()
            _until(lambda: _shows(viewer, "last step 11"), 15, "steps shown as they come")
            writer.finish("finished")
        finally:
            writer.close()
        # finished again: the refresh timer goes, the watch stays
        _until(lambda: set(viewer.timers.values()) == {WATCH_S}, 15,
               f"only the watch left once the run finished, timers {viewer.timers}")
        assert not viewer.exceptions and not viewer.not_found


@pytest.mark.timeout(120)
def test_many_viewers_of_a_finished_run_draw_it_once_each(served):
    """Ten sessions: each draws the page once; afterwards only their watches run."""
    _, url = served
    with Viewers(url, "experts", 10) as viewers:
        viewers.wait_ready(90)
        time.sleep(1.0)
        drawn = [s.charts for s in viewers.stats]
        time.sleep(WATCH_S + 1)
        assert [s.charts for s in viewers.stats] == drawn, "a viewer's page was redrawn"
        assert all(set(s.timers.values()) == {WATCH_S} for s in viewers.stats)
        assert all(s.runs_finished >= 2 for s in viewers.stats), "every watch ran"


def test_sessions_share_one_read_of_a_live_run(monkeypatch, tmp_path):
    """Two sessions of a live run: the store is read once per new commit, not per session."""
    from streamlit.testing.v1 import AppTest

    from dashboard.state import PAGE_KEY

    path, writer = fx.running_writer(tmp_path)
    reads: list[int | None] = []
    real = RunReader.scalars

    def counting(self, name, keys=None, since_step=None):
        reads.append(since_step)
        return real(self, name, keys, since_step)

    monkeypatch.setattr(RunReader, "scalars", counting)
    monkeypatch.setenv("MAHIAX_STORE", str(path))
    monkeypatch.setenv("MAHIAX_DASHBOARD_AUTOSTART", "0")
    app = str(ROOT / "dashboard" / "streamlit_app.py")
    try:
        sessions = []
        for _ in range(2):
            at = AppTest.from_file(app, default_timeout=60)
            at.session_state[PAGE_KEY] = "training"
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            sessions.append(at)
        assert reads == [None], "the second session drew from the first one's read"
        fx._log_steps(writer, range(5, 9))
        writer.flush()
        time.sleep(data.READ_GAP_S)
        for at in sessions:
            at.run()
            assert not at.exception
            assert "last step 8" in "\n".join(str(e.value) for e in at.success)
        assert reads == [None, 4], "one read of the new steps (after step 4) for both"
    finally:
        writer.close()


@pytest.mark.timeout(240)
def test_the_bug_lab_stops_polling_once_its_verdict_is_measured(served):
    """While the verdict is measured the page polls it; once shown, only the watch is left
    (no variant trains, so the comparison is not redrawn either)."""
    _, url = served
    with Viewers(url, "bug-lab", 1) as viewers:
        viewers.wait_ready(60)
        viewer = viewers.stats[0]
        _until(lambda: _shows(viewer, "Verdict on the summary's fix"), 180,
               "the verdict measured and shown")
        _until(lambda: set(viewer.timers.values()) == {WATCH_S}, 15,
               f"only the watch left, timers {viewer.timers}")
        charts = viewer.charts
        time.sleep(WATCH_S + 1)
        assert viewer.charts == charts
        assert not viewer.exceptions and not viewer.not_found


@pytest.mark.timeout(180)
def test_my_attempts_page_is_drawn_once_and_shows_a_new_check(tmp_path):
    """The My attempts page reads the attempts once, then keeps only its watch (one small
    query a second for every session: ``data.attempts_version``); a check recorded
    meanwhile brings the page back, drawn once more."""
    from mahiax.store.attempts import Attempt, record_attempt

    store = tmp_path / "mahiax.sqlite"
    server, url = start_dashboard(store, tmp_path / "streamlit.log", JUPYTERHUB_USER="ada")
    caption = "The exercise checks of **ada**"
    try:
        with Viewers(url, "my-attempts", 1) as viewers:
            viewers.wait_ready(60)
            viewer = viewers.stats[0]
            _until(lambda: _shows(viewer, "No attempts recorded yet"), 30, "the page drawn")
            time.sleep(1.0)
            assert set(viewer.timers.values()) == {WATCH_S}, \
                f"an idle My attempts page keeps only its watch, got timers {viewer.timers}"
            drawn = sum(caption in t for t in viewer.texts)
            time.sleep(WATCH_S + 1)
            assert sum(caption in t for t in viewer.texts) == drawn, "redrawn while idle"
            record_attempt(Attempt(learner="ada", lesson="04_retain_graph_and_encode",
                                   exercise="retain-graph", passed=False,
                                   reasons=("retain_graph=True",), message="m",
                                   at=time.time()), store)
            _until(lambda: sum(caption in t for t in viewer.texts) > drawn, WATCH_S + 15,
                   "the page drawn again once a check was recorded")
            time.sleep(1.0)
            assert set(viewer.timers.values()) == {WATCH_S}
            assert not viewer.exceptions and not viewer.not_found
    finally:
        stop(server)

