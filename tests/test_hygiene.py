"""Data hygiene: empty labels and texts, HTML entities and markup, quoted fields, preparation mismatch."""

from __future__ import annotations

import pandas as pd
import pytest
import tinymodel

from calib.data import DataSpec, LoadReport, label_names, load_table, normalize_html, preparation_mismatch
from calib.errors import InputError


def test_empty_labels_are_refused_or_dropped_never_a_class_named_none(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\ngreat film,pos\nawful film,\nfine film,neg\nboring film,  \nnice plot,pos\n")
    with pytest.raises(InputError, match=r"label column 'label' has 2 empty \(null\) or blank rows; drop them with "
                                         r"--drop-empty"):
        load_table(DataSpec(str(path)))
    ds, report = load_table(DataSpec(str(path), drop_empty=True))
    assert len(ds) == 3 and report.rows_read == 5 and report.dropped_empty_labels == 2
    assert label_names(ds, DataSpec(str(path))) == ["neg", "pos"]  # no "None", no ""
    assert any("2 row(s)" in n and "empty label were dropped" in n for n in report.notes())


def test_empty_texts_are_refused_or_dropped(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "good", "label": "pos"}\n{"text": null, "label": "neg"}\n{"text": "   ", "label": "neg"}\n'
                    '{"text": "bad", "label": "neg"}\n')
    with pytest.raises(InputError, match=r"text column 'text' has 2 empty"):
        load_table(DataSpec(str(path)))
    ds, report = load_table(DataSpec(str(path), drop_empty=True))
    assert ds["text"] == ["good", "bad"] and report.dropped_empty_texts == 2 and report.dropped_empty_labels == 0


def test_html_and_quoted_texts_are_reported_and_normalized_on_request(tmp_path):
    path = tmp_path / "drugs.tsv"
    rows = ['"""It&#039;s great &amp; cheap"""', "No side effects<br /><br />at all", "plain text here",
            "&quot;Works&quot; fine"]
    pd.DataFrame({"review": rows, "rating": ["pos", "pos", "neg", "pos"]}).to_csv(path, sep="\t", index=False)
    spec = DataSpec(str(path), text_column="review", label_column="rating")
    ds, report = load_table(spec)
    assert report.texts_with_entities == 2 and report.texts_with_markup == 1 and report.quoted_texts >= 1
    assert ds["review"][1] == "No side effects<br /><br />at all"  # reported, not changed
    notes = " ".join(report.notes())
    assert "HTML entities" in notes and "--normalize html unescapes them" in notes and "wrapped in quotes" in notes
    clean, report = load_table(DataSpec(str(path), text_column="review", label_column="rating", normalize="html"))
    assert clean["review"][1] == "No side effects at all" and clean["review"][3] == '"Works" fine'
    assert "It's great & cheap" in clean["review"][0] and report.normalized == "html"
    assert normalize_html("a &lt;b&gt; <i>c</i>") == "a <b> c"
    with pytest.raises(InputError, match="unknown text normalization"):
        load_table(DataSpec(str(path), text_column="review", normalize="latex"))


def test_preparation_mismatch_is_warned():
    a = LoadReport("pool.csv", "/x/pool.csv", None, 200, 200, texts_with_entities=60)
    b = LoadReport("eval.csv", "/x/eval.csv", None, 100, 100, texts_with_entities=0)
    warning = preparation_mismatch(a, b)
    assert warning and warning.startswith("HTML entities in 30.0 % of calibration texts but 0.0 % of evaluation texts")
    assert preparation_mismatch(a, a) is None
    assert preparation_mismatch(b, b) is None


