"""Every bad input gets one clear error, raised by mahiax before it reaches torch internals.

Config values, model inputs, targets and command-line options: each test feeds one kind of
bad input and checks the exception type and that the message says what was wrong (the field
or argument, the value that arrived, and what is allowed).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from mahiax.cli import main
from mahiax.config import MahiaConfig, field_names, preset, tiny
from mahiax.errors import BadInput
from mahiax.model.data import SyntheticMultiTask
from mahiax.model.hybrid import HybridEfficientModel
from mahiax.training.trainer import Trainer


def field_error(name: str, value: object, allowed: str) -> str:
    """Regex of the config error message for ``name`` = ``value`` with ``allowed``."""
    return re.escape(f"config field '{name}' = {value!r} is invalid; allowed: {allowed}")


# --------------------------------------------------------------------------- config


def test_top_k_above_num_experts_is_rejected():
    with pytest.raises(ValueError, match=field_error("top_k", 5, "1 .. num_experts (4)")):
        tiny().replace(top_k=5)


def test_fabric_active_above_fabric_layers_is_rejected():
    with pytest.raises(
        ValueError, match=field_error("fabric_active", 4, "1 .. fabric_layers (3)")
    ):
        tiny().replace(fabric_active=4)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("vocab_size", 0),
        ("seq_len", -1),
        ("d_model", 0),
        ("num_experts", 0),
        ("top_k", 0),
        ("expert_hidden", -8),
        ("memory_nodes", 0),
        ("tiny_slots", 0),
        ("batch_size", 0),
        ("max_steps", -5),
        ("d_model", 16.0),  # a float is not a size, even a whole one
        ("batch_size", True),  # nor is a bool
    ],
)
def test_non_positive_size_is_rejected(name, value):
    with pytest.raises(ValueError, match=field_error(name, value, "a positive integer")):
        tiny().replace(**{name: value})


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match=field_error("precision", "fp8", "fp32 | bf16 | fp16")):
        tiny().replace(precision="fp8")


def test_unknown_weighting_is_rejected():
    with pytest.raises(
        ValueError, match=field_error("weighting", "gradnorm", "dwa | equal | uncertainty")
    ):
        tiny().replace(weighting="gradnorm")


def test_unknown_task_is_rejected():
    tasks = ("keywords", "sentiment")
    allowed = "names from ['keywords', 'mixed', 'tabular'] (unknown: ['sentiment'])"
    with pytest.raises(ValueError, match=field_error("tasks", tasks, allowed)):
        tiny().replace(tasks=tasks)


def test_duplicate_task_is_rejected():
    tasks = ("keywords", "tabular", "keywords")
    with pytest.raises(ValueError, match=field_error("tasks", tasks, "each task at most once")):
        tiny().replace(tasks=tasks)


def test_empty_task_list_is_rejected():
    allowed = "a non-empty tuple of names from ['keywords', 'mixed', 'tabular']"
    with pytest.raises(ValueError, match=field_error("tasks", (), allowed)):
        tiny().replace(tasks=())


def test_vocab_too_small_for_the_key_tokens_is_rejected():
    allowed = ">= 17 (task 'keywords' reserves key tokens)"
    with pytest.raises(ValueError, match=field_error("vocab_size", 10, allowed)):
        tiny().replace(vocab_size=10)


def test_replace_with_unknown_field_is_rejected_and_lists_the_fields():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['topk'\]; allowed: ") as e:
        tiny().replace(topk=2)
    assert "'top_k'" in str(e.value)


def test_config_errors_are_raised_when_the_config_is_made():
    with pytest.raises(ValueError, match=field_error("top_k", 9, "1 .. num_experts (8)")):
        MahiaConfig(top_k=9)


def test_to_dict_from_dict_round_trip_gives_an_equal_config():
    c = tiny().replace(tasks=("mixed", "keywords"), seed=7, precision="bf16")
    d = c.to_dict()
    assert d["tasks"] == ["mixed", "keywords"]  # JSON-ready: a list
    assert list(d) == field_names()
    assert MahiaConfig.from_dict(d) == c


def test_from_dict_with_unknown_key_is_rejected():
    d = tiny().to_dict() | {"layers": 3}
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['layers'\]"):
        MahiaConfig.from_dict(d)


def test_unknown_preset_is_rejected_and_lists_the_presets():
    expected = "unknown preset 'nope'; allowed: ['medium', 'teaching', 'tiny']"
    with pytest.raises(ValueError, match=re.escape(expected)):
        preset("nope")


# --------------------------------------------------------------------------- model inputs


@pytest.fixture(scope="module")
def model() -> HybridEfficientModel:
    torch.manual_seed(0)
    return HybridEfficientModel(tiny())


@pytest.fixture(scope="module")
def batch():
    return SyntheticMultiTask(tiny()).batch(0)  # tokens (8, 8), tabular (8, 8)


def test_raw_embedding_fails_on_out_of_range_ids_with_torchs_index_error():
    """What the validation prevents: torch's own, context-free error for a bad id."""
    with pytest.raises(IndexError, match="index out of range in self"):
        nn.Embedding(64, 4)(torch.tensor([[3, 100]]))


