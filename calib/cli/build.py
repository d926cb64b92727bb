"""``calib build``: ranges -> INT8 engine folder; ``calib bench``: FP32 vs INT8 latency table.

With ``--backend tensorrt`` on a machine without TensorRT (or without a GPU), ``calib build`` says
so plainly, builds the portable part instead (Q/DQ model, calibration cache and ``trtexec.sh`` with
the exact commands for the GPU machine, registered as a normal run) and exits with status 3, so a
script that asked for a TensorRT engine notices it did not get one. Any other registered backend
(``calib.engines.REGISTRY``) that is unavailable here is handled the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from calib.cli.common import (
    EXIT_BACKEND_UNAVAILABLE,
    ProgressBar,
    add_input_args,
    add_node_pattern_args,
    add_placement_arg,
    add_ranges_args,
    format_table,
    inputs_from_args,
    json_arg,
    print_run_json,
    ranges_from_args,
    run_folder,
    workspace_of,
)

EXIT_NO_TENSORRT = EXIT_BACKEND_UNAVAILABLE

_EXAMPLES = """examples:
  calib build --calibration cal-20250101-abcd --method entropy --placement tensorrt
  calib build --model model.onnx --ranges ranges/entropy.json --exclude 're:layer\\.0/.*output/dense' --backend ort
  calib build --calibration cal-... --placement all          # every op: shows why naive INT8 fails
  calib build --calibration cal-... --exclude-from sens-...   # keep a sensitivity run's recommendation in float
  calib build --calibration cal-... --backend tensorrt        # TensorRT + GPU, else trtexec.sh
  calib bench --engine eng-20250101-abcd --demo bbc-topic --batch-size 1 8 16
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from calib.engines import PORTABLE_BACKEND, REGISTRY, backend_names
    from calib.methods import DEFAULT_BUILD_METHOD
    from calib.trtcache import DEFAULT_TRT_VERSION

    p = subparsers.add_parser(
        "build", help="quantize the model with calibrated ranges into an INT8 engine (stage build)",
        description="Insert Q/DQ with ONNX Runtime's quantizer fed our ranges (symmetric INT8, per-channel "
                    "weights), write the INT8 ONNX model, a TensorRT calibration cache and trtexec commands; "
                    "with --backend tensorrt also build a TensorRT engine.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_ranges_args(p, default_method=DEFAULT_BUILD_METHOD,
                    method_help=f"range set of the calibration run (default {DEFAULT_BUILD_METHOD})")
    p.add_argument("--model", help="FP32 ONNX model (default: the calibration set's model)")
    add_placement_arg(p, help="tensorrt: inputs of MatMul/Gemm/Conv only (default); all: every supported op")
    add_node_pattern_args(p, include="quantize only matching nodes")
    p.add_argument("--exclude-from", metavar="SENSITIVITY_RUN",
                   help="also keep in float the exclusions a sensitivity run recommends (calib sensitivity)")
    p.add_argument("--exclude-op", nargs="+", default=[], metavar="OP", help="op types to keep in float")
    p.add_argument("--op", nargs="+", default=[], metavar="OP", help="op types to quantize (replaces the preset's)")
    p.add_argument("--per-tensor-weights", action="store_true", help="one weight scale per tensor (default per channel)")
    p.add_argument("--smooth", nargs="?", const="auto", default="", metavar="ALPHA|auto",
                   help="migrate activation outliers into the weights before Q/DQ (ONNX rewrite, FP32 outputs "
                        "unchanged): an alpha in (0, 1), or auto (alpha per tensor by simulated INT8 error; the "
                        "default when the flag has no value); needs --calibration")
    p.add_argument("--smooth-attention", action="store_true",
                   help="with --smooth: also fold per-channel scales into attention's Q/K/V projections (Q/K "
                        "equalized for the score MatMul, the context migrated through V: no op added; checked "
                        "to leave the FP32 outputs unchanged)")
    p.add_argument("--bias-correction", action="store_true",
                   help="fold the expected output shift of INT8 weights into each quantized MatMul's bias "
                        "(calibration-set input means); needs --calibration")
    p.add_argument("--backend", choices=backend_names(), default=PORTABLE_BACKEND,
                   help="; ".join(f"{n}: {b.label}" for n, b in REGISTRY.items()) + " (default ort)")
    p.add_argument("--profile", nargs=6, type=int, metavar=("MINB", "OPTB", "MAXB", "MINT", "OPTT", "MAXT"),
                   help="optimisation profile (default: the calibration set's)")
    p.add_argument("--calibration-set", default="", help="calibration set run/folder for the profile")
    p.add_argument("--trt-version", default=DEFAULT_TRT_VERSION, help="TensorRT 8.6-10.x version for the cache header")
    # calib.build's modes and BuildConfig's default, spelled out: importing calib.build costs ~1.5 s per start
    # (tests/test_cli.py checks both)
    p.add_argument("--trt-mode", choices=("auto", "explicit", "implicit"), default="auto",
                   help="TensorRT build: explicit (Q/DQ), implicit (FP32 + cache; <= 10.x); auto picks by version")
    p.add_argument("--label", default="", help="label for the run in the registry")
    json_arg(p)
    p.set_defaults(handler=run_build)

    b = subparsers.add_parser(
        "bench", help="latency p50/p95 and throughput of FP32 vs INT8 at several batch sizes",
        description="Run an engine folder's FP32 and INT8 engines over an evaluation split's length mix.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--engine", required=True, metavar="RUN", help="engine run (calib build): id, unique prefix, "
                   "latest, latest:LABEL or folder")
    add_input_args(b, demo="use a demo task's eval split and tokenizer", model=None,
                   split="split of a multi-split dataset (default eval)", pairs=False, hygiene=False)
    b.add_argument("--limit", "--max-texts", dest="limit", type=int, default=256,
                   help="texts to run, a spread of the split's lengths (0 = all; default 256; --max-texts: the 0.1 name)")
    b.add_argument("--batch-size", nargs="+", type=int, default=[1, 8, 16])
    b.add_argument("--repeats", type=int, default=2)
    b.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: $CALIB_THREADS or all cores)")
    b.add_argument("--label", default="")
    json_arg(b)
    b.set_defaults(handler=run_bench)


