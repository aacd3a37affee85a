"""``make gpu-check`` on a machine without a GPU, and the parts of it that must hold anywhere:
a section that fails keeps the others' results, the saved store opens from a read-only
folder. (The GPU sections themselves run on a CUDA machine: benchmarks/results/gpu-latest.md.)
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from benchmarks import gpu_check
from mahiax.config import tiny
from mahiax.store import RunReader, RunWriter


def test_without_cuda_it_says_so_in_one_line_and_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("gpu-check: no CUDA GPU on this machine")
    assert not any(tmp_path.iterdir()), "nothing measured, nothing written"


def test_a_bad_device_or_section_is_refused_with_what_is_allowed(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "tpu"])
    assert "use cuda, cuda:N or cpu" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--only", "amp,nope"])
    assert "sections are amp, spike" in capsys.readouterr().err


def test_a_failing_section_keeps_the_others_and_the_report_is_written_each_time(tmp_path):
    report = gpu_check.Report([tmp_path], {"device": "cpu", "command": "x", "started": "now"})
    with report.section("one", "First") as s:
        s.check("one plus one", 1 + 1 == 2, "2")
    written = json.loads((tmp_path / "gpu-latest.json").read_text())
    assert [x["status"] for x in written["sections"]] == ["ok"], "written after the section"
    with report.section("two", "Second") as s:
        raise RuntimeError("CUDA error: out of memory")
    with report.section("three", "Third") as s:
        s.check("still runs", True)
    md = (tmp_path / "gpu-latest.md").read_text()
    assert "| First | ok |" in md and "| Second | failed |" in md and "| Third | ok |" in md
    assert "`RuntimeError: CUDA error: out of memory`" in md
    again = gpu_check.Report.load(tmp_path / "gpu-latest.json", [tmp_path])
    assert list(again.sections) == ["one", "two", "three"], "a later step can add to it"


def test_the_saved_store_is_one_file_that_opens_from_a_read_only_folder(tmp_path):
    src = tmp_path / "live" / "s.sqlite"
    writer = RunWriter("r", tiny().to_dict(), path=src, device="cuda:0")
    writer.log({"mem/params": 1.0}, 0)
    writer.flush()  # the writer is still open: the rows are in the WAL
    dest = gpu_check.copy_store(src, tmp_path / "out" / "gpu-runs.sqlite")
    writer.close()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["gpu-runs.sqlite"]
    with sqlite3.connect(dest) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    with RunReader(dest) as reader:  # rollback journal: opens read-only without -wal/-shm
        assert reader.scalars("r")["mem/params"].tolist() == [1.0]
