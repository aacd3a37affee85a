"""MemoryMeter: on a CPU machine it reports real bytes where the summary's profiler said 0 MB."""

from __future__ import annotations

import gc
import time

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
    assert reading.format() == "CPU: tensors 4.0 KB, process RSS 300.0 MB"


def test_one_read_with_thousands_of_live_tensors_is_fast():
    tensors = [torch.randn(16) for _ in range(3000)]
    layers = [torch.nn.Linear(8, 8) for _ in range(300)]
    graphs = [layer(torch.randn(2, 8)).relu() for layer in layers]
    meter = MemoryMeter("cpu")
    start = time.perf_counter()
    meter.read()
    elapsed = time.perf_counter() - start
    del tensors, graphs
    assert elapsed < 2.0  # ~0.06 s measured; loose for busy CI machines
