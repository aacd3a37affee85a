"""The run store: what a training process writes is what readers get, live and after a kill.

Real SQLite files in ``tmp_path`` and real processes (``store_writer_child.py``); no mocks.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mahiax.store import (
    DEFAULT_DIR,
    ENV_VAR,
    BadRunNameError,
    NewerSchemaError,
    NotAStoreError,
    RunExistsError,
    RunNotFoundError,
    RunReader,
    RunWriter,
    SnapshotNotFoundError,
    StoreError,
    StoreLockedError,
    delete_run,
    resolve_store_path,
    validate_run_name,
)

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("store_writer_child.py")
# the documented columns of RunReader.runs(), restated here so that a change to them is seen
RUN_COLUMNS = [
    "name", "status", "created", "updated", "heartbeat", "last_step", "steps", "error_type",
    "error_message", "error_step", "device", "world_size", "config", "bug", "variant",
    "cadence",
]
KEYS = [f"k{i:02d}" for i in range(20)]  # what the child writes with --keys 20


# -- helpers --------------------------------------------------------------------------------


def start_child(store: Path, name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(store), name, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 30.0) -> str:
    """The child's first stdout line, which must start with ``prefix``."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError(f"child printed nothing in {timeout} s: {proc.stderr.read()}")
    line = proc.stdout.readline()
    assert line.startswith(prefix), (line, proc.stderr.read() if proc.poll() is not None else "")
    return line


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)  # reaped: the pid is gone, not a zombie


def hold_write_lock(store: Path) -> subprocess.Popen:
    """Another process that takes the store's write lock and keeps it until killed."""
    code = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(store)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_line(proc, "locked")
    return proc


