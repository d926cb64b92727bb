"""Statistics pass and validation outputs: embedded vs a local Ray runtime with 1 and 2 workers.

    .venv/bin/python benchmarks/bench_cluster.py --task rt-sentiment --workspace workspace \
        --calibration 256 --eval 500 --workers 1 2

Times (wall, seconds) the statistics pass (``collect_statistics`` vs ``collect_statistics_sharded``)
and the FP32 outputs of validation (``run_engine`` vs the sharded path with the FP32 model standing
in for the INT8 engine, so no build is needed), checks that each sharded result equals the embedded
one, and prints one JSON object: per configuration the wall time, the Ray start-up time (not included
in the pass times) and the per-shard times the projection in BENCHMARKS.md uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rt-sentiment")
    parser.add_argument("--workspace", default="workspace")
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sensitivity-limit", type=int, default=0,
                        help="also time the sensitivity search (minmax ranges of the statistics pass, all MatMuls "
                             "quantized) on this many eval texts, embedded and per worker count (0: skip)")
    parser.add_argument("--max-evaluations", type=int, default=24)
    args = parser.parse_args()

    import numpy as np
    import onnx

    from calib.batching import encode
    from calib.cluster import connect
    from calib.data import load_rows, texts_of
    from calib.demo import load_demo_task
    from calib.distributed import collect_statistics_sharded, run_engines_sharded
    from calib.engines import PORTABLE_BACKEND
    from calib.engines.ort import OrtEngine, OrtSessionLoader
    from calib.evaluation import run_engine
    from calib.model import load_tokenizer
    from calib.stats import StatsConfig, collect_statistics, default_tensors

    demo = load_demo_task(args.task, args.workspace)
    spec = demo.model
    tok = load_tokenizer(spec.tokenizer_dir)
    cal_spec, eval_spec = demo.data("calibration"), demo.data("eval")
    cal_texts = texts_of(load_rows(cal_spec), cal_spec)[0][: args.calibration]
    eval_texts = texts_of(load_rows(eval_spec), eval_spec)[0][: args.eval]
    cal = encode(tok, cal_texts, max_length=spec.max_length)
    ev = encode(tok, eval_texts, max_length=spec.max_length)
    cfg = StatsConfig(batch_size=16)
    tensors = default_tensors(onnx.load(str(spec.onnx_path), load_external_data=False))
    out: dict = {"task": args.task, "calibration_texts": len(cal), "eval_texts": len(ev), "runs": {}}

    t0 = time.perf_counter()
    one = collect_statistics(spec, cal, tensors, config=cfg)
    stats_embedded = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = OrtEngine(OrtSessionLoader(spec.onnx_path))
    ref = run_engine(engine, ev, spec.input_dtypes, spec.roles, batch_size=16)
    stand_in = OrtEngine(OrtSessionLoader(spec.onnx_path))  # the sharded path runs two models per shard too
    run_engine(stand_in, ev, spec.input_dtypes, spec.roles, batch_size=16)
    eval_embedded = time.perf_counter() - t0
    out["runs"]["embedded"] = {"stats_seconds": round(stats_embedded, 2), "outputs_seconds_fp32_and_int8_standin": round(eval_embedded, 2)}

    for workers in args.workers:
        t0 = time.perf_counter()
        with connect(f"local:{workers}") as session:
            startup = time.perf_counter() - t0
            t0 = time.perf_counter()
            many = collect_statistics_sharded(session, spec, cal, tensors, config=cfg)
            stats_s = time.perf_counter() - t0
            same = all(np.array_equal(a.hist, b.hist) and a.min == b.min and a.max == b.max
                       for a, b in zip(one.tensors, many.tensors))
            t0 = time.perf_counter()
            fp32, _, _ = run_engines_sharded(session, spec.onnx_path, PORTABLE_BACKEND, spec.onnx_path, ev, spec.input_dtypes,
                                             spec.roles, batch_size=16)
            eval_s = time.perf_counter() - t0
            start_s, map_s = steady_state(session, spec, cal, tensors, cfg)
        out["runs"][f"local:{workers}"] = {
            "ray_startup_seconds": round(startup, 2), "stats_seconds": round(stats_s, 2),
            "outputs_seconds_fp32_and_int8_standin": round(eval_s, 2), "stats_identical": bool(same),
            "fp32_outputs_identical": bool(np.array_equal(fp32.logits, ref.logits)),
            "stats_worker_start_seconds": round(start_s, 2), "stats_map_seconds_workers_up": round(map_s, 2),
        }
        print(json.dumps(out["runs"][f"local:{workers}"]), flush=True)
    if args.sensitivity_limit:
        out["sensitivity"] = sensitivity_runs(args, demo, one)
    print(json.dumps(out, indent=2))


def steady_state(session, spec, cal, tensors, cfg) -> tuple[float, float]:
    """The statistics pass split in two: starting the workers (actor processes, model load, session
    creation) and the sharded pass itself once they are up -- the fixed and the per-text part of the
    Ray path's overhead."""
    import functools

    import ray

    from calib.distributed import SHARDS_PER_WORKER, StatsShardRunner, _worker_config, shard_plan

    shards = shard_plan(cal.lengths, cfg.batch_size, session.workers * SHARDS_PER_WORKER)
    factory = functools.partial(StatsShardRunner, str(spec.onnx_path), spec.sha256, dict(spec.input_dtypes),
                                cal.subset(shards[0][: cfg.batch_size]), tuple(tensors), _worker_config(cfg, session))
    t0 = time.perf_counter()
    with session.pool(factory) as pool:
        ray.get([actor.pid.remote() for actor in pool.actors])
        started = time.perf_counter() - t0
        t0 = time.perf_counter()
        pool.map([(cal.subset(rows), None, k) for k, rows in enumerate(shards)])
        return started, time.perf_counter() - t0


