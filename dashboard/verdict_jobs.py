"""Verdicts measured in processes of their own: ``python -m mahiax bugs verdict ID --json``.

Measuring a verdict trains the three variants of a catalog entry: the harness reseeds the
global RNG and installs global module hooks, and the DDP entries start a process group and
fork ranks. None of that may happen inside the Streamlit server, whose sessions share one
process: two of them measuring at once would collide, and a forked rank would copy the
server. So the server only starts the command, polls it, and reads its JSON when it ends.

One job per entry, shared by every session of the server: a second session asking for an
entry being measured waits for the same process, and a measured verdict is kept for the
server's life (the code it measures does not change while it runs). A failed measurement is
kept too, with the end of what the process wrote, until :func:`forget` is called.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # `python -m mahiax` runs from here
TAIL_CHARS = 2000  # characters of a failed process's output kept for the page

_lock = threading.Lock()  # one start at a time across the server's sessions
_jobs: dict[str, VerdictJob] = {}  # entry id -> its job (running, measured or failed)
_workdir: Path | None = None  # where the jobs' output goes, made on first use


@dataclass
class VerdictJob:
    """One measurement of an entry's verdict, in process ``pid``."""

    entry_id: str
    pid: int
    started: float  # time.monotonic() at start
    out: Path  # the process's stdout: the verdict as JSON (removed once read)
    err: Path  # its stderr (removed once read)
    proc: subprocess.Popen | None = None  # None once reaped
    label: str | None = None  # set when measured
    reason: str | None = None
    error: str | None = None  # set when the measurement failed

    @property
    def running(self) -> bool:
        return self.label is None and self.error is None

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


def argv(entry_id: str) -> list[str]:
    """The command that measures ``entry_id``'s verdict, with this server's interpreter."""
    return [sys.executable, "-m", "mahiax", "bugs", "verdict", entry_id, "--json"]


def request(entry_id: str) -> VerdictJob:
    """The job of ``entry_id``: started now if no session started one, then polled."""
    with _lock:
        job = _jobs.get(entry_id)
        if job is None:
            job = _jobs[entry_id] = _start(entry_id)
        _poll(job)
        return job


def forget(entry_id: str) -> None:
    """Drop a finished job (measured or failed), so the next request measures again; a job
    still running is kept (its process is not started twice)."""
    with _lock:
        job = _jobs.get(entry_id)
        if job is not None and not job.running:
            del _jobs[entry_id]


def _start(entry_id: str) -> VerdictJob:
    global _workdir
    if _workdir is None:
        _workdir = Path(tempfile.mkdtemp(prefix="mahiax-verdicts-"))
    stem = _workdir / f"{entry_id}-{time.time_ns()}"
    out, err = stem.with_suffix(".json"), stem.with_suffix(".log")
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(argv(entry_id), cwd=ROOT, stdout=o, stderr=e,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return VerdictJob(entry_id, proc.pid, time.monotonic(), out, err, proc)


def _poll(job: VerdictJob) -> None:
    """Reap ``job``'s process if it ended, and read its verdict or its error."""
    if job.proc is None or job.proc.poll() is None:
        return
    code, job.proc = job.proc.returncode, None
    try:
        if code != 0:
            job.error = f"the measuring process exited with status {code}: {_tail(job.err)}"
            return
        try:
            result = json.loads(job.out.read_text())
            job.label, job.reason = str(result["verdict"]), str(result["reason"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            job.error = f"the measuring process wrote no verdict ({type(e).__name__}: " \
                        f"{e}); its output: {_tail(job.err)}"
    finally:  # what the page needs is in the job now
        job.out.unlink(missing_ok=True)
        job.err.unlink(missing_ok=True)


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(none)"
    return (text[-TAIL_CHARS:] if text else "(none)")
