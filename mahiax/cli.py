"""Command line: ``python -m mahiax train --steps N`` (also installed as ``mahiax``).

``doctor FILE.py:FUNCTION`` runs a few steps of your own training loop under the lab's
detectors (:mod:`mahiax.doctor`); exit status 1 when it finds something.

``train --run NAME --resume`` continues a recorded run from its last checkpoint with the
config it was started with. ``--steps N`` may change: the run trains to step N, and its
cosine schedule becomes the one of a run planned for N steps from the start (the steps
already stored keep the LR they ran with; from the resume step on, the LR is
``lr_at(step, lr, warmup_steps, N)``). Without ``--steps`` the run goes on to its stored
length. Any other flag given with ``--resume`` must match the stored value, else it is
refused with one line naming the flag, the stored value and the given one.

Errors: a bad request (:class:`~mahiax.errors.BadInput`, a run-store error) is printed as one
line, exit status 2; any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence

from mahiax.bugs.variants import VARIANTS
from mahiax.config import (
    BALANCES,
    PRECISIONS,
    PRESETS,
    RESUME_MAY_CHANGE,
    WEIGHTINGS,
    MahiaConfig,
    continue_config,
    preset,
)
from mahiax.errors import BadInput, shown
from mahiax.telemetry import cadence

DEFAULT_STEPS, DEFAULT_PRESET = 300, "teaching"
DOCTOR_STEPS = 6  # steps of the user's loop the doctor runs unless told
# config field -> the flag that sets it
FLAGS = {"seed": "--seed", "num_experts": "--experts", "top_k": "--top-k",
         "batch_size": "--batch-size", "lr": "--lr", "weighting": "--weighting",
         "precision": "--precision", "device": "--device", "balance": "--balance"}


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mahiax", description="MAHIA-X Lab command line")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = sub.add_parser("train", help="train the model on the synthetic multi-task data")
    t.add_argument("--steps", type=_positive_int,
                   help=f"training steps ({DEFAULT_STEPS}); with --resume: train the run to "
                        f"step N on a schedule stretched to N (default: its stored length)")
    t.add_argument("--preset", choices=sorted(PRESETS),
                   help=f"base config ({DEFAULT_PRESET})")
    t.add_argument("--seed", type=int, help="seed for weights and data")
    t.add_argument("--experts", type=_positive_int, dest="num_experts", help="num_experts")
    t.add_argument("--top-k", type=_positive_int, dest="top_k", help="experts per token")
    t.add_argument("--batch-size", type=_positive_int, dest="batch_size")
    t.add_argument("--lr", type=float)
    t.add_argument("--weighting", choices=WEIGHTINGS, help="loss weighting (dwa)")
    t.add_argument("--precision", choices=PRECISIONS, help="fp32 | bf16 | fp16")
    t.add_argument("--balance", choices=BALANCES,
                   help="expert load balancing: aux loss, DeepSeek-V3 selection bias, or none "
                        "(aux)")
    t.add_argument("--device", choices=("cpu", "cuda", "auto"))
    t.add_argument("--json", action="store_true", help="print one JSON record per step")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    rec = t.add_argument_group("recording into the run store")
    rec.add_argument("--run", metavar="NAME", help="record the run live under this name")
    rec.add_argument("--store", metavar="PATH",
                     help="store file or folder (default: $MAHIAX_STORE, else runs/)")
    rec.add_argument("--resume", action="store_true",
                     help="continue run NAME from its last checkpoint, with its config")
    rec.add_argument("--checkpoint-every", type=_positive_int, default=100, metavar="N")
    cadence.add_flags(rec)
    rec.add_argument("--bug", metavar="ID", help="train a catalog bug's variant instead")
    rec.add_argument("--variant", choices=VARIANTS,
                     help="with --bug: which variant")

    # bugs: handled by mahiax.bugs.cli, which loads the catalog (and torch) only then
    b = sub.add_parser("bugs", help="the bug catalog: reproduce, measure, judge")
    bsub = b.add_subparsers(dest="bugs_command", required=True, metavar="SUBCOMMAND")
    b_list = bsub.add_parser("list", help="every entry of the catalog")
    b_list.add_argument("--json", action="store_true")
    b_run = bsub.add_parser("run", help="run one variant of an entry and show what happened")
    b_run.add_argument("id")
    b_run.add_argument("--variant", choices=VARIANTS, required=True)
    b_run.add_argument("--steps", type=int,
                       help="training steps (the entry's default if omitted)")
    b_run.add_argument("--json", action="store_true")
    b_verdict = bsub.add_parser("verdict",
                                help="run all three variants and judge the summary's fix")
    b_verdict.add_argument("id")
    b_verdict.add_argument("--steps", type=int)
    b_verdict.add_argument("--json", action="store_true")

    # doctor: handled by mahiax.doctor.cli
    d = sub.add_parser("doctor", help="run a few steps of your training loop and report "
                                      "what is wrong, where, and how to fix it")
    d.add_argument("target", metavar="FILE.py:FUNCTION",
                   help="FUNCTION(i) runs one training step; the file's top level builds "
                        "the model and optimiser")
    d.add_argument("--steps", type=int, default=DOCTOR_STEPS,
                   help=f"steps to run ({DOCTOR_STEPS})")
    d.add_argument("--json", action="store_true", help="print the report as JSON")

    # runs: read the store only (no torch)
    r = sub.add_parser("runs", help="runs in the store: list, show, export")
    rsub = r.add_subparsers(dest="runs_command", required=True, metavar="SUBCOMMAND")
    for name, helptext in (("list", "every run with its status"),
                           ("show", "one run: config, status, last metrics"),
                           ("export", "a run's per-step scalars as CSV or Parquet")):
        q = rsub.add_parser(name, help=helptext)
        if name != "list":
            q.add_argument("name")
        q.add_argument("--store", metavar="PATH")
        q.add_argument("--json", action="store_true")
        if name == "export":
            q.add_argument("--format", choices=("csv", "parquet"), default="csv")
            q.add_argument("--out", metavar="FILE", help="default: NAME.csv / NAME.parquet")
    return p


def _config_from(args: argparse.Namespace) -> MahiaConfig:
    """A new run's config: the preset, the flags given, ``max_steps`` = ``--steps``."""
    changes = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    changes["max_steps"] = args.steps or DEFAULT_STEPS
    return preset(args.preset or DEFAULT_PRESET).replace(**changes)


