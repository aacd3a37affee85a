"""The mutation locator names the in-place write that anomaly mode cannot name.

For each of the summary's in-place bugs (``inplace_examples.py``): PyTorch's own error still
reaches the caller, the locator names the marked ``file:line``, op and module of the write, and
anomaly mode names a different line, the one where the tensor was saved.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules import module as nn_module
from torch.utils._python_dispatch import _get_current_dispatch_mode

from mahiax.telemetry.locator import VERSION_ERROR, anomaly_says, locate_mutations
from tests.telemetry.inplace_examples import (
    EXAMPLES,
    FILE,
    CleanNet,
    exp_then_add,
    line_of,
    tiny_memory,
)

NAMES = sorted(EXAMPLES)


def _global_state() -> tuple:
    """Everything the locator installs globally, to check that it is all gone afterwards."""
    return (
        len(nn_module._global_forward_pre_hooks),
        len(nn_module._global_forward_hooks),
        len(nn_module._global_forward_hooks_always_called),
        torch._C._autograd._top_saved_tensors_default_hooks(False),
        _get_current_dispatch_mode(),
    )


def _plain_error(name: str) -> str:
    ex = EXAMPLES[name]()
    with pytest.raises(RuntimeError, match=VERSION_ERROR) as info:
        ex.run()
    return str(info.value)


def _located(name: str):
    ex = EXAMPLES[name]()
    with pytest.raises(RuntimeError, match=VERSION_ERROR) as info:
        with locate_mutations(ex.model) as loc:
            ex.run()
    return ex, loc, info.value


@pytest.mark.parametrize("name", NAMES)
def test_pytorch_error_still_raised_with_the_report_appended(name):
    plain = _plain_error(name)
    _, _, err = _located(name)
    assert type(err) is RuntimeError
    message = str(err)
    assert message.startswith(plain)  # PyTorch's own message, word for word
    assert "\n\nMutation locator:\n" in message
    assert isinstance(err.__cause__, RuntimeError) and str(err.__cause__) == plain


@pytest.mark.parametrize("name", NAMES)
def test_locator_names_the_mutating_line_op_and_module(name):
    ex, loc, err = _located(name)
    assert loc.mutations, loc.report()
    tripped = [m for m in loc.mutations if m.tripped_backward]
    assert len(tripped) == 1, loc.report()
    m = tripped[0]
    assert (m.file, m.line) == (FILE, line_of(ex.mutation)), loc.report()
    assert m.op in ex.ops
    assert m.module == ex.module
    assert m.saved.line == line_of(ex.saved)
    assert m.version_after == m.version_before + 1
    assert f"inplace_examples.py:{line_of(ex.mutation)}" in str(err)


@pytest.mark.parametrize("name", NAMES)
def test_anomaly_mode_names_the_saving_line_instead(name):
    ex = EXAMPLES[name]()
    said = anomaly_says(ex.run)
    assert isinstance(said.error, RuntimeError) and VERSION_ERROR in str(said.error)
    assert "Traceback of forward call" in said.text
    ours = [line for file, line in said.frames() if file == FILE]
    assert ours[-1] == line_of(ex.saved)
    assert line_of(ex.mutation) not in ours


def test_a_saved_output_is_located_too():
    """Outputs are probed through a detached alias, which drops one clause of the message."""
    with pytest.raises(RuntimeError, match=VERSION_ERROR) as info:
        exp_then_add()
    plain = str(info.value)
    with pytest.raises(RuntimeError, match=VERSION_ERROR) as info:
        with locate_mutations() as loc:
            exp_then_add()
    assert str(info.value).startswith(re.sub(r", which is output 0 of \w+,", "", plain))
    m = loc.mutations[0]
    assert (m.op, m.line, m.module) == ("aten.add_", line_of("MUTATION exp"), "")
    assert (m.saved.op, m.saved.line) == ("aten.exp", line_of("SAVED exp"))


def test_saved_tensor_details():
    ex, loc, _ = _located("tiny-copy")
    saved = loc.mutations[0].saved
    assert saved.op == "aten.mm" and saved.module == "model.memory"
    assert saved.shape == (4, 8) and saved.dtype == torch.float32 and saved.version == 0
    assert loc.mutations[0].also == 1  # memory.t() and memory: both saved by a matmul


def test_report_reads_as_one_sentence_per_write():
    ex, loc, _ = _located("tiny-setitem")
    mut, saved = line_of("MUTATION tiny-setitem"), line_of("SAVED tiny")
    assert (
        f"in-place op aten.copy_ in model.memory (inplace_examples.py:{mut}) modified a "
        f"float32[4, 8] tensor saved by aten.mm in model.memory (inplace_examples.py:{saved})"
    ) in loc.report()
    assert "saved at version 0; this write made it 1" in loc.report()


def test_optimizer_write_is_named_by_the_step_call():
    ex, loc, _ = _located("optimizer-sgd")
    m = loc.mutations[0]
    assert m.op == "aten.add_" and m.line == line_of("MUTATION optimizer")
    assert m.saved.module == "model.l2"
    assert f"at inplace_examples.py:{m.line}" in loc.report()


def test_without_a_model_modules_are_named_by_class():
    ex = tiny_memory("copy")
    with pytest.raises(RuntimeError, match=VERSION_ERROR):
        with locate_mutations() as loc:
            ex.run()
    assert loc.mutations[0].module == "MemoryNet.TinyMemory"


def _train(model, locate: bool, steps: int = 3):
    """A few clean training steps; returns outputs, losses, grads and final parameters."""
    torch.manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    outs, grads = [], []
    for _ in range(steps):
        x, y = torch.randn(5, 8), torch.randint(0, 3, (5,))
        opt.zero_grad()
        if locate:
            with locate_mutations(model) as loc:
                out = model(x)
                F.cross_entropy(out, y).backward()
            assert loc.mutations == [] and loc.failed == []
        else:
            out = model(x)
            F.cross_entropy(out, y).backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return outs, grads, [p.detach().clone() for p in model.parameters()]


def test_locator_changes_nothing_when_there_is_no_bug():
    torch.manual_seed(0)
    model = CleanNet()
    twin = copy.deepcopy(model)
    plain, located = _train(model, locate=False), _train(twin, locate=True)
    for a, b in zip(plain, located, strict=True):
        flat_a = a if isinstance(a[0], torch.Tensor) else [t for ts in a for t in ts]
        flat_b = b if isinstance(b[0], torch.Tensor) else [t for ts in b for t in ts]
        assert all(torch.equal(u, v) for u, v in zip(flat_a, flat_b, strict=True))


def test_everything_is_removed_on_exit_and_nothing_recorded_after():
    before = _global_state()
    ex = tiny_memory("copy")
    with locate_mutations(ex.model) as loc:
        assert _global_state() != before
        ex.model(torch.randn(3, 8))  # writes, no backward: a mutation, no error
    assert _global_state() == before
    seen = len(loc.mutations)
    assert seen == 1
    out = ex.model(torch.randn(3, 8))  # the same write again, outside the block
    assert len(loc.mutations) == seen
    with pytest.raises(RuntimeError, match=VERSION_ERROR):
        out.sum().backward()  # PyTorch's own check works again without the hooks


def test_everything_is_removed_when_the_block_raises():
    before = _global_state()
    with pytest.raises(ValueError, match="boom"):
        with locate_mutations():
            raise ValueError("boom")
    ex = EXAMPLES["fabric"]()
    with pytest.raises(RuntimeError, match=VERSION_ERROR):
        with locate_mutations(ex.model):
            ex.run()
    assert _global_state() == before


def test_other_runtime_errors_pass_through_unchanged():
    err = RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError) as info:
        with locate_mutations():
            raise err
    assert info.value is err


def test_a_write_through_data_is_recorded_as_invisible_to_autograd():
    x = torch.randn(4, requires_grad=True)
    with locate_mutations() as loc:
        y = (x * x).sum()
        x.data.mul_(2)  # MetaController's `.data` update: no version bump, no error
        y.backward()
    m = loc.mutations[0]
    assert m.op == "aten.mul_" and m.version_after == m.version_before
    assert "bypassed the version counter" in loc.report()


def test_a_retained_graph_is_freed_when_its_output_is_dropped():
    """The record of a saved output holds a detached alias, not the output (whose grad_fn
    holds the record): a graph kept with retain_graph=True dies with its last reference."""
    import gc
    import weakref

    x = torch.randn(8, requires_grad=True)
    with locate_mutations() as loc:
        y = x.exp()  # exp saves its output
        z = y.sum()
        z.backward(retain_graph=True)
        y.add_(1)  # still located through the alias: same memory, same version counter
    assert loc.mutations[0].op == "aten.add_"
    alive = weakref.ref(y)
    del y, z
    gc.collect()
    assert alive() is None
