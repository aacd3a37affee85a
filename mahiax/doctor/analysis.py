"""From what the watchers recorded to findings: one finding per line to change.

Each rule reads the :class:`~mahiax.doctor.watchers.Watch` records after the loop ran and says
what happened, with the numbers that show it. Where two rules see one cause, one finding
carries both pieces of evidence: a graph that grows because a held tensor carries it is one
``graph-carried-across-steps`` finding with the growth in its message; ``retain_graph=True``
that only keeps several backward passes (or a carried graph) working belongs to that finding.
"""

from __future__ import annotations

import statistics

from torch import nn

from mahiax.doctor import sites
from mahiax.doctor.explain import explain_common
from mahiax.doctor.findings import KINDS, Finding, LoopError, compose, place
from mahiax.doctor.records import BackwardCall, ClipCall, Held
from mahiax.doctor.watchers import Watch
from mahiax.telemetry.locator import VERSION_ERROR
from mahiax.units import format_bytes

MIN_STEPS_FOR_GROWTH = 3  # steps of strictly growing graphs before growth is called a trend


def findings_of(w: Watch) -> list[Finding]:
    """Every finding the records support, in the order a learner should fix them."""
    out: list[Finding] = []
    out += _silent(w)
    carried = _carried(w)
    out += carried
    out += _growing(w, carried)
    out += _per_loss(w)
    out += _retained(w, carried)
    out = _inplace(w, out) + out
    out += _clips(w)
    out += _eval_mode(w)
    out += _grads_kept(w)
    out += _probabilities(w)
    out += _loss_cuts(w)
    out += _optimizer_misses(w)
    out += _unused(w)
    out += _state(w)
    seen: set[tuple[str, str, int]] = set()
    unique = []
    for f in out:
        key = (f.kind, f.file, f.line)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _at(file: str, line: int) -> str:
    return place(file, line) if file else "an unknown line"


# what keeps an earlier step's graph alive, in the order to name it
_KEEPERS = ("retain-graph", "graph-carried-across-steps", "backward-per-loss")


def _inplace(w: Watch, others: list[Finding]) -> list[Finding]:
    """In-place writes backward tripped on. ``others``: the findings of the other rules; when
    the writer is the optimiser's step, the real cause is the order of the loop's lines (a
    graph of the same step) or among them (what kept an earlier step's graph alive)."""
    if w.loc is None:
        return []
    w.loc._settle()
    found = []
    for m in w.loc.mutations:
        if id(m) not in w.tripped or m.version_after == m.version_before:
            continue
        s = m.saved
        tripper = w.backwards[w.tripped[id(m)]]
        saved_step = w.step_of_seq(s.node_seq)
        written_step = w.optimizer_writes.get(id(m))
        if written_step is not None and saved_step == written_step == tripper.step:
            found.append(_step_before_backward(w, m, tripper, saved_step))
            continue
        built = _inplace_module(w, m.module) if written_step is None else None
        if built is not None:
            found.append(built)
            continue
        if written_step is None and m.weight and saved_step == tripper.step and tripper.joins:
            found.append(_joined_across_update(w, m, tripper, saved_step))
            continue
        where = f" in {m.module}" if m.module else ""
        read_at = w.tripped_versions.get(id(m))
        later = (f" at version {read_at} (later writes bumped it again)"
                 if read_at is not None and read_at != m.version_after else "")
        evidence = (f"Its version was {s.version} when saved and {m.version_after} after this "
                    f"write; backward() tripped on it{later}: PyTorch raised 'modified by an "
                    "inplace operation'.")
        fix = None
        rewritten = sites.out_of_place(sites.code_text(m.file, m.line))
        if rewritten is not None:
            fix = f"{KINDS['inplace-on-saved'].fix}; here: {rewritten}"
        if written_step is not None:
            keeper = next((f for kind in _KEEPERS for f in others if f.kind == kind), None)
            evidence += (" The writer is the optimiser updating the weights, which is its job: "
                         f"the mistake is that a graph from step {saved_step} saved these "
                         f"weights and is still alive when the backward() of step "
                         f"{tripper.step} walks it.")
            # retain_graph=True that a later backward of its own step needs stays
            retained = next((b for i, b in enumerate(w.backwards) if b.retain and not any(
                b.seqs & c.seqs for c in w.backwards[i + 1:] if c.step == b.step)), None)
            cuts = ([f"drop `retain_graph=True` (at {_at(retained.file, retained.line)})"]
                    if retained is not None else [])
            if any(f.kind == "graph-carried-across-steps" for f in others) or not cuts:
                cuts.append("detach the state carried to the next step")
            fix = ("no graph should live past its step's optimizer.step(): " +
                   " and ".join(cuts) +
                   (f"; the {keeper.kind} finding at {keeper.where} is what keeps it"
                    if keeper is not None else "") +
                   ". Moving or rewriting this line is not the fix")
        found.append(Finding(
            kind="inplace-on-saved", file=m.file, line=m.line, message=compose(
                "inplace-on-saved",
                f"`{sites.code_text(m.file, m.line)}` writes in place ({m.op}){where} into "
                f"a {s.describe()} tensor that {s.op} at {_at(s.file, s.line)} saved for "
                "backward.", evidence, fix,
                # the optimiser writing weights an old graph saved: lesson 06's subject
                lesson=None if written_step is None else "06_finding_the_mutation",
            ), evidence={"writer": "code" if written_step is None else "optimizer",
                         "saved_step": saved_step, "tripped_step": tripper.step}))
    return found


def _module_of(w: Watch, path: str) -> nn.Module | None:
    """The model's module at a locator path (``model.classifier.2``), or None."""
    if w.model is None or not path.startswith("model"):
        return None
    sub = path.removeprefix("model").removeprefix(".")
    try:
        return w.model.get_submodule(sub) if sub else w.model
    except AttributeError:
        return None


