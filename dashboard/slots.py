"""At most one training process per core: every process the dashboard starts (a run from the
sidebar, a Bug lab variant, a verdict measurement) takes a slot, and one waits, first come
first served, while every slot is taken.

Thirty learners pressing "Run the three variants" on a two-core machine would otherwise start
ninety processes that share two cores: each would take forty-five times as long, and the
first results would come last. A queue finishes the first requests first, and the page can
say where a request stands.

The slots are this server's: one per core this process may run on (its CPU affinity, which a
container or ``taskset`` may narrow, else ``os.cpu_count()``). Processes started elsewhere
(another dashboard, the command line) are not counted. A process that forks (a DDP verdict's
ranks) holds one slot. The queue moves when a session polls it (:func:`pump`) and, while
anything waits, from a daemon thread of its own, so it moves with no page open too.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PUMP_EVERY_S = 0.25  # how often the daemon thread looks for a free slot while work waits


def cores() -> int:
    """The cores this process may run on: its CPU affinity, else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(kw_only=True)
class Ticket:
    """One process to run: waiting (``proc`` None), then running, then ended."""

    key: str  # what it is, e.g. "run:<store>:<name>" or "verdict:<entry id>"
    launch: Callable[[], subprocess.Popen]  # starts the process (called once, under the lock)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    proc: subprocess.Popen | None = None
    error: str | None = None  # the launch failed (the ticket has ended)

    @property
    def waiting(self) -> bool:
        return self.proc is None and self.error is None

    @property
    def running(self) -> bool:
        """Started and not yet ended (``poll`` reaps an ended child, so no zombie stays)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


_lock = threading.Lock()
_waiting: list[Ticket] = []  # in arrival order
_running: list[Ticket] = []
_pumping = False  # whether the daemon thread is alive
_limit: Callable[[], int] = cores  # the number of slots (tests narrow it)


def child_env() -> dict[str, str]:
    """The environment of a process started in a slot: this server's, with one intra-op
    thread. A slot is one core; left to its default, torch would start one thread per core
    in every process, and N processes on N cores would fight over N * N threads."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def limit() -> int:
    """How many processes run at once: one per core (:func:`cores`)."""
    return _limit()


def submit(key: str, launch: Callable[[], subprocess.Popen]) -> Ticket:
    """Queue ``launch``; it runs at once when a slot is free. An OSError of the launch is
    raised here when it runs at once, and kept in ``ticket.error`` when it ran later."""
    ticket = Ticket(key=key, launch=launch)
    with _lock:
        _waiting.append(ticket)
        _fill()
    if ticket.error is not None and ticket.started_at is None:
        raise OSError(ticket.error)
    _ensure_pump()
    return ticket


def position(ticket: Ticket) -> int | None:
    """1 for the next to start, 2 after it ...; None once started (or failed)."""
    with _lock:
        _fill()
        try:
            return _waiting.index(ticket) + 1
        except ValueError:
            return None


def waiting() -> int:
    """How many processes wait for a slot."""
    with _lock:
        return len(_waiting)


def running() -> list[Ticket]:
    """The tickets whose process runs now."""
    with _lock:
        _fill()
        return list(_running)


def cancel(ticket: Ticket) -> bool:
    """Take a waiting ticket out of the queue; False once it started."""
    with _lock:
        if ticket in _waiting:
            _waiting.remove(ticket)
            ticket.error = "cancelled before it started"
            return True
        return False


def pump() -> None:
    """Forget ended processes and start waiting ones while a slot is free."""
    with _lock:
        _fill()


def _fill() -> None:
    """(under the lock) Reap, then launch the oldest waiting tickets into free slots."""
    _running[:] = [t for t in _running if t.running]
    while _waiting and len(_running) < _limit():
        ticket = _waiting.pop(0)
        try:
            ticket.proc = ticket.launch()
        except OSError as e:
            ticket.error = f"{type(e).__name__}: {e}"
            continue
        ticket.started_at = time.monotonic()
        _running.append(ticket)


def _ensure_pump() -> None:
    """Start the daemon thread that moves the queue while anything waits."""
    global _pumping
    with _lock:
        if _pumping or not _waiting:
            return
        _pumping = True
    threading.Thread(target=_pump_loop, name="mahiax-slots", daemon=True).start()


def _pump_loop() -> None:
    global _pumping
    while True:
        time.sleep(PUMP_EVERY_S)
        with _lock:
            _fill()
            if not _waiting:
                _pumping = False
                return