def integrity(store: Path) -> str:
    conn = sqlite3.connect(store.as_uri() + "?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def check_child_rows(reader: RunReader, name: str, last_step: int) -> None:
    """Every step 0..last_step is complete and exact, as the child wrote it."""
    scal = reader.scalars(name)
    assert list(scal.columns) == KEYS
    assert scal.index.tolist() == list(range(last_step + 1))
    steps = scal.index.to_numpy()[:, None].astype(float)
    expected = steps + np.arange(len(KEYS))[None, :] / 100
    np.testing.assert_array_equal(scal.to_numpy(), expected)  # no NaN: no partial step
    vec = reader.vectors(name, "vec")
    assert vec.index.tolist() == list(range(last_step + 1))
    np.testing.assert_array_equal(vec[0].to_numpy(), vec.index.to_numpy().astype(float))
    snap_steps = reader.snapshot_steps(name, "snap")
    assert snap_steps == list(range(0, last_step + 1, 10))
    if snap_steps:
        s = snap_steps[-1]
        np.testing.assert_array_equal(
            reader.snapshot(name, "snap", s), np.arange(12, dtype=np.float32).reshape(3, 4) + s
        )


# -- round trip -----------------------------------------------------------------------------


def test_round_trip_config_scalars_vectors_and_snapshots(tmp_path):
    config = {"lr": 0.001, "tasks": ["sentiment", "topic"], "moe": {"experts": 8}}
    tensors = {}
    with RunWriter("round-trip", config, path=tmp_path, device="cpu") as w:
        for step in range(10):
            w.log({"loss": 1.0 / (step + 1), "acc": step / 10, "skipped": None}, step)
            w.log_vector("moe/tokens_per_expert", np.arange(4) * step, step)
            nodes = torch.randn(3, 5, generator=torch.Generator().manual_seed(step))
            w.log_tensor("memory/nodes", nodes, step)
            tensors[step] = nodes.numpy().copy()
            nodes.add_(1.0)  # a later in-place change must not reach the store
        w.log_tensor("ids", np.array([[1, -2], [3, 4]], dtype=np.int64), 9)
        w.log_tensor("mask", torch.tensor([True, False, True]), 9)
        w.log_tensor("half", torch.tensor([1.5, -2.25], dtype=torch.bfloat16), 9)

    r = RunReader(tmp_path)
    assert r.config("round-trip") == config
    scal = r.scalars("round-trip")
    assert list(scal.columns) == ["acc", "loss"]  # sorted keys; None values were skipped
    assert scal.index.name == "step"
    assert scal.index.dtype == np.int64
    assert scal.index.tolist() == list(range(10))
    assert (scal.dtypes == np.float64).all()
    assert scal["loss"].tolist() == [1.0 / (s + 1) for s in range(10)]
    assert r.scalars("round-trip", ["loss"]).columns.tolist() == ["loss"]
    assert r.scalar_keys("round-trip") == ["acc", "loss"]

    newer = r.scalars("round-trip", since_step=6)
    assert newer.index.tolist() == [7, 8, 9]
    assert r.scalars("round-trip", ["loss", "never-logged"], since_step=9).empty

    vec = r.vectors("round-trip", "moe/tokens_per_expert")
    assert vec.index.name == "step" and vec.columns.tolist() == [0, 1, 2, 3]
    assert vec.loc[3].tolist() == [0.0, 3.0, 6.0, 9.0]
    assert r.vectors("round-trip", "moe/tokens_per_expert", since_step=8).index.tolist() == [9]

    assert r.snapshot_steps("round-trip", "memory/nodes") == list(range(10))
    for step, expected in tensors.items():
        got = r.snapshot("round-trip", "memory/nodes", step)
        assert got.dtype == np.float32 and got.shape == (3, 5)
        np.testing.assert_array_equal(got, expected)
    assert list(r.snapshots("round-trip", "memory/nodes")) == list(range(10))
    ids = r.snapshot("round-trip", "ids", 9)
    assert ids.dtype == np.int64 and ids.tolist() == [[1, -2], [3, 4]]
    assert r.snapshot("round-trip", "mask", 9).tolist() == [True, False, True]
    half = r.snapshot("round-trip", "half", 9)  # numpy has no bfloat16: stored as float32
    assert half.dtype == np.float32 and half.tolist() == [1.5, -2.25]
    with pytest.raises(SnapshotNotFoundError, match=r"no snapshot 'ids' at step 3; steps"):
        r.snapshot("round-trip", "ids", 3)


def test_non_finite_scalars_read_back_as_nan(tmp_path):
    with RunWriter("nan", {}, path=tmp_path) as w:
        w.log({"loss": float("nan"), "scale": float("inf")}, 0)
        w.log({"loss": 2.0, "scale": 1.0}, 1)
        w.log_vector("v", [1.0, float("-inf")], 1)
    r = RunReader(tmp_path)
    scal = r.scalars("nan")
    assert scal.loc[0].isna().all() and scal.loc[1].tolist() == [2.0, 1.0]
    assert r.vectors("nan", "v").loc[1].isna().tolist() == [False, True]


def test_runs_has_exactly_the_documented_columns(tmp_path):
    assert RunReader(tmp_path).runs().columns.tolist() == RUN_COLUMNS  # no store yet: empty
    with RunWriter("cols", {"seed": 1}, path=tmp_path, device="cuda:0", world_size=2) as w:
        w.log({"loss": 1.0}, 0)
        w.log({"loss": 0.5}, 1)
    df = RunReader(tmp_path).runs()
    assert df.columns.tolist() == RUN_COLUMNS
    row = df.iloc[0]
    assert row["name"] == "cols" and row["status"] == "finished"
    assert row["last_step"] == 1 and row["steps"] == 2
    assert row["device"] == "cuda:0" and row["world_size"] == 2
    assert row["config"] == {"seed": 1}
    for col in ("created", "updated", "heartbeat"):
        assert str(df[col].dtype) == "datetime64[ns, UTC]" or str(df[col].dt.tz) == "UTC"
    assert df["error_step"].isna().all()
    assert set(RunReader(tmp_path).run("cols")) == set(RUN_COLUMNS)
    docs = (ROOT / "docs" / "store.md").read_text()
    assert all(f"`{c}`" in docs for c in RUN_COLUMNS)


def _stored(store: Path, name: str) -> tuple[dict, dict]:
    """The raw config and notes JSON of a run, as SQLite holds them."""
    with sqlite3.connect(store) as conn:
        config, notes = conn.execute("SELECT config, notes FROM runs WHERE name = ?",
                                     (name,)).fetchone()
    return json.loads(config), json.loads(notes)


def test_a_catalog_tag_is_store_data_not_config(tmp_path):
    store = tmp_path / "mahiax.sqlite"
    with RunWriter("tagged", {"seed": 1}, path=store, catalog=("dwa-weights", "summary")) as w:
        w.log({"loss": 1.0}, 0)
    with RunWriter("plain", {"seed": 2}, path=store) as w:
        w.log({"loss": 1.0}, 0)
    config, notes = _stored(store, "tagged")
    assert config == {"seed": 1}, "the config JSON stays the config"
    assert notes["catalog"] == {"bug": "dwa-weights", "variant": "summary"}
    df = RunReader(store).runs().set_index("name")
    assert (df.loc["tagged", "bug"], df.loc["tagged", "variant"]) == ("dwa-weights", "summary")
    assert pd.isna(df.loc["plain", "bug"]) and pd.isna(df.loc["plain", "variant"])
    assert RunReader(store).run("plain")["bug"] is None
    # a resume that says nothing of the tag keeps it; a failure's notes keep it too
    with pytest.raises(RuntimeError), RunWriter("tagged", {"seed": 1}, path=store,
                                                resume=True):
        raise RuntimeError("boom")
    _, notes = _stored(store, "tagged")
    assert notes["catalog"] == {"bug": "dwa-weights", "variant": "summary"}
    assert "boom" in notes["traceback"]
    assert RunReader(store).run("tagged")["bug"] == "dwa-weights"


def test_a_run_stored_with_the_tag_in_its_config_still_reads_as_a_catalog_run(tmp_path):
    """Stores written before the tag was store data kept it in the config JSON."""
    store = tmp_path / "mahiax.sqlite"
    old_tag = {"bug": "retain-graph", "variant": "fixed"}
    with RunWriter("old", {"seed": 3, "catalog": old_tag}, path=store) as w:
        w.log({"loss": 1.0}, 0)
    assert "catalog" not in _stored(store, "old")[1], "written as before: config only"
    reader = RunReader(store)
    run = reader.run("old")
    assert (run["bug"], run["variant"]) == ("retain-graph", "fixed")
    assert run["config"] == {"seed": 3} and reader.config("old") == {"seed": 3}


def test_a_runs_cadence_is_store_data_kept_on_resume_and_replaced_when_given(tmp_path):
    store = tmp_path / "mahiax.sqlite"
    with RunWriter("paced", {"seed": 1}, path=store,
                   cadence={"max_vio_window": 20, "spike_bytes": None}) as w:
        w.log({"loss": 1.0}, 0)
    with RunWriter("plain", {"seed": 2}, path=store) as w:
        w.log({"loss": 1.0}, 0)
    config, notes = _stored(store, "paced")
    assert config == {"seed": 1}, "the config JSON stays the config"
    assert notes["cadence"] == {"max_vio_window": 20, "spike_bytes": None}
    reader = RunReader(store)
    assert reader.run("paced")["cadence"] == {"max_vio_window": 20, "spike_bytes": None}
    assert reader.run("plain")["cadence"] is None, "a run stored without one has none"
    with RunWriter("paced", {"seed": 1}, path=store, resume=True) as w:  # says nothing
        w.log({"loss": 1.0}, 1)
    assert RunReader(store).run("paced")["cadence"]["max_vio_window"] == 20
    with RunWriter("paced", {"seed": 1}, path=store, resume=True,
                   cadence={"max_vio_window": 7}) as w:
        w.log({"loss": 1.0}, 2)
    assert RunReader(store).run("paced")["cadence"] == {"max_vio_window": 7}
    with pytest.raises(TypeError, match="cadence"):
        RunWriter("x", {}, path=tmp_path / "other.sqlite", cadence={"max_vio_window": "20"})
    assert not (tmp_path / "other.sqlite").exists()


@pytest.mark.parametrize("catalog", [("only-id",), ("", "buggy"), ["a", "b"], ("a", 1)])
def test_a_bad_catalog_tag_is_refused_before_the_store_is_touched(tmp_path, catalog):
    with pytest.raises(ValueError, match=r"catalog must be \(entry id, variant\)"):
        RunWriter("x", {}, path=tmp_path / "s.sqlite", catalog=catalog)
    assert not (tmp_path / "s.sqlite").exists()


def test_finish_with_an_error_records_it_and_the_run_as_failed(tmp_path):
    w = RunWriter("crash", {}, path=tmp_path)
    w.log({"loss": 1.0}, 0)
    try:
        raise FloatingPointError("loss became NaN")
    except FloatingPointError as e:
        w.finish(error=e, error_step=1)
    run = RunReader(tmp_path).run("crash")
    assert run["status"] == "failed"
    assert (run["error_type"], run["error_message"], run["error_step"]) == (
        "FloatingPointError", "loss became NaN", 1)
    assert run["last_step"] == 0

    with pytest.raises(RuntimeError, match="boom"), RunWriter("ctx", {}, path=tmp_path) as w:
        w.log({"loss": 1.0}, 0)
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), RunWriter("ctrl-c", {}, path=tmp_path):
        raise KeyboardInterrupt
    RunWriter("closed", {}, path=tmp_path).close()  # no finish(): not known to have finished
    runs = RunReader(tmp_path).runs().set_index("name")
    assert runs.loc["ctx", "status"] == "failed" and runs.loc["ctx", "error_type"] == "RuntimeError"
    assert runs.loc["ctx", "error_message"] == "boom"
    assert runs.loc["ctrl-c", "status"] == "interrupted"
    assert runs.loc["closed", "status"] == "interrupted"