def _config(args: argparse.Namespace, ws) -> tuple:
    from calib.build import BuildConfig
    from calib.errors import InputError
    from calib.placement import Placement

    parents: list[str] = []
    ranges = ranges_from_args(ws, args, parents)
    model = args.model or ""
    calibration_set = ""
    if ranges.from_calibration and not model:
        from calib.calibrate import Calibration

        model = str(Calibration.load(ranges.source).model_path())
    if args.calibration_set:
        calibration_set = str(Path(run_folder(ws, args.calibration_set, "calibset")).resolve())
    if not model:
        raise InputError("give --model with --ranges (the FP32 ONNX model the ranges were calibrated on)")
    exclude = list(args.exclude)
    if args.exclude_from:
        from calib.placement import exact_pattern
        from calib.sensitivity import SensitivityResult

        sens_dir = run_folder(ws, args.exclude_from, "sensitivity", parents)
        exclude += [exact_pattern(n) for n in SensitivityResult.load(sens_dir).exclude_nodes]
    config = BuildConfig(
        model=str(Path(model).resolve()),
        ranges=ranges,
        placement=Placement(args.placement, include_nodes=tuple(args.include), exclude_nodes=tuple(exclude),
                            include_op_types=tuple(args.op), exclude_op_types=tuple(args.exclude_op)),
        per_channel=not args.per_tensor_weights, backend=args.backend,
        calibration_set=calibration_set, profile=tuple(args.profile or ()), trt_version=args.trt_version,
        trt_mode=args.trt_mode, timing_cache=str(ws.cache_dir / "tensorrt-timing.cache"),
        smooth=args.smooth, smooth_attention=args.smooth_attention, bias_correction=args.bias_correction,
    )
    return config, parents


def run_build(args: argparse.Namespace) -> int:
    from calib.build import CACHE_FILE, ENGINE_FILE, PLAN_FILE, SCRIPT_FILE, build
    from calib.engines import DEPLOYMENT_TARGET, PORTABLE_BACKEND, get_backend
    from calib.pipeline import run_stage

    ws = workspace_of(args)
    config, parents = _config(args, ws)
    missing, backend = "", get_backend(config.backend)
    if backend.name != PORTABLE_BACKEND:
        status = backend.status()
        if not status.available:  # build the portable part, say so, exit 3
            missing = status.reason
            config = dataclasses.replace(config, backend=PORTABLE_BACKEND)
    run_id, artifact = run_stage(ws, "build", build, config, parents=parents, label=args.label,
                                 progress=ProgressBar("build"))
    if args.json:
        outputs = {"qdq_model": artifact.qdq_path, "fp32_model": artifact.model_path,
                   "trtexec_script": artifact.dir / SCRIPT_FILE, "record": artifact.dir / ENGINE_FILE}
        for key, name in (("calibration_cache", CACHE_FILE), ("tensorrt_plan", PLAN_FILE)):
            if (artifact.dir / name).is_file():
                outputs[key] = artifact.dir / name
        if artifact.built_engine_path is not None:  # whichever backend built it (the plan too, for TensorRT)
            outputs["engine_file"] = artifact.built_engine_path
        print_run_json(ws, run_id, outputs, tensorrt_unavailable=(missing if backend.name == DEPLOYMENT_TARGET else "") or None,
                       backend_unavailable={"backend": backend.name, "reason": missing} if missing else None)
    else:
        print_build(run_id, artifact)
    if missing:
        print(f"\n{backend.title} is not usable here: {missing}.", file=sys.stderr)
        print(f"No {backend.title} engine was built. On the GPU machine run `bash {artifact.dir / SCRIPT_FILE} 11` "
              f"(TensorRT 11) or `... 10` (TensorRT 8.6-10.x); the TensorRT 11 command is:\n"
              f"{artifact.commands['trt11']}", file=sys.stderr)
        return EXIT_NO_TENSORRT
    return 0


