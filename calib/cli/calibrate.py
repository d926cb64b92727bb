"""``calib calibrate``: one statistics pass, all calibrators, TensorRT caches; ``calib ranges diff``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from calib import formatting as fmt
from calib.cli.common import (
    ProgressBar,
    add_cluster_args,
    add_placement_arg,
    cluster_of,
    format_table,
    json_arg,
    print_run_json,
    run_folder,
    workspace_of,
)
from calib.errors import InputError

_EXAMPLES = """examples:
  calib calibrate --calibration-set cs-20250101-abcd --method entropy minmax percentile mse
  calib calibrate --calibration-set runs/cs-.../ --percentile 99.999 --trt-version 8.6.1 --tensors all
  calib ranges diff RUN_ID:entropy RUN_ID:minmax --top 15
  calib ranges diff runs/a/ranges/entropy.json runs/b/ranges/entropy.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from calib.methods import DEFAULT_PERCENTILE, default_methods, method_names
    from calib.stats import HISTOGRAM_MODES, TENSOR_SCOPES
    from calib.trtcache import DEFAULT_TRT_VERSION

    p = subparsers.add_parser(
        "calibrate", help="collect activation statistics once and compute ranges + TensorRT caches (stage calibrate)",
        description="Run the calibration set through the FP32 model once (ONNX Runtime, length-bucketed, "
                    "padding excluded), then compute per-tensor ranges with every requested method and write "
                    "ranges JSON, ONNX Runtime TensorsData JSON and TensorRT calibration caches.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--calibration-set", required=True, metavar="RUN",
                   help="calibration set: a calibset run id (or unique prefix, latest, latest:LABEL) or a folder "
                        "holding manifest.json")
    p.add_argument("--method", nargs="+", choices=method_names(), default=list(default_methods()),
                   help=f"calibrators (default: {' '.join(default_methods())})")
    p.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                   help=f"percentile for --method percentile (default {DEFAULT_PERCENTILE:g})")
    p.add_argument("--trt-version", default=DEFAULT_TRT_VERSION,
                   help=f"TensorRT version written in cache headers (default {DEFAULT_TRT_VERSION}; e.g. 8.6.1)")
    add_placement_arg(p, help="quantization placement preset")
    p.add_argument("--tensors", choices=TENSOR_SCOPES, default="placement",
                   help="placement: inputs of the quantized ops + outputs (default); all: every float tensor")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--histogram", choices=HISTOGRAM_MODES, default="stream",
                   help="stream: one pass, exact power-of-two bin merging (default); "
                        "two-pass: TensorRT's 2048 bins over [0, absmax], twice the model time")
    p.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                   help="any calibrator's parameter, repeatable (VALUE read as JSON, else as text), e.g. "
                        "--param percentile.percentile=99.99 --param auto.rows=512; wins over "
                        "--percentile")
    p.add_argument("--no-zero-bin-damping", action="store_true",
                   help="entropy: keep bins[0] as is (default damps it to bins[1], as NVIDIA's implementation)")
    p.add_argument("--top", type=int, default=10, help="rows of the entropy-vs-minmax diff to print")
    p.add_argument("--label", default="", help="label for the run in the registry")
    add_cluster_args(p)
    json_arg(p)
    p.set_defaults(handler=run)

    r = subparsers.add_parser("ranges", help="inspect range sets (diff)", epilog=_EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = r.add_subparsers(dest="ranges_command", metavar="ACTION")
    d = rsub.add_parser("diff", help="compare two range sets, biggest changes first")
    d.add_argument("a", help="ranges JSON file, or a calibration run folder/id/prefix/latest with an optional "
                   ":METHOD (e.g. RUN:entropy, latest:minmax)")
    d.add_argument("b", help="the same for the second range set")
    d.add_argument("--method", default="entropy", help="method when A/B name a run without :METHOD (default entropy)")
    d.add_argument("--top", type=int, default=20, help="rows to print (0 = all)")
    d.set_defaults(handler=run_diff)
    r.set_defaults(handler=lambda args: (r.print_help(), 1)[1])


def diff_table(rows: list[dict], top: int) -> str:
    shown = rows[:top] if top > 0 else rows
    sides = [side for side in ("a", "b") if any(r.get(f"choice_{side}") for r in rows)]
    head = ("tensor", "amax A", "amax B", "B / A", *(f"{s.upper()} chose (error)" for s in sides))
    return format_table(head, [(r["tensor"], fmt.number(r["amax_a"]), fmt.number(r["amax_b"]), fmt.number(r["ratio"]),
                                *(_choice(r.get(f"choice_{s}")) for s in sides)) for r in shown])


def _choice(choice: dict | None) -> str:
    """'percentile-99.999 (3.1e-04, matmul-output)' for an auto range choice."""
    if not choice:
        return "-"
    return f"{choice['method']} ({choice.get('error', 0.0):.2e}, {choice.get('criterion', '')})"


def load_ranges_ref(ref: str, workspace, method: str):
    """Ranges from a JSON path, or a calibration folder or run reference optionally suffixed ':METHOD'
    (``RUN:entropy``, ``latest:minmax``, ``latest:LABEL:mse``)."""
    from calib.calibrate import Calibration
    from calib.methods import method_names
    from calib.ranges import Ranges
    from calib.workspace import LATEST

    path = Path(ref)
    if path.is_file():
        return Ranges.load(path)
    head, sep, tail = ref.rpartition(":")
    if sep and not path.exists() and (tail in method_names() or head.partition(":")[0] != LATEST):
        ref, method = head, tail  # RUN:METHOD, latest:METHOD, latest:LABEL:METHOD (not latest:LABEL)
    return Calibration.load(run_folder(workspace, ref, "calibrate")).ranges(method)


def method_params_of(values: list[str]) -> dict[str, dict[str, Any]]:
    """``--param METHOD.NAME=VALUE`` options as ``{method: {name: value}}``; VALUE is JSON when it parses
    (numbers, booleans, lists), else the text. A malformed option is one :class:`InputError` line."""
    params: dict[str, dict[str, Any]] = {}
    for text in values:
        key, sep, raw = text.partition("=")
        method, dot, name = key.strip().partition(".")
        if not sep or not dot or not method or not name:
            raise InputError(f"--param {text!r}: write METHOD.NAME=VALUE, e.g. percentile.percentile=99.99")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params.setdefault(method, {})[name] = value
    return params


def run(args: argparse.Namespace) -> int:
    from calib.calibrate import CalibrateConfig, calibrate
    from calib.pipeline import run_stage
    from calib.placement import Placement
    from calib.ranges import diff_ranges

    ws = workspace_of(args)
    parents: list[str] = []
    cs_dir = run_folder(ws, args.calibration_set, "calibset", parents)
    config = CalibrateConfig(
        calibration_set=str(Path(cs_dir).resolve()), methods=tuple(dict.fromkeys(args.method)),
        percentile=args.percentile, placement=Placement(args.placement), tensors=args.tensors, batch_size=args.batch_size,
        trt_version=args.trt_version, histogram=args.histogram, entropy_damp_zero_bin=not args.no_zero_bin_damping,
        params=method_params_of(args.param),
    )
    with cluster_of(args) as cluster:
        config = dataclasses.replace(config, cluster=cluster)
        run_id, cal = run_stage(ws, "calibrate", calibrate, config, parents=parents, label=args.label,
                                progress=ProgressBar("calibrate"))
    if args.json:
        outputs = {"record": cal.dir / "calibration.json"}
        for method in cal.methods:
            outputs[f"ranges_{method}"] = cal.ranges_path(method)
            outputs[f"cache_{method}"] = cal.cache_path(method)
        print_run_json(ws, run_id, outputs, cache_headers={m: cal.cache_header(m) for m in cal.methods})
        return 0
    st = cal.pass_record
    print(f"run {run_id}: {cal.tensor_count} tensors from {fmt.count(st['texts'])} texts ({fmt.count(st['tokens'])} "
          f"real tokens, {st['batches']} batches); statistics {fmt.seconds(cal.stats_seconds)}, "
          f"calibrators {fmt.seconds(cal.calibrators_seconds)}")
    rows = []
    for method in cal.methods:
        ranges = cal.ranges(method)
        amax = [a for a in ranges.amax.values() if a > 0]
        rows.append((method, len(ranges.usable()), fmt.number(min(amax)) if amax else "-",
                     fmt.number(sorted(amax)[len(amax) // 2]) if amax else "-", fmt.number(max(amax)) if amax else "-",
                     cal.cache_header(method), cal.cache_file(method)))
    print(format_table(("method", "tensors", "min amax", "median", "max amax", "cache header", "cache"), rows))
    nonfinite = cal.nonfinite_counts
    if nonfinite:
        print(f"non-finite values in {len(nonfinite)} tensors (excluded from ranges):")
        for name, counts in list(nonfinite.items())[:10]:
            print(f"  {name}: nan {counts['nan']}, +inf {counts['posinf']}, -inf {counts['neginf']}")
    if cal.zero_range_tensors:
        print(f"{len(cal.zero_range_tensors)} tensors have an all-zero range; left out of the TensorRT caches")
    if "entropy" in cal.methods and "minmax" in cal.methods and args.top > 0:
        print(f"\nentropy vs minmax (A = minmax, B = entropy), top {args.top} changes:")
        print(diff_table(diff_ranges(cal.ranges("minmax"), cal.ranges("entropy")), args.top))
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from calib.ranges import diff_ranges

    ws = workspace_of(args)
    a = load_ranges_ref(args.a, ws, args.method)
    b = load_ranges_ref(args.b, ws, args.method)
    if not a.amax and not b.amax:
        raise InputError("both range sets are empty")
    rows = diff_ranges(a, b)
    print(f"A: {a.method} ({len(a.amax)} tensors)   B: {b.method} ({len(b.amax)} tensors)")
    print(diff_table(rows, args.top))
    return 0