def test_an_automatic_flush_commits_whole_steps_only(tmp_path):
    w = RunWriter("whole", {}, path=tmp_path, flush_every_s=0.0, background=False)
    w.log({"a": 0.0}, 0)
    w.log({"b": 0.0}, 0)
    w.log({"a": 1.0}, 1)  # step 0 is complete now and flushed; step 1 may still get "b"
    r = RunReader(tmp_path)
    assert r.scalars("whole").index.tolist() == [0]
    assert r.run("whole")["last_step"] == 0
    w.log({"b": 1.0}, 1)
    w.flush()
    assert r.scalars("whole").loc[1].tolist() == [1.0, 1.0]
    assert w.stats.rows_written == 4 and w.stats.flushes == 2 and w.stats.flush_seconds > 0
    w.finish()


def test_bad_values_are_refused_when_logged(tmp_path):
    with RunWriter("values", {}, path=tmp_path) as w:
        with pytest.raises(ValueError, match="scalar 'loss' at step 0 must be a number"):
            w.log({"loss": "0.5"}, 0)
        with pytest.raises(ValueError, match="step=-1 must be an integer >= 0"):
            w.log({"loss": 0.5}, -1)
        with pytest.raises(ValueError, match="only bool, integer, float and complex"):
            w.log_tensor("objs", np.array([object()]), 0)
        with pytest.raises(ValueError, match="1-D sequence of numbers"):
            w.log_vector("v", 3.0, 0)


