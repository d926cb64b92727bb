"""Artifacts written by calib 0.1 (commit 7b17aef) on the tiny test model, read with today's typed API.

tests/fixtures/v1/bench is a ``calib bench`` run folder (``bench.json``) written by that commit's CLI:
assemble (32 texts of tests/tinymodel.make_texts(240, seed=1), max length 64) -> calibrate (minmax,
percentile) -> build (percentile) -> ``calib bench --max-texts 16 --batch-size 1 8 --repeats 1
--threads 1``. Its absolute paths point at the scratch folder it was generated in (/tmp/gen01b); nothing
here opens them.

0.1 had no calibrator-comparison stage (``calib validate --method all``, calib.compare) and no
classifier-head stage (``calib head fit``, calib.head): both came later (94776df and 6180f26), so there
is no 0.1 artifact of either to read and no fixture for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
BENCH = FIXTURES / "bench"


def _raw_bench() -> dict:
    return json.loads((BENCH / "bench.json").read_text())


def test_the_bench_fixture_is_in_0_1s_layout():
    """Guards the fixture itself: 0.1 wrote a flat config (tokenizer, max_length, max_texts beside the
    engine; no model part) and rows without today's per-pass spread."""
    raw = _raw_bench()
    assert raw["format"] == "calib.bench/1"
    assert {"tokenizer", "max_length", "max_texts", "data", "split", "text_column"} <= set(raw["config"])
    assert "model" not in raw["config"] and "limit" not in raw["config"]
    assert raw["rows"] and all("pass_spread" not in r for r in raw["rows"])


def test_bench_result_of_0_1_loads_with_todays_accessors():
    from calib.bench import BenchResult

    raw = _raw_bench()
    result = BenchResult.load(BENCH)
    assert result.rows == raw["rows"]
    assert result.batch_sizes == tuple(raw["config"]["batch_sizes"]) == (1, 8)
    assert result.repeats == raw["config"]["repeats"] == 1
    assert result.sizes_mb == pytest.approx(raw["sizes"])
    assert set(result.sizes_mb) == {"fp32_model_mb", "qdq_model_mb", "int8_weights_mb"}
    assert result.lengths == raw["lengths"]
    assert result.lengths["p50"] <= result.lengths["p95"] <= result.lengths["max"] <= raw["config"]["max_length"]

    # the speed-ups, recomputed from the raw rows
    throughput = {(r["kind"], r["batch_size"]): r["texts_per_s"] for r in raw["rows"]}
    expected = {b: throughput["int8", b] / throughput["fp32", b] for b in raw["config"]["batch_sizes"]}
    assert result.speedups() == pytest.approx(expected)
    assert set(result.speedups()) == {1, 8}
    for b, s in expected.items():
        assert result.speedup(b) == pytest.approx(s)
    assert result.speedup(16) is None  # not measured
    assert result.summary() == {f"speedup_b{b}": round(s, 3) for b, s in expected.items()}

    # every row names one of the two engines and ran all the texts
    assert {r["kind"] for r in result.rows} == {"fp32", "int8"}
    assert all(r["texts"] == raw["config"]["max_texts"] for r in result.rows)


def test_bench_config_of_0_1_reads_as_todays_bench_config():
    from calib.bench import BenchConfig
    from calib.pipeline import config_from_params, config_params

    raw = _raw_bench()["config"]
    config = config_from_params(BenchConfig, raw)
    assert config.engine == raw["engine"]
    assert config.model.tokenizer == raw["tokenizer"]
    assert config.model.max_length == raw["max_length"] == 64
    assert config.model.model == ""  # 0.1 benchmarked against the build's own FP32 model
    assert config.limit == raw["max_texts"] == 16
    assert config.data.source == raw["data"]
    assert config.data.split == raw["split"]
    assert config.data.text_column == raw["text_column"]
    assert config.data.workspace == raw["workspace"]
    assert config.batch_sizes == tuple(raw["batch_sizes"])
    assert config.repeats == raw["repeats"] and config.threads == raw["threads"]
    # and once read, it is written and read back in today's layout unchanged
    assert config_from_params(BenchConfig, config_params(config)) == config
