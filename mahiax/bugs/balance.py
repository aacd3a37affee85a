"""Routing collapse (not in the summary): a few experts take every token, the rest die.

Entry ``router-collapse``. The three variants train the same model from the same weights
and data, and differ only in ``MahiaConfig.balance``:

- ``buggy``: ``balance="none"``: nothing balances the load;
- ``summary``: ``balance="aux"``: the Switch/Mixtral load-balancing loss the model uses by
  default (the usual cure; the summary's ExpertRouter section says nothing about balance);
- ``fixed``: ``balance="bias"``: DeepSeek-V3's auxiliary-loss-free bias on the top-k
  selection (:func:`mahiax.model.moe.biased_top_k`, :func:`mahiax.model.moe.bias_update`).

Each run is a real :class:`~mahiax.training.trainer.Trainer` run (the trainer's own step and
objective), measured every step: MaxVio (``max load / mean load - 1``, Wang et al. 2024), dead
experts, task loss, the tokens per expert, the bias, and the step time. The damage the verdict reads
is the mean MaxVio over the last :data:`TAIL` steps; at most :data:`MAXVIO_TOL` counts as
balanced. Both cures are judged, and the verdict's reason compares them.

Reconstruction: the summary's model never shows a collapse, and the lab's default config
does not collapse either (lesson 11 trains :func:`collapse_config` with no balancing and
without the shared direction: MaxVio stays under 1, no expert dies). Real
MoE layers route hidden states that share a large common component (the residual streams of
trained transformers are anisotropic: Ethayarajh 2019, "How Contextual are Contextualized
Word Representations?"). :func:`add_shared_direction` gives the router's input that
component: it adds one fixed direction of length :data:`SHARED_OFFSET` times sqrt(D) to the
bias of the LayerNorm in front of the MoE, so every token starts out preferring the same
experts. With 16 experts (:func:`collapse_config`), training without balancing then
makes the favoured experts win more tokens step after step while others get none: the
self-reinforcing imbalance Shazeer et al. 2017 describe ("the favored experts are trained
more rapidly and thus are selected even more by the gating network").

A learner's candidate (``check``) is the selection rule: a function
``select(probs, bias, k) -> (top-k probabilities (N, K), expert ids (N, K))`` that the router
calls in place of :func:`~mahiax.model.moe.biased_top_k`, trained with ``balance="bias"``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from mahiax.bugs.catalog import BugEntry
from mahiax.bugs.harness import current_device, isolated, trainer_observer
from mahiax.bugs.outcome import Outcome, broken_rule
from mahiax.config import MahiaConfig

# the collapse setting (see the module docstring): the teaching config with 16 experts (top-2),
# and cures strong enough to act within a 200-step run (the defaults, 0.01 and 1e-3, do not:
# lesson 11 measures them)
COLLAPSE = {"num_experts": 16, "top_k": 2, "aux_loss_coef": 0.1, "bias_update_rate": 1e-2}
SHARED_OFFSET = 1.0  # length of the router input's common direction, in units of sqrt(D)
DIRECTION_SEED = 123  # seeds the common direction (the same for every variant)
STEPS = 60  # steps of one run: the collapse sets in within ~50 steps, both cures act within ~30
TAIL = 30  # the damage and the comparison read the mean over the last TAIL steps
# balanced enough: the busiest expert gets at most 2.5 times the mean load (a collapsed top-2
# router over 16 experts reaches 7: one expert among every token's two choices)
MAXVIO_TOL = 1.5
WEIGHT_TOL = 1e-6  # float32: the mixing weights must be the router's own probabilities
# float32, relative: the same weights spelled otherwise (renormalised twice) differ in their
# gradient by rounding (~1e-7); a gradient that bypasses the gather is off by order 1
GRAD_TOL = 1e-4

BALANCE_OF = {"buggy": "none", "summary": "aux", "fixed": "bias", "candidate": "bias"}
Select = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def collapse_config(balance: str, steps: int = STEPS) -> MahiaConfig:
    """The teaching config with :data:`COLLAPSE` applied and ``balance`` chosen; the cosine
    schedule is as long as the run, and the model trains on the catalog's device."""
    return MahiaConfig(balance=balance, max_steps=steps, device=current_device().type,
                       **COLLAPSE)


