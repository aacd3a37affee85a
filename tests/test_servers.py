"""The helpers the end-to-end tests rely on (``tests/servers.py``), on their own: a helper that
misreads what it watches would make a browser test fail by chance or pass without proof."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from tests.servers import TreeWatch

# A parent that forks a child; the child waits on a pipe before it replaces itself with
# `sleep`, holding open the window between fork and exec that a sample can land in.
_FORK_THEN_EXEC = """
import os, sys
r = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.read(r, 1)
    os.execv("/bin/sleep", ["sleep", "30"])
os.waitpid(pid, 0)
"""


def _wait(condition, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s  # a hang guard, not a speed check
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_tree_watch_keeps_the_program_a_child_runs_not_the_parents_copy_it_started_as():
    r, w = os.pipe()
    parent = subprocess.Popen([sys.executable, "-c", _FORK_THEN_EXEC, str(r)], pass_fds=(r,))
    os.close(r)
    try:
        watch = TreeWatch(parent.pid)

        def sampled_child() -> bool:
            watch.sample()
            return bool(watch.children_of(parent.pid))

        _wait(sampled_child, "the forked child seen")
        (child, cmd), = watch.children_of(parent.pid).items()
        assert cmd[:2] == [sys.executable, "-c"]  # the sample landed between fork and exec
        os.write(w, b"x")  # now the child runs `sleep`

        def sampled_exec() -> bool:
            watch.sample()
            return watch.children_of(parent.pid)[child][0] == "sleep"

        _wait(sampled_exec, "the child's exec seen")
        assert watch.children_of(parent.pid) == {child: ["sleep", "30"]}
    finally:
        os.close(w)
        for proc in psutil.Process(parent.pid).children(recursive=True):
            proc.kill()
        parent.kill()
        parent.wait(timeout=10)
