"""The pinned install resolves on every Python the project supports.

``pyproject.toml`` allows Python 3.11 to 3.13. This lab's machine has one interpreter, so the
check uses pip's resolver for another Python: ``pip install --dry-run --python-version X.Y
--only-binary=:all:`` over ``requirements.lock`` must find a wheel of every pin (and of what
those wheels need) for that version. It needs the package index, as ``make setup`` does.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # pip's resolver over the package index (docs/tests.md)

ROOT = Path(__file__).resolve().parents[2]
SUPPORTED = ("3.11", "3.12", "3.13")


def test_requires_python_admits_every_supported_version():
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert spec == ">=3.11,<3.14", spec


def _dry_run(version: str, target: Path) -> subprocess.Popen:
    """pip's resolver for ``version`` over the lock, binaries only (pip requires a
    ``--target`` with ``--python-version``; nothing is written there in a dry run)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
         "--disable-pip-version-check", "--target", str(target), "--python-version", version,
         "--only-binary=:all:", "-r", str(ROOT / "requirements.lock")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.timeout(900)
def test_requirements_lock_resolves_for_python_3_12_and_3_13(tmp_path):
    """Both resolutions run at once (each fetches the index pages of ~150 packages)."""
    runs = {v: _dry_run(v, tmp_path / v) for v in SUPPORTED[1:]}
    failures = {}
    for version, proc in runs.items():
        out, _ = proc.communicate(timeout=840)
        if proc.returncode != 0:
            errors = [ln for ln in out.splitlines() if not ln.startswith("WARNING")]
            failures[version] = "\n".join(errors[-15:])
    assert not failures, failures
