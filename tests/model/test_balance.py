"""Expert load balancing as a config choice (``balance = aux | bias | none``).

The bias of DeepSeek-V3's auxiliary-loss-free balancing (Wang et al. 2024) moves by the
published sign rule, steers the top-k selection and nothing else (no gradient, not the mixing
weights), replaces the aux loss in the objective, is checkpointed, and is logged. The DDP test
(both ranks hold the same bias) is in ``tests/training/test_distributed.py``; ``balance="aux"``
is the model every other test trains, unchanged.
"""

from __future__ import annotations

import pytest
import torch

from mahiax.cli import main
from mahiax.config import MahiaConfig, tiny
from mahiax.errors import BadInput
from mahiax.model.hybrid import HybridEfficientModel
from mahiax.model.moe import MixtureOfExperts, bias_update, flipped_choices, load_percentiles
from mahiax.model.weighting import make_weighting
from mahiax.recording import record_training
from mahiax.store import RunReader
from mahiax.training.objective import objective
from mahiax.training.trainer import Trainer


def _fixed_router_moe(rate: float) -> MixtureOfExperts:
    """E=4, K=2, D=4 with the router weight = identity: a token's logits are the token."""
    torch.manual_seed(0)
    moe = MixtureOfExperts(4, 4, 2, 3, balance="bias", bias_update_rate=rate)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4))
    return moe.train()


# logits of four tokens; top-2 of each: {0,1}, {0,1}, {0,2}, {0,2}
TOKENS = torch.tensor([[3.0, 2.0, 0.0, 0.0],
                       [3.0, 2.0, 0.0, 0.0],
                       [3.0, 0.0, 2.0, 0.0],
                       [3.0, 0.0, 2.0, 0.0]])


def test_bias_update_matches_the_published_rule_on_a_hand_computed_case():
    """Loads by hand: expert 0 gets 4 of the 8 choices, experts 1 and 2 two each, expert 3
    none; the mean is 2. The rule b_i += u * sign(mean - load_i) gives, with u = 0.1,
    b = [-0.1, 0, 0, +0.1] (expert 1 and 2 sit exactly at the mean: sign 0)."""
    moe = _fixed_router_moe(0.1)
    moe(TOKENS)
    assert torch.equal(moe.expert_bias, torch.zeros(4)), "the forward only stages"
    moe.commit()
    assert moe.tokens_per_expert.tolist() == [4.0, 2.0, 2.0, 0.0]
    assert torch.equal(moe.expert_bias, torch.tensor([-0.1, 0.0, 0.0, 0.1]))
    # a second step: b = -0.1 on expert 0 does not change these tokens' selections (its
    # probability 0.68 stays first), so the loads and the step repeat: b = [-0.2, 0, 0, 0.2]
    moe(TOKENS)
    moe.commit()
    assert moe.tokens_per_expert.tolist() == [4.0, 2.0, 2.0, 0.0]
    assert torch.equal(moe.expert_bias, torch.tensor([-0.2, 0.0, 0.0, 0.2]))
    # the function on its own, from a nonzero bias
    b = bias_update(torch.tensor([0.5, 0.0, -0.5]), torch.tensor([1.0, 5.0, 3.0]), 0.25)
    assert torch.equal(b, torch.tensor([0.75, -0.25, -0.5]))  # mean 3: +, -, 0


def test_no_update_in_eval_and_no_bias_without_balance_bias():
    moe = _fixed_router_moe(0.1).eval()
    moe(TOKENS)
    moe.commit()  # nothing staged outside training: a no-op
    assert torch.equal(moe.expert_bias, torch.zeros(4))
    for balance in ("aux", "none"):
        m = MixtureOfExperts(4, 4, 2, 3, balance=balance)
        assert m.expert_bias is None and "expert_bias" not in m.state_dict()
        assert "bias" not in m.load_stats()
    assert "text.moe.expert_bias" in HybridEfficientModel(tiny().replace(balance="bias"))\
        .state_dict(), "checkpointed with the model"