@torch.no_grad()
def add_shared_direction(model: torch.nn.Module, config: MahiaConfig,
                         offset: float = SHARED_OFFSET) -> torch.Tensor:
    """Add one common direction to every token the router sees (a reconstruction, see the
    module docstring): ``offset * sqrt(D) * u`` with ``|u| = 1`` is added to the bias of the
    text encoder's LayerNorm, the one in front of the MoE. Returns ``u`` (D,)."""
    g = torch.Generator().manual_seed(DIRECTION_SEED)
    u = torch.randn(config.d_model, generator=g)  # (D,)
    u = u / u.norm()
    bias = model.text.norm.bias  # (D,)
    bias.add_((offset * config.d_model ** 0.5 * u).to(bias.device, bias.dtype))
    return u


def mixing_weights(top_p: torch.Tensor) -> torch.Tensor:
    """What the layer mixes the K chosen experts' outputs with: the values ``select``
    returns, renormalised over the K (as :class:`mahiax.model.moe.TopKRouter` does). (N, K) ->
    (N, K). So ``probs.gather(-1, ids)`` and the same renormalised are one layer."""
    return top_p / top_p.sum(dim=-1, keepdim=True)


class SelectionCheck:
    """Wraps a learner's selection rule: checks its shapes and measures what the rules need.

    The rules grade the layer the rule is part of, not the tensor it returns: the router
    renormalises the returned values over the K chosen experts (:func:`mixing_weights`), so
    any values with the same renormalised weights (``probs.gather(-1, ids)``, or the same
    already renormalised) give the same layer output and the same gradient.

    - ``weight_error``: the largest gap between the mixing weights the layer derives from
      what it returns and those of the router's own probabilities of the experts it chose
      (0 when the bias chooses only);
    - ``detached``: it returned weights that carry no gradient back to the router;
    - ``grad_error``: the largest gap, relative to its size, between the gradient the layer's
      mixing weights send back to ``probs`` and the one ``probs.gather(-1, ids)`` sends (one
      fixed direction of the weights' gradient: a vector-Jacobian product);
    - ``rank_gap``: how far below the k-th best score ``probs + bias`` its worst chosen
      expert's score lies (0 when the ids are a top-k of ``probs + bias``; ties are fine);
    - ``repeated``: some token got the same expert twice.
    """

    def __init__(self, select: Select):
        if not callable(select):
            raise TypeError(
                f"router-collapse checks a selection function select(probs, bias, k) -> "
                f"(top-k probabilities, expert ids); got {type(select).__name__}"
            )
        self.select = select
        self.weight_error = 0.0
        self.detached = False
        self.grad_error = 0.0
        self.rank_gap = 0.0
        self.repeated = False

    def __call__(self, probs: torch.Tensor, bias: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.select(probs, bias, k)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError("select(probs, bias, k) must return a tuple (top-k probabilities "
                            f"(N, K), expert ids (N, K)); got {type(result).__name__}")
        top_p, ids = result
        n = probs.shape[0]
        if tuple(top_p.shape) != (n, k) or tuple(ids.shape) != (n, k) or ids.dtype != torch.int64:
            raise TypeError(
                f"select(probs, bias, k) must return ((N, K) probabilities, (N, K) int64 ids) "
                f"with N={n}, K={k}; got {tuple(top_p.shape)} and {tuple(ids.shape)} "
                f"{ids.dtype}"
            )
        own = probs.detach().gather(-1, ids)  # (N, K) the router's probabilities of the chosen
        gap = float((mixing_weights(top_p.detach().to(own.dtype)) - mixing_weights(own))
                    .abs().max())
        self.weight_error = max(self.weight_error, gap if gap == gap else float("inf"))  # NaN
        if torch.is_grad_enabled() and probs.requires_grad:
            if not top_p.requires_grad:
                self.detached = True
            else:
                self.grad_error = max(self.grad_error, _vjp_gap(probs, top_p, ids))
        with torch.no_grad():
            score = probs.detach() + bias.detach().to(probs.dtype)  # (N, E) what top-k reads
            kth = score.topk(k, dim=-1).values[:, -1:]  # (N, 1) the k-th best score
            gap = (kth - score.gather(-1, ids)).clamp_min(0)  # (N, K) 0 for a top-k choice
            self.rank_gap = max(self.rank_gap, float(gap.max()))
            if k > 1 and bool((ids.sort(dim=-1).values.diff(dim=-1) == 0).any()):
                self.repeated = True
        return top_p, ids

    def rules_broken(self) -> list[dict[str, str]]:
        """What the lesson's rules forbid, from what was measured (:func:`broken_rule`)."""
        broken = []
        if self.repeated:
            broken.append(broken_rule(
                "repeated expert ids",
                "a token's ids repeat an expert: top-k chooses k different experts"))
        if self.rank_gap > WEIGHT_TOL:
            broken.append(broken_rule(
                "ids not the top-k of probs + bias",
                f"the ids are not the top-k of probs + bias: a chosen expert's score lies up "
                f"to {self.rank_gap:.3g} below the k-th best (the bias is added to the "
                f"probabilities the top-k reads)"))
        if self.weight_error > WEIGHT_TOL:
            broken.append(broken_rule(
                "the bias weighs the mix",
                f"the mixing weights are not the router's probabilities of the chosen experts "
                f"(off by up to {self.weight_error:.3g}, both renormalised over the K chosen, as "
                f"the layer mixes them): the bias may choose the experts, never weigh them; "
                f"return probs.gather(-1, ids) (the router renormalises)"))
        if self.detached:
            broken.append(broken_rule(
                "detached mixing weights",
                "the mixing weights are detached: the router gets no gradient from the task "
                "loss"))
        elif self.grad_error > GRAD_TOL:
            broken.append(broken_rule(
                "mixing weights around the gather",
                f"the mixing weights do not send the router the gradient of "
                f"probs.gather(-1, ids) (off by up to {self.grad_error:.3g} of its size): "
                f"their values must come from probs through the gather, not around it"))
        return broken


def _vjp_gap(probs: torch.Tensor, top_p: torch.Tensor, ids: torch.Tensor) -> float:
    """How far the gradient that the layer's mixing weights (from ``top_p``) send back to
    ``probs`` is from the one ``probs.gather(-1, ids)`` sends, for one fixed direction ``v``
    of the weights' gradient, relative to the reference's largest entry. No RNG is drawn
    (training continues unchanged) and nothing accumulates into ``.grad``."""
    n, k = ids.shape
    v = torch.arange(n * k, device=probs.device, dtype=probs.dtype).reshape(n, k).sin()
    (got,) = torch.autograd.grad(mixing_weights(top_p.to(probs.dtype)), probs, v,
                                 retain_graph=True, allow_unused=True)
    (want,) = torch.autograd.grad(mixing_weights(probs.gather(-1, ids)), probs, v,
                                  retain_graph=True)
    if got is None:
        return float("inf")
    gap = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)
    return gap if gap == gap else float("inf")


