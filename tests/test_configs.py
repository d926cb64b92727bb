"""Composable stage configs: the model, the data and the placement are one object each (ModelRef, DataSpec,
Placement), held by every config that needs them; saved params round-trip, and the flat layout 0.1 wrote
still reads."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from calib.build import BuildConfig
from calib.calibrate import RangesRef
from calib.data import DataSpec
from calib.errors import InputError
from calib.evaluation import EvalSettings
from calib.model import ModelRef
from calib.pipeline import config_from_params, config_params, nest_params
from calib.placement import Placement
from calib.stages import STAGES
from calib.validate import ValidateConfig
from calib.verdict import ReleaseBudget

PARTS = (ModelRef, DataSpec, Placement, RangesRef, ReleaseBudget)
OWN_FIELDS = {  # fields a config has of its own that happen to share a part's field name
    ("DemoConfig", "DataSpec"): {"workspace"},  # where the demo is prepared, not a dataset's
}


def _stage_configs() -> list[type]:
    return [stage.config_type() for stage in STAGES.values()]


@pytest.mark.parametrize("config", _stage_configs(), ids=lambda c: c.__name__)
def test_no_stage_config_spells_out_a_part(config):
    """A config holds a part as one field (``model: ModelRef``), never that part's fields beside its own."""
    own = {f.name for f in dataclasses.fields(config)}
    for part in PARTS:
        spelled = own & ({f.name for f in dataclasses.fields(part)} - {"model"})
        spelled -= OWN_FIELDS.get((config.__name__, part.__name__), set())
        assert not spelled, f"{config.__name__} repeats {part.__name__} fields {sorted(spelled)}"


def test_the_stages_that_read_a_model_and_data_hold_the_parts():
    by_name = {c.__name__: typing.get_type_hints(c) for c in _stage_configs()}
    for name in ("AssembleConfig", "ValidateConfig", "CompareConfig", "SensitivityConfig", "HeadConfig", "BenchConfig"):
        assert by_name[name]["model"] is ModelRef and by_name[name]["data"] is DataSpec, name
    assert by_name["BenchConfig"]["data"] is DataSpec
    for name in ("CalibrateConfig", "BuildConfig", "SensitivityConfig", "CompareConfig"):
        assert by_name[name]["placement"] is Placement, name
    assert by_name["SensitivityConfig"]["ranges"] is RangesRef and by_name["BuildConfig"]["ranges"] is RangesRef
    assert by_name["ValidateConfig"]["settings"] is EvalSettings and by_name["CompareConfig"]["settings"] is EvalSettings
    # the search evaluates candidates the way validate evaluates an engine, and judges them by a release budget
    assert by_name["SensitivityConfig"]["settings"] is EvalSettings and by_name["SensitivityConfig"]["budget"] is ReleaseBudget


def _validate_config() -> ValidateConfig:
    return ValidateConfig(engine="runs/b/engine", model=ModelRef("m.onnx", "tok", 64, ("neg", "pos"), pooling="mean"),
                          data=DataSpec("eval.csv", text_pair_column="pair", split="eval", normalize="html"),
                          settings=EvalSettings(limit=32, edges=(0, 16, 64), layers=False), calibration="runs/c")


def test_saved_params_round_trip_in_the_nested_layout():
    config = _validate_config()
    params = config_params(config)
    assert params["model"]["tokenizer"] == "tok" and params["data"]["source"] == "eval.csv"
    assert params["settings"]["edges"] == [0, 16, 64]  # JSON lists; read back as tuples
    assert config_from_params(ValidateConfig, params) == config


def test_the_flat_layout_0_1_wrote_still_reads():
    flat = {"engine": "runs/b/engine", "model": "m.onnx", "tokenizer": "tok", "max_length": 64,
            "labels": ["neg", "pos"], "pooling": "mean", "logits_output": None, "embedding_output": None,
            "data": "eval.csv", "text_column": "text", "label_column": "label", "pair_column": "pair",
            "split": "eval", "workspace": None, "drop_empty": False, "normalize": "html", "edges": [0, 16, 64],
            "batch_size": 16, "limit": 32, "layers": False, "layer_rows": 128, "calibration": "runs/c",
            "bootstrap": 1000, "seed": 0, "threads": None, "cluster": None}
    assert config_from_params(ValidateConfig, flat) == _validate_config()


def test_a_calibration_holds_its_placement_and_reads_0_1_presets():
    """A calibrate run's params are saved with the placement as a part; 0.1 saved the preset name alone."""
    from calib.calibrate import CalibrateConfig

    config = CalibrateConfig("runs/cs", methods=("minmax",), placement=Placement("all", exclude_nodes=("/a",)))
    params = config_params(config)
    assert params["placement"] == {"preset": "all", "include_nodes": [], "exclude_nodes": ["/a"],
                                   "include_op_types": [], "exclude_op_types": []}
    assert config_from_params(CalibrateConfig, params) == config
    old = {"calibration_set": "runs/cs", "methods": ["minmax"], "placement": "all", "tensors": "placement"}
    assert config_from_params(CalibrateConfig, old).placement == Placement("all")
    assert CalibrateConfig("runs/cs", placement="all") == CalibrateConfig("runs/cs", placement=Placement("all"))


