"""Whether a run marked ``running`` still has a live writer, decided at read time.

A killed process cannot mark its own run; so readers report a ``running`` run as
``interrupted`` when its heartbeat is older than ``stale_after_s`` or when its writer process
is gone. The process check only applies on the host that wrote the run (recorded in
``notes``), and compares the process start time too, so a reused pid is not mistaken for the
writer. Nothing is written back: the stored status stays ``running`` until a writer resumes
or finishes the run.
"""

from __future__ import annotations

import os
import socket
import time

import psutil

STALE_AFTER_S = 15.0


def owner_notes() -> dict:
    """What identifies this process as a run's writer: host, pid and process start time."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_started": psutil.Process().create_time(),
    }


def writer_alive(pid: int | None, notes: dict) -> bool | None:
    """True/False if the writer process is known alive/dead; None when it cannot be told."""
    if pid is None or notes.get("host") != socket.gethostname():
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = notes.get("pid_started")
        if started is not None and abs(proc.create_time() - float(started)) > 1.0:
            return False  # the pid now belongs to another process
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; we may not look at it
    return True


def effective_status(
    status: str,
    heartbeat: float | None,
    pid: int | None,
    notes: dict,
    stale_after_s: float = STALE_AFTER_S,
    now: float | None = None,
) -> str:
    """The status to show: a stored ``running`` becomes ``interrupted`` if its writer is gone."""
    if status != "running":
        return status
    now = time.time() if now is None else now
    if heartbeat is None or now - heartbeat > stale_after_s:
        return "interrupted"
    if writer_alive(pid, notes) is False:
        return "interrupted"
    return "running"
