"""Short-only vs length-matched calibration: what a calibration set that does not look like the
evaluation traffic costs, per length bucket (issue 6's check, on the full eval split).

Per demo task:
  1. ``short``: the ``--size`` shortest texts of the calibration pool, taken as they are (strategy
     ``natural`` over that short-only pool), with coverage computed against the eval split, so the
     coverage warnings say what is missing;
  2. ``matched``: ``--size`` texts of the full pool, strategy ``match`` against the eval split's lengths,
     stratified by label;
     (and ``<other task> texts``: ``--size`` texts of the other demo task's calibration pool, e.g. short
     movie-review snippets to calibrate the news-topic model: traffic that looks nothing like production);
  3. each set: one statistics pass (``tensorrt`` placement), then per calibrator a Q/DQ build and a
     validation on the full eval split (ONNX Runtime CPU INT8), per length bucket.

Every step is a registered run (``calib.pipeline.run_stage``), so the reports can be opened in the app.

Usage (the lead's measurement):
  CALIB_THREADS=1 python benchmarks/bench_length_mismatch.py --workspace .cache/test-workspace
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np


def _sets(ws, task: str, args: argparse.Namespace) -> dict[str, object]:
    """The two calibration-set configs: short-only (coverage against eval) and length-matched."""
    from calib.calibset import config_from_dict, token_lengths
    from calib.data import load_rows
    from calib.inputs import demo_values
    from calib.model import load_model

    values = demo_values(task, ws.root)
    base = config_from_dict({**values, "size": args.size, "seed": args.seed, "target_kind": "eval"})
    model = load_model(base.model.model, base.model.tokenizer, max_length=base.model.max_length)
    lengths = token_lengths(model, base.data, ws).lengths
    shortest = sorted(np.argsort(lengths, kind="stable")[: args.size].tolist())
    short_pool = ws.cache_dir / f"bench-short-pool-{task}-{args.size}"
    if not short_pool.exists():
        load_rows(base.data).select(shortest).save_to_disk(str(short_pool))
    source = values["data"].source
    short = config_from_dict({**values, "data": dataclasses.replace(values["data"], source=str(short_pool), split=None),
                              "size": args.size, "seed": args.seed, "strategy": "natural", "target_kind": "dataset",
                              "target_source": source, "target_split": "eval"})
    matched = config_from_dict({**values, "size": args.size, "seed": args.seed, "strategy": "match",
                                "stratify": True, "target_kind": "eval"})
    sets = {"short": short, "matched": matched}
    other = next((t for t in ("rt-sentiment", "bbc-topic") if t != task), None)
    if args.other_task and other:
        # a calibration set of another task's (short) texts: the wrong traffic altogether
        theirs = demo_values(other, ws.root)
        sets[f"{other} texts"] = config_from_dict({
            "model": dataclasses.replace(values["model"], labels=()),
            "data": dataclasses.replace(theirs["data"], label_column=None),
            "size": args.size, "seed": args.seed, "strategy": "natural", "target_kind": "dataset",
            "target_source": source, "target_split": "eval"})
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True, help="workspace with prepared demo assets (calib demo prepare)")
    parser.add_argument("--tasks", nargs="+", default=["bbc-topic"])
    parser.add_argument("--methods", nargs="+", default=["minmax", "entropy"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--limit", type=int, default=0, help="eval texts (default 0 = the full eval split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-other-task", dest="other_task", action="store_false",
                        help="skip the calibration set made of the other demo task's texts")
    args = parser.parse_args(argv)

    from calib.build import BuildConfig, build
    from calib.calibrate import CalibrateConfig, RangesRef, calibrate
    from calib.calibset import assemble
    from calib.demo import load_demo_task
    from calib.evaluation import EvalSettings
    from calib.model import ModelRef
    from calib.pipeline import run_stage
    from calib.validate import ValidateConfig, validate
    from calib.workspace import Workspace

    ws = Workspace(args.workspace)
    overall = ["| task | calibration set | coverage vs eval | calibrator | drop pts | top-1 agreement | emb. cosine "
               "| KL |", "|---|---|---|---|---:|---:|---:|---:|"]
    per_bucket = ["| task | calibration set | calibrator | bucket | n | drop pts | top-1 agreement | emb. cosine | KL |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for task in args.tasks:
        demo = load_demo_task(task, ws.root)
        spec = demo.data("eval")
        for name, set_config in _sets(ws, task, args).items():
            t0 = time.monotonic()
            set_id, cset = run_stage(ws, "calibset", assemble, set_config, label=f"bench-length {task} {name}")
            cov = cset.coverage
            lens = cset.lengths
            coverage = (f"KS {cov.ks:.2f}, lengths {lens.min()}–{lens.max()}, {len(cov.warnings)} warning(s)")
            for warning in cov.warnings:
                print(f"[{task} {name}] coverage: {warning}", file=sys.stderr)
            cal_id, cal = run_stage(ws, "calibrate", calibrate, CalibrateConfig(
                calibration_set=str(cset.dir), methods=tuple(args.methods), placement="tensorrt"),
                parents=[set_id], label=f"bench-length {task} {name}")
            for method in args.methods:
                build_id, engine = run_stage(ws, "build", build, BuildConfig(
                    model=str(demo.model.onnx_path), ranges=RangesRef(str(cal.dir), method)),
                    parents=[cal_id], label=f"bench-length {task} {name} {method}")
                _, ev = run_stage(ws, "validate", validate, ValidateConfig(
                    engine=str(engine.dir), model=ModelRef.of(demo.model), data=spec,
                    settings=EvalSettings(limit=args.limit, layers=False, bootstrap=200, seed=args.seed)),
                    parents=[build_id], label=f"bench-length {task} {name} {method}")
                s = ev.summary()
                overall.append(f"| {task} | {name} | {coverage} | {method} | {s.get('accuracy_drop_points'):+.2f} | "
                               f"{s['top1_agreement']:.4f} | {s.get('embedding_cosine'):.4f} | {s['kl_softmax']:.4f} |")
                for b in ev.buckets:
                    if not b["n"]:
                        continue
                    a = b["agreement"]
                    drop = b.get("accuracy_drop_points")
                    per_bucket.append(
                        f"| {task} | {name} | {method} | {b['bucket']} | {b['n']} | "
                        f"{'-' if drop is None else format(drop, '+.2f')} | {a['top1_agreement']:.4f} | "
                        f"{(b.get('embedding_cosine') or {}).get('mean', float('nan')):.4f} | {a['kl_softmax']:.4f} |")
                print(f"[{task}] {name} {method}: {s} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    print("\n".join(overall))
    print()
    print("\n".join(per_bucket))
    return 0


if __name__ == "__main__":
    sys.exit(main())
