"""PyTorch's common errors, said for the loop that raised them: what the message means here
and the likely fix. The numbers come from the message itself (shapes, devices, dtypes), so
the sentence is about this loop, not about the error in general.

Errors that the doctor's findings explain better (an in-place write, a graph freed twice, a
loss cut from the parameters) are explained by :func:`mahiax.doctor.analysis.loop_error`
first; these are for the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MATMUL = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")
_DEVICES = re.compile(r"same device, but found at least two devices, (\S+?) and (\S+?)[!,.]")
_DTYPES = re.compile(r"(?:expected (?:scalar type|m1 and m2 to have the same dtype, but got:?)"
                     r"\s*(\w+)\s*(?:but found|!=)\s*(\w+))|(?:mat1 and mat2 must have the "
                     r"same dtype, but got (\w+) and (\w+))", re.IGNORECASE)
_TARGET_BOUNDS = re.compile(r"Target (-?\d+) is out of bounds")
_TARGET_SIZE = re.compile(r"Expected target size \[([^\]]*)\], got \[([^\]]*)\]")
_TARGET_DTYPE = re.compile(r"expected target dtype to be Long or Byte, but got (\w+)")


def _matmul(m: re.Match) -> str:
    rows, got, want, out = m.groups()
    return (f"A matrix multiply (an nn.Linear, or `@`) got an input with {got} features per "
            f"row where the weight expects {want}: the layer was built for in_features={want} "
            f"(out {out}) and the tensor reaching it has {got}. Build the layer with "
            f"in_features={got}, or fix the shape upstream (a missing flatten, a transposed "
            f"batch: print `x.shape` just before this line).")


def _devices(m: re.Match) -> str:
    a, b = m.groups()
    return (f"One operation got tensors on {a} and on {b}. Move the model and every batch to "
            "the same device once (`model.to(device)`, `x, y = x.to(device), y.to(device)`); "
            "tensors made inside the step (`torch.zeros(...)`) need `device=x.device`.")


def _dtypes(m: re.Match) -> str:
    a, b = [g for g in m.groups() if g][:2]
    return (f"One operation got {a} and {b} tensors. The model's weights are float32 by "
            "default: convert the input (`x.float()`; NumPy arrays arrive as float64) or the "
            "model (`model.double()`), not both; targets of cross_entropy are int64 "
            "(`y.long()`).")


def _target_bounds(m: re.Match) -> str:
    return (f"A class label is {m.group(1)}, outside 0 .. C-1 for the C classes the model "
            "outputs. Labels must count from 0 (shift 1-based labels by one), and the last "
            "layer must output one score per class.")


def _target_size(m: re.Match) -> str:
    want, got = m.groups()
    return (f"cross_entropy wants a target of shape [{want}] (the logits' shape without the "
            f"class dimension, which it takes to be the second) and got [{got}]: for sequences "
            "put the classes second (`logits.transpose(1, 2)` for (N, T, C) logits), or "
            "flatten both (`logits.flatten(0, 1)`, `y.flatten()`).")


def _target_dtype(m: re.Match) -> str:
    return (f"The class labels are {m.group(1)}; cross_entropy and nll_loss take class "
            "indices as int64: `y.long()` (float targets mean class probabilities, and must "
            "then have the logits' shape).")


# (what to look for in the message, how to explain it)
_COMMON: tuple[tuple[re.Pattern | str, Callable[..., str] | str], ...] = (
    (_MATMUL, _matmul),
    (_DEVICES, _devices),
    (_DTYPES, _dtypes),
    (_TARGET_BOUNDS, _target_bounds),
    (_TARGET_SIZE, _target_size),
    (_TARGET_DTYPE, _target_dtype),
    ("grad can be implicitly created only for scalar outputs",
     "backward() was called on a tensor with more than one number, so PyTorch does not know "
     "how to weigh them: reduce the loss to one number first (`loss.mean()` or `loss.sum()`; "
     "a loss built with reduction='none' needs it), or pass `gradient=` on purpose."),
    ("0D or 1D target tensor expected, multi-target not supported",
     "cross_entropy got a target with a class dimension (one-hot, or shape [N, 1]): give it "
     "one class index per row (`y.argmax(1)` or `y.squeeze(1)`), int64."),
    ("out of memory",
     "The device ran out of memory at this step. If the graph-carried-across-steps or "
     "growing-graph finding is there, that is the cause (memory that grows every step); "
     "otherwise lower the batch size, use autocast, or free what the loop keeps between "
     "steps (lesson 05_memory_meter measures memory by category, step by step)."),
)


def explain_common(message: str) -> str:
    """What a common PyTorch error means for this loop, and the likely fix; "" when the
    message is none of them."""
    for pattern, explain in _COMMON:
        if isinstance(pattern, str):
            if pattern in message:
                return explain if isinstance(explain, str) else explain(message)
        elif (m := pattern.search(message)) is not None:
            return explain(m) if callable(explain) else explain
    return ""
