"""Report rendering (HTML self-contained, Markdown tables, JSON schema), comparison and the gate."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import tinymodel
from test_validate import absmax_ranges, vconfig

from calib.errors import InputError, ModelMismatchError


@pytest.fixture(scope="module")
def evaluations(tiny_spec, tiny_csv, tmp_path_factory):
    """Two evaluations of the tiny model (tensorrt and all placements) and one without labels."""
    from calib.placement import Placement
    from calib.quantize import quantize_qdq
    from calib.validate import validate

    root = tmp_path_factory.mktemp("evals")
    texts, _ = tinymodel.make_texts(64, seed=3)
    out = []
    for preset in ("tensorrt", "all"):
        amax = absmax_ranges(tiny_spec, texts, preset)
        quantize_qdq(tiny_spec.onnx_path, amax, Placement(preset), root / f"{preset}.onnx")
        out.append(validate(vconfig(tiny_spec, root / f"{preset}.onnx", tiny_csv, limit=80, bootstrap=100), root / preset))
    pd.DataFrame({"text": texts}).to_csv(root / "nolabels.csv", index=False)
    out.append(validate(vconfig(tiny_spec, root / "tensorrt.onnx", root / "nolabels.csv", layers=False), root / "nolabels"))
    return out


def test_report_three_forms(evaluations, tmp_path):
    from calib.report import SCHEMA, Report, ReportConfig, make_report

    rep = make_report(ReportConfig(evaluations=(str(evaluations[0].dir), str(evaluations[1].dir))), tmp_path / "r")
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["schema"] == SCHEMA == "calib.report/1"
    assert Report.load(tmp_path / "r").data == rep.data == data
    assert data["model"]["sha256"] and data["dataset"]["fingerprint"]
    assert data["environment"]["libraries"]["onnxruntime"] and data["environment"]["machine"]["cpu_count"]
    assert len(data["comparison"]) == 2 and all(r["rows"] == 80 for r in data["comparison"])
    assert [b["bucket"] for b in data["buckets"]] == ["0-7", "8-15", "16-31", "32+"]

    page = (tmp_path / "r" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 4
    assert not re.search(r"(?:src|href)\s*=|https?://|//cdn|<script|@import|url\(", page, re.IGNORECASE)
    assert data["model"]["sha256"] in page and "Per length bucket" in page

    md = (tmp_path / "r" / "report.md").read_text()
    assert "| bucket | n | acc FP32 | acc INT8 |" in md
    assert re.search(r"^\|---\|---:\|", md, re.MULTILINE)
    assert "## Runs compared" in md and data["model"]["sha256"] in md


def test_agreement_only_report_says_so(evaluations, tmp_path):
    from calib.gate import check_gate
    from calib.report import ReportConfig, make_report

    rep = make_report(ReportConfig(evaluations=(str(evaluations[2].dir),)), tmp_path / "r")
    assert not rep.data["headline"]["labelled"]
    assert "Agreement-only report" in (tmp_path / "r" / "report.md").read_text()
    assert "Agreement-only report" in (tmp_path / "r" / "report.html").read_text()
    res = check_gate(rep.data, max_drop=0.5)
    assert not res.passed and "no accuracy" in res.reason
    assert check_gate(rep.data, min_agreement=0.5).passed


def test_gate_reasons():
    from calib.gate import check_gate

    data = {"headline": {"labelled": True, "accuracy_drop_points": 0.8, "ci_low_points": -1.9, "ci_high_points": 0.3,
                         "top1_agreement": 0.985, "embedding_cosine": 0.97}}
    res = check_gate(data, max_drop=0.5, min_agreement=0.99)
    assert not res.passed
    assert res.reason == "FAIL: accuracy drop 0.80 points > budget 0.5; top-1 agreement 0.9850 < 0.99"
    assert check_gate(data, max_drop=1.0, min_agreement=0.98).passed
    assert not check_gate(data, max_drop=1.0, use_ci=True).passed  # upper bound of the drop is 1.9 points
    assert not check_gate(data, min_embedding_cosine=0.99).passed
    with pytest.raises(InputError):
        check_gate(data)


def test_compare_and_bad_inputs(evaluations, tmp_path):
    from calib.report import ReportConfig, compare_evaluations, make_report, svg_grouped_bars

    rows = compare_evaluations([e.dir for e in evaluations[:2]])
    assert [r["run"] for r in rows] == [evaluations[0].dir.name, evaluations[1].dir.name]
    assert all(r["worst_bucket"] and r["rows"] == 80 for r in rows)
    for r, ev in zip(rows, evaluations[:2]):  # the worst bucket is the one with the largest drop
        assert r["worst_bucket"]["accuracy_drop_points"] == max(b["accuracy_drop_points"] for b in ev.buckets if b["n"])
    with pytest.raises(InputError):
        compare_evaluations([])
    with pytest.raises(InputError, match="evaluation.json"):
        make_report(ReportConfig(evaluations=(str(tmp_path),)), tmp_path / "r")
    # an evaluation of another model cannot join the table
    other = tmp_path / "other"
    other.mkdir()
    data = json.loads((evaluations[1].dir / "evaluation.json").read_text())
    data["model"]["sha256"] = "f" * 64
    (other / "evaluation.json").write_text(json.dumps(data))
    with pytest.raises(ModelMismatchError):
        make_report(ReportConfig(evaluations=(str(evaluations[0].dir), str(other))), tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
    svg = svg_grouped_bars(["a", "b"], {"x": [0.5, None]}, title="t <&>", y_label="y")
    assert svg.startswith("<svg") and "t &lt;&amp;&gt;" in svg


def test_report_verdict_budget_and_gate_command(evaluations, tmp_path):
    from calib.gate import check_gate
    from calib.report import ReportConfig, make_report
    from calib.verdict import ReleaseBudget

    budget = ReleaseBudget(max_drop=100.0, min_agreement=1.01, min_embedding_cosine=None)
    rep = make_report(ReportConfig(evaluations=(str(evaluations[0].dir), str(evaluations[1].dir)), budget=budget),
                      tmp_path / "r")
    v = rep.data["verdict"]
    assert v["status"] == "FAIL" and rep.data["budget"] == budget.to_dict()
    assert [(c["name"], c["status"]) for c in v["criteria"]] == [("max_drop", "PASS"), ("min_agreement", "FAIL")]
    assert rep.data["gate_command"] == "calib gate report.json --max-drop 100 --min-agreement 1.01"
    html = (tmp_path / "r" / "report.html").read_text()
    assert '<div class="banner fail">' in html and '<td class="FAIL">FAIL</td>' in html  # the verdict, as a banner
    assert html.count('class="banner') == 1
    # the gate with the recorded budget reproduces the report's verdict
    gate = check_gate(rep.data, **{k: v for k, v in rep.data["budget"].items()})
    assert gate.passed is v["passed"] and gate.reason == v["reason"]
    assert rep.summary()["verdict"] == "FAIL"
    assert [r["verdict"] for r in rep.data["comparison"]] == ["FAIL", "FAIL"]
    assert rep.data["recommendation"]["index"] in (0, 1) and not rep.data["recommendation"]["passes"]
    for name in ("report.md", "report.html"):
        text = (tmp_path / "r" / name).read_text()
        assert "Verdict: FAIL" in text and "calib gate report.json --max-drop 100 --min-agreement 1.01" in text
        assert text.index("Verdict: FAIL") < text.index("Headline")
    # default budget: what the evaluation can measure
    rep = make_report(ReportConfig(evaluations=(str(evaluations[0].dir),)), tmp_path / "d")
    assert rep.data["budget"] == ReleaseBudget().to_dict()
    rep = make_report(ReportConfig(evaluations=(str(evaluations[2].dir),)), tmp_path / "u")  # no labels
    assert rep.data["budget"]["max_drop"] is None and rep.data["verdict"]["criteria"][0]["name"] == "min_agreement"


def test_markdown_and_html_show_the_same_content(evaluations, tmp_path):
    from calib.report import ReportConfig, make_report, report_sections

    rep = make_report(ReportConfig(evaluations=(str(evaluations[1].dir),), layers=3), tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    page = (tmp_path / "r" / "report.html").read_text()
    sections = report_sections(rep.data, 3)
    titles = [s.title for s in sections]
    assert {"Per class", "Confusion matrix FP32", "Confusion matrix INT8", "Per layer", "Per length bucket"} <= set(titles)
    for sec in sections:
        assert sec.title in md and sec.title in page
        for row in sec.rows:  # every cell of every table is in both forms
            for cell in row:
                assert cell.replace("|", "\\|") in md, cell
                assert html_escape(cell) in page, cell
    # the worst tensors by SQNR, with a note when the table is cut
    layer = next(s for s in sections if s.title == "Per layer")
    sqnr = [float(r[2]) for r in layer.rows]
    assert len(layer.rows) == 3 and sqnr == sorted(sqnr)
    quantized = [r for r in rep.data["layers"]["rows"] if r["quantized"]]
    assert min(r["sqnr_db"] for r in quantized) == pytest.approx(sqnr[0], abs=0.05)
    assert f"The 3 of {len(quantized)} quantized tensors with the lowest SQNR" in md
    assert "under 20 dB SQNR" in md
    # one sign convention for the drop and its interval, labelled
    h = rep.data["headline"]
    assert h["drop_ci_low_points"] == pytest.approx(-h["ci_high_points"])
    assert h["drop_ci_low_points"] <= h["accuracy_drop_points"] <= h["drop_ci_high_points"]
    assert "drop, 95 % interval (FP32 − INT8, points)" in md and "drop, 95 % interval (FP32 − INT8, points)" in page
    assert "INT8 − FP32" not in md and "INT8 − FP32" not in page
    # buckets with few texts are marked in both
    few = [b for b in rep.data["buckets"] if b["n"] < 30]
    if few:
        assert f"{few[0]['bucket']} (few texts)" in md and 'class="muted"' in page


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_short_tensor_names_and_padded_bars():
    from calib.report import short_tensor_name, svg_grouped_bars

    assert short_tensor_name("/bert/encoder/layer.0/attention/self/Softmax_output_0") == "L0 attention/self/Softmax"
    assert short_tensor_name("/encoder/layers.11/mlp/fc2/MatMul_output_0") == "L11 mlp/fc2/MatMul"
    long = short_tensor_name("/bert/encoder/layer.3/attention/output/LayerNorm/LayerNormalization_output_0")
    assert long.startswith("L3 …") and long.endswith("LayerNormalization") and len(long) <= 32
    # a value at the axis floor still has a visible bar
    svg = svg_grouped_bars(["a", "b"], {"x": [0.9, 0.95]}, title="t", y_label="y", y_min=0.9, y_max=1.0)
    heights = [float(h) for h in re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', svg)]
    assert min(heights[:2]) >= 1.5


def test_each_section_carries_its_own_charts_into_the_html_only():
    """A section draws its charts itself (no chart switch elsewhere): the HTML shows every section's charts
    under its heading, in order; Markdown shows none."""
    from pathlib import Path

    from calib.report import render_html, render_markdown, report_sections

    data = json.loads((Path(__file__).parent / "fixtures" / "v1" / "report" / "report.json").read_text())
    sections = report_sections(data)
    charted = [s for s in sections if s.charts]
    assert {s.title for s in charted} >= {"Per length bucket", "Per layer"}
    assert all(c.startswith("<svg") for s in charted for c in s.charts)
    page = render_html(data)
    for s in charted:
        start = page.index(f">{s.title}</h{s.level}>")
        assert all(page.index(c, start) > start for c in s.charts), s.title
    assert page.count("<svg") == sum(len(s.charts) for s in sections)
    assert "<svg" not in render_markdown(data)
