"""The calibration-set artifact: assembly, round trip, export, recipes, CLI and bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tinymodel

from calib.batching import plan_batches
from calib.calibset import (
    AssembleConfig,
    CalibrationSet,
    assemble,
    config_from_dict,
    derive_profile,
    parse_target,
    save_recipe,
)
from calib.cli import main
from calib.data import DataSpec
from calib.errors import InputError, ModelMismatchError
from calib.inputs import load_recipe
from calib.lengths import token_lengths
from calib.pipeline import config_from_params, run_stage

EDGES = (0, 16, 32, 48, 64)
RECIPES = Path(__file__).resolve().parent.parent / "datasets" / "recipes"


@pytest.fixture(scope="module")
def long_eval_csv(tmp_path_factory) -> Path:
    """An evaluation set of longer texts than the tiny pool (which runs 4..62 tokens)."""
    texts, labels = tinymodel.make_texts(120, seed=5, min_words=30, max_words=90)
    path = tmp_path_factory.mktemp("eval") / "eval.csv"
    pd.DataFrame({"text": texts, "label": [tinymodel.LABELS[i] for i in labels]}).to_csv(path, index=False)
    return path


def _config(tiny_model_path, tiny_tokenizer_dir, tiny_csv, **overrides) -> AssembleConfig:
    """The config the flat keyword values name (model and data fields at the top level, as 0.1 wrote them)."""
    return config_from_params(AssembleConfig, {**dict(model=str(tiny_model_path), tokenizer=str(tiny_tokenizer_dir),
                                                      source=str(tiny_csv), max_length=64, size=48, edges=EDGES,
                                                      labels=tinymodel.LABELS), **overrides})


@pytest.fixture()
def cfg(tiny_model_path, tiny_tokenizer_dir, tiny_csv, workspace):
    def make(**overrides):
        overrides.setdefault("workspace", str(workspace.root))
        return _config(tiny_model_path, tiny_tokenizer_dir, tiny_csv, **overrides)
    return make


def test_assemble_round_trip(cfg, tmp_path, tiny_spec, tiny_csv, long_eval_csv):
    config = cfg(strategy="match", target_kind="dataset", target_source=str(long_eval_csv), stratify=True, seed=3)
    out = tmp_path / "set"
    cset = assemble(config, out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "rows"]
    again = CalibrationSet.load(out)
    m = again.manifest
    pool = token_lengths(tiny_spec, DataSpec(str(tiny_csv)))
    assert again.size == 48 == len(again.rows()) == len(set(again.row_ids.tolist()))
    np.testing.assert_array_equal(again.lengths, pool.lengths[again.row_ids])
    np.testing.assert_array_equal(again.labels, pool.labels[again.row_ids])
    texts, pairs = again.texts()
    frame = pd.read_csv(tiny_csv)
    assert texts == frame["text"].iloc[again.row_ids].tolist() and pairs is None
    assert m["dataset"]["fingerprint"] == pool.fingerprint and m["tokenizer_hash"] == pool.tokenizer_hash
    assert m["model"]["sha256"] == tiny_spec.sha256 and m["model"]["max_length"] == 64
    assert m["strategy"] == "match" and m["seed"] == 3 and m["edges"] == list(EDGES)
    assert m["target"]["kind"] == "dataset" and m["target"]["num_lengths"] == 120
    assert again.config == config
    # coverage against the long eval set: the pool has nothing beyond 62 tokens, and says so
    cov = again.coverage
    assert cov.n_calib == 48 and cov.n_target == 120 and cov.target_name == "target"
    assert any("no calibration text longer than" in w for w in cov.warnings)
    assert any("64+" in n for n in again.notes)
    # TensorRT profile: multiples of 8, capped at max_length, min <= opt <= max
    seq = again.profile["sequence"]
    assert seq["min"] <= seq["opt"] <= seq["max"] <= 64
    assert seq["opt"] % 8 == 0 and seq["max"] % 8 == 0
    assert again.profile["trtexec"]["maxShapes"].startswith("input_ids:32x")
    assert again.summary()["size"] == 48 and cset.summary() == again.summary()


def test_encode_and_npz_feed_batches(cfg, tmp_path, tiny_spec):
    cset = assemble(cfg(strategy="uniform"), tmp_path / "set")
    encoded = cset.encode()
    np.testing.assert_array_equal(encoded.full_lengths, cset.lengths)
    path = cset.export_npz(tmp_path / "feeds.npz", batch_size=8)
    with np.load(path) as z:
        n = int(z["num_batches"])
        assert n == len(plan_batches(encoded.lengths, 8)) == 6
        assert list(z["input_names"]) == list(tiny_spec.input_names)
        seen = []
        for i in range(n):
            ids, mask, rows = z[f"batch_{i:04d}/input_ids"], z[f"batch_{i:04d}/mask"], z[f"batch_{i:04d}/rows"]
            assert ids.dtype == np.int64 and mask.dtype == bool and ids.shape == mask.shape
            assert ids.shape[1] % 8 == 0 or ids.shape[1] == 64
            np.testing.assert_array_equal(mask.sum(1), encoded.lengths[rows])
            assert (ids[~mask] == 0).all()  # padded positions hold the pad id and are masked out
            np.testing.assert_array_equal(z[f"batch_{i:04d}/attention_mask"], mask.astype(np.int64))
            seen.extend(rows.tolist())
        assert sorted(seen) == list(range(48))


def test_same_seed_same_set_and_run_registry(cfg, workspace):
    config = cfg(strategy="custom", weights=(1, 2, 2, 1, 0), seed=11)
    run_a, a = run_stage(workspace, "calibset", assemble, config)
    run_b, b = run_stage(workspace, "calibset", assemble, config)
    assert run_a != run_b and a.manifest["row_ids"] == b.manifest["row_ids"]
    assert a.dir == workspace.run_dir(run_a)
    record = workspace.get_run(run_a)
    assert record.status == "finished" and record.summary["strategy"] == "custom"
    assert workspace.verify(run_a) == []
    other = run_stage(workspace, "calibset", assemble, dataclasses.replace(config, seed=12))[1]
    assert other.manifest["row_ids"] != a.manifest["row_ids"]


def test_changed_model_is_refused(cfg, tmp_path, tiny_model_path, tiny_tokenizer_dir):
    model = tmp_path / "model.onnx"
    shutil.copy(tiny_model_path, model)
    cset = assemble(cfg(model=str(model)), tmp_path / "set")
    assert cset.model_spec().sha256 == cset.model_sha256
    import onnx

    proto = onnx.load(str(model))
    proto.doc_string = "changed"
    onnx.save(proto, str(model))
    with pytest.raises(ModelMismatchError):
        cset.model_spec()


def test_derive_profile_rounds_and_caps():
    prof = derive_profile(np.array([5, 20, 100, 300]), 256, ("input_ids",), opt_percentile=50,
                          batch_sizes=(1, 8, 16))
    assert prof["sequence"] == {"min": 1, "opt": 64, "max": 256, "opt_percentile": 50}
    assert prof["shapes"]["opt"] == [8, 64] and prof["trtexec"]["minShapes"] == "input_ids:1x1"
    traffic = derive_profile(np.array([40, 50]), 512, ("input_ids",), traffic=np.array([10, 90, 100, 110]))
    assert traffic["sequence"]["min"] == 8 and traffic["sequence"]["max"] == 112


# -- recipes ------------------------------------------------------------------------------------

def test_recipe_round_trip_replays_the_same_set(cfg, tmp_path, workspace):
    config = cfg(strategy="match", target_kind="pool", stratify=True, shortfall="replace", seed=4)
    path = save_recipe(config, tmp_path / "r.json", description="test")
    loaded = load_recipe(path, workspace=workspace.root)
    assert loaded == config
    a = assemble(config, tmp_path / "a")
    b = assemble(loaded, tmp_path / "b")
    assert a.manifest["row_ids"] == b.manifest["row_ids"]


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    ('{"format": "other", "config": {}}', "not a calib assemble recipe"),
    ('{"format": "calib.assemble-recipe/1", "config": {"model": "m", "tokenizer": "t", "source": "s", "speed": 1}}',
     "unknown settings \\['speed'\\]"),
    ('{"format": "calib.assemble-recipe/1", "config": {"model": "m"}}', "missing tokenizer, source"),
])
def test_bad_recipes(tmp_path, content, message):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_recipe(path)


def _as_v01(values: dict) -> dict:
    """A config in the layout calib 0.1 wrote: model and data fields at the top level, the pool as
    ``source`` and the second text column as ``pair_column``."""
    flat = {k: v for k, v in values.items() if k not in ("model", "data")}
    flat.update(values.get("model") or {})
    flat.update({("pair_column" if k == "text_pair_column" else k): v for k, v in (values.get("data") or {}).items()})
    return flat


def test_recipes_and_sets_written_by_0_1_still_load(cfg, tmp_path, workspace):
    """0.1 wrote flat configs (model and data fields at the top level) and the second text column as
    ``pair_column``; today's are nested (``model``, ``data``) with the one name ``text_pair_column``."""
    config = cfg()
    path = save_recipe(config, tmp_path / "r.json")
    recipe = json.loads(path.read_text())
    assert set(recipe["config"]["model"]) >= {"model", "tokenizer"} and "text_pair_column" in recipe["config"]["data"]
    recipe["config"] = _as_v01(recipe["config"])
    assert "pair_column" in recipe["config"] and "source" in recipe["config"]
    path.write_text(json.dumps(recipe))
    assert load_recipe(path, workspace=workspace.root) == config
    cset = assemble(config, tmp_path / "set")
    manifest_path = cset.dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert "text_pair_column" in manifest["dataset"]
    manifest["dataset"]["pair_column"] = manifest["dataset"].pop("text_pair_column")
    manifest["config"] = _as_v01(manifest["config"])
    manifest_path.write_text(json.dumps(manifest))
    old = CalibrationSet.load(cset.dir)
    assert old.texts() == cset.texts() and old.config == config


