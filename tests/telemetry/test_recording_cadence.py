"""What a recorded run keeps, and how often, when it is recorded the way users record:
``python -m mahiax train --run NAME`` and the dashboard's run launcher (which runs that
command). The store is read back; nothing is mocked.

The cadence's flags are made from :class:`mahiax.telemetry.cadence.Cadence`'s fields, so each flag
fills the setting of its name (a positional ``Cadence(snapshot_every, memory_every)`` once
put ``--memory-every`` into ``categories_every``: memory by category reached the store on
2 of 300 steps).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from mahiax.cli import build_parser
from mahiax.store import RunReader
from mahiax.telemetry.cadence import Cadence

pytestmark = pytest.mark.integration  # runs recorded by mahiax processes (docs/tests.md)

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = ["mem/params", "mem/grads", "mem/optimizer", "mem/saved"]


def _record(store: Path, name: str, steps: int, *flags: str) -> RunReader:
    subprocess.run(
        [sys.executable, "-m", "mahiax", "train", "--preset", "tiny", "--steps", str(steps),
         "--run", name, "--store", str(store), "--no-progress", *flags],
        cwd=ROOT, check=True, timeout=600, stdout=subprocess.DEVNULL)
    return RunReader(store)


def _steps_with(reader: RunReader, name: str, keys: list[str]) -> dict[str, list[int]]:
    df = reader.scalars(name, keys)
    return {k: df[k].dropna().index.tolist() for k in keys}


def test_a_cli_recorded_300_step_run_has_memory_by_category_every_10_steps(tmp_path):
    reader = _record(tmp_path / "s.sqlite", "cli", 300)
    default = Cadence()
    seen = _steps_with(reader, "cli", [*CATEGORIES, "mem/other", "mem/total"])
    for key in CATEGORIES:  # and with the full reading at the last step
        assert seen[key] == [*range(0, 300, default.categories_every), 299], key
    for key in ("mem/other", "mem/total"):  # the CPU scan of every live object
        assert seen[key] == [*range(0, 300, default.memory_every), 299], key
    assert reader.snapshot_steps("cli", "memory/nodes") == [
        *range(0, 300, default.snapshot_every), 299]  # and the last step


def test_each_cadence_flag_reaches_its_own_setting(tmp_path):
    reader = _record(tmp_path / "s.sqlite", "flags", 30, "--categories-every", "7",
                     "--memory-every", "12", "--snapshot-every", "9")
    seen = _steps_with(reader, "flags", ["mem/params", "mem/other"])
    # by category every 7 steps, and at each full reading (every 12), which includes them
    assert seen["mem/params"] == [0, 7, 12, 14, 21, 24, 28, 29]
    assert seen["mem/other"] == [0, 12, 24, 29]  # and at the last step
    assert reader.snapshot_steps("flags", "memory/nodes") == [0, 9, 18, 27, 29]


def test_the_cli_has_one_flag_per_cadence_setting_with_its_default():
    args = build_parser().parse_args(["train"])
    assert {f.name: getattr(args, f.name) for f in fields(Cadence)} == \
        {f.name: f.default for f in fields(Cadence)}
    args = build_parser().parse_args(["train", "--spike-bytes", "none",
                                      "--max-vio-window", "5"])
    assert args.spike_bytes is None and args.max_vio_window == 5


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--categories-every", "0", "'0' is not a positive integer"),
    ("--memory-every", "ten", "'ten' is not a positive integer"),
    ("--spike-bytes", "-5", "'-5' is not a positive integer or 'none'"),
])
def test_a_bad_cadence_flag_names_the_flag_and_what_is_allowed(flag, value, says, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", flag, value])
    err = capsys.readouterr().err
    assert f"argument {flag}: {says}" in err


def test_cadence_settings_are_keyword_only():
    with pytest.raises(TypeError):
        Cadence(25, 10)  # positional: which is which cannot be read at the call


def test_a_run_started_from_the_dashboard_records_memory_by_category(tmp_path):
    from dashboard import runs

    store = tmp_path / "mahiax.sqlite"
    runs.start_run(store, runs.RunRequest(name="launched", steps=25))
    deadline = time.monotonic() + 600  # a hang guard: the default model, 25 steps
    while runs.active_runs(store) or runs.queued_runs(store):
        assert time.monotonic() < deadline, "the launched run did not end"
        time.sleep(0.2)
    reader = RunReader(store)
    assert reader.run("launched")["status"] == "finished"
    seen = _steps_with(reader, "launched", CATEGORIES)
    for key in CATEGORIES:  # and with the full reading at the last step
        assert seen[key] == [*range(0, 25, Cadence().categories_every), 24], key


def test_store_commands_start_without_importing_torch(tmp_path):
    """``mahiax runs list/show/export`` only read the store: they must not pay for torch."""
    store = tmp_path / "s.sqlite"
    _record(store, "r", 3)
    out = tmp_path / "r.csv"
    commands = [["runs", "list", "--store", str(store)],
                ["runs", "show", "r", "--store", str(store)],
                ["runs", "export", "r", "--store", str(store), "--out", str(out)]]
    probe = (
        "import sys\n"
        "from mahiax.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    assert main(argv) == 0, argv\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("torch imported: False"), done.stdout
    assert out.read_text().startswith("step,")


def test_list_and_show_answer_without_pandas(tmp_path):
    """The two commands a user types to look around read the store with sqlite alone (pandas
    takes most of a second to import); what they print is the run and its last step."""
    store = tmp_path / "s.sqlite"
    _record(store, "r", 3)
    probe = (
        "import sys\n"
        "from mahiax.cli import main\n"
        f"assert main(['runs', 'list', '--store', {str(store)!r}]) == 0\n"
        f"assert main(['runs', 'show', 'r', '--store', {str(store)!r}]) == 0\n"
        "print('pandas imported:', 'pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "pandas imported: False", done.stdout
    assert lines[0].split() == ["name", "status", "last_step", "error_type", "updated"]
    assert lines[1].split()[:3] == ["r", "finished", "2"]
    assert "last step 2:" in lines and any(line.split()[0] == "loss" for line in lines[2:])
