"""Verdicts measured in processes of their own: ``python -m mahiax bugs verdict ID --json``.

Measuring a verdict trains the three variants of a catalog entry: the harness reseeds the
global RNG and installs global module hooks, and the DDP entries start a process group and
fork ranks. None of that may happen inside the Streamlit server, whose sessions share one
process: two of them measuring at once would collide, and a forked rank would copy the
server. So the server only starts the command, polls it, and reads its JSON when it ends.

A measurement takes one of the server's slots (``dashboard/slots.py``: at most one training
process per core), waiting in the queue while every core is taken. One job per entry, shared
by every session of the server: a second session asking for an
entry being measured waits for the same process, and a measured verdict is kept for the
server's life (the code it measures does not change while it runs). A failed measurement is
kept too, with the end of what the process wrote, until :func:`forget` is called. A verdict
keeps when it was measured and on which torch, for the page to say.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dashboard import slots

ROOT = Path(__file__).resolve().parent.parent  # `python -m mahiax` runs from here
TAIL_CHARS = 2000  # characters of a failed process's output kept for the page

_lock = threading.Lock()  # one start at a time across the server's sessions
_jobs: dict[str, VerdictJob] = {}  # entry id -> its job (running, measured or failed)
_workdir: Path | None = None  # where the jobs' output goes, made on first use


@dataclass(kw_only=True)
class VerdictJob:
    """One measurement of an entry's verdict: waiting for a free core (``slots``), then
    measured in process ``pid``."""

    entry_id: str
    ticket: slots.Ticket  # its place in the queue, then its process
    out: Path  # the process's stdout: the verdict as JSON (removed once read)
    err: Path  # its stderr (removed once read)
    label: str | None = None  # set when measured
    reason: str | None = None
    error: str | None = None  # set when the measurement failed
    measured_at: float | None = None  # time.time() when the verdict was read
    torch_version: str | None = None  # the torch that measured it
    # variant -> its outcome's entry-specific figures (Outcome.figures), as measured
    figures: dict[str, dict] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        """Waiting or measuring: neither measured nor failed yet."""
        return self.label is None and self.error is None

    @property
    def pid(self) -> int | None:
        return self.ticket.pid

    @property
    def place(self) -> int | None:
        """Its place in the queue for a core (1: next); None once it started."""
        return slots.position(self.ticket)

    def elapsed_s(self) -> float:
        """Seconds since it started measuring (0 while it waits)."""
        started = self.ticket.started_at
        return 0.0 if started is None else time.monotonic() - started


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

    def launch() -> subprocess.Popen:
        with open(out, "wb") as o, open(err, "wb") as e:
            return subprocess.Popen(argv(entry_id), cwd=ROOT, stdout=o, stderr=e,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=slots.child_env())

    return VerdictJob(entry_id=entry_id, ticket=slots.submit(f"verdict:{entry_id}", launch),
                      out=out, err=err)


def _poll(job: VerdictJob) -> None:
    """Read ``job``'s verdict or its error once its process has ended."""
    ticket = job.ticket
    if not job.running or ticket.waiting:
        return
    if ticket.error is not None:
        job.error = f"the measuring process could not start: {ticket.error}"
        return
    if ticket.running:
        return
    code = ticket.proc.returncode
    try:
        if code != 0:
            job.error = f"the measuring process exited with status {code}: {_tail(job.err)}"
            return
        try:
            result = json.loads(job.out.read_text())
            job.label, job.reason = str(result["verdict"]), str(result["reason"])
            job.torch_version = str(result.get("torch") or _torch_version())
            job.figures = {str(v): dict(o.get("figures") or {})
                           for v, o in (result.get("outcomes") or {}).items()}
            job.measured_at = time.time()
        except (OSError, ValueError, KeyError, TypeError) as e:
            job.error = f"the measuring process wrote no verdict ({type(e).__name__}: " \
                        f"{e}); its output: {_tail(job.err)}"
    finally:  # what the page needs is in the job now
        job.out.unlink(missing_ok=True)
        job.err.unlink(missing_ok=True)


def _torch_version() -> str:
    """The torch the measuring process imported: the one installed beside this server's
    interpreter (the process runs ``sys.executable``), read without importing torch here."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "unknown"


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(none)"
    return (text[-TAIL_CHARS:] if text else "(none)")
