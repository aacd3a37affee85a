"""An isolated Jupyter environment for the notebook tests: the venv's kernel, temp dirs only.

A fresh clone where only ``make test`` ran has no kernelspec registered anywhere, and a
developer's machine may have a ``python3`` kernelspec in ``~/.local`` that points at another
interpreter. The tests therefore write their own ``python3`` kernelspec, running *this*
interpreter (the ``.venv``'s), into a temp dir that ``JUPYTER_PATH`` puts first, and point
every directory Jupyter writes to (runtime, data, config, settings, workspaces, IPython) at
temp dirs: nothing is written to ``~`` or to the repository.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_core.utils import run_sync
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LESSONS = (
    "00_tour", "01_expert_router_index", "02_inplace_accumulation", "03a_memories",
    "03b_controller_and_dwa", "04_retain_graph_and_encode", "05_memory_meter",
    "06_finding_the_mutation", "07_train_and_watch", "08_amp_and_clipping", "09_ddp_pitfalls",
    "10_your_own_loop", "11_router_collapse",
)
KERNEL_NAME = "python3"  # what every notebook's metadata names; resolved to this interpreter

# The one form a lesson states its expected verdict in, in a markdown cell:
#   **Expected verdict** on the summary's fix for `tiny-memory-write`: **same-error**
STATED_VERDICT = re.compile(
    r"\*\*Expected verdict\*\* on the summary's fix for `([a-z0-9-]+)`: \*\*([a-z-]+)\*\*"
)


# What the kernelspec runs: what ``python -m ipykernel_launcher`` runs (the working directory
# off the path while ipykernel loads), and where ``KERNEL_STACKS`` names a file, Python's
# faulthandler writing every thread's stack there on SIGUSR1, so a test that sees a kernel
# stall can ask it where it waits (``tests/lessons/test_notebooks.py``).
KERNEL_STACKS = "MAHIAX_KERNEL_STACKS"
KERNEL_MAIN = (
    "import faulthandler, os, signal, sys\n"
    "if sys.path[0] == '':\n"
    "    del sys.path[0]\n"
    f"if os.environ.get({KERNEL_STACKS!r}):\n"
    f"    _stacks = open(os.environ[{KERNEL_STACKS!r}], 'a')\n"
    "    faulthandler.register(signal.SIGUSR1, file=_stacks, all_threads=True)\n"
    "from ipykernel import kernelapp\n"
    "kernelapp.launch_new_instance()\n"
)


# How long one wait on a kernel channel may last before it looks again (see LessonClient).
POLL_SLICE_S = 1.0


def slice_polls(kc: Any) -> None:
    """Make every wait of kernel client ``kc`` on its channels a series of waits of at most
    :data:`POLL_SLICE_S` seconds.

    nbclient waits for a cell's reply with one poll of the shell socket that lasts the whole
    cell timeout (300 s here). pyzmq's asyncio poll watches the socket's edge-triggered file
    descriptor and can miss the edge of a message that arrives at the wrong moment; the poll
    then sleeps until its timeout and only then finds the message waiting
    (https://github.com/zeromq/pyzmq/issues/1558: "the poller will return a received event
    after the timeout"). A lesson run caught it with stacks: the kernel idle, its reply sent,
    the test asleep in that poll for exactly 300 s, then passing. Short polls find such a
    message at the end of the slice: a missed edge costs at most a second.
    """
    for channel in (kc.shell_channel, kc.iopub_channel, kc.stdin_channel,
                    kc.control_channel):
        channel.get_msg = _sliced(channel.get_msg)


def _sliced(get_msg: Callable[..., Awaitable[dict]]) -> Callable[..., Awaitable[dict]]:
    async def sliced(timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE_S if deadline is None else \
                max(0.0, min(POLL_SLICE_S, deadline - time.monotonic()))
            try:
                return await get_msg(timeout=left)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
    return sliced


class LessonClient(NotebookClient):
    """nbclient's notebook runner with :func:`slice_polls` on its kernel client: how the
    tests and ``make bench`` run a lesson."""

    async def async_start_new_kernel_client(self) -> Any:
        kc = await super().async_start_new_kernel_client()
        slice_polls(kc)
        return kc

    start_new_kernel_client = run_sync(async_start_new_kernel_client)


def notebook_path(name: str) -> Path:
    return NOTEBOOKS / f"{name}.ipynb"


def first_line(source: str) -> str:
    """A cell's first line of code (comments and blank lines skipped), cut to 60 characters:
    how timing reports name a cell."""
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.startswith("#")]
    return (lines[0] if lines else source.splitlines()[0] if source else "")[:60]


def stated_verdicts(nb: dict) -> dict[str, str]:
    """``{entry id: label}`` from the lesson's markdown (a repeated id must agree)."""
    found: dict[str, str] = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for entry, label in STATED_VERDICT.findall(text):
            assert found.setdefault(entry, label) == label, f"{entry}: stated twice, differently"
    return found


def jupyter_env(tmp: Path, threads: int = 1) -> dict[str, str]:
    """Environment variables for an isolated Jupyter under ``tmp`` (created here).

    ``threads``: intra-op threads of the kernel. The lessons' tensors are tiny, and on a
    shared 2-core machine one thread runs them ~5x faster than two fighting over the cores.
    """
    dirs = {
        "JUPYTER_PATH": tmp / "share",
        "JUPYTER_DATA_DIR": tmp / "data",
        "JUPYTER_CONFIG_DIR": tmp / "config",
        "JUPYTER_RUNTIME_DIR": tmp / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": tmp / "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": tmp / "lab-workspaces",
        "IPYTHONDIR": tmp / "ipython",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    spec = dirs["JUPYTER_PATH"] / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", KERNEL_MAIN, "-f", "{connection_file}"],
        "display_name": "Python 3 (MAHIA-X lab venv)",
        "language": "python",
    }))
    env = {k: str(v) for k, v in dirs.items()}
    env.update(
        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
        MAHIAX_STORE=str(tmp / "store" / "mahiax.sqlite"),  # never runs/ in the repository
        MAHIAX_DASHBOARD_AUTOSTART="0", PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    return env


@contextlib.contextmanager
def environ_set(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``env`` inside the block (a kernel manager looks the
    kernelspec up through it), restored afterwards, whatever happens inside."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
