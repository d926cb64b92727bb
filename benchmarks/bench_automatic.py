"""Issue 17's targets in one run: the automatic INT8 result vs ONNX Runtime's quantize_static, and an ablation.

Per task (the demo tasks, plus any ``--extra`` task written by ``benchmarks/third_task.py``):

1. one calibration set (128 texts, strategy ``match`` against the eval split, stratified by label)
   and ONE ``calib calibrate`` run (placement ``tensorrt-residual``, a superset of ``tensorrt``'s
   tensors; every method including ``auto``);
2. the ablation, every row a ``calib build`` (placement ``tensorrt``: all 49 MatMuls INT8) scored on
   the **full** eval split: each calibrator alone; + auto ranges; + outlier migration (alpha 0.5,
   and auto) with auto ranges; + bias correction;
3. the automatic result: ``calib sensitivity --start-from`` the ``--start`` build (default: minmax
   ranges + migration auto; a fixed recipe, not picked per task by its score) with the budget drop <= 0.5
   points, agreement >= 0.99, cosine >= 0.99, then ``calib build ... --exclude-from`` and the
   same scoring ("+ fallback");
4. ONNX Runtime ``quantize_static`` Percentile (99.999) and MinMax with MatMul-input placement
   (``op_types_to_quantize=["MatMul"]``, QDQ, per-channel symmetric INT8 weights, symmetric INT8
   activations as TensorRT runs them) calibrated on the same 128 texts (batches of 16 padded to the
   longest calibration batch: ORT's histogram calibrators need one shape), each in a child process
   under an address-space cap (wall time and peak RSS recorded), scored the same way.

Scoring: FP32 outputs once per task, then every INT8 model over the same eval texts with the
evaluation core (:mod:`calib.evaluation`, what ``calib validate`` computes); speed is INT8 / FP32
throughput at batch 16 on ``--speed-texts`` eval texts (:class:`Timer`, :func:`calib.bench.throughput`;
with CALIB_THREADS=1 per CPU-second, which the other processes of a shared machine hardly disturb).

Usage (the figures in BENCHMARKS.md):
  CALIB_THREADS=1 python benchmarks/bench_automatic.py --workspace .cache/test-workspace --tasks bbc-topic --json a.json
  CALIB_THREADS=1 python benchmarks/bench_automatic.py --workspace .cache/test-workspace --tasks rt-sentiment --json b.json
  CALIB_THREADS=1 python benchmarks/bench_automatic.py --workspace .cache/test-workspace --tasks \
      --extra .cache/test-workspace/extra/health-tweets/task.json --peers --json c.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_migration import calib, parse_variant  # the sibling benchmark script: one CLI runner

TASKS = ("bbc-topic", "rt-sentiment")
ABLATION = ("entropy", "minmax", "percentile", "mse", "auto", "smooth0.5-auto", "smoothauto-auto",
            "smoothauto-auto-bc", "smoothauto-minmax")
# The automatic recipe's start: outlier migration (alpha per tensor) on minmax ranges, the best
# all-INT8 start in the ablation of BENCHMARKS section 7 on rt-sentiment (the lower-margin task);
# `--start smoothauto-auto-bc` reproduces the earlier recipe (every lever on).
START = "smoothauto-minmax"
PEERS = ("percentile", "minmax")
PEER_ACTIVATIONS = ("int8-symmetric", "ort-default")  # as TensorRT runs them; ONNX Runtime's own default (uint8, asymmetric)
BUDGET = ("--max-drop", "0.5", "--min-agreement", "0.99", "--min-embedding-cosine", "0.99")


class Task:
    """CLI arguments naming a task's model and data, for each command."""

    def __init__(self, name: str, workspace: str, extra: Path | None = None) -> None:
        self.name = name
        if extra is None:
            from calib.demo import load_demo_task

            demo = load_demo_task(name, workspace)
            self.model, self.tokenizer = str(demo.model.onnx_path), str(demo.model.tokenizer_dir)
            self.max_length, self.labels = demo.max_length, tuple(demo.labels)
            self.eval_spec = demo.data("eval")
            self.args = ["--demo", name]
            self.assemble = ["--demo", name]
            self.bench = ["--demo", name]
        else:
            card = json.loads(extra.read_text())
            from calib.data import DataSpec

            self.model, self.tokenizer, data = card["model"], card["tokenizer"], card["data"]
            self.max_length, self.labels = int(card["max_length"]), tuple(card["labels"])
            self.eval_spec = DataSpec(data, "text", "label", None, "eval", None)
            common = ["--model", self.model, "--tokenizer", self.tokenizer, "--max-length", str(self.max_length)]
            self.args = [*common, "--data", data, "--split", "eval", "--labels", ",".join(self.labels)]
            self.assemble = [*common, "--data", data, "--split", "calibration", "--target", f"dataset:{data}:eval"]
            self.bench = [*common, "--data", data, "--split", "eval"]


