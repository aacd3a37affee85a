"""Run the benchmarks, print their tables, write benchmarks/results/latest.{md,json}.

Every benchmark module exposes ``run() -> dict`` (its figures, JSON-able, with a ``met``
flag per goal) and ``markdown(result) -> str`` (its section of the table). ``--only NAME``
runs a subset (names are the keys of ``BENCHMARKS``); the results file then holds only those.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "results"
# name -> module under benchmarks/, in the order they run
BENCHMARKS: dict[str, str] = {
    "telemetry": "bench_telemetry",
    "cli": "bench_cli",
    "moe": "bench_moe",
    "moe_matrix": "bench_moe_matrix",
    "train_step": "bench_train_step",
    "dashboard": "bench_dashboard",
    "lessons": "bench_lessons",
    "doctor": "bench_doctor",
    "hub": "bench_hub",
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS),
                        help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)
    chosen = args.only or list(BENCHMARKS)
    started = time.time()
    results: dict[str, dict] = {}
    sections: list[str] = []
    for name in chosen:
        module = importlib.import_module(f"benchmarks.{BENCHMARKS[name]}")
        t0 = time.time()
        print(f"running {name} ...", flush=True)
        result = module.run()
        result["seconds"] = time.time() - t0
        results[name] = result
        sections.append(module.markdown(result))
        print(sections[-1] + "\n", flush=True)
    command = "make bench" if args.only is None else (
        "python -m benchmarks.run_all " + " ".join(f"--only {n}" for n in chosen))
    meta = {"machine": machine(), "command": command, "seconds": time.time() - started}
    OUT.mkdir(exist_ok=True)
    (OUT / "latest.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    text = "\n\n".join([f"Machine: {meta['machine']}. Command: `{command}` "
                         f"({meta['seconds']:.0f} s).", *sections]) + "\n"
    (OUT / "latest.md").write_text(text)
    missed = [n for n, r in results.items() if not r.get("met", True)]
    print(f"written {OUT / 'latest.md'}; goals missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
