"""Loading a user's model (ONNX + tokenizer directory) and dataset: bad inputs give one-line
InputErrors that name the file, column or tensor; good inputs load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import tinymodel
from onnx import TensorProto, helper

from calib.data import DataSpec, label_ids, label_names, load_rows, texts_of
from calib.engines.ort import OrtSessionLoader
from calib.errors import InputError
from calib.model import load_model, load_tokenizer, read_onnx


def _one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, InputError)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- model ---------------------------------------------------------------------------------------------

def test_good_model_and_tokenizer_load(tiny_model_path, tiny_tokenizer_dir):
    spec = load_model(tiny_model_path, tiny_tokenizer_dir, max_length=64, labels=tinymodel.LABELS)
    assert spec.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert spec.logits_output == "logits" and spec.labels == tinymodel.LABELS
    assert len(spec.sha256) == 64 and spec.max_length == 64
    assert load_tokenizer(tiny_tokenizer_dir)("a good movie")["input_ids"][0] == 2  # [CLS]


def test_missing_onnx_file(tmp_path, tiny_tokenizer_dir):
    missing = tmp_path / "nowhere" / "model.onnx"
    with pytest.raises(InputError) as info:
        load_model(missing, tiny_tokenizer_dir)
    _one_line_error(info, str(missing), "does not exist")


@pytest.mark.parametrize("content", [b"\x08\x07garbage that is not protobuf \xff\xfe" * 50, b"PK\x03\x04 a zip file"])
def test_corrupt_onnx_bytes(tmp_path, tiny_tokenizer_dir, content):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(content)
    with pytest.raises(InputError) as info:
        load_model(bad, tiny_tokenizer_dir)
    _one_line_error(info, str(bad))


def test_truncated_onnx_file(tmp_path, tiny_model_path, tiny_tokenizer_dir):
    data = tiny_model_path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        read_onnx(bad)
    _one_line_error(info, str(bad))
    with pytest.raises(InputError) as info:
        OrtSessionLoader(bad)()
    _one_line_error(info, str(bad))


def test_empty_onnx_file(tmp_path, tiny_tokenizer_dir):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as info:
        load_model(empty, tiny_tokenizer_dir)
    _one_line_error(info, str(empty), "empty graph")


def test_onnx_without_text_inputs(tmp_path, tiny_tokenizer_dir):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["pixels"], ["logits"])], "vision",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])])
    path = tmp_path / "vision.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(InputError) as info:
        load_model(path, tiny_tokenizer_dir)
    _one_line_error(info, str(path), "'input_ids'")


def test_unknown_logits_output(tiny_model_path, tiny_tokenizer_dir):
    with pytest.raises(InputError) as info:
        load_model(tiny_model_path, tiny_tokenizer_dir, logits_output="scores")
    _one_line_error(info, str(tiny_model_path), "'scores'")


def test_tokenizer_dir_missing(tmp_path, tiny_model_path):
    with pytest.raises(InputError) as info:
        load_model(tiny_model_path, tmp_path / "no-tokenizer")
    _one_line_error(info, str(tmp_path / "no-tokenizer"), "does not exist")


def test_tokenizer_dir_without_tokenizer_files(tmp_path, tiny_model_path):
    empty = tmp_path / "tok"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(InputError) as info:
        load_model(tiny_model_path, empty)
    _one_line_error(info, str(empty), "no tokenizer files", "tokenizer.json")


def test_tokenizer_with_corrupt_tokenizer_json(tmp_path, tiny_tokenizer_dir):
    broken = tmp_path / "broken-tok"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(InputError) as info:
        load_tokenizer(broken)
    _one_line_error(info, str(broken), "cannot be loaded")


# -- data ----------------------------------------------------------------------------------------------

def test_good_csv_loads(tiny_csv):
    spec = DataSpec(str(tiny_csv))
    ds = load_rows(spec)
    texts, pairs = texts_of(ds, spec)
    names = label_names(ds, spec)
    assert len(texts) == 240 and pairs is None and names == sorted(tinymodel.LABELS)
    ids = label_ids(ds, spec, names)
    assert ids.shape == (240,) and set(np.unique(ids)) <= {0, 1}


def test_missing_dataset_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(missing)))
    _one_line_error(info, str(missing), "does not exist")


def test_dataset_without_the_named_text_column(tiny_csv):
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(tiny_csv), text_column="sentence"))
    _one_line_error(info, str(tiny_csv), "no text column 'sentence'", "columns:")


def test_dataset_without_the_named_label_column(tiny_csv):
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(tiny_csv), label_column="sentiment"))
    _one_line_error(info, str(tiny_csv), "no label column 'sentiment'")


def test_dataset_without_the_named_pair_column(tiny_csv):
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(tiny_csv), text_pair_column="hypothesis"))
    _one_line_error(info, str(tiny_csv), "'hypothesis'")


def test_non_text_column_as_text(tmp_path):
    path = tmp_path / "numbers.csv"
    pd.DataFrame({"text": ["good film", "bad film"], "score": [1.5, 2.5], "label": ["pos", "neg"]}).to_csv(path, index=False)
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(path), text_column="score"))
    _one_line_error(info, str(path), "'score'", "not text")


def test_text_column_with_null_rows(tmp_path):
    path = tmp_path / "nulls.csv"
    path.write_text("text,label\ngood film,pos\n,neg\n")
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(path)))
    _one_line_error(info, str(path), "'text'", "null")


@pytest.mark.parametrize("content", ["text,label\n", ""], ids=["header-only", "zero-bytes"])
def test_empty_dataset(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(path)))
    _one_line_error(info, str(path), "empty")


def test_empty_jsonl_and_parquet(tmp_path):
    jsonl = tmp_path / "empty.jsonl"
    jsonl.write_text("")
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(jsonl)))
    _one_line_error(info, str(jsonl), "empty")
    parquet = tmp_path / "empty.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_parquet(parquet)
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(parquet)))
    _one_line_error(info, str(parquet), "empty")


def test_corrupt_dataset_files(tmp_path):
    csv = tmp_path / "broken.csv"
    csv.write_text('text,label\n"never closed,1\n')
    json_file = tmp_path / "broken.json"
    json_file.write_text('{"text": "a", "lab')
    parquet = tmp_path / "broken.parquet"
    parquet.write_bytes(b"not parquet at all")
    for path in (csv, json_file, parquet):
        with pytest.raises(InputError) as info:
            load_rows(DataSpec(str(path)))
        _one_line_error(info, str(path), "cannot be loaded")


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "texts.xlsx"
    path.write_bytes(b"xx")
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(path)))
    _one_line_error(info, "texts.xlsx", "unsupported file type")


def test_directory_not_written_by_save_to_disk(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(folder)))
    _one_line_error(info, str(folder), "save_to_disk")


def test_dataset_dict_split_must_be_named_and_exist(tmp_path, tiny_csv):
    import datasets

    frame = pd.read_csv(tiny_csv)
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame[:100]),
                               "eval": datasets.Dataset.from_pandas(frame[100:])})
    folder = tmp_path / "saved"
    ds.save_to_disk(str(folder))
    assert len(load_rows(DataSpec(str(folder), split="eval"))) == 140
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(folder)))
    _one_line_error(info, str(folder), "--split")
    with pytest.raises(InputError) as info:
        load_rows(DataSpec(str(folder), split="test"))
    _one_line_error(info, str(folder), "no split 'test'")


def test_unprepared_demo_source(tmp_path):
    with pytest.raises(InputError) as info:
        load_rows(DataSpec("demo:bbc-topic", workspace=str(tmp_path / "ws")))
    _one_line_error(info, "bbc-topic", "calib demo prepare")
    with pytest.raises(InputError) as info:
        load_rows(DataSpec("demo:imdb", workspace=str(tmp_path / "ws")))
    _one_line_error(info, "unknown demo task 'imdb'")


def test_good_save_to_disk_copy_keeps_loading(tmp_path, tiny_csv):
    """A dataset folder moved elsewhere still loads (no absolute paths inside)."""
    import datasets

    folder = tmp_path / "a"
    datasets.Dataset.from_pandas(pd.read_csv(tiny_csv)).save_to_disk(str(folder))
    moved = tmp_path / "b"
    shutil.move(str(folder), moved)
    assert len(load_rows(DataSpec(str(moved)))) == 240
    assert Path(moved).is_dir()


def test_columns_are_guessed_by_well_known_names_only():
    from calib.data import guess_columns

    assert guess_columns(["id", "sentence", "label"]) == ("sentence", "label")
    assert guess_columns(["review", "category", "text"]) == ("text", "category")  # "text" first
    assert guess_columns(["id", "body", "y"]) == (None, None)  # never an id column as the texts
    assert guess_columns(["text"]) == ("text", None)
