# Source of notebooks/10_your_own_loop.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 10 · Your own loop: the doctor
#
# **Goal.** Take what lessons 02–09 taught out of MAHIA-X and into your own code: run a few
# steps of *any* training loop under the lab's detectors and get back what is wrong, on which
# line, with the numbers that show it and the fix. Three short loops a learner might write,
# the summary's own fix, the bugs users report most, then your loop; two exercises. About
# twenty-five minutes.
#
# **Context (read cold).** The lab's detectors were built for the summary's bugs: the
# mutation locator (lesson 06) names the line that wrote into a saved tensor, the memory
# meter (lesson 05) splits memory by category, the catalog counts forwards and backwards per
# step (lesson 04). `mahiax.doctor` puts them, and a few watchers more, around a function
# `step(i)` that runs one step of your loop.
#
# **Terms.**
#
# - **Finding.** One thing wrong, from a fixed list of kinds (`doctor.KINDS`), pointed at
#   the line of *your* code to change, with the evidence, the fix and the lesson.
# - **Holder.** Where a tensor lives after a step ends: a global, a module attribute or
#   buffer, a list. A tensor with a `grad_fn` that a holder keeps past its step keeps its
#   graph alive (lesson 03a).
# - **Truncated backpropagation through time (TBPTT).** Carrying a recurrent state's
#   *values* from one chunk of a sequence to the next, but not its *graph*: `h.detach()`.
#
# PyTorch docs this lesson builds on: autograd mechanics,
# [In-place correctness checks](https://docs.pytorch.org/docs/stable/notes/autograd.html#in-place-correctness-checks)
# and [Saved tensors](https://docs.pytorch.org/docs/stable/notes/autograd.html#saved-tensors);
# [`torch.Tensor.detach`](https://docs.pytorch.org/docs/stable/generated/torch.Tensor.detach.html);
# the AMP examples'
# [Working with Unscaled Gradients](https://docs.pytorch.org/docs/stable/notes/amp_examples.html#working-with-unscaled-gradients).

# %%
import torch
import torch.nn.functional as F
from IPython.display import display
from torch import nn

from mahiax import bugs, doctor, lessons
from mahiax.bugs import loops  # the catalog's training loops
from mahiax.bugs.harness import harness_config
from mahiax.bugs.outcome import graph_size  # nodes reachable from a tensor's grad_fn
from mahiax.doctor import exercise, exercise_eval
from mahiax.doctor.on_catalog import examine_entry

torch.manual_seed(0)
print("finding kinds:", ", ".join(doctor.KINDS))

# %% [markdown]
# ## 1. A loop that keeps a running loss
#
# A classifier, and a loop that adds each step's loss to a total to print an average later.
# It trains; nothing raises.
#
# **Predict.** After 6 steps, does the doctor find anything? If so, on which line?

# %%
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
total_loss = 0.0


def step(i):
    global total_loss
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    total_loss += loss  # for the average printed at the end


report = doctor.examine(step, steps=6, model=model, optimizer=opt)
display(report)  # in a notebook the report is a table; print(report) gives text

# %% [markdown]
# The report names `total_loss += loss` and rewrites it: `total_loss += loss.item()`.
# `total_loss` is a tensor with a `grad_fn` that reaches back to step 0; backward freed the
# saved tensors of those graphs (the report says so), so here they hold no activations.

# %%
(carried,) = report.findings
print(carried.kind, "|", "total_loss += loss.item()" in carried.message)
assert report.kinds() == ["graph-carried-across-steps"]
assert "total_loss += loss.item()" in carried.message
assert "no saved tensors (backward freed them" in carried.message

# %% [markdown]
# **Predict.** How many autograd nodes does `total_loss` reach after each step: one more
# each step, or more?

# %%
total_loss = 0.0
sizes = []
for i in range(6):
    step(i)
    sizes.append(graph_size(total_loss))
print("nodes total_loss reaches after each step:", sizes)
print("added per step:", [b - a for a, b in zip(sizes, sizes[1:], strict=False)])

