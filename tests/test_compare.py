"""Calibrators side by side (calib.compare) and ``calib validate --calibration RUN --method all``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calib.cli import main


@pytest.fixture()
def calibrated(tiny_model_path, tiny_tokenizer_dir, tiny_csv, tmp_path, capsys):
    """A workspace with a calibration run of the tiny model (entropy, minmax, percentile)."""
    ws = str(tmp_path / "ws")
    assert main(["--workspace", ws, "assemble", "--model", str(tiny_model_path), "--tokenizer", str(tiny_tokenizer_dir),
                 "--data", str(tiny_csv), "--max-length", "64", "--size", "32", "--strategy", "uniform"]) == 0
    assert main(["--workspace", ws, "calibrate", "--calibration-set", _last(ws, "calibset"),
                 "--method", "entropy", "minmax", "percentile"]) == 0
    capsys.readouterr()
    return ws, _last(ws, "calibrate")


def _last(ws: str, stage: str) -> str:
    from calib.workspace import Workspace

    return Workspace(ws).list_runs(stage=stage, limit=1)[0].id


def test_validate_every_method_side_by_side(calibrated, tiny_model_path, tiny_tokenizer_dir, tiny_csv, capsys):
    from calib.compare import CalibratorComparison
    from calib.workspace import Workspace

    ws, cal = calibrated
    common = ["--model", str(tiny_model_path), "--tokenizer", str(tiny_tokenizer_dir), "--data", str(tiny_csv),
              "--labels", "neg,pos", "--max-length", "64", "--limit", "60", "--bootstrap", "50", "--no-layers"]
    assert main(["--workspace", ws, "validate", "--calibration", cal, "--method", "all", *common,
                 "--min-agreement", "0.9", "--min-embedding-cosine", "none", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["calibrator"] for r in out["rows"]] == ["entropy", "minmax", "percentile"]
    assert all(r["verdict"] in ("PASS", "FAIL") for r in out["rows"])
    rec = out["recommendation"]
    comparison = CalibratorComparison.load(Workspace(ws).run_dir(out["run"]))
    assert comparison.data["budget"] == {"max_drop": 0.5, "min_agreement": 0.9, "min_embedding_cosine": None,
                                         "use_ci": False}
    # the recommendation: a passing method with the best agreement, else the closest one
    rows = comparison.data["rows"]
    passing = [r for r in rows if r["verdict"]["passed"]]
    best = max(passing or rows, key=lambda r: r["top1_agreement"])
    assert rec["passes"] == bool(passing) and rows[rec["index"]]["top1_agreement"] == best["top1_agreement"]
    assert comparison.evaluation_dirs()[0].parent.name == rec["name"]

    # the report of the comparison: the recommended method is the release candidate, every method is in the table
    assert main(["--workspace", ws, "report", "--comparison", out["run"]]) == 0
    text = capsys.readouterr().out
    assert "verdict: " in text and "reproduce: calib gate " in text
    report_json = next(line.strip() for line in text.splitlines() if line.strip().endswith("report.json"))
    data = json.loads(Path(report_json).read_text())
    assert data["build"]["calibrator"] == rec["name"]
    assert next(r["calibrator"] for r in data["comparison"]) == rec["name"] and len(data["comparison"]) == 3
    assert data["recommendation"]["name"] == rec["name"] and data["budget"] == comparison.data["budget"]
    assert all(r["run"].startswith(out["run"] + "/") for r in data["comparison"])

    # plain-text form names the table and the recommendation
    assert main(["--workspace", ws, "validate", "--calibration", cal, "--method", "minmax", "entropy", *common]) == 0
    text = capsys.readouterr().out
    assert ("Recommended: " in text) != ("comes closest" in text), text  # a recommendation, or why none passes
    assert "verdict" in text and "drop 95% CI" in text


def test_method_comparison_bad_input(calibrated, tiny_model_path, tiny_tokenizer_dir, tiny_csv, capsys):
    ws, cal = calibrated
    common = ["--model", str(tiny_model_path), "--tokenizer", str(tiny_tokenizer_dir), "--data", str(tiny_csv),
              "--labels", "neg,pos", "--max-length", "64"]
    assert main(["--workspace", ws, "validate", "--calibration", cal, "--method", "mse", *common]) == 2
    assert "has no ranges for mse" in capsys.readouterr().err
    assert main(["--workspace", ws, "validate", "--method", "all", *common]) == 2
    assert "--method needs --calibration" in capsys.readouterr().err
    assert main(["--workspace", ws, "validate", *common]) == 2
    assert "give --engine" in capsys.readouterr().err
    from calib.workspace import Workspace

    assert not [r for r in Workspace(ws).list_runs(stage="compare") if r.status == "finished"]


def test_validate_every_method_runs_where_cluster_says(calibrated, tiny_model_path, tiny_tokenizer_dir, tiny_csv,
                                                        monkeypatch):
    """--cluster reaches each method's evaluation in the side-by-side comparison too (it was silently dropped)."""
    import contextlib

    import calib.cli.validate as cli_validate
    import calib.pipeline

    seen = {}

    @contextlib.contextmanager
    def fake_cluster(args):
        yield "local:1"

    def capture(ws, stage, fn, config, **kw):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(cli_validate, "cluster_of", fake_cluster)
    monkeypatch.setattr(calib.pipeline, "run_stage", capture)
    ws, cal = calibrated
    with pytest.raises(SystemExit):
        main(["--workspace", ws, "validate", "--calibration", cal, "--method", "all", "--model", str(tiny_model_path),
              "--tokenizer", str(tiny_tokenizer_dir), "--data", str(tiny_csv), "--cluster", "local:1"])
    assert seen["config"].settings.cluster == "local:1"
