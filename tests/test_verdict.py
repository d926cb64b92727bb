"""Release budget, verdict, recommendation among candidates and the eval-set resolution warning."""

from __future__ import annotations

import pytest

from calib.errors import InputError
from calib.verdict import (
    ReleaseBudget,
    Verdict,
    default_budget,
    gate_command,
    judge,
    mean_interval,
    proportion_interval,
    recommend,
    resolution_warning,
    texts_needed,
)

HEAD = {"labelled": True, "rows": 1000, "accuracy_drop_points": 0.3, "drop_ci_low_points": -0.9,
        "drop_ci_high_points": 1.4, "top1_agreement": 0.89, "embedding_cosine": 0.995}


def test_each_criterion_has_threshold_value_and_status():
    v = judge(HEAD, ReleaseBudget(max_drop=0.5, min_agreement=0.99, min_embedding_cosine=0.99))
    assert not v.passed and v.status == "FAIL"
    by_name = {c.name: c for c in v.criteria}
    assert [c.name for c in v.criteria] == ["max_drop", "min_agreement", "min_embedding_cosine"]
    assert by_name["max_drop"].passed and by_name["max_drop"].value == 0.3 and by_name["max_drop"].threshold == 0.5
    assert not by_name["min_agreement"].passed and by_name["min_agreement"].status == "FAIL"
    assert by_name["min_embedding_cosine"].passed
    assert v.reason == "FAIL: top-1 agreement 0.8900 < 0.99"  # only the failed criteria
    ok = judge(HEAD, ReleaseBudget(max_drop=0.5, min_agreement=0.85, min_embedding_cosine=None))
    assert ok.passed and ok.reason.startswith("PASS: accuracy drop 0.30 points <= budget 0.5")


def test_upper_interval_bound_is_its_own_criterion():
    v = judge(HEAD, ReleaseBudget(max_drop=1.0, min_agreement=None, min_embedding_cosine=None, use_ci=True))
    assert [(c.name, c.passed) for c in v.criteria] == [("max_drop", True), ("max_drop_ci", False)]
    assert v.criteria[1].value == 1.4
    # an older report with only the INT8 − FP32 interval: the drop's upper bound is −low
    old = {"labelled": True, "accuracy_drop_points": 0.3, "ci_low_points": -0.8, "ci_high_points": 0.2,
           "top1_agreement": 1.0}
    assert judge(old, ReleaseBudget(max_drop=1.0, use_ci=True, min_embedding_cosine=None)).passed


def test_unmeasurable_criteria_fail_with_the_reason():
    unlabelled = {"labelled": False, "rows": 50, "accuracy_drop_points": None, "top1_agreement": 1.0,
                  "embedding_cosine": None}
    v = judge(unlabelled, ReleaseBudget())
    assert not v.passed
    assert "no accuracy" in v.criteria[0].detail and v.criteria[0].value is None
    assert "no embedding output" in v.criteria[-1].detail
    assert judge(unlabelled, default_budget(has_embedding=False, labelled=False)).passed
    with pytest.raises(InputError):
        judge(HEAD, ReleaseBudget(max_drop=None, min_agreement=None, min_embedding_cosine=None))


def test_budget_round_trip_flags_and_gate_command():
    b = ReleaseBudget(max_drop=0.25, min_agreement=0.995, min_embedding_cosine=None, use_ci=True)
    assert ReleaseBudget.from_dict(b.to_dict()) == b
    assert ReleaseBudget.from_dict(None) == ReleaseBudget()
    assert ReleaseBudget.from_dict({"max_drop": "1", "unknown": 3}).max_drop == 1.0
    assert gate_command("report.json", b) == "calib gate report.json --max-drop 0.25 --min-agreement 0.995 --use-ci"
    assert b.describe() == "drop ≤ 0.25 pts (upper 95 % bound too), agreement ≥ 0.995"
    v = judge(HEAD, b)
    assert Verdict.from_dict(v.to_dict()) == v
    with pytest.raises(InputError):
        ReleaseBudget(max_drop=-1)
    with pytest.raises(InputError):
        ReleaseBudget(max_drop=None, use_ci=True)


def test_resolution_warning_gives_the_size_that_would_do():
    budget = ReleaseBudget(max_drop=0.5)
    text = resolution_warning({**HEAD, "drop_ci_low_points": -1.5, "drop_ci_high_points": 2.5}, budget)
    # ±2 points on 1,000 texts; intervals shrink as 1/sqrt(n): 1000 × (2 / 0.5)² = 16,000
    assert text == ("1,000 texts cannot show a 0.5-point drop: the 95 % interval of the drop is ±2.00 points; "
                    "about 16,000 texts would narrow it to ±0.5")
    assert texts_needed(1000, 2.0, 0.5) == 16000
    assert resolution_warning({**HEAD, "drop_ci_low_points": 0.1, "drop_ci_high_points": 0.5}, budget) is None
    assert resolution_warning({**HEAD, "labelled": False}, budget) is None


