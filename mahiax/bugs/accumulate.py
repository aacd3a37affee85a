"""Summary section 2: ``output[batch_idx] += layer_weight * layer_output`` in the fabric and router.

The buggy code accumulated each sample's weighted block outputs *in place* into ``output``,
which started as an alias of the input ``x`` ("start from the residual"). The router's gate
had saved ``x`` for its backward, and each block's LayerNorm saved a view of it, so every
``+=`` bumped the version counter of a saved tensor and backward refuses to run.
"""

from __future__ import annotations

import torch
from torch import nn

from mahiax.bugs.catalog import BugEntry
from mahiax.bugs.harness import swap_class, train_variant
from mahiax.bugs.outcome import Outcome
from mahiax.model.fabric import DynamicLayerRouter, DynamicNeuroFabric, LayerRouting, MetaController


def _per_sample_inplace(
    x: torch.Tensor, blocks: nn.ModuleList, routing: LayerRouting
) -> torch.Tensor:
    output = x  # the alias: "start from the residual"
    for batch_idx in range(x.shape[0]):
        for slot in range(routing.ids.shape[1]):
            layer_output = blocks[int(routing.ids[batch_idx, slot])](x[batch_idx])
            layer_weight = routing.weights[batch_idx, slot].to(x.dtype)
            output[batch_idx] += layer_weight * layer_output  # BUG: in place, x was saved
    return output


def _per_sample_out_of_place(
    x: torch.Tensor, blocks: nn.ModuleList, routing: LayerRouting
) -> torch.Tensor:
    output = x
    for batch_idx in range(x.shape[0]):
        for slot in range(routing.ids.shape[1]):
            layer_output = blocks[int(routing.ids[batch_idx, slot])](x[batch_idx])
            layer_weight = routing.weights[batch_idx, slot].to(x.dtype)
            row = torch.zeros_like(x)
            row[batch_idx] = layer_weight * layer_output  # a fresh tensor nobody saved
            output = output + row  # the summary's "non-in-place operation"
    return output


class BuggyFabric(DynamicNeuroFabric):
    """The original fabric: per-sample loop, in-place accumulation into an alias of x."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, LayerRouting]:
        routing = self.router(x)
        if self.training:
            self.controller.observe(routing)
        return _per_sample_inplace(x, self.blocks, routing), routing


class SummaryFabric(DynamicNeuroFabric):
    """The summary's fix: the same loop with non-in-place additions."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, LayerRouting]:
        routing = self.router(x)
        if self.training:
            self.controller.observe(routing)
        return _per_sample_out_of_place(x, self.blocks, routing), routing


class BuggyLayerRouter(DynamicLayerRouter):
    """The original router's mix: the same in-place pattern, inside the router."""

    def mix(self, x: torch.Tensor, blocks: nn.ModuleList, routing: LayerRouting) -> torch.Tensor:
        return _per_sample_inplace(x, blocks, routing)


class SummaryLayerRouter(DynamicLayerRouter):
    """The summary's fix for the router: non-in-place additions."""

    def mix(self, x: torch.Tensor, blocks: nn.ModuleList, routing: LayerRouting) -> torch.Tensor:
        return _per_sample_out_of_place(x, blocks, routing)


