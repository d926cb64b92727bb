"""Reliability of what stages read and say: upstream artifacts verified before use, an honest gate,
and the bad inputs a hostile probe found. Runs the real CLI on the tiny model."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from reliability import (
    REPO,
    Pipeline,
    can_unshare,
    cli_ok,
    expect_clear_error,
    expect_usage_error,
    make_pipeline,
    run_cli,
    run_id_of,
)

from calib.errors import InputError, WorkspaceError
from calib.pipeline import run_stage
from calib.workspace import MANIFEST_FILE, Workspace


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_path, tiny_tokenizer_dir, tiny_csv) -> Pipeline:
    return make_pipeline(tmp_path_factory.mktemp("reliability") / "ws", tiny_model_path, tiny_tokenizer_dir, tiny_csv)


class _Tampered:
    """Change a file for the duration of a ``with`` block, then put the original bytes back."""

    def __init__(self, path: Path, data: bytes | None = None) -> None:
        self.path, self.data = path, data

    def __enter__(self) -> Path:
        self.original = self.path.read_bytes()
        self.path.write_bytes(self.data if self.data is not None else self.original + b" ")
        return self.path

    def __exit__(self, *exc) -> None:
        self.path.write_bytes(self.original)


# -- artifacts verified before use ---------------------------------------------------------------
@pytest.mark.reliability("honest")
def test_build_from_a_tampered_ranges_json_is_refused(pipeline):
    ranges = pipeline.root / "runs" / pipeline.calibration / "ranges" / "minmax.json"
    data = json.loads(ranges.read_text())
    for tensor in data["tensors"][:3]:
        tensor["amax"] = 1e-6  # a plausible edit: the file still loads, the ranges are wrong
    with _Tampered(ranges, json.dumps(data).encode()):
        expect_clear_error(pipeline.ws("build", "--calibration", pipeline.calibration, "--method", "minmax"),
                           "ranges/minmax.json", "changed", "--trust-changed")
        out = cli_ok(*pipeline.ws("build", "--calibration", pipeline.calibration, "--method", "minmax",
                                   "--trust-changed"))
        run = Workspace(pipeline.root).get_run(run_id_of(out))
        assert run.params["trust_changed"] == [str(ranges)], "SILENT: the override was not recorded"
        code, out, _ = run_cli(pipeline.ws("runs", "verify", pipeline.build))  # built from the original ranges
        assert code == 1 and f"UPSTREAM CHANGED    {ranges}" in out, f"SILENT: {out}"
    assert Workspace(pipeline.root).verify(pipeline.calibration) == []
    code, out, _ = run_cli(pipeline.ws("runs", "verify", pipeline.build))
    assert code == 0 and "its inputs too" in out, out


def _edited_weights(path: Path) -> bytes:
    """``path``'s ONNX model with its first float initializer doubled: loads and runs, different numbers."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for index, init in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array * 2, init.name))
            break
    return model.SerializeToString()


@pytest.mark.reliability("honest")
def test_validate_of_a_tampered_qdq_model_is_refused(pipeline, tmp_path):
    qdq = pipeline.root / "runs" / pipeline.build / "model.qdq.onnx"
    args = ["--no-layers", "--bootstrap", "0", "--limit", "16", *pipeline.model_args()]
    with _Tampered(qdq, _edited_weights(qdq)):  # still a valid model: only the check can tell
        expect_clear_error(pipeline.ws("validate", "--engine", pipeline.build, *args), "model.qdq.onnx", "changed")
        expect_clear_error(pipeline.ws("validate", "--engine", str(qdq.parent), *args), "model.qdq.onnx")
        expect_clear_error(pipeline.ws("validate", "--engine", str(qdq), *args), "model.qdq.onnx")
    # A build folder copied out of the workspace carries its manifest: still checked.
    outside = tmp_path / "engine-copy"
    shutil.copytree(qdq.parent, outside)
    assert (outside / MANIFEST_FILE).is_file()
    with _Tampered(outside / "model.qdq.onnx", _edited_weights(outside / "model.qdq.onnx")):
        expect_clear_error(pipeline.ws("validate", "--engine", str(outside), *args), str(outside / "model.qdq.onnx"),
                           MANIFEST_FILE)
    cli_ok(*pipeline.ws("validate", "--engine", str(outside), *args))


