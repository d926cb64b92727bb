"""Seconds per text of ``calib validate``'s three passes (FP32, INT8, per-layer), read from the
timestamps of the stage's own phase-named progress messages. The ratio per-layer / FP32 is what
``calib.validate.LAYER_PASS_COST`` weights the progress bar with.

Usage (BENCHMARKS.md section 6):
  python benchmarks/validate_phases.py --workspace WS --engine <build run folder> --demo bbc-topic \\
      --limit 128 --layer-rows 64 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from calib.demo import load_demo_task
    from calib.evaluation import EvalSettings
    from calib.model import ModelRef
    from calib.progress import FP32_PASS, INT8_PASS, LAYER_PASS
    from calib.validate import ValidateConfig, validate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--engine", required=True, help="a build run folder")
    parser.add_argument("--demo", default="bbc-topic")
    parser.add_argument("--limit", type=int, default=128)
    parser.add_argument("--layer-rows", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    task = load_demo_task(args.demo, args.workspace)
    data = task.data("eval")
    config = ValidateConfig(engine=args.engine, model=ModelRef.of(task.model), data=data,
                            settings=EvalSettings(limit=args.limit, layer_rows=args.layer_rows, threads=args.threads))
    seen: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory() as out:
        validate(config, Path(out) / "ev", progress=lambda f, m="": seen.append((time.monotonic(), m)))
    end = seen[-1][0]
    starts = {}
    for stamp, message in seen:
        for name in (FP32_PASS, INT8_PASS, LAYER_PASS):
            if message.startswith(name + " ("):
                starts.setdefault(name, stamp)
    order = sorted(starts, key=starts.get)
    per_text = {}
    for i, name in enumerate(order):
        stop = starts[order[i + 1]] if i + 1 < len(order) else end
        texts = args.layer_rows if name == LAYER_PASS else args.limit
        per_text[name] = (stop - starts[name]) / texts
        print(f"{name}: {stop - starts[name]:.1f} s for {texts} texts = {per_text[name]:.3f} s/text")
    if FP32_PASS in per_text and LAYER_PASS in per_text:
        print(f"per-layer / FP32 time per text: {per_text[LAYER_PASS] / per_text[FP32_PASS]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
