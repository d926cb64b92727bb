"""Calibration method ``auto``: per-tensor range chosen by the error at the consuming MatMul's output."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import tinymodel
from onnx import numpy_helper
from test_channel_stats import _real_rows

from calib.autorange import CANDIDATES, candidate_amax
from calib.batching import encode
from calib.errors import InputError
from calib.fakequant import output_error
from calib.methods import compute_ranges
from calib.model import load_tokenizer
from calib.placement import weighted_matmuls
from calib.ranges import Ranges, diff_ranges
from calib.stats import StatsConfig, collect_statistics
from tests.test_calibrate_demo import tiny_calibset  # noqa: F401 - fixture

LN = "embeddings/LayerNorm_out"


@pytest.fixture(scope="module")
def encoded(tiny_spec):
    texts, _ = tinymodel.make_texts(30, seed=2, max_words=12)
    return encode(load_tokenizer(tiny_spec.tokenizer_dir), texts, max_length=tiny_spec.max_length)


@pytest.fixture(scope="module")
def stats(tiny_spec, encoded):  # fewer real tokens than sample rows: the sample holds every token
    return collect_statistics(tiny_spec, encoded, config=StatsConfig(batch_size=8, sample_rows=512, outlier_rows=16))


def test_auto_picks_the_candidate_with_the_smallest_output_error(tiny_spec, stats, encoded):
    model = onnx.load(str(tiny_spec.onnx_path))
    ranges = compute_ranges(stats, "auto", model=model)
    readers = weighted_matmuls(model)
    for t in stats.tensors:
        choice = ranges.choices[t.name]
        if t.absmax == 0:
            continue
        cands = candidate_amax(t)
        assert ranges.amax[t.name] == cands[choice["method"]]
        errors = {n: c["error"] for n, c in choice["candidates"].items()}
        assert set(errors) == set(CANDIDATES) and choice["error"] == min(errors.values())
        expected = "matmul-output" if t.name in readers else "own-histogram"
        assert choice["criterion"] == expected, t.name
        if expected == "own-histogram":  # the own-error optimum among the candidates is MSE's
            assert errors["mse"] == min(errors.values())
    # with every token in the sample the estimate is the exact error over the calibration set
    rows = _real_rows(tiny_spec, encoded, LN).astype(np.float32)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    w = np.concatenate([inits[m.weight] for m in readers[LN]], axis=1).astype(np.float32)
    for name in ("minmax", "percentile-99.9"):
        exact = output_error(rows, w, candidate_amax(stats[LN])[name])
        assert ranges.choices[LN]["candidates"][name]["error"] == pytest.approx(exact, rel=1e-3)


def test_auto_needs_the_model_and_checks_its_parameters(stats):
    with pytest.raises(InputError, match="needs the model"):
        compute_ranges(stats, "auto")
    with pytest.raises(InputError, match="rows"):
        compute_ranges(stats, "auto", rows=0)
    with pytest.raises(InputError, match="calib calibrate --calibration-set"):
        compute_ranges(dataclasses.replace(stats, has_channels=False), "auto", model=onnx.ModelProto())


def test_choices_round_trip_and_show_in_diff(tiny_spec, stats, tmp_path):
    ranges = compute_ranges(stats, "auto", model=onnx.load(str(tiny_spec.onnx_path)))
    ranges.save(tmp_path / "auto.json")
    back = Ranges.load(tmp_path / "auto.json")
    assert back.choices == ranges.choices and back.amax == ranges.amax
    rows = diff_ranges(compute_ranges(stats, "minmax"), back)
    assert all(r["choice_a"] is None for r in rows) and rows[0]["choice_b"]["method"] in CANDIDATES


def test_cli_calibrate_auto_and_ranges_diff(tiny_calibset, workspace, capsys):  # noqa: F811
    from calib.calibrate import Calibration
    from calib.cli import main
    from calib.trtcache import read_trt_cache

    run_id, _ = tiny_calibset
    root = str(workspace.root)
    assert main(["--workspace", root, "calibrate", "--calibration-set", run_id, "--method", "minmax", "auto"]) == 0
    cal = Calibration.load(workspace.run_dir(workspace.find_run_id("latest", stage="calibrate")))
    assert cal.meta["methods"]["auto"]["chosen"] and read_trt_cache(cal.cache_path("auto")).algorithm == "MinMaxCalibration"
    capsys.readouterr()
    assert main(["--workspace", root, "ranges", "diff", "latest:minmax", "latest:auto"]) == 0
    out = capsys.readouterr().out
    assert "B chose (error)" in out and "matmul-output" in out
