"""The GPU check of issue 12: the lab's CUDA path, run once on a CUDA machine, in one report.

``python -m benchmarks.gpu_check --out DIR`` (``make gpu-check``) checks, in this order:

1. ``environment``: torch, CUDA, the GPU, the packages found;
2. ``amp``: 300 recorded steps of the teaching model with fp16 + GradScaler and with bf16
   (every loss finite; the loss scale and the skipped steps per run), into a run store;
3. ``meter``: ``MemoryMeter``'s categories against ``torch.cuda.memory_allocated`` (they add
   up within 5%), between steps and with a live graph; a CPU model on the GPU machine is
   still read on the CPU;
4. ``store``: the CUDA runs' store copied to ``DIR`` (for the dashboard screenshot);
5. ``catalog``: every catalog verdict on the GPU next to the CPU one;
6. ``lessons``: lessons 05 and 08 run top to bottom on the GPU machine (nbclient);
7. ``moe``: the MoE benchmark's arms (ours, Mixtral's block, the summary's loop, the floor)
   on the GPU, timed with CUDA synchronisation;
   ``moe_matrix``: the same arms (ours, Mixtral's block, the floor) under four forced
   routings, 64 to 16,384 tokens, with peak memory (``benchmarks/bench_moe_matrix.py``);
8. ``screenshot``: the dashboard's Memory page on the CUDA run in headless Chromium, where
   Streamlit, Playwright and Chromium are installed; elsewhere a second step does it:
   ``python -m benchmarks.gpu_check --screenshot-from DIR/gpu-runs.sqlite``.

Each section runs on its own: an error or a missing package ends that section only, and the
report (``gpu-latest.md`` and ``gpu-latest.json``, into ``DIR`` and, on a GPU,
``benchmarks/results/``) is rewritten after every section, so a crash or a timeout keeps
everything measured before it. On a machine without CUDA it says so in one line and exits 0;
``--device cpu --quick`` runs every section on the CPU instead (a dry run of the code paths,
reported apart, never into ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mahiax import metric_keys as mk

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
REPORT = "gpu-latest"  # .md and .json
STORE_FILE = "gpu-runs.sqlite"
SCREENSHOT = "gpu-memory-page.png"
LESSONS = ("05_memory_meter", "08_amp_and_clipping")
TOLERANCE = 0.05  # categories against the allocator
AMP_RUNS = ("fp16", "bf16")
SECTIONS = ("amp", "spike", "meter", "store", "catalog", "lessons", "moe", "moe_matrix",
            "screenshot")


def log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the report: sections written as they finish -------------------------------------------


@dataclass(kw_only=True)
class Section:
    """One part of the report: its verdict (``ok``, ``failed``, ``skipped``), what it found."""

    name: str
    title: str
    status: str = "running"
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)  # markdown
    data: dict = field(default_factory=dict)  # figures, for the JSON
    checks: list[dict] = field(default_factory=list)  # {"what", "ok", "detail"}

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"what": what, "ok": bool(ok), "detail": detail})
        log(f"  {'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}")
        return bool(ok)

    def skip(self, why: str) -> None:
        self.status = "skipped"
        self.lines.append(f"Skipped: {why}")
        log(f"  skipped: {why}")


class Report:
    """The sections so far, written (Markdown and JSON) to every target after each one."""

    def __init__(self, targets: list[Path], header: dict):
        self.targets = targets
        self.header = header
        self.sections: dict[str, Section] = {}

    @classmethod
    def load(cls, path: Path, targets: list[Path]) -> Report:
        """A report written before (its JSON), to add a section to."""
        saved = json.loads(path.read_text())
        report = cls(targets, saved["header"])
        for s in saved["sections"]:
            report.sections[s["name"]] = Section(**s)
        return report

    @contextlib.contextmanager
    def section(self, name: str, title: str) -> Iterator[Section]:
        """Run one section: its exception is recorded, never raised; the report is written."""
        s = self.sections[name] = Section(name=name, title=title)
        log(f"{title} ...")
        t0 = time.perf_counter()
        try:
            yield s
        except Exception as e:  # one section's failure must not lose the others
            s.status = "failed"
            tail = "".join(traceback.format_exception(e)[-6:])
            s.lines.append(f"**Error**: `{type(e).__name__}: {_one_line(str(e))}`")
            s.lines += ["", "```", tail.rstrip(), "```"]
            log(f"  FAILED: {type(e).__name__}: {e}")
        else:
            if s.status == "running":
                s.status = "ok" if all(c["ok"] for c in s.checks) else "failed"
        finally:
            s.seconds = time.perf_counter() - t0
            log(f"  {s.status} ({s.seconds:.1f} s)")
            self.write()

    def markdown(self) -> str:
        h = self.header
        out = [f"# GPU check ({h['device']})", "",
               f"Command: `{h['command']}` · started {h['started']} · "
               f"{h.get('total_s', 0):.0f} s in all.", ""]
        out += [f"- {k}: {v}" for k, v in h.get("environment", {}).items()]
        out += ["", "| section | status | seconds | checks passed |", "|---|---|---|---|"]
        for s in self.sections.values():
            passed = sum(c["ok"] for c in s.checks)
            out.append(f"| {s.title} | {s.status} | {s.seconds:.1f} | "
                       f"{passed}/{len(s.checks)} |")
        for s in self.sections.values():
            out += ["", f"## {s.title}", "", *s.lines]
            if s.checks:
                out += ["", "| check | result | measured |", "|---|---|---|"]
                out += [f"| {c['what']} | {'yes' if c['ok'] else '**NO**'} | "
                        f"{c['detail'].replace('|', '/')} |" for c in s.checks]
        return "\n".join(out).rstrip() + "\n"

    def write(self) -> None:
        payload = {"header": self.header,
                   "sections": [s.__dict__ for s in self.sections.values()]}
        for target in self.targets:
            target.mkdir(parents=True, exist_ok=True)
            (target / f"{REPORT}.json").write_text(json.dumps(payload, indent=1, default=str))
            (target / f"{REPORT}.md").write_text(self.markdown())


def _one_line(text: str, limit: int = 300) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[:limit] + " ..."


def _mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.2f} MiB"


# --- what every section shares ---------------------------------------------------------------


@dataclass(kw_only=True)
class Context:
    device: torch.device  # cuda:N, or cpu for a dry run
    quick: bool  # dry run sizes: a few steps, a few rounds
    out: Path  # where the store, executed lessons and screenshots go
    deadline: float  # time.monotonic() after which sections are skipped

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def store(self) -> Path:
        return self.out / "work" / STORE_FILE

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def environment(ctx: Context) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "CUDA (torch built with)": torch.version.cuda or "none"}
    if ctx.cuda:
        p = torch.cuda.get_device_properties(ctx.device)
        env.update({"GPU": p.name, "compute capability": f"{p.major}.{p.minor}",
                    "GPU memory": f"{p.total_memory / 2**30:.1f} GiB",
                    "bf16 supported": torch.cuda.is_bf16_supported(),
                    "cuDNN": torch.backends.cudnn.version()})
    else:
        env["GPU"] = "none: a dry run on the CPU"
    for dist in ("transformers", "numpy", "pandas", "nbclient", "ipykernel", "plotly",
                 "streamlit", "playwright"):
        env[dist] = _version(dist) or "not installed"
    env["chromium"] = "yes" if Path("/usr/bin/chromium").exists() else "no"
    return env


# --- 2. AMP: 300 recorded steps in fp16 + GradScaler and in bf16 ------------------------------


def amp_section(ctx: Context, s: Section) -> None:
    from mahiax.config import teaching
    from mahiax.recording import record_training
    from mahiax.store import RunReader
    from mahiax.telemetry.cadence import Cadence

    steps = 20 if ctx.quick else 300
    ctx.store.parent.mkdir(parents=True, exist_ok=True)
    s.lines.append(f"The teaching model, {steps} steps per run, recorded into the run store "
                   "with the probes on (memory by category every step).")
    s.lines += ["", "| run | steps | losses finite | final loss | loss scale (min / final) | "
                "skipped steps | median step ms | peak allocated |",
                "|---|---|---|---|---|---|---|---|"]
    for precision in AMP_RUNS:
        if precision == "bf16" and ctx.cuda and not torch.cuda.is_bf16_supported():
            s.check("bf16 run", False, "this GPU does not support bf16")
            continue
        name = f"gpu-{precision}" if ctx.cuda else f"dry-{precision}"
        config = teaching().replace(device=ctx.device.type, precision=precision, seed=0,
                                    max_steps=steps)
        records: list = []
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        record_training(config, name, steps, store=ctx.store, checkpoint_every=steps,
                        cadence=Cadence(snapshot_every=50, memory_every=50,
                                        categories_every=1),
                        on_step=records.append)
        peak = torch.cuda.max_memory_allocated(ctx.device) if ctx.cuda else None
        losses = [r.loss for r in records] + [v for r in records for v in r.task_losses.values()]
        finite = all(math.isfinite(v) for v in losses)
        scales = [r.scale for r in records]
        skipped = sum(r.skipped for r in records)
        ms = statistics.median(r.step_time for r in records[1:] or records) * 1e3
        with RunReader(ctx.store) as reader:
            stored = reader.scalars(name)
        mem_keys = sorted(k for k in stored.columns if k.startswith(mk.MEM_PREFIX))
        s.data[name] = {"precision": precision, "steps": len(records), "finite": finite,
                        "final_loss": records[-1].loss, "scale_min": min(scales),
                        "scale_final": scales[-1], "skipped": skipped,
                        "median_step_ms": ms, "peak_allocated": peak, "mem_keys": mem_keys,
                        "scale_per_step": scales, "skipped_steps": [r.step for r in records
                                                                      if r.skipped]}
        s.lines.append(f"| `{name}` | {len(records)} | {'yes' if finite else '**NO**'} | "
                       f"{records[-1].loss:.4f} | {min(scales):g} / {scales[-1]:g} | {skipped} "
                       f"| {ms:.1f} | {_mb(peak)} |")
        s.check(f"{name}: {steps} steps, every loss finite", finite and len(records) == steps,
                f"{len(records)} steps, final loss {records[-1].loss:.4f}")
        if precision == "fp16":
            s.check(f"{name}: GradScaler on (scale recorded, skipped steps counted)",
                    stored[mk.AMP_SCALE].notna().all() and mk.AMP_SKIPPED_TOTAL in stored,
                    f"scale {min(scales):g}..{max(scales):g}, {skipped} skipped")
        else:
            s.check(f"{name}: no loss scaling (scale 1, nothing skipped)",
                    set(scales) == {1.0} and skipped == 0, f"{skipped} skipped")
        every_step = [mk.MEM_PARAMS, mk.MEM_GRADS, mk.MEM_OPTIMIZER, mk.MEM_SAVED]
        if ctx.cuda:  # the allocator gives the rest every step too
            every_step += [mk.MEM_OTHER, mk.MEM_TOTAL, mk.MEM_RESERVED, mk.MEM_PEAK]
        missing = [k for k in every_step if k not in stored or stored[k].isna().any()]
        s.check(f"{name}: memory by category stored every step", not missing,
                f"missing at some step: {', '.join(missing)}" if missing
                else ", ".join(mem_keys))
    s.lines += ["", "Skipped steps (fp16): " + "; ".join(
        f"`{n}`: {d['skipped_steps'][:20]}" for n, d in s.data.items()
        if d["precision"] == "fp16")]


# --- 2b. spike capture: a step that holds 256 MiB more saves one allocator snapshot ---------


SPIKE_HOLD = 256 * 2**20  # bytes the loop starts holding at SPIKE_AT (a leak, on purpose)
SPIKE_AT = 8


def spike_section(ctx: Context, s: Section) -> None:
    import pickle

    from mahiax.config import teaching
    from mahiax.recording import record_training
    from mahiax.store import RunReader
    from mahiax.telemetry.cadence import Cadence
    from mahiax.telemetry.spikes import SPIKE_KEY, spike_snapshots

    name = "gpu-spike" if ctx.cuda else "dry-spike"
    held: list[torch.Tensor] = []

    def leak(record) -> None:  # from step SPIKE_AT on, the loop keeps 256 MiB alive
        if record.step == SPIKE_AT:
            held.append(torch.ones(SPIKE_HOLD // 4, device=ctx.device))

    config = teaching().replace(device=ctx.device.type, seed=0, max_steps=20)
    record_training(config, name, 20, store=ctx.store, checkpoint_every=20,
                    cadence=Cadence(snapshot_every=50, memory_every=50,
                                    spike_bytes=64 * 2**20, spike_history=20_000),
                    on_step=leak)
    held.clear()
    with RunReader(ctx.store) as reader:
        stored = reader.scalars(name)
        found = spike_snapshots(reader, name)
    jumps = stored[SPIKE_KEY].dropna() if SPIKE_KEY in stored.columns else stored.index[:0]
    jumps = jumps if len(jumps) else {}
    s.lines.append(f"The teaching model, 20 steps; after step {SPIKE_AT} the loop holds "
                   f"{_mb(SPIKE_HOLD)} more; spike threshold 64 MiB.")
    if not ctx.cuda:
        s.check("on the CPU no snapshot is taken (the allocator history is CUDA's)",
                not found and len(jumps) == 0, f"{len(found)} snapshots")
        return
    s.check("one spike recorded, at the step after the loop started holding memory",
            list(dict(jumps)) == [SPIKE_AT + 1],
            ", ".join(f"step {i}: {_mb(v)}" for i, v in dict(jumps).items()) or "none")
    s.check("its snapshot's path is in the store and the file exists",
            len(found) == 1 and all(p.exists() for p in found.values()),
            ", ".join(str(p) for p in found.values()))
    for step, path in found.items():
        with open(path, "rb") as f:
            snap = pickle.load(f)  # our own file, written by torch.cuda.memory._dump_snapshot
        s.check("the snapshot holds the allocator's segments and trace (memory_viz reads it)",
                isinstance(snap, dict) and "segments" in snap and "device_traces" in snap,
                f"{path.stat().st_size / 2**20:.1f} MiB, keys {sorted(snap)[:4]}")
        s.data["snapshot"] = {"step": step, "path": str(path.relative_to(ctx.store.parent))}


# --- 3. the meter against the allocator --------------------------------------------------------


def _independent(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device) -> dict[str, int]:
    """Bytes on ``device`` of the model's parameters, their gradients, the optimizer's state
    and the model's buffers, counted here from the tensors themselves, apart from the meter.
    (AdamW keeps its step counters on the CPU unless fused or capturable: not counted.)"""
    def on(t: torch.Tensor) -> bool:
        return t.device.type == device.type and (device.index is None
                                                 or t.device.index == device.index)

    def total(tensors) -> int:
        seen: dict[int, int] = {}
        for t in tensors:
            if isinstance(t, torch.Tensor) and on(t):
                st = t.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
        return sum(seen.values())

    params = list(model.parameters())
    state = [v for st in optimizer.state.values() for v in st.values()]
    return {"params": total(params), "grads": total(p.grad for p in params),
            "optimizer": total(state), "buffers": total(model.buffers())}


def _categories_row(label: str, cats, allocated: int | None) -> str:
    known = [cats.params, cats.grads, cats.optimizer, cats.saved]
    return (f"| {label} | " + " | ".join(_mb(v) for v in known) + f" | {_mb(cats.other)} | "
            f"{_mb(cats.total)} | {_mb(allocated)} |")


def _within(a: float | None, b: float | None, tol: float = TOLERANCE) -> tuple[bool, str]:
    if a is None or b is None:
        return False, f"{_mb(a)} vs {_mb(b)}"
    rel = abs(a - b) / max(abs(b), 1.0)
    return rel <= tol, f"{_mb(a)} vs {_mb(b)} ({rel:.1%})"


def _warm_up_libraries(device: torch.device) -> None:
    """One small forward and backward on ``device``: cuBLAS allocates its workspaces (through
    the caching allocator, one per handle: the backward runs on its own thread) on first use,
    and they must not be counted as the model's."""
    layer = torch.nn.Linear(64, 64, device=device)
    layer(torch.randn(8, 64, device=device)).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_adds_up(s: Section, prefix: str, cats, allocated: int | None) -> None:
    """The categories add up to the meter's total and, on a GPU, that total is the
    allocator's own figure (both within the tolerance)."""
    parts = [cats.params, cats.grads, cats.optimizer, cats.saved, cats.other]
    ok, detail = _within(sum(v or 0 for v in parts), cats.total)
    s.check(f"{prefix}the categories add up to the meter's total", ok, detail)
    if allocated is not None:
        ok, detail = _within(cats.total, allocated)
        s.check(f"{prefix}the meter's total = torch.cuda.memory_allocated", ok, detail)


