"""INT8 accuracy of every calibrator x placement on the demo tasks, against FP32 (ONNX Runtime Q/DQ).

Per task (bbc-topic, rt-sentiment):
  1. a length-matched calibration set (``calib.calibset``, strategy ``match``, stratified by label,
     ``--size`` texts, lengths matched to the eval split);
  2. ONE calibration pass with ``placement="all"``: the ``all`` placement's activation tensors are a
     superset of the ``tensorrt`` placement's (MatMul inputs), so both presets find a range for every
     tensor they quantize (a pass calibrated for ``tensorrt`` only would make the ``all`` preset
     silently skip most of its nodes);
  3. for each calibrator (entropy, minmax, percentile 99.99, mse) x placement (tensorrt, all): build
     (ORT Q/DQ) and validate on the full eval split (or ``--limit`` texts).

Every step goes through ``calib.pipeline.run_stage``, so each is a registered run in the workspace.
Columns: FP32 and INT8 accuracy (%), drop (points), top-1 agreement, mean embedding cosine, nodes
quantized / left in float (``all``: including nodes whose tensors have no finite range, e.g. the
``-inf`` attention mask), and wall time of build + validate (s).

Usage (the lead's measurement; ~20-30 min on 2 shared cores):
  CALIB_THREADS=1 python benchmarks/bench_accuracy.py --workspace .cache/test-workspace --json accuracy.json
Quick smoke run:
  python benchmarks/bench_accuracy.py --workspace /tmp/ws --tasks rt-sentiment --methods minmax --limit 64 --json /tmp/a.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

TASKS = ("bbc-topic", "rt-sentiment")
METHODS = ("entropy", "minmax", "percentile", "mse")
PLACEMENTS = ("tensorrt", "all")


def _calibrate_task(ws, task: str, args: argparse.Namespace) -> tuple[str, object, dict]:
    """Assemble the calibration set and run the one calibration pass; (calibrate run id, artifact, info)."""
    from calib.calibrate import CalibrateConfig, calibrate
    from calib.calibset import assemble, config_from_dict
    from calib.inputs import demo_values
    from calib.pipeline import run_stage

    values = demo_values(task, ws.root)
    set_config = config_from_dict({**values, "size": args.size, "seed": args.seed, "strategy": "match",
                                   "stratify": True, "target_kind": "eval"})
    t0 = time.monotonic()
    set_id, cset = run_stage(ws, "calibset", assemble, set_config, label=f"bench-accuracy {task}")
    cal_config = CalibrateConfig(calibration_set=str(cset.dir), methods=tuple(args.methods),
                                 percentile=args.percentile, placement="all", tensors="placement",
                                 batch_size=args.batch_size)
    cal_id, cal = run_stage(ws, "calibrate", calibrate, cal_config, parents=[set_id], label=f"bench-accuracy {task}")
    info = {"calibset_run": set_id, "calibrate_run": cal_id, "size": args.size, "strategy": "match",
            "stratify": True, "calibration_placement": "all", "tensors": cal.meta["tensors"],
            "nonfinite_tensors": sorted(cal.meta["nonfinite"]), "seconds": round(time.monotonic() - t0, 1)}
    return cal_id, cal, info


def _case(ws, task: str, cal_id: str, cal, method: str, placement: str, args: argparse.Namespace) -> dict:
    from calib.build import BuildConfig, build
    from calib.calibrate import RangesRef
    from calib.demo import load_demo_task
    from calib.evaluation import EvalSettings
    from calib.model import ModelRef
    from calib.pipeline import run_stage
    from calib.placement import Placement
    from calib.validate import ValidateConfig, validate

    demo = load_demo_task(task, ws.root)
    eval_spec = demo.data("eval")
    t0 = time.monotonic()
    build_id, engine = run_stage(ws, "build", build, BuildConfig(
        model=str(demo.model.onnx_path), ranges=RangesRef(str(cal.dir), method),
        placement=Placement(placement)),
        parents=[cal_id], label=f"bench-accuracy {task} {method} {placement}")
    t_build = time.monotonic() - t0
    eval_id, evaluation = run_stage(ws, "validate", validate, ValidateConfig(
        engine=str(engine.dir), model=ModelRef.of(demo.model), data=eval_spec,
        settings=EvalSettings(limit=args.limit, layers=False, bootstrap=args.bootstrap, seed=args.seed,
                              batch_size=args.batch_size)),
        parents=[build_id], label=f"bench-accuracy {task} {method} {placement}")
    s = evaluation.summary()
    o = evaluation.overall
    return {
        "task": task, "method": method, "placement": placement, "rows": s["rows"],
        "accuracy_fp32": s.get("accuracy_fp32"), "accuracy_int8": s.get("accuracy_int8"),
        "accuracy_drop_points": s.get("accuracy_drop_points"),
        "accuracy_diff_ci": o.get("accuracy_diff_ci"),
        "top1_agreement": s["top1_agreement"], "embedding_cosine": s.get("embedding_cosine"),
        "kl_softmax": s["kl_softmax"],
        "quantized_nodes": len(engine.meta["quantized_nodes"]), "float_nodes": len(engine.meta["excluded_nodes"]),
        "skipped_tensors": len(engine.meta["skipped_tensors"]),
        "build_seconds": round(t_build, 1), "seconds": round(time.monotonic() - t0, 1),
        "build_run": build_id, "validate_run": eval_id,
    }


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(rows: list[dict]) -> str:
    head = ("| task | calibrator | placement | FP32 acc % | INT8 acc % | drop pts | top-1 agreement | emb cosine "
            "| nodes INT8 / float | wall s |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['placement']} | {_pct(r['accuracy_fp32'])} | {_pct(r['accuracy_int8'])} "
            f"| {_num(r['accuracy_drop_points'], '.2f')} | {_num(r['top1_agreement'], '.4f')} "
            f"| {_num(r['embedding_cosine'], '.4f')} | {r['quantized_nodes']} / {r['float_nodes']} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> list[str]:
    """Per task and calibrator: does the tensorrt preset beat all on agreement, embedding cosine and accuracy?"""
    out = []
    by = {(r["task"], r["method"], r["placement"]): r for r in rows}
    for (task, method, placement), trt in by.items():
        other = by.get((task, method, "all"))
        if placement != "tensorrt" or other is None:
            continue
        wins = {"agreement": trt["top1_agreement"] > other["top1_agreement"],
                "embedding cosine": (trt["embedding_cosine"] or 0) > (other["embedding_cosine"] or 0),
                "accuracy": (trt["accuracy_int8"] or 0) >= (other["accuracy_int8"] or 0)}
        lost = [k for k, won in wins.items() if not won]
        out.append(f"{task} {method}: agreement {trt['top1_agreement']:.4f} vs {other['top1_agreement']:.4f}, "
                   f"cosine {_num(trt['embedding_cosine'], '.4f')} vs {_num(other['embedding_cosine'], '.4f')}, "
                   f"accuracy {_pct(trt['accuracy_int8'])} vs {_pct(other['accuracy_int8'])} % -> "
                   + ("tensorrt beats all on every count" if not lost else f"tensorrt does not beat all on {', '.join(lost)}"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True, help="workspace with prepared demo assets (calib demo prepare)")
    parser.add_argument("--json", required=True, type=Path, help="where to write the results as JSON")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--placements", nargs="+", default=list(PLACEMENTS), choices=PLACEMENTS)
    parser.add_argument("--size", type=int, default=128, help="calibration texts (default 128)")
    parser.add_argument("--percentile", type=float, default=99.99)
    parser.add_argument("--limit", type=int, default=0, help="eval texts (default 0 = the full eval split)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from calib.io import atomic_write_json
    from calib.workspace import Workspace

    ws = Workspace(args.workspace)
    started = time.monotonic()
    rows: list[dict] = []
    calibrations: dict[str, dict] = {}
    for task in args.tasks:
        cal_id, cal, info = _calibrate_task(ws, task, args)
        calibrations[task] = info
        print(f"[{task}] calibration {cal_id}: {info['tensors']} tensors, {info['seconds']} s", file=sys.stderr)
        for method in args.methods:
            for placement in args.placements:
                row = _case(ws, task, cal_id, cal, method, placement, args)
                rows.append(row)
                print(f"[{task}] {method} {placement}: drop {row['accuracy_drop_points']} agreement "
                      f"{row['top1_agreement']:.4f} cosine {row['embedding_cosine']} ({row['seconds']} s)", file=sys.stderr)
                atomic_write_json(args.json, {"rows": rows, "calibrations": calibrations, "partial": True})
    table = markdown(rows)
    notes = verdict(rows)
    import onnxruntime

    atomic_write_json(args.json, {
        "benchmark": "bench_accuracy", "rows": rows, "calibrations": calibrations, "verdict": notes,
        "settings": {"size": args.size, "percentile": args.percentile, "limit": args.limit, "seed": args.seed,
                     "batch_size": args.batch_size, "engine": "onnxruntime CPU (Q/DQ)"},
        "machine": {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                    "processor": platform.processor() or platform.machine()},
        "seconds": round(time.monotonic() - started, 1), "markdown": table, "partial": False,
    })
    print(table)
    print()
    for line in notes:
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