def test_recommend_prefers_passing_then_agreement_and_says_when_entropy_is_not_best():
    rows = [{"calibrator": "entropy", "labelled": True, "accuracy_drop_points": 0.6, "top1_agreement": 0.89,
             "embedding_cosine": 0.91},
            {"calibrator": "minmax", "labelled": True, "accuracy_drop_points": 0.0, "top1_agreement": 0.95,
             "embedding_cosine": 0.978},
            {"calibrator": "mse", "labelled": True, "accuracy_drop_points": 0.2, "top1_agreement": 0.954,
             "embedding_cosine": 0.983}]
    strict = ReleaseBudget(max_drop=0.5, min_agreement=0.99, min_embedding_cosine=0.99)
    rec = recommend(rows, strict)
    assert rec.index == 2 and rec.name == "mse" and not rec.passes
    assert rec.reason.startswith("none of the 3 passes the budget") and "mse comes closest" in rec.reason
    # a failing candidate is never announced as "recommended" (the banner and the sentence say none passes)
    assert rec.headline == "none passes · closest: mse" and "recommended" not in rec.headline
    assert rec.sentence.startswith("None of the 3 passes the budget") and not rec.sentence.startswith("Recommended")
    assert "TensorRT's default calibrator (entropy) is not the best choice" in rec.default_note
    loose = ReleaseBudget(max_drop=0.1, min_agreement=0.9, min_embedding_cosine=None)
    rec = recommend(rows, loose)  # mse has the better agreement but fails the drop
    assert rec.name == "minmax" and rec.passes and "passes the budget" in rec.reason
    assert rec.headline == "recommended: minmax" and rec.sentence.startswith("Recommended: minmax: passes the budget")
    assert recommend(rows[:1], strict).default_note == ""
    with pytest.raises(InputError):
        recommend([], strict)


def test_proportion_interval():
    low, high = proportion_interval(0.89, 1000)
    assert low < 0.89 < high and high - low == pytest.approx(2 * 1.96 * (0.89 * 0.11 / 1000) ** 0.5, rel=0.02)
    assert proportion_interval(1.0, 50)[1] == 1.0 and proportion_interval(1.0, 50)[0] > 0.9
    assert proportion_interval(None, 10) is None and proportion_interval(0.5, 0) is None


def test_mean_interval():
    low, high = mean_interval([0.9, 1.0] * 50)
    assert low < 0.95 < high and high - low == pytest.approx(2 * 1.96 * 0.05025 / 10, rel=0.01)
    assert mean_interval([0.5]) is None


def test_validate_page_judges_the_newer_of_validation_and_comparison():
    """The Verdict section of the Validate page is about what was validated last: a side-by-side comparison
    that finished after the picked validation run is judged (and vice versa); either alone is judged."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
    from lib.runs import verdict_subject

    validation = SimpleNamespace(stage="validate", created_at="2026-12-06T01:00:00", finished_at="2026-12-06T01:05:00")
    comparison = SimpleNamespace(stage="compare", created_at="2026-12-06T01:02:00", finished_at="2026-12-06T01:09:00")
    assert verdict_subject(validation, comparison) is comparison
    older = SimpleNamespace(stage="compare", created_at="2026-12-06T00:00:00", finished_at="2026-12-06T00:30:00")
    assert verdict_subject(validation, older) is validation
    assert verdict_subject(None, comparison) is comparison and verdict_subject(validation, None) is validation
    assert verdict_subject(None, None) is None


def test_bucket_tables_of_the_validate_page():
    """The Validate page's per-bucket tables: empty and few-text buckets are marked and hold no figures;
    the drop interval is shown in the drop's own convention (FP32 − INT8)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
    from lib.verdict_view import bucket_frame, embedding_bucket_frame

    from calib import formatting as fmt
    from calib.evaluation import BucketFigures

    full = {"n": 200, "agreement": {"top1_agreement": 0.99}, "fp32": {"accuracy": 0.9}, "int8": {"accuracy": 0.88},
            "accuracy_drop_points": 2.0, "accuracy_diff_ci": {"low": -0.035, "high": -0.005}}
    few = {**full, "n": 5}
    empty = {"n": 0}
    buckets = [BucketFigures("0-63", 0, 64, full), BucketFigures("64-127", 64, 128, few),
               BucketFigures("128+", 128, None, empty)]
    frame = bucket_frame(buckets, labelled=True)
    assert list(frame["bucket"]) == ["0-63", "64-127 (few texts)", "128+ (empty)"]
    assert list(frame["few"]) == [False, True, True]
    assert frame["drop (pts)"][0] == 2.0 and frame["INT8 accuracy"][0] == 0.88
    assert list(frame["drop 95 % CI (pts)"]) == ["[+0.50, +3.50]", "[+0.50, +3.50]", fmt.MISSING]
    assert frame["agreement"].isna()[2] and frame["drop (pts)"].isna()[2]
    assert "drop (pts)" not in bucket_frame(buckets, labelled=False)
    emb = embedding_bucket_frame([BucketFigures("0-63", 0, 64, {"n": 3, "embedding_cosine": {"mean": 0.98},
                                                                    "neighbours": {"k": 5, "recall_at_k": 0.9}})])
    assert emb.to_dict("records") == [{"bucket": "0-63", "texts": 3, "cosine": 0.98, "recall@k": 0.9, "spearman": None}]