def _resume_config(args: argparse.Namespace) -> MahiaConfig:
    """A resumed run's config: the stored one, ``max_steps`` = ``--steps`` if given; every
    other flag given must match it (a preset: in the fields no flag sets)."""
    from mahiax.recording import stored_config

    stored = stored_config(args.run, args.store)
    given: dict[str, object] = {}
    flags: dict[str, str] = {}
    if args.preset is not None:
        for k, v in preset(args.preset).to_dict().items():
            if k not in FLAGS and k not in RESUME_MAY_CHANGE:
                given[k], flags[k] = v, f"--preset {args.preset} ({k}={shown(v)})"
    for k, flag in FLAGS.items():
        if getattr(args, k) is not None:
            given[k], flags[k] = getattr(args, k), f"{flag} {shown(getattr(args, k))}"
    if args.steps is not None:
        given["max_steps"] = args.steps
    return continue_config(stored, given, args.run, flags)


def cmd_train(args: argparse.Namespace) -> int:
    from mahiax.training import distributed

    if (args.bug is None) != (args.variant is None):
        raise BadInput("--bug and --variant go together: --bug ID --variant buggy|summary|fixed")
    if args.resume and not args.run:
        raise BadInput("--resume needs --run NAME (the run to continue)")
    if args.bug is not None:
        if distributed.env_world_size() > 1:
            raise BadInput("--bug runs are single-process: run them without torchrun")
        if not args.run:
            raise BadInput("--bug needs --run NAME: a catalog run is recorded into the store")
        if args.resume:
            raise BadInput("--bug runs cannot be resumed (they are a few steps long): "
                           "record a new one under another --run NAME")
        return cmd_train_bug(args)
    if args.run:
        from mahiax.store import validate_run_name

        validate_run_name(args.run)  # before any work: a bad name costs nothing
    config = _resume_config(args) if args.resume else _config_from(args)
    from mahiax.training.trainer import resolve_device

    if distributed.env_world_size() > 1:  # started by torchrun: one process per rank
        distributed.shard_bounds(config.batch_size, 0, distributed.env_world_size())
        info = distributed.init_from_env(resolve_device(config.device))
        try:
            return _train(args, config, quiet=not info.is_main)
        finally:
            distributed.shutdown()
    return _train(args, config, quiet=False)


def _train(args: argparse.Namespace, config: MahiaConfig, quiet: bool) -> int:
    """Train (and record) ``config`` to step ``config.max_steps``; ``quiet`` ranks (not
    rank 0) print nothing."""
    from tqdm import tqdm

    from mahiax.training.trainer import Trainer

    steps = config.max_steps
    trainer = None if args.run else Trainer(config)
    show = not (args.no_progress or args.json or quiet)
    bars: list = []  # made at the first step: an early error prints no empty bar
    first: dict[str, float] = {}
    first_step = [0]  # where training started: 0, or the checkpoint's step when resumed
    window: list[dict[str, float]] = []

    def on_step(rec) -> None:
        if not first:
            first.update(rec.task_losses)
            first_step[0] = rec.step
        window.append(rec.task_losses)
        del window[:-20]
        if args.json and not quiet:
            print(json.dumps(rec.to_dict()), flush=True)
        if not bars:
            bars.append(tqdm(total=steps, initial=rec.step, desc="train", unit="step",
                             disable=not show, file=sys.stderr))
        bars[0].set_postfix(loss=f"{rec.loss:.3f}", gnorm=f"{rec.grad_norm:.2f}", refresh=False)
        bars[0].update(1)

    if args.run:
        from mahiax.recording import record_training

        trainer = record_training(
            config, args.run, steps, store=args.store, resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            cadence=cadence.from_args(args), on_step=on_step,
        )
    else:
        trainer.fit(steps, on_step)
    if bars:
        bars[0].close()
    if quiet:
        return 0
    metrics = trainer.evaluate()
    if args.json:
        print(json.dumps({"summary": metrics}))
        return 0
    from mahiax.tasks import TASKS

    world = trainer.dist.world_size
    where = f"{world} processes ({trainer.dist.backend}) on {trainer.device}" if world > 1 \
        else str(trainer.device)
    done = f"Trained {steps} steps" if first_step[0] == 0 else \
        f"Resumed at step {first_step[0]} and trained to step {steps}"
    print(f"\n{done} on {where} ({config.precision}, "
          f"{config.weighting} weighting).")
    print(f"{'task':<10} {'kind':<15} {'first loss':>10} {'last-20 loss':>13} {'held-out':>14}")
    for name in config.tasks:
        last = sum(w[name] for w in window) / len(window)
        kind = TASKS[name].kind
        metric = (f"acc {metrics[name]:.3f}" if kind == "classification"
                  else f"R^2 {metrics[name]:.3f}")
        print(f"{name:<10} {kind:<15} {first[name]:>10.4f} {last:>13.4f} {metric:>14}")
    return 0