class Timer:
    """INT8 / FP32 throughput at batch 16 on ``--speed-texts`` eval texts, FP32 timed right before each
    INT8 model (a paired ratio). With one ONNX Runtime thread (CALIB_THREADS=1) the ratio is of texts
    per CPU-second of the process (other processes on the shared machine hardly move it); else of the
    fastest pass's wall time."""

    def __init__(self, task: Task, args: argparse.Namespace) -> None:
        import numpy as np

        from calib.batching import iter_batches
        from calib.engines.ort import OrtEngine, OrtSessionLoader, default_threads
        from calib.evaluation import load_eval_data
        from calib.model import load_model

        self.spec = load_model(task.model, task.tokenizer, max_length=task.max_length, labels=task.labels)
        self.data = load_eval_data(task.eval_spec, self.spec)
        n = len(self.data)
        rows = np.unique(np.linspace(0, n - 1, min(args.speed_texts, n)).astype(int))
        self.batches = list(iter_batches(self.data.encoded.subset(rows), self.spec.input_dtypes, 16))
        self.repeats = args.speed_repeats
        self.key = "cpu_texts_per_s" if default_threads() == 1 else "best_texts_per_s"
        self.fp32_engine = OrtEngine(OrtSessionLoader(self.spec.onnx_path))

    def __call__(self, engine) -> dict:
        from calib.bench import throughput

        fp32 = throughput(self.fp32_engine, self.batches, self.repeats)[self.key]
        int8 = throughput(engine, self.batches, self.repeats)[self.key]
        return {"int8_texts_per_s": round(int8, 2), "fp32_texts_per_s": round(fp32, 2),
                "speedup_b16": round(int8 / fp32, 3), "speed_measure": self.key}


class Scorer:
    """FP32 outputs once; each INT8 model scored on the same eval texts (and timed by a :class:`Timer`)."""

    def __init__(self, task: Task, args: argparse.Namespace) -> None:
        import onnx

        from calib.evaluation import run_engine

        self.timer = Timer(task, args)
        self.spec, self.data = self.timer.spec, self.timer.data
        self.fp32 = run_engine(self.timer.fp32_engine, self.data.encoded, self.spec.input_dtypes, self.spec.roles,
                               batch_size=16)
        self.matmuls = {n.name for n in onnx.load(str(self.spec.onnx_path), load_external_data=False).graph.node
                        if n.op_type in ("MatMul", "Gemm")}

    def __call__(self, qdq_path: Path) -> dict:
        import onnx

        from calib.engines.ort import OrtEngine, OrtSessionLoader
        from calib.evaluation import compare, run_engine

        engine = OrtEngine(OrtSessionLoader(qdq_path))
        int8 = run_engine(engine, self.data.encoded, self.spec.input_dtypes, self.spec.roles, batch_size=16)
        m = compare(self.fp32, int8, self.data, n_resamples=0)
        model = onnx.load(str(qdq_path), load_external_data=False)
        producer = {o: n for n in model.graph.node for o in n.output}
        int8_matmuls = {n.name for n in model.graph.node if n.name in self.matmuls
                        and any(getattr(producer.get(i), "op_type", "") == "DequantizeLinear" for i in n.input)}
        return {"rows": m.n, **m.headline(), "float_matmuls": len(self.matmuls - int8_matmuls),
                "matmuls": len(self.matmuls), **self.timer(engine)}


