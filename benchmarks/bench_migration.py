"""Ablation of the INT8 accuracy levers on the demo tasks, through the real CLI pipeline.

Per task: one 128-text calibration set (strategy ``match`` against the eval split, stratified by
label), ONE calibration run (``--placement tensorrt-residual``: its tensors are a superset of the
``tensorrt`` placement's), one extra run for percentile 99.99 (the former default), then for every
variant a ``calib build`` and a ``calib validate`` on the **full** eval split. Every MatMul is INT8 in
every variant (no fallback: the columns show what each lever does alone).

Variants (``--variants``; default all):
  <method>                     each calibrator alone (entropy, minmax, percentile 99.999, mse, auto)
  percentile-99.99             the former percentile default
  smooth0.5-<method>           outlier migration with alpha 0.5
  smoothauto-<method>          migration, alpha per tensor by simulated INT8 error
  smoothauto-<method>-bc       ... + bias correction
  residual-<...>               the same with the tensorrt-residual placement (residual-Add inputs INT8)

Usage (the figures in BENCHMARKS.md; ~40 min on 2 shared cores):
  CALIB_THREADS=1 python benchmarks/bench_migration.py --workspace .cache/test-workspace --json migration.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("bbc-topic", "rt-sentiment")
METHODS = ("entropy", "minmax", "percentile", "mse", "auto")
VARIANTS = (
    *METHODS, "percentile-99.99",
    "smooth0.5-minmax", "smooth0.5-percentile",
    "smoothauto-minmax", "smoothauto-percentile", "smoothauto-mse", "smoothauto-auto",
    "smoothauto-minmax-bc", "smoothauto-percentile-bc", "smoothauto-auto-bc",
    "residual-minmax", "residual-smoothauto-auto-bc",
)


def calib(workspace: str, *args: str) -> dict:
    """Run one ``calib ... --json`` command; its JSON result."""
    cmd = [sys.executable, "-c", "import sys; from calib.cli import main; sys.exit(main())",
           "--workspace", workspace, *args, "--json"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode not in (0, 3):  # 3: built without TensorRT (expected here)
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def parse_variant(name: str) -> dict:
    """Build options of a variant name (see module docstring)."""
    parts = name.split("-")
    opts = {"placement": "tensorrt", "smooth": "", "bc": False, "method": "", "calibration": "main"}
    if parts[0] == "residual":
        opts["placement"] = "tensorrt-residual"
        parts = parts[1:]
    if parts[0].startswith("smooth"):
        opts["smooth"] = parts[0][len("smooth"):]
        parts = parts[1:]
    if parts[-1] == "bc":
        opts["bc"] = True
        parts = parts[:-1]
    if parts == ["percentile", "99.99"]:
        opts["calibration"] = "p9999"
        parts = ["percentile"]
    if len(parts) != 1 or parts[0] not in METHODS:
        raise SystemExit(f"unknown variant {name!r}")
    opts["method"] = parts[0]
    return opts


def run_task(ws: str, task: str, variants: list[str], args: argparse.Namespace, rows: list[dict]) -> None:
    t0 = time.monotonic()
    if args.calibration:  # reuse finished calibration runs (main [p99.99]) of an earlier invocation
        cal = dict(zip(("main", "p9999"), args.calibration))
        print(f"[{task}] reusing calibrations {cal}", file=sys.stderr)
        return _variants(ws, task, variants, cal, args, rows)
    cs = calib(ws, "assemble", "--demo", task, "--size", str(args.size), "--strategy", "match", "--stratify",
               "--seed", str(args.seed), "--label", f"bench-migration {task}")["run"]
    methods = [m for m in METHODS if any(parse_variant(v)["method"] == m and parse_variant(v)["calibration"] == "main"
                                         for v in variants)]
    cal = {"main": calib(ws, "calibrate", "--calibration-set", cs, "--placement", "tensorrt-residual",
                         "--method", *methods, "--label", f"bench-migration {task}")["run"]}
    if any(parse_variant(v)["calibration"] == "p9999" for v in variants):
        cal["p9999"] = calib(ws, "calibrate", "--calibration-set", cs, "--placement", "tensorrt-residual",
                             "--method", "percentile", "--percentile", "99.99",
                             "--label", f"bench-migration {task} p99.99")["run"]
    print(f"[{task}] calibration set {cs}, calibrations {cal} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    _variants(ws, task, variants, cal, args, rows)


def _variants(ws: str, task: str, variants: list[str], cal: dict[str, str], args: argparse.Namespace,
              rows: list[dict]) -> None:
    for variant in variants:
        o = parse_variant(variant)
        started = time.monotonic()
        build_args = ["build", "--calibration", cal[o["calibration"]], "--method", o["method"],
                      "--placement", o["placement"], "--label", f"bench-migration {task} {variant}"]
        if o["smooth"]:
            build_args += ["--smooth", o["smooth"]]
        if o["bc"]:
            build_args.append("--bias-correction")
        built = calib(ws, *build_args)
        engine = json.loads(Path(built["outputs"]["record"]).read_text())
        build_seconds = time.monotonic() - started
        val = calib(ws, "validate", "--engine", built["run"], "--demo", task, "--no-layers",
                    "--label", f"bench-migration {task} {variant}")
        s = json.loads((Path(val["dir"]) / "evaluation.json").read_text())
        summary = val["summary"] or {}
        matmuls = [n for n in engine["excluded_nodes"] if "MatMul" in n]
        smooth = engine.get("smooth") or {}
        row = {
            "task": task, "variant": variant, **o,
            "accuracy_fp32": summary.get("accuracy_fp32", _find(s, "accuracy_fp32")),
            "accuracy_int8": summary.get("accuracy_int8", _find(s, "accuracy_int8")),
            "accuracy_drop_points": summary.get("accuracy_drop_points", _find(s, "accuracy_drop_points")),
            "top1_agreement": summary.get("top1_agreement", _find(s, "top1_agreement")),
            "embedding_cosine": summary.get("embedding_cosine", _find(s, "embedding_cosine")),
            "int8_nodes": len(engine["quantized_nodes"]), "float_matmuls": len(matmuls),
            "migrated": smooth.get("migrated"), "max_abs_output_delta": max(
                (smooth.get("max_abs_output_delta") or {}).values(), default=None),
            "bias_corrected": (engine.get("bias_correction") or {}).get("nodes"),
            "build_seconds": round(build_seconds, 1), "seconds": round(time.monotonic() - started, 1),
            "build_run": built["run"], "validate_run": val["run"], "calibrate_run": cal[o["calibration"]],
        }
        rows.append(row)
        print(f"[{task}] {variant}: drop {row['accuracy_drop_points']} agreement {row['top1_agreement']} "
              f"cosine {row['embedding_cosine']} ({row['seconds']} s)", file=sys.stderr)
        Path(args.json).write_text(json.dumps({"rows": rows, "partial": True}, indent=1))


def _find(data, key):
    """First value of ``key`` anywhere in a nested JSON object (evaluation.json layouts differ by version)."""
    if isinstance(data, dict):
        if key in data and not isinstance(data[key], (dict, list)):
            return data[key]
        for v in data.values():
            found = _find(v, key)
            if found is not None:
                return found
    elif isinstance(data, list):
        for v in data:
            found = _find(v, key)
            if found is not None:
                return found
    return None


def markdown(rows: list[dict]) -> str:
    def num(v, fmt):
        return "–" if v is None else format(v, fmt)

    lines = ["| task | variant | drop pts | top-1 agreement | emb. cosine | float MatMuls | migrated | bias-corrected |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['variant']} | {num(r['accuracy_drop_points'], '+.2f')} "
                     f"| {num(r['top1_agreement'], '.4f')} | {num(r['embedding_cosine'], '.4f')} | {r['float_matmuls']} "
                     f"| {num(r['migrated'], 'd')} | {num(r['bias_corrected'], 'd')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True, help="workspace with prepared demo assets (calib demo prepare)")
    parser.add_argument("--json", required=True, type=Path, help="where to write the results")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--size", type=int, default=128, help="calibration texts (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", nargs="+", default=[], metavar="RUN",
                        help="reuse calibrate runs of an earlier invocation (one task): main [percentile-99.99]")
    args = parser.parse_args(argv)
    for v in args.variants:
        parse_variant(v)
    rows: list[dict] = []
    started = time.monotonic()
    for task in args.tasks:
        run_task(args.workspace, task, args.variants, args, rows)
    table = markdown(rows)
    args.json.write_text(json.dumps({"rows": rows, "partial": False, "markdown": table,
                                     "seconds": round(time.monotonic() - started, 1)}, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