@pytest.mark.reliability("honest")
def test_a_changed_file_two_stages_upstream_is_refused(pipeline):
    rows = sorted((pipeline.root / "runs" / pipeline.calibset / "rows").rglob("*.arrow"))
    assert rows
    with _Tampered(rows[0]):
        expect_clear_error(pipeline.ws("build", "--calibration", pipeline.calibration, "--method", "minmax"),
                           pipeline.calibset, "changed")


@dataclass(frozen=True)
class _Reads:
    source: str


def _copy_stage(config: _Reads, out_dir: Path, *, progress=None) -> None:
    shutil.copy(config.source, out_dir / "copy.bin")


@pytest.mark.reliability("honest")
def test_run_stage_checks_inputs_for_the_app_too(workspace):
    with workspace.start_run("calibrate", {}) as ctx:
        (ctx.dir / "stats.npz").write_bytes(b"a" * 100)
    stats = workspace.run_dir(ctx.id) / "stats.npz"
    stats.write_bytes(b"b" * 100)
    with pytest.raises(InputError, match=r"stats.npz changed since run .* recorded its sha256"):
        run_stage(workspace, "copy", _copy_stage, _Reads(str(stats)))
    trusting = Workspace(workspace.root, trust_changed=True)
    run_id, _ = run_stage(trusting, "copy", _copy_stage, _Reads(str(stats)))
    assert trusting.get_run(run_id).params["trust_changed"] == [str(stats.resolve())]
    (workspace.runs_dir / ".x.staging").mkdir()
    (workspace.runs_dir / ".x.staging" / "a").write_text("a")
    with pytest.raises(InputError, match="unfinished folder"):
        run_stage(workspace, "copy", _copy_stage, _Reads(str(workspace.runs_dir / ".x.staging" / "a")))


# -- the gate ---------------------------------------------------------------------------------------
@pytest.mark.reliability("honest")
def test_gate_refuses_an_edited_report(pipeline, tmp_path):
    report = pipeline.root / "runs" / pipeline.report_no_ci / "report.json"
    data = json.loads(report.read_text())
    data["headline"]["accuracy_drop_points"] = 0.0  # the edit a hurried release would want
    outside = tmp_path / "report-copy"
    shutil.copytree(report.parent, outside)
    with _Tampered(report, json.dumps(data).encode()):
        for ref in (pipeline.report_no_ci, str(report), str(report.parent)):
            expect_clear_error(pipeline.ws("gate", ref, "--max-drop", "100"), "report.json", "changed")
    with _Tampered(outside / "report.json", json.dumps(data).encode()):
        expect_clear_error(["--workspace", str(tmp_path / "nowhere"), "gate", str(outside / "report.json"),
                            "--max-drop", "100"], MANIFEST_FILE)
        assert not (tmp_path / "nowhere").exists()  # gating a file creates no workspace
    code, out, _ = run_cli(["--workspace", str(tmp_path / "nowhere"), "gate", str(outside), "--max-drop", "100"])
    assert code == 0 and "PASS" in out


@pytest.mark.reliability("honest")
def test_gate_use_ci_without_an_interval_fails_explicitly(pipeline):
    code, out, err = run_cli(pipeline.ws("gate", pipeline.report_no_ci, "--max-drop", "100", "--use-ci"))
    assert "Traceback" not in err, f"TRACEBACK: {err}"
    assert code == 1, f"SILENT: the gate passed --use-ci on a report without an interval: {out}{err}"
    assert "no interval of the drop" in err, err
    code, out, err = run_cli(pipeline.ws("gate", pipeline.report_no_ci, "--max-drop", "100"))
    assert code == 0 and "PASS" in out
    md = (pipeline.root / "runs" / pipeline.report_no_ci / "report.md").read_text()
    assert "no CI (bootstrap 0)" in md, "SILENT: the report does not say it has no interval"


