"""Simulated dashboard viewers: Streamlit websocket clients that do what a browser tab does
to the server, without a browser.

A viewer opens ``/_stcore/stream``, asks for a page by its address (as a browser does on
load), reads every message the server sends (and unpacks it), and keeps the fragment timers
the server asks for: on an ``auto_rerun`` message it sends a fragment rerun every
``interval`` seconds, on ``stop_auto_rerun`` and at each full script run it drops them, as
Streamlit's frontend does (``handleAutoRerun``, ``cleanupAutoReruns``). What it does not do is
draw: a browser's layout and Plotly rendering cost the viewer's machine, not the server.
Differences from a browser, all on the costly side for the server: it reports no cached
messages (the server sends every message whole) and sends no widget values (the server
keeps them). Many viewers run in one process, on one asyncio loop: its CPU is measured
apart from the server's.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field

LAST_STEP = re.compile(rb"last step (\d+)")


@dataclass(kw_only=True)
class ViewerStats:
    """What one viewer saw."""

    runs_finished: int = 0  # script or fragment runs the server finished for it
    messages: int = 0
    bytes: int = 0
    reruns_sent: int = 0
    not_found: int = 0  # "page not found" messages
    exceptions: int = 0  # Streamlit exception elements received
    charts: int = 0  # Plotly charts received (each one drawn by the server for this viewer)
    timers: dict[str, float] = field(default_factory=dict)  # fragment id -> interval (s), now
    texts: list[str] = field(default_factory=list)  # the last 50 markdown/alert texts received
    steps_seen: list[tuple[float, int]] = field(default_factory=list)  # (time, last step N)


async def _viewer(url: str, page: str, stats: ViewerStats, stop: asyncio.Event) -> None:
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    timers: dict[str, tuple[float, asyncio.Task]] = {}
    page_hash = ""

    async with websockets.connect(f"{url}/_stcore/stream", subprotocols=["streamlit"],
                                  max_size=None, ping_interval=None) as ws:
        async def rerun(fragment_id: str = "") -> None:
            msg = BackMsg()
            state = msg.rerun_script
            state.page_script_hash = page_hash
            state.page_name = "" if page_hash else page
            if fragment_id:
                state.fragment_id = fragment_id
                state.is_auto_rerun = True
            stats.reruns_sent += 1
            await ws.send(msg.SerializeToString())

        async def tick(fragment_id: str, interval: float) -> None:
            while True:
                await asyncio.sleep(interval)
                await rerun(fragment_id)

        def drop(fragment_id: str) -> None:
            stats.timers.pop(fragment_id, None)
            held = timers.pop(fragment_id, None)
            if held is not None:
                held[1].cancel()

        await rerun()
        receiving = asyncio.ensure_future(ws.recv())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({receiving, stopping},
                                             return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    return
                raw = receiving.result()
                receiving = asyncio.ensure_future(ws.recv())
                stats.messages += 1
                stats.bytes += len(raw)
                msg = ForwardMsg()
                msg.ParseFromString(raw)
                kind = msg.WhichOneof("type")
                if kind == "new_session":
                    page_hash = msg.new_session.page_script_hash or page_hash
                    if not msg.metadata.run.fragment_ids:  # a full run: timers start over
                        for fid in list(timers):
                            drop(fid)
                elif kind == "navigation":
                    page_hash = msg.navigation.page_script_hash or page_hash
                elif kind == "auto_rerun":
                    fid, every = msg.auto_rerun.fragment_id, msg.auto_rerun.interval
                    if fid in timers and timers[fid][0] == every:
                        continue
                    drop(fid)
                    timers[fid] = (every, asyncio.ensure_future(tick(fid, every)))
                    stats.timers[fid] = every
                elif kind == "stop_auto_rerun":
                    for fid in msg.stop_auto_rerun.fragment_ids:
                        drop(fid)
                elif kind == "script_finished":
                    stats.runs_finished += 1
                elif kind == "page_not_found":
                    stats.not_found += 1
                elif kind == "delta":
                    element = msg.delta.new_element
                    what = element.WhichOneof("type")
                    if what == "exception":
                        stats.exceptions += 1
                    elif what == "plotly_chart":
                        stats.charts += 1
                    elif what in ("markdown", "alert"):
                        stats.texts = [*stats.texts[-49:], getattr(element, what).body]
                    m = LAST_STEP.search(raw)
                    if m:
                        stats.steps_seen.append((time.time(), int(m.group(1))))
        finally:
            for fid in list(timers):
                drop(fid)
            for task in (receiving, stopping):
                task.cancel()


class Viewers:
    """``count`` simulated viewers of ``page`` at ``url``, run on a thread's asyncio loop.

    ``start()`` connects them (one every ``spread_s`` seconds, as a class opens a link over a
    few seconds), ``ready()`` says whether each has had its first page, ``close()`` ends them.
    """

    def __init__(self, url: str, page: str, count: int, spread_s: float = 0.1):
        self.url = url.replace("http://", "ws://")
        self.page, self.count, self.spread_s = page, count, spread_s
        self.stats = [ViewerStats() for _ in range(count)]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Future] = []
        self.errors: list[BaseException] = []

    def start(self) -> Viewers:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=60)
        return self

    async def _start(self) -> None:
        self._stop = asyncio.Event()
        for stats in self.stats:
            task = asyncio.ensure_future(_viewer(self.url, self.page, stats, self._stop))
            task.add_done_callback(self._done)
            self._tasks.append(task)
            await asyncio.sleep(self.spread_s)

    def _done(self, task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(task.exception())

    def ready(self) -> bool:
        """Every viewer has had its first page drawn (or failed: see ``errors``)."""
        return all(s.runs_finished > 0 for s in self.stats) or bool(self.errors)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                drawn = sum(s.runs_finished > 0 for s in self.stats)
                raise RuntimeError(f"only {drawn} of {self.count} viewers had their page "
                                   f"within {timeout_s:.0f} s")
            time.sleep(0.2)
        if self.errors:
            raise RuntimeError(f"a viewer failed: {self.errors[0]!r}")

    def close(self) -> None:
        async def _close() -> None:
            if self._stop is not None:
                self._stop.set()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=10)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> Viewers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