# -- live reading and kills -----------------------------------------------------------------


@pytest.mark.integration
def test_a_reader_polling_while_a_process_writes_is_never_locked_out(tmp_path):
    store = tmp_path / "live.sqlite"
    child = start_child(store, "live", "--steps", "2000", "--keys", "20", "--sleep", "0.001",
                        "--flush-every", "0.02")
    reader = RunReader(store, busy_timeout_s=0.0)  # any lock would raise at once, not wait
    last_steps, seen, polls = [], -1, 0
    try:
        while child.poll() is None:
            polls += 1
            runs = reader.runs()  # an OperationalError or StoreLockedError fails the test
            if runs.empty or pd.isna(runs.iloc[0]["last_step"]):
                continue  # not created yet, or no step committed yet
            last_steps.append(int(runs.iloc[0]["last_step"]))
            assert runs.iloc[0]["steps"] == last_steps[-1] + 1  # one snapshot: they agree
            assert runs.iloc[0]["status"] in ("running", "finished")  # it may just have ended
            new = reader.scalars("live", since_step=seen)
            if not new.empty:
                assert new.index[0] == seen + 1  # nothing skipped, nothing repeated
                assert new.index.is_monotonic_increasing
                assert not new.isna().any().any()  # every key of every step visible
                seen = int(new.index[-1])
    finally:
        kill(child)
    assert child.returncode == 0, child.stderr.read()
    assert polls > 20 and len(last_steps) > 5
    assert last_steps == sorted(last_steps)
    assert reader.run("live")["status"] == "finished"
    assert reader.run("live")["steps"] == 2000  # counted incrementally along the way
    check_child_rows(reader, "live", 1999)


