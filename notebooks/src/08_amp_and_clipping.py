# Source of notebooks/08_amp_and_clipping.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 08 · Mixed precision: GradScaler, and unscale before clipping
#
# **Goal.** See why a gradient scaler exists, what it does to the gradients, and what
# clipping them *before* `scaler.unscale_` silently does to the gradient the optimiser
# receives, and what that does to an SGD step and to an AdamW step (MAHIA-X trains with
# AdamW). Then the order that is right. About 15 minutes.
#
# **Context (read cold).** *Mixed precision* (`torch.autocast`) runs the heavy operations of
# the forward pass (matrix multiplies, convolutions) in a 16-bit float type, and the
# parameters stay `float32`. `float16` cannot hold very small numbers: they **underflow**
# (round to zero). A **gradient scaler** (`torch.amp.GradScaler`) therefore multiplies the
# loss by a large **scale** (65,536 to start) before `backward()`, so every gradient comes
# out 65,536 times larger and survives, and divides the gradients by the scale again
# (**unscales** them) before the optimiser step. The summary's only AMP line is
# `precision_manager.scaler.scale(loss).backward(retain_graph=True)` (its section 3).
# This lesson's bug raises **no error**: that is what makes it dangerous.
#
# PyTorch docs this lesson builds on:
# [Gradient Scaling and `torch.amp.GradScaler`](https://docs.pytorch.org/docs/stable/amp.html#gradient-scaling),
# and the AMP examples'
# [Working with Unscaled Gradients](https://docs.pytorch.org/docs/stable/notes/amp_examples.html#working-with-unscaled-gradients)
# (its [Gradient clipping](https://docs.pytorch.org/docs/stable/notes/amp_examples.html#gradient-clipping)
# example is the right order).

# %%
import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from torch import nn

from mahiax import bugs, lessons
from mahiax.bugs.harness import harness_config
from mahiax.bugs.loops import amp_loop
from mahiax.training.objective import make_optimizer, objective
from mahiax.training.precision import PrecisionManager

torch.manual_seed(0)
print("torch", torch.__version__)

# %% [markdown]
# ## 1. Why a scaler exists
#
# **Predict.** `float16`'s smallest positive number is about 6e-8. What is
# `torch.tensor(1e-8, dtype=torch.float16)`? And the product of two `float16` values of
# 1e-4 (the kind of product the chain rule makes in a backward pass)?

# %%
smallest = torch.nextafter(torch.tensor(0.0, dtype=torch.float16),
                           torch.tensor(1.0, dtype=torch.float16))
print(f"smallest positive float16: {smallest.item():.3e}")
tiny = torch.tensor(1e-8, dtype=torch.float16)
product = torch.tensor(1e-4, dtype=torch.float16) * torch.tensor(1e-4, dtype=torch.float16)
print(f"1e-8 in float16: {tiny.item()};  1e-4 * 1e-4 in float16: {product.item()}")
scaled = torch.tensor(1e-8 * 65536, dtype=torch.float16)  # the same value, scaled first
print(f"1e-8 * 65536 in float16: {scaled.item():.3e}; divided back in float32: "
      f"{scaled.float().item() / 65536:.3e}")
bf16 = torch.tensor(1e-8, dtype=torch.bfloat16)
print(f"1e-8 in bfloat16: {bf16.item():.3e}")

# what autocast computes in float16, and what stays float32
lin = nn.Linear(4, 1)
with torch.autocast("cpu", dtype=torch.float16):
    out = lin(torch.randn(3, 4))  # (3, 1)
out.float().sum().backward()
print(f"under autocast: output {out.dtype}; weight {lin.weight.dtype}, "
      f"weight.grad {lin.weight.grad.dtype}")

# %% [markdown]
# Both underflow to exactly 0: a gradient that small, met inside a `float16` backward, would
# be lost, and the weights upstream of it would never learn. Scaled by 65,536 first, the same
# value is representable, and dividing it back in `float32` recovers about 1e-8. Under
# autocast the layer's output is `float16`, but the parameter and its `.grad` stay `float32`:
# that is where the scaler unscales. `bfloat16` keeps `float32`'s exponent range, so 1e-8
# survives there: bfloat16 needs no scaler (`mahiax.training.precision` uses none for it). That is
# all a scaler is for.