def _module_line(w: Watch, path: str, calls: tuple[str, ...],
                 marker: str = "") -> tuple[str, int] | None:
    """The line that builds the module at ``path`` when it is one of ``calls``
    (``"Softmax("``): in its owner's class, or, for a model built in the user's own code
    (an ``nn.Sequential(...)`` in a script or a cell), in the statement that builds it."""
    module = _module_of(w, path)
    name = type(module).__name__ if module is not None else ""
    if module is None or f"{name}(" not in calls:
        return None
    sub = path.removeprefix("model").removeprefix(".")
    parent_path, _, attr = sub.rpartition(".")
    while attr.isdigit() and parent_path:  # classifier.2: the line that builds `classifier`
        parent_path, _, attr = parent_path.rpartition(".")
    owner = w.model.get_submodule(parent_path) if parent_path else w.model
    site = sites.constructor_line(type(owner), attr, name, marker)
    if site is None and owner is w.model:  # the model itself, built where the loop is
        for var in sites.bound_names(w.step_code, w.model):
            site = sites.statement_line(w.code_files, var, f"{name}(", marker)
            if site is not None:
                break
    return site


def _inplace_module(w: Watch, path: str) -> Finding | None:
    """An in-place write made by a torch module built with ``inplace=True`` (``nn.ReLU``,
    ``nn.Dropout``): the line to change is where it is built, not where it is called."""
    module = _module_of(w, path)
    if module is None or getattr(module, "inplace", False) is not True:
        return None
    name = type(module).__name__
    site = _module_line(w, path, (f"{name}(",), "inplace=True")
    if site is None:
        return None
    file, line = site
    text = sites.code_text(file, line)
    return Finding(kind="inplace-on-saved", file=file, line=line, message=compose(
        "inplace-on-saved",
        f"`{text}` builds {path} ({name}) with inplace=True: it writes its output into its "
        "input, and that input is a tensor autograd saved for backward (the op before it "
        "needs it to compute its gradient).",
        "backward() tripped on it: PyTorch raised 'modified by an inplace operation'.",
        "build it with `inplace=False` (here: "
        f"`{text.rstrip(',').replace('inplace=True', 'inplace=False')}`)",
    ), evidence={"writer": "module", "module": path})


def _joined_across_update(w: Watch, m, tripper: BackwardCall, step: int) -> Finding:
    """The loop changed its weights on purpose (a two-pass optimiser's perturbation, a manual
    update under no_grad), then built a loss that still contains the graph from before the
    change: the line that joins the two graphs is the one to change."""
    file, line = tripper.joins[0]
    # the earlier backward that kept its graph only for this one
    retained = next((b for b in w.backwards if b is not tripper and b.step == step
                     and b.retain and b.seqs & tripper.seqs), None)
    joined, wrote = sites.code_text(file, line), sites.code_text(m.file, m.line)
    walked = sites.code_text(tripper.file, tripper.line)
    return Finding(kind="step-before-backward", file=file, line=line, message=compose(
        "step-before-backward",
        f"`{joined}` builds a loss that still contains the graph from before `{wrote}` "
        f"changed the weights ({_at(m.file, m.line)}), and `{walked}` walks it.",
        f"Step {step}: the weights were at version {m.saved.version} when the earlier forward "
        f"saved them and {m.version_after} after the update, so PyTorch raised 'modified by "
        "an inplace operation'. Updating the weights is intended (as in a two-pass optimiser "
        "such as SAM); carrying the earlier loss into the later backward is not.",
        f"give the backward after `{wrote}` a loss of its own, computed from a forward after "
        f"it (not added to the earlier loss at `{joined}`); the earlier pass's gradient was "
        "taken by its own backward already" + (
            f", so drop the `retain_graph=True` at {_at(retained.file, retained.line)}"
            if retained is not None else ""),
    ), step=step, evidence={"writer": "code", "saved_step": step, "tripped_step": step,
                       "update_file": m.file, "update_line": m.line})


def _step_before_backward(w: Watch, m, tripper: BackwardCall, step: int) -> Finding:
    """The optimiser stepped between a forward and a backward of the same step that walks
    the weights it changed (a GAN's discriminator step before the generator's backward)."""
    stepped, walked = sites.code_text(m.file, m.line), sites.code_text(tripper.file,
                                                                      tripper.line)
    s = m.saved
    # an earlier backward that kept its graph only for this one: once the forward that saved
    # the stepped weights is run again, nothing walks the kept graph, unless the two share
    # nodes built before that forward (a GAN's generator, under a non-detached fake)
    kept = next((b for b in w.backwards if b is not tripper and b.step == step and b.retain
                 and b.seqs & tripper.seqs), None)
    rerun_from = min((x.saved.node_seq for x in w.loc.mutations
                      if w.optimizer_writes.get(id(x)) == step
                      and x.saved.node_seq in tripper.seqs), default=s.node_seq)
    frees = kept is not None and not any(n < rerun_from for n in kept.seqs & tripper.seqs)
    drop = (f" (and drop the `retain_graph=True` at {_at(kept.file, kept.line)}: nothing "
            "walks the old graph any more)" if frees else "")
    return Finding(kind="step-before-backward", file=m.file, line=m.line, message=compose(
        "step-before-backward",
        f"`{stepped}` changed weights ({s.describe()}, saved by {s.op} at "
        f"{_at(s.file, s.line)}) that a graph built earlier in the same step still needs: "
        f"`{walked}` ({_at(tripper.file, tripper.line)}) walks that graph after the step.",
        f"Step {step}: the weights were at version {s.version} when the forward saved them "
        f"and {m.version_after} after the optimiser's update, so PyTorch raised 'modified by "
        "an inplace operation' in that backward. No graph outlived its step: the order of "
        "these lines is the bug, not retain_graph=True.",
        f"run the forward that `{walked}` needs again after `{stepped}` (for a GAN: the "
        "discriminator's output on the fakes, computed anew for the generator's loss), so "
        f"it walks the new weights{drop}; or move `{stepped}` after `{walked}`, and then keep "
        "that "
        "backward out of these weights' gradients (`backward(inputs=...)` with the other "
        "model's parameters), or the step applies both losses' gradients",
    ), step=step, evidence={"writer": "optimizer", "saved_step": step, "tripped_step": step,
                       "backward_file": tripper.file, "backward_line": tripper.line})


def _silent(w: Watch) -> list[Finding]:
    found = []
    for s in w.silent:
        if not s.used:
            continue
        found.append(Finding(kind="silent-write", file=s.file, line=s.line, message=compose(
            "silent-write",
            f"`{sites.code_text(s.file, s.line)}` ({s.op}) changed the memory of a "
            f"{list(s.shape)} tensor that {s.saved_by} saved for backward, without bumping "
            "its version counter.",
            "PyTorch could not notice: the next backward() used the new values and computed "
            "wrong gradients, with no error.",
        ), step=s.step))
    return found