# %% [markdown]
# Each step adds its whole loss graph, not one node: the count grows by the same amount
# every step. One step's loss graph alone, counted below, has that many nodes less the add
# that joins it to the total, plus the parameters' `AccumulateGrad` nodes, which every
# step's graph shares (so they are counted once).

# %%
one_loss = F.cross_entropy(model(torch.randn(32, 8)), torch.randint(0, 3, (32,)))
n_params = len(list(model.parameters()))
print(f"one step's loss graph: {graph_size(one_loss)} nodes, {n_params} of them the "
      "parameters' accumulators")
added = [b - a for a, b in zip(sizes, sizes[1:], strict=False)]
assert added == [graph_size(one_loss) - n_params + 1] * len(added)

# %% [markdown]
# When no backward runs through a kept graph, nothing frees its saved tensors.
#
# **Predict.** After each step, a validation pass forgets `torch.no_grad()` and keeps its
# loss in a list. No backward ever runs through those graphs. What does the doctor measure?

# %%
val_losses = []


def train_and_validate(i):
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    vx, vy = torch.randn(2048, 8), torch.randint(0, 3, (2048,))
    val_losses.append(F.cross_entropy(model(vx), vy))


val_report = doctor.examine(train_and_validate, steps=6, model=model, optimizer=opt)
print(val_report)

# %% [markdown]
# Every kept validation loss holds its step's activations, saved for a backward that never
# comes: the saved bytes grow every step (the report's MiB a step), without bound in a long
# run. `with torch.no_grad():` around the validation builds no graph at all; `.item()`
# keeps a number.

# %%
(kept,) = val_report.findings
assert kept.kind == "graph-carried-across-steps" and "No backward() ever ran" in kept.message
with torch.no_grad():
    val_loss = F.cross_entropy(model(torch.randn(2048, 8)), torch.randint(0, 3, (2048,)))
print("under no_grad: grad_fn", val_loss.grad_fn, "| .item():", type(val_loss.item()))
assert val_loss.grad_fn is None

# %% [markdown]
# ## 2. A GRU over chunks
#
# **Predict.** A GRU reads a long sequence chunk by chunk and passes its hidden state on.
# Which step fails, and does the doctor point at the line that raised or at another one?

# %%
gru, head = nn.GRU(4, 8, batch_first=True), nn.Linear(8, 4)
rnn_model = nn.ModuleList([gru, head])
rnn_opt = torch.optim.Adam(rnn_model.parameters(), lr=1e-2)
seq = torch.randn(2, 6 * 10 + 1, 4)  # (streams, time, features)
hidden = None


def rnn_step(i):
    global hidden
    x, y = seq[:, i * 10:(i + 1) * 10], seq[:, i * 10 + 1:(i + 1) * 10 + 1]
    out, hidden = gru(x, hidden)
    loss = F.mse_loss(head(out), y)
    rnn_opt.zero_grad()
    loss.backward()
    rnn_opt.step()


rnn_report = doctor.examine(rnn_step, steps=6, model=rnn_model, optimizer=rnn_opt)
print(rnn_report)

# %% [markdown]
# PyTorch raises at step 1 on `loss.backward()` ("backward through the graph a second
# time"), and its hint suggests `retain_graph=True`. The doctor keeps that error but points
# at `out, hidden = gru(x, hidden)`: `hidden` still carries step 0's graph, which step 0's
# backward freed. Fix: `hidden = hidden.detach()` (TBPTT). The exercise below is this bug.

# %%
print(rnn_report.error.type, "at step", rnn_report.error.step, "|", rnn_report.kinds())
assert rnn_report.error.step == 1
assert "backward through the graph a second time" in rnn_report.error.message
assert rnn_report.kinds() == ["graph-carried-across-steps"]
assert "`out, hidden = gru(x, hidden)`" in rnn_report.findings[0].message

# %% [markdown]
# ## 3. A mixed-precision loop
#
# The loop autocasts to float16, the dtype a `GradScaler` is for. (bfloat16 has float32's
# range and needs no scaler: lesson 08.)
#
# **Predict.** This loop raises nothing. What does the doctor measure?