def test_ids_beyond_vocab_get_our_value_error_naming_range_and_ids(model, batch):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 10000, (8, 8), generator=g)  # the summary's demo: ids < 10000
    lo, hi = int(tokens.min()), int(tokens.max())
    n_bad = int((tokens >= 64).sum())
    expected = (
        f"token ids must lie in [0, 64) (vocab_size=64); got ids from {lo} to {hi}, "
        f"{n_bad} of 64 out of range"
    )
    with pytest.raises(ValueError, match=re.escape(expected)) as e:
        model.encode(tokens, batch.tabular)
    assert e.type is ValueError and not isinstance(e.value, IndexError)


def test_ids_beyond_vocab_are_caught_before_the_embedding_runs(model, batch):
    calls = []
    handle = model.text.tok.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        tokens = batch.tokens.clone()
        tokens[0, 0] = 64  # one past the last valid id
        with pytest.raises(ValueError, match=re.escape("got ids from ")) as e:
            model.encode(tokens, batch.tabular)
    finally:
        handle.remove()
    assert calls == []  # the embedding never saw the bad id
    assert str(e.traceback[-1].path).endswith("validation.py")


def test_negative_ids_are_rejected_with_the_range_found(model, batch):
    tokens = batch.tokens.clone()
    tokens[2, 3] = -3
    hi = int(tokens.max())
    with pytest.raises(
        ValueError, match=re.escape(f"must lie in [0, 64) (vocab_size=64); got ids from -3 to {hi}")
    ):
        model.encode(tokens, batch.tabular)


def test_float_tokens_are_rejected_naming_the_dtype(model, batch):
    with pytest.raises(TypeError, match=r"integer ids .* got dtype torch\.float32"):
        model.encode(batch.tokens.float(), batch.tabular)


@pytest.mark.parametrize("shape", [(8,), (8, 8, 1)], ids=["1-D", "3-D"])
def test_tokens_of_wrong_rank_are_rejected_with_the_shape(model, batch, shape):
    tokens = batch.tokens.reshape(-1)[: int(np.prod(shape))].reshape(shape)
    with pytest.raises(
        ValueError, match=re.escape(f"(batch, seq_len) = (B, 8), got shape {shape}")
    ):
        model.encode(tokens, batch.tabular)


def test_more_positions_than_seq_len_are_rejected(model, batch):
    tokens = torch.cat([batch.tokens, batch.tokens[:, :1]], dim=1)  # (8, 9)
    expected = "tokens have 9 positions but the model was built for at most seq_len=8"
    with pytest.raises(ValueError, match=re.escape(expected)):
        model.encode(tokens, batch.tabular)


def test_integer_tabular_is_rejected_naming_the_dtype(model, batch):
    with pytest.raises(TypeError, match=r"tabular must be a floating tensor .* torch\.int64"):
        model.encode(batch.tokens, batch.tabular.long())


def test_tabular_of_wrong_width_is_rejected_with_the_shape(model, batch):
    with pytest.raises(
        ValueError, match=re.escape("(batch, tab_dim) = (B, 8), got shape (8, 5)")
    ):
        model.encode(batch.tokens, batch.tabular[:, :5])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_tabular_is_rejected_naming_the_sample(model, batch, bad):
    tab = batch.tabular.clone()
    tab[5, 2] = bad
    expected = "must be finite; got 1 NaN/inf value(s), first in sample(s) [5]"
    with pytest.raises(ValueError, match=re.escape(expected)):
        model.encode(batch.tokens, tab)