def _growth(values: list[int]) -> list[int] | None:
    """Per-step growth if ``values`` grows at every step, steadily; else None."""
    if len(values) < MIN_STEPS_FOR_GROWTH:
        return None
    deltas = [b - a for a, b in zip(values, values[1:], strict=False)]
    if not all(d > 0 for d in deltas):
        return None
    mid = statistics.median(deltas)
    if any(d < mid / 2 or d > mid * 2 for d in deltas):
        return None
    return deltas


def _per_step(w: Watch) -> tuple[list[int], list[int]]:
    """Largest graph (nodes) and saved bytes behind a backward, for each completed step."""
    nodes, saved = [], []
    for step in range(w.steps_done):
        calls = [b for b in w.backwards if b.step == step]
        if not calls:
            return [], []
        nodes.append(max(b.nodes for b in calls))
        saved.append(max(b.saved for b in calls))
    return nodes, saved


def _growth_text(nodes: list[int], saved: list[int]) -> str:
    n, s = _growth(nodes), _growth(saved)
    parts = []
    if n:
        parts.append(f"the graph behind backward() grew from {nodes[0]} to {nodes[-1]} nodes "
                     f"over {len(nodes)} steps (+{round(statistics.mean(n))} a step)")
    if s:
        parts.append(f"memory saved for backward grew from {format_bytes(saved[0])} to "
                     f"{format_bytes(saved[-1])} (+{format_bytes(round(statistics.mean(s)))} "
                     "a step)")
    return "; ".join(parts)


def _carried(w: Watch) -> list[Finding]:
    found = []
    growth = _growth_text(*_per_step(w))
    for h in w.held.values():
        saved = h.saved[-1] if h.saved else 0
        span = h.last_step - h.built_step + 1
        what = (f"{h.label} holds {h.items} tensors with a grad_fn that outlive their step"
                if h.items > 1 else f"{h.label} holds a tensor with a grad_fn that outlives "
                "its step")
        built = f" (stored by `{sites.code_text(h.file, h.line)}`)" if h.line else ""
        held = (f"{format_bytes(saved)} saved for backward" if saved else
                "no saved tensors (backward freed them; without a backward they stay)")
        its = "their graphs" if h.items > 1 else "its graph"
        evidence = (f"At the end of step {h.last_step} {its} still reach"
                    f"{'' if h.items > 1 else 'es'} step {h.built_step}: {span} steps, "
                    f"{h.nodes[-1]} nodes, {held}.")
        if len(h.saved) >= 2 and h.saved[-1] > h.saved[0]:
            per_step = round((h.saved[-1] - h.saved[0]) / (len(h.saved) - 1))
            evidence += (f" It grew by {format_bytes(per_step)} a step from step "
                         f"{h.first_step} to step {h.last_step}.")
        if not h.backwarded and not h.read and saved:
            evidence += (" No backward() ever ran through " +
                         ("them: these graphs were" if h.items > 1 else "it: this graph was") +
                         " never needed (an evaluation or a metric computed with autograd "
                         "on).")
        if growth:
            evidence += f" Meanwhile {growth}."
        failed = w.error_info is not None and \
            "backward through the graph a second time" in w.error_info.message
        if failed:
            evidence += (" The next backward() walked into the earlier step's graph, already "
                         "freed: 'Trying to backward through the graph a second time'.")
        found.append(Finding(kind="graph-carried-across-steps", file=h.file, line=h.line,
                             message=compose(
            "graph-carried-across-steps", f"{what}{built}.", evidence,
            _carried_fix(h),
        ), step=h.first_step))
    if not found:  # no holder found, but a backward reached into an earlier step's graph
        for b in w.backwards:
            if b.earliest_step < b.step:
                found.append(Finding(kind="graph-carried-across-steps", file=b.file, line=b.line,
                                     message=compose(
                    "graph-carried-across-steps",
                    f"The graph behind `{sites.code_text(b.file, b.line)}` at step {b.step} "
                    f"reaches into step {max(b.earliest_step, 0)}'s graph: a tensor from an "
                    "earlier step, held somewhere the doctor could not name, carries it from "
                    "step to step (this line is where it was noticed, not the line to change: "
                    "look for state the step reads and writes back).",
                    f"{b.nodes} nodes, {format_bytes(b.saved)} saved for backward.",
                ), step=b.step))
                break
    return found


def _carried_fix(h: Held) -> str | None:
    """The fix for this holder, in the user's own expressions: state the next step reads
    is detached once where that step starts reading it; a total or a log keeps numbers."""
    text = sites.code_text(h.file, h.line)
    if not h.line or not h.name:
        return None
    if h.read:  # a later step's backward reached into it: state carried on purpose
        target = sites.target_of(text, h.name, h.attribute)
        cut = _detached(target, h.container)
        if sites.ever_none(h.file, h.name, h.attribute):  # it starts as None
            cut = f"if {target} is not None: {cut}"
        method = sites.enclosing_function(h.file, h.line) if target.startswith("self.") \
            else ""
        where = (f"at the top of `{method}`, before it reads `{target}`" if method else
                 "at the start of the step, before the forward")
        fix = (f"carry the values, cut the graph: `{cut}` once, where the next step starts "
               f"reading it (e.g. {where})")
        if sites.in_loop(h.file, h.line):
            fix += (", not inside the time loop (that would cut backpropagation through the "
                    "sequence itself)")
        return fix + ". Do not reset it to zeros (the model forgets) or add retain_graph=True"
    rewritten = sites.as_number(text, h.numel == 1)
    what = "a Python number" if h.numel == 1 else "a tensor without a graph"
    keep = f"keep {what}, not the graph: `{rewritten}`" if rewritten is not None else None
    if not h.backwarded and h.saved and h.saved[-1]:
        return ("compute it under `with torch.no_grad():` (evaluation needs no graph; "
                "`model.eval()` as well if the model has dropout or batch norm)" +
                (f", and {keep}" if keep else ""))
    return keep


def _detached(target: str, container: str) -> str:
    """The statement that cuts the graph of ``target``, written for what it is: a tensor, a
    tuple or list of tensors (an LSTM's ``(h, c)``), or a tensor in a dict."""
    if container.startswith("tuple"):
        return f"{target} = tuple(t.detach() for t in {target})"
    if container.startswith("list"):
        return f"{target} = [t.detach() for t in {target}]"
    if container.startswith("dict entry"):
        key = container.split("'")[1]
        return f"{target}[{key!r}] = {target}[{key!r}].detach()"
    return f"{target} = {target}.detach()"