# %%
amp_model = nn.Linear(8, 1)
amp_opt = torch.optim.SGD(amp_model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu")


def amp_step(i):
    x = torch.randn(32, 8)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = amp_model(x).float().pow(2).mean()
    amp_opt.zero_grad()
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(amp_model.parameters(), 1.0)
    scaler.step(amp_opt)
    scaler.update()


amp_report = doctor.examine(amp_step, steps=4, model=amp_model, optimizer=amp_opt,
                            scaler=scaler)
print(amp_report)

# %% [markdown]
# The clip measured the gradient norm *times the scale* (65,536) against `max_norm=1`, so it
# rescaled the gradients to norm 1 in scaled units: 1/65,536 once `scaler.step` unscales
# them, where the clip after `unscale_` gives min(true norm, 1). The report prints the true
# norm and both figures (lesson 08). SGD's update is proportional to the gradient, so it is
# that many times smaller: no error, training crawls. The report says what the clip does to
# the optimiser it saw. Fix: `scaler.unscale_(amp_opt)` before the clip.

# %%
(clipped,) = amp_report.findings
print(clipped.kind, "|", "norm 1/65536 = 1.53e-05" in clipped.message)
assert amp_report.kinds() == ["clip-before-unscale"]
assert "rescaled the gradients to norm 1/65536 = 1.53e-05" in clipped.message
assert "Fix: call `scaler.unscale_(amp_opt)` before" in clipped.message

# %% [markdown]
# **Predict.** With Adam, does a clip before `unscale_` do nothing, cut only the spike, or
# something else? The next cell trains one weight vector with Adam for 30 steps toward a
# target; the loss of step 3 is 1000 times the others (one bad batch). Three runs with a
# `GradScaler`: no clip, the clip after `unscale_`, the clip before it; and a fourth run,
# without a scaler, for comparison. Which rows look alike?

# %%
target = torch.tensor([-0.6, 0.4, 0.3, -0.4])  # (4,) the weights' target
SPIKE, STEPS = 3, 30


def adam_run(clip: str) -> tuple[list[float], float]:
    """Adam on one weight vector (4,), from zeros. ``clip``: "none", "after unscale_",
    "before unscale_" (with a GradScaler), or "each gradient / its norm" (no scaler).
    Returns the norm of the gradient each step applied and the distance to the target."""
    w = torch.zeros(4, requires_grad=True)
    adam = torch.optim.Adam([w], lr=0.1)
    amp = torch.amp.GradScaler("cpu")
    norms = []
    for i in range(STEPS):
        loss = 0.5 * (w - target).pow(2).sum() * (1000.0 if i == SPIKE else 1.0)
        adam.zero_grad()
        if clip == "each gradient / its norm":
            loss.backward()
            with torch.no_grad():
                w.grad /= w.grad.norm()
            adam.step()
        else:
            amp.scale(loss).backward()
            if clip == "after unscale_":
                amp.unscale_(adam)
            if clip != "none":
                torch.nn.utils.clip_grad_norm_([w], 1.0)
            amp.step(adam)  # unscales .grad in place first, unless unscale_ ran
            amp.update()
        norms.append(w.grad.norm().item())  # the gradient this step applied
    return norms, (w - target).norm().item()


runs = {clip: adam_run(clip) for clip in
        ("none", "after unscale_", "before unscale_", "each gradient / its norm")}
for clip, (norms, dist) in runs.items():
    print(f"clip {clip:24} applied gradient norm, steps 0-5: "
          f"{' '.join(f'{n:.3g}' for n in norms[:6])} | distance to target {dist:.4f}")

# %% [markdown]
# The clip before `unscale_` is not off: every step's applied gradient has the same norm,
# 1/65,536 (1.53e-05 in its row), the spike's and the ordinary steps' alike. Adam cancels
# that common factor, so the run ends where Adam on gradients each divided by its own norm
# ends, with no scaler at all (the last row). With Adam, clipping scaled gradients turns
# into normalising every step's gradient: training moves, but it is not the clip
# `max_norm=1` asks for, which leaves the ordinary steps as they are and cuts only the spike
# to norm 1 (the second row). Here the run without a clip ends farthest from the target.

# %%
none_norms, none_dist = runs["none"]
right_norms, right_dist = runs["after unscale_"]
scaled_norms, scaled_dist = runs["before unscale_"]
assert all(abs(n * 65536 - 1) < 1e-3 for n in scaled_norms)  # every step, spike or not
assert abs(scaled_dist - runs["each gradient / its norm"][1]) < 1e-3
assert abs(right_norms[SPIKE] - 1) < 1e-5 and right_norms[:SPIKE] == none_norms[:SPIKE]
assert none_dist > max(right_dist, scaled_dist)

# %% [markdown]
# "Cancels" holds up to Adam's `eps` (1e-8 by default), which Adam adds to the root of its
# running average of squared gradients before it divides. Above, the norm 1/65,536 is shared
# by 4 entries of about 7.6e-6, far above `eps`. A model with a million weights shares it
# among a million entries of about 1.5e-8, the size of `eps`, and the step shrinks. One Adam
# step from a gradient of norm 1 and of norm 1/65,536, on 4 and on a million weights, as a
# fraction of `lr * sqrt(n)` (the first step's norm when `eps` is negligible):

# %%
print("Adam's default eps:", torch.optim.Adam([torch.zeros(1)]).defaults["eps"])
for n in (4, 1_000_000):
    g = torch.randn(n)  # (n,) one direction, two norms
    for norm in (1.0, 1 / 65536):
        p = torch.zeros(n, requires_grad=True)
        one_step = torch.optim.Adam([p], lr=0.1)
        p.grad = g * (norm / g.norm())  # (n,)
        one_step.step()
        print(f"{n:>9,} weights, gradient norm {norm:.3g} (entries ~{norm / n ** 0.5:.2g}): "
              f"first step {p.detach().norm() / (0.1 * n ** 0.5):.3f} of lr * sqrt(n)")

# %% [markdown]
# ## 4. The summary's own fix, examined
#
# The summary cured "backward through the graph a second time" with `retain_graph=True` on
# every backward, with state that carried the graph across steps (lesson 04). The doctor
# runs the catalog's version of that loop, the `summary` variant of `retain-graph`, through
# the catalog's harness.
#
# **Predict.** Does `retain_graph=True` make the doctor quiet?

# %%
summary_report = examine_entry("retain-graph", "summary")
print(summary_report)

# %%
v_retain = bugs.verdict("retain-graph")
lessons.verdict_report(v_retain)

# %% [markdown]
# **Expected verdict** on the summary's fix for `retain-graph`: **hides-the-error**. The
# doctor says why, in one report: the graph carried by the memory nodes grows every step;
# the loop calls `backward()` once per task loss, and those passes walk one graph; and once
# the optimiser has changed weights an old graph saved, the next backward through that
# graph raises the in-place error. The catalog's loop accumulates gradients and steps the
# optimiser once every `ACCUMULATE` micro-batches (4, in `mahiax/bugs/loops.py`), after
# step 3: step 4's backward is the first to walk graphs saved before an update, so the error
# comes at step 4 and not earlier. The report names `ctx.optimizer.step()`, where the
# in-place write happened, and the tensor PyTorch's message names (its shape, the version
# it was saved at and the one backward found). That line is not the one to change: the
# optimiser writing its weights is its job; the report says so and points at what keeps the
# old graph alive.

# %%
tasks = len(harness_config().tasks)
per_loss = next(f for f in summary_report.findings if f.kind == "backward-per-loss")
written = next(f for f in summary_report.findings if f.kind == "inplace-on-saved")
print(f"{tasks} task losses | optimiser step every {loops.ACCUMULATE} micro-batches | "
      f"error at step {summary_report.error.step} | write named at: {written.where}")
assert summary_report.error.step == loops.ACCUMULATE
assert sorted(summary_report.kinds()) == [
    "backward-per-loss", "graph-carried-across-steps", "inplace-on-saved"]
assert f"{tasks} backward() calls in step 0" in per_loss.message
assert "modified by an inplace operation" in summary_report.error.message
assert "The writer is the optimiser" in written.message

# %% [markdown]
# The verdict's growth (nodes a step) and the doctor's (`+N a step`) are two counts of one
# trend, so they differ a little: the verdict counts every node reachable from the step's
# total loss, from step 1 on; the doctor counts the largest graph behind one `backward()`
# call, parameters' accumulators left out, from step 0.
#
# ## 5. The bugs users report most
#
# The kinds above come from the summary's bugs. In public threads where PyTorch users ask why
# their loop does not train, other bugs come first: a validation call that leaves the model
# in eval mode, gradients never reset, probabilities fed to a loss that wants logits, a loss
# cut from the parameters, an optimiser built before the model changed, a weight that is not
# an `nn.Parameter`. None of them raises: the loss falls, only not as it should. The doctor
# has a kind for each; it is tested on a corpus of such reports, each reproduced with the
# fix its thread accepted (`tests/doctor_corpus/`).
#
# A classifier with dropout, validated every other step by a helper of the kind most
# projects have.
#
# **Predict.** Nothing raises. How many findings, and on which lines?

# %%
clf = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3),
                    nn.Softmax(dim=1))
