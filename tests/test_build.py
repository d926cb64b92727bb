"""Stage build (calib.build) and the `calib build` / `calib bench` commands on the tiny model."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import tinymodel
from absmax import absmax_ranges, run_both

from calib.build import BuildConfig, EngineArtifact, build
from calib.calibrate import RangesRef
from calib.data import DataSpec
from calib.errors import BackendUnavailableError, InputError, ModelMismatchError
from calib.io import sha256_file
from calib.pipeline import config_from_params, config_params
from calib.placement import Placement
from calib.ranges import Ranges


@pytest.fixture(scope="module")
def ranges_file(tiny_spec, tmp_path_factory):
    texts, _ = tinymodel.make_texts(64, seed=7)
    amax = absmax_ranges(tiny_spec, texts, preset="all")
    # as the calibrators do: non-finite values are excluded, so the -inf mask tensors get amax 0
    amax = {k: (v if np.isfinite(v) else 0.0) for k, v in amax.items()}
    amax["not/in/model"] = 2.0
    path = tmp_path_factory.mktemp("ranges") / "minmax.json"
    Ranges(method="minmax", params={}, model_sha256=tiny_spec.sha256, amax=amax).save(path)
    return path


@pytest.fixture(scope="module")
def engine_dir(tiny_spec, ranges_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine")
    build(BuildConfig(model=str(tiny_spec.onnx_path), ranges=RangesRef(str(ranges_file)),
                      placement=Placement(exclude_nodes=("layer.1/output/*",)),
                      profile=(1, 16, 32, 8, 64, 64)), out)
    return out


def test_engine_folder_contents(engine_dir, tiny_spec, ranges_file):
    art = EngineArtifact.load(engine_dir)
    meta = json.loads((engine_dir / "engine.json").read_text())
    assert {p.name for p in engine_dir.iterdir()} == {"model.qdq.onnx", "engine.json", "trtexec.sh", "calibration.cache",
                                                     "model.fp32.onnx"}
    assert meta["model"]["sha256"] == tiny_spec.sha256
    assert meta["qdq"]["sha256"] == sha256_file(engine_dir / "model.qdq.onnx")
    assert meta["ranges"]["method"] == "minmax" and str(ranges_file) in meta["ranges"]["source"]
    assert meta["excluded_nodes"]["layer.1/output/dense/MatMul"] == "excluded by name"
    assert "layer.1/output/dense/MatMul" not in art.quantized_nodes
    assert meta["unknown_tensors"] == ["not/in/model"]
    assert meta["backend"] == "ort"
    assert meta["tensorrt"]["available"] is False and "not installed" in meta["tensorrt"]["reason"]
    assert meta["profile"]["opt_batch"] == 16 and meta["profile"]["source"] == "given"
    assert art.summary()["quantized_nodes"] == len(art.quantized_nodes)


def test_calibration_cache_holds_the_quantized_tensors(engine_dir):
    from calib.trtcache import read_trt_cache

    meta = json.loads((engine_dir / "engine.json").read_text())
    cache = read_trt_cache(engine_dir / "calibration.cache")
    assert cache.algorithm == "EntropyCalibration2" and cache.version_code == 100300
    assert list(cache.scales) == meta["quantized_tensors"]
    assert "layer.1/intermediate/gelu/Mul_1_out" not in cache.scales  # its only reader was excluded


def test_int8_engine_runs_and_agrees_with_fp32(engine_dir, tiny_spec):
    art = EngineArtifact.load(engine_dir)
    int8, fp32 = art.engine("int8", threads=1), art.engine("fp32", threads=1)
    assert int8.name == "onnxruntime-int8" and fp32.name == "onnxruntime-fp32"
    a, b = run_both(fp32, int8, tiny_spec, tinymodel.make_texts(80, seed=3)[0])
    assert np.mean(a["logits"].argmax(1) == b["logits"].argmax(1)) >= 0.95
    assert np.mean(np.sum(a["embedding"] * b["embedding"], 1)) >= 0.98


def test_trtexec_script_runs_the_right_files(engine_dir, tiny_spec):
    script = (engine_dir / "trtexec.sh").read_text()
    assert "--onnx=model.qdq.onnx" in script and "--calib=calibration.cache" in script
    assert "--onnx=model.fp32.onnx" in script and str(tiny_spec.onnx_path.parent) not in script.split("set -euo")[1]
    assert "--minShapes=input_ids:1x8,attention_mask:1x8,token_type_ids:1x8" in script
    assert "--calibration_cache_path=calibration.cache" in script
    assert subprocess.run(["bash", "-n", str(engine_dir / "trtexec.sh")], check=False).returncode == 0
    done = subprocess.run(["bash", str(engine_dir / "trtexec.sh"), "nine"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "usage" in done.stderr


def test_tensorrt_backend_absent_raises_with_trtexec_alternative(tiny_spec, ranges_file, tmp_path):
    config = BuildConfig(model=str(tiny_spec.onnx_path), ranges=RangesRef(str(ranges_file)), backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match="trtexec"):
        build(config, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_range_set_for_another_model_is_refused(tiny_spec, ranges_file, tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save(tinymodel.build_model(seed=5), str(other))
    with pytest.raises(ModelMismatchError, match="recalibrate"):
        build(BuildConfig(model=str(other), ranges=RangesRef(str(ranges_file))), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, match", [
    ({"ranges": RangesRef("")}, "exactly one"),
    ({"backend": "cuda"}, "unknown backend"),
    ({"placement": Placement("everything")}, "unknown placement"),
    ({"profile": (16, 1, 32, 8, 64, 64)}, "min <= opt <= max"),
    ({"trt_version": "ten"}, "version"),
])
def test_bad_config(tiny_spec, ranges_file, tmp_path, change, match):
    import dataclasses

    config = dataclasses.replace(BuildConfig(model=str(tiny_spec.onnx_path), ranges=RangesRef(str(ranges_file))), **change)
    with pytest.raises(InputError, match=match):
        build(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_build_tensorrt_absent_builds_portable_engine_and_exits_3(tiny_spec, ranges_file, workspace, capsys):
    from calib.cli import main

    code = main(["--workspace", str(workspace.root), "build", "--model", str(tiny_spec.onnx_path),
                 "--ranges", str(ranges_file), "--backend", "tensorrt", "--profile", "1", "8", "16", "8", "32", "64"])
    captured = capsys.readouterr()
    assert code == 3
    assert "TensorRT is not usable here: TensorRT is not installed" in captured.err
    assert "trtexec \\\n    --onnx=model.qdq.onnx" in captured.err
    runs = workspace.list_runs(stage="build")
    assert len(runs) == 1 and runs[0].status == "finished"
    meta = EngineArtifact.load(workspace.run_dir(runs[0].id)).meta
    assert meta["backend"] == "ort" and meta["tensorrt"]["available"] is False


def test_cli_bench_writes_latency_table(tiny_spec, ranges_file, tiny_csv, workspace, capsys):
    from calib.bench import BenchResult
    from calib.cli import main

    assert main(["--workspace", str(workspace.root), "build", "--model", str(tiny_spec.onnx_path),
                 "--ranges", str(ranges_file), "--profile", "1", "8", "16", "8", "32", "64"]) == 0
    engine_run = workspace.list_runs(stage="build")[0].id
    code = main(["--workspace", str(workspace.root), "bench", "--engine", engine_run, "--data", str(tiny_csv),
                 "--tokenizer", str(tiny_spec.tokenizer_dir), "--split", "train", "--max-length", "64",
                 "--max-texts", "48", "--batch-size", "1", "16", "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "INT8 / FP32 throughput at batch 16" in out
    result = BenchResult.load(workspace.run_dir(workspace.list_runs(stage="bench")[0].id))
    assert {(r["kind"], r["batch_size"]) for r in result.rows} == {("fp32", 1), ("fp32", 16), ("int8", 1), ("int8", 16)}
    for row in result.rows:
        assert row["texts"] == 48 and 0 < row["p50_ms"] <= row["p95_ms"] and row["texts_per_s"] > 0
        assert row["peak_rss_mb"] > 10
    assert result.speedup(16) is not None and result.speedup(16) > 0


def _dry_run(folder, route):
    return subprocess.run(["bash", str(folder / "trtexec.sh"), route, "--dry-run"], capture_output=True, text=True,
                          check=False)


_PATH_FLAGS = ("--onnx=", "--calib=", "--onnx_path=", "--calibration_cache_path=")


def test_engine_folder_is_portable_every_route_reads_only_files_inside_the_copy(engine_dir, tiny_spec, tmp_path):
    import shlex
    import shutil

    copy = tmp_path / "elsewhere" / "engine copy"
    shutil.copytree(engine_dir, copy)
    art = EngineArtifact.load(copy)
    assert art.model_path == copy / "model.fp32.onnx"
    assert sha256_file(art.model_path) == tiny_spec.sha256
    for route in ("11", "10", "modelopt"):
        done = _dry_run(copy, route)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        reads = [line[len("reads "):] for line in lines if line.startswith("reads ")]
        assert reads and all(r.startswith(str(copy) + "/") for r in reads), lines
        assert lines[len(reads)] == f"in {copy}:"
        words = shlex.split(lines[len(reads) + 1])
        named = [w.split("=", 1)[1] for w in words if w.startswith(_PATH_FLAGS)]
        assert named, words
        for name in named:
            assert not name.startswith("/") and (copy / name).is_file(), (route, name)
        assert {str(copy / n) for n in named} == set(reads)
    (copy / "calibration.cache").unlink()
    done = _dry_run(copy, "10")
    assert done.returncode == 1 and f"missing {copy}/calibration.cache" in done.stderr
    assert _dry_run(copy, "11").returncode == 0


def test_fp32_model_in_the_build_survives_a_re_export_in_place(tiny_spec, ranges_file, tmp_path):
    """The build folder holds its own FP32 model: re-exporting the source model to the same path
    (onnx.save rewrites the file in place) leaves the finished build as it was."""
    source = tmp_path / "user" / "model.onnx"
    source.parent.mkdir()
    shutil.copyfile(tiny_spec.onnx_path, source)
    art = build(BuildConfig(model=str(source), ranges=RangesRef(str(ranges_file))), tmp_path / "out")
    bundled = tmp_path / "out" / "model.fp32.onnx"
    before = sha256_file(bundled)
    onnx.save(tinymodel.build_model(seed=7), str(source))  # the user re-exports to the same path
    assert sha256_file(source) != before and sha256_file(bundled) == before
    assert art.meta["model"]["bundled"]["how"] in ("reflink", "copy")  # not "hard link"


def test_model_with_external_data_is_bundled_with_it(tiny_spec, ranges_file, tmp_path):
    import shutil

    source = tmp_path / "src"
    (source / "weights").mkdir(parents=True)
    model = onnx.load(str(tiny_spec.onnx_path))
    onnx.save(model, str(source / "model.onnx"), save_as_external_data=True, location="weights/model.data",
              size_threshold=0)
    ranges = Ranges.load(ranges_file)
    own = tmp_path / "ranges.json"
    Ranges(method=ranges.method, params={}, model_sha256=sha256_file(source / "model.onnx"), amax=ranges.amax).save(own)
    art = build(BuildConfig(model=str(source / "model.onnx"), ranges=RangesRef(str(own))), tmp_path / "out")
    assert art.meta["model"]["bundled"]["external_data"] == ["weights/model.data"]
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "out", copy)
    shutil.rmtree(source)  # the original is gone: the copy still has everything route 10 reads
    assert _dry_run(copy, "10").returncode == 0
    assert (copy / "weights" / "model.data").is_file()
    onnx.checker.check_model(str(copy / "model.fp32.onnx"))


def test_bench_reports_each_engine_pass_as_it_goes(engine_dir, tiny_spec, tiny_csv, tmp_path):
    from calib.bench import BenchConfig, benchmark

    seen: list[tuple[float, str]] = []
    config = config_from_params(BenchConfig, dict(engine=str(engine_dir), data=str(tiny_csv), tokenizer=str(tiny_spec.tokenizer_dir), split=None,
                         max_length=64, max_texts=24, batch_sizes=(1, 8), repeats=2, threads=1))
    result = benchmark(config, tmp_path / "bench", progress=lambda f, m="": seen.append((f, m)))
    assert len(result.rows) == 4
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for place, kind in ((1, "FP32"), (2, "INT8")):
        messages = [m for _, m in seen if m.startswith(f"{kind} engine ({place}/2): ")]
        assert any(m.endswith("batch size 1: warm-up pass done") for m in messages), messages
        assert messages[-1].endswith("batch size 8: timed pass 2/2 done"), messages
        assert len(messages) == 1 + 2 * 3  # the announcement + a warm-up and two timed passes per batch size
    spreads = [r["pass_spread"] for r in result.rows]  # the measured run-to-run noise of the timed passes
    assert all(s is not None and 0 <= s < 5 for s in spreads)


def test_bench_noise_note_comes_from_the_measured_passes():
    """The app warns about timing noise only when the benchmark's own passes show it (or cannot)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
    from lib.bench_view import timing_note

    quiet = [{"pass_spread": 0.02}, {"pass_spread": 0.04}]
    note, warn = timing_note(quiet, 3)
    assert not warn and "within 4.0%" in note
    note, warn = timing_note([*quiet, {"pass_spread": 0.31}], 3)
    assert warn and "up to 31%" in note
    note, warn = timing_note([{"pass_spread": None}], 1)
    assert warn and "noise is unknown" in note
    assert timing_note([{}], 3)[1]  # an older run without the figure: unknown, said so


