"""Training runs started from the dashboard: each is its own process
(``python -m mahiax train ...`` with this interpreter), never a thread inside Streamlit, so a
slow or crashing run cannot stall the app and the app can stop it.

At most one of them runs per core (``dashboard/slots.py``): the others wait in a queue, and
:func:`queued_runs` says where each stands. The processes started are remembered in
``dashboard_runs.json`` beside the store (name -> pid and process start time), so a reloaded
page, another browser tab or a restarted dashboard can still stop them; the start time
tells our process from a reused pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from dashboard import slots

AUTOSTART_ENV = "MAHIAX_DASHBOARD_AUTOSTART"
DEMO_NAME = "demo"
DEMO_STEPS = 300

# Locks, always taken in this order (never the reverse), so none waits on another forever:
# _lock, then slots' lock, then _registry_lock (a queued run is launched under slots' lock).
_lock = threading.RLock()  # one start/stop at a time across the app's sessions
_registry_lock = threading.Lock()  # the registry file, _children and _queued
_children: dict[int, subprocess.Popen] = {}  # processes this app started: reaped on poll
_queued: dict[tuple[str, str], slots.Ticket] = {}  # (store, name) -> ticket, while it waits


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """What the sidebar form asks for; ``bug`` set trains that catalog entry's variant."""

    name: str
    steps: int = 300
    experts: int | None = None
    top_k: int | None = None
    weighting: str | None = None
    precision: str | None = None
    bug: str | None = None
    variant: str = "buggy"

    def argv(self, store: Path) -> list[str]:
        """The command line that trains this run into ``store``."""
        args = [sys.executable, "-m", "mahiax", "train", "--run", self.name,
                "--steps", str(self.steps), "--store", str(store), "--no-progress"]
        if self.bug:
            return [*args, "--bug", self.bug, "--variant", self.variant]
        for flag, value in (("--experts", self.experts), ("--top-k", self.top_k),
                            ("--weighting", self.weighting), ("--precision", self.precision)):
            if value is not None:
                args += [flag, str(value)]
        return args