def _growing(w: Watch, carried: list[Finding]) -> list[Finding]:
    nodes, saved = _per_step(w)
    text = _growth_text(nodes, saved)
    if not text or carried:
        return []
    last = [b for b in w.backwards if b.step == w.steps_done - 1][-1]
    return [Finding(kind="growing-graph", file=last.file, line=last.line, message=compose(
        "growing-graph",
        f"Each step the graph that `{sites.code_text(last.file, last.line)}` walks is bigger "
        "than the last:",
        f"{text}. At that rate memory runs out in a long run.",
    ), step=0)]


def _per_loss(w: Watch) -> list[Finding]:
    found = []
    by_step: dict[int, list[BackwardCall]] = {}
    index = {id(b): i for i, b in enumerate(w.backwards)}
    for b in w.backwards:
        by_step.setdefault(b.step, []).append(b)
    for step, calls in by_step.items():
        for j in range(1, len(calls)):
            b = calls[j]
            if w.separated(index[id(calls[j - 1])], index[id(b)]):
                continue  # a step or a reset between them: separate passes on purpose
            earlier = frozenset().union(*(c.seqs for c in calls[:j]))
            shared = len(b.seqs & earlier)
            if shared:
                evidence = (f"{len(calls)} backward() calls in step {step}; this one walks "
                            f"{shared} graph nodes an earlier backward() of the same step "
                            "already walked")
                retained = [c for c in calls[:j] if c.retain]
                evidence += (", which only works because retain_graph=True kept them." if
                             retained else ", which the first backward() freed.")
            elif b.repeated_forward:
                evidence = (f"{len(calls)} backward() calls in step {step}, and before this "
                            "one the model ran its forward again on the same batch: one "
                            "forward and one backward per loss.")
            else:
                continue
            found.append(Finding(kind="backward-per-loss", file=b.file, line=b.line,
                                 message=compose(
                "backward-per-loss",
                f"`{sites.code_text(b.file, b.line)}` runs a backward pass per loss.", evidence,
            ), step=step))
    return found


def _retained(w: Watch, carried: list[Finding]) -> list[Finding]:
    found = []
    for i, b in enumerate(w.backwards):
        if not b.retain or b.create:
            continue
        later = w.backwards[i + 1:]
        if any(b.seqs & c.seqs for c in later):
            continue  # another backward used the kept graph: that pattern is the finding
        if carried and any(c.earliest_step < c.step for c in later):
            continue
        if i + 1 == len(w.backwards) and w.steps_done <= b.step:
            continue  # the loop stopped before anything could use it
        found.append(Finding(kind="retain-graph", file=b.file, line=b.line, message=compose(
            "retain-graph",
            f"`{sites.code_text(b.file, b.line)}` keeps its graph (retain_graph=True), but no "
            "later backward() uses it.",
            f"It held {b.nodes} nodes and {format_bytes(b.saved)} saved for backward past "
            f"the backward of step {b.step}, for nothing.",
        ), step=b.step))
    return found


def _clips(w: Watch) -> list[Finding]:
    found = []
    for c in w.clips:
        scale = f"{c.scale:g}" if c.scale is not None else "the scale"
        scaler = sites.receiver(sites.code_text(*w.scale_site), "scale")
        opt = sites.first_argument(sites.code_text(*w.scaler_step_site), "step")
        clip = sites.code_text(c.file, c.line)
        if w.unscale_site.line:  # the loop unscales, too late: move that line
            fix = (f"move `{sites.code_text(*w.unscale_site)}` "
                   f"({_at(*w.unscale_site)}) before `{clip}`")
        else:
            fix = f"call `{scaler}.unscale_({opt})` before `{clip}`" if scaler and opt \
                else None
        found.append(Finding(kind="clip-before-unscale", file=c.file, line=c.line, message=compose(
            "clip-before-unscale",
            f"`{sites.code_text(c.file, c.line)}` ({c.function}) clipped {c.scaled} of "
            f"{_count(c.total, 'gradient')} while a GradScaler still multiplied them by {scale}.",
            _clip_effect(w, c), fix,
        ), step=c.step))
    return found


# optimisers whose update does not scale with the gradient (each coordinate is divided by a
# running estimate of the gradient's own size): multiplying every step's gradient by one
# factor c leaves the steps alone, as long as the gradient's entries stay well above eps
_SCALE_INVARIANT = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad",
                    "Adadelta", "Adafactor", "SparseAdam")


