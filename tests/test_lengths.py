"""Token lengths (cached) and production length files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import calib.lengths as lengths_mod
from calib.data import DataSpec
from calib.errors import InputError
from calib.lengths import MAX_EXPANDED, load_length_target, token_lengths
from calib.model import load_tokenizer


def _expected(tokenizer_dir, texts, pairs=None):
    tok = load_tokenizer(tokenizer_dir)
    enc = tok(list(texts), list(pairs) if pairs is not None else None, truncation=False)
    return np.array([len(ids) for ids in enc["input_ids"]])


def test_lengths_are_untruncated_token_counts(tiny_spec, tiny_csv, tiny_tokenizer_dir):
    table = token_lengths(tiny_spec, DataSpec(str(tiny_csv)))
    frame = pd.read_csv(tiny_csv)
    np.testing.assert_array_equal(table.lengths, _expected(tiny_tokenizer_dir, frame["text"]))
    assert table.label_names == ("neg", "pos")
    np.testing.assert_array_equal(table.labels, (frame["label"] == "pos").astype(int))
    assert len(table) == len(frame)
    # truncation at the model's max length (64) is reported, not applied
    assert table.lengths.max() > 32
    assert table.truncation_rate(32) == pytest.approx(float(np.mean(table.lengths > 32)))
    assert table.truncation_rate(10_000) == 0.0
    pct = table.percentiles()
    assert set(pct) >= {"p50", "p90", "p95", "p99", "min", "max"}
    assert pct["min"] <= pct["p50"] <= pct["p95"] <= pct["max"] == table.lengths.max()


def test_second_look_comes_from_the_cache(tiny_spec, tiny_csv, workspace, monkeypatch):
    data = DataSpec(str(tiny_csv))
    first = token_lengths(tiny_spec, data, workspace)
    assert not first.from_cache
    assert len(list((workspace.cache_dir / "lengths").glob("*.npz"))) == 1

    def no_tokenising(*args, **kwargs):
        raise AssertionError("the cached lengths should have been used")

    monkeypatch.setattr(lengths_mod, "_count_tokens", no_tokenising)
    second = token_lengths(tiny_spec, data, workspace)
    assert second.from_cache
    np.testing.assert_array_equal(first.lengths, second.lengths)
    # other columns are another key: they must be computed, not taken from the cache
    with pytest.raises(AssertionError):
        token_lengths(tiny_spec, DataSpec(str(tiny_csv), text_column="text", text_pair_column="text"), workspace)


def test_no_workspace_no_cache(tiny_spec, tiny_csv):
    assert not token_lengths(tiny_spec, DataSpec(str(tiny_csv))).from_cache
    assert not token_lengths(tiny_spec, DataSpec(str(tiny_csv))).from_cache


def test_sentence_pairs_count_both_segments(tiny_spec, tmp_path, tiny_tokenizer_dir):
    path = tmp_path / "pairs.jsonl"
    rows = [{"a": "the movie was good", "b": "it was fun", "y": 1},
            {"a": "bad plot", "b": "the actors were awful and the scenes too long", "y": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    table = token_lengths(tiny_spec, DataSpec(str(path), text_column="a", text_pair_column="b", label_column="y"))
    expected = _expected(tiny_tokenizer_dir, [r["a"] for r in rows], [r["b"] for r in rows])
    np.testing.assert_array_equal(table.lengths, expected)
    assert table.label_names == ("0", "1")


@pytest.mark.parametrize("content, column, label, message", [
    ("text,label\n", "text", "label", "empty"),
    ("text,label\n1,a\n2,b\n", "text", "label", "not text"),
    ("text,label\nhello there,a\n", "text", "stars", "no label column 'stars'"),
    ("text,label\nhello there,a\n", "body", "label", "no text column 'body'"),
])
def test_bad_datasets_are_clear_errors(tiny_spec, tmp_path, workspace, content, column, label, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        token_lengths(tiny_spec, DataSpec(str(path), text_column=column, label_column=label), workspace)
    assert not list(workspace.cache_dir.rglob("*.npz"))


# -- production length files --------------------------------------------------------------------

@pytest.mark.parametrize("name, content, expected", [
    ("a.json", "[12, 40, 7]", [12, 40, 7]),
    ("b.json", '{"lengths": [3, 5.0]}', [3, 5]),
    ("c.json", "[[10, 2], [20, 1]]", [10, 10, 20]),
    ("d.json", '[{"length": 8, "count": 3}]', [8, 8, 8]),
    ("e.csv", "length\n12\n40\n\n7\n", [12, 40, 7]),
    ("f.csv", "12\n40\n", [12, 40]),
    ("g.csv", "length,count\n10,2\n20,1\n", [10, 10, 20]),
    ("h.tsv", "length\tcount\n10\t1\n", [10]),
    ("i.txt", "5\n6\n", [5, 6]),
])
def test_length_lists_and_pairs(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    np.testing.assert_array_equal(load_length_target(path), expected)


def test_bucket_histograms_spread_counts_over_each_bucket(tmp_path):
    path = tmp_path / "hist.json"
    path.write_text(json.dumps({"edges": [0, 32, 64, 128], "counts": [4, 0, 2]}))
    lengths = load_length_target(path)
    assert len(lengths) == 6
    assert (lengths[:4] < 32).all() and ((lengths[4:] >= 64) & (lengths[4:] < 128)).all()
    # one count more than closed buckets: the last is an open bucket at its lower edge
    path.write_text(json.dumps({"edges": [0, 128, 512], "counts": [1, 1, 3]}))
    np.testing.assert_array_equal(np.sort(load_length_target(path))[-3:], [512, 512, 512])
    csv = tmp_path / "hist.csv"
    csv.write_text("start,end,count\n0,32,2\n128,256,3\n")
    lengths = load_length_target(csv)
    assert ((lengths >= 128) & (lengths < 256)).sum() == 3 and (lengths < 32).sum() == 2


def test_huge_histograms_are_scaled_not_exploded(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps([[20, 30_000_000], [300, 10_000_000]]))
    lengths = load_length_target(path)
    assert len(lengths) == MAX_EXPANDED
    assert np.mean(lengths == 300) == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("name, content, message", [
    ("a.json", "", "empty"),
    ("b.json", "[1, 2", "not valid JSON"),
    ("c.json", "[1, -2]", "not a non-negative whole number"),
    ("d.json", '[1, "x"]', "not a number"),
    ("e.json", "[1.5]", "not a non-negative whole number"),
    ("f.json", '{"edges": [0, 32], "counts": [1, 2, 3]}', "need 1 counts"),
    ("g.json", '{"edges": [0, 32, 16], "counts": [1, 2]}', "increase strictly"),
    ("h.json", '{"foo": 1}', "expected a list of lengths"),
    ("i.json", "[]", "non-empty list"),
    ("j.json", "[[1, 0], [2, 0]]", "all counts are zero"),
    ("k.json", "[[1, 2, 3]]", "pairs"),
    ("l.csv", "length\n", "header but no rows"),
    ("m.csv", "12\nabc\n", "not a number"),
    ("n.csv", "1,2\n3\n", "columns"),
    ("o.csv", "1,2,3,4\n", "expected 1 column"),
    ("p.csv", "start,end,count\n32,0,1\n", "end must be greater"),
    ("q.csv", "nan\n", "not a non-negative whole number"),
])
def test_malformed_length_files_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        load_length_target(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_length_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_length_target(tmp_path / "nope.csv")