def _run(variant: str, steps: int, candidate: object) -> Outcome:
    """Train one variant of the collapse setting and measure its load every step."""
    from mahiax.training.trainer import Trainer  # late: the trainer imports the whole model

    out = Outcome(entry="router-collapse", variant=variant, steps_requested=steps)
    config = collapse_config(BALANCE_OF[variant], steps)
    check = SelectionCheck(candidate) if variant == "candidate" else None  # type: ignore[arg-type]
    series: dict[str, list] = {"max_vio": [], "dead": [], "task_loss": [],
                               "tokens_per_expert": []}
    if config.balance == "bias":
        series["bias"] = []
    times: list[float] = []
    observe = trainer_observer()  # a recording's training probe, if one is recording
    with isolated():
        trainer = Trainer(config)
        add_shared_direction(trainer.model, config)
        if check is not None:
            trainer.model.text.moe.router.select = check
        for step in range(steps):
            try:
                rec = trainer.step()
            except Exception as e:  # a candidate's error is what the checker reports
                out.error_type, out.error_message, out.error_step = type(e).__name__, str(e), step
                break
            load = rec.load
            series["max_vio"].append(float(load["max_vio"]))
            series["dead"].append(int(load["dead"]))
            series["task_loss"].append(statistics.fmean(rec.task_losses.values()))
            series["tokens_per_expert"].append([float(t) for t in load["tokens_per_expert"]])
            if "bias" in series:
                series["bias"].append([float(b) for b in load["bias"]])
            times.append(rec.step_time)
            out.steps_run += 1
            if observe is not None:
                observe(trainer, rec)
    tail = {key: statistics.fmean(series[key][-TAIL:]) if series[key] else float("nan")
            for key in ("max_vio", "dead", "task_loss")}
    tail["step_ms"] = statistics.median(times) * 1e3 if times else float("nan")
    read = min(TAIL, out.steps_run)  # a shorter run (a quick check) reads all its steps
    out.figures.update(balance=config.balance, series=series, tail=tail, tail_steps=read,
                       damage=f"MaxVio, mean of the last {read} steps",
                       damage_tol=MAXVIO_TOL, damage_is_level=True)
    if out.steps_run:
        out.state_diff = tail["max_vio"]
    if check is not None:
        broken = check.rules_broken()
        if broken:
            out.figures["rules_broken"] = broken
    return out