def test_a_0_1_sensitivity_placement_reads_as_one_placement():
    from calib.sensitivity import SensitivityConfig

    flat = {"model": "m.onnx", "tokenizer": "tok", "data": "d.csv", "ranges": "r", "preset": "all",
            "exclude_nodes": ["/a"], "include_op_types": ["MatMul"], "limit": 64}
    config = config_from_params(SensitivityConfig, flat)
    assert config.placement == Placement("all", exclude_nodes=("/a",), include_op_types=("MatMul",))
    assert config.model == ModelRef("m.onnx", "tok") and config.data == DataSpec("d.csv") and config.settings.limit == 64
    assert config.ranges == RangesRef("r")  # RangesRef's default method
    with_method = config_from_params(SensitivityConfig, {**flat, "method": "percentile"})
    assert with_method.ranges == RangesRef("r", "percentile")


def test_a_0_1_comparison_reads_its_validation_template_as_settings():
    from calib.compare import CompareConfig

    old = {"calibration": "runs/c", "model": "m.onnx", "tokenizer": "tok", "data": "d.csv", "methods": ["minmax"],
           "placement": "all", "validation": {"limit": 64, "batch_size": 8}}
    config = config_from_params(CompareConfig, old)
    assert config.settings.limit == 64 and config.settings.batch_size == 8 and config.placement == Placement("all")
    assert config_from_params(CompareConfig, config_params(config)) == config


def test_unknown_and_mistyped_settings_are_one_line_when_strict():
    params = config_params(_validate_config())
    assert config_from_params(ValidateConfig, {**params, "later": 1}) == _validate_config()  # a later version's key
    with pytest.raises(InputError, match=r"^recipe x: unknown settings \['later'\]"):
        config_from_params(ValidateConfig, {**params, "later": 1}, strict=True, where="recipe x")
    colour = {**params, "model": {**params["model"], "colour": 1}}
    assert config_from_params(ValidateConfig, colour) == _validate_config()
    with pytest.raises(InputError, match=r"^recipe x: model: unknown settings \['colour'\]"):
        config_from_params(ValidateConfig, colour, strict=True, where="recipe x")
    with pytest.raises(InputError, match=r"^c: .*missing .*'engine'"):
        config_from_params(ValidateConfig, {k: v for k, v in params.items() if k != "engine"}, where="c")


def test_nest_keeps_given_parts_and_leaves_partial_parts_as_dicts():
    model = ModelRef("m.onnx", "tok")
    nested = nest_params(ValidateConfig, {"model": model, "text_column": "body", "limit": 8})
    assert nested["model"] is model and nested["data"] == {"text_column": "body"} and nested["settings"] == {"limit": 8}


def test_a_0_1_build_reads_with_one_ranges_reference(tmp_path):
    """0.1 named the range set by ``ranges`` (a file) or ``calibration`` (a run folder) + ``method``."""
    from_run = {"model": "m.onnx", "ranges": "", "calibration": str(tmp_path), "method": "percentile",
                "placement": "all", "exclude_nodes": ["/x"], "smooth": "auto"}
    config = BuildConfig.from_params(from_run)
    assert config.ranges == RangesRef(str(tmp_path), "percentile") and config.ranges.calibration_dir == tmp_path
    assert config.placement == Placement("all", exclude_nodes=("/x",)) and config.smooth == "auto"
    from_file = BuildConfig.from_params({"model": "m.onnx", "ranges": "r.json", "calibration": "", "method": "minmax"})
    assert from_file.ranges.source == "r.json" and not from_file.ranges.from_calibration
    assert from_file.ranges.calibration_dir is None
    today = config_params(config)
    assert today["ranges"] == {"source": str(tmp_path), "method": "percentile"}
    assert BuildConfig.from_params(today) == config
    with pytest.raises(InputError, match="exactly one of a ranges file"):
        RangesRef("").load()


def test_flat_keys_fill_the_configs_own_default_part():
    """0.1 kept a search's budget and evaluation settings at the top level; a key left out keeps the
    search's own default (no cosine threshold, 256 texts), not ReleaseBudget's or EvalSettings'."""
    from calib.sensitivity import SEARCH_BUDGET, SEARCH_SETTINGS, SensitivityConfig

    config = config_from_params(SensitivityConfig, {"model": "m.onnx", "tokenizer": "t", "data": "d.csv", "max_drop": 5, "seed": 3})
    assert config.budget == ReleaseBudget(max_drop=5, min_agreement=0.99, min_embedding_cosine=None)
    assert config.settings == dataclasses.replace(SEARCH_SETTINGS, seed=3)
    assert config_from_params(SensitivityConfig, {"model": "m.onnx", "tokenizer": "t", "data": "d.csv"}).budget == SEARCH_BUDGET
    saved = config_params(config)
    assert saved["budget"]["max_drop"] == 5 and config_from_params(SensitivityConfig, saved) == config


def test_config_defaults_are_read_from_the_config():
    from calib.calibrate import CalibrateConfig
    from calib.pipeline import config_defaults
    from calib.placement import Placement

    defaults = config_defaults(CalibrateConfig)
    assert "calibration_set" not in defaults and defaults["batch_size"] == CalibrateConfig("x").batch_size
    assert defaults["placement"] == Placement() and defaults["params"] == {}