# %%
assert tiny.item() == 0.0 and product.item() == 0.0 and scaled.item() > 0
assert bf16.item() > 0
assert out.dtype == torch.float16
assert lin.weight.dtype == lin.weight.grad.dtype == torch.float32

# %% [markdown]
# ## 2. What the scaler does to the gradients
#
# `GradScaler` exists for the CPU too (`GradScaler("cpu")`), so this runs anywhere. The
# small model below stays in `float32`: nothing underflows here, but the scaler does
# exactly the same multiplication and division as on a GPU with `float16`.
# `get_total_norm` is the **global norm** that clipping uses: the L2 norm of all the
# parameters' gradients taken together.

# %%
model = nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu")
x, y = torch.randn(32, 8), torch.randn(32, 1)  # (32, 8), (32, 1)

loss = nn.functional.mse_loss(model(x), y)
scaler.scale(loss).backward()  # the gradients are now scale times the true ones
scaled_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
scaler.unscale_(opt)  # divides them by the scale, in place
true_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
print(f"scale {scaler.get_scale():.0f}: scaled grad norm {scaled_norm:.1f}, "
      f"true grad norm {true_norm:.3f}, ratio {scaled_norm / true_norm:.0f}")
assert abs(scaled_norm / true_norm - scaler.get_scale()) < 1.0

# %% [markdown]
# `unscale_` may run at most once per optimiser per step; a second call is the one error in
# this lesson (you meet it when you add `unscale_` to a loop that already had one):

# %% tags=["raises-exception"]
scaler.unscale_(opt)

# %%
with lessons.expect_error(RuntimeError, "unscale_() has already been called"):
    scaler.unscale_(opt)
scaler.step(opt)  # knows the gradients are unscaled already: steps without dividing again
scaler.update()

# %% [markdown]
# ## 3. Clipping before unscaling: what the optimiser receives
#
# `clip_grad_norm_(params, max_norm)` rescales the gradients so that their global norm is at
# most `max_norm`. Called on **scaled** gradients, it sees the norm `scale × g` (g: the true
# norm). Whenever `scale × g > max_norm`, which with a scale of 65,536 is almost always, it
# rescales them to norm `max_norm`; `scaler.step()` then unscales, so the optimiser receives
# a gradient of norm **`max_norm / scale`**, whatever the true norm was. The right order
# (unscale, then clip) gives it norm `min(g, max_norm)`.
#
# What a wrong gradient does to the step depends on the optimiser. This section first uses
# plain SGD, whose step is `lr ×` the gradient: a gradient too small by some factor makes
# the step too small by the same factor. AdamW comes at the end of the section.
#
# **Predict.** A small regression whose true gradient norm is about 3, at `max_norm` 1, 100
# and 1,000,000: how many times too small is the gradient the optimiser receives at the
# first step (so SGD's first step) each time?

# %%
def make_regression() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The same small network and data every call: 8 inputs -> 16 tanh units -> 1 output."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    xs = torch.randn(256, 8)  # (256, 8)
    return net, xs, xs @ torch.randn(8, 1)  # targets (256, 1)


def first_step(max_norm: float) -> tuple[float, float, float]:
    """(true grad norm, norm applied by clip-then-step, norm applied by unscale-then-clip)."""
    applied = []
    for unscale_first in (False, True):
        net, xs, ys = make_regression()
        opt, scaler = torch.optim.SGD(net.parameters(), lr=0.1), torch.amp.GradScaler("cpu")
        scaler.scale(nn.functional.mse_loss(net(xs), ys)).backward()
        if unscale_first:
            scaler.unscale_(opt)
            true = torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]).item()
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
        if not unscale_first:
            scaler.unscale_(opt)  # what scaler.step() does first when no unscale_ ran yet
        applied.append(torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]).item())
    return true, applied[0], applied[1]