@pytest.mark.integration
def test_sigkill_at_random_moments_leaves_an_intact_store(tmp_path):
    store = tmp_path / "killed.sqlite"
    last = -1
    for seed in range(5):
        resume = ["--resume"] if seed else []
        child = start_child(store, "killed", "--steps", "10000000", "--flush-every", "0.02",
                            *resume)
        wait_for_line(child, "ready")
        time.sleep(random.Random(seed).uniform(0.05, 1.0))
        kill(child)
        assert child.returncode == -signal.SIGKILL

        reader = RunReader(store)  # read-only, first to open the store after the kill
        run = reader.run("killed")
        assert run["status"] == "interrupted"  # its process is gone
        assert run["last_step"] > last
        last = run["last_step"]
        check_child_rows(reader, "killed", last)
        reader.close()
        assert integrity(store) == "ok"
    # the interrupted run is taken over where it stopped
    with RunWriter("killed", {}, path=store, resume=True) as w:
        assert w.resume_step == last + 1


def test_a_run_written_by_a_live_process_is_not_taken_over(tmp_path):
    store = tmp_path / "busy.sqlite"
    child = start_child(store, "owned", "--steps", "100000", "--sleep", "0.01")
    try:
        wait_for_line(child, "ready")
        msg = f"run 'owned' in run store {store} is being written by process {child.pid}"
        with pytest.raises(RunExistsError, match=msg):
            RunWriter("owned", {}, path=store, resume=True)
        with pytest.raises(RunExistsError, match=f"being written by process {child.pid}"):
            delete_run("owned", store)
        assert RunReader(store).run("owned")["status"] == "running"
    finally:
        kill(child)
    assert RunReader(store).run("owned")["status"] == "interrupted"


def test_a_writer_whose_run_was_taken_over_stops_with_a_clear_error(tmp_path):
    store = tmp_path / "taken.sqlite"
    w = RunWriter("hung", {}, path=store)
    w.log({f"k{i:02d}": float(i) for i in range(20)}, 0)
    w.flush()
    conn = sqlite3.connect(store)  # as if this process had hung for a minute
    conn.execute("UPDATE runs SET heartbeat = heartbeat - 60")
    conn.commit()
    conn.close()
    assert RunReader(store).run("hung")["status"] == "interrupted"
    child = start_child(store, "hung", "--resume", "--steps", "5")
    assert child.wait(timeout=30) == 0, child.stderr.read()
    w.log({"k00": 1.0}, 1)
    with pytest.raises(StoreError, match=f"was taken over by process {child.pid} while"):
        w.flush()
    w.close()  # lets go without writing
    run = RunReader(store).run("hung")
    assert run["last_step"] == 4 and run["status"] == "finished"