class SilentFabric(DynamicNeuroFabric):
    """A wrong fix: the clean forward, out of place, but the controller never observes the
    routing, so the layer importance never moves."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, LayerRouting]:
        routing = self.router(x)
        return self.router.mix(x, self.blocks, routing), routing


def _module_runner(entry_id: str, attr: str, classes: dict[str, type | None], base: type):
    """A runner that swaps ``model.<attr>`` to the variant's class and trains. A fabric's
    run also measures its controller: after every step, its importance against a clean
    ``MetaController`` fed the same routing (the fabric must call ``controller.observe``)."""

    def run(variant: str, steps: int, candidate: object = None) -> Outcome:
        cls = candidate if variant == "candidate" else classes[variant]
        if variant == "candidate" and not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"a candidate for {entry_id!r} must be a subclass of {base.__name__}")
        seen: list[LayerRouting] = []  # the routing of this step's forward
        truth: dict[str, MetaController] = {}
        worst = [0.0]

        def install(model):
            if attr == "fabric":
                ctl = model.fabric.controller
                truth["ema"] = MetaController(ctl.importance.numel(), ctl.momentum).double()
                model.fabric.router.register_forward_hook(lambda m, i, o: seen.append(o))
            if cls is not None:
                target = model.fabric if attr == "fabric" else model.fabric.router
                swap_class(target, cls)

        def on_step(ctx, out) -> None:
            if seen:
                ema = truth["ema"].to(ctx.batch.tabular.device)  # built before the model moved
                ema.observe(seen[-1])  # the clean controller, fed the same routing
                ema.commit()
                seen.clear()
                diff = (ctx.model.fabric.controller.importance - ema.importance).abs().max()
                worst[0] = max(worst[0], float(diff))
            out.state_diff = worst[0]

        out = train_variant(entry_id, variant, steps, install,
                            on_step=on_step if attr == "fabric" else None)
        if attr == "fabric":
            out.figures["damage"] = (
                "largest error of the controller's layer importance vs a clean MetaController "
                "fed the same routing (call self.controller.observe(routing) in training mode)"
            )
        return out

    return run


FABRIC_ACCUMULATE = BugEntry(
    id="fabric-accumulate",
    section="2",
    lessons=("02_inplace_accumulation",),
    component="DynamicNeuroFabric",
    title="In-place accumulation of block outputs in the fabric",
    pattern="output = x\nfor batch_idx ...: output[batch_idx] += layer_weight * layer_output",
    summary_fix="replace the in-place addition with non-in-place operations",
    right_fix="accumulate out of place (x.index_add(...) returns a new tensor), grouped by block",
    explanation=(
        "output starts as an alias of x, and the router's gate saved x for its backward. Every "
        "in-place += bumps x's version counter, so backward finds a saved tensor that changed "
        "and stops. Accumulating into new tensors leaves x as it was: the summary's fix holds."
    ),
    runner=_module_runner(
        "fabric-accumulate", "fabric",
        {"buggy": BuggyFabric, "summary": SummaryFabric, "fixed": None}, DynamicNeuroFabric,
    ),
    candidate_kind=(
        "a subclass of mahiax.model.fabric.DynamicNeuroFabric overriding forward(x) -> (output, "
        "routing), calling self.controller.observe(routing) in training mode; after every "
        "step the controller's importance is compared with a clean MetaController's"
    ),
    candidates=lambda: {
        "buggy": BuggyFabric, "summary": SummaryFabric, "fixed": DynamicNeuroFabric,
        "wrong: the controller never observes": SilentFabric,
    },
)

LAYER_ROUTER_ACCUMULATE = BugEntry(
    id="layer-router-accumulate",
    section="2",
    lessons=("02_inplace_accumulation",),
    component="DynamicLayerRouter",
    title="In-place accumulation of layer outputs in the layer router",
    pattern="output = x\nfor batch_idx ...: output[batch_idx] += layer_weight * layer_output",
    summary_fix="replace the in-place addition with non-in-place operations",
    right_fix="mix out of place, each block once on the samples that chose it",
    explanation=(
        "The same pattern as the fabric's, in DynamicLayerRouter.mix: the in-place += writes "
        "into x, which the gate saved. The out-of-place version is correct; the clean router "
        "also runs each block once per batch instead of once per sample."
    ),
    runner=_module_runner(
        "layer-router-accumulate", "router",
        {"buggy": BuggyLayerRouter, "summary": SummaryLayerRouter, "fixed": None},
        DynamicLayerRouter,
    ),
    candidate_kind=(
        "a subclass of mahiax.model.fabric.DynamicLayerRouter overriding mix(x, blocks, routing)"
    ),
    candidates=lambda: {
        "buggy": BuggyLayerRouter, "summary": SummaryLayerRouter, "fixed": DynamicLayerRouter,
    },
)