clf_opt = torch.optim.SGD(clf.parameters(), lr=0.1)


def validate():
    clf.eval()
    vx, vy = torch.randn(256, 8), torch.randint(0, 3, (256,))
    with torch.no_grad():
        return (clf(vx).argmax(1) == vy).float().mean().item()


def clf_step(i):
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    loss = F.cross_entropy(clf(x), y)
    loss.backward()
    clf_opt.step()
    if i % 2 == 1:
        validate()


habits_report = doctor.examine(clf_step, steps=6, model=clf, optimizer=clf_opt)
print(habits_report)

# %% [markdown]
# Three findings, each at the line to change, in this loop's own names:
#
# - `clf.eval()` inside `validate`: from step 2 on, dropout is off in training. The fix goes
#   where the evaluation ends (`clf.train()`), or at the start of each step.
# - `loss.backward()`: no `zero_grad()` anywhere, so each step's update is the sum of every
#   gradient so far (deliberate accumulation resets after every k-th step; this never
#   does).
# - `nn.Softmax(dim=1)`: `cross_entropy` applies `log_softmax` itself, so it sees the softmax
#   of a softmax.
#
# The cell checks the kinds against the report, and what `cross_entropy` computes:

# %%
print(sorted(habits_report.kinds()))
assert sorted(habits_report.kinds()) == [
    "eval-mode-training", "grads-not-zeroed", "probabilities-into-loss"]
z, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])  # logits (4, 3), classes (4,)
same = torch.allclose(F.cross_entropy(z, labels), F.nll_loss(F.log_softmax(z, dim=1), labels))
print("cross_entropy(z, y) == nll_loss(log_softmax(z), y):", same)
assert same

# %% [markdown]
# ## 6. Your loop
#
# Replace the loop below with yours: build the model and optimiser, write `my_step(i)` for
# one step, run the cell. A clean loop prints "0 findings". From a terminal, the same for a
# script whose top level builds the model: `python -m mahiax doctor my_script.py:step`.

# %%
my_model = nn.Linear(8, 1)
my_opt = torch.optim.Adam(my_model.parameters(), lr=1e-3)


def my_step(i):
    x = torch.randn(16, 8)
    loss = my_model(x).pow(2).mean()
    my_opt.zero_grad()
    loss.backward()
    my_opt.step()


print(doctor.examine(my_step, steps=6, model=my_model, optimizer=my_opt))

# %% [markdown]
# ## Exercise
#
# A character-level GRU reads 4 streams of text chunk by chunk. `s` holds the model, the
# optimiser, the text and the carried state `s.hidden`; `s.batch(i)` gives chunk `i`. Fix
# `train_step` until `exercise.check` says PASS: the doctor must be quiet over 6 chunks
# *and* the weights must match truncated backpropagation through time, so the hidden state
# has to carry its values to the next chunk. Two band-aids fail on purpose:
# `retain_graph=True` (step 0's graph stays alive, step 1's backward walks into it after
# the optimiser changed weights it saved: an in-place error at step 1) and starting each
# chunk from `None` (quiet doctor, but no memory across chunks).
# (`record=True` records your attempt, as `lessons.check` does in the other lessons.)