def rescore_speed(ws: str, path: Path, args: argparse.Namespace) -> None:
    """Time every row of an earlier result again (e.g. with one thread, by CPU time); rows keep their accuracy."""
    from calib.engines.ort import OrtEngine, OrtSessionLoader

    out = json.loads(path.read_text())
    timers: dict[str, Timer] = {}
    for row in out["rows"]:
        qdq = (Path(ws) / "runs" / row["build_run"] / "model.qdq.onnx" if row.get("build_run")
               else path.with_suffix(f".{row['task']}.ort-{row['variant'].split()[-1]}.onnx"))
        if "top1_agreement" not in row or not qdq.is_file():
            continue
        if row["task"] not in timers:
            extra = next((Path(p) for p in args.extra if json.loads(Path(p).read_text())["task"] == row["task"]), None)
            timers[row["task"]] = Timer(Task(row["task"], ws, extra), args)
        row.update(timers[row["task"]](OrtEngine(OrtSessionLoader(qdq))))
        print(f"[{row['task']}] {row['variant']}: x{row['speedup_b16']}", file=sys.stderr)
    out["markdown"] = markdown(out["rows"])
    path.write_text(json.dumps(out, indent=1))
    print(out["markdown"])


def _engine_dir(built: dict) -> Path:
    return Path(built["outputs"]["record"]).parent


def run_task(ws: str, task: Task, args: argparse.Namespace, out: dict) -> None:
    rows, notes = out["rows"], out["notes"]
    t0 = time.monotonic()
    if args.reuse:  # an earlier run's calibration set and calibration (CALIBSET_RUN CALIBRATE_RUN)
        cs, cal = args.reuse
    else:
        cs = calib(ws, "assemble", *task.assemble, "--size", str(args.size), "--strategy", "match", "--stratify",
                   "--label", f"bench-automatic {task.name}")["run"]
        cal = calib(ws, "calibrate", "--calibration-set", cs, "--placement", "tensorrt-residual", "--method",
                    "entropy", "minmax", "percentile", "mse", "auto", "--label", f"bench-automatic {task.name}")["run"]
    out["calibrations"][task.name] = {"calibration_set": cs, "calibrate": cal, "seconds": round(time.monotonic() - t0, 1)}
    scorer = Scorer(task, args)
    print(f"[{task.name}] calibration {cal}", file=sys.stderr)
    builds: dict[str, str] = {}

    def record(kind: str, name: str, qdq: Path, extra: dict) -> None:
        started = time.monotonic()
        row = {"task": task.name, "kind": kind, "variant": name, **scorer(qdq), **extra,
               "score_seconds": round(time.monotonic() - started, 1)}
        rows.append(row)
        print(f"[{task.name}] {name}: drop {row.get('accuracy_drop_points')} agreement {row.get('top1_agreement')} "
              f"cosine {row.get('embedding_cosine')} float MatMuls {row['float_matmuls']} x{row['speedup_b16']}",
              file=sys.stderr)
        Path(args.json).write_text(json.dumps({**out, "partial": True}, indent=1))

    def build_variant(variant: str) -> None:
        o = parse_variant(variant)
        started = time.monotonic()
        b = ["build", "--calibration", cal, "--method", o["method"], "--placement", o["placement"],
             "--label", f"bench-automatic {task.name} {variant}"]
        b += ["--smooth", o["smooth"]] if o["smooth"] else []
        b += ["--bias-correction"] if o["bc"] else []
        built = calib(ws, *b)
        builds[variant] = built["run"]
        record("ablation", variant, _engine_dir(built) / "model.qdq.onnx",
               {"build_run": built["run"], "build_seconds": round(time.monotonic() - started, 1)})

    # the automatic result and the peers first (the slow machine may not finish the whole ablation)
    if args.start in args.variants:
        build_variant(args.start)
    if args.fallback and args.start in builds:
        fallback(ws, task, args, cal, builds[args.start], record)
    if args.peers:
        peers(ws, task, args, cs, record, out["rows"], notes)
    for variant in args.variants:
        if variant != args.start:
            build_variant(variant)