ratios = {}  # max_norm -> (true norm, norm applied unscale-first / norm applied clip-first)
for max_norm in (1.0, 100.0, 1e6):
    g, clip_first, unscale_first = first_step(max_norm)
    ratios[max_norm] = (g, unscale_first / clip_first)
    print(f"max_norm {max_norm:>9,.0f}: true norm {g:.2f}; applied: clip first "
          f"{clip_first:.2e}, unscale first {unscale_first:.2f}; unscale first / clip first "
          f"= {unscale_first / clip_first:,.0f}")

# %% [markdown]
# So clip-first makes the gradient the optimiser receives (and SGD's step with it) too
# small by
#
# - `scale` (65,536) when the true norm exceeds `max_norm`: the clip should have acted;
# - `scale × g / max_norm` when it does not: the clip should have done nothing, and still
#   shrinks the gradient, by less;
# - nothing only when `max_norm ≥ scale × g`.
#
# At `max_norm` 1 the true norm (about 3) exceeds the threshold: the gradient is 65,536
# times too small. At 100 the right clip does nothing, yet clip-first still shrinks it, by
# `scale × g / max_norm` (the ratio printed above, `65,536 × 3 / 100` in round figures).
# Only a threshold above `scale × g` (printed below) leaves the step alone. No error in any
# case. The next cell checks all three.

# %%
SCALE = torch.amp.GradScaler("cpu").get_scale()  # GradScaler's initial scale
g = ratios[1.0][0]
print(f"scale {SCALE:,.0f}; scale × true norm = {SCALE * g:,.0f}")
assert 2.5 < g < 3.5  # "about 3"
assert abs(ratios[1.0][1] / SCALE - 1) < 1e-3  # g > max_norm: scale times too small
assert abs(ratios[100.0][1] / (SCALE * g / 100) - 1) < 1e-3  # scale * g / max_norm
assert abs(ratios[1e6][1] - 1) < 1e-4  # max_norm above scale * g: untouched

# %% [markdown]
# Now train the same regression 60 steps both ways, with SGD (lr 0.1). **Predict.** With
# clip-first at `max_norm` 1, does the loss fall at all? Then move the slider: from which `max_norm` on
# does clip-first learn like the right order?

# %%
def train(order: str, max_norm: float, steps: int = 60) -> list[float]:
    """The regression's loss at every step: SGD, a GradScaler and one clipping order."""
    net, xs, ys = make_regression()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(net(xs), ys)
        losses.append(loss.item())
        opt.zero_grad()
        scaler.scale(loss).backward()
        if order == "unscale, then clip":
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
        scaler.step(opt)
        scaler.update()
    return losses


ORDERS = ["clip, then step (the bug)", "unscale, then clip"]
order_pick = widgets.ToggleButtons(options=ORDERS, description="order")
norm_pick = widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=6, step=0.5,
                                   description="max_norm", continuous_update=False)
chart = widgets.Output()


def redraw(change=None) -> None:
    fig = go.Figure()
    for order in ORDERS:
        chosen = order == order_pick.value
        fig.add_trace(go.Scatter(y=train(order, norm_pick.value), name=order,
                                 line={"width": 3 if chosen else 1}, opacity=1 if chosen else 0.4))
    fig.update_layout(title=f"training loss (SGD), clip_grad_norm_ max_norm={norm_pick.value:,.3g}",
                      xaxis_title="step", yaxis_title="MSE", height=340)
    chart.clear_output(wait=True)
    with chart:
        fig.show()


order_pick.observe(redraw, names="value")
norm_pick.observe(redraw, names="value")
redraw()
widgets.VBox([order_pick, norm_pick, chart])

# %%
runs = {}  # (order, max_norm) -> the loss at each of the 60 steps
for max_norm in (1.0, 100.0, 1e6):
    for order in ORDERS:
        runs[order, max_norm] = train(order, max_norm)
    first, second = (runs[order, max_norm] for order in ORDERS)
    print(f"max_norm {max_norm:>9,.0f}: loss at the 60th step, clip first {first[-1]:.3f} "
          f"(from {first[0]:.3f}), unscale first {second[-1]:.3f} (from {second[0]:.3f})")