def test_bench_config_holds_a_model_ref_and_reads_0_1s_layout(engine_dir, tiny_spec, tiny_csv, tmp_path):
    """Bench names its model as every stage does; 0.1's flat tokenizer / max_texts still read; a named FP32
    model must be the one the engine was built from."""
    from calib.bench import BenchConfig, benchmark
    from calib.model import ModelRef

    old = config_from_params(BenchConfig, dict(engine="e", data="d.csv", tokenizer="tok", max_length=64, max_texts=24))
    assert old.model == ModelRef("", "tok", 64) and old.limit == 24
    assert config_from_params(BenchConfig, config_params(old)) == old
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the model the engine was built from")
    config = BenchConfig(engine=str(engine_dir), model=ModelRef(str(other), str(tiny_spec.tokenizer_dir), 64),
                         data=DataSpec(str(tiny_csv)), limit=8, batch_sizes=(1,), repeats=1, threads=1)
    with pytest.raises(InputError, match="was built from .*not .*other.onnx"):
        benchmark(config, tmp_path / "bench")
    assert not (tmp_path / "bench" / "bench.json").exists()
    same = tmp_path / "same.onnx"
    same.write_bytes(tiny_spec.onnx_path.read_bytes())  # a copy is the same model
    result = benchmark(dataclasses.replace(config, model=ModelRef(str(same), str(tiny_spec.tokenizer_dir), 64)),
                       tmp_path / "bench")
    assert {r["kind"] for r in result.rows} == {"fp32", "int8"} and result.rows[0]["texts"] == 8


