"""The repository is Binder-ready: repo2docker's no-build mode accepts it and plans the image
from ``environment.yml`` (the lock's pins, then ``-e .`` with the repository in place) and the
``start`` script, which gives the lessons' kernels and the dashboard tile one run store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPO2DOCKER = Path(sys.executable).parent / "jupyter-repo2docker"


@pytest.fixture(scope="module")
def dockerfile() -> str:
    if not REPO2DOCKER.exists():
        pytest.skip("jupyter-repo2docker is not installed (the test extra installs it)")
    done = subprocess.run([str(REPO2DOCKER), "--no-build", "--no-run", "--user-id", "1000",
                           "--user-name", "jovyan", str(ROOT)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_repo2docker_builds_the_environment_from_environment_yml_after_copying_the_repo(
        dockerfile):
    copy = dockerfile.index("src/ ${REPO_DIR}/")  # COPY of the repository
    update = dockerfile.index('env update -p ${NB_PYTHON_PREFIX} --file "environment.yml"')
    assert copy < update  # `-e .` in environment.yml needs the repository in place
    env = (ROOT / "environment.yml").read_text().splitlines()
    assert env[-1].strip() == "- -e ."
    assert any("jupyter_server_proxy==" in line for line in env)  # the dashboard tile


def test_repo2docker_runs_the_start_script_that_sets_one_store_per_user(dockerfile, tmp_path):
    assert 'ENV R2D_ENTRYPOINT="${REPO_DIR}/start"' in dockerfile
    start = ROOT / "start"
    assert os.access(start, os.X_OK)
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    out = subprocess.run([str(start), "sh", "-c", "echo $MAHIAX_STORE"], env=env,
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.strip() == f"{tmp_path}/runs/mahiax.sqlite"


def test_binder_installs_pytorchs_cpu_build():
    """A Binder session has no GPU: the pip section reads PyTorch's CPU wheel index before
    PyPI, so torch==2.13.0 is its CPU build and none of the CUDA wheels are downloaded."""
    env = [ln.strip() for ln in (ROOT / "environment.yml").read_text().splitlines()]
    index = env.index("- --index-url https://download.pytorch.org/whl/cpu")
    assert env.index("- --extra-index-url https://pypi.org/simple") > index
    assert index < env.index("- torch==2.13.0")