def compare_cures(outcomes: dict[str, Outcome]) -> str:
    """One sentence comparing the three runs on MaxVio, dead experts, task loss and time."""
    runs = [(BALANCE_OF[v], outcomes[v].figures.get("tail")) for v in ("buggy", "summary",
                                                                        "fixed")]
    if any(t is None for _, t in runs):
        return ""
    names = " / ".join(b for b, _ in runs)

    def row(key: str, fmt: str) -> str:
        return " / ".join(format(t[key], fmt) for _, t in runs)  # type: ignore[index]

    return (
        f"Last {TAIL} steps, {names}: MaxVio {row('max_vio', '.2f')}; dead experts "
        f"{row('dead', '.1f')}; task loss {row('task_loss', '.3f')}; "
        f"{row('step_ms', '.1f')} ms a step (median wall time: noisy on a shared machine)."
    )


def plain_top_k(probs: torch.Tensor, bias: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The unbiased top-k: ignores the bias, so nothing balances the load."""
    return torch.topk(probs, k, dim=-1)  # (N, K), (N, K)


def bias_in_weights(probs: torch.Tensor, bias: torch.Tensor,
                    k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Band-aid: top-k of ``probs + bias`` *with its values*: the bias also weighs the mix."""
    return torch.topk(probs + bias, k, dim=-1)  # (N, K), (N, K)


def selection_without_gradient(probs: torch.Tensor, bias: torch.Tensor,
                               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Band-aid: the whole selection under ``no_grad``: right ids and values, but the mixing
    weights no longer reach the router."""
    with torch.no_grad():
        ids = torch.topk(probs + bias, k, dim=-1).indices  # (N, K)
        return probs.gather(-1, ids), ids  # (N, K) detached, (N, K)


def _candidates() -> dict[str, object]:
    from mahiax.model.moe import biased_top_k

    return {
        "buggy": plain_top_k,
        # the aux loss acts through the objective, not the selection: as a selection rule the
        # summary's model uses the plain top-k (the verdict judges the aux loss itself)
        "summary": plain_top_k,
        "fixed": biased_top_k,
        "band-aid: the bias in the mixing weights too": bias_in_weights,
        "band-aid: the whole selection under no_grad": selection_without_gradient,
    }


ROUTER_COLLAPSE = BugEntry(
    id="router-collapse",
    section="MoE (not in the summary)",
    lessons=("11_router_collapse",),
    trained_by="trainer",
    component="MixtureOfExperts router (the summary's ExpertRouter)",
    title="Routing collapse: a few experts take every token",
    pattern="ids = torch.topk(probs, k).indices  # and nothing balances the load",
    summary_fix=("loss = task_loss + aux_loss_coef * E * sum(f_i * P_i)  # the Switch aux loss: "
                 "the lab's stand-in, the summary proposes no balancing"),
    right_fix=("ids = topk(probs + bias, k).indices; weights = probs.gather(ids); "
               "bias += rate * sign(mean_load - load)  # DeepSeek-V3, outside autograd"),
    explanation=(
        "A router that is never told to spread the load lets the experts it favours early "
        "train faster, win more tokens and starve the rest (Shazeer et al. 2017). The "
        "Switch/Mixtral auxiliary loss adds a gradient that pushes the router toward equal "
        "load, at the price of a second objective the task loss competes with. DeepSeek-V3's "
        "auxiliary-loss-free balancing adds a per-expert bias to the routing scores for the "
        "top-k choice only, and moves it each step by a fixed rate toward the mean load "
        "(Wang et al. 2024): no gradient, the mixing weights stay the router's own "
        "probabilities."
    ),
    runner=_run,
    steps=STEPS,
    candidate_kind=(
        "a selection function select(probs, bias, k) -> (top-k probabilities (N, K), expert "
        "ids (N, K) int64), called by the router in place of mahiax.model.moe.biased_top_k and "
        "trained with balance='bias'"
    ),
    candidates=_candidates,
    compare=compare_cures,
    run_config=lambda variant, steps: collapse_config(BALANCE_OF[variant], steps),
)