def _clip_effect(w: Watch, c: ClipCall) -> str:
    """What this clip did to the gradients the optimiser applied, in numbers where the clip
    returned its norm, and what that does to the optimiser the loop uses (an SGD-like step
    is proportional to the gradient; an Adam-like one ignores a factor common to every step).

    ``clip_grad_norm_`` measured the *scaled* norm ``scale * g`` against ``max_norm``: above
    it, it rescales the gradients to ``max_norm`` in scaled units, that is ``max_norm /
    scale`` once ``scaler.step()`` unscales them, whatever ``g`` was; clipping after
    ``unscale_`` gives ``min(g, max_norm)``."""
    types = set(w.scaled_optimizers)
    if w.optimizer is not None:
        types.add(type(w.optimizer))
    adaptive = {t.__name__ for t in types if any(
        k.__name__ in _SCALE_INVARIANT for k in t.__mro__)}
    plain = {t.__name__ for t in types} - adaptive
    which = (f"The optimiser is {', '.join(sorted(adaptive or plain))}. "
             if bool(adaptive) != bool(plain) else "")
    if c.function == "clip_grad_value_":
        cut = (f"It compared each scaled entry with clip_value={c.limit:g}, so it clamped the "
               f"true gradient's entries at {c.limit:g}/{c.scale:g} = {c.limit / c.scale:.3g}"
               f" instead of {c.limit:g}." if c.scale else
               f"It compared each scaled entry with clip_value={c.limit:g}, not the true one.")
        sgd = ("With SGD-like optimisers (the step is proportional to the gradient) every "
               "entry above that is cut to it: updates shrink, no error, training crawls.")
        adam = ("With Adam-like optimisers (each coordinate's step is divided by the "
                "gradient's running size) a factor common to every gradient would cancel, but "
                "a clamp is not one: every entry above that bound is cut to it, an ordinary "
                "step's as much as a spike's.")
    elif c.norm is None or not c.scale:
        cut = ""
        sgd = ("With SGD-like optimisers (the step is proportional to the gradient) every "
               "clipped update shrinks by the scale: no error, training just crawls.")
        adam = ("With Adam-like optimisers a factor common to every step's gradient cancels "
                "(as long as the entries stay well above the optimiser's eps), but the clip "
                "rescales every step's gradient to one norm: not the clip max_norm asks for.")
    else:
        true, applied = c.norm / c.scale, c.limit / c.scale  # applied: once unscaled
        right = min(true, c.limit)  # what the clip after unscale_ leaves
        if c.norm <= c.limit:  # under the threshold: this clip changed nothing this time
            return (f"It measured a gradient norm of {c.norm:.4g}, the true norm ({true:.4g}) "
                    f"times {c.scale:g}, under max_norm={c.limit:g}, so it changed nothing at "
                    f"step {c.step}; but it cuts only where the true norm exceeds "
                    f"{c.limit:g}/{c.scale:g} = {c.limit / c.scale:.3g}, and then to that "
                    f"norm, not to {c.limit:g}.")
        cut = (f"It measured a gradient norm of {c.norm:.4g}, the true norm ({true:.4g}) times "
               f"{c.scale:g}, against max_norm={c.limit:g}, so it rescaled the gradients to "
               f"norm {c.limit:g}/{c.scale:g} = {applied:.3g} (once scaler.step() unscales "
               f"them), where clipping after unscale_ gives min({true:.4g}, {c.limit:g}) = "
               f"{right:.4g}. Every step whose true norm is above {c.limit:g}/{c.scale:g} is "
               "rescaled to that same norm.")
        sgd = ("With SGD-like optimisers (the step is proportional to the gradient) the "
               f"update of step {c.step} is {right / applied:.6g} times smaller than with the "
               "clip after unscale_: no error, training just crawls.")
        adam = ("With Adam-like optimisers (each coordinate's step is divided by the "
                "gradient's running size) that common factor cancels, as long as the "
                "gradient's entries stay well above the optimiser's eps: training moves, but "
                "the clip is not the one max_norm asks for: every step's gradient is rescaled "
                "to the same norm, an ordinary step's as much as a spike's, so the optimiser "
                "sees each step's direction and none of its size.")
    effect = adam if adaptive and not plain else sgd if plain and not adaptive else \
        f"{sgd} {adam}"
    return " ".join(x for x in (cut, which + effect) if x)


_MODE_EFFECT = {
    "dropout": "dropout was off, so the model trained without the regularisation it was built "
               "with",
    "norm": "batch norm normalised with its running statistics instead of the batch's and "
            "stopped updating them",
}


def _eval_mode(w: Watch) -> list[Finding]:
    """A training forward that ran dropout or batch norm in eval mode, named at the
    ``eval()`` call that left the model there: in the function that both called it and ran
    the evaluation's forward (a helper that only sets the mode is not the place)."""
    def cause(e):  # the eval() call that left this module in eval mode
        return next((c for c in reversed(w.mode_calls)
                     if c.order < e.order and e.module_id in c.covered), None)

    # a layer put in eval mode by a call on the layer itself, or before the loop while the
    # model stayed in training mode, is frozen on purpose (fine-tuning keeps batch norm's
    # statistics): only an eval() of the model, or a model left in eval mode, is a bug
    kept = [e for e in w.trained_in_eval
            if (c := cause(e)) is not None and not c.on_layer
            or c is None and not e.model_training]
    if not kept:
        return []
    first = kept[0]
    call = cause(first)
    steps = sorted({e.step for e in kept})
    kinds = sorted({e.kind for e in kept})
    effect = "; ".join(_MODE_EFFECT[k] for k in kinds)
    in_steps = (f"step {steps[0]}" if len(steps) == 1 else
                f"{len(steps)} steps (from step {steps[0]})")
    modules = list(dict.fromkeys(e.module for e in kept))
    named = ", ".join(modules[:3]) + (f" and {len(modules) - 3} more" if len(modules) > 3
                                      else "")
    was = "was" if len(modules) == 1 else "were"
    evidence = (f"{named} {was} in eval mode in the training forward of {in_steps}, "
                f"and the backward() walked it: {effect}. No error: the loss still falls, "
                "only worse than it should.")
    if call is None:  # eval mode from before the examination began
        file, line = first.frames[0].file, first.frames[0].line
        for f in first.frames:
            if f.code is getattr(w.step_code, "__code__", None):
                file, line = f.file, f.line
        return [Finding(kind="eval-mode-training", file=file, line=line, message=compose(
            "eval-mode-training",
            f"The model was already in eval mode when the loop started: this forward "
            f"(`{sites.code_text(file, line)}`) trains it that way.", evidence,
            "call `model.train()` before the loop (and again after every evaluation)",
        ), step=first.step, evidence={"module": first.module, "steps": steps})]
    after = next((e for e in w.eval_forwards if e.order > call.order), first)
    innermost = call.frames[0]
    file, line = sites.common_caller(call.frames, after.frames) or \
        sites.Site(innermost.file, innermost.line)
    text = sites.code_text(file, line)
    function = next((f.code.co_name for f in call.frames if (f.file, f.line) == (file, line)),
                    "")
    model = sites.receiver(text, "eval")
    fix = (f"put `{model}.train()` after the evaluation, at the end of `{function}` (the "
           "function that called eval()), or at the start of every training step"
           if model and function else None)
    return [Finding(kind="eval-mode-training", file=file, line=line, message=compose(
        "eval-mode-training",
        f"`{text}` put the model in eval mode (step {call.step}) and nothing put it back in "
        "training mode before the next training step.", evidence, fix,
    ), step=first.step, evidence={"module": first.module, "steps": steps,
                             "eval_step": call.step})]