# %%
lessons.source(exercise.Stream, "what s is")


# %%
def train_step(s, i):
    x, y = s.batch(i)
    logits, s.hidden = s.model(x, s.hidden)  # TODO
    loss = F.cross_entropy(logits.reshape(-1, exercise.VOCAB), y.reshape(-1))
    s.optimizer.zero_grad()
    loss.backward()
    s.optimizer.step()


print(exercise.check(train_step, record=True))

# %% tags=["solution"]
def train_step(s, i):
    """Carry the values, cut the graph: the next chunk starts from a leaf."""
    x, y = s.batch(i)
    logits, hidden = s.model(x, s.hidden)
    s.hidden = hidden.detach()
    loss = F.cross_entropy(logits.reshape(-1, exercise.VOCAB), y.reshape(-1))
    s.optimizer.zero_grad()
    loss.backward()
    s.optimizer.step()


result = exercise.check(train_step)
print(result)
assert result.holds

# %% [markdown]
# The two band-aids, through the same checker:

# %%
for name in ("band-aid: retain_graph=True", "band-aid: reset the hidden state every chunk"):
    band_aid = exercise.check(exercise.candidates()[name])
    error = band_aid.report.error
    print(f"{name}: {band_aid}" + (f"\n  the loop raised {error.type} at step {error.step}"
                                   if error is not None else ""))

# %% [markdown]
# ## Exercise 2
#
# `r` holds a classifier with dropout, its optimiser and a list of accuracies; `r.batch(i)`
# gives batch `i`, and `exercise_eval.evaluate(r)` measures the accuracy (and, like the
# helper in section 5, leaves the model in eval mode). Fix `train_step` until
# `exercise_eval.check` says PASS: the doctor must be quiet over 6 steps, the accuracy must
# still be measured every other step, and the weights must match the right loop's from the
# same start. Four band-aids fail on purpose: `r.model.train()` only at the first step,
# `zero_grad()` only at the first step, `zero_grad()` between `backward()` and `step()`, and
# dropping the validation.

# %%
lessons.source(exercise_eval.Run, "what r is")


# %%
def train_step(r, i):
    x, y = r.batch(i)
    loss = F.cross_entropy(r.model(x), y)  # TODO
    loss.backward()
    r.optimizer.step()
    if i % 2 == 1:
        r.accuracy.append(exercise_eval.evaluate(r))


print(exercise_eval.check(train_step, record=True))

# %% tags=["solution"]
def train_step(r, i):
    """Gradients reset before each backward; training mode back after each evaluation."""
    x, y = r.batch(i)
    loss = F.cross_entropy(r.model(x), y)
    r.optimizer.zero_grad()
    loss.backward()
    r.optimizer.step()
    if i % 2 == 1:
        r.accuracy.append(exercise_eval.evaluate(r))
        r.model.train()


result_2 = exercise_eval.check(train_step)
print(result_2)
assert result_2.holds

# %% [markdown]
# The four band-aids, through the same checker:

# %%
for name, candidate in exercise_eval.candidates().items():
    if name.startswith("band-aid"):
        print(f"{name}: {exercise_eval.check(candidate)}")

# %% [markdown]
# Your attempts so far, oldest first (also on the dashboard's **My attempts** page):

# %%
lessons.my_attempts()