def test_shipped_recipes_are_valid():
    recipes = sorted(RECIPES.glob("*.json"))
    assert len(recipes) >= 3
    for path in recipes:
        recipe = json.loads(path.read_text())
        assert recipe["format"] == "calib.assemble-recipe/1" and recipe["description"]
        values = recipe["config"]
        values = {**values, "model": {"model": "m.onnx", "tokenizer": "tok", **values["model"]},
                  "data": {"source": "data", **values["data"]}}
        config = config_from_dict(values, where=str(path))
        assert config.strategy in ("natural", "match", "uniform", "custom") and config.data.source == "data"
    assert not (RECIPES.parent / "__init__.py").exists()


def test_parse_target():
    assert parse_target(None) == ("pool", None, None)
    assert parse_target("eval") == ("eval", None, None)
    assert parse_target("eval:test") == ("eval", None, "test")
    assert parse_target("dataset:other.csv") == ("dataset", "other.csv", None)
    assert parse_target("lengths:prod.json") == ("lengths", "prod.json", None)
    with pytest.raises(InputError, match="lengths:FILE"):
        parse_target("lengths")


# -- bad input: a clear error and nothing written -----------------------------------------------

def _bad_inputs(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("text,label\n1,a\n2,b\n")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "fine", "label": "a"}\n{"text": null, "label": "b"}\n')
    lengths = tmp_path / "lengths.json"
    lengths.write_text("[12, -3]")
    return {
        "empty dataset": ({"source": str(empty)}, "is empty"),
        "size larger than the pool": ({"size": 241}, "has only 240.*replace"),
        "non-text column": ({"source": str(numbers)}, "not text"),
        "null texts": ({"source": str(mixed)}, "empty \\(null\\)"),
        "unknown label column": ({"label_column": "stars"}, "no label column 'stars'"),
        "malformed lengths file": ({"strategy": "match", "target_kind": "lengths", "target_source": str(lengths)},
                                   "lengths.json.*non-negative"),
        "missing lengths file": ({"target_kind": "lengths", "target_source": str(tmp_path / "nope.csv")}, "does not exist"),
        "eval split of a plain file": ({"target_kind": "eval"}, "no separate 'eval' split"),
        "custom without weights": ({"strategy": "custom"}, "needs 5 bucket weights"),
        "bad edges": ({"edges": (0, 32, 16)}, "edges"),
        "bad strategy": ({"strategy": "longest"}, "unknown strategy"),
        "bad model": ({"model": str(tmp_path / "nope.onnx")}, "does not exist"),
    }