def _grads_kept(w: Watch) -> list[Finding]:
    """Backward calls that add to gradients an optimiser step already applied: named at the
    reset that runs too rarely, or at the backward when the loop never resets them."""
    if not w.kept:
        return []
    first = w.kept[0]
    steps = sorted({k.step for k in w.kept})
    stale = frozenset().union(*(k.ids for k in w.kept))
    resets = [r for r in w.resets if r.ids & stale]
    evidence = (f"At {_count(len(steps), 'step')} (from step {first.step}) the backward "
                f"added this step's gradients to ones optimizer.step() had already applied "
                f"(for {_count(first.params, 'parameter tensor')}): each update applies the "
                "sum of every earlier step's gradients again, so updates grow and training "
                "drifts or diverges, with no error.")
    if resets:
        at = sorted({r.step for r in resets})
        file, line = resets[-1].file, resets[-1].line
        what = (f"`{sites.code_text(file, line)}` resets the gradients at "
                f"{_count(len(at), 'step')} ({', '.join(map(str, at[:6]))}) of "
                f"{w.steps_done}, not before every backward that follows an optimiser step.")
        fix = ("move it where it runs once per optimiser step: just before the backward (or "
               "just after `optimizer.step()`)")
    else:
        file, line = first.file, first.line
        what = (f"`{sites.code_text(file, line)}` accumulates into gradients that are never "
                "reset between optimiser steps: no `zero_grad()` covers these parameters.")
        fix = None
        for ref in w.optimizers.values():
            o = ref()
            if o is not None and stale & {id(p) for g in o.param_groups for p in g["params"]}:
                name = sites.receiver(sites.code_text(*w.step_sites.get(id(o), sites.NO_SITE)),
                                      "step")
                if name:
                    fix = (f"call `{name}.zero_grad()` once per optimiser step, before "
                           f"`{sites.code_text(file, line)}`; to accumulate over k "
                           "micro-batches on purpose, step and zero every k-th backward")
                break
    return [Finding(kind="grads-not-zeroed", file=file, line=line, message=compose(
        "grads-not-zeroed", what, evidence, fix,
    ), step=first.step, evidence={"steps": steps, "params": first.params,
                             "resets": len(resets)})]


def _probabilities(w: Watch) -> list[Finding]:
    found = []
    seen: set[tuple[str, int]] = set()
    for p in w.probability_losses:
        file, line = (p.origin_file, p.origin_line) if p.origin_line else (p.file, p.line)
        built = _module_line(w, p.origin_module, ("Softmax(", "Sigmoid("))
        if built is not None:  # nn.Softmax / nn.Sigmoid: the line that builds it
            file, line = built
        if (file, line) in seen:
            continue
        seen.add((file, line))
        squash = "softmax" if p.origin == "values" else p.origin
        made = (f"`{sites.code_text(file, line)}` applies {squash}, and its output reaches "
                f"{p.loss} at {_at(p.file, p.line)}" if p.origin_line else
                f"`{sites.code_text(p.file, p.line)}` gives {p.loss} " +
                ("rows of probabilities (each >= 0, summing to 1)" if p.origin == "values"
                 else f"the output of a {squash}"))
        inside = {"cross_entropy": "log_softmax", "nll_loss": "nothing: it takes "
                  "log-probabilities", "binary_cross_entropy_with_logits": "a sigmoid"}[p.loss]
        evidence = (f"{p.loss} applies {inside} itself, so it sees the {squash} of a "
                    f"{squash}: the loss can no longer go near 0 and its gradients shrink as "
                    "the model grows confident, so training stalls early, with no error.")
        found.append(Finding(kind="probabilities-into-loss", file=file, line=line, message=compose(
            "probabilities-into-loss", f"{made}.", evidence,
        ), step=p.step, evidence={"loss": p.loss, "origin": p.origin}))
    return found


_CUT_FIX = {
    "argmax": "argmax has no gradient: compute the loss from the scores it picks from (e.g. "
              "`cross_entropy(scores, target)`), and keep argmax for predictions",
    "argmin": "argmin has no gradient: compute the loss from the scores themselves",
    "data": "drop `.data` here: the loss must be computed from the tensor itself",
    "detach": "drop `.detach()` on the way to the loss",
    "item": "keep the loss a tensor: `.item()` is for logging",
    "tensor": "do not rebuild the loss from its value: use the loss tensor itself, "
              "computed from the model's output",
}


def _loss_cuts(w: Watch) -> list[Finding]:
    """A backward whose loss came from a tensor that lost its path to the parameters: named
    at the op that cut the path (or the ``no_grad`` block or decorator around it)."""
    found = []
    seen: set[tuple[str, int]] = set()
    for c in w.loss_cuts:
        cut = c.cut
        if (cut.file, cut.line) in seen:
            continue
        seen.add((cut.file, cut.line))
        text = sites.code_text(cut.file, cut.line)
        if cut.grad_off:
            what = (f"`{text}` turns autograd off, and the loss that "
                    f"`{sites.code_text(c.file, c.line)}` walks is computed under it: no "
                    "graph links it to the parameters.")
            fix = ("compute the forward and the loss with autograd on (outside the `no_grad`"
                   " / `inference_mode` block or decorator)")
        elif cut.op in _LEAF_MAKERS_TEXT:
            what = (f"`{text}` makes a new tensor that requires grad from numbers, and "
                    f"`{sites.code_text(c.file, c.line)}` runs backward from it: the loss's "
                    "values were copied out of the graph first (`.item()`).")
            fix = _CUT_FIX["tensor"]
        else:
            what = (f"`{text}` ({cut.op}) gives a tensor with no path back to the parameters, "
                    f"and the loss that `{sites.code_text(c.file, c.line)}` walks is computed "
                    "from it.")
            fix = _CUT_FIX.get(cut.op, f"remove `{cut.op}` from the path to the loss")
        if c.leaf and cut.op not in _LEAF_MAKERS_TEXT:
            fix += ", and drop the `requires_grad_(True)` (or re-wrapping) that hid the error"
        count = _count(len(list(w.model.parameters())), "parameter tensor") \
            if w.model is not None else ""
        params = f" none of the model's {count}" if count else " no parameter"
        evidence = (f"At step {c.step} that backward reached{params}: " +
                    ("the loss is a leaf made to require grad, which silences PyTorch's "
                     "error ('does not require grad and does not have a grad_fn'), and "
                     "nothing trains." if c.leaf else "PyTorch refuses it ('does not require "
                     "grad and does not have a grad_fn')." if w.error_info else
                     "nothing trains."))
        found.append(Finding(kind="loss-cut-from-graph", file=cut.file, line=cut.line,
                             message=compose(
            "loss-cut-from-graph", what, evidence, fix,
        ), step=c.step, evidence={"op": cut.op, "grad_off": cut.grad_off, "band_aid": c.leaf}))
    return found