# %% [markdown]
# ## Check your understanding
#
# 1. In section 1 nothing raised. Why is `total_loss += loss` still a finding, and what
#    would make it expensive?
#
#    <details><summary>Answer</summary>
#
#    `total_loss` becomes a tensor whose `grad_fn` chains every step's loss graph: the
#    graph outlives its step and grows by a whole loss graph each step (the node counts in
#    section 1). Backward freed the saved tensors, so here it is small; in a validation loop
#    without `no_grad` (no backward frees anything) each step's activations stay alive and
#    memory grows without bound, as the second report in section 1 measured.
#    `total_loss += loss.item()` keeps a number.
#
#    </details>
#
# 2. PyTorch's error in section 2 is raised by `loss.backward()`. Why does the doctor name
#    another line, and why is PyTorch's hint (`retain_graph=True`) the wrong fix?
#
#    <details><summary>Answer</summary>
#
#    The backward only discovers the problem: step 1's graph reaches step 0's through
#    `hidden`, which still has step 0's `grad_fn`, and step 0's backward freed that graph.
#    The line to change is where `hidden` is stored. `retain_graph=True` keeps the old
#    graph alive for the next backward to walk into, after `step()` changed weights it
#    saved: the exercise's band-aid fails at step 1 with an in-place error, named at the
#    optimiser's step, whose fix is again to stop carrying the graph.
#
#    </details>
#
# 3. Why does the exercise's checker compare weights with a reference and not only ask the
#    doctor?
#
#    <details><summary>Answer</summary>
#
#    Because the doctor only sees misuse of autograd. Starting every chunk from `None` has
#    none (no graph crosses steps) but trains a different model, one with no memory across
#    chunks. The reference (TBPTT from the same start) tells the two apart: after 6 chunks
#    the weights differ from it by the figure the band-aids cell prints.
#
#    </details>
#
# 4. The doctor watches every tensor operation, backward and optimiser step of the loop, so
#    each step runs slower under it (`make bench` measures by how much). When do you run it?
#
#    <details><summary>Answer</summary>
#
#    For a few steps, when a loop is new or when something is off (an error, memory that
#    grows, a loss that will not fall), as with anomaly mode or the mutation locator: every
#    report in this lesson came from 8 steps or fewer. Not for a whole run.
#
#    </details>
#
# 5. In section 5 the eval-mode finding names `clf.eval()` inside `validate`, not the
#    forward in `clf_step` that ran with dropout off. Why that line?
#
#    <details><summary>Answer</summary>
#
#    The forward is where the harm happens, not where it was caused: `clf(x)` is right in
#    training mode. `validate` switched the mode and returned without switching it back,
#    so the fix goes at its end (or at the start of each step). The doctor names the call
#    to `eval()` in the function that also ran the evaluation's forward; a helper that only
#    sets the mode (`set_mode("eval", models)`) is named where it is called.
#
#    </details>

# %% [markdown]
# ## Recap
#
# - `doctor.examine(step, steps=6, model=..., optimizer=...)` runs your own step under the
#   lab's detectors; `python -m mahiax doctor file.py:function` does the same from a shell
#   (exit status 1 when it finds something).
# - Each finding names the line of *your* code to change, the evidence in numbers, the fix
#   and the lesson: in-place writes into saved tensors (02, 06), `.data` writes autograd
#   cannot see (03a), graphs carried across steps and growing (03a, 04, 05), one backward
#   per loss and `retain_graph=True` (04), clipping before `unscale_` (08: under Adam it
#   normalises every step's gradient, it does not switch clipping off), parameters that
#   never get a gradient (09), state that requires grad; and the bugs users report most:
#   eval mode left on by a validation, gradients never reset, probabilities into a logit
#   loss, a loss cut from the parameters, an optimiser built before the model changed, a
#   weight that is not a parameter, weights updated between a forward and its backward.
# - An error the loop raises is kept with its step and explained; often the line that
#   raised is not the line to change.
# - The summary's `retain_graph=True` **hides the error**: the doctor shows the growing
#   graph, the repeated backward passes, and the in-place error that comes back.
# - Quiet is not the same as right: a checker compares against the right computation too.