@pytest.mark.reliability("clear-error")
def test_negative_bootstrap_and_seed_are_refused(pipeline):
    expect_usage_error(pipeline.ws("validate", "--engine", pipeline.build, *pipeline.model_args(), "--bootstrap", "-1"),
                       "--bootstrap: must be 0 or more")
    expect_usage_error(pipeline.ws("validate", "--engine", pipeline.build, *pipeline.model_args(), "--seed", "-3"),
                       "--seed: must be 0 or more")
    expect_usage_error(pipeline.ws("assemble", "--model", str(pipeline.model), "--tokenizer", str(pipeline.tokenizer),
                                   "--data", str(pipeline.data), "--seed", "-1"), "--seed: must be 0 or more")
    expect_usage_error(pipeline.ws("head", "fit", "--model", str(pipeline.model), "--tokenizer", str(pipeline.tokenizer),
                                   "--data", str(pipeline.data), "--seed", "-2"), "--seed: must be 0 or more")
    expect_usage_error(pipeline.ws("demo", "prepare", "--seed", "-5"), "--seed: must be 0 or more")


# -- bad input the probe found ---------------------------------------------------------------------
@pytest.mark.reliability("clear-error")
def test_max_length_beyond_the_position_embeddings_is_refused(pipeline):
    expect_clear_error(pipeline.ws("assemble", "--model", str(pipeline.model), "--tokenizer", str(pipeline.tokenizer),
                                   "--data", str(pipeline.data), "--max-length", "1024"),
                       "max length 1024 exceeds the 512 positions", "position_embeddings")
    args = [a if a != "64" else "2048" for a in pipeline.model_args()]
    expect_clear_error(pipeline.ws("validate", "--engine", pipeline.build, "--no-layers", *args),
                       "max length 2048 exceeds the 512 positions")


@pytest.mark.reliability("clear-error")
def test_weights_without_strategy_custom_is_refused(pipeline):
    expect_clear_error(pipeline.ws("assemble", "--model", str(pipeline.model), "--tokenizer", str(pipeline.tokenizer),
                                   "--data", str(pipeline.data), "--max-length", "64", "--weights", "1,1,1,1,1,1"),
                       "strategy custom")


@pytest.mark.reliability("clear-error")
def test_label_column_mixing_numbers_and_names_is_refused(pipeline, tmp_path):
    import pandas as pd

    frame = pd.read_csv(pipeline.data)
    frame["label"] = [("1" if v == "pos" else v) if i % 2 else v for i, v in enumerate(frame["label"])]
    mixed = tmp_path / "mixed.csv"
    frame.to_csv(mixed, index=False)
    args = ["--model", str(pipeline.model), "--tokenizer", str(pipeline.tokenizer), "--max-length", "64",
            "--data", str(mixed)]
    expect_clear_error(pipeline.ws("validate", "--engine", pipeline.build, "--no-layers", *args),
                       "mixes class numbers (1) and class names")
    expect_clear_error(pipeline.ws("assemble", *args, "--stratify"), "mixes class numbers")


@dataclass(frozen=True)
class _Noop:
    n: int = 0


@pytest.mark.reliability("clear-error")
def test_out_of_space_in_a_stage_is_one_line_naming_the_workspace(workspace):
    def full_disk(config, out_dir: Path, *, progress=None):
        (out_dir / "half.npz").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "stats.npz"))

    with pytest.raises(WorkspaceError) as info:
        run_stage(workspace, "calibrate", full_disk, _Noop())
    assert "no space left" in str(info.value) and str(workspace.root) in str(info.value)
    (run,) = workspace.list_runs()
    assert run.status == "failed" and not list(workspace.runs_dir.iterdir())