def meter_section(ctx: Context, s: Section) -> None:
    from mahiax.config import medium, teaching
    from mahiax.telemetry import MemoryMeter
    from mahiax.training.trainer import Trainer

    # medium: big enough that what the allocator holds besides the model is small beside it
    config = (teaching() if ctx.quick else medium()).replace(device=ctx.device.type, seed=0)
    cuda = ctx.cuda

    def allocated() -> int | None:
        return torch.cuda.memory_allocated(ctx.device) if cuda else None

    _warm_up_libraries(ctx.device)
    before = allocated()
    trainer = Trainer(config)
    for _ in range(3):  # gradients and AdamW's state exist from now on
        trainer.step()
    ctx.sync()
    model, opt = trainer.model, trainer.optimizer
    meter = MemoryMeter(ctx.device)
    ind = _independent(model, opt, ctx.device)
    between = meter.categories([model, trainer.weighting], opt, full=True)
    a_between = allocated()
    s.lines += [f"The {'teaching' if ctx.quick else 'medium'} model after 3 fp32 steps.", "",
                "| when | params | grads | optimizer | saved | other | meter total | "
                "torch.cuda.memory_allocated |", "|---|---|---|---|---|---|---|---|",
                _categories_row("between steps", between, a_between)]
    s.check("the meter reads the device it was given",
            str(between.device).startswith(ctx.device.type), f"{between.device} · {between.label}")
    for key in ("params", "grads", "optimizer"):
        ok, detail = _within(getattr(between, key), ind[key])
        s.check(f"{key}: the meter's figure = bytes counted from the tensors", ok, detail)
    _check_adds_up(s, "", between, a_between if cuda else None)
    if cuda:
        expected = between.params + between.grads + between.optimizer + ind["buffers"]
        ok, detail = _within(expected, a_between - before)
        s.check("params + grads + optimizer (+ the model's buffers, "
                f"{_mb(ind['buffers'])}, in 'other') = what the allocator gained since the "
                "model was built", ok, detail)
    # a live graph: the forward done, its backward not yet
    batch = trainer.data.batch(10_000).to(ctx.device)
    pre = allocated()
    total, *_ = trainer.loss_of(batch)
    ctx.sync()
    live = meter.categories([model, trainer.weighting], opt, graph=total, full=True)
    a_live = allocated()
    s.lines.append(_categories_row("live graph (forward done)", live, a_live))
    s.check("memory saved for backward > 0 with a live graph", (live.saved or 0) > 0,
            _mb(live.saved))
    _check_adds_up(s, "live graph: ", live, a_live if cuda else None)
    if cuda:
        ok, detail = _within(live.saved, a_live - pre)
        s.check("saved for backward = what the forward added to the allocator", ok, detail)
        s.data.update({"forward_gain": a_live - pre, "reserved": live.reserved,
                       "peak": live.peak})
    del total
    # a CPU model on this machine is read on the CPU, never from the GPU's allocator
    cpu_trainer = Trainer(teaching().replace(device="cpu", seed=0))
    cpu_trainer.step()
    cpu = MemoryMeter("cpu").categories(cpu_trainer.model, cpu_trainer.optimizer)
    s.check("a CPU model on this machine is read on the CPU",
            str(cpu.device) == "cpu" and cpu.params > 0,
            f"{cpu.device} · {cpu.label} · params {_mb(cpu.params)}")
    default = MemoryMeter().device
    s.check("MemoryMeter() with no device reads the CPU", str(default) == "cpu", str(default))
    s.data.update({"between": between.to_dict(), "live": live.to_dict(), "independent": ind,
                   "allocated_between": a_between, "allocated_live": a_live,
                   "allocated_before_model": before})