def test_bias_never_enters_the_gradient():
    """With a bias that leaves every selection as it was, the output and the router's
    gradient are bit-identical to the unbiased model's; the bias is a buffer that gets no
    gradient."""
    torch.manual_seed(1)
    moe = MixtureOfExperts(8, 6, 2, 5, balance="bias").train()
    x = torch.randn(40, 8)
    assert "expert_bias" not in dict(moe.named_parameters())
    out = {}
    for name, bias in (("plain", torch.zeros(6)), ("biased", torch.arange(6) * 1e-6)):
        moe.zero_grad()
        with torch.no_grad():
            moe.expert_bias.copy_(bias)
        o = moe(x)
        (o.hidden.square().sum() + o.aux_loss + o.z_loss).backward()
        out[name] = (o.router.ids, o.hidden.detach(), moe.router.weight.grad.clone())
    assert torch.equal(out["plain"][0], out["biased"][0]), "precondition: same selection"
    assert torch.equal(out["plain"][1], out["biased"][1])
    assert torch.equal(out["plain"][2], out["biased"][2])
    assert not moe.expert_bias.requires_grad and moe.expert_bias.grad is None


def test_bias_changes_the_selection_not_the_mixing_weights():
    """A bias that pushes expert 0 into every token's top-2: the mixing weights are the
    *unbiased* softmax probabilities of the chosen experts, renormalised over them."""
    torch.manual_seed(2)
    moe = MixtureOfExperts(8, 6, 2, 5, balance="bias").train()
    with torch.no_grad():
        moe.expert_bias.copy_(torch.tensor([2.0, 0, 0, 0, 0, 0]))
    x = torch.randn(50, 8)
    o = moe(x)
    r = o.router
    probs = torch.softmax(x @ moe.router.weight.T, dim=-1)  # (N, E) unbiased
    plain = torch.topk(probs, 2, dim=-1).indices
    assert (r.ids == 0).any(dim=-1).all(), "the bias put expert 0 in every top-2"
    assert not torch.equal(r.ids.sort(-1).values, plain.sort(-1).values), "choices changed"
    chosen = probs.gather(-1, r.ids)  # (N, K)
    torch.testing.assert_close(r.weights, chosen / chosen.sum(-1, keepdim=True),
                               rtol=0, atol=1e-7)
    biased_mix = torch.softmax(x @ moe.router.weight.T, dim=-1) + moe.expert_bias
    biased_mix = biased_mix.gather(-1, r.ids)
    assert not torch.allclose(r.weights, biased_mix / biased_mix.sum(-1, keepdim=True))
    # the share of choices it changed: every token that had 0 outside its top-2 changed one
    changed = int((~(plain == 0).any(dim=-1)).sum())
    assert changed > 0
    assert flipped_choices(probs, r.ids, 2).item() == changed
    moe.commit()
    assert moe.bias_flipped == changed / (50 * 2)
    assert moe.load_stats()["bias_flipped"] == changed / (50 * 2)


def test_only_aux_adds_the_aux_loss_to_the_objective():
    batch = Trainer(tiny()).data.batch(0)
    for balance in ("aux", "bias", "none"):
        c = tiny().replace(balance=balance)
        torch.manual_seed(0)
        model = HybridEfficientModel(c).train()
        w = make_weighting(c)
        obj = objective(model, w, batch)
        enc = obj.encoded
        task = w.combine(obj.losses)
        z = c.z_loss_coef * enc.z_loss
        want = task + (c.aux_loss_coef * enc.aux_loss + z if balance == "aux" else z)
        assert torch.equal(obj.total, want), balance
        assert enc.aux_loss.item() > 0  # still computed, for telemetry


@pytest.mark.parametrize(("changes", "says"), [
    ({"balance": "loss-free"}, "config field 'balance' = 'loss-free' is invalid; allowed: "
                               "aux | bias | none"),
    ({"bias_update_rate": 0.0}, "config field 'bias_update_rate' = 0.0 is invalid; allowed: "
                                "a finite number > 0"),
    ({"bias_update_rate": float("nan")}, "config field 'bias_update_rate' = nan is invalid"),
])
def test_bad_balance_settings_are_one_clear_line(changes, says):
    with pytest.raises(BadInput) as e:
        MahiaConfig(**changes)
    assert str(e.value).startswith(says)
    assert MahiaConfig().balance == "aux" and MahiaConfig().bias_update_rate == 1e-3