def test_mismatched_batch_sizes_are_rejected_naming_both(model, batch):
    with pytest.raises(
        ValueError, match=re.escape("batch sizes differ: tokens have 8 samples, tabular has 4")
    ):
        model.encode(batch.tokens, batch.tabular[:4])


def test_non_tensor_tokens_are_rejected(model, batch):
    with pytest.raises(TypeError, match=r"tokens must be a torch\.Tensor .* got list"):
        model.encode(batch.tokens.tolist(), batch.tabular)


def test_non_tensor_tabular_is_rejected(model, batch):
    with pytest.raises(TypeError, match=r"tabular must be a torch\.Tensor .* got ndarray"):
        model.encode(batch.tokens, batch.tabular.numpy())


# --------------------------------------------------------------------------- targets


@pytest.fixture(scope="module")
def outputs(model, batch):
    with torch.no_grad():
        return model(batch)


def test_valid_targets_give_one_loss_per_task(model, batch, outputs):
    losses = model.task_losses(outputs, batch.targets)
    assert losses.shape == (3,) and bool(torch.isfinite(losses).all())


def test_missing_task_target_is_rejected(model, batch, outputs):
    targets = {k: v for k, v in batch.targets.items() if k != "mixed"}
    with pytest.raises(ValueError, match=re.escape("missing ['mixed'], unexpected []")):
        model.task_losses(outputs, targets)


def test_class_id_out_of_range_is_rejected(model, batch, outputs):
    targets = dict(batch.targets, keywords=torch.full((8,), 2))
    with pytest.raises(
        ValueError, match=re.escape("target 'keywords' class ids must lie in [0, 2), got 2 to 2")
    ):
        model.task_losses(outputs, targets)


def test_float_class_targets_are_rejected(model, batch, outputs):
    targets = dict(batch.targets, mixed=batch.targets["mixed"].float())
    with pytest.raises(TypeError, match=r"target 'mixed' must hold class ids .* torch\.float32"):
        model.task_losses(outputs, targets)


def test_integer_regression_targets_are_rejected(model, batch, outputs):
    targets = dict(batch.targets, tabular=batch.targets["tabular"].long())
    with pytest.raises(TypeError, match=r"target 'tabular' must be floating .* torch\.int64"):
        model.task_losses(outputs, targets)


def test_target_of_wrong_shape_is_rejected(model, batch, outputs):
    targets = dict(batch.targets, tabular=batch.targets["tabular"].unsqueeze(-1))
    with pytest.raises(
        ValueError, match=re.escape("target 'tabular' must have shape (8,), got (8, 1)")
    ):
        model.task_losses(outputs, targets)


# --------------------------------------------------------------------------- command line


def test_cli_bad_config_option_prints_one_error_line_and_returns_2(capsys):
    code = main(["train", "--steps", "3", "--top-k", "9", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err == (
        "mahiax: error: config field 'top_k' = 9 is invalid; allowed: 1 .. num_experts (8)\n"
    )
    assert out == ""


def test_cli_rejects_zero_steps_in_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--steps", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --steps: expected a positive integer, got 0" in err
    assert "Traceback" not in err


def _broken_step(self, batch=None):
    raise ValueError("a bug inside the step")


def test_cli_keeps_the_traceback_of_a_value_error_that_is_not_bad_input(monkeypatch):
    """Only BadInput (and store errors) become one line: a ValueError raised by code inside
    an unrecorded run propagates with its traceback."""
    monkeypatch.setattr(Trainer, "step", _broken_step)
    with pytest.raises(ValueError, match="a bug inside the step") as e:
        main(["train", "--preset", "tiny", "--steps", "2", "--no-progress"])
    assert not isinstance(e.value, BadInput)


def test_cli_prints_the_traceback_of_a_recorded_run_that_failed_on_a_bug(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setattr(Trainer, "step", _broken_step)
    code = main(["train", "--preset", "tiny", "--steps", "2", "--no-progress", "--run", "r",
                 "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last)" in err and "in _broken_step" in err
    assert err.rstrip().endswith(
        "mahiax: training failed at step 0: ValueError: a bug inside the step (stored as failed)"
    )


def test_bad_requests_are_bad_input():
    """The one type the command line prints as one line; still a ValueError for callers."""
    with pytest.raises(BadInput):
        tiny().replace(top_k=9)
    with pytest.raises(BadInput):
        preset("huge")
    assert issubclass(BadInput, ValueError)