def autostart_enabled() -> bool:
    """Whether an empty store gets a demo run (``MAHIAX_DASHBOARD_AUTOSTART=0`` turns it off,
    as the tests do)."""
    return os.environ.get(AUTOSTART_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def registry_path(store: Path) -> Path:
    """``dashboard_runs.json`` beside the store file."""
    return Path(store).parent / "dashboard_runs.json"


def log_path(store: Path, name: str) -> Path:
    """Where a started run's stdout and stderr go: ``logs/<name>.log`` beside the store."""
    return Path(store).parent / "logs" / f"{name}.log"


def load_registry(store: Path) -> dict[str, dict]:
    """Runs this dashboard started for ``store``: name -> {pid, started, log, argv}."""
    try:
        data = json.loads(registry_path(store).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_registry(store: Path, registry: dict[str, dict]) -> None:
    path = registry_path(store)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(registry, indent=1))
    tmp.replace(path)


def start_run(store: Path, request: RunRequest) -> slots.Ticket:
    """Start ``request`` as a background process writing into ``store``, at once when a core
    is free, else once one is (``dashboard/slots.py``); ``ticket.pid`` is its process once
    started, :func:`queued_runs` says where a waiting one stands.

    A run of that name still alive or waiting from this dashboard is refused (ValueError)."""
    store = Path(store)
    with _lock:
        registry = load_registry(store)
        if request.name in registry and process_of(registry[request.name]) is not None:
            raise ValueError(f"run {request.name!r} is already being trained by process "
                             f"{registry[request.name]['pid']}")
        if request.name in queued_runs(store):
            raise ValueError(f"run {request.name!r} is already waiting for a free core")
        ticket = slots.submit(_slot_key(store, request.name), lambda: _launch(store, request))
        with _registry_lock:
            if ticket.waiting:
                _queued[(str(store), request.name)] = ticket
        return ticket


def _slot_key(store: Path, name: str) -> str:
    return f"run:{store}:{name}"


def _launch(store: Path, request: RunRequest) -> subprocess.Popen:
    """Start the process now and remember it in the registry (called by ``slots``)."""
    with _registry_lock:
        _queued.pop((str(store), request.name), None)
        registry = load_registry(store)
        log = log_path(store, request.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = request.argv(store)
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=slots.child_env())
        _children[proc.pid] = proc
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            started = None
        registry[request.name] = {"pid": proc.pid, "started": started, "log": str(log),
                                  "argv": argv[1:], "at": time.time()}
        _save_registry(store, registry)
        return proc


def queued_runs(store: Path) -> dict[str, int]:
    """Runs of ``store`` waiting for a free core: name -> place in the queue (1: next)."""
    with _registry_lock:
        mine = {name: t for (s, name), t in _queued.items() if s == str(Path(store))}
    places = {name: slots.position(t) for name, t in mine.items()}
    with _registry_lock:  # started (or cancelled) meanwhile: forget
        for name, place in places.items():
            if place is None and _queued.get((str(Path(store)), name)) is mine[name]:
                del _queued[(str(Path(store)), name)]
    return {name: p for name, p in places.items() if p is not None}


def process_of(entry: dict) -> psutil.Process | None:
    """The live process of a registry entry, or None once it has ended (reaping it if it is
    our child) or its pid now belongs to another process."""
    pid = entry.get("pid")
    if not isinstance(pid, int):
        return None
    child = _children.get(pid)
    if child is not None and child.poll() is not None:  # ended: reap, so it is no zombie
        _children.pop(pid, None)
        return None
    try:
        proc = psutil.Process(pid)
        if entry.get("started") is not None and abs(proc.create_time() - entry["started"]) > 1:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def active_runs(store: Path) -> dict[str, int]:
    """Runs started by this dashboard whose process is still alive: name -> pid."""
    return {name: proc.pid for name, entry in load_registry(store).items()
            if (proc := process_of(entry)) is not None}


def stop_run(store: Path, name: str, timeout_s: float = 5.0) -> bool:
    """Terminate the process training ``name`` (SIGTERM, then SIGKILL after ``timeout_s``).

    The writer gets no chance to mark the run, so readers show it ``interrupted`` as soon as
    its process is gone. Returns False when no live process of ours trains ``name``."""
    with _lock:
        entry = load_registry(Path(store)).get(name)
        proc = process_of(entry) if entry else None
        if proc is None:
            return False
        proc.terminate()
        if not _ended(proc, timeout_s):
            proc.kill()
            if not _ended(proc, timeout_s):
                raise RuntimeError(f"process {proc.pid} training {name!r} did not stop")
        child = _children.pop(proc.pid, None)
        if child is not None:
            child.wait(timeout_s)
        return True


def _ended(proc: psutil.Process, timeout_s: float) -> bool:
    """Whether ``proc`` ended within ``timeout_s``. A zombie has ended: only its parent can
    reap it, and the parent may be another dashboard process (or one that died)."""
    try:
        proc.wait(timeout_s)
        return True
    except psutil.TimeoutExpired:
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    except ChildProcessError:  # waited on a pid another process reaped meanwhile
        return True


def maybe_start_demo(store: Path, run_count: int) -> bool:
    """With autostart on and no runs in the store, start the demo run once per store.

    Returns True when it started one now. A demo started before (alive or not) is not
    started again, so a failing demo does not loop."""
    if not autostart_enabled() or run_count:
        return False
    with _lock:  # two sessions opening an empty store at once start one demo
        if DEMO_NAME in load_registry(Path(store)) or DEMO_NAME in queued_runs(store):
            return False
        start_run(Path(store), RunRequest(name=DEMO_NAME, steps=DEMO_STEPS))
        return True


def log_tail(store: Path, name: str, lines: int = 15) -> str:
    """The last lines a started run printed (its log), or '' when there is none."""
    entry = load_registry(Path(store)).get(name)
    if not entry:
        return ""
    try:
        text = Path(entry["log"]).read_text(errors="replace")
    except (OSError, KeyError):
        return ""
    return "\n".join(text.splitlines()[-lines:])