def fallback(ws: str, task: Task, args: argparse.Namespace, cal: str, start_build: str, record) -> None:
    """calib sensitivity --start-from the args.start build, then calib build --exclude-from; scored as a row."""
    started = time.monotonic()
    sens = calib(ws, "sensitivity", *task.args, "--start-from", start_build, *BUDGET, "--granularity",
                 args.granularity, "--limit", str(args.search_limit), "--label", f"bench-automatic {task.name}",
                 *(["--cluster", args.cluster] if args.cluster else []))
    sens_data = json.loads((Path(sens["dir"]) / "sensitivity.json").read_text())
    o = parse_variant(args.start)
    b = ["build", "--calibration", cal, "--method", o["method"], "--placement", o["placement"],
         "--exclude-from", sens["run"], "--label", f"bench-automatic {task.name} automatic"]
    b += ["--smooth", o["smooth"]] if o["smooth"] else []
    b += ["--bias-correction"] if o["bc"] else []
    built = calib(ws, *b)
    rec = sens_data["recommended"]
    record("automatic", f"{args.start} + fallback", _engine_dir(built) / "model.qdq.onnx", {
        "build_run": built["run"], "sensitivity_run": sens["run"], "search_found": rec["passes"],
        "search_seconds": sens_data.get("search_seconds"), "search_cpu_seconds": sens_data.get("cpu_seconds"),
        "sensitivity_seconds": sens_data.get("seconds"), "ranking": sens_data.get("ranking_method"),
        "ranking_check": sens_data.get("ranking_check"), "searches": sens_data.get("searches"),
        "evaluations": sens_data.get("evaluations_used"), "speed_curve": sens_data.get("speed_curve"),
        "search_texts": sens_data["baseline"].get("rows"), "cluster": sens_data.get("cluster"), "seconds": round(time.monotonic() - started, 1)})


def peers(ws: str, task: Task, args: argparse.Namespace, cs: str, record, rows: list, notes: list) -> None:
    encoded_path = Path(args.json).with_suffix(f".{task.name}.calib.npz")
    _save_calibration_feeds(ws, cs, encoded_path)
    suffix = "" if args.peer_activations == "int8-symmetric" else " (uint8 asymmetric activations)"
    for method in args.peer_methods:
        q = Path(args.json).with_suffix(f".{task.name}.ort-{method}.onnx")
        peer = _run_peer(task, method, encoded_path, q, args.peer_mem_gb, args.peer_activations)
        if peer.get("error"):
            notes.append(f"{task.name}: ORT quantize_static {method}{suffix} failed: {peer['error']}")
            rows.append({"task": task.name, "kind": "peer", "variant": f"ORT {method}{suffix}", **peer})
            continue
        record("peer", f"ORT quantize_static {method}{suffix}", q, peer)


def _save_calibration_feeds(ws: str, calibset_run: str, path: Path) -> None:
    """The calibration set's 128 texts as length-bucketed batches of 16 (what every side calibrates on)."""
    from calib.calibset import CalibrationSet
    from calib.workspace import Workspace

    cset = CalibrationSet.load(Workspace(ws).resolve_run(calibset_run, "calibset"))
    cset.export_npz(path, batch_size=16)


def _run_peer(task: Task, method: str, feeds: Path, out: Path, mem_gb: float, activations: str) -> dict:
    cmd = [sys.executable, __file__, "--peer-child", method, "--model", task.model, "--feeds", str(feeds),
           "--out", str(out), "--peer-mem-gb", str(mem_gb), "--peer-activations", activations]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    info = {"wall_seconds": round(time.monotonic() - started, 1)}
    try:
        info.update(json.loads(done.stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        info["error"] = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:300]
    return info


def peer_child(method: str, model: str, feeds: Path, out: Path, mem_gb: float, activations: str) -> int:
    """quantize_static in this process under an address-space cap; prints one JSON line."""
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    cap = int(mem_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    with np.load(feeds) as npz:  # calib.calibset.CalibrationSet.export_npz layout
        names = [str(n) for n in npz["input_names"]]
        items = [{name: npz[f"batch_{i:04d}/{name}"] for name in names} for i in range(int(npz["num_batches"]))]
    # ORT's histogram calibrators stack every batch's outputs: all batches need one shape, so each is
    # padded (id 0, attention mask 0) to the longest calibration batch, as its users feed it
    width = max(v.shape[1] for item in items for v in item.values())
    items = [{k: np.pad(v, ((0, 0), (0, width - v.shape[1]))) for k, v in item.items()} for item in items]
    it = iter(items)

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(it, None)

    calibrate_method = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}[method]
    started = time.monotonic()
    try:
        symmetric = activations == "int8-symmetric"
        quantize_static(model, str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        per_channel=True, activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=calibrate_method,
                        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                       "CalibPercentile": 99.999})
    except MemoryError:
        print(json.dumps({"error": f"out of memory under the {mem_gb:g} GB cap"}))
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    print(json.dumps({"quantize_seconds": round(time.monotonic() - started, 1), "peak_rss_gb": round(peak, 2),
                      "calibration_batches": len(items), "padded_to": width}))
    return 0