# %% [markdown]
# With SGD, at `max_norm` 1 the clip-first loss does not fall (the chart's flat line), at
# 100 it barely moves, while the right order falls. Once `max_norm` is above `scale × g` (printed
# in section 3) the clip does nothing in either order and the two lines coincide (1e6
# above).

# %%
clip_first, unscale_first = (runs[order, 1.0] for order in ORDERS)
assert clip_first[-1] > 0.95 * clip_first[0] and unscale_first[-1] < 0.5 * unscale_first[0]
clip_first = runs[ORDERS[0], 100.0]
assert clip_first[-1] > 0.95 * clip_first[0] and runs[ORDERS[1], 100.0][-1] < 0.5 * clip_first[0]
assert runs[ORDERS[0], 1e6] == runs[ORDERS[1], 1e6]

# %% [markdown]
# **With AdamW.** MAHIA-X does not train with SGD but with AdamW (section 4 prints the
# optimiser of the catalog's runs).
#
# **Predict.** The same regression, 60 steps at `max_norm` 1, with `torch.optim.AdamW` at
# lr 1e-2 instead of SGD: does clip-first stall as it did with SGD? The next cell trains
# both optimisers in both orders and prints, for each run, the loss, the norm of the
# gradient the optimiser stepped with, and the norm of the update it made.

# %%
OPTIMISERS = {"SGD, lr 0.1": lambda ps: torch.optim.SGD(ps, lr=0.1),
              "AdamW, lr 1e-2": lambda ps: torch.optim.AdamW(ps, lr=1e-2)}


def trace(name: str, order: str, max_norm: float = 1.0, steps: int = 60) -> dict:
    """Per step: the loss, the norm of the gradient the optimiser stepped with, and the norm
    of the update it made to the parameters."""
    net, xs, ys = make_regression()
    params = list(net.parameters())
    opt, scaler = OPTIMISERS[name](params), torch.amp.GradScaler("cpu")
    rec = {"loss": [], "grad": [], "update": []}
    for _ in range(steps):
        loss = nn.functional.mse_loss(net(xs), ys)
        rec["loss"].append(loss.item())
        opt.zero_grad()
        scaler.scale(loss).backward()
        if order == "unscale, then clip":
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        before = [p.detach().clone() for p in params]
        scaler.step(opt)  # unscales .grad in place first, unless unscale_ ran
        scaler.update()
        rec["grad"].append(torch.nn.utils.get_total_norm([p.grad for p in params]).item())
        rec["update"].append(torch.nn.utils.get_total_norm(
            [p.detach() - b for p, b in zip(params, before, strict=True)]).item())
    return rec


traces = {(name, order): trace(name, order) for name in OPTIMISERS for order in ORDERS}
for (name, order), rec in traces.items():
    print(f"{name} | {order}: loss {rec['loss'][0]:.3f} -> {rec['loss'][-1]:.3f}\n"
          f"    gradient norm over the 60 steps {min(rec['grad']):.3g} to "
          f"{max(rec['grad']):.3g}; update norm at step 0 {rec['update'][0]:.3g}, "
          f"mean {sum(rec['update']) / len(rec['update']):.3g}")
for name in OPTIMISERS:
    clip_run, unscale_run = (traces[name, order] for order in ORDERS)
    print(f"{name}: step 0's update norm, unscale first / clip first = "
          f"{unscale_run['update'][0] / clip_run['update'][0]:,.2f}")

# %% [markdown]
# No: with AdamW clip-first learns, and here it even ends lower than the right order. Adam
# divides each coordinate's step by the running root mean square of that coordinate's
# gradients (plus `eps`, 1e-8 by default), so a factor that every step's gradient shares
# cancels: step 0's updates of the two orders differ by a factor close to 1, where SGD's
# differ by about 65,536 (the last two lines).
#
# What clip-first does under Adam shows in the gradient norms: every step's gradient has
# norm `max_norm / scale` (1.53e-05), whatever the true norm was, while the right order's
# is cut to 1 only while the true norm is above 1 and keeps its own size after. Clipping
# before `unscale_` turns the clip into a normalisation of every step: a spike is not cut,
# it is scaled to the same norm as every other step. The lower loss does not make the
# order right; it is a different algorithm from the clip `max_norm=1` asks for. Lesson 10,
# section 3, shows it with a gradient spike, and where `eps` stops the cancelling (a model
# with a million weights). No error in either case.

