"""Scale-out on Ray (calib.cluster, calib.distributed): the cluster spec, the exact merge of shard
statistics (in process, no Ray), and -- on one local Ray runtime with 2 workers for the whole module
-- validation, the statistics pass and the sensitivity search giving the single-process results,
a killed worker's shard retried, progress across workers, and an unreachable cluster refused."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tinymodel
from test_sensitivity import broken_ranges  # noqa: F401 - the fixture

from calib.batching import encode, plan_batches
from calib.cluster import FAULT_ENV, Cluster, parse_cluster
from calib.distributed import StatsShardRunner, merge_statistics, rebin, shard_plan
from calib.errors import BackendUnavailableError, InputError
from calib.methods import compute_ranges
from calib.model import load_tokenizer
from calib.pipeline import config_from_params
from calib.stats import StatsConfig, collect_statistics, default_tensors, tensor_stats_from_arrays

METHODS = (("minmax", {}), ("entropy", {}), ("percentile", {"percentile": 99.99}), ("mse", {}))


@pytest.fixture(scope="module")
def encoded(tiny_spec):
    texts, _ = tinymodel.make_texts(150, seed=7)
    return encode(load_tokenizer(tiny_spec.tokenizer_dir), texts, max_length=tiny_spec.max_length)


@pytest.fixture(scope="module")
def tensors(tiny_spec):
    import onnx

    return default_tensors(onnx.load(str(tiny_spec.onnx_path)))


def assert_same_stats(a, b, *, channels_exact: bool = False) -> None:
    assert a.names == b.names and (a.texts, a.tokens, a.batches) == (b.texts, b.tokens, b.batches)
    for x, y in zip(a.tensors, b.tensors):
        assert (x.count, x.nan, x.posinf, x.neginf, x.min, x.max) == (y.count, y.nan, y.posinf, y.neginf, y.min, y.max)
        assert x.hist_range == y.hist_range and np.array_equal(x.hist, y.hist), x.name
        assert (x.channels is None) == (y.channels is None)
        if x.channels is not None:
            assert np.array_equal(x.channels.absmax, y.channels.absmax) and x.channels.rows == y.channels.rows
            np.testing.assert_allclose(x.channels.mean, y.channels.mean, rtol=1e-12, atol=1e-15)
            assert x.channels.sample.shape == y.channels.sample.shape
            assert np.array_equal(np.sort(np.abs(x.channels.outliers).max(axis=1)),
                                  np.sort(np.abs(y.channels.outliers).max(axis=1)))
    for method, params in METHODS:
        assert compute_ranges(a, method, **params).amax == compute_ranges(b, method, **params).amax, method


# -- no Ray needed ---------------------------------------------------------------------------------


def test_cluster_spec_parses_one_way():
    assert Cluster.parse(None) is None and Cluster.parse("") is None and Cluster.parse(" none ") is None
    assert Cluster.parse("local") == Cluster("local") and str(Cluster.parse("local:3")) == "local:3"
    assert Cluster.parse("auto") == Cluster("join", address="auto")
    assert parse_cluster("ray://head.example:10001") == "ray://head.example:10001"
    for bad in ("local:0", "local:x", "ray://nohost", "http://h:1", "cluster"):
        with pytest.raises(InputError, match="cluster"):
            Cluster.parse(bad)


def test_shards_are_runs_of_whole_batches_of_the_one_process_plan(encoded):
    batches = plan_batches(encoded.lengths, 16)
    shards = shard_plan(encoded.lengths, 16, 4)
    assert 2 <= len(shards) <= 4
    assert np.array_equal(np.concatenate(shards), np.concatenate(batches))  # same rows, same order
    starts = {int(b[0]) for b in batches}
    assert all(int(s[0]) in starts for s in shards)  # every shard starts at a batch boundary
    assert 1 < len(shard_plan(encoded.lengths, 16, 99)) <= len(batches)  # never more shards than batches


def test_rebinned_stream_histograms_sum_to_the_one_pass_histogram(rng):
    parts = [rng.standard_normal(5000).astype(np.float32) * s for s in (0.3, 7.0, 40.0)]
    whole = tensor_stats_from_arrays("x", parts, bins=1024)
    each = [tensor_stats_from_arrays("x", [p], bins=1024) for p in parts]
    top = max(t.hist_range for t in each)
    assert top == whole.hist_range and len({t.hist_range for t in each}) == 3
    assert np.array_equal(sum(rebin(t.hist, t.hist_range, top) for t in each), whole.hist)


@pytest.mark.parametrize("histogram", ["stream", "two-pass"])
def test_shard_statistics_merge_to_the_one_process_statistics(tiny_spec, encoded, tensors, histogram):
    """The merge itself, shards run in this process: identical histograms, counts and ranges."""
    cfg = StatsConfig(batch_size=16, histogram=histogram, threads=1)
    one = collect_statistics(tiny_spec, encoded, tensors, config=cfg)
    shards = shard_plan(encoded.lengths, 16, 3)
    worker_cfg = dataclasses.replace(cfg, histogram="stream", bins=one.bins)
    runner = StatsShardRunner(str(tiny_spec.onnx_path), tiny_spec.sha256, tiny_spec.input_dtypes,
                              encoded.subset(shards[0][:16]), tensors, worker_cfg)
    subsets = [encoded.subset(rows) for rows in shards]
    fixed = None
    if histogram == "two-pass":
        first = [runner((s, None, k)) for k, s in enumerate(subsets)]
        fixed = {t.name: max(max(abs(p[t.name].min), abs(p[t.name].max)) for p in first) for t in first[0].tensors}
    parts = [runner((s, fixed, k)) for k, s in enumerate(subsets)]
    merged = merge_statistics(parts, bins=one.bins, histogram=histogram, fixed=fixed)
    assert_same_stats(merged, one)


# -- on a local Ray runtime with 2 workers ---------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray runtime (2 workers) for the module; FAULT_ENV is set before it starts so the
    workers inherit it (a test arms the fault by creating the file)."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'calib[ray]')")
    from calib.cluster import connect

    marker = tmp_path_factory.mktemp("fault") / "kill-once"
    old = os.environ.get(FAULT_ENV)
    os.environ[FAULT_ENV] = str(marker)
    try:
        with connect("local:2") as session:
            yield session, marker
    finally:
        if old is None:
            os.environ.pop(FAULT_ENV, None)
        else:
            os.environ[FAULT_ENV] = old


@pytest.fixture(scope="module")
def qdq(tiny_spec, tmp_path_factory):
    from test_validate import absmax_ranges

    from calib.placement import Placement
    from calib.quantize import quantize_qdq

    texts, _ = tinymodel.make_texts(64, seed=3)
    path = tmp_path_factory.mktemp("qdq") / "tiny.qdq.onnx"
    quantize_qdq(tiny_spec.onnx_path, absmax_ranges(tiny_spec, texts, "tensorrt"), Placement("tensorrt"), path)
    return path


def vconfig(tiny_spec, engine, data, **kw):
    from calib.validate import ValidateConfig

    return config_from_params(ValidateConfig, dict(engine=str(engine), model=str(tiny_spec.onnx_path), tokenizer=str(tiny_spec.tokenizer_dir),
                          data=str(data), labels=tinymodel.LABELS, max_length=64, edges=(0, 8, 16, 32),
                          layers=False, bootstrap=200, **kw))


def test_sharded_validation_equals_one_process(cluster, tiny_spec, qdq, tiny_csv, tmp_path):
    from calib.validate import validate

    one = validate(vconfig(tiny_spec, qdq, tiny_csv), tmp_path / "one")
    seen = []
    many = validate(vconfig(tiny_spec, qdq, tiny_csv, cluster="local:2"), tmp_path / "many",
                    progress=lambda f, m="": seen.append((f, m)))
    a, b = one.predictions(), many.predictions()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert one.data["metrics"] == many.data["metrics"]
    assert many.data["cluster"]["workers"] == 2 and many.summary()["cluster"] == "local:2"
    # one progress across workers: shards counted as they complete, never going back
    shard_reports = [m for _, m in seen if "shards on 2 workers" in m]
    assert len(shard_reports) >= 2 and [f for f, _ in seen] == sorted(f for f, _ in seen)


def test_sharded_statistics_and_calibrate_run_record_the_cluster(cluster, tiny_spec, tiny_csv, workspace):
    from calib.calibrate import CalibrateConfig, calibrate
    from calib.calibset import AssembleConfig, assemble
    from calib.pipeline import run_stage

    _, cset = run_stage(workspace, "calibset", assemble, config_from_params(AssembleConfig, dict(
        model=str(tiny_spec.onnx_path), tokenizer=str(tiny_spec.tokenizer_dir), source=str(tiny_csv), max_length=64,
        size=120, strategy="natural", labels=tinymodel.LABELS, workspace=str(workspace.root))))
    for histogram in ("stream", "two-pass"):
        base = CalibrateConfig(calibration_set=str(cset.dir), histogram=histogram, threads=1)
        _, one = run_stage(workspace, "calibrate", calibrate, base)
        run_id, many = run_stage(workspace, "calibrate", calibrate, dataclasses.replace(base, cluster="local:2"))
        assert_same_stats(many.stats, one.stats)
        for method in one.methods:
            assert many.ranges(method).amax == one.ranges(method).amax, method
        run = workspace.get_run(run_id)
        assert run.params["cluster"] == "local:2" and run.summary["cluster"] == "local:2"
        assert run.summary["workers"] == 2


def test_killed_worker_is_retried_and_the_result_is_identical(cluster, tiny_spec, qdq, tiny_csv, tmp_path):
    from calib.validate import validate

    _, marker = cluster
    one = validate(vconfig(tiny_spec, qdq, tiny_csv, limit=100), tmp_path / "one")
    marker.write_text("armed")  # the first shard to start deletes it and SIGKILLs its own worker process
    many = validate(vconfig(tiny_spec, qdq, tiny_csv, limit=100, cluster="local:2"), tmp_path / "many")
    assert not marker.exists()  # the fault fired
    a, b = one.predictions(), many.predictions()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert one.data["metrics"] == many.data["metrics"]


def test_unreachable_cluster_is_one_line_and_registers_nothing(tiny_spec, qdq, tiny_csv, workspace, monkeypatch):
    """Outside any open session: joining an address where no cluster listens fails in one line."""
    pytest.importorskip("ray", reason="Ray is not installed")
    import calib.cluster as cl
    from calib.pipeline import run_stage
    from calib.validate import validate

    monkeypatch.setattr(cl, "_OPEN", [])  # as if no session were open (the module's runtime stays up)
    ray = cl.import_ray()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def refuse(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(BackendUnavailableError, match=r"^the Ray cluster auto cannot be reached: Could not find"):
        run_stage(workspace, "validate", validate, vconfig(tiny_spec, qdq, tiny_csv, cluster="auto"))
    assert [r.status for r in workspace.list_runs()] == ["failed"]
    assert not any(p.name != ".locks" and not p.name.startswith(".") for p in (workspace.root / "runs").iterdir())


def test_cli_cluster_option(cluster, tiny_spec, tiny_csv, workspace, capsys):
    """``--cluster`` on calibrate: a bad spec is exit 2 before anything runs; local:2 is recorded."""
    import json

    from calib.cli import main

    ws = str(workspace.root)
    assert main(["--workspace", ws, "assemble", "--model", str(tiny_spec.onnx_path), "--tokenizer",
                 str(tiny_spec.tokenizer_dir), "--data", str(tiny_csv), "--size", "64", "--max-length", "64",
                 "--strategy", "natural"]) == 0
    capsys.readouterr()
    assert main(["--workspace", ws, "calibrate", "--calibration-set", "latest", "--cluster", "local:0"]) == 2
    assert "local:N needs a worker count" in capsys.readouterr().err
    assert main(["--workspace", ws, "calibrate", "--calibration-set", "latest", "--cluster", "local:2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["cluster"] == "local:2" and out["summary"]["workers"] == 2


# -- the sensitivity search on the cluster ---------------------------------------------------------


def _search_record(result) -> dict:
    """The search as it matters: every evaluation's question and answer, the ranking and the
    recommendation (wall-clock seconds, folders and the cluster record left out)."""
    def clean(entry):
        return {k: v for k, v in entry.items() if k not in ("seconds",)}

    d = result.data
    return {"ranking": [{k: v for k, v in r.items()} for r in d["ranking"]],
            "evaluations": [clean(e) for e in d["evaluations"]],
            "ranking_evaluations": [clean(e) for e in d["ranking_evaluations"]],
            "baseline": clean(d["baseline"]), "searches": d["searches"], "search_start": d["search_start"],
            "recommended": {k: v for k, v in d["recommended"].items() if k != "seconds"},
            "ranking_method": d["ranking_method"]}


@pytest.mark.parametrize("settings", [
    {"ranking": "quantize-one", "cache_mb": 0},  # whole candidate models, one task per ranking candidate
    {"ranking": "block-local"},  # block segments with their cached cuts on each worker, early stops replayed
    {"ranking": "exclude-one", "granularity": "block", "max_evaluations": 16},  # ranking on the search rows
], ids=["quantize-one-whole-models", "block-local-segments", "exclude-one-blocks"])
def test_sensitivity_search_on_the_cluster_is_the_serial_search(cluster, tiny_spec, tiny_csv, broken_ranges, tmp_path,  # noqa: F811
                                                                settings):
    """Same evaluations in the same order, the same numbers for each, the same evaluation count and
    the same recommendation as the one-process search; the cluster is recorded."""
    from test_sensitivity import sconfig

    from calib.sensitivity import analyze_sensitivity

    ranges = broken_ranges
    kw = {"placement": "tensorrt", "max_evaluations": 12, "speed_texts": 0, **settings}
    seen_one, seen = [], []
    one = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, ranges, **kw), tmp_path / "one",
                              progress=lambda f, m="": seen_one.append(f))
    many = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, ranges, cluster="local:2", **kw), tmp_path / "many",
                               progress=lambda f, m="": seen.append(f))
    assert not one.data["baseline"]["passes"] and one.found  # a search that had something to find
    assert _search_record(many) == _search_record(one)
    assert many.exclusions == one.exclusions and many.data["evaluations_used"] == one.data["evaluations_used"]
    assert many.data["cluster"]["workers"] == 2 and many.summary()["cluster"] == "local:2"
    assert "cluster" not in one.data and seen == seen_one  # one progress, as the serial search reports it


def test_overlapping_connects_share_one_runtime_until_the_last_ends(monkeypatch):
    """The app runs two jobs at once: a job that ends must not shut down the runtime another job
    still uses (no Ray needed: a stand-in records init/shutdown)."""
    import calib.cluster as cl

    class FakeRay:
        def __init__(self):
            self.up, self.inits, self.shutdowns = False, 0, 0

        def is_initialized(self):
            return self.up

        def init(self, **kw):
            self.up, self.inits = True, self.inits + 1

        def shutdown(self):
            self.up, self.shutdowns = False, self.shutdowns + 1

        def cluster_resources(self):
            return {"CPU": 2.0}

    fake = FakeRay()
    monkeypatch.setattr(cl, "_OPEN", [])
    monkeypatch.setattr(cl, "import_ray", lambda: fake)
    first = cl.connect("local:2")
    a = first.__enter__()
    with cl.connect("local:1") as b:  # another job while the first runs: the same session
        assert b is a and fake.inits == 1
        first.__exit__(None, None, None)  # the first job ends
        assert fake.shutdowns == 0 and cl.active() is a  # still up for the second
    assert fake.shutdowns == 1 and cl.active() is None
    with cl.connect("local:2") as c:  # a later job starts a fresh runtime
        assert c is not a and fake.inits == 2
    assert fake.shutdowns == 2