def test_a_stale_heartbeat_reads_as_interrupted(tmp_path):
    w = RunWriter("quiet", {}, path=tmp_path)
    time.sleep(0.2)
    assert RunReader(tmp_path).run("quiet")["status"] == "running"
    assert RunReader(tmp_path, stale_after_s=0.1).run("quiet")["status"] == "interrupted"
    with pytest.raises(RunExistsError, match=f"being written by process {os.getpid()}"):
        RunWriter("quiet", {}, path=tmp_path, resume=True)  # this process still holds it
    w.finish()


# -- bad store files ------------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path):
    store = tmp_path / "notes.sqlite"
    store.write_bytes(b"hello" * 1000)
    msg = f"{store} is not a MAHIA-X run store: not an SQLite database"
    with pytest.raises(NotAStoreError, match=msg):
        RunReader(store).runs()
    with pytest.raises(NotAStoreError, match=msg):
        RunWriter("x", {}, path=store)
    assert store.read_bytes() == b"hello" * 1000


def test_another_sqlite_database_is_refused_and_left_alone(tmp_path):
    store = tmp_path / "app.db"
    conn = sqlite3.connect(store)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()
    before = store.read_bytes()
    msg = (f"{store} is an SQLite database but not a MAHIA-X run store "
           r"\(no 'meta' table\)")
    with pytest.raises(NotAStoreError, match=msg):
        RunReader(store).runs()
    with pytest.raises(NotAStoreError, match=msg):
        RunWriter("x", {}, path=store)
    assert store.read_bytes() == before  # not switched to WAL, no tables added


def test_a_store_from_a_newer_schema_is_refused(tmp_path):
    with RunWriter("old", {}, path=tmp_path / "a.sqlite") as w:
        w.log({"loss": 1.0}, 0)
    newer = tmp_path / "b.sqlite"
    shutil.copy(tmp_path / "a.sqlite", newer)
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    msg = "has schema version 2, but this mahiax reads schema version 1 at most; upgrade mahiax"
    with pytest.raises(NewerSchemaError, match=msg):
        RunReader(newer).runs()
    with pytest.raises(NewerSchemaError, match=msg):
        RunWriter("new", {}, path=newer)


def test_a_locked_store_gets_a_clear_error_and_readers_still_read(tmp_path):
    store = tmp_path / "locked.sqlite"
    w = RunWriter("waits", {}, path=store, busy_timeout_s=0.3)
    w.log({"loss": 1.0}, 0)
    w.flush()
    locker = hold_write_lock(store)
    try:
        w.log({"loss": 0.5}, 1)
        msg = (f"run store {store} is locked: another process holds a write lock on it "
               r"\(waited 0\.\d s\)\. Wait for that process to finish its write, or close the "
               "other writer")
        with pytest.raises(StoreLockedError, match=msg):
            w.flush()
        with pytest.raises(StoreLockedError, match=msg):
            RunWriter("second", {}, path=store, busy_timeout_s=0.3)
        reader = RunReader(store, busy_timeout_s=0.0)
        assert reader.scalars("waits")["loss"].tolist() == [1.0]  # readers are not blocked
    finally:
        kill(locker)
    w.flush()  # the refused rows were kept and are written now
    assert reader.scalars("waits")["loss"].tolist() == [1.0, 0.5]
    w.finish()


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "it is empty"),
        ("a/b", "it contains '/', a path separator"),
        ("..\\x", r"it contains '\\\\', a path separator"),
        ("x\n", r"it contains the control character '\\n'"),
        (".hidden", "it starts with '.'"),
        ("a" * 65, "it is 65 characters long"),
        ("two words", "it contains ' '"),
    ],
)
def test_bad_run_names_are_refused_saying_what_is_allowed(tmp_path, name, why):
    allowed = r"allowed: 1-64 ASCII letters, digits, '-', '_' and '\.', not starting with '\.'"
    with pytest.raises(BadRunNameError, match=f"is invalid: {why}; {allowed}"):
        validate_run_name(name)
    with pytest.raises(BadRunNameError, match=why):
        RunWriter(name, {}, path=tmp_path)
    assert not any(tmp_path.iterdir())  # refused before the store was touched