_FULL_DISK = """
set -e
mount -t tmpfs -o size=4m tmpfs "$1"
cd "$2"
"$3" - "$1/ws" "$4" "$5" "$6" <<'PY'
import sys
from calib.workspace import Workspace
root, model, tok, data = sys.argv[1:5]
Workspace(root)
with open(root + "/filler", "wb") as f:  # fill the disk, leaving a few KB
    try:
        while True:
            f.write(b"\\0" * 65536); f.flush()
    except OSError:
        pass
import os
os.truncate(root + "/filler", os.path.getsize(root + "/filler") - 48 * 1024)
from calib.cli import main
sys.exit(main(["--workspace", root, "assemble", "--model", model, "--tokenizer", tok, "--data", data,
               "--max-length", "64", "--size", "48"]))
PY
"""


@pytest.mark.reliability("clear-error")
@pytest.mark.skipif(not can_unshare("--mount"), reason="needs unshare --mount (root) for a small tmpfs")
def test_a_real_full_disk_is_one_line_naming_the_workspace(pipeline, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _FULL_DISK, "sh", str(mnt),
                           str(REPO), sys.executable, str(pipeline.model), str(pipeline.tokenizer), str(pipeline.data)],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, PYTHONPATH=str(REPO), CALIB_THREADS="1"))
    assert "Traceback" not in done.stderr, f"TRACEBACK: {done.stderr[-3000:]}"
    assert done.returncode == 2, f"SILENT: exit {done.returncode}\n{done.stdout[-1000:]}\n{done.stderr[-1000:]}"
    errors = [line for line in done.stderr.splitlines() if line.startswith("calib: error:")]
    assert len(errors) == 1 and str(mnt / "ws") in errors[0], done.stderr
    assert "space" in errors[0] or "full" in errors[0], errors[0]


@pytest.mark.reliability("no-loss")
def test_a_failing_progress_write_never_kills_a_run(workspace, monkeypatch):
    real_update = Workspace._update

    def flaky(self, run_id, **fields):
        if "progress" in fields and "status" not in fields:
            raise WorkspaceError(f"workspace {self.root}: run registry failed (disk I/O error)")
        return real_update(self, run_id, **fields)

    monkeypatch.setattr(Workspace, "_update", flaky)

    def stage(config, out_dir: Path, *, progress=None):
        for i in range(5):
            progress(i / 5, "working")
        (out_dir / "out.txt").write_text("done")

    run_id, _ = run_stage(workspace, "calibrate", stage, _Noop())
    run = workspace.get_run(run_id)
    assert run.status == "finished" and [a.path for a in run.artifacts] == ["out.txt"], "LOST"