def test_bias_run_records_its_telemetry_and_resumes_exactly(tmp_path, capsys):
    """A recorded ``balance="bias"`` run logs MaxVio, the load percentiles, the bias vector
    and the flipped share; the first logged bias is the rule applied to the first logged load.
    The bias is checkpointed: ``--resume`` reproduces the uninterrupted run's losses, and a
    conflicting ``--balance`` on resume is refused in one line."""
    store = tmp_path / "s.sqlite"
    c = tiny().replace(balance="bias", max_steps=6)
    record_training(c, "b", 3, store=store)  # 3 of the 6 planned steps
    reader = RunReader(store)
    scal = reader.scalars("b")
    keys = ["moe/max_vio", "moe/load_min", "moe/load_p50", "moe/load_p90", "moe/load_p99",
            "moe/bias_flipped"]
    assert set(keys) <= set(scal.columns) and not scal[keys].isna().any().any()
    assert (scal["moe/max_vio"] - (scal["moe/max_over_mean"] - 1)).abs().max() < 1e-12
    assert (scal["moe/load_min"] <= scal["moe/load_p50"]).all()
    assert (scal["moe/load_p50"] <= scal["moe/load_p90"]).all()
    assert (scal["moe/load_p99"] <= scal["moe/max_over_mean"] + 1e-12).all()
    bias = reader.vectors("b", "moe/bias")
    load = torch.tensor(reader.vectors("b", "moe/tokens_per_expert").loc[0].to_numpy())
    assert bias.shape == (3, c.num_experts)
    expected = bias_update(torch.zeros(c.num_experts), load, c.bias_update_rate)
    assert torch.equal(torch.tensor(bias.loc[0].to_numpy(), dtype=torch.float32), expected)

    def train(*extra: str) -> int:
        return main(["train", "--run", "b", "--store", str(store), "--no-progress", *extra])

    capsys.readouterr()
    assert train("--balance", "aux", "--resume") == 2
    assert capsys.readouterr().err == ("mahiax: error: --balance aux conflicts with run 'b' "
                                       "(stored balance=bias); resume without it or start a "
                                       "new run\n")
    assert train("--balance", "bias", "--resume") == 0
    losses = RunReader(store).scalars("b", ["loss"])["loss"].tolist()
    assert losses == [r.loss for r in Trainer(c).fit(6)]


def test_cli_balance_flag_starts_a_run_with_that_balance(tmp_path):
    store = tmp_path / "s.sqlite"
    assert main(["train", "--run", "n", "--store", str(store), "--no-progress", "--preset",
                 "tiny", "--steps", "2", "--balance", "none"]) == 0
    reader = RunReader(store)
    assert reader.config("n")["balance"] == "none"
    scal = reader.scalars("n")
    assert "moe/max_vio" in scal.columns and "moe/bias_flipped" not in scal.columns


def test_maxvio_and_load_percentiles_on_a_hand_computed_load():
    """Loads [0, 2, 2, 4]: mean 2, so MaxVio = 4/2 - 1 = 1; in units of the mean the loads
    are [0, 1, 1, 2], whose linear-interpolation percentiles are p50 = 1, p90 = 1 + 0.7 = 1.7
    (position 0.9 * 3 = 2.7) and p99 = 1.97."""
    s = load_percentiles(torch.tensor([0.0, 2.0, 2.0, 4.0]))
    assert s["max_vio"] == 1.0
    assert s["load_min"] == 0.0 and s["load_p50"] == 1.0
    assert s["load_p90"] == pytest.approx(1.7, abs=1e-12)
    assert s["load_p99"] == pytest.approx(1.97, abs=1e-12)
    assert load_percentiles(torch.full((8,), 5.0))["max_vio"] == 0.0  # perfect balance
    assert set(load_percentiles(torch.zeros(4)).values()) == {0.0}  # no tokens