# %%
sgd_clip, sgd_unscale = (traces["SGD, lr 0.1", order] for order in ORDERS)
adam_clip, adam_unscale = (traces["AdamW, lr 1e-2", order] for order in ORDERS)
assert all(abs(n * SCALE - 1) < 1e-3 for n in sgd_clip["grad"] + adam_clip["grad"])
assert min(adam_unscale["grad"]) < 0.5 and abs(max(adam_unscale["grad"]) - 1) < 1e-5
assert adam_clip["loss"][-1] < adam_unscale["loss"][-1] < 0.1 * adam_unscale["loss"][0]
assert 0.5 < adam_clip["update"][0] / adam_unscale["update"][0] <= 1
assert abs(sgd_unscale["update"][0] / sgd_clip["update"][0] / SCALE - 1) < 1e-2
assert sgd_clip["loss"][-1] > 0.95 * sgd_clip["loss"][0]

# %% [markdown]
# ## 4. In MAHIA-X, measured
#
# > **Reconstruction.** The summary never says that the demo clipped gradients: its only AMP
# > line is `precision_manager.scaler.scale(loss).backward(retain_graph=True)`. The lab
# > assumes the common pattern of clipping with `clip_grad_norm_(params, 1.0)` between that
# > backward and `scaler.step()`, where the gradients are still scaled. The next cell shows
# > the loop the catalog runs: `buggy` clips first, `summary` adds the summary's
# > `retain_graph=True` and nothing else, `fixed` unscales first (`clip` builds two wrong
# > loops the exercise grades).
# >
# > The run is also simplified: the catalog's model trains in float64 and the loop runs no
# > `autocast` (the source below has none), so nothing is computed in `float16` and nothing
# > underflows. What the order bug needs is still all there: the `GradScaler` multiplies the
# > loss by its scale, every gradient comes out `scale` times larger (section 2), and a clip
# > before `unscale_` compares `scale ×` the true norm with `max_norm`. The cell after the
# > verdict prints the dtypes of the run's model state.

# %%
lessons.source(amp_loop, "the catalog's AMP step (the lab's reconstruction)")

# %% [markdown]
# The catalog trains the tiny MAHIA-X model 4 steps with each variant, with the optimiser
# the trainer uses (printed after the verdict), and compares the
# gradient the optimiser applied (what `optimizer.step()` found in `.grad` when it ran, read
# by an optimizer step pre-hook) with the correctly clipped one (the **damage**: the largest
# difference, over steps and parameters).
#
# **Predict.** Does `retain_graph=True` change anything here: less damage, the same, or an
# error?

# %%
v_amp = bugs.verdict("amp-clip-before-unscale")
lessons.verdict_report(v_amp)

# %%
lessons.outcome_table(v_amp.outcomes)[["error", "steps run", "max grad diff", "damage"]]

# %% [markdown]
# **Expected verdict** on the summary's fix for `amp-clip-before-unscale`: **no-effect**.
#
# `retain_graph` only decides whether the graph's saved tensors are freed after the
# backward; it never touches the gradients, so `summary` applies exactly the gradients
# `buggy` applies (the same damage in the table). Only the order fixes it.

# %%
damage = {name: out.state_diff for name, out in v_amp.outcomes.items()}
print(damage)
dtypes = {t.dtype for out in v_amp.outcomes.values() for t in out.final_state.values()
          if t.is_floating_point()}
print("floating dtypes of the runs' model state:", dtypes)
harness_opt = make_optimizer([nn.Parameter(torch.zeros(1))], harness_config())
print("the optimiser the catalog's runs build:", type(harness_opt).__name__)
assert dtypes == {torch.float64} and type(harness_opt) is torch.optim.AdamW
assert damage["buggy"] == damage["summary"] > 1e-3 and damage["fixed"] < 1e-6