def test_assemble_reports_hygiene_and_mismatch(tiny_model_path, tiny_tokenizer_dir, tmp_path, capsys):
    from calib.cli import main

    texts, labels = tinymodel.make_texts(80, seed=2)
    escaped = [t.replace(" the ", " &quot;the&quot; ") + " &amp; more" for t in texts]
    pool = pd.DataFrame({"text": escaped, "label": [tinymodel.LABELS[i] for i in labels]})
    pool.loc[3, "label"] = None
    pool.to_csv(tmp_path / "pool.csv", index=False)
    pd.DataFrame({"text": texts, "label": [tinymodel.LABELS[i] for i in labels]}).to_csv(tmp_path / "eval.csv",
                                                                                          index=False)
    ws = ["--workspace", str(tmp_path / "ws")]
    common = ["assemble", "--model", str(tiny_model_path), "--tokenizer", str(tiny_tokenizer_dir), "--data",
              str(tmp_path / "pool.csv"), "--size", "32", "--max-length", "64", "--target", f"dataset:{tmp_path / 'eval.csv'}"]
    assert main([*ws, *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 empty (null) or blank rows" in err and "--drop-empty" in err
    assert main([*ws, *common, "--drop-empty"]) == 0
    out = capsys.readouterr().out
    assert "note: 1 row(s) of" in out and "empty label were dropped" in out
    assert "WARNING: HTML entities in 100.0 % of calibration texts but 0.0 % of target texts" in out
    assert main([*ws, *common, "--drop-empty", "--normalize", "html"]) == 0
    assert "HTML entities in" not in capsys.readouterr().out.split("coverage against")[1]


def test_provenance_names_the_resolved_path_and_the_split_used(tiny_spec, tmp_path, monkeypatch):
    """A one-split save_to_disk folder given by a relative path and no split: the evaluation records
    the absolute path and the split it actually read; the report's provenance shows both."""
    import datasets
    from calib.evaluation import load_eval_data
    from calib.report import _dataset_text

    texts, labels = tinymodel.make_texts(12, seed=3)
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(
        {"text": texts, "label": [tinymodel.LABELS[i] for i in labels]})}).save_to_disk(str(tmp_path / "folder"))
    monkeypatch.chdir(tmp_path)
    data = load_eval_data(DataSpec("folder"), tiny_spec, limit=5)
    assert data.info["resolved"] == str((tmp_path / "folder").resolve()) and data.info["split_used"] == "test"
    text = _dataset_text({**data.info, "fingerprint": "abc"})
    assert text == f"folder ({(tmp_path / 'folder').resolve()}) split test; 5 of 12 rows; fingerprint abc"


def test_validate_warns_when_the_calibration_texts_were_prepared_unlike_the_evaluated(tiny_spec, tmp_path):
    """Calibrated on HTML-escaped texts, evaluated on unescaped ones: the evaluation records the mismatch."""
    import pandas as pd
    import tinymodel

    from calib.build import BuildConfig, build
    from calib.calibrate import CalibrateConfig, RangesRef, calibrate
    from calib.calibset import AssembleConfig, assemble
    from calib.evaluation import EvalSettings
    from calib.model import ModelRef
    from calib.validate import ValidateConfig, validate

    texts, labels = tinymodel.make_texts(64, seed=3)
    csv = tmp_path / "escaped.csv"
    pd.DataFrame({"text": [f"{t} &amp; more" for t in texts],
                  "label": [tinymodel.LABELS[i] for i in labels]}).to_csv(csv, index=False)
    model = ModelRef.of(tiny_spec)
    cset = assemble(AssembleConfig(model=model, data=DataSpec(str(csv)), size=32), tmp_path / "cs")
    cal = calibrate(CalibrateConfig(calibration_set=str(cset.dir), methods=("minmax",)), tmp_path / "cal")
    engine = build(BuildConfig(model=model.model, ranges=RangesRef(str(cal.dir), "minmax")), tmp_path / "engine")
    settings = EvalSettings(limit=32, layers=False, bootstrap=0)
    same = validate(ValidateConfig(engine=str(engine.dir), model=model, data=DataSpec(str(csv)), settings=settings,
                                   calibration=str(cal.dir)), tmp_path / "same")
    assert same.dataset.warnings == []
    cleaned = validate(ValidateConfig(engine=str(engine.dir), model=model, data=DataSpec(str(csv), normalize="html"),
                                      settings=settings, calibration=str(cal.dir)), tmp_path / "cleaned")
    assert len(cleaned.dataset.warnings) == 1 and "prepared differently" in cleaned.dataset.warnings[0]