def test_a_plain_amax_mapping_is_a_range_set_for_every_stage(tiny_spec, ranges_file, tmp_path):
    """A {tensor: amax} JSON from another tool reads as one range set (RangesRef.load) for build and the
    sensitivity search alike; empty or non-numeric mappings are refused in one line."""
    from calib.ranges import EXTERNAL_METHOD

    amax = Ranges.load(ranges_file).amax
    plain, nested = tmp_path / "plain.json", tmp_path / "nested.json"
    plain.write_text(json.dumps(amax))
    nested.write_text(json.dumps({"amax": amax}))
    for path in (plain, nested):
        ranges = RangesRef(str(path)).load()
        assert ranges.amax == amax and ranges.method == EXTERNAL_METHOD
    art = build(BuildConfig(model=str(tiny_spec.onnx_path), ranges=RangesRef(str(plain))), tmp_path / "engine")
    assert art.method == EXTERNAL_METHOD and art.quantized_nodes
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "text.json").write_text(json.dumps({"a": "big"}))
    with pytest.raises(InputError, match="holds no"):
        RangesRef(str(tmp_path / "empty.json")).load()
    with pytest.raises(InputError, match="must be numbers"):
        RangesRef(str(tmp_path / "text.json")).load()


def test_build_config_records_one_form_of_no_migration(tiny_spec, tmp_path):
    """A menu's "off" and no value are the same setting, recorded once; attention folding needs migration."""
    off = BuildConfig(model="m.onnx", smooth="off", smooth_attention=True)
    assert off.smooth == "" and off.smooth_attention is False and off == BuildConfig(model="m.onnx")
    on = BuildConfig(model="m.onnx", smooth="auto", smooth_attention=True)
    assert on.smooth == "auto" and on.smooth_attention is True
    assert BuildConfig.from_params(config_params(off)) == off


def test_build_command_makes_the_same_config_again(tiny_spec, ranges_file, workspace):
    """calib build, given the command build_command spells, makes the config it was spelled from."""
    import shlex

    from calib.build import build_command
    from calib.cli import build_parser
    from calib.cli.build import _config

    config = BuildConfig(model=str(tiny_spec.onnx_path), ranges=RangesRef(str(ranges_file)),
                         placement=Placement("all", include_nodes=("layer.0/*",), exclude_nodes=("re:a,b", "x y"),
                                             exclude_op_types=("Gemm",)),
                         per_channel=False, profile=(1, 8, 16, 8, 32, 64), trt_version="10.0.1", trt_mode="explicit")
    command = build_command(config, exclude_from=None)
    argv = shlex.split(command)
    assert argv[:2] == ["calib", "build"] and "--method" not in argv  # a ranges file has one range set
    args = build_parser().parse_args(["--workspace", str(workspace.root), *argv[1:]])
    made, _ = _config(args, workspace)
    assert dataclasses.replace(made, timing_cache="") == config
    assert build_command(BuildConfig(model="m.onnx", ranges=RangesRef(str(workspace.root)), smooth="auto"),
                         exclude_from="sens-1").endswith("--smooth auto --exclude-from sens-1")