def test_sensitivity_view_reads_the_typed_result(tmp_path):
    """The Validate page's sensitivity table: rank order, node counts, which units the recommendation
    keeps in float, and the agreement gain (None without logits)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
    from lib.sensitivity_view import agreement_gain_points, ranking_frame

    from calib.sensitivity import SCHEMA, SensitivityResult

    data = {"schema": SCHEMA, "model": {"sha256": "x"}, "ranking_method": "local", "evaluations_used": 3,
            "budget": {"max_evaluations": 8},
            "baseline": {"top1_agreement": 0.9, "excluded": []},
            "recommended": {"top1_agreement": 0.995, "passes": True, "units": ["b"], "exclude_nodes": ["b/MatMul"],
                            "note": "ok"},
            "ranking": [{"unit": "b", "nodes": ["b/MatMul", "b/Add"], "score": 2.0, "kl_share": 0.7},
                        {"unit": "a", "nodes": ["a/MatMul"], "score": 1.0}]}
    (tmp_path / "sensitivity.json").write_text(json.dumps(data))
    sens = SensitivityResult.load(tmp_path)
    frame = ranking_frame(sens)
    assert frame.to_dict("records") == [{"rank": 1, "unit": "b", "score": 2.0, "nodes": 2, "recommended": True},
                                        {"rank": 2, "unit": "a", "score": 1.0, "nodes": 1, "recommended": False}]
    assert abs(agreement_gain_points(sens) - 9.5) < 1e-9
    assert sens.ranking[0].to_dict() == data["ranking"][0]  # the measured detail survives the typed read
    assert sens.exclusions == ("b/MatMul",) and sens.found and sens.max_evaluations == 8
    data["baseline"]["top1_agreement"] = None  # an embedding model
    (tmp_path / "sensitivity.json").write_text(json.dumps(data))
    assert agreement_gain_points(SensitivityResult.load(tmp_path)) is None


def test_one_default_budget_for_every_kind_of_model():
    """The report, the app's project and the search take the default from calib.verdict.default_budget."""
    from calib.sensitivity import DEFAULT_EMBEDDING_COSINE
    from calib.verdict import ReleaseBudget, default_budget

    assert default_budget(has_logits=False) == ReleaseBudget(max_drop=None, min_agreement=None,
                                                             min_embedding_cosine=DEFAULT_EMBEDDING_COSINE)
    assert default_budget(has_embedding=False, labelled=False) == ReleaseBudget(max_drop=None, min_agreement=0.99,
                                                                                min_embedding_cosine=None)
    assert default_budget() == ReleaseBudget()


def test_a_search_candidate_is_judged_on_what_it_measured():
    """meets() is judge() on the criteria a candidate has figures for; a release verdict fails the others."""
    from calib.verdict import ReleaseBudget, judge, measured_budget, meets

    budget = ReleaseBudget(max_drop=0.5, min_agreement=0.99, min_embedding_cosine=0.99)
    embedding_only = {"embedding_cosine": 0.995}
    assert measured_budget(embedding_only, budget) == ReleaseBudget(None, None, 0.99)
    assert meets(embedding_only, budget) and not judge(embedding_only, budget).passed
    unlabelled = {"top1_agreement": 0.98, "accuracy_drop_points": None, "embedding_cosine": 0.999}
    assert not meets(unlabelled, budget) and meets({**unlabelled, "top1_agreement": 0.99}, budget)
    assert meets({"accuracy_drop_points": 0.5 + 1e-12, "top1_agreement": 1.0}, ReleaseBudget(0.5, None, None))
    assert not meets({"accuracy_drop_points": 0.6, "top1_agreement": 1.0}, ReleaseBudget(0.5, None, None))
    assert not meets({"embedding_cosine": float("nan")}, budget)  # a broken candidate is never within budget
    assert meets({}, budget)  # nothing measured, nothing to check
    with_ci = ReleaseBudget(max_drop=0.5, min_agreement=None, min_embedding_cosine=None, use_ci=True)
    assert measured_budget({"accuracy_drop_points": 0.1}, with_ci).use_ci is False
    assert not meets({"accuracy_drop_points": 0.1, "drop_ci_high_points": 0.8}, with_ci)