def test_bad_inputs_write_nothing(cfg, tmp_path, workspace):
    for name, (overrides, message) in _bad_inputs(tmp_path).items():
        out = tmp_path / "out" / name.replace(" ", "-")
        out.mkdir(parents=True)
        with pytest.raises(InputError, match=message):
            assemble(cfg(**overrides), out)
        assert list(out.iterdir()) == [], name
        with pytest.raises(InputError, match=message):
            run_stage(workspace, "calibset", assemble, cfg(**overrides))
    assert [p for p in workspace.runs_dir.iterdir()] == []
    assert {r.status for r in workspace.list_runs(stage="calibset")} == {"failed"}
    assert not list(workspace.cache_dir.rglob("*.npz")), "no lengths cached for rejected input"


def test_replace_allows_more_rows_than_the_pool(cfg, tmp_path):
    cset = assemble(cfg(size=300, shortfall="replace"), tmp_path / "set")
    assert cset.size == 300 and cset.manifest["repeats"] == 60 and len(cset.rows()) == 300
    assert any("repeats" in n for n in cset.notes)


# -- CLI ------------------------------------------------------------------------------------------

def test_cli_assemble(tiny_model_path, tiny_tokenizer_dir, tiny_csv, long_eval_csv, tmp_path, capsys):
    ws = tmp_path / "ws"
    recipe = tmp_path / "recipe.json"
    lengths = tmp_path / "prod.csv"
    lengths.write_text("start,end,count\n0,32,10\n32,64,30\n64,128,60\n")
    args = ["--workspace", str(ws), "assemble", "--model", str(tiny_model_path), "--tokenizer", str(tiny_tokenizer_dir),
            "--data", str(tiny_csv), "--max-length", "128", "--size", "32", "--strategy", "match",
            "--target", f"lengths:{lengths}", "--edges", "0,32,64,128", "--seed", "5", "--save-recipe", str(recipe),
            "--export-npz", str(tmp_path / "feeds.npz")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "run calibset-" in out and "bucket (tokens)" in out and "coverage against the production lengths" in out
    assert "WARNING: no calibration text longer than" in out and "TensorRT profile" in out
    assert "note: bucket 64-127: no texts in the pool" in out
    assert (tmp_path / "feeds.npz").is_file()
    replay = load_recipe(recipe, workspace=ws)
    assert replay.strategy == "match" and replay.seed == 5 and replay.target_source == str(lengths)
    assert main(["--workspace", str(ws), "assemble", "--recipe", str(recipe), "--seed", "6"]) == 0
    assert "seed 6" in capsys.readouterr().out


def test_cli_bad_input_is_one_line(tiny_model_path, tiny_tokenizer_dir, tiny_csv, tmp_path, capsys):
    ws = tmp_path / "ws"
    code = main(["--workspace", str(ws), "assemble", "--model", str(tiny_model_path), "--tokenizer",
                 str(tiny_tokenizer_dir), "--data", str(tiny_csv), "--size", "1000"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "has only 240" in err
    assert main(["--workspace", str(ws), "assemble", "--size", "5"]) == 2
    assert "needs --model, --tokenizer, --data" in capsys.readouterr().err
    assert [p.name for p in (ws / "runs").iterdir()] == []


# -- the demo task ------------------------------------------------------------------------------

@pytest.mark.demo
def test_demo_short_only_natural_set_is_flagged_and_match_is_not(demo_workspace, tmp_path):
    """bbc-topic: a natural 128-text set drawn from short texts only misses the long evaluation
    texts and is flagged; a match set drawn from the whole pool covers them and is not."""
    from calib.data import load_rows
    from calib.inputs import demo_values
    from calib.model import load_model
    from calib.workspace import Workspace

    ws = Workspace(demo_workspace)
    values = demo_values("bbc-topic", ws.root)
    base = config_from_dict({**values, "size": 128, "seed": 0, "target_kind": "eval"})
    spec_pool = base.data
    pool = load_rows(spec_pool)
    model = load_model(base.model.model, base.model.tokenizer, max_length=base.model.max_length)
    lengths = token_lengths(model, spec_pool, ws).lengths
    # BBC articles are long (none under 128 tokens): "short" here is shorter than the model's window
    short = lengths < base.model.max_length
    assert short.sum() >= 128
    short_only = tmp_path / "short"
    pool.select(np.flatnonzero(short).tolist()).save_to_disk(str(short_only))

    natural_cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, source=str(short_only), split=None),
                                      strategy="natural", target_kind="dataset", target_source=values["data"].source,
                                      target_split="eval")
    natural = assemble(natural_cfg, tmp_path / "natural")
    assert natural.coverage.warnings, "a short-only natural set must be flagged"
    assert any("no calibration text longer than" in w for w in natural.coverage.warnings)

    match = assemble(dataclasses.replace(base, strategy="match", stratify=True), tmp_path / "match")
    # nothing but the truncation note (most BBC articles are longer than the model's window)
    assert [w for w in match.coverage.warnings if "are truncated" not in w] == [], match.coverage.warnings
    assert match.coverage.ks < natural.coverage.ks
    assert match.profile["sequence"]["max"] == base.model.max_length


def test_sentence_pairs_round_trip(tiny_model_path, tiny_tokenizer_dir, tmp_path):
    rng = np.random.default_rng(0)
    words = np.array(tinymodel.WORDS)
    rows = [{"premise": " ".join(rng.choice(words, rng.integers(2, 20))),
             "hypothesis": " ".join(rng.choice(words, rng.integers(2, 20))), "label": ["yes", "no"][i % 2]}
            for i in range(40)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    config = config_from_params(AssembleConfig, dict(model=str(tiny_model_path), tokenizer=str(tiny_tokenizer_dir), source=str(path),
                            text_column="premise", text_pair_column="hypothesis", size=10, strategy="uniform",
                            edges=(0, 16, 32), max_length=64))
    cset = assemble(config, tmp_path / "set")
    texts, pairs = cset.texts()
    assert texts == [rows[i]["premise"] for i in cset.row_ids]
    assert pairs == [rows[i]["hypothesis"] for i in cset.row_ids]
    encoded = cset.encode()
    np.testing.assert_array_equal(encoded.full_lengths, cset.lengths)
    assert (encoded.token_type_ids == 1).any()  # second segments are marked


def test_a_recipe_file_written_by_0_1_reads_as_the_shipped_one():
    """tests/fixtures/v1/recipe holds bbc-topic-match-eval.json as calib 0.1 wrote it (flat config); the one
    shipped today is nested. Both give the same settings."""
    from calib.pipeline import nest_params

    old = json.loads((Path(__file__).parent / "fixtures" / "v1" / "recipe" / "bbc-topic-match-eval.json").read_text())
    new = json.loads((RECIPES / "bbc-topic-match-eval.json").read_text())
    assert "text_column" in old["config"] and "data" in new["config"]
    old_data, new_data = (nest_params(AssembleConfig, r["config"])["data"] for r in (old, new))
    assert old_data.items() <= new_data.items()  # today's adds the hygiene defaults
    fill = {"model": {"model": "m.onnx", "tokenizer": "tok"}, "data": {"source": "demo:bbc-topic"}}
    from_old = config_from_dict({**old["config"], "model": "m.onnx", "tokenizer": "tok", "source": "demo:bbc-topic",
                                 "max_length": new["config"]["model"]["max_length"]})  # as the demo task fills them
    from_new = config_from_dict({**new["config"], "model": {**fill["model"], **new["config"]["model"]},
                                 "data": {**fill["data"], **new["config"]["data"]}})
    assert from_old == from_new and from_new.strategy == "match" and from_new.data.split == "calibration"


def test_one_rule_says_what_a_demo_task_names():
    """Saving a demo recipe, loading it, and `calib assemble --demo` over another recipe all drop the same
    fields: what the demo task names (model, tokenizer, labels, output roles, data source), plus the split and
    columns when the values describe another dataset."""
    from calib.inputs import without_demo_fields

    model = {"model": "m.onnx", "tokenizer": "tok", "labels": ["a"], "max_length": 96, "logits_output": "logits",
             "embedding_output": None, "pooling": "cls"}
    data = {"source": "x.csv", "workspace": "ws", "split": "train", "text_column": "body", "label_column": "y",
            "text_pair_column": None, "normalize": "html", "drop_empty": True}
    kept_model, kept_data = without_demo_fields(model, data)
    assert kept_model == {"max_length": 96}
    assert kept_data == {"split": "train", "text_column": "body", "label_column": "y", "text_pair_column": None,
                         "normalize": "html", "drop_empty": True}
    _, other = without_demo_fields(model, data, other_dataset=True)
    assert other == {"normalize": "html", "drop_empty": True}
