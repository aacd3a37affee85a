"""The run store's metric keys are defined once (``mahiax/metric_keys.py``): a recorded run
holds exactly the keys the module says it writes, at the steps it says; every key is in its
documentation table; the code that writes or reads the store names the constants."""

from __future__ import annotations

import ast
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mahiax import metric_keys as mk
from mahiax.config import tiny
from mahiax.recording import record_training
from mahiax.store import RunReader
from mahiax.telemetry.cadence import Cadence

ROOT = Path(__file__).resolve().parents[2]
STEPS = 30
CLI_CADENCE = Cadence(categories_every=1, memory_every=10, snapshot_every=10)
TABLES = {mk.SCALAR: "scalars", mk.VECTOR: "vectors", mk.SNAPSHOT: "snapshots"}


def _stored_steps(store: Path, name: str) -> dict[str, dict[str, list[int]]]:
    """kind -> key -> the steps with a row (a NaN scalar, stored as NULL, counts: the key
    was written), read from the file itself."""
    out: dict[str, dict[str, list[int]]] = {}
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        (run_id,) = conn.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()
        for kind, table in TABLES.items():
            rows = conn.execute(f"SELECT key, step FROM {table} WHERE run_id = ? "
                                "ORDER BY key, step", (run_id,)).fetchall()
            steps: dict[str, list[int]] = {}
            for key, step in rows:
                steps.setdefault(key, []).append(step)
            out[kind] = steps
    return out


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """A tiny run recorded the way users record: CPU, fp32, DWA weighting, aux balance."""
    store = tmp_path_factory.mktemp("keys") / "s.sqlite"
    subprocess.run(
        [sys.executable, "-m", "mahiax", "train", "--preset", "tiny", "--steps", str(STEPS),
         "--run", "r", "--store", str(store), "--categories-every", "1", "--memory-every",
         "10", "--snapshot-every", "10", "--no-progress"],
        cwd=ROOT, check=True, timeout=600, stdout=subprocess.DEVNULL)
    return store


@pytest.mark.integration
def test_a_cli_run_holds_exactly_the_keys_the_module_says_at_their_steps(cli_run):
    run = RunReader(cli_run).run("r")
    config = run["config"]
    assert (run["device"], config["precision"], config["weighting"], config["balance"]) == \
        ("cpu", "fp32", "dwa", "aux")
    assert Cadence.of_run(run) == Cadence(categories_every=1, memory_every=10,
                                          snapshot_every=10), "the run keeps its cadence"
    expected = mk.keys_written(config, "cpu")
    stored = _stored_steps(cli_run, "r")
    for kind in mk.KINDS:
        assert set(stored[kind]) == expected[kind], (
            kind, "missing:", sorted(expected[kind] - set(stored[kind])),
            "undocumented:", sorted(set(stored[kind]) - expected[kind]))
        for name, steps in stored[kind].items():
            key = mk.documented(name, kind)
            assert key is not None and key in mk.TRAINING_KEYS, name
            assert steps == mk.steps_written(key.when("cpu"), CLI_CADENCE, STEPS), name
    assert {mk.dwa_ratio(t) for t in config["tasks"]} <= expected[mk.SCALAR]
    assert not {mk.MOE_BIAS, mk.BIAS_FLIPPED, mk.MEM_RESERVED, mk.MEM_ALLOCATED} & (
        expected[mk.SCALAR] | expected[mk.VECTOR])


def test_a_bias_run_without_dwa_writes_the_bias_and_no_dwa_ratio(tmp_path):
    store = tmp_path / "s.sqlite"
    config = tiny().replace(balance="bias", weighting="equal")
    record_training(config, "bias", 3, store=store)
    expected = mk.keys_written(RunReader(store).run("bias")["config"], "cpu")
    assert mk.MOE_BIAS in expected[mk.VECTOR] and mk.BIAS_FLIPPED in expected[mk.SCALAR]
    assert not any(k.startswith(mk.DWA_RATIO_PREFIX) for k in expected[mk.SCALAR])
    stored = _stored_steps(store, "bias")
    for kind in mk.KINDS:
        assert set(stored[kind]) == expected[kind], kind


def test_a_cuda_run_is_said_to_write_the_allocator_figures_every_step():
    config = tiny().to_dict()
    cuda = mk.keys_written(config, "cuda:0")[mk.SCALAR]
    cpu = mk.keys_written(config, "cpu")[mk.SCALAR]
    assert cuda - cpu == {mk.MEM_RESERVED, mk.MEM_ALLOCATED}
    assert cpu - cuda == {mk.MEM_TENSOR_BYTES}
    assert mk.MEM_SPIKE in mk.keys_written(config, "cuda", spikes=True)[mk.SCALAR]
    assert mk.documented(mk.MEM_TOTAL).when("cuda") == mk.EVERY_STEP
    assert mk.documented(mk.MEM_TOTAL).when("cpu") == mk.EVERY_MEMORY


def test_every_key_is_in_the_documentation_table_and_every_constant_is_a_key():
    doc = mk.__doc__
    for key in (*mk.TRAINING_KEYS, *mk.CATALOG_KEYS):
        assert f"``{key.name}``" in doc, key.name
    names = {k.name for k in (*mk.TRAINING_KEYS, *mk.CATALOG_KEYS) if not k.per_task}
    constants = {v for n, v in vars(mk).items()
                 if n.isupper() and not n.startswith("_") and isinstance(v, str)
                 and not n.endswith("PREFIX")
                 and v not in mk.KINDS and v not in mk.WHEN}
    assert constants == names, constants ^ names
    assert mk.task_loss("tabular") == "loss/tabular"
    assert mk.documented("loss/tabular") is mk.documented("loss/<task>")
    assert mk.documented("dwa/ratio/mixed").only == mk.Setting(key="weighting", value="dwa")
    assert mk.documented("loss/a/b") is None and mk.documented("moe/unknown") is None
    assert "``moe/max_vio_global``" not in (ROOT / "mahiax/telemetry/probes.py").read_text(), \
        "the table lives in mahiax.metric_keys"


def test_the_module_is_light():
    probe = ("import sys, mahiax.metric_keys\n"
             "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout


USERS = [
    "mahiax/telemetry/probes.py", "mahiax/telemetry/categories.py",
    "mahiax/telemetry/spikes.py", "mahiax/bugs/harness.py", "dashboard/processing.py",
    "dashboard/training_page.py", "dashboard/expert_load_page.py",
    "dashboard/memory_nodes_page.py", "dashboard/loss_weights_page.py", "dashboard/memory_page.py",
    "dashboard/page_charts.py", "dashboard/bug_lab.py", "notebooks/src/07_train_and_watch.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.py")),
]
PREFIXES = (mk.TASK_LOSS_PREFIX, mk.TASK_WEIGHT_PREFIX, mk.DWA_RATIO_PREFIX, mk.MOE_PREFIX,
            mk.MEM_PREFIX, mk.AMP_PREFIX, mk.TIME_PREFIX, mk.DWA_PREFIX)


@pytest.mark.parametrize("path", USERS)
def test_code_names_the_keys_rather_than_spelling_them(path):
    """No string in the code (docstrings aside) is a store key with a '/' or a key family's
    prefix (``f"loss/{task}"``): it names ``mahiax.metric_keys``' constant or builder."""
    tree = ast.parse((ROOT / path).read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    spelled = sorted(
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
        and (("/" in node.value and mk.documented(node.value) is not None)
             or node.value in PREFIXES))
    assert not spelled, f"{path} spells store keys: {spelled}"
