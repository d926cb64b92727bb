"""Calibration cost: plain ORT inference (the floor) vs calib's statistics pass + four calibrators
vs ONNX Runtime's ``quantize_static`` calibration, on the same texts and model.

Every case runs in its own child process; the parent measures wall time (process start to exit,
imports and tokenisation included) and the child's peak RSS (``os.wait4`` rusage, ``ru_maxrss``);
"work s" is the child's own time for the case after the model and texts are loaded. A crash (non-zero exit, e.g. ORT Entropy's "supplied range
of [-inf, inf] is not finite", or the OOM killer) is recorded as a crash with its last error line.

Cases (the usual peer set-up: MiniLM demo model, batches of 16 padded to 128 tokens):
  ort-floor            plain ORT FP32 inference, batches padded to --max-length
  ort-floor-bucketed   plain ORT FP32 inference, calib's length-bucketed batches
  calib-padded         calib statistics pass (placement tensors) + entropy/minmax/percentile/mse,
                       batches padded to --max-length (same batches as ort-floor)
  calib                the same with calib's length-bucketed batches (what `calib calibrate` does)
  ort-minmax           onnxruntime.quantization.quantize_static, CalibrationMethod.MinMax
  ort-entropy          the same with CalibrationMethod.Entropy

Usage (the real measurement, on a quiet machine; writes a Markdown table to stdout):
  python benchmarks/bench_calibration.py --task rt-sentiment --workspace .cache/test-workspace --sizes 256 2048
Any model:
  python benchmarks/bench_calibration.py --onnx m.onnx --tokenizer tok/ --data texts.csv --sizes 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("ort-floor", "ort-floor-bucketed", "calib-padded", "calib", "ort-minmax", "ort-entropy")
METHODS = ("entropy", "minmax", "percentile", "mse")


# ------------------------------------------------------------------------------------------ child


def _texts(args: argparse.Namespace, n: int) -> tuple[list[str], str]:
    """n texts (the source cycled when it has fewer; the note says so)."""
    if args.task:
        from calib.data import load_rows, texts_of
        from calib.demo import load_demo_task

        demo = load_demo_task(args.task, args.workspace)
        texts: list[str] = []
        for split in ("calibration", "eval", "train"):
            try:
                spec = demo.data(split)
            except (KeyError, ValueError):  # a task without this split
                continue
            texts.extend(texts_of(load_rows(spec), spec)[0])
    else:
        import pandas as pd

        texts = [str(t) for t in pd.read_csv(args.data)[args.text_column].tolist()]
    if not texts:
        raise SystemExit("no texts found")
    note = "" if len(texts) >= n else f"{len(texts)} distinct texts cycled"
    return [texts[i % len(texts)] for i in range(n)], note


def _model(args: argparse.Namespace):
    from calib.model import load_model

    if args.task:
        from calib.demo import load_demo_task

        spec = load_demo_task(args.task, args.workspace).model
        return load_model(spec.onnx_path, spec.tokenizer_dir, max_length=args.max_length)
    return load_model(args.onnx, args.tokenizer, max_length=args.max_length)


def run_child(args: argparse.Namespace) -> dict:

    from calib.batching import encode, iter_batches
    from calib.model import load_tokenizer

    spec = _model(args)
    texts, note = _texts(args, args.n)
    encoded = encode(load_tokenizer(spec.tokenizer_dir), texts, max_length=spec.max_length)
    case = args.case
    start = time.perf_counter()
    info: dict = {"note": note}
    padded = {"order": "given", "pad_multiple": spec.max_length}
    if case in ("ort-floor", "ort-floor-bucketed"):
        from calib.engines.ort import OrtEngine, OrtSessionLoader

        engine = OrtEngine(OrtSessionLoader(spec.onnx_path, threads=args.threads))
        batching = padded if case == "ort-floor" else {"order": "length"}
        for batch in iter_batches(encoded, spec.input_dtypes, args.batch_size, **batching):
            engine.run(batch.feeds, [spec.logits_output])
    elif case in ("calib", "calib-padded"):
        from calib.methods import compute_ranges
        from calib.stats import StatsConfig, collect_statistics

        cfg = StatsConfig(batch_size=args.batch_size, threads=args.threads,
                          pad_multiple=spec.max_length if case == "calib-padded" else 8)
        stats = collect_statistics(spec, encoded, config=cfg,
                                   order="given" if case == "calib-padded" else "length")
        t_cal = time.perf_counter()
        amax = {m: compute_ranges(stats, m) for m in METHODS}
        info.update(tensors=len(stats), stats_s=round(stats.seconds, 2),
                    calibrators_s=round(time.perf_counter() - t_cal, 3),
                    entropy_le_minmax=all(amax["entropy"].amax[n] <= amax["minmax"].amax[n] for n in stats.names))
    elif case in ("ort-minmax", "ort-entropy"):
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, quantize_static

        batches = iter_batches(encoded, spec.input_dtypes, args.batch_size, **padded)

        class Reader(CalibrationDataReader):
            def get_next(self):
                batch = next(batches, None)
                return None if batch is None else dict(batch.feeds)

        method = CalibrationMethod.MinMax if case == "ort-minmax" else CalibrationMethod.Entropy
        with tempfile.TemporaryDirectory() as tmp:
            quantize_static(str(spec.onnx_path), str(Path(tmp) / "q.onnx"), Reader(), calibrate_method=method)
    else:
        raise SystemExit(f"unknown case {case}")
    info["inner_s"] = round(time.perf_counter() - start, 2)
    info["real_tokens"] = int(encoded.lengths.sum())
    return info


# ----------------------------------------------------------------------------------------- parent


def run_case(args: argparse.Namespace, case: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--n", str(n), "--max-length", str(args.max_length),
           "--batch-size", str(args.batch_size)]
    for flag in ("task", "workspace", "onnx", "tokenizer", "data", "text_column", "threads"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        cap = int(args.mem_cap_gb * 2**30)

        def limit_memory() -> None:  # ORT's own calibrators can exceed the machine's memory; cap the child
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, preexec_fn=limit_memory)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    row = {"case": case, "texts": n, "wall_s": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),
           "exit": proc.returncode}
    if proc.returncode == 0:
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        row.update(json.loads(lines[-1]) if lines else {})
    else:
        last = [line for line in stderr.strip().splitlines() if line.strip()]
        row["crash"] = (last[-1] if last else f"killed by signal {-proc.returncode}")[:160]
        if any(word in stderr for word in ("MemoryError", "bad_alloc", "Failed to allocate", "Cannot allocate")):
            row["crash"] = f"out of memory at the {args.mem_cap_gb:g} GB cap: " + row["crash"]
    return row


def markdown(rows: list[dict]) -> str:
    floors = {r["texts"]: r for r in rows if r["case"] == "ort-floor" and r["exit"] == 0}
    lines = ["| case | texts | wall s | × floor | work s | work × floor | peak RSS GB | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        floor = floors.get(r["texts"]) if r["exit"] == 0 else None
        ratio = f"{r['wall_s'] / floor['wall_s']:.2f}" if floor else "-"
        inner = r.get("inner_s")
        inner_ratio = f"{inner / floor['inner_s']:.2f}" if floor and inner and floor.get("inner_s") else "-"
        notes = r.get("crash") and f"CRASH: {r['crash']}" or ", ".join(
            f"{k} {v}" for k, v in r.items() if k in ("tensors", "stats_s", "calibrators_s",
                                                      "entropy_le_minmax", "note") and v != "")
        lines.append(f"| {r['case']} | {r['texts']} | {r['wall_s']:.2f} | {ratio} | {inner if inner is not None else '-'} "
                     f"| {inner_ratio} | {r['peak_rss_gb']:.3f} | {notes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", help="demo task (bbc-topic, rt-sentiment); needs --workspace with the demo prepared")
    p.add_argument("--workspace", help="workspace holding demo/ (default $CALIB_WORKSPACE)")
    p.add_argument("--onnx", help="ONNX model (instead of --task)")
    p.add_argument("--tokenizer", help="tokenizer directory (with --onnx)")
    p.add_argument("--data", help="CSV with texts (with --onnx)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 2048], help="numbers of calibration texts")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, help="ORT intra-op threads (default: all cores / $CALIB_THREADS)")
    p.add_argument("--mem-cap-gb", type=float, default=14.0,
                   help="address-space cap per case (GB); a case that needs more is recorded as a crash")
    p.add_argument("--json", type=Path, help="also write the raw rows as JSON")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.case = args.child
        print(json.dumps(run_child(args)))
        return 0
    if not args.task and not (args.onnx and args.tokenizer and args.data):
        p.error("give --task (demo) or --onnx, --tokenizer and --data")
    rows = []
    for n in args.sizes:
        for case in args.cases:
            row = run_case(args, case, n)
            print(f"{case:20s} {n:6d} texts  {row['wall_s']:8.2f} s  {row['peak_rss_gb']:.3f} GB"
                  + (f"  CRASH {row['crash']}" if "crash" in row else ""), file=sys.stderr, flush=True)
            rows.append(row)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