_LEAF_MAKERS_TEXT = ("tensor", "as_tensor", "full", "ones", "zeros")


def _optimizer_misses(w: Watch) -> list[Finding]:
    """Model parameters the backward gave gradients that no optimiser (that stepped, or the
    one given) holds: the model changed after the optimiser was built. Named where the
    parameter was replaced by its own module outside ``__init__``, else at the statement
    after the optimiser's construction that changed the model."""
    model = w.model
    if model is None or w.steps_done < 1:
        return []
    optimizers = [r() for r in w.optimizers.values()] + [w.optimizer]
    held = {id(p) for o in optimizers if o is not None for g in o.param_groups
            for p in g["params"]}
    if not held:
        return []
    missing = [(n, p) for n, p in model.named_parameters()
               if p.requires_grad and w.grad_counts.get(id(p), 0) > 0 and id(p) not in held]
    if not missing:
        return []
    model_ids = {id(p) for p in model.parameters()}
    stale = len(held - model_ids)
    name, _ = missing[0]
    owner_path, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    replaced = [c for c in sites.class_stores(type(owner), attr) if not c.setup]
    opt = next((o for o in optimizers if o is not None), None)
    found = None
    if replaced:
        file, line = replaced[0].file, replaced[0].line
        how = (f"`{sites.code_text(file, line)}` replaces the parameter with a new one after the "
               "optimiser was built, and the optimiser keeps the old one.")
    else:
        for model_name in sites.bound_names(w.step_code, model):
            for opt_name in sites.bound_names(w.step_code, opt):
                found = sites.setup_after(w.step_code, opt_name, model_name)
                if found:
                    break
            if found:
                break
        if found is None:
            return []  # no line to name: silence rather than a guess
        file, made, after = found
        line = after or made
        how = (f"`{sites.code_text(file, line)}` changes the model after "
               f"`{sites.code_text(file, made)}` built the optimiser from its parameters."
               if after else f"`{sites.code_text(file, made)}` built the optimiser from "
               "parameters the model no longer has.")
    names = ", ".join(n for n, _ in missing[:3]) + (" ..." if len(missing) > 3 else "")
    evidence = (f"{_count(len(missing), 'parameter tensor')} of the model ({names}) got "
                f"gradients in {w.steps_done} steps, but no optimiser holds them, so they "
                "never change" + (f"; the optimiser holds {_count(stale, 'tensor')} the model "
                                  "no longer uses" if stale else "") + ".")
    return [Finding(kind="optimizer-misses-parameters", file=file, line=line, message=compose(
        "optimizer-misses-parameters", how, evidence,
    ), evidence={"missing": len(missing), "stale": stale})]


def _unused(w: Watch) -> list[Finding]:
    model = w.model
    if (model is None or w.error_info is not None or w.steps_done < 2
            or not any(w.grad_counts.values())):  # judged on a loop that ran
        return []
    unused = {id(p) for p in model.parameters() if w.grad_counts.get(id(p), 1) == 0}
    if not unused:
        return []
    found = []
    reported: set[int] = set()
    for path, m in model.named_modules():
        params = list(m.parameters())
        if not params or not all(id(p) in unused for p in params):
            continue
        if any(id(p) in reported for p in params):
            continue
        reported |= {id(p) for p in params}
        found.append(_unused_finding(w, model, path, m, params))
    for name, p in model.named_parameters():
        if id(p) in unused and id(p) not in reported:
            owner_path, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_path) if owner_path else model
            found.append(_unused_finding(w, model, name, owner, [p], attr=attr))
    return found


def _unused_finding(w: Watch, model: nn.Module, path: str, m: nn.Module,
                    params: list, attr: str | None = None) -> Finding:
    if attr is None:  # a whole module: the line of its parent that creates it
        parent_path, _, attr = path.rpartition(".")
        while attr.isdigit() and parent_path:  # experts.3: the line that makes `experts`
            parent_path, _, attr = parent_path.rpartition(".")
        owner = model.get_submodule(parent_path) if parent_path else model
    else:
        owner = m
    candidates = sites.class_stores(type(owner), attr)
    setup = [c for c in candidates if c.setup] or candidates
    file, line = (setup[0].file, setup[0].line) if setup else sites.NO_SITE
    if not line:  # a module kept in a container (ModuleDict): where the user's code builds it
        for name in sites.bound_names(w.step_code, m):
            stores = [(f, n) for f in sorted(w.code_files)
                      for n, _ in sites.storing_lines(f, name, False)]
            if stores:
                file, line = stores[0]
                break
    count = sum(p.numel() for p in params)
    label = f"model.{path}" if path else "model"
    return Finding(kind="unused-parameters", file=file, line=line, message=compose(
        "unused-parameters",
        f"{label} ({_count(len(params), 'parameter tensor')}, {_count(count, 'number')}) "
        f"never received a gradient in {w.steps_done} steps: the forward never uses them, "
        "or a `detach()` (or `.data`, `.item()`) sits between them and the loss.",
        "The optimiser never changes them. Under DistributedDataParallel the reducer waits "
        "for their gradients, and the next forward raises 'Expected to have finished "
        "reduction in the prior iteration', listing them.",
    ))