def cmd_train_bug(args: argparse.Namespace) -> int:
    """Train a catalog variant, recording its failure, leak or damage live."""
    from mahiax.recording import record_bug

    out = record_bug(args.bug, args.variant, args.run, args.steps, store=args.store)
    if out.passed:
        print(f"{args.bug} / {args.variant}: {out.steps_run} steps ran; recorded as "
              f"run '{args.run}'.")
        return 0
    print(f"{args.bug} / {args.variant}: {out.error_type} at step {out.error_step}: "
          f"{out.error_message}\nrecorded as failed run '{args.run}'.")
    return 1


def cmd_runs(args: argparse.Namespace) -> int:
    """``runs list`` and ``runs show`` read the store without pandas (nor torch): they
    answer as fast as Python starts; ``runs export`` writes through pandas."""
    from mahiax.store import RunReader

    reader = RunReader(args.store)
    if args.runs_command == "list":
        records = reader.run_records()
        if args.json:
            print(json.dumps([_iso_times(r) for r in records]))
        elif not records:
            print("no runs yet: start one with  python -m mahiax train --run NAME")
        else:
            cols = ["name", "status", "last_step", "error_type", "updated"]
            print(_table([{c: _iso_times(r)[c] for c in cols} for r in records], cols))
        return 0
    if args.runs_command == "show":
        info = _iso_times(reader.run(args.name, stamps=False))
        step, last = reader.last_values(args.name)
        if args.json:
            print(json.dumps({"run": info, "last": last}, default=str, indent=2))
            return 0
        for k, v in info.items():
            if k != "config":
                print(f"{k:>14}: {v}")
        print(f"{'config':>14}: {json.dumps(info['config'])}")
        if last:
            print(f"last step {step}:")
            for k, v in last.items():
                print(f"  {k:<28} {v:.6g}")
        return 0
    out = args.out or f"{args.name}.{args.format}"
    reader.export(args.name, out, args.format)
    print(f"wrote {out}")
    return 0


def _iso_times(record: dict) -> dict:
    """A run record with its Unix-second times written as ISO 8601 (UTC)."""
    import datetime as dt

    return {k: dt.datetime.fromtimestamp(v, dt.UTC).isoformat()
            if k in ("created", "updated", "heartbeat") and v is not None else v
            for k, v in record.items()}


def _table(rows: list[dict], cols: list[str]) -> str:
    """Rows as a plain text table, one column per name in ``cols``, left-aligned."""
    cells = [[str(c) for c in cols]] + [["" if r[c] is None else str(r[c]) for c in cols]
                                        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


@contextlib.contextmanager
def _sigterm_as_interrupt(active: bool) -> Iterator[None]:
    """While training a recorded run, SIGTERM (the dashboard's stop button) ends it like
    Ctrl-C, so the store records it as interrupted; the old handler is put back after."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _sigterm_as_interrupt(args.command == "train" and bool(args.run)):
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    from mahiax.store.errors import StoreError

    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "runs":
            return cmd_runs(args)
        if args.command == "bugs":
            from mahiax.bugs.cli import run_command

            return run_command(args)
        if args.command == "doctor":
            from mahiax.doctor.cli import run_command as run_doctor

            return run_doctor(args)
    except (BadInput, StoreError) as e:  # a bad request: one clear line, no traceback
        print(f"mahiax: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from mahiax.recording import TrainingFailed

        if not isinstance(e, TrainingFailed):
            raise
        if not isinstance(e.error, BadInput):  # a bug, not a request: keep where it happened
            traceback.print_exception(e.error, file=sys.stderr)
        print(f"mahiax: {e} (stored as failed)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mahiax: stopped; a recorded run is stored as interrupted", file=sys.stderr)
        return 130
    return 1