# %% [markdown]
# ## 5. The right order, in the package
#
# `PrecisionManager.clip` unscales first, then clips, and returns the true norm; the
# trainer calls it between `backward()` and `step()`.

# %%
lessons.source(PrecisionManager.clip, "the package's clip")

# %% [markdown]
# ## Exercise
#
# Write the training step as a loop `loop(ctx)` with a `GradScaler`: forward, scaled
# backward, clip to `max_norm=1.0`, `scaler.step`, `scaler.update`. The scaler must live
# across steps, so `make_loop()` creates it and returns the loop. As in lesson 04, compute
# the trainer's objective (`mahiax.training.objective.objective`), set `ctx.weights`, `ctx.losses` and
# `ctx.total` from it, call `ctx.zero_grad()`; and set
# `ctx.did_step = True` because your loop steps the optimiser itself.
# `lessons.check("amp-clip-before-unscale", make_loop())` grades it.

# %%
def make_loop():
    scaler = torch.amp.GradScaler("cpu")

    def loop(ctx) -> None:
        obj = objective(ctx.model, ctx.weighting, ctx.batch)  # the trainer's objective
        ctx.weights, ctx.losses, ctx.total = obj.weights, obj.losses, obj.total
        ctx.zero_grad()
        scaler.scale(ctx.total).backward()
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), 1.0)  # TODO
        scaler.step(ctx.optimizer)
        scaler.update()
        ctx.did_step = True

    return loop


print(lessons.check("amp-clip-before-unscale", make_loop()))

# %% [markdown]
# **Predict.** Two quick repairs: (a) keep the same clip, but call it after
# `scaler.step()` and `scaler.update()`, where `.grad` holds the unscaled gradients;
# (b) drop the clip altogether. Which of them does the checker pass? The next cell writes
# both as loops and checks them:

# %%
def make_repair(clip_at_end: bool):
    """The exercise's loop with its clip moved after scaler.update() (True) or dropped."""
    scaler = torch.amp.GradScaler("cpu")

    def loop(ctx) -> None:
        obj = objective(ctx.model, ctx.weighting, ctx.batch)
        ctx.weights, ctx.losses, ctx.total = obj.weights, obj.losses, obj.total
        ctx.zero_grad()
        scaler.scale(ctx.total).backward()
        scaler.step(ctx.optimizer)
        scaler.update()
        if clip_at_end:
            torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), 1.0)
        ctx.did_step = True

    return loop


after_step = bugs.check("amp-clip-before-unscale", make_repair(clip_at_end=True))
no_clip = bugs.check("amp-clip-before-unscale", make_repair(clip_at_end=False))
print("(a)", after_step)
print("(b)", no_clip)

# %% [markdown]
# Neither. After `scaler.step()` the update is already made: the optimiser stepped with the
# unscaled, unclipped gradients, and clipping `.grad` afterwards changes nothing it used.
# The checker compares the gradients `optimizer.step()` found when it ran (an optimizer step
# pre-hook reads them), so (a) is off by exactly as much as (b), no clipping at all.

# %%
assert not after_step.holds and not no_clip.holds
assert after_step.outcome.max_grad_diff == no_clip.outcome.max_grad_diff > 1e-3

# %% tags=["solution"]
def make_loop():
    """Unscale, then clip: the clip sees the true gradients."""
    scaler = torch.amp.GradScaler("cpu")

    def loop(ctx) -> None:
        obj = objective(ctx.model, ctx.weighting, ctx.batch)  # the trainer's objective
        ctx.weights, ctx.losses, ctx.total = obj.weights, obj.losses, obj.total
        ctx.zero_grad()
        scaler.scale(ctx.total).backward()
        scaler.unscale_(ctx.optimizer)
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), 1.0)
        scaler.step(ctx.optimizer)  # knows unscale_ already ran: does not unscale twice
        scaler.update()
        ctx.did_step = True

    return loop


result = bugs.check("amp-clip-before-unscale", make_loop())
print(result)
assert result.holds

# %% [markdown]
# Your attempts so far, oldest first (also on the dashboard's **My attempts** page):