@pytest.mark.reliability("clear-error")
@pytest.mark.parametrize("line, needle", [
    ("a: 7fc00000", "finite and positive"),   # NaN
    ("a: 7f800000", "finite and positive"),   # +inf
    ("a: 0", "finite and positive"),          # zero
    ("a: bf800000", "finite and positive"),   # -1.0
    ("a: 3c010204\na: 3c010204", "appears twice"),
])
def test_tensorrt_cache_reader_refuses_impossible_scales(tmp_path, line, needle):
    from calib.trtcache import read_trt_cache

    path = tmp_path / "calibration.cache"
    path.write_text(f"TRT-100300-EntropyCalibration2\nb: 3c010204\n{line}\n")
    with pytest.raises(InputError, match=needle) as info:
        read_trt_cache(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# -- cases that already held: corrupt files, bad CSVs, path tricks -----------------------------------
@pytest.mark.reliability("clear-error")
def test_corrupt_onnx_tokenizer_and_csvs_are_one_line(pipeline, tmp_path):
    base = ["assemble", "--max-length", "64"]
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(os.urandom(2048))
    expect_clear_error(pipeline.ws(*base, "--model", str(bad_onnx), "--tokenizer", str(pipeline.tokenizer),
                                   "--data", str(pipeline.data)), str(bad_onnx))
    bad_tok = tmp_path / "tok"
    bad_tok.mkdir()
    (bad_tok / "tokenizer.json").write_text("{not json")
    expect_clear_error(pipeline.ws(*base, "--model", str(pipeline.model), "--tokenizer", str(bad_tok),
                                   "--data", str(pipeline.data)), str(bad_tok))
    good = ["--model", str(pipeline.model), "--tokenizer", str(pipeline.tokenizer)]
    for name, content, needle in [
        ("empty.csv", b"", "empty.csv"),
        ("notext.csv", b"review,label\nfine,pos\n", "text"),
        ("binary.csv", os.urandom(4096), "binary.csv"),
        ("header-only.csv", b"text,label\n", "header-only.csv"),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        expect_clear_error(pipeline.ws(*base, *good, "--data", str(path)), needle)
    expect_clear_error(pipeline.ws(*base, *good, "--data", str(tmp_path / "missing.csv")), "missing.csv")


@pytest.mark.reliability("clear-error")
def test_path_traversal_in_run_ids_and_upload_names(pipeline, tmp_path):
    sys.path.insert(0, str(REPO / "app"))
    from lib import uploads

    for ref in ("../../etc/passwd", "..", "/etc/passwd/x", "x/../../y"):
        code, _, err = run_cli(pipeline.ws("runs", "show", ref))
        assert code == 2 and "Traceback" not in err, err
    expect_clear_error(pipeline.ws("build", "--calibration", "../../../../../../etc", "--method", "minmax"),
                       "not a calibration run")
    expect_clear_error(pipeline.ws("build", "--calibration", "../nope", "--method", "minmax"), "no run '../nope'")
    ws = Workspace(pipeline.root)
    for name in ("../../evil.csv", "..\\..\\evil.csv", "/etc/evil.csv", ".hidden.csv", "a\x00b.csv"):
        path = uploads.store_upload(ws, "../../sess", uploads.DATASET, name, b"text,label\na,pos\n")
        assert path.resolve().is_relative_to(ws.uploads_dir.resolve()), path
    with pytest.raises(InputError):
        ws.start_run("x", {}, run_id="../escape").__enter__()


# -- uploads are size-checked while streaming -------------------------------------------------------
class _Upload:
    """A file object like Streamlit's UploadedFile that counts what is read from it."""

    def __init__(self, total: int, size: int | None) -> None:
        self.total, self.pos, self.read_bytes = total, 0, 0
        if size is not None:
            self.size = size

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int = -1) -> bytes:
        n = self.total - self.pos if n < 0 else min(n, self.total - self.pos)
        self.pos += n
        self.read_bytes += n
        return b"a" * n


@pytest.mark.reliability("clear-error")
def test_uploads_are_size_checked_while_streaming(workspace):
    sys.path.insert(0, str(REPO / "app"))
    from lib import uploads

    kind = uploads.UploadKind("dataset", (".csv",), 3 * uploads.MB)
    declared = _Upload(50 * uploads.MB, size=50 * uploads.MB)
    with pytest.raises(InputError, match="limit is 3 MB"):
        uploads.store_upload(workspace, "s", kind, "big.csv", declared)
    assert declared.read_bytes == 0  # refused by its declared size before reading anything
    undeclared = _Upload(50 * uploads.MB, size=None)
    with pytest.raises(InputError, match="limit is 3 MB"):
        uploads.store_upload(workspace, "s", kind, "big.csv", undeclared)
    assert undeclared.read_bytes <= 3 * uploads.MB + uploads.CHUNK  # stopped at the limit, not at the end
    assert not [p for p in workspace.uploads_dir.rglob("*") if p.is_file()]  # nothing half-written
    ok = uploads.store_upload(workspace, "s", kind, "fine.csv", _Upload(2 * uploads.MB, size=2 * uploads.MB))
    assert ok.stat().st_size == 2 * uploads.MB