def test_good_run_names_pass():
    for name in ("a", "run-1", "exp_2.v3", "A" * 64):
        assert validate_run_name(name) == name


def test_a_missing_run_is_reported_with_the_runs_there_are(tmp_path):
    with pytest.raises(RunNotFoundError, match="the store has no runs yet"):
        RunReader(tmp_path).run("nope")  # no store file yet
    for i in range(12):
        RunWriter(f"run-{i:02d}", {}, path=tmp_path).finish()
    listed = ", ".join(f"'run-{i:02d}'" for i in range(10))
    with pytest.raises(RunNotFoundError, match=f"no run named 'nope' .*: {listed} and 2 more"):
        RunReader(tmp_path).scalars("nope")
    with pytest.raises(RunNotFoundError, match="no run named 'nope'"):
        RunWriter("nope", {}, path=tmp_path, resume=True)


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path):
    RunWriter("taken", {}, path=tmp_path).finish()
    with pytest.raises(RunExistsError, match="run 'taken' already exists .* --resume"):
        RunWriter("taken", {}, path=tmp_path)
    with RunWriter("open", {}, path=tmp_path):
        with pytest.raises(RunExistsError, match=f"being written by process {os.getpid()}"):
            RunWriter("open", {}, path=tmp_path, resume=True)


# -- resume, delete, export -----------------------------------------------------------------


def test_resume_continues_a_run_after_its_last_committed_step(tmp_path):
    with RunWriter("resumed", {"lr": 0.1}, path=tmp_path) as a:
        assert a.resume_step == 0
        for step in range(10):
            a.log({"loss": float(step)}, step)
    reader = RunReader(tmp_path)
    b = RunWriter("resumed", {"lr": 0.1}, path=tmp_path, resume=True)
    assert b.resume_step == 10
    assert reader.run("resumed")["status"] == "running"
    for step in range(b.resume_step, 20):
        b.log({"loss": float(step)}, step)
    b.finish()
    run = reader.run("resumed")
    assert run["status"] == "finished" and run["last_step"] == 19 and run["steps"] == 20
    assert reader.scalars("resumed")["loss"].tolist() == [float(s) for s in range(20)]

    # from a checkpoint older than the store: rewind, then the rewritten steps replace
    with RunWriter("resumed", {"lr": 0.1}, path=tmp_path, resume=True) as c:
        c.rewind(15)
        assert c.last_step == 14
        c.log({"loss": -15.0}, 15)
    assert reader.scalars("resumed")["loss"].tolist()[-2:] == [14.0, -15.0]
    assert reader.run("resumed")["last_step"] == 15
    assert reader.run("resumed")["steps"] == 16


def test_delete_run_removes_it_and_only_it(tmp_path):
    for name in ("keep", "drop"):
        with RunWriter(name, {}, path=tmp_path) as w:
            w.log({"loss": 1.0}, 0)
            w.log_tensor("t", np.zeros(2), 0)
    delete_run("drop", tmp_path)
    r = RunReader(tmp_path)
    assert r.run_names() == ["keep"]
    assert r.scalars("keep")["loss"].tolist() == [1.0]
    with pytest.raises(RunNotFoundError, match="runs in the store: 'keep'"):
        delete_run("drop", tmp_path)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_writes_the_wide_scalar_table(tmp_path, fmt):
    with RunWriter("exp", {}, path=tmp_path) as w:
        for step in range(3):
            w.log({"loss": step / 2, "moe/cv": step * 1.0}, step)
    dest = RunReader(tmp_path).export("exp", tmp_path / "out" / f"exp.{fmt}", fmt)
    table = pd.read_csv(dest) if fmt == "csv" else pd.read_parquet(dest)
    assert table.columns.tolist() == ["step", "loss", "moe/cv"]
    assert table["step"].tolist() == [0, 1, 2]
    assert table["loss"].tolist() == [0.0, 0.5, 1.0]


def test_export_refuses_an_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="export format 'xlsx' is not supported"):
        RunReader(tmp_path).export("x", tmp_path / "x.xlsx", "xlsx")


