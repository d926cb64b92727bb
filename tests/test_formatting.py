"""calib.formatting: the one number formatter (its docstring examples are run here too)."""

from __future__ import annotations

import doctest
import json
import random

import numpy as np
import pytest

from calib import formatting as fmt


def test_docstring_examples_hold():
    result = doctest.testmod(fmt, verbose=False)
    assert result.attempted >= 15
    assert result.failed == 0


@pytest.mark.parametrize("noisy", [0.40000000000000036, 1.2500000000000067, 0.1 + 0.2, 97.24999999999999,
                                   -0.39062500000000355, 1e-17])
def test_no_float_noise_anywhere(noisy):
    texts = [fmt.number(noisy), fmt.points(noisy), fmt.percent(noisy / 100), fmt.ratio(noisy),
             fmt.signed(noisy), fmt.cell(noisy), fmt.seconds(abs(noisy)), fmt.factor(noisy)]
    for text in texts:
        digits = "".join(ch for ch in text if ch.isdigit())
        assert len(digits) <= 6, text
    dumped = json.dumps(fmt.clean({"x": noisy}))
    assert "0000000" not in dumped and "9999999" not in dumped


def test_random_values_never_show_long_digit_runs():
    rng = random.Random(0)
    for _ in range(2000):
        x = rng.uniform(-200, 200) * rng.choice([1e-3, 1, 1e3])
        for text in (fmt.number(x), fmt.points(x), fmt.percent(x / 100), fmt.ratio(x / 200), fmt.size(abs(x) * 1e6)):
            assert len(text) < 16, text


def test_points_are_signed_with_two_decimals_and_zero_unsigned():
    assert fmt.points(1.25) == "+1.25 pts"
    assert fmt.points(-0.004) == "0.00 pts"
    assert fmt.points(0.005001) == "+0.01 pts"
    assert fmt.points(float("inf")) == "inf pts"


def test_percent_and_ratio_units():
    assert fmt.percent(0.9725) == "97.25 %"
    assert fmt.percent(0.5, 0) == "50 %"
    assert fmt.percent(0.9725, unit=False) == "97.25"
    assert fmt.ratio(0.999996) == "1.0000"
    assert fmt.ratio(np.float32(0.5)) == "0.5000"


def test_seconds_and_size_humanised():
    assert fmt.seconds(0) == "0 ms"
    assert fmt.seconds(59.96) == "60.0 s"
    assert fmt.seconds(60) == "1 min"
    assert fmt.seconds(7 * 3600) == "7 h 00 min"
    assert fmt.size(0) == "0 B"
    assert fmt.size(1023) == "1023 B"
    assert fmt.size(1024) == "1.0 KB"
    assert fmt.size(5 * 2**40) == "5.0 TB"
    assert fmt.size(2**60) == f"{2**20:.1f} TB"


def test_clean_handles_numpy_and_nested_containers_without_mutating():
    data = {"a": [np.float32(0.1), np.int64(3), (0.1 + 0.2,)], "b": float("nan"), "c": "text", "d": True}
    cleaned = fmt.clean(data)
    assert cleaned == {"a": [0.1, 3, [0.3]], "b": None, "c": "text", "d": True}
    assert isinstance(data["a"][0], np.float32)
    json.dumps(cleaned)


def test_headline_per_stage():
    assert fmt.headline("validate", {"accuracy_drop_points": -0.5, "top1_agreement": 0.9876}) == \
        "drop -0.50 pts, agreement 98.76 %"
    assert fmt.headline("validate", {"top1_agreement": 0.99, "embedding_cosine": 0.998}) == \
        "agreement 99.00 %, cosine 0.9980"
    assert fmt.headline("report", {"accuracy_drop_points": None, "top1_agreement": None}) == ""
    assert fmt.headline("sensitivity", {"exclusions": 3, "accuracy_drop_points": 0.2, "top1_agreement": 0.99}) == \
        "3 in float, drop +0.20 pts, agreement 99.00 %"
    assert fmt.headline("sensitivity", {"exclude_nodes": 2, "top1_agreement": 0.99}) == "2 in float, agreement 99.00 %"
    assert fmt.headline("calibset", {"size": 1200, "ks": 0.1, "warnings": 2}) == "1,200 texts, KS 0.1000, 2 warnings"
    assert fmt.headline("calibrate", {"tensors": 85, "methods": ["entropy", "minmax"], "stats_seconds": 13.04}) == \
        "85 tensors, entropy, minmax, stats 13.0 s"
    assert fmt.headline("build", {"quantized_nodes": 36, "excluded_nodes": 2, "method": "entropy"}) == \
        "36 nodes INT8, 2 in float, entropy"
    assert fmt.headline("bench", {}) == ""
    assert fmt.headline("head", {"classes": 5, "C": 1.0, "cv_accuracy": 0.9712, "rows": 900}) == \
        "5 classes, CV accuracy 97.12 %"
    assert fmt.headline("compare", {"recommended": "minmax", "recommended_passes": True, "methods": ["a", "b", "c"],
                                    "passing": ["minmax"]}) == "recommends minmax, 1 of 3 pass"
    assert fmt.headline("compare", {"recommended": "mse", "recommended_passes": False, "methods": ["mse"],
                                    "passing": []}) == "none passes, closest mse, 0 of 1 pass"
    assert fmt.headline("unknown-stage", {"x": 1}) == ""


def test_app_pages_format_percentages_and_points_through_calib_formatting():
    """One number formatter for CLI, app and reports: no page multiplies by 100 and formats by hand."""
    import re
    from pathlib import Path

    app = Path(__file__).resolve().parent.parent / "app"
    by_hand = re.compile(r"\*\s*100\s*:\s*\+?\.\d+f\}")
    found = [f"{path.relative_to(app)}:{n}" for path in sorted(app.rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if by_hand.search(line)]
    assert not found, f"format with calib.formatting.percent / points instead: {found}"
