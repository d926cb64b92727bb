"""Where the time goes: ONNX Runtime's per-op-type kernel time for one ONNX model on a synthetic batch.

Runs one warm-up and ``--runs`` timed runs of a (batch, seq) batch of random token ids with full
attention masks, with ORT's profiler on, and prints ms per batch and the op types by share of kernel time.

Usage (BENCHMARKS.md section 2):
  python benchmarks/profile_ops.py .cache/test-workspace/demo/bbc-topic/model.onnx --threads 2
  python benchmarks/profile_ops.py <build run>/model.qdq.onnx --threads 2
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from calib.engines.ort import session_options

    options = session_options(args.threads)  # the options calib's engines run with
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="calib-profile-"), "ort")
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    shape = (args.batch, args.seq)
    known = {"input_ids": rng.integers(1000, 20000, shape), "attention_mask": np.ones(shape)}
    feeds = {i.name: known.get(i.name, np.zeros(shape)).astype(np.int64) for i in session.get_inputs()}
    session.run(None, feeds)
    start = time.perf_counter()
    for _ in range(args.runs):
        session.run(None, feeds)
    print(f"{args.model}: {(time.perf_counter() - start) / args.runs * 1000:.0f} ms per batch "
          f"({args.batch} x {args.seq} tokens, {args.threads} threads)")
    with open(session.end_profiling()) as handle:
        events = json.load(handle)
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) or 1
    for op, micros in per_op.most_common(args.top):
        print(f"  {op:28s} {micros / total * 100:5.1f} %  {micros / 1000 / (args.runs + 1):7.0f} ms per batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
