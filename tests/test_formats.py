"""TensorRT calibration cache, ranges JSON, ONNX Runtime TensorsData JSON and range diffs."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from calib.errors import InputError, ModelMismatchError
from calib.ranges import Ranges, diff_ranges, load_ort_ranges
from calib.trtcache import (
    amax_to_scale,
    cache_text,
    header,
    hex_to_scale,
    parse_trt_cache,
    read_trt_cache,
    scale_to_hex,
    version_code,
    version_string,
    write_trt_cache,
)


def test_check_value_3c010204_is_amax_one():
    assert scale_to_hex(1.0 / 127) == "3c010204"
    assert hex_to_scale("3c010204") * 127 == pytest.approx(1.0, rel=1e-7)
    assert hex_to_scale("3c010204") == float(np.float32(1.0 / 127))


def test_short_hex_is_left_padded():
    assert hex_to_scale("1") == struct.unpack("!f", bytes.fromhex("00000001"))[0]
    assert hex_to_scale("3f800000") == 1.0
    with pytest.raises(InputError):
        hex_to_scale("xyz")
    with pytest.raises(InputError):
        hex_to_scale("123456789")


def test_version_codes_and_headers():
    assert version_code("8.6.1") == 8601 and version_code("10.3.0") == 100300 and version_code("10.13") == 101300
    assert version_string(8601) == "8.6.1" and version_string(100300) == "10.3.0"
    assert header("10.3.0", "EntropyCalibration2") == "TRT-100300-EntropyCalibration2"
    assert header("8.6.1", "MinMaxCalibration") == "TRT-8601-MinMaxCalibration"
    for bad in ("ten", "9.1.0", "8.10.0", "1"):
        with pytest.raises(InputError):
            version_code(bad)
    with pytest.raises(InputError):
        header("10.3.0", "Percentile")


def test_cache_round_trip_exact(tmp_path, rng):
    amax = {f"/encoder/layer.{i}/attention/self/MatMul_output_0": float(a)
            for i, a in enumerate(rng.uniform(1e-3, 300, 40))}
    amax["input:0"] = 1.0  # a colon inside a name
    amax["zero"] = 0.0
    amax["bad"] = math.inf
    path = tmp_path / "c.cache"
    omitted = write_trt_cache(path, amax, algorithm="EntropyCalibration2", trt_version="8.6.1")
    assert omitted == ["zero", "bad"]
    text = path.read_text()
    assert text.splitlines()[0] == "TRT-8601-EntropyCalibration2"
    assert "input:0: 3c010204" in text.splitlines()
    cache = read_trt_cache(path)
    assert cache.version_code == 8601 and cache.algorithm == "EntropyCalibration2" and cache.trt_version == "8.6.1"
    assert list(cache.scales) == [n for n in amax if n not in omitted]
    for name, scale in cache.scales.items():
        assert scale == amax_to_scale(amax[name])  # float32 scale reproduced bit for bit
    assert cache.text() == text  # write -> read -> write is byte identical
    assert parse_trt_cache(cache.text()).scales == cache.scales


def test_cache_parse_errors(tmp_path):
    with pytest.raises(InputError, match="header"):
        parse_trt_cache("hello\nx: 3c010204\n")
    with pytest.raises(InputError, match="line 2"):
        parse_trt_cache("TRT-100300-MinMaxCalibration\nx 3c010204\n")
    with pytest.raises(InputError, match="does not exist"):
        read_trt_cache(tmp_path / "missing.cache")
    text, _ = cache_text({"a": 2.0}, algorithm="MinMaxCalibration")
    assert text == f"TRT-100300-MinMaxCalibration\na: {scale_to_hex(np.float32(2.0 / 127))}\n"


def ranges(method="entropy", sha="abc", **amax) -> Ranges:
    return Ranges(method=method, params={}, model_sha256=sha, amax=dict(amax), flags={"z": {"zero_range": True}} if "z" in amax else {})


def test_ranges_json_round_trip(tmp_path):
    r = Ranges(method="percentile", params={"percentile": 99.99}, model_sha256="abc",
               amax={"a": 1.2345678901234567, "b": 0.0}, flags={"b": {"zero_range": True}})
    r.save(tmp_path / "r.json")
    back = Ranges.load(tmp_path / "r.json")
    assert back == r
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(InputError):
        Ranges.load(tmp_path / "bad.json")


def test_ort_tensors_data_json(tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, load_tensors_data

    r = ranges(a=2.5, b=0.125, z=0.0)
    r.save_ort(tmp_path / "r.ort.json")
    td = load_tensors_data(tmp_path / "r.ort.json")
    assert td.calibration_method == CalibrationMethod.MinMax
    assert set(td.data) == {"a", "b"}  # zero ranges are left to the quantizer's defaults
    lo, hi = td["a"].range_value
    assert lo.dtype == np.float32 and float(lo) == -2.5 and float(hi) == 2.5
    assert load_ort_ranges(tmp_path / "r.ort.json") == {"a": (-2.5, 2.5), "b": (-0.125, 0.125)}


def test_diff_ranges_biggest_changes_first():
    a = ranges("minmax", a=1.0, b=4.0, c=2.0, d=0.0, only_a=1.0)
    b = ranges("entropy", a=1.0, b=1.0, c=2.5, d=0.0, only_b=3.0)
    rows = diff_ranges(a, b)
    assert [r["tensor"] for r in rows[:2]] == ["only_a", "only_b"]
    assert [r["tensor"] for r in rows[2:]] == ["b", "c", "a", "d"]
    assert rows[2]["ratio"] == 0.25 and rows[2]["log2_ratio"] == -2.0
    assert rows[3]["ratio"] == 1.25 and rows[-1]["ratio"] == 1.0
    with pytest.raises(ModelMismatchError):
        diff_ranges(a, ranges("entropy", sha="other", a=1.0))
