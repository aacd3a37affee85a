"""The project files a user runs first agree with each other and with the README."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lock_pins() -> list[str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def environment_pins() -> list[str]:
    """The ``name==version`` entries of environment.yml (its pip section)."""
    pin = re.compile(r"^\s*-\s+([A-Za-z0-9_.\-\[\]]+==\S+)\s*$")
    lines = (ROOT / "environment.yml").read_text().splitlines()
    return [m[1] for ln in lines if (m := pin.match(ln))]


def shell_commands(path: Path) -> list[str]:
    """Non-empty lines of a shell script with comments removed."""
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


def test_requirements_lock_pins_every_package_exactly():
    pins = lock_pins()
    assert pins, "requirements.lock is empty"
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", p) for p in pins), pins
    names = [p.split("==")[0].lower() for p in pins]
    assert len(names) == len(set(names))


def test_environment_yml_has_the_same_pins_as_requirements_lock():
    env = environment_pins()
    assert len(env) == len(set(env))
    assert sorted(env) == sorted(lock_pins())


def test_requirements_lock_pins_torch_2_13_0():
    assert "torch==2.13.0" in lock_pins()


def test_ci_runs_make_test():
    assert "make test" in shell_commands(ROOT / ".ci" / "run")


def test_ci_script_is_executable():
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


def test_readme_gives_the_two_make_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make dashboard" in readme
    assert "make test" in readme


def test_makefile_defines_the_targets_the_readme_names():
    targets = re.findall(r"^([A-Za-z_-]+):", (ROOT / "Makefile").read_text(), re.M)
    assert {"test", "dashboard"} <= set(targets)


def test_streamlit_config_is_headless_local_and_private():
    with open(ROOT / ".streamlit" / "config.toml", "rb") as f:
        config = tomllib.load(f)
    assert config["server"]["headless"] is True
    assert config["server"]["address"] == "localhost"
    assert config["browser"]["gatherUsageStats"] is False
