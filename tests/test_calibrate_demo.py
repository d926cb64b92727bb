"""Stage ``calibrate`` end to end: tiny model in seconds; the real demo model under ``-m demo``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from calib.calibrate import CalibrateConfig, Calibration, calibrate
from calib.errors import InputError
from calib.pipeline import config_from_params
from calib.trtcache import read_trt_cache

METHODS = ("entropy", "minmax", "percentile", "mse")


def _value_names(model_path: Path) -> set[str]:
    model = onnx.load(str(model_path), load_external_data=False)
    names = {o for n in model.graph.node for o in n.output}
    return names | {i.name for i in model.graph.input}


def _assemble(ws, model: Path, tokenizer: Path, source: str, size: int, max_length: int, **extra) -> str:
    from calib.calibset import AssembleConfig, assemble
    from calib.pipeline import run_stage

    config = config_from_params(AssembleConfig, dict(model=str(model), tokenizer=str(tokenizer), source=source, size=size,
                            max_length=max_length, workspace=str(ws.root), **extra))
    run_id, _ = run_stage(ws, "calibset", assemble, config)
    return run_id


def _check_calibration(cal: Calibration, model_path: Path) -> None:
    names = _value_names(model_path)
    minmax = cal.ranges("minmax")
    for method in cal.methods:
        ranges = cal.ranges(method)
        assert ranges.model_sha256 == cal.model_sha256
        for name, amax in ranges.amax.items():
            assert math.isfinite(amax) and 0 <= amax <= minmax.amax[name] * (1 + 1e-12), (method, name)
        cache = read_trt_cache(cal.cache_path(method))
        assert cache.algorithm == ("EntropyCalibration2" if method == "entropy" else "MinMaxCalibration")
        assert cache.scales and set(cache.scales) <= names  # real ONNX tensor names of this model
        for name, scale in cache.scales.items():
            assert scale == float(np.float32(ranges.amax[name] / 127))
        from onnxruntime.quantization.calibrate import load_tensors_data

        assert set(load_tensors_data(cal.ort_path(method)).data) == set(ranges.usable())


@pytest.fixture()
def tiny_calibset(workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    run_id = _assemble(workspace, tiny_model_path, tiny_tokenizer_dir, str(tiny_csv), 64, 64)
    return run_id, workspace.run_dir(run_id)


def test_calibrate_tiny_end_to_end(tiny_calibset, tiny_model_path, tmp_path):
    _, cs_dir = tiny_calibset
    seen = []
    cal = calibrate(CalibrateConfig(calibration_set=str(cs_dir), trt_version="8.6.1"), tmp_path / "out",
                    progress=lambda f, m="": seen.append(f))
    assert cal.methods == METHODS and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    for rel in ("stats.npz", "stats.json", "calibration.json", "ranges/entropy.json", "ranges/mse.ort.json",
                "caches/percentile.cache"):
        assert (tmp_path / "out" / rel).is_file(), rel
    _check_calibration(cal, tiny_model_path)
    assert read_trt_cache(cal.cache_path("entropy")).version_code == 8601
    meta = cal.meta
    assert meta["calibration_set"]["dir"] == str(cs_dir) and meta["calibration_set"]["manifest_sha256"]
    assert meta["timings"]["stats_seconds"] > 0 and set(meta["methods"]) == set(METHODS)
    assert cal.stats.names == tuple(cal.ranges("entropy").amax)
    assert cal.summary()["tensors"] == len(cal.stats)
    loaded = Calibration.load(tmp_path / "out")
    assert loaded.ranges("mse") == cal.ranges("mse")


def test_calibrate_all_tensors_flags_nonfinite(tiny_calibset, tmp_path):
    _, cs_dir = tiny_calibset
    cal = calibrate(CalibrateConfig(calibration_set=str(cs_dir), methods=("minmax",), tensors="all",
                                    placement="all"), tmp_path / "out")
    assert "mask/where_out" in cal.meta["nonfinite"] and cal.meta["nonfinite"]["mask/where_out"]["neginf"] > 0
    assert "mask/where_out" in cal.meta["zero_range"]
    assert "mask/where_out" in cal.meta["methods"]["minmax"]["cache_omitted"]


def test_calibrate_rejects_bad_input_before_writing(tiny_calibset, tmp_path):
    _, cs_dir = tiny_calibset
    bad = [{"methods": ("kl",)}, {"percentile": 0.0}, {"trt_version": "9.0"}, {"tensors": "some"},
           {"histogram": "exact"}, {"placement": "none"}, {"methods": ()}]
    for extra in bad:
        with pytest.raises(InputError):
            calibrate(CalibrateConfig(calibration_set=str(cs_dir), **extra), tmp_path / "out")
    with pytest.raises(InputError):
        calibrate(CalibrateConfig(calibration_set=str(tmp_path / "nothing")), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_calibrate_and_ranges_diff(tiny_calibset, workspace, capsys):
    from calib.cli import main

    cs_id, _ = tiny_calibset
    root = str(workspace.root)
    assert main(["--workspace", root, "calibrate", "--calibration-set", cs_id, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "entropy vs minmax" in out and "TRT-100300-EntropyCalibration2" in out
    run_id = out.split()[1].rstrip(":")
    assert main(["--workspace", root, "ranges", "diff", f"{run_id}:minmax", f"{run_id}:entropy", "--top", "4"]) == 0
    diff = capsys.readouterr().out
    assert "B / A" in diff and len(diff.strip().splitlines()) == 1 + 2 + 4
    ranges_file = workspace.run_dir(run_id) / "ranges" / "mse.json"
    assert main(["--workspace", root, "ranges", "diff", str(ranges_file), run_id, "--method", "percentile"]) == 0
    assert main(["--workspace", root, "calibrate", "--calibration-set", cs_id, "--trt-version", "x"]) == 2


@pytest.mark.demo
def test_demo_entropy_within_minmax_and_cache_names(demo_workspace, tmp_path):
    from calib.inputs import demo_values
    from calib.workspace import Workspace

    ws = Workspace(demo_workspace)
    model, data = demo_values("rt-sentiment", ws.root).values()
    run_id = _assemble(ws, Path(model.model), Path(model.tokenizer), data.source, 64,
                       int(model.max_length), split=data.split, text_column=data.text_column,
                       label_column=data.label_column, labels=model.labels)
    cal = calibrate(CalibrateConfig(calibration_set=str(ws.run_dir(run_id))), tmp_path / "out")
    _check_calibration(cal, Path(model.model))
    entropy, minmax = cal.ranges("entropy"), cal.ranges("minmax")
    assert all(entropy.amax[n] <= minmax.amax[n] for n in minmax.amax)
    assert len(cal.stats) >= 6 * 7  # per layer: q/k/v inputs, probs, context, FFN in/out
    assert cal.meta["timings"]["calibrators_seconds"] < 5.0