def print_build(run_id: str, artifact) -> None:
    from calib.build import SCRIPT_FILE

    excluded, unknown = artifact.excluded_nodes, artifact.unknown_tensors
    print(f"run {run_id}: {len(artifact.quantized_nodes)} nodes quantized ({(artifact.placement_record or {}).get('preset')} "
          f"placement, {artifact.method} ranges), {len(excluded)} left in float, "
          f"{len(artifact.skipped_tensors)} tensors without a usable range")
    for name, why in list(excluded.items())[:15]:
        print(f"  float: {name}: {why}")
    if len(excluded) > 15:
        print(f"  … {len(excluded) - 15} more in engine.json")
    if unknown:
        print(f"warning: {len(unknown)} ranged tensors are not in the model: {', '.join(unknown[:5])}")
    if artifact.smoothing_summary:
        print(artifact.smoothing_summary + (f"; FP32 outputs unchanged (max |delta| {artifact.smoothing_output_delta:.2e})"
                                            if artifact.smoothing_migrated else ""))
    if artifact.bias_correction_record:
        print(f"bias correction: {artifact.bias_corrected_nodes} MatMul biases corrected")
    print(f"INT8 model: {artifact.qdq_path}")
    print(f"TensorRT commands: {artifact.dir / SCRIPT_FILE}")


def run_bench(args: argparse.Namespace) -> int:
    from calib import formatting as fmt
    from calib.bench import BENCH_FILE, BenchConfig, benchmark
    from calib.pipeline import run_stage

    ws = workspace_of(args)
    parents: list[str] = []
    engine_dir = str(Path(run_folder(ws, args.engine, "build", parents)).resolve())
    from calib.data import EVAL_SPLIT_NAMES
    from calib.inputs import DEMO_SPLITS

    model, data = inputs_from_args(args, ws.root, default_split=DEMO_SPLITS["eval"], need=("tokenizer", "source"))
    # no --model: the FP32 baseline is the model the engine was built from, whichever model a demo names
    config = BenchConfig(engine=engine_dir, model=dataclasses.replace(model, model=""),
                         data=dataclasses.replace(data, split=data.split or EVAL_SPLIT_NAMES[0]), limit=args.limit,
                         batch_sizes=tuple(args.batch_size), repeats=args.repeats, threads=args.threads)
    run_id, result = run_stage(ws, "bench", benchmark, config, parents=parents, label=args.label,
                               progress=ProgressBar("bench"))
    if args.json:
        print_run_json(ws, run_id, {"record": result.dir / BENCH_FILE}, rows=result.rows, sizes_mb=result.sizes_mb)
        return 0
    rows = [(m.kind, m.batch_size, m.p50_ms, m.p95_ms, m.texts_per_s, m.peak_rss_mb) for m in result.measurements]
    print(f"run {run_id}: {fmt.count(result.texts)} texts, lengths p50 {result.lengths['p50']:.0f} "
          f"p95 {result.lengths['p95']:.0f} tokens")
    print(format_table(("engine", "batch", "p50 ms", "p95 ms", "texts/s", "peak MB"), rows))
    sizes = {k: fmt.size(v * 2**20) for k, v in result.sizes_mb.items()}
    print(f"model size: FP32 {sizes['fp32_model_mb']}, Q/DQ file {sizes['qdq_model_mb']}, "
          f"INT8 weights {sizes['int8_weights_mb']}")
    for b, s in result.speedups().items():
        print(f"INT8 / FP32 throughput at batch {b}: {fmt.factor(s)}")
    return 0
