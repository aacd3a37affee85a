"""Run every benchmark, print a table, write benchmarks/results/latest.{md,json}."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from benchmarks import bench_telemetry

OUT = Path(__file__).parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


def main() -> int:
    started = time.time()
    results = [bench_telemetry.run()]
    OUT.mkdir(exist_ok=True)
    meta = {"machine": machine(), "command": "make bench", "seconds": time.time() - started}
    (OUT / "latest.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"Machine: {meta['machine']}. Command: `make bench`.", ""]
    t = results[0]
    lines += [
        "| benchmark | median step, off (ms) | median step, on (ms) | on/off total time "
        "(rounds min-max) | goal | met |",
        "|---|---|---|---|---|---|",
        f"| telemetry overhead, default cadence | {t['median_step_off_ms']:.2f} | "
        f"{t['median_step_on_ms']:.2f} | {t['ratio']:.3f} ({t['ratio_min']:.3f}-"
        f"{t['ratio_max']:.3f}) | <= 1.03 | {'yes' if t['met'] else 'NO'} |",
    ]
    text = "\n".join(lines) + "\n"
    (OUT / "latest.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