def _count(n: int, noun: str) -> str:
    """``1 number``, ``2 numbers``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _state(w: Watch) -> list[Finding]:
    """Tensors on the model that require grad but are no parameters: a weight the backward
    trains but no optimiser sees (unregistered), or state that should not require grad."""
    found = []
    for label, (owner, attr) in w.state_requiring_grad.items():
        value = owner._buffers.get(attr) if attr in owner._buffers else getattr(owner, attr,
                                                                                None)
        if value is not None and id(value) in w.reached and attr not in owner._buffers:
            file, line = sites.setup_store(type(owner), attr, avoid=("Parameter(",
                                                                     "register_"))
            found.append(Finding(kind="unregistered-parameter", file=file, line=line,
                                 message=compose(
                "unregistered-parameter",
                f"{label.removesuffix(' (a tensor attribute)')} is a plain tensor with "
                "requires_grad=True, not an nn.Parameter: the backward gives it a gradient, "
                "but model.parameters() does not list it.",
                "So an optimiser built from model.parameters() never updates it (it stays "
                "at its first value), and state_dict() does not save it.",
            ), evidence={"attribute": attr}))
            continue
        file, line = sites.setup_store(type(owner), attr)
        found.append(Finding(kind="buffer-requires-grad", file=file, line=line, message=compose(
            "buffer-requires-grad",
            f"{label} requires grad, but it is state, not a parameter the optimiser trains.",
            "Autograd records every operation on it (and a graph it is assigned from stays "
            "alive); the optimiser never updates it.",
        )))
    return found + _stray_modules(w)


def _stray_modules(w: Watch) -> list[Finding]:
    """Modules kept in a plain list, tuple or dict on the model: their parameters get
    gradients, but model.parameters() does not look inside plain containers."""
    stray = {pid for pid, ref in w.stray.items() if ref() is not None}
    if w.model is None or not stray:
        return []
    found = []
    for path, m in w.model.named_modules():
        for attr, value in vars(m).items():
            if isinstance(value, nn.Module) or not isinstance(value, list | tuple | dict):
                continue
            items = list(value.values()) if isinstance(value, dict) else list(value)
            mods = [v for v in items if isinstance(v, nn.Module)]
            params = [p for v in mods for p in v.parameters() if id(p) in stray]
            if not params:
                continue
            file, line = sites.setup_store(type(m), attr, avoid=(
                "ModuleList", "ModuleDict", "Sequential", "ParameterList"))
            holder = "ModuleDict" if isinstance(value, dict) else "ModuleList"
            label = f"model.{path}.{attr}" if path else f"model.{attr}"
            found.append(Finding(kind="unregistered-parameter", file=file, line=line,
                                 message=compose(
                "unregistered-parameter",
                f"{label} is a plain Python {type(value).__name__} of "
                f"{_count(len(mods), 'module')}: their {_count(len(params), 'parameter tensor')}"
                " get gradients, but model.parameters() does not look inside plain "
                "containers.",
                "So an optimiser built from model.parameters() never updates them, and "
                "state_dict(), .to(device) and train()/eval() miss them too.",
                f"keep them in an `nn.{holder}` (`self.{attr} = nn.{holder}(...)`), which "
                "registers every module in it",
            ), evidence={"attribute": attr, "modules": len(mods)}))
    return found


def _walked_twice(w: Watch, step: int) -> str:
    """Two backward passes of one step that share nodes, the first freeing them: where the
    shared part was built, and the two ways out."""
    calls = [b for b in w.backwards if b.step == step]
    if len(calls) < 2:
        return ""
    last = calls[-1]
    earlier = next((b for b in reversed(calls[:-1]) if b.seqs & last.seqs), None)
    if earlier is None:
        return ""
    shared = earlier.seqs & last.seqs
    built = w.node_sites.get(max(shared))
    source = (f", built by `{sites.code_text(*built)}` ({_at(*built)})" if built else "")
    return (f"`{sites.code_text(last.file, last.line)}` walks {_count(len(shared), 'node')} "
            f"that `{sites.code_text(earlier.file, earlier.line)}` "
            f"({_at(earlier.file, earlier.line)}) already walked and freed{source}. If the "
            "earlier loss should not reach them, cut them there with `.detach()` (a GAN's "
            "discriminator loss on `fake.detach()`); if both losses need them, compute them "
            "again for the second (retain_graph=True keeps them, and every later backward "
            "through them adds gradients the first optimiser may not want).")


def loop_error(w: Watch, findings: list[Finding]) -> LoopError | None:
    """The loop's exception, explained with the findings that cause it."""
    if w.error_info is None:
        return None
    raised = w.error_info
    message = raised.message
    kinds = {f.kind: f for f in findings}
    why = ""
    if VERSION_ERROR in message:
        f = kinds.get("inplace-on-saved")
        by_optimizer = f is not None and f.evidence.get("writer") == "optimizer"
        reordered = kinds.get("step-before-backward")
        by_code = reordered is not None and reordered.evidence.get("writer") == "code"
        update = place(reordered.evidence.get("update_file", ""),
                       reordered.evidence.get("update_line", 0)) if by_code else ""
        why = (f"The weight update at {update} is intended; the loss at "
               f"{reordered.where} still contains the graph from before it (see the "
               "step-before-backward finding)." if by_code and f is None else
               f"The optimiser's update at {reordered.where} changed weights that a later "
               "backward() of the same step still needed (see the step-before-backward "
               "finding: the order of the lines)." if reordered is not None and f is None else
               f"The optimiser's update at {f.where} changed weights that a graph from an "
               "earlier step saved: that graph should not still be alive (see the "
               "inplace-on-saved finding for what keeps it)." if by_optimizer else
               f"The in-place write at {f.where} changed a tensor backward needed (see the "
               "inplace-on-saved finding)." if f else
               "An in-place write changed a tensor backward needed; the write happened "
               "outside what the doctor could see.")
    elif "backward through the graph a second time" in message:
        if "backward-per-loss" in kinds:
            why = ("The first backward() freed the graph; a second one through the same graph "
                   f"(at {kinds['backward-per-loss'].where}) finds it gone. Sum the losses and "
                   "call backward() once.")
        elif "graph-carried-across-steps" in kinds:
            holder = (f"the state stored at {kinds['graph-carried-across-steps'].where}"
                      if w.held else "a tensor held somewhere the doctor could not name")
            why = ("This step's graph is linked to the previous step's, which its backward "
                   f"already freed: {holder} carries it. Detach it.")
        else:
            why = _walked_twice(w, raised.step)
    elif "index out of range" in message:
        why = ("An index (a token id, an expert id) is outside the table it indexes: check "
               "the largest id against num_embeddings. Lesson: 01_expert_router_index.")
    elif "does not require grad and does not have a grad_fn" in message:
        cut = kinds.get("loss-cut-from-graph")
        why = (f"backward() was called on a tensor with no graph: the path from the "
               f"parameters was cut at {cut.where} (see the loss-cut-from-graph finding)."
               if cut is not None else
               "backward() was called on a tensor with no graph: it was computed under "
               "no_grad, or from detached values.")
    if not why:
        why = explain_common(message)
    return LoopError(type=raised.type_name, message=message, step=raised.step,
                     file=raised.file, line=raised.line, explanation=why)
