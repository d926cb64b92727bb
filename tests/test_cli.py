"""The scriptable CLI: run references, machine-readable output, exit codes, run listings."""

from __future__ import annotations

import json
from pathlib import Path

from calib.cli import main as cli_main
from calib.workspace import Workspace


def _finished(ws: Workspace, stage: str, summary: dict, label: str = "") -> str:
    with ws.start_run(stage, {}, label=label) as ctx:
        (ctx.dir / "out.json").write_text("{}")
        ctx.summary.update(summary)
        run_id = ctx.id
    return run_id


def test_runs_list_shows_each_runs_headline_figure(workspace, capsys):
    val = _finished(workspace, "validate", {"accuracy_drop_points": 0.40000000000000036, "top1_agreement": 0.9813})
    cs = _finished(workspace, "calibset", {"size": 128, "ks": 0.03125, "warnings": 1})
    assert cli_main(["--workspace", str(workspace.root), "runs", "list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "drop +0.40 pts, agreement 98.13 %" in lines[val]
    assert "128 texts, KS 0.0312, 1 warning" in lines[cs]
    assert "0.40000000000000036" not in out and " done" not in out


# -- run references: latest, latest:LABEL, unique prefixes -------------------------------------------

def test_find_run_id_latest_label_and_prefixes(workspace):
    import pytest

    from calib.errors import WorkspaceError

    first = _finished(workspace, "calibrate", {}, label="nightly")
    second = _finished(workspace, "calibrate", {})
    build = _finished(workspace, "build", {})
    with pytest.raises(RuntimeError), workspace.start_run("calibrate", {}) as ctx:
        raise RuntimeError("boom")
    assert workspace.find_run_id("latest", "calibrate") == second  # the failed one is never "latest"
    assert workspace.find_run_id("latest:nightly", "calibrate") == first
    assert workspace.find_run_id("latest") == build
    assert workspace.find_run_id(second, "calibrate") == second
    assert workspace.find_run_id(build[:-2], "build") == build
    assert workspace.find_run_id("b", "build") == build  # prefix shared with no other build run
    with pytest.raises(WorkspaceError, match="ambiguous: ") as err:
        workspace.find_run_id("calibrate-", "calibrate")
    assert first in str(err.value) and second in str(err.value) and ctx.id in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(WorkspaceError, match="no finished build run labelled 'weekly'"):
        workspace.find_run_id("latest:weekly", "build")
    with pytest.raises(WorkspaceError, match="unique id prefix"):
        workspace.find_run_id("zzz", "build")
    assert workspace.resolve_run("latest:nightly", "calibrate") == workspace.run_dir(first)
    with pytest.raises(WorkspaceError, match="is failed, not finished"):
        workspace.resolve_run(ctx.id, "calibrate")
    with pytest.raises(WorkspaceError, match="is a 'build' run, expected a 'calibrate' run"):
        workspace.resolve_run(build[:12], "calibrate")


# -- the whole pipeline scripted: latest / prefixes, --json on every stage, exit codes ------------------

def _json_run(capsys, argv: list[str], code: int = 0) -> dict:
    import json

    assert cli_main(argv) == code
    out = capsys.readouterr().out
    payload = json.loads(out)  # exactly one JSON object on stdout, nothing else
    for path in payload.get("outputs", {}).values():
        assert Path(path).exists(), path
    for path in payload.get("artifacts", []):
        assert Path(path).is_file(), path
    return payload


def test_scripted_pipeline_with_latest_prefixes_and_json(tiny_spec, tiny_csv, workspace, capsys):
    ws = ["--workspace", str(workspace.root)]
    model = ["--model", str(tiny_spec.onnx_path), "--tokenizer", str(tiny_spec.tokenizer_dir), "--max-length", "64"]
    cs = _json_run(capsys, ws + ["assemble", *model, "--data", str(tiny_csv), "--size", "32", "--label", "rel",
                                 "--json"])
    assert cs["stage"] == "calibset" and cs["label"] == "rel" and cs["summary"]["size"] == 32
    assert Path(cs["outputs"]["manifest"]).name == "manifest.json"

    cal = _json_run(capsys, ws + ["calibrate", "--calibration-set", "latest:rel", "--method", "minmax", "entropy",
                                  "--json"])
    assert cal["parents"] == [cs["run"]]  # the resolved id is the lineage, not the word "latest"
    assert set(cal["outputs"]) >= {"ranges_minmax", "cache_entropy", "record"}
    assert cal["cache_headers"]["entropy"].startswith("TRT-")

    eng = _json_run(capsys, ws + ["build", "--calibration", cal["run"][:-3], "--method", "minmax",
                                  "--profile", "1", "8", "16", "8", "32", "64", "--json"])
    assert eng["parents"] == [cal["run"]] and eng["summary"]["method"] == "minmax"
    assert Path(eng["outputs"]["trtexec_script"]).name == "trtexec.sh"
    assert eng["outputs"]["fp32_model"] == str(Path(eng["dir"]) / "model.fp32.onnx")

    bench = _json_run(capsys, ws + ["bench", "--engine", "latest", "--data", str(tiny_csv), "--tokenizer",
                                    str(tiny_spec.tokenizer_dir), "--split", "train", "--max-length", "64",
                                    "--max-texts", "16", "--batch-size", "8", "--repeats", "1", "--threads", "1",
                                    "--json"])
    assert bench["parents"] == [eng["run"]] and {r["kind"] for r in bench["rows"]} == {"fp32", "int8"}

    val = _json_run(capsys, ws + ["validate", "--engine", "latest", *model, "--data", str(tiny_csv), "--labels",
                                  "neg,pos", "--limit", "40", "--bootstrap", "50", "--no-layers", "--json"])
    assert val["parents"] == [eng["run"]]
    assert {"accuracy_drop_points", "top1_agreement"} <= set(val["summary"])
    assert "evaluation" in val["outputs"]

    rep = _json_run(capsys, ws + ["report", "latest", "--json"])
    assert rep["parents"] == [val["run"]] and Path(rep["outputs"]["report_html"]).is_file()

    gate = _json_run(capsys, ws + ["gate", "latest", "--max-drop", "100", "--min-agreement", "0", "--json"])
    assert gate["passed"] is True and gate["checks"]
    gate = _json_run(capsys, ws + ["gate", rep["run"][:-2], "--min-agreement", "1.01", "--json"], code=1)
    assert gate["passed"] is False and gate["reason"].startswith("FAIL")

    assert cli_main(ws + ["ranges", "diff", "latest:minmax", "latest:rel:entropy"]) == 2  # no such label
    assert "no finished calibrate run labelled 'rel'" in capsys.readouterr().err
    assert cli_main(ws + ["ranges", "diff", "latest:minmax", "latest:entropy"]) == 0
    assert "A: minmax" in capsys.readouterr().out
    assert cli_main(ws + ["runs", "show", "latest:rel"]) == 0
    assert cs["run"] in capsys.readouterr().out


def test_build_json_without_tensorrt_exits_3_with_one_json_object(tiny_spec, workspace, tmp_path, capsys):
    import json

    import tinymodel
    from absmax import absmax_ranges

    from calib.ranges import Ranges

    amax = absmax_ranges(tiny_spec, tinymodel.make_texts(16, seed=7)[0], preset="tensorrt")
    ranges = tmp_path / "ranges.json"
    Ranges(method="minmax", params={}, model_sha256=tiny_spec.sha256, amax=amax).save(ranges)
    code = cli_main(["--workspace", str(workspace.root), "build", "--model", str(tiny_spec.onnx_path),
                     "--ranges", str(ranges), "--backend", "tensorrt", "--profile", "1", "8", "16", "8", "32", "64",
                     "--json"])
    captured = capsys.readouterr()
    assert code == 3
    payload = json.loads(captured.out)
    assert payload["tensorrt_unavailable"] and "TensorRT is not usable here" in captured.err


def test_exit_codes(workspace, capsys, monkeypatch):
    ws = ["--workspace", str(workspace.root)]
    assert cli_main(ws) == 2  # no command: usage
    assert "usage" in capsys.readouterr().err
    assert cli_main(ws + ["gate", "nope", "--max-drop", "1"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    for _ in range(2):
        _finished(workspace, "report", {})
    assert cli_main(ws + ["gate", "report-", "--max-drop", "1"]) == 2
    err = capsys.readouterr().err
    assert "ambiguous" in err and err.count("\n") == 1

    import calib.cli.runs as runs_cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runs_cli, "cmd_list", broken)
    assert cli_main(ws + ["runs", "list"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error (ZeroDivisionError)" in err


def test_help_documents_exit_codes_and_run_references(capsys):
    import pytest

    from calib.cli.common import EXIT_CODES

    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    assert "latest:LABEL" in out and "--json" in out
    for code, _ in EXIT_CODES:
        assert f"\n  {code:<4} " in out


def test_every_stage_command_has_json():
    from calib.cli import build_parser

    parser = build_parser()
    for command in ("assemble", "calibrate", "build", "bench", "validate", "sensitivity", "report", "gate",
                    "head fit"):
        args = parser.parse_args([*command.split(), "--json", *_required(command)])
        assert args.json is True, command


def _choices(parser, command: str, option: str) -> tuple:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if option in a.option_strings).choices)


def test_option_choices_are_the_librarys():
    """Every choice list the CLI offers is the library's own, so a new strategy, granularity or ranking
    shows up (or is refused) the same way in the CLI as in the library."""
    from calib.cli import build_parser
    from calib.engines import backend_names
    from calib.model import POOLINGS
    from calib.placement import PRESETS
    from calib.sampling import SHORTFALL_MODES, STRATEGIES
    from calib.sensitivity import GRANULARITIES, RANKINGS, SEARCH_EVALUATIONS
    from calib.stats import HISTOGRAM_MODES, TENSOR_SCOPES

    parser = build_parser()
    assert _choices(parser, "sensitivity", "--granularity") == GRANULARITIES
    assert _choices(parser, "sensitivity", "--ranking") == RANKINGS
    assert _choices(parser, "assemble", "--strategy") == STRATEGIES
    assert _choices(parser, "calibrate", "--tensors") == TENSOR_SCOPES
    assert _choices(parser, "calibrate", "--histogram") == HISTOGRAM_MODES
    assert tuple(_choices(parser, "calibrate", "--placement")) == tuple(PRESETS)
    assert tuple(_choices(parser, "build", "--backend")) == tuple(backend_names())
    assert _choices(parser, "assemble", "--shortfall") == SHORTFALL_MODES
    # literal in the CLI too (importing the search costs about 2 s per start): the library's defaults
    sub = next(a for a in parser._actions if a.dest == "command").choices["sensitivity"]
    assert next(a for a in sub._actions if "--max-evaluations" in a.option_strings).default == SEARCH_EVALUATIONS
    assert tuple(_choices(parser, "validate", "--pool")) == POOLINGS  # literal in the CLI: calib.model imports onnx
    from calib.data import NORMALIZATIONS

    sub_head = next(a for a in parser._actions if a.dest == "command").choices["head"]
    fit = next(a for a in sub_head._actions if getattr(a, "choices", None) and "fit" in a.choices).choices["fit"]
    assert tuple(next(a for a in fit._actions if "--pooling" in a.option_strings).choices) == POOLINGS
    assert not any("--logits-output" in a.option_strings for a in fit._actions)  # an encoder: no class scores
    assert tuple(_choices(parser, "assemble", "--normalize")) == NORMALIZATIONS


def _required(command: str) -> list[str]:
    return {"calibrate": ["--calibration-set", "latest"], "build": ["--calibration", "latest"],
            "bench": ["--engine", "latest"], "validate": ["--engine", "latest"], "sensitivity": ["--ranges", "latest"],
            "report": ["latest"], "gate": ["latest"],
            "head fit": ["--model", "m.onnx", "--tokenizer", "tok", "--data", "d.csv"]}.get(command, [])


def test_target_names_its_split(tmp_path, tiny_spec, tiny_csv, workspace, capsys):
    import pytest

    from calib.calibset import parse_target
    from calib.errors import InputError

    assert parse_target("dataset:demo:bbc-topic:eval") == ("dataset", "demo:bbc-topic", "eval")
    assert parse_target("dataset:demo:bbc-topic") == ("dataset", "demo:bbc-topic", None)
    assert parse_target("dataset:reviews.csv:test") == ("dataset", "reviews.csv", "test")
    assert parse_target("dataset:user/hub-set:validation") == ("dataset", "user/hub-set", "validation")
    odd = tmp_path / "a:b.csv"  # an existing file is never split at its colon
    odd.write_text("text\nx\n")
    assert parse_target(f"dataset:{odd}") == ("dataset", str(odd), None)
    with pytest.raises(InputError, match="dataset:SOURCE:SPLIT"):
        parse_target("dataset:")

    payload = _json_run(capsys, ["--workspace", str(workspace.root), "assemble", "--model", str(tiny_spec.onnx_path),
                                 "--tokenizer", str(tiny_spec.tokenizer_dir), "--max-length", "64", "--data",
                                 str(tiny_csv), "--size", "16", "--target", f"dataset:{tiny_csv}:train", "--json"])
    manifest = json.loads(Path(payload["outputs"]["manifest"]).read_text())
    assert manifest["target"]["kind"] == "dataset" and manifest["target"]["source"] == str(tiny_csv)


def test_multi_split_target_without_split_says_how_to_name_it(tmp_path, tiny_spec, tiny_csv, workspace, capsys):
    import pandas as pd

    import datasets

    frame = pd.read_csv(tiny_csv)
    folder = tmp_path / "two-splits"
    datasets.DatasetDict({"dev": datasets.Dataset.from_pandas(frame[:40]),
                          "test": datasets.Dataset.from_pandas(frame[40:80])}).save_to_disk(str(folder))
    argv = ["--workspace", str(workspace.root), "assemble", "--model", str(tiny_spec.onnx_path), "--tokenizer",
            str(tiny_spec.tokenizer_dir), "--max-length", "64", "--data", str(tiny_csv), "--size", "16", "--target"]
    assert cli_main([*argv, f"dataset:{folder}"]) == 2
    err = capsys.readouterr().err
    assert f"name the target's one as dataset:{folder}:SPLIT" in err
    payload = _json_run(capsys, [*argv, f"dataset:{folder}:test", "--json"])
    assert payload["run"].startswith("calibset-")


def test_tables_right_align_figures_only():
    from calib.cli.common import format_table

    table = format_table(("name", "value"), [("a", "+0.39 pts"), ("bb", "97.25 %"), ("c", "12 texts, KS 0.1"),
                                             ("d", "–"), ("e", 3), ("f", "1,024")])
    rows = table.splitlines()[2:]
    width = len(rows[0])
    assert rows[0].endswith("+0.39 pts") and rows[1].endswith("  97.25 %") and rows[3].endswith(" –")
    assert rows[2].index("12 texts") == len("name  ") and rows[4].endswith(" 3") and rows[5].endswith("1,024")
    assert all(len(r.rstrip()) <= width for r in rows)


def test_json_stdout_holds_only_the_json_object_even_when_a_library_prints(workspace, capsys, monkeypatch):
    import calib.cli.validate as validate_cli
    from calib.cli.common import emit_json

    def chatty_gate(args):
        print("a third-party library's stray line")
        emit_json({"passed": True, "margin": 0.1 + 0.2})
        return 0

    monkeypatch.setattr(validate_cli, "run_gate", chatty_gate)
    assert cli_main(["--workspace", str(workspace.root), "gate", "latest", "--max-drop", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"passed": True, "margin": 0.3}
    assert "stray line" in captured.err
    assert cli_main(["--workspace", str(workspace.root), "gate", "latest", "--max-drop", "1"]) == 0
    assert "stray line" in capsys.readouterr().out  # without --json, stdout is left alone


def test_the_second_text_column_has_the_librarys_name_and_keeps_the_old_one():
    from calib.cli import build_parser
    from calib.cli.common import input_values

    parser = build_parser()
    for flag in ("--text-pair-column", "--pair-column"):  # the DataSpec field's name; 0.1's name still read
        args = parser.parse_args(["assemble", "--data", "d.csv", flag, "question"])
        assert input_values(args)[1]["text_pair_column"] == "question", flag


def _defaults(parser, command: str) -> dict:
    """The option defaults of ``command`` (a sub-command path such as ``head fit``), as parsed."""
    return vars(parser.parse_args([*command.split(), *_required(command)]))


def test_option_defaults_that_copy_a_config_default_are_the_configs():
    """An option default the CLI spells out (the config's module is too slow to import on every `calib`
    start) is the config's own default, so changing the library's default changes the CLI's."""
    from calib.bench import BenchConfig
    from calib.build import BuildConfig
    from calib.calibrate import CalibrateConfig
    from calib.cli import build_parser
    from calib.cli.common import budget_from_args
    from calib.evaluation import EvalSettings
    from calib.head import HeadConfig
    from calib.pipeline import config_defaults
    from calib.placement import Placement
    from calib.report import ReportConfig
    from calib.sensitivity import SEARCH_BUDGET, SEARCH_SETTINGS, SensitivityConfig

    parser = build_parser()
    preset = config_defaults(Placement)["preset"]
    evaluation = config_defaults(EvalSettings)
    validate = _defaults(parser, "validate")
    assert {k: validate[k] for k in ("batch_size", "seed", "layer_rows", "bootstrap")} == {
        k: evaluation[k] for k in ("batch_size", "seed", "layer_rows", "bootstrap")}
    assert validate["placement"] == preset == config_defaults(BuildConfig)["placement"].preset

    search = config_defaults(SensitivityConfig)
    sensitivity = _defaults(parser, "sensitivity")
    for name in ("granularity", "ranking", "rank_check", "speed_texts", "cache_mb", "max_evaluations", "rank_rows"):
        assert sensitivity[name] == search[name], name
    assert sensitivity["batch_size"] == SEARCH_SETTINGS.batch_size and sensitivity["seed"] == SEARCH_SETTINGS.seed
    assert sensitivity["placement"] == search["placement"].preset == preset
    assert budget_from_args(parser.parse_args(["sensitivity", *_required("sensitivity")])) == SEARCH_BUDGET
    assert SEARCH_BUDGET == search["budget"]

    build = _defaults(parser, "build")
    made = config_defaults(BuildConfig)
    assert build["placement"] == made["placement"].preset and build["method"] == made["ranges"].method
    assert (build["backend"], build["trt_version"], build["trt_mode"]) == (made["backend"], made["trt_version"],
                                                                          made["trt_mode"])
    bench = _defaults(parser, "bench")
    assert (bench["limit"], tuple(bench["batch_size"]), bench["repeats"]) == tuple(
        config_defaults(BenchConfig)[k] for k in ("limit", "batch_sizes", "repeats"))
    calibrate = _defaults(parser, "calibrate")
    cal = config_defaults(CalibrateConfig)
    assert calibrate["placement"] == cal["placement"].preset
    assert tuple(calibrate["method"]) == cal["methods"]
    for name in ("percentile", "tensors", "batch_size", "histogram", "trt_version"):
        assert calibrate[name] == cal[name], name
    head = _defaults(parser, "head fit")
    assert {k: head[k] for k in ("folds", "seed", "batch_size")} == {
        k: config_defaults(HeadConfig)[k] for k in ("folds", "seed", "batch_size")}
    assert _defaults(parser, "report")["title"] == config_defaults(ReportConfig)["title"]


def test_placement_and_trt_mode_choices_are_the_librarys():
    """--placement offers calib.placement's presets in every command that takes it; --trt-mode (spelled out:
    calib.build is slow to import) offers exactly the modes calib build accepts."""
    import pytest

    from calib.build import TRT_MODES, BuildConfig, _check
    from calib.cli import build_parser
    from calib.errors import InputError
    from calib.placement import PRESETS

    parser = build_parser()
    for command in ("validate", "sensitivity", "build", "calibrate"):
        assert _choices(parser, command, "--placement") == tuple(PRESETS), command
    modes = _choices(parser, "build", "--trt-mode")
    assert tuple(modes) == TRT_MODES  # literal in the CLI: calib.build takes ~1.5 s to import
    for mode in modes:
        _check(BuildConfig(model="m.onnx", trt_mode=mode))  # accepted by the library
    with pytest.raises(InputError, match="TensorRT build mode"):
        _check(BuildConfig(model="m.onnx", trt_mode="bogus"))
    assert set(modes) >= {"auto", "explicit", "implicit"}