# --- 4. the store, for the dashboard ---------------------------------------------------------


def copy_store(src: Path, dest: Path) -> Path:
    """A consistent one-file copy of a run store (SQLite's backup: the WAL folded in)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(f"file:{src}?mode=ro", uri=True)) as a, \
            contextlib.closing(sqlite3.connect(dest)) as b:
        a.backup(b)
        # a rollback-journal file opens read-only in a read-only folder; a WAL one does not
        b.execute("PRAGMA journal_mode=DELETE")
    return dest


def store_section(ctx: Context, s: Section) -> None:
    from mahiax.store import RunReader

    if not ctx.store.exists():
        s.skip("no run was recorded (the amp section failed first)")
        return
    dest = copy_store(ctx.store, ctx.out / STORE_FILE)
    # memory snapshots: their paths in the store are relative to the store's folder
    for pickle_file in ctx.store.parent.rglob("*.pickle"):
        target = ctx.out / pickle_file.relative_to(ctx.store.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pickle_file, target)
    with RunReader(ctx.store) as reader:
        table = reader.runs()
        runs = [f"`{r.name}` ({r.status}, device `{r.device}`, {r.steps} steps)"
                for r in table.itertuples()]
        keys = {n: [k for k in reader.scalar_keys(n) if k.startswith(mk.MEM_PREFIX)]
                for n in table["name"]}
        snapshots = {n: reader.snapshot_keys(n) for n in table["name"]}
    s.data.update({"store": str(dest), "runs": runs, "mem_keys": keys, "snapshots": snapshots})
    s.lines += [f"Store copied to `{dest.name}` in the output folder: " + ", ".join(runs) + ".",
                "", "Memory keys stored: " + "; ".join(f"`{n}`: {', '.join(k)}"
                                                        for n, k in keys.items())]
    spikes = sorted(p.name for p in ctx.out.rglob("*.pickle"))
    if spikes:
        s.lines.append("\nMemory snapshots found in the output folder (open them at "
                       "https://pytorch.org/memory_viz): " + ", ".join(spikes))
    s.check("the store holds the CUDA runs" if ctx.cuda else "the store holds the runs",
            len(runs) >= 1, f"{len(runs)} runs")


# --- 5. the catalog's verdicts on the GPU next to the CPU's --------------------------------


_ONE_VERDICT = """
import json, sys
from mahiax import bugs
entry_id, device = sys.argv[1], sys.argv[2]
import torch
entry = bugs.get(entry_id)
if torch.device(device).type not in entry.devices:  # the entry refuses it, saying why
    found = {"label": "refused", "reason": f"runs on {', '.join(entry.devices)}: "
             + entry.device_note}