def sensitivity_runs(args, demo, stats) -> dict:
    """The sensitivity search embedded and on each worker count; the cluster runs must make the same
    evaluations with the same answers and recommend the same exclusions."""
    import tempfile
    from pathlib import Path

    from calib.calibrate import RangesRef
    from calib.io import atomic_write_json
    from calib.methods import compute_ranges
    from calib.model import ModelRef
    from calib.sensitivity import SEARCH_SETTINGS, SensitivityConfig, analyze_sensitivity

    spec, ev = demo.model, demo.data("eval")
    out: dict = {"limit": args.sensitivity_limit, "max_evaluations": args.max_evaluations, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ranges = Path(tmp) / "minmax.json"
        atomic_write_json(ranges, compute_ranges(stats, "minmax").amax)
        base = SensitivityConfig(model=ModelRef.of(spec), data=ev, ranges=RangesRef(str(ranges), "minmax"),
                                 settings=dataclasses.replace(SEARCH_SETTINGS, limit=args.sensitivity_limit),
                                 max_evaluations=args.max_evaluations, speed_texts=0)
        records = {}
        for name in ["embedded", *[f"local:{w}" for w in args.workers]]:
            config = base if name == "embedded" else dataclasses.replace(
                base, settings=dataclasses.replace(base.settings, cluster=name))
            t0 = time.perf_counter()
            res = analyze_sensitivity(config, Path(tmp) / name.replace(":", "-"))
            wall = time.perf_counter() - t0
            d = res.data
            records[name] = ([(e["why"], e.get("top1_agreement"), e.get("passes")) for e in d["evaluations"]],
                             [(e["why"], e.get("kl_softmax")) for e in d["ranking_evaluations"]], res.exclusions)
            out["runs"][name] = {"wall_seconds_with_ray_startup": round(wall, 2),
                                 "search_seconds": d["search_seconds"], "ranking": d["ranking_method"],
                                 "ranking_evaluations": d["ranking_evaluations_used"],
                                 "evaluations": d["evaluations_used"], "float_nodes": len(res.exclusions),
                                 "passes": res.found,
                                 "same_as_embedded": records[name] == records["embedded"]}
            print(json.dumps({name: out["runs"][name]}), flush=True)
    return out


if __name__ == "__main__":
    main()
