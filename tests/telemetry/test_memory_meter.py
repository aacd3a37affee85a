"""MemoryMeter: on a CPU machine it reports real bytes where the summary's profiler said 0 MB."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from mahiax.telemetry import MemoryMeter, MemoryReading, legacy_cuda_reading

MB = 2**20
BIG = 256 * MB  # torch.ones(64 * 2**20) float32

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="shows the CPU-only reading")


def _tensor_bytes(meter: MemoryMeter) -> int:
    gc.collect()
    reading = meter.read()
    assert reading.tensor_bytes is not None
    return reading.tensor_bytes


def test_big_tensor_raises_tensor_bytes_by_its_size_and_deleting_it_drops_them():
    meter = MemoryMeter("cpu")
    base = _tensor_bytes(meter)
    big = torch.ones(64 * 2**20)
    with_big = _tensor_bytes(meter)
    assert with_big - base == pytest.approx(BIG, rel=0.1)
    del big
    after = _tensor_bytes(meter)
    assert abs(after - base) < 0.1 * BIG


def test_rss_grows_with_a_big_tensor():
    meter = MemoryMeter("cpu")
    gc.collect()
    before = meter.read().rss
    big = torch.ones(64 * 2**20)  # ones() writes every page, so they become resident
    grown = meter.read().rss - before
    del big
    assert grown > 200 * MB


def test_a_view_is_not_counted_twice():
    meter = MemoryMeter("cpu")
    base = _tensor_bytes(meter)
    x = torch.zeros(8 * MB // 4)  # 8 MB
    views = [x[::2], x.view(-1, 4), x[10:], x.unsqueeze(0)]
    counted = _tensor_bytes(meter) - base
    del x, views
    assert counted == pytest.approx(8 * MB, rel=0.1)


def test_a_broken_view_does_not_crash_the_meter():
    """The catalog's buggy programs leave views whose ``grad_fn`` PyTorch refuses to give
    (an unbind output whose base was changed in place); the meter still reads them."""
    meter = MemoryMeter("cpu")
    base_bytes = _tensor_bytes(meter)
    w = torch.randn(MB // 4, 2, requires_grad=True)  # 2 MB
    base = w * 1  # 2 MB, in the graph
    parts = base.unbind(1)
    base.mul_(2)
    with pytest.raises(RuntimeError, match="Output 0 of Unbind is a view"):
        _ = parts[0].grad_fn
    counted = _tensor_bytes(meter) - base_bytes
    del w, base, parts
    assert counted == pytest.approx(4 * MB, rel=0.2)


class _Keep(torch.autograd.Function):
    """Doubles its input and saves it through ``ctx.save_for_backward`` (a custom node)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