else:  # anything raised here is a crash, reported with its last line
    v = bugs.verdict(entry_id, device=device)
    found = {"label": v.label, "reason": v.reason, "errors": {
        k: (f"{o.error_type} at step {o.error_step}: " + (o.error_message or "").strip()
            .splitlines()[0]) if o.error_type else "none" for k, o in v.outcomes.items()}}
print(json.dumps(found))
"""


_OUT_OF_RANGE_ON_GPU = """
import torch
emb = torch.nn.Embedding(1000, 8).to(sys.argv[1])
try:
    emb(torch.tensor([[12, 9999]], device=sys.argv[1]))
    torch.cuda.synchronize()
    print("no error")
except Exception as e:
    print(f"{type(e).__name__}: {str(e).strip().splitlines()[0]}")
try:
    torch.ones(1, device=sys.argv[1]) + 1
    print("CUDA still usable afterwards")
except Exception as e:
    print(f"afterwards, any CUDA op: {type(e).__name__}: {str(e).strip().splitlines()[0]}")
"""


def _out_of_range_on_gpu(device: str) -> list[str]:
    """What an embedding given an id past its table does on the GPU (expert-index's note),
    in a process of its own: a device-side assert leaves its CUDA context unusable."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", "import sys\n" + _OUT_OF_RANGE_ON_GPU,
                           device], capture_output=True, text=True, timeout=120)
    return done.stdout.strip().splitlines() or [done.stderr.strip().splitlines()[-1]]