# -- where the store is ---------------------------------------------------------------------


def test_store_path_default_env_and_explicit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_store_path() == tmp_path / DEFAULT_DIR / "mahiax.sqlite"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    assert resolve_store_path() == tmp_path / "elsewhere" / "mahiax.sqlite"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "file.db"))
    assert resolve_store_path() == tmp_path / "file.db"
    assert resolve_store_path(tmp_path / "explicit.sqlite") == tmp_path / "explicit.sqlite"
    assert resolve_store_path("rel/") == tmp_path / "rel" / "mahiax.sqlite"
    (tmp_path / "dir.v2").mkdir()
    assert resolve_store_path("dir.v2") == tmp_path / "dir.v2" / "mahiax.sqlite"


def test_the_writer_creates_the_default_store_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    RunWriter("here", {}).finish()
    assert (tmp_path / "runs" / "mahiax.sqlite").is_file()
    assert RunReader().run_names() == ["here"]
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "other"))
    assert RunReader().run_names() == []


def test_every_store_error_is_a_value_error():
    for cls in (NotAStoreError, NewerSchemaError, StoreLockedError, BadRunNameError,
                RunNotFoundError, RunExistsError, SnapshotNotFoundError):
        assert issubclass(cls, StoreError) and issubclass(cls, ValueError)


def test_the_schema_is_documented(tmp_path):
    RunWriter("doc", {}, path=tmp_path).finish()
    conn = sqlite3.connect(tmp_path / "mahiax.sqlite")
    tables = {t: [c[1] for c in conn.execute(f"PRAGMA table_info({t})")]
              for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    import mahiax.store

    docs = (ROOT / "docs" / "store.md").read_text()
    for table, columns in tables.items():
        assert f"`{table}`" in docs and table in mahiax.store.__doc__
        assert all(f"`{c}`" in docs for c in columns), (table, columns)
        assert all(c in mahiax.store.__doc__ for c in columns), (table, columns)


def test_automatic_flushes_in_the_background_commit_every_row_in_order(tmp_path):
    """The committer thread writes the automatic flushes: every row arrives, whole steps
    only while the run trains, and the writer never waits for a batch in flight."""
    w = RunWriter("bg", {}, path=tmp_path, flush_every_s=0.0)
    r = RunReader(tmp_path)
    seen: list[int] = []
    for step in range(400):
        w.log({"a": float(step), "b": -float(step)}, step)
        w.log_vector("v", [step, step + 1], step)
        got = r.scalars("bg")
        if len(got):  # what readers see mid-run: complete steps 0..k, both keys each
            assert got.index.tolist() == list(range(len(got)))
            assert got.notna().all().all()
            seen.append(len(got))
    w.finish()
    got = r.scalars("bg")
    assert got["a"].tolist() == [float(s) for s in range(400)]
    assert r.vectors("bg", "v").shape == (400, 2)
    assert w.stats.rows_written == 1200 and w.stats.flushes >= 2
    assert seen and seen[-1] < 400, "rows were committed while the run went on"


def test_an_error_of_the_committer_is_raised_by_the_next_call(tmp_path):
    store = tmp_path / "taken.sqlite"
    w = RunWriter("taken", {}, path=store, flush_every_s=0.0)
    w.log({"a": 0.0}, 0)
    w.flush()
    conn = sqlite3.connect(store)  # another process took the run over
    conn.execute("UPDATE runs SET pid = pid + 1")
    conn.commit()
    conn.close()
    w.log({"a": 1.0}, 1)
    w.log({"a": 2.0}, 2)  # step 1 complete: handed to the committer, which finds it taken
    with pytest.raises(StoreError, match=f"was taken over by process {os.getpid() + 1}"):
        for step in range(3, 300):  # raised by the first call after the committer failed
            w.log({"a": float(step)}, step)
            time.sleep(0.01)
    w.close()  # lets go without writing
    assert RunReader(store).run("taken")["last_step"] == 0