def markdown(rows: list[dict]) -> str:
    def num(v, fmt):
        return "–" if v is None else format(v, fmt)

    lines = ["| task | row | drop pts | top-1 agreement | emb. cosine | float MatMuls | INT8 ÷ FP32 (b16) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "top1_agreement" not in r:
            lines.append(f"| {r['task']} | {r['variant']} | failed: {r.get('error')} | | | | |")
            continue
        lines.append(f"| {r['task']} | {r['variant']} | {num(r.get('accuracy_drop_points'), '+.2f')} "
                     f"| {num(r.get('top1_agreement'), '.4f')} | {num(r.get('embedding_cosine'), '.4f')} "
                     f"| {r['float_matmuls']} of {r['matmuls']} | {num(r.get('speedup_b16'), '.2f')}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", help="workspace with prepared demo assets (calib demo prepare)")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=TASKS)
    parser.add_argument("--extra", nargs="*", type=Path, default=[], help="task.json files of extra tasks (third_task.py)")
    parser.add_argument("--variants", nargs="*", default=list(ABLATION))
    parser.add_argument("--start", default=START, help=f"the build the fallback search starts from (default {START})")
    parser.add_argument("--no-fallback", dest="fallback", action="store_false")
    parser.add_argument("--granularity", default="node", help="sensitivity --granularity for the fallback")
    parser.add_argument("--search-limit", type=int, default=0, help="sensitivity --limit (default 0: the eval split)")
    parser.add_argument("--cluster", help="calib sensitivity --cluster for the fallback search (e.g. local:2)")
    parser.add_argument("--peers", action="store_true", help="also run ONNX Runtime quantize_static peers")
    parser.add_argument("--peer-mem-gb", type=float, default=15.0)
    parser.add_argument("--peer-methods", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--peer-activations", default=PEER_ACTIVATIONS[0], choices=PEER_ACTIVATIONS)
    parser.add_argument("--size", type=int, default=128, help="calibration texts (default 128)")
    parser.add_argument("--speed-texts", type=int, default=48)
    parser.add_argument("--speed-repeats", type=int, default=3)
    parser.add_argument("--reuse", nargs=2, metavar=("CALIBSET_RUN", "CALIBRATE_RUN"),
                        help="reuse an earlier calibration set and calibration (one task only)")
    parser.add_argument("--rescore", type=Path, help="only time every row of this earlier result again")
    parser.add_argument("--peer-child", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--feeds", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_child:
        return peer_child(args.peer_child, args.model, args.feeds, args.out, args.peer_mem_gb, args.peer_activations)
    if args.rescore and args.workspace:
        rescore_speed(args.workspace, args.rescore, args)
        return 0
    if not args.workspace or not args.json:
        parser.error("--workspace and --json are required")
    for v in args.variants:
        parse_variant(v)
    out: dict = {"benchmark": "bench_automatic", "rows": [], "notes": [], "calibrations": {},
                 "settings": {"size": args.size, "speed_texts": args.speed_texts, "search_limit": args.search_limit,
                              "threads": os.environ.get("CALIB_THREADS"), "granularity": args.granularity}}
    started = time.monotonic()
    tasks = [Task(t, args.workspace) for t in args.tasks]
    tasks += [Task(json.loads(p.read_text())["task"], args.workspace, p) for p in args.extra]
    for task in tasks:
        run_task(args.workspace, task, args, out)
    out["markdown"] = markdown(out["rows"])
    out["seconds"] = round(time.monotonic() - started, 1)
    args.json.write_text(json.dumps({**out, "partial": False}, indent=1))
    print(out["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
