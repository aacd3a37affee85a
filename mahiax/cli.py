"""Command line: ``python -m mahiax train --steps N`` (also installed as ``mahiax``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mahiax.config import PRECISIONS, PRESETS, WEIGHTINGS, MahiaConfig, preset


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
    t.add_argument("--steps", type=_positive_int, default=300, help="training steps (300)")
    t.add_argument("--preset", choices=sorted(PRESETS), default="teaching", help="base config")
    t.add_argument("--seed", type=int, help="seed for weights and data")
    t.add_argument("--experts", type=_positive_int, dest="num_experts", help="num_experts")
    t.add_argument("--top-k", type=_positive_int, dest="top_k", help="experts per token")
    t.add_argument("--batch-size", type=_positive_int, dest="batch_size")
    t.add_argument("--lr", type=float)
    t.add_argument("--weighting", choices=WEIGHTINGS, help="loss weighting (dwa)")
    t.add_argument("--precision", choices=PRECISIONS, help="fp32 | bf16 | fp16")
    t.add_argument("--device", choices=("cpu", "cuda", "auto"))
    t.add_argument("--json", action="store_true", help="print one JSON record per step")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    from mahiax.bugs.cli import add_parser as add_bugs

    add_bugs(sub)
    return p


def _config_from(args: argparse.Namespace) -> MahiaConfig:
    base = preset(args.preset)
    changes = {
        k: getattr(args, k)
        for k in ("seed", "num_experts", "top_k", "batch_size", "lr", "weighting",
                  "precision", "device")
        if getattr(args, k) is not None
    }
    changes["max_steps"] = args.steps
    return base.replace(**changes)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mahiax.train import Trainer

    config = _config_from(args)
    trainer = Trainer(config)
    show = not (args.no_progress or args.json)
    bar = tqdm(total=args.steps, desc="train", unit="step", disable=not show, file=sys.stderr)
    first: dict[str, float] = {}
    window: list[dict[str, float]] = []

    def on_step(rec) -> None:
        if not first:
            first.update(rec.task_losses)
        window.append(rec.task_losses)
        del window[:-20]
        if args.json:
            print(json.dumps(rec.to_dict()), flush=True)
        bar.set_postfix(loss=f"{rec.loss:.3f}", gnorm=f"{rec.grad_norm:.2f}", refresh=False)
        bar.update(1)

    trainer.fit(args.steps, on_step)
    bar.close()
    metrics = trainer.evaluate()
    if args.json:
        print(json.dumps({"summary": metrics}))
        return 0
    from mahiax.tasks import TASKS

    print(f"\nTrained {args.steps} steps on {trainer.device} ({config.precision}, "
          f"{config.weighting} weighting).")
    print(f"{'task':<10} {'kind':<15} {'first loss':>10} {'last-20 loss':>13} {'held-out':>14}")
    for name in config.tasks:
        last = sum(w[name] for w in window) / len(window)
        kind = TASKS[name].kind
        metric = (f"acc {metrics[name]:.3f}" if kind == "classification"
                  else f"R^2 {metrics[name]:.3f}")
        print(f"{name:<10} {kind:<15} {first[name]:>10.4f} {last:>13.4f} {metric:>14}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "bugs":
            from mahiax.bugs.cli import run_command

            return run_command(args)
    except ValueError as e:  # config and input errors: one clear line, no traceback
        print(f"mahiax: error: {e}", file=sys.stderr)
        return 2
    return 1
