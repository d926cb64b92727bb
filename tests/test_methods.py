"""The calibration-method registry: one entry defines a method everywhere (ranges, caches, CLI, config)."""

from __future__ import annotations

import numpy as np
import pytest

from calib import methods
from calib.calibrate import CalibrateConfig, Calibration, calibrate
from calib.errors import InputError
from calib.methods import CalibrationMethod, compute_ranges, register, tensor_amax
from calib.ranges import Ranges
from calib.stats import ActivationStats, tensor_stats_from_arrays
from calib.trtcache import read_trt_cache
from tests.test_calibrate_demo import tiny_calibset  # noqa: F401 - fixture


def _fraction_of_absmax(stats, *, fraction: float) -> float:
    return fraction * stats.absmax


def _check_fraction(params) -> None:
    if not 0 < params["fraction"] <= 1:
        raise InputError(f"fraction must be in (0, 1], got {params['fraction']}")


@pytest.fixture()
def toy_method():
    entry = register(CalibrationMethod("toy", _fraction_of_absmax, defaults={"fraction": 0.5}, check=_check_fraction,
                                       default_run=False, description="a fraction of absmax (test)"))
    yield entry
    methods.unregister("toy")


def test_builtin_entries_and_defaults():
    assert methods.method_names()[:4] == ("entropy", "minmax", "percentile", "mse")
    assert methods.cache_algorithm("entropy") == "EntropyCalibration2"
    assert {methods.cache_algorithm(m) for m in ("minmax", "percentile", "mse")} == {"MinMaxCalibration"}
    assert methods.get_method("percentile").defaults["percentile"] == 99.999
    assert CalibrateConfig("x").percentile == 99.999
    assert CalibrateConfig("x").method_params("percentile") == {"percentile": 99.999}
    assert CalibrateConfig("x", params={"percentile": {"percentile": 99.9}}).method_params("percentile") == {"percentile": 99.9}
    assert CalibrateConfig("x", entropy_damp_zero_bin=False).method_params("entropy")["damp_zero_bin"] is False


def test_bad_method_and_parameters_are_one_line_errors():
    st = tensor_stats_from_arrays("a", np.linspace(-1, 1, 101, dtype=np.float32))
    for call in (lambda: tensor_amax(st, "kl"), lambda: tensor_amax(st, "percentile", {"percentile": 0}),
                 lambda: tensor_amax(st, "percentile", {"pct": 99}), lambda: tensor_amax(st, "entropy", {"levels": 1}),
                 lambda: tensor_amax(st, "percentile", {"percentile": "high"}),
                 lambda: register(CalibrationMethod("minmax", _fraction_of_absmax)),
                 lambda: register(CalibrationMethod("bad name", _fraction_of_absmax))):
        with pytest.raises(InputError) as info:
            call()
        assert "\n" not in str(info.value)


def test_toy_calibrator_flows_through_ranges(toy_method):
    st = tensor_stats_from_arrays("a", np.array([0.5, -4.0, 2.0], np.float32))
    stats = ActivationStats("sha", (st,), 4096, "stream", 1, 1, 1, 0.0)
    assert tensor_amax(st, "toy") == 2.0
    r = compute_ranges(stats, "toy", fraction=0.25)
    assert r.amax == {"a": 1.0} and r.params == {"fraction": 0.25} and r.method == "toy"
    assert "toy" not in methods.default_methods() and "toy" in methods.method_names()
    with pytest.raises(InputError):
        compute_ranges(stats, "toy", fraction=2.0)


def test_toy_calibrator_flows_through_calibrate_and_the_cli(toy_method, tiny_calibset, tmp_path, workspace):  # noqa: F811
    run_id, cs_dir = tiny_calibset
    config = CalibrateConfig(calibration_set=str(cs_dir), methods=("minmax", "toy"), params={"toy": {"fraction": 0.25}})
    cal = calibrate(config, tmp_path / "out")
    minmax, toy = cal.ranges("minmax"), cal.ranges("toy")
    assert toy.params == {"fraction": 0.25}
    assert toy.amax == {n: pytest.approx(0.25 * a) for n, a in minmax.amax.items()}
    assert Ranges.load(tmp_path / "out" / "ranges" / "toy.json").amax == toy.amax
    cache = read_trt_cache(cal.cache_path("toy"))
    assert cache.algorithm == "MinMaxCalibration" and cache.scales
    assert cal.meta["methods"]["toy"]["params"] == {"fraction": 0.25}
    with pytest.raises(InputError):  # parameters for a method that is not run
        calibrate(CalibrateConfig(calibration_set=str(cs_dir), methods=("minmax",), params={"toy": {}}), tmp_path / "x")
    assert not (tmp_path / "x").exists()

    from calib.cli import main

    assert main(["--workspace", str(workspace.root), "calibrate", "--calibration-set", run_id, "--method", "toy"]) == 0
    # a new calibrator's parameters are set from the CLI without a new option
    assert main(["--workspace", str(workspace.root), "calibrate", "--calibration-set", run_id, "--method", "toy",
                 "--param", "toy.fraction=0.5", "--label", "half"]) == 0
    assert Calibration.load(workspace.run_dir(workspace.find_run_id("latest:half"))).ranges("toy").params == {"fraction": 0.5}
    assert main(["--workspace", str(workspace.root), "calibrate", "--calibration-set", run_id, "--method", "toy",
                 "--param", "toy.fraction=2"]) != 0  # the method's own check refuses it
    assert main(["--workspace", str(workspace.root), "calibrate", "--calibration-set", run_id, "--method", "toy",
                 "--param", "fraction=0.5"]) != 0  # no METHOD.


def test_the_apps_parameter_controls_come_from_the_registry(toy_method):
    """The Calibrate page shows one control per parameter of each chosen method, the toy one's too,
    and passes on only the changed values, checked by the method itself."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
    from lib.calibrator_view import changed_params, param_controls, read_text

    controls = param_controls(["minmax", "toy", "entropy"])
    assert [(c.method, c.name, c.kind) for c in controls] == [
        ("toy", "fraction", "float"), ("entropy", "levels", "int"), ("entropy", "damp_zero_bin", "bool")]
    fraction, levels, damp = controls
    assert changed_params({fraction: 0.5, levels: levels.default, damp: True}) == {}
    assert changed_params({fraction: 0.25, levels: levels.default, damp: False}) == {
        "toy": {"fraction": 0.25}, "entropy": {"damp_zero_bin": False}}
    with pytest.raises(InputError, match="fraction must be in"):
        changed_params({fraction: 2.0})
    assert read_text("[1, 2]") == [1, 2] and read_text("abc") == "abc"
