# Source of notebooks/08_amp_and_clipping.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 08 · Mixed precision: GradScaler, and unscale before clipping
#
# **Goal.** See what a `GradScaler` does to the gradients, why clipping *before*
# `scaler.unscale_` silently stalls training, and the order that is right.
#
# **Context (read cold).** With float16 autocast, small gradients underflow to zero, so the
# loss is multiplied by a large *scale* (65,536 to start) before `backward()`, and the
# gradients are divided by it again before the optimiser step. The summary's only AMP change
# was `precision_manager.scaler.scale(loss).backward(retain_graph=True)` (section 3). It
# never mentions clipping, but the demo clipped gradients with `clip_grad_norm_` between
# `backward()` and `scaler.step()`, where they are still scaled. This bug raises **no
# error**: that is what makes it dangerous.

# %%
import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from torch import nn

from mahiax import bugs, lessons
from mahiax.precision import PrecisionManager

torch.manual_seed(0)

# %% [markdown]
# ## 1. What the scaler does to the gradients
#
# `GradScaler` exists for the CPU too, so this runs anywhere (on a GPU it would be
# `GradScaler("cuda")` with float16 autocast).

# %%
model = nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu")
x, y = torch.randn(32, 8), torch.randn(32, 1)

loss = nn.functional.mse_loss(model(x), y)
scaler.scale(loss).backward()
scaled_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
scaler.unscale_(opt)
true_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
print(f"scale {scaler.get_scale():.0f}: scaled grad norm {scaled_norm:.1f}, "
      f"true grad norm {true_norm:.3f}")
assert abs(scaled_norm / true_norm - scaler.get_scale()) < 1.0

# %% [markdown]
# `unscale_` may run once per step; a second call is PyTorch's one error in this lesson
# (you meet it when you add `unscale_` to a loop that already had one):

# %% tags=["raises-exception"]
scaler.unscale_(opt)

# %%
with lessons.expect_error(RuntimeError, "unscale_() has already been called"):
    scaler.unscale_(opt)
scaler.step(opt)
scaler.update()

# %% [markdown]
# ## 2. Clipping before unscaling
#
# `clip_grad_norm_(params, 1.0)` on *scaled* gradients sees a norm 65,536 times too large
# and shrinks them by that much; then `scaler.step()` divides by the scale again. The step
# the optimiser takes is about 65,536 times too small. Train the same small regression both
# ways; pick the order and the clipping threshold:

# %%
def train(order: str, max_norm: float, steps: int = 60) -> list[float]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    xs = torch.randn(256, 8)
    ys = xs @ torch.randn(8, 1)
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


ORDERS = ["clip, then step (the demo)", "unscale, then clip"]
order_pick = widgets.ToggleButtons(options=ORDERS, description="order")
norm_pick = widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1, description="max_norm",
                                   continuous_update=False)
chart = widgets.Output()


def redraw(change=None) -> None:
    fig = go.Figure()
    for order in ORDERS:
        chosen = order == order_pick.value
        fig.add_trace(go.Scatter(y=train(order, norm_pick.value), name=order,
                                 line={"width": 3 if chosen else 1}, opacity=1 if chosen else 0.4))
    fig.update_layout(title=f"training loss, clip_grad_norm_ max_norm={norm_pick.value:.2g}",
                      xaxis_title="step", yaxis_title="MSE", height=340)
    chart.clear_output(wait=True)
    with chart:
        fig.show()


order_pick.observe(redraw, names="value")
norm_pick.observe(redraw, names="value")
redraw()
widgets.VBox([order_pick, norm_pick, chart])

# %%
stalled, learned = train(ORDERS[0], 1.0), train(ORDERS[1], 1.0)
print(f"loss after 60 steps: clip first {stalled[-1]:.3f} (from {stalled[0]:.3f}), "
      f"unscale first {learned[-1]:.3f}")
assert stalled[-1] > 0.95 * stalled[0] and learned[-1] < 0.5 * learned[0]

# %% [markdown]
# ## 3. In MAHIA-X, measured
#
# The catalog trains the tiny model with a `GradScaler`: `buggy` clips before unscaling,
# `summary` adds the summary's `retain_graph=True` and nothing else, `fixed` unscales first.
# The damage is the largest difference between the gradient the optimiser applied and the
# correctly clipped one.
#
# **Expected verdict** on the summary's fix for `amp-clip-before-unscale`: **no-effect**.

# %%
v_amp = bugs.verdict("amp-clip-before-unscale")
lessons.verdict_report(v_amp)

# %%
lessons.outcome_table(v_amp.outcomes)[["error", "steps run", "max grad diff", "damage"]]

# %% [markdown]
# ## 4. The right order, in the package
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
# across steps, so `make_loop()` creates it and returns the loop. As in lesson 04, set
# `ctx.weights`, `ctx.losses` and `ctx.total`, call `ctx.zero_grad()`; and set
# `ctx.did_step = True` because your loop steps the optimiser itself.
# `bugs.check("amp-clip-before-unscale", make_loop())` grades it.

# %%
def make_loop():
    scaler = torch.amp.GradScaler("cpu")

    def loop(ctx) -> None:
        enc = ctx.model.encode(ctx.batch)
        losses = ctx.model.task_losses(ctx.model.heads_forward(enc.features), ctx.batch.targets)
        ctx.weights = ctx.weighting.weights().detach()
        aux = ctx.config.aux_loss_coef * enc.aux_loss + ctx.config.z_loss_coef * enc.z_loss
        ctx.losses, ctx.total = losses, ctx.weighting.combine(losses) + aux
        ctx.zero_grad()
        scaler.scale(ctx.total).backward()
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), 1.0)  # TODO
        scaler.step(ctx.optimizer)
        scaler.update()
        ctx.did_step = True

    return loop


print(bugs.check("amp-clip-before-unscale", make_loop()))

# %% tags=["solution"]
def make_loop():
    """Unscale, then clip: the clip sees the true gradients."""
    scaler = torch.amp.GradScaler("cpu")

    def loop(ctx) -> None:
        enc = ctx.model.encode(ctx.batch)
        losses = ctx.model.task_losses(ctx.model.heads_forward(enc.features), ctx.batch.targets)
        ctx.weights = ctx.weighting.weights().detach()
        aux = ctx.config.aux_loss_coef * enc.aux_loss + ctx.config.z_loss_coef * enc.z_loss
        ctx.losses, ctx.total = losses, ctx.weighting.combine(losses) + aux
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
# ## Recap
#
# - A `GradScaler` multiplies the loss, hence every gradient, by its scale (65,536 at the
#   start); `scaler.step()` divides again.
# - Clipping scaled gradients shrinks every step by the scale: no error, training stalls.
#   The summary's `retain_graph=True` has **no effect** on it (measured).
# - Order: `scale(loss).backward()` → `unscale_(opt)` → `clip_grad_norm_` → `step` →
#   `update`; `unscale_` at most once per step.