def _verdict_in_process(entry_id: str, device: str, hide_gpu: bool, timeout_s: float) -> dict:
    """One entry's verdict in a process of its own: a CUDA device-side assert (an index out of
    range on the GPU) leaves that process's CUDA context unusable, so it must not be ours.
    ``hide_gpu``: the process sees no GPU (``CUDA_VISIBLE_DEVICES=""``), as on a CPU-only
    machine."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": _absolute_pythonpath(), "OMP_NUM_THREADS": "1"}
    if hide_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    try:
        done = subprocess.run([sys.executable, "-c", _ONE_VERDICT, entry_id, device],
                              cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"label": "timeout", "reason": f"no verdict within {timeout_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"label": "crashed", "reason": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def catalog_section(ctx: Context, s: Section) -> None:
    """Each entry's verdict three ways, each in its own process: with no GPU visible (what a
    CPU-only machine measures), on the CPU of this GPU machine (the meter must not read the
    GPU because one exists), and on the GPU (``bugs.verdict(id, device=...)``). A label that
    differs must be explained by the entry's ``device_note``."""
    from concurrent.futures import ThreadPoolExecutor

    from mahiax import bugs

    entries = bugs.entries()[:3] if ctx.quick else bugs.entries()
    timeout_s = max(30.0, ctx.left() - 10)
    jobs = {(e.id, kind): (e.id, dev, hide) for e in entries for kind, (dev, hide) in {
        "no_gpu": ("cpu", True), "cpu": ("cpu", False), "gpu": (str(ctx.device), False),
    }.items()}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        futures = {key: pool.submit(_verdict_in_process, *args, timeout_s)
                   for key, args in jobs.items()}
        found = {key: f.result() for key, f in futures.items()}
    s.lines += [f"GPU column: `bugs.verdict(id, device='{ctx.device}')`, each entry in a "
                "process of its own.", "",
                "| entry | no GPU visible | CPU, GPU visible | GPU | same | the GPU run, or "
                "why it differs |", "|---|---|---|---|---|---|"]
    for e in entries:
        hidden, cpu, gpu = (found[(e.id, k)] for k in ("no_gpu", "cpu", "gpu"))
        labels = {hidden["label"], cpu["label"], gpu["label"]}
        same = len(labels) == 1
        explained = not same and hidden["label"] == cpu["label"] and bool(e.device_note)
        if same:
            why = "; ".join(f"{k}: {v}" for k, v in gpu.get("errors", {}).items())
        elif explained:
            why = f"catalog: {e.device_note}. Measured: {gpu['reason']}"
        else:
            why = gpu["reason"] if gpu["label"] != cpu["label"] else cpu["reason"]
        s.data[e.id] = {"no_gpu": hidden, "cpu": cpu, "gpu": gpu, "explained": explained}
        s.lines.append(f"| {e.id} | {hidden['label']} | {cpu['label']} | {gpu['label']} | "
                       f"{'yes' if same else ('explained' if explained else '**no**')} | "
                       f"{_one_line(why, 400).replace('|', '/')} |")
        s.check(f"{e.id}: the same verdict on every device, or the difference explained",
                same or explained,
                " / ".join(str(x["label"]) for x in (hidden, cpu, gpu)))
    if ctx.cuda:
        seen = _out_of_range_on_gpu(str(ctx.device))
        s.data["out_of_range_on_gpu"] = seen
        s.lines += ["", "Why `expert-index` is measured on the CPU: an embedding given id 9999 "
                    "of 1000 on the GPU, in a process of its own: " + " / ".join(
                        f"`{line}`" for line in seen)]


# --- 6. lessons 05 and 08 on the GPU machine -----------------------------------------------