# %%
lessons.my_attempts()

# %% [markdown]
# ## Check your understanding
#
# 1. Why does mixed-precision training with `float16` need a scaler at all, and why does
#    `bfloat16` usually not?
#
#    <details><summary>Answer</summary>
#
#    `float16` underflows below about 6e-8 (section 1: `1e-8` becomes 0), so small gradients
#    vanish; scaling the loss lifts them into range. `bfloat16` has `float32`'s exponent
#    range (it trades mantissa bits instead), so its small values do not underflow and
#    `mahiax.training.precision` uses no scaler for it.
#
#    </details>
#
# 2. With clip-first and a scale of 65,536, the true gradient norm is 3 and `max_norm` is 100.
#    What gradient norm does the optimiser receive, and what should it have received? What
#    does that do to an SGD step, and to an AdamW step?
#
#    <details><summary>Answer</summary>
#
#    The clip sees `65,536 × 3 = 196,608`, above 100, and rescales to 100; the unscale
#    divides by 65,536: `100 / 65,536 ≈ 0.0015`. The right order keeps the true norm 3
#    (below 100, no clipping), so the gradient is `196,608 / 100 ≈ 2,000` times too small
#    (section 3 measured it for its true norm of about 3), and so is SGD's step (`lr ×` the
#    gradient). AdamW divides by the gradient's running size, so a factor shared by every
#    step cancels (above `eps`): its steps are not shrunk by it, but every step's gradient
#    now has the same norm, `100 / 65,536`, a normalisation instead of a clip (section 3, the
#    AdamW cell; lesson 10, section 3).
#
#    </details>
#
# 3. Your loop calls `scaler.unscale_(opt)` before clipping. Does `scaler.step(opt)` divide
#    the gradients by the scale a second time?
#
#    <details><summary>Answer</summary>
#
#    No. The scaler records that `unscale_` ran for this optimiser in this step, so `step`
#    does not divide again: it reads the inf/NaN check that `unscale_` recorded and calls
#    `optimizer.step()` (section 4: the `fixed` variant, which unscales first, applies
#    exactly the right gradients, damage 0). Calling `unscale_` twice
#    before `update()` raises `RuntimeError: unscale_() has already been called...`
#    (section 2).
#
#    </details>
#
# 4. Why does the summary's `retain_graph=True` have no effect on this bug?
#
#    <details><summary>Answer</summary>
#
#    `retain_graph` only keeps the graph's saved tensors alive after `backward()`; it does
#    not change a single gradient value, and the bug is in what happens to the gradients
#    between `backward()` and `step()`. The catalog measured the same damage with and
#    without it (section 4).
#
#    </details>

# %% [markdown]
# ## Recap
#
# - `float16` underflows small values to zero (`1e-8` → 0); a `GradScaler` multiplies the
#   loss, hence every gradient, by its scale (65,536 at the start) and unscales before the
#   step.
# - Clipping scaled gradients hands the optimiser a gradient of norm `max_norm / scale`
#   whenever the *scaled* norm exceeds `max_norm`, which is almost always: 65,536 times too
#   small when the true norm exceeds `max_norm`, `scale × g / max_norm` times too small when
#   it does not. No error either way. With SGD (step = `lr ×` gradient) every step is that
#   much too small: training stalls or crawls. With AdamW, MAHIA-X's optimiser, the shared
#   factor cancels (above `eps`): training moves, but every step's gradient is normalised to
#   the same norm, so a spike is no longer cut (measured in section 3; lesson 10, section 3).
# - The summary's `retain_graph=True` has **no effect** on it (measured); that the demo
#   clipped at all is the lab's reconstruction.
# - Order: `scale(loss).backward()` → `unscale_(opt)` → `clip_grad_norm_` → `step` →
#   `update`; `unscale_` at most once per optimiser per step. A clip after `step` comes too
#   late: the update has used the unclipped gradients (the exercise's checker reads them at
#   `optimizer.step()`). See the AMP examples,
#   [Working with Unscaled Gradients](https://docs.pytorch.org/docs/stable/notes/amp_examples.html#working-with-unscaled-gradients).
