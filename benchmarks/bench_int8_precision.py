"""What ONNX Runtime's fast x64 INT8 matmul costs in accuracy, and what calib's exact one costs in speed.

ORT's default u8s8 matrix multiply sums pairs of 8-bit products in 16 bits; on x64 CPUs without VNNI
(SSE4.1, AVX2, AVX-512 without VNNI) those sums saturate and a fused Q/DQ MatMul returns wrong values.
calib asks every session for the exact u8u8 kernel (``session.x64quantprecision``,
``calib.engines.ort.EXACT_INT8_MATMUL``). This script runs one build's Q/DQ model both ways on a demo
task's eval split, against the FP32 model: top-1 agreement, accuracy drop, the largest logit error,
and throughput at one batch size, each after a warm-up pass. On a VNNI (or ARM) CPU both rows agree.

Usage (after ``calib build``; a build run folder):
  python benchmarks/bench_int8_precision.py --workspace .cache/test-workspace --build <build run dir> \\
      --task bbc-topic --limit 256 --batch-size 16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted({f for f in flags if "vnni" in f or f in ("avx2", "avx512f", "amx_int8")})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--build", required=True, help="a build run folder (engine.json, model.qdq.onnx)")
    parser.add_argument("--task", default="bbc-topic")
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)

    import numpy as np

    from calib.build import EngineArtifact
    from calib.engines.ort import OrtEngine, OrtSessionLoader
    from calib.evaluation import compare, load_eval_data, run_engine
    from calib.inputs import DEMO_SPLITS, demo_values

    values = demo_values(args.task, args.workspace, split=DEMO_SPLITS["eval"])
    spec = values["model"].load()
    data = load_eval_data(values["data"], spec, limit=args.limit)
    artifact = EngineArtifact.load(Path(args.build))

    def timed(loader: OrtSessionLoader):
        engine = OrtEngine(loader)
        run_engine(engine, data.encoded, spec.input_dtypes, spec.roles, batch_size=args.batch_size)  # warm-up
        start = time.perf_counter()
        out = run_engine(engine, data.encoded, spec.input_dtypes, spec.roles, batch_size=args.batch_size)
        return out, len(data.encoded) / (time.perf_counter() - start)

    fp32, fp32_rate = timed(OrtSessionLoader(spec.onnx_path, threads=args.threads))
    rows = [{"engine": "fp32", "texts_per_s": round(fp32_rate, 1)}]
    for exact in (False, True):
        int8, rate = timed(OrtSessionLoader(artifact.qdq_path, threads=args.threads, exact_int8=exact))
        metrics = compare(fp32, int8, data, n_resamples=200)
        rows.append({"engine": "int8 exact (calib)" if exact else "int8 ORT default",
                     "top1_agreement": metrics.top1_agreement, "accuracy_drop_points": metrics.accuracy_drop_points,
                     "max_logit_error": float(np.abs(int8.logits - fp32.logits).max()),
                     "texts_per_s": round(rate, 1), "speedup_vs_fp32": round(rate / fp32_rate, 2)})
    result = {"task": args.task, "build": args.build, "texts": len(data.encoded), "batch_size": args.batch_size,
              "threads": args.threads, "cpu": platform.processor() or platform.machine(), "cpu_flags": _cpu_flags(),
              "rows": rows}
    print(f"{args.task}: {len(data.encoded)} texts, batch {args.batch_size}, {args.threads} threads, "
          f"CPU flags {', '.join(result['cpu_flags']) or 'unknown'}")
    print("| engine | top-1 agreement | drop (points) | max logit error | texts/s | vs FP32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        agreement = f"{r['top1_agreement']:.2%}" if r.get("top1_agreement") is not None else ""
        drop = f"{r['accuracy_drop_points']:+.2f}" if r.get("accuracy_drop_points") is not None else ""
        error = f"{r['max_logit_error']:.3f}" if "max_logit_error" in r else ""
        speed = f"{r['speedup_vs_fp32']:.2f}×" if "speedup_vs_fp32" in r else ""
        print(f"| {r['engine']} | {agreement} | {drop} | {error} | {r['texts_per_s']} | {speed} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