def _absolute_pythonpath() -> str:
    """PYTHONPATH with the repository first and every entry absolute: the kernel runs in
    notebooks/, where a relative ``.`` would name the wrong folder."""
    parts = [str(ROOT)] + [str(Path(p).resolve()) for p in
                           os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def lessons_section(ctx: Context, s: Section) -> None:
    missing = [m for m in ("nbclient", "nbformat", "ipykernel", "plotly", "ipywidgets")
               if not _has(m)]
    if missing:
        s.skip(f"{', '.join(missing)} not installed (carry the wheels in `.whl/`)")
        return
    import nbformat
    from nbclient import NotebookClient

    from tests.notebook_env import (
        KERNEL_NAME,
        NOTEBOOKS,
        environ_set,
        jupyter_env,
        notebook_path,
    )

    s.lines += ["| lesson | cells | errors | seconds | GPU lines printed |",
                "|---|---|---|---|---|"]
    dest = ctx.out / "lessons"
    dest.mkdir(parents=True, exist_ok=True)
    for name in LESSONS:
        if ctx.left() < 60:
            s.check(f"{name}: runs top to bottom", False, "out of time")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            env = jupyter_env(Path(tmp), threads=4)
            env["PYTHONPATH"] = _absolute_pythonpath()
            with environ_set(env):
                nb = nbformat.read(notebook_path(name), as_version=4)
                client = NotebookClient(nb, timeout=int(min(240, ctx.left())),
                                        kernel_name=KERNEL_NAME, startup_timeout=120,
                                        allow_errors=True,
                                        resources={"metadata": {"path": str(NOTEBOOKS)}})
                t0 = time.perf_counter()
                client.execute(env=dict(os.environ))
                seconds = time.perf_counter() - t0
        nbformat.write(nb, dest / f"{name}.ipynb")
        code = [c for c in nb.cells if c.cell_type == "code"]
        errors = []
        for i, c in enumerate(code):
            errs = [o for o in c.get("outputs", []) if o.output_type == "error"]
            expected = "raises-exception" in c.metadata.get("tags", [])
            if bool(errs) != expected:
                what = f"{errs[0].ename}: {_one_line(errs[0].evalue, 120)}" if errs \
                    else "tagged raises-exception, raised nothing"
                errors.append(f"code cell {i}: {what}")
        printed = [line for c in code for o in c.get("outputs", [])
                   if o.output_type == "stream" for line in o.text.splitlines()
                   if any(w in line for w in ("GPU", "cuda", "CUDA"))]
        s.data[name] = {"cells": len(code), "errors": errors, "seconds": seconds,
                        "gpu_lines": printed[:8]}
        shown = "<br>".join(p.replace("|", "/")[:120] for p in printed[:4])
        s.lines.append(f"| {name} | {len(code)} | {len(errors)} | {seconds:.1f} | {shown} |")
        s.check(f"{name}: runs top to bottom", not errors, "; ".join(errors)[:300])
    s.lines.append("\nThe executed notebooks (with outputs) are in `lessons/` of the output "
                   "folder.")


# --- 7. the MoE benchmark on the GPU ---------------------------------------------------------


def moe_section(ctx: Context, s: Section) -> None:
    from benchmarks import bench_moe as bm
    from mahiax.config import medium, teaching

    sizes = [bm.Size.of("teaching", teaching())]
    if not ctx.quick:
        sizes += [bm.Size.of("medium", medium()),
                  bm.Size(name="large", batch=16, seq=512, d_model=1024, hidden=2816, experts=8,
                          top_k=2)]
    rounds = 2 if ctx.quick else 20
    names = [bm.FLOOR, bm.OURS, bm.MIXTRAL, bm.MIXTRAL_GROUPED, bm.SUMMARY, bm.PER_TOKEN]
    s.lines.append(f"float32, train mode, forward + backward, {rounds} interleaved rounds, each "
                   "call timed with CUDA synchronisation; ratios paired within a round "
                   "(median). The per-token loop runs at the teaching size only.")
    for size in sizes:
        if ctx.left() < 45:
            s.lines.append(f"\n**{size.label()}**: not run, out of time.")
            continue
        arms: dict = {}
        failed: dict[str, str] = {}
        with torch.device(ctx.device):  # weights, inputs and Mixtral's block on the GPU
            for name in names:
                if name == bm.PER_TOKEN and size.name != "teaching":
                    continue
                try:
                    arm = bm.build_arms(size, names=[name])[name]
                    arm()  # warm-up: kernels, workspaces
                    ctx.sync()
                    arms[name] = arm
                except Exception as e:  # e.g. grouped_mm where this GPU or dtype lacks it
                    failed[name] = f"{type(e).__name__}: {_one_line(str(e), 160)}"
        agree = bm.agreement(arms) if bm.OURS in arms else {}

        def synced(arm: Callable[[], None]) -> Callable[[], None]:
            def call() -> None:
                arm()
                ctx.sync()
            return call

        ctx.sync()
        times = bm.interleaved({n: synced(a) for n, a in arms.items()}, rounds,
                               {bm.PER_TOKEN: max(1, rounds // 4)})
        s.lines += ["", f"**{size.label()}**", "",
                    "| arm | runs | median ms | / floor | ours faster by | max abs diff vs ours "
                    "(out, grad x) |", "|---|---|---|---|---|---|"]
        fig: dict = {}
        for name, t in times.items():
            ms = statistics.median(t.values()) * 1e3
            over = bm.paired_ratios(t, times[bm.FLOOR]) if bm.FLOOR in times else []
            faster = bm.paired_ratios(t, times[bm.OURS]) if bm.OURS in times else []
            diff = agree.get(name)
            fig[name] = {"ms": ms, "over_floor": statistics.median(over) if over else None,
                         "over_ours": statistics.median(faster) if faster else None,
                         "diff": diff}
            s.lines.append(
                f"| {name} | {len(t)} | {ms:.3f} | "
                + (f"{fig[name]['over_floor']:.2f}" if over and name != bm.FLOOR else "-")
                + " | " + (f"{fig[name]['over_ours']:.2f}" if faster and name != bm.OURS
                           else "-")
                + " | " + (f"{diff['output']:.1e}, {diff['input_grad']:.1e}" if diff else "-")
                + " |")
        for name, why in failed.items():
            s.lines.append(f"| {name} | 0 | could not run: {why.replace('|', '/')} | | | |")
        s.data[size.name] = {"label": size.label(), "arms": fig, "failed": failed}
        if bm.OURS in arms:  # float32 sums in another order differ in the last digits only
            ours = arms[bm.OURS]
            scale = {"output": float(ours.out.abs().max()),
                     "input_grad": float(ours.x.grad.abs().max())}
            for name, d in fig.items():
                if d["diff"] is not None:
                    rel = max(d["diff"][k] / max(scale[k], 1e-12) for k in scale)
                    s.check(f"{size.name}: {name} computes what ours computes", rel < 1e-3,
                            f"largest difference {rel:.1e} of the largest value")
        if bm.MIXTRAL in fig:
            s.data[size.name]["mixtral_over_ours"] = fig[bm.MIXTRAL]["over_ours"]


# --- 7b. the MoE matrix under forced routings on the GPU ------------------------------------


def moe_matrix_section(ctx: Context, s: Section) -> None:
    from benchmarks import bench_moe_matrix as mm

    rounds = 2 if ctx.quick else 10
    tokens = (64, 256) if ctx.quick else (64, 256, 1024, 4096, 16384)
    plan = {mm.TEACHING: dict.fromkeys(tokens, rounds)}
    if not ctx.quick:
        plan[mm.MEDIUM] = dict.fromkeys(tokens, rounds)
    result = mm.run(device=ctx.device, plan=plan)
    s.data.update(result)
    s.lines.append(mm.markdown(result))
    cells = [c for shape in result["shapes"].values() for r in shape["routings"].values()
             for c in r["cells"].values()]
    s.check("every arm routed exactly the forced ids", all(c["same_ids"] for c in cells))
    worst = max((d[k] / max(c["ours_scale"][k], 1e-12) for c in cells
                 for a in c["arms"].values() if (d := a.get("max_abs_diff_vs_ours"))
                 for k in d), default=0.0)
    s.check("Mixtral's blocks compute what ours computes (output, input gradient)",
            worst < 1e-3, f"largest difference {worst:.1e} of the largest value")


# --- 8. the dashboard's Memory page in headless Chromium -------------------------------------


def can_screenshot() -> str | None:
    """Why the screenshot cannot be taken here, or None when it can."""
    from tests.servers import CHROMIUM

    missing = [m for m in ("streamlit", "plotly", "playwright") if not _has(m)]
    if missing:
        return f"{', '.join(missing)} not installed"
    if not CHROMIUM.exists():
        return f"no chromium at {CHROMIUM}"
    return None


def screenshot_memory_page(store: Path, dest: Path, run: str | None = None) -> dict:
    """Open ``store`` in the real dashboard (``streamlit run dashboard``), pick ``run`` (default:
    the newest CUDA run, else the newest), open the Memory page in headless Chromium, save a
    full-page screenshot to ``dest`` and return what the page showed."""
    import subprocess

    from playwright.sync_api import expect, sync_playwright

    from mahiax.store import RunReader
    from tests.servers import CHROMIUM, CHROMIUM_ARGS, free_port, stop, wait_until_up

    with tempfile.TemporaryDirectory() as tmp:
        work = copy_store(store, Path(tmp) / "mahiax.sqlite")  # the source may be read-only
        snapshots = store.parent / "memory_snapshots"  # spike snapshots: paths relative to it
        if snapshots.is_dir():
            shutil.copytree(snapshots, Path(tmp) / snapshots.name)
        with RunReader(work) as reader:
            table = reader.runs()
        if run is None:  # the newest CUDA run, an fp16 one (its loss scale) if there is one
            cuda = table[table["device"].astype(str).str.startswith("cuda")]
            pool = cuda if len(cuda) else table
            fp16 = pool[pool["name"].str.endswith("fp16")]
            run = str((fp16 if len(fp16) else pool).iloc[-1]["name"])
        device = str(table.set_index("name").loc[run, "device"])
        port = free_port()
        env = {**os.environ, "MAHIAX_STORE": str(work), "MAHIAX_DASHBOARD_AUTOSTART": "0",
               "PYTHONPATH": _absolute_pythonpath()}
        log_file = open(Path(tmp) / "streamlit.log", "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true",
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(f"{url}/_stcore/health", server, 60, "streamlit")
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1600, "height": 1100})
                    page.set_default_timeout(30_000)
                    page.goto(f"{url}/memory")
                    box = page.locator('[data-testid="stSidebar"]').get_by_role(
                        "combobox", name="Run")
                    box.click()
                    page.get_by_role("option").filter(has_text=f"{run} ·").first.click()
                    expect(page.get_by_role("heading", name="Memory", exact=True)
                           ).to_be_visible()
                    chart = page.locator('[data-testid="stPlotlyChart"], .js-plotly-plot')
                    expect(chart.first).to_be_visible()
                    stacked = page.get_by_text("saved for backward", exact=True).first
                    try:  # the metric above the stacked chart: only a categories run has it
                        expect(stacked).to_be_visible()
                    except AssertionError:
                        pass  # an older run: the screenshot shows what the page says instead
                    page.wait_for_timeout(1500)  # the remaining charts lay out
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(dest), full_page=True)
                    text = page.locator('[data-testid="stMain"]').inner_text()
                    exceptions = page.locator('[data-testid="stException"]').count()
                finally:
                    browser.close()
        finally:
            stop(server)
            log_file.close()
    label = "GPU" if device.startswith("cuda") else "CPU"
    return {"run": run, "device": device, "png": str(dest), "exceptions": exceptions,
            "labelled": f"**{label}** memory".replace("**", "") in text,
            "stacked": "saved for backward" in text}


def screenshot_section(ctx: Context | None, s: Section, store: Path, dest: Path) -> None:
    why = can_screenshot()
    if why is not None:
        s.skip(f"{why}. Take it on a machine with the dashboard: `python -m "
               f"benchmarks.gpu_check --screenshot-from <output folder>/{STORE_FILE}`")
        return
    shot = screenshot_memory_page(store, dest)
    s.data.update(shot)
    s.lines.append(f"Run `{shot['run']}` (device `{shot['device']}`), the Memory page: "
                   f"![Memory page]({Path(shot['png']).name})")
    s.check("the page draws the memory categories stacked, no exception",
            shot["stacked"] and shot["exceptions"] == 0, f"{shot['exceptions']} exceptions")
    s.check(f"the page says which device ({shot['device']})", shot["labelled"])


# --- the command -----------------------------------------------------------------------------


def _targets(ctx: Context) -> list[Path]:
    """Where the report goes: the output folder, and benchmarks/results/ for a GPU run."""
    return [ctx.out, RESULTS] if ctx.cuda else [ctx.out]


def run_all(ctx: Context, command: str, only: set[str] | None = None) -> Report:
    started = time.monotonic()
    header = {"device": str(ctx.device) + (" (dry run)" if not ctx.cuda else ""),
              "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "environment": environment(ctx)}
    shutil.rmtree(ctx.out / "work", ignore_errors=True)  # a store left by an earlier run
    report = Report(_targets(ctx), header)
    for key, value in header["environment"].items():
        log(f"{key}: {value}")
    steps: list[tuple[str, str, Callable[[Context, Section], None], float]] = [
        ("amp", "fp16 + GradScaler and bf16 training", amp_section, 60),
        ("spike", "Spike capture (memory snapshot)", spike_section, 20),
        ("meter", "Memory meter against the allocator", meter_section, 20),
        ("store", "The CUDA runs' store, for the dashboard", store_section, 5),
        ("catalog", "Catalog verdicts, GPU next to CPU", catalog_section, 40),
        ("lessons", "Lessons 05 and 08 on the GPU machine", lessons_section, 60),
        ("moe", "MoE layer against Mixtral's block on the GPU", moe_section, 45),
        ("moe_matrix", "MoE matrix under forced routings on the GPU", moe_matrix_section, 60),
    ]
    for name, title, fn, needs in steps:
        if only and name not in only:
            continue
        with report.section(name, title) as s:
            if ctx.left() < needs:
                s.skip(f"out of time ({ctx.left():.0f} s left, needs ~{needs:.0f} s)")
            else:
                fn(ctx, s)
    if only and "screenshot" not in only:
        report.header["total_s"] = time.monotonic() - started
        report.write()
        return report
    with report.section("screenshot", "Dashboard Memory page (headless Chromium)") as s:
        store = ctx.out / STORE_FILE
        if not store.exists():
            s.skip("no store was saved")
        else:
            screenshot_section(ctx, s, store, ctx.out / SCREENSHOT)
    report.header["total_s"] = time.monotonic() - started
    report.write()
    return report


def screenshot_from(store: Path, report_json: Path | None) -> int:
    """The second step, on a machine with the dashboard: the Memory page of the stored CUDA
    run as a screenshot, added as a section to the report of the run that made the store.

    The report read is ``report_json``, else the ``gpu-latest.json`` beside the store (the
    device run's output folder), else ``benchmarks/results/``'s; the report, with the
    screenshot beside it, is written to ``report_json``'s folder, else ``benchmarks/results/``.
    """
    store = store.resolve()
    if not store.exists():
        print(f"gpu-check: no store at {store}")
        return 2
    target = report_json.parent if report_json is not None else RESULTS
    sources = [report_json] if report_json is not None else [
        store.parent / f"{REPORT}.json", RESULTS / f"{REPORT}.json"]
    source = next((p for p in sources if p.exists()), None)
    if source is not None:
        report = Report.load(source, [target])
        log(f"adding the screenshot to the report {source}")
    else:
        report = Report([target], {"device": "unknown", "command": "", "started": "",
                                   "environment": {}})
    with report.section("screenshot", "Dashboard Memory page (headless Chromium)") as s:
        screenshot_section(None, s, store, target / SCREENSHOT)
    print(f"gpu-check: screenshot section {report.sections['screenshot'].status}; report in "
          f"{target / (REPORT + '.md')}")
    return 0 if report.sections["screenshot"].status == "ok" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: test-artifacts/gpu-check)")
    parser.add_argument("--device", default=None,
                        help="cuda (default when there is a GPU), cuda:N, or cpu for a dry run")
    parser.add_argument("--quick", action="store_true",
                        help="dry-run sizes: a few steps and rounds, three catalog entries")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="sections that would start after this many seconds are skipped")
    parser.add_argument("--only", default=None, metavar="A,B",
                        help="run only these sections: " + ", ".join(SECTIONS))
    parser.add_argument("--screenshot-from", type=Path, metavar="STORE",
                        help="only take the Memory page screenshot of the CUDA run in STORE "
                             "and add it to the report (--report)")
    parser.add_argument("--report", type=Path, default=None,
                        help="with --screenshot-from: the report JSON to add it to (default: "
                             "the one beside STORE, written to benchmarks/results/)")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    if only and only - set(SECTIONS):
        parser.error(f"--only {args.only!r}: sections are {', '.join(SECTIONS)}")
    if args.screenshot_from is not None:
        return screenshot_from(args.screenshot_from, args.report)
    if args.device is None:
        if not torch.cuda.is_available():
            print(f"gpu-check: no CUDA GPU on this machine (torch {torch.__version__}): "
                  "nothing to check.")
            return 0
        args.device = "cuda"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r}: use cuda, cuda:N or cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print(f"gpu-check: no CUDA GPU on this machine (torch {torch.__version__}): "
                  "nothing to check.")
            return 0
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        parser.error(f"--device {args.device!r}: use cuda, cuda:N or cpu")
    out = (args.out or ROOT / "test-artifacts" / "gpu-check").resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(device=device, quick=args.quick, out=out,
                  deadline=time.monotonic() + args.budget_s)
    command = "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None
                                                          else sys.argv[1:])
    report = run_all(ctx, command.strip(), only)
    shutil.rmtree(out / "work", ignore_errors=True)
    failed = [s.title for s in report.sections.values() if s.status == "failed"]
    log(f"done in {report.header['total_s']:.0f} s; report: {out / (REPORT + '.md')}"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