def test_a_graph_whose_saved_tensor_was_modified_does_not_crash_the_meter():
    """A notebook keeps a caught in-place error (and its graph) alive; reading the custom
    node's ``saved_tensors`` then raises PyTorch's version error, which the meter skips."""
    meter = MemoryMeter("cpu")
    base_bytes = _tensor_bytes(meter)
    a = torch.randn(MB // 4, requires_grad=True)  # 1 MB
    x = a * 1.0  # 1 MB, saved by _Keep
    y = _Keep.apply(x)  # 1 MB
    with torch.no_grad():
        x.add_(1.0)  # the saved tensor is now at a newer version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _ = y.grad_fn.saved_tensors
    counted = _tensor_bytes(meter) - base_bytes
    del a, x, y
    assert counted == pytest.approx(3 * MB, rel=0.2)


def test_tensors_kept_only_by_a_graph_are_counted():
    meter = MemoryMeter("cpu")
    base = _tensor_bytes(meter)
    w = torch.tensor(2.0, requires_grad=True)
    x = torch.randn(8 * MB // 4)  # 8 MB, saved by the mul for w's gradient
    y = (x * w).exp().sum()  # the exp saves its 8 MB result too
    del x  # no Python name left: only y's graph holds x and the exp result
    with_graph = _tensor_bytes(meter)
    del y
    freed = _tensor_bytes(meter)
    assert with_graph - base == pytest.approx(16 * MB, rel=0.1)
    assert abs(freed - base) < 1 * MB


def test_peak_on_cpu_is_the_largest_tensor_bytes_seen():
    meter = MemoryMeter("cpu")
    big = torch.ones(16 * MB // 4)
    high = _tensor_bytes(meter)
    del big
    low = meter.read()
    assert low.peak is not None and low.peak >= high > low.tensor_bytes


@cpu_only
def test_label_says_no_gpu_and_cuda_fields_are_none_not_zero():
    reading = MemoryMeter().read()
    assert reading.device == "cpu"
    assert reading.label == "CPU, no GPU found"
    assert reading.allocated is None and reading.reserved is None
    line = reading.format()
    assert line.startswith("CPU, no GPU found: tensors ") and "process RSS" in line
    assert reading.to_dict()["allocated"] is None


@cpu_only
def test_legacy_reading_says_zero_while_the_meter_sees_tensors():
    keep = torch.ones(1024)
    assert legacy_cuda_reading() == 0.0  # the summary's "0 MB": the bug this lesson shows
    assert _tensor_bytes(MemoryMeter()) >= keep.numel() * 4 > 0


def test_format_shows_small_amounts_instead_of_zero():
    reading = MemoryReading(device="cpu", label="CPU", rss=300 * MB, tensor_bytes=4096, peak=4096)
    assert reading.format() == "CPU: tensors 4.0 KiB, process RSS 300.0 MiB"


@pytest.mark.timeout(120)  # a hang guard: ~0.06 s measured; how fast is a bench question
def test_one_read_with_thousands_of_live_tensors_counts_them_all():
    tensors = [torch.randn(16) for _ in range(3000)]
    layers = [torch.nn.Linear(8, 8) for _ in range(300)]
    graphs = [layer(torch.randn(2, 8)).relu() for layer in layers]
    meter = MemoryMeter("cpu")
    held = meter.read().tensor_bytes
    # at least the 3,000 tensors and the 300 layers' weights and biases, all distinct storages
    assert held >= 3000 * 16 * 4 + 300 * (8 * 8 + 8) * 4
    del tensors, graphs


# ---- the device a meter measures ------------------------------------------------------------


class _FakeAllocator:
    """``torch.cuda`` on a machine that has a GPU: what a CPU-only test can patch in."""

    def __init__(self, monkeypatch, allocated: int = 0):
        self.allocated, self.peak = allocated, allocated
        for name, value in {
            "is_available": lambda: True,
            "device_count": lambda: 1,
            "current_device": lambda: 0,
            "get_device_name": lambda device=None: "Fake GPU",
            "memory_allocated": lambda device=None: self.allocated,
            "memory_reserved": lambda device=None: 2 * self.allocated,
            "max_memory_allocated": lambda device=None: self.peak,
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)


def test_a_meter_reads_the_cpu_by_default_even_where_a_gpu_exists(monkeypatch):
    """The old default picked cuda:0 whenever a GPU existed, so the catalog's CPU runs read
    the allocator's 0. A meter now measures the device it is given; the default is the CPU."""
    _FakeAllocator(monkeypatch, allocated=0)
    meter = MemoryMeter()
    assert meter.device == torch.device("cpu")
    keep = torch.ones(MB)  # 4 MB on the CPU
    reading = meter.read()
    assert reading.device == "cpu" and reading.label == "CPU"  # a GPU exists, CPU measured
    assert reading.allocated is None and reading.tensor_bytes >= keep.nbytes


def test_a_cuda_meter_reads_the_allocator(monkeypatch):
    fake = _FakeAllocator(monkeypatch, allocated=5 * MB)
    meter = MemoryMeter("cuda")
    assert meter.device == torch.device("cuda", 0)
    assert MemoryMeter(torch.device("cuda:0")).device == meter.device
    reading = meter.read()
    assert (reading.device, reading.label) == ("cuda:0", "GPU Fake GPU")
    assert (reading.allocated, reading.reserved, reading.tensor_bytes) == (5 * MB, 10 * MB, None)
    fake.allocated = 7 * MB
    assert meter.read().allocated == 7 * MB


@pytest.mark.parametrize(("device", "says"), [
    ("mps", "'cpu', 'cuda', 'cuda:N'"),
    ("gpu", "is not a device"),
    (3, "not int 3"),
    ("cuda:2", "this machine has 1 GPU(s), cuda:0..cuda:0"),
])
def test_a_bad_device_is_refused_naming_what_is_allowed(monkeypatch, device, says):
    _FakeAllocator(monkeypatch)
    with pytest.raises(ValueError, match="MemoryMeter") as err:
        MemoryMeter(device)
    assert says in str(err.value)


def test_a_cuda_meter_without_a_gpu_says_to_measure_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"'cuda': no CUDA GPU is available here; measure 'cpu'"):
        MemoryMeter("cuda")


# ---- memory by category ---------------------------------------------------------------------

D = 512  # a (D, D) float32 weight is 1 MB


def _one_adam_step() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(D, D)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
    lin(torch.randn(4, D)).sum().backward()
    opt.step()
    return lin, opt


def _nbytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def test_each_category_counts_exactly_its_tensors():
    """Parameters, gradients, Adam's state and the saved activations, byte for byte; a
    weight the matmul saved is the parameter's own storage and is not counted twice."""
    lin, opt = _one_adam_step()
    x = torch.randn(64, D)  # (B, D)
    h = torch.relu(lin(x))  # addmm saves x and the weight; relu saves its result h
    loss = h.sum()
    cats = MemoryMeter("cpu").categories(lin, opt, loss)
    params = list(lin.parameters())
    assert cats.params == _nbytes(params)
    assert cats.grads == _nbytes(p.grad for p in params)
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    assert cats.optimizer == _nbytes(state) > 2 * cats.params  # exp_avg, exp_avg_sq, step
    assert cats.saved == x.nbytes + h.nbytes
    assert (cats.other, cats.total, cats.reserved, cats.peak) == (None, None, None, None)


def test_categories_add_up_to_the_live_tensor_total_on_cpu():
    """With ``full=True`` the categories plus "other" equal the total, and the total is the
    live tensor bytes an independent scan (``read()``) finds, within 5%."""
    lin, opt = _one_adam_step()
    extra = torch.randn(2 * MB // 4)  # 2 MB that belong to no category
    loss = torch.relu(lin(torch.randn(256, D))).sum()
    meter = MemoryMeter("cpu")
    gc.collect()
    cats = meter.categories([lin], opt, loss, full=True)
    scanned = meter.read().tensor_bytes
    assert cats.params + cats.grads + cats.optimizer + cats.saved + cats.other == cats.total
    assert cats.total == pytest.approx(scanned, rel=0.05)
    assert cats.other >= extra.nbytes and cats.saved > 0
    assert cats.peak == cats.total  # the largest CPU total this meter has seen
    metrics = cats.as_metrics()
    assert set(metrics) == {"mem/params", "mem/grads", "mem/optimizer", "mem/saved",
                            "mem/other", "mem/total", "mem/peak"}
    assert metrics["mem/total"] == float(cats.total)


def test_categories_add_up_on_the_training_model():
    """The trainer's model and weighting, read after a forward as the probes do."""
    from mahiax.config import tiny
    from mahiax.training.trainer import Trainer

    trainer = Trainer(tiny())
    trainer.fit(2)
    loss, *_ = trainer.loss_of(trainer.data.batch(2))
    meter = MemoryMeter(trainer.device)
    gc.collect()
    cats = meter.categories((trainer.model, trainer.weighting), trainer.optimizer, loss,
                            full=True)
    assert cats.total == pytest.approx(meter.read().tensor_bytes, rel=0.05)
    assert min(cats.params, cats.grads, cats.optimizer, cats.saved, cats.other) > 0


def test_saved_is_what_the_graph_still_holds():
    """A backward frees the saved tensors: 0 after it; retain_graph=True keeps them."""
    lin, opt = _one_adam_step()
    meter = MemoryMeter("cpu")
    x = torch.randn(32, D)
    loss = torch.relu(lin(x)).sum()
    before = meter.categories(lin, opt, loss).saved
    loss.backward()
    assert before > 0 and meter.categories(lin, opt, loss).saved == 0
    kept = torch.relu(lin(x)).sum()
    kept.backward(retain_graph=True)
    assert meter.categories(lin, opt, kept).saved == before
    assert meter.categories(lin, opt, None).saved == 0


def test_reading_the_graph_keeps_the_in_place_check_on():
    """PyTorch skips its version check for tensors saved through saved_tensors_hooks; the
    meter reads the graph instead, so an in-place change still fails the backward."""
    w = torch.randn(D, requires_grad=True)
    y = w * 2
    z = y.exp()  # saves its result
    loss = (z * 3).sum()
    meter = MemoryMeter("cpu")
    assert meter.categories([], graph=loss).saved >= z.nbytes
    with torch.no_grad():
        z.add_(1)  # modifies a tensor the graph saved
    meter.categories([], graph=loss)  # skips what it can no longer read, does not raise
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_categories_refuse_what_is_not_a_module():
    with pytest.raises(TypeError, match="an nn.Module or an iterable of them, not Tensor"):
        MemoryMeter("cpu").categories([torch.zeros(1)])


def test_a_cuda_meter_counts_other_as_allocated_minus_the_categories(monkeypatch):
    """On a GPU the allocator gives the total every time: "other" is what is left. (CPU
    tensors are not the GPU's: none is counted here.)"""
    fake = _FakeAllocator(monkeypatch, allocated=50 * MB)
    fake.peak = 60 * MB
    lin, opt = _one_adam_step()
    cats = MemoryMeter("cuda").categories(lin, opt, torch.relu(lin(torch.randn(4, D))).sum())
    assert (cats.params, cats.grads, cats.optimizer, cats.saved) == (0, 0, 0, 0)
    assert (cats.total, cats.other, cats.reserved, cats.peak) == (50 * MB, 50 * MB, 100 * MB,
                                                                   60 * MB)
    assert cats.device == "cuda:0" and cats.label == "GPU Fake GPU"


# ---- the catalog, with accounting on --------------------------------------------------------

def _harness_ids() -> list[str]:
    """The entries the harness trains, whose runs read the memory categories at every step
    (the DDP entries train in gloo processes, router-collapse in the Trainer)."""
    from mahiax import bugs

    return [e.id for e in bugs.entries() if e.trained_by == "harness"]


def _error(out):
    return out.error_type, out.error_message, out.error_step


@pytest.mark.slow
@pytest.mark.parametrize("eid", _harness_ids())
def test_accounting_leaves_every_catalog_error_unchanged(monkeypatch, eid):
    """The buggy and summary variants that raise, raise exactly the same error, message and
    step with memory accounting on (every step) as with it switched off."""
    from mahiax import bugs
    from mahiax.telemetry import MemoryCategories

    on = {v: bugs.run(eid, v, 6) for v in ("buggy", "summary")}
    walked = sum(len(out.memory_categories) for out in on.values())
    assert walked == sum(out.steps_run for out in on.values())  # one reading per step run
    on = {v: out for v, out in on.items() if out.error_type is not None}

    def off(self, model, optimizer=None, graph=None, full=False):
        return MemoryCategories(device="cpu", label="CPU", params=0, grads=0, optimizer=0, saved=0)

    monkeypatch.setattr(MemoryMeter, "categories", off)
    for variant, out in on.items():
        assert _error(bugs.run(eid, variant, 6)) == _error(out), variant


def test_retain_graph_summary_shows_saved_for_backward_growing_while_parameters_stay_flat():
    """The summary's band-aid keeps every graph: the memory saved for backward grows at every
    step until the in-place error, while the parameters do not change size. The right fix
    keeps nothing after its backward."""
    from mahiax import bugs

    band_aid = bugs.run("retain-graph", "summary", 8)
    rows = band_aid.memory_categories
    assert band_aid.error_step == len(rows) >= 3
    saved = [r["saved"] for r in rows]
    assert all(b > a for a, b in zip(saved, saved[1:], strict=False)), saved
    assert len({r["params"] for r in rows}) == 1
    assert rows[0]["device"] == "cpu"
    fixed = bugs.run("retain-graph", "fixed", 4).memory_categories
    assert [r["saved"] for r in fixed] == [0] * 4
    assert [r["params"] for r in fixed] == [rows[0]["params"]] * 4


@pytest.mark.slow
def test_memory_zero_cpu_verdict_holds_on_a_gpu_machine(monkeypatch):
    """With a GPU present, the catalog still trains on the CPU and reads the CPU: the summary's
    profiler still says 0 MB there, and the verdict is the same as on a CPU-only machine."""
    from mahiax import bugs

    on_cpu = bugs.verdict("memory-zero-cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    on_gpu_machine = bugs.verdict("memory-zero-cpu")
    assert on_gpu_machine.label == on_cpu.label
    fixed = on_gpu_machine.outcomes["fixed"]
    assert fixed.figures["device"] == "CPU"
    assert min(fixed.figures["tensor_mb"]) > 0.1 and fixed.state_diff < 0.05
    assert on_gpu_machine.outcomes["summary"].figures["reported_mb"][-1] == 0.0


# ---- spike capture --------------------------------------------------------------------------


def test_spike_capture_on_cpu_is_a_no_op_that_says_so(monkeypatch, tmp_path):
    from mahiax.telemetry.spikes import SpikeCapture

    def never(*args, **kwargs):
        raise AssertionError("no CUDA history is recorded for a CPU run")

    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", never)
    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", never)
    capture = SpikeCapture("cpu", threshold=1, directory=tmp_path)
    assert not capture.enabled
    assert "measured on the CPU" in capture.status and "no memory snapshot" in capture.status
    capture.start()
    grown = []
    for step in range(5):
        grown.append(torch.ones(MB))  # 4 MB more each step
        assert capture.after_step(step) is None
    assert list(tmp_path.iterdir()) == []


def test_spike_capture_saves_one_snapshot_of_the_step_that_jumped(monkeypatch, tmp_path):
    """Simulated allocator: flat, then a 300 MB jump at step 4, then another at step 6. One
    snapshot (of step 4), recorded from the start and stopped after it."""
    from mahiax.telemetry.spikes import SpikeCapture

    fake = _FakeAllocator(monkeypatch, allocated=10 * MB)
    calls = []
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history",
                        lambda enabled="all", **kw: calls.append(("record", enabled, kw)))

    def dump(filename):
        calls.append(("dump", filename))
        Path(filename).write_bytes(b"snapshot")

    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", dump)
    capture = SpikeCapture("cuda", threshold=128 * MB, directory=tmp_path / "snaps",
                           max_entries=1000)
    assert "armed on cuda:0" in capture.status
    sizes = {0: 400, 1: 10, 2: 10, 3: 20, 4: 320, 5: 320, 6: 900}  # MB after each step
    spikes = []
    for step, mb in sizes.items():
        fake.allocated = mb * MB
        fake.peak = max(fake.peak, fake.allocated)
        spikes.append(capture.after_step(step))
    found = [s for s in spikes if s is not None]
    assert len(found) == 1  # step 0's 400 MB is warm-up; step 6 comes after the one window
    spike = found[0]
    assert (spike.step, spike.jump) == (4, 300 * MB)
    assert spike.path == tmp_path / "snaps" / "spike-step4.pickle" and spike.path.exists()
    assert calls[0] == ("record", "all", {"context": "all", "stacks": "python",
                                          "max_entries": 1000})
    assert calls[1:] == [("dump", str(spike.path)), ("record", None, {})]
    assert not capture.recording and "pytorch.org/memory_viz" in capture.status


def test_the_snapshot_path_goes_through_the_store(tmp_path):
    from mahiax.store import RunReader, RunWriter
    from mahiax.telemetry.spikes import SPIKE_SNAPSHOT_KEY, encode_path, spike_snapshots

    store = tmp_path / "runs" / "s.sqlite"
    path = store.parent / "memory_snapshots" / "r" / "spike-step4.pickle"
    with RunWriter("r", {}, path=store) as w:
        w.log({"loss": 1.0}, 4)
        w.log_tensor(SPIKE_SNAPSHOT_KEY, encode_path(path, store.parent), 4)
        w.finish()
    reader = RunReader(store)
    stored = bytes(reader.snapshot("r", SPIKE_SNAPSHOT_KEY, 4).tolist()).decode()
    assert stored == "memory_snapshots/r/spike-step4.pickle"  # relative: the store may move
    assert spike_snapshots(reader, "r") == {4: path}
