"""The run registry: finished, failed and interrupted runs, tampering, unusable workspaces, `calib runs`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from calib.cli import main as cli_main
from calib.errors import InputError, WorkspaceError
from calib.io import sha256_file
from calib.pipeline import run_stage
from calib.workspace import Workspace


def _finished_run(ws: Workspace, stage: str = "calibrate", **params) -> str:
    with ws.start_run(stage, {"method": "entropy", **params}, label="first") as ctx:
        (ctx.dir / "ranges").mkdir()
        (ctx.dir / "ranges" / "entropy.json").write_text('{"a": 1.0}')
        (ctx.dir / "stats.npz").write_bytes(b"\x00" * 1000)
        ctx.progress(0.5, "half way")
        ctx.summary["tensors"] = 2
        run_id = ctx.id
    return run_id


def test_finished_run_registers_every_file_with_sha256(workspace):
    run_id = _finished_run(workspace)
    run = workspace.get_run(run_id)
    assert run.status == "finished" and run.progress == 1.0 and run.finished_at
    assert run.params == {"method": "entropy"} and run.label == "first" and run.summary == {"tensors": 2}
    assert [a.path for a in run.artifacts] == ["ranges/entropy.json", "stats.npz"]
    for art in run.artifacts:
        assert art.sha256 == sha256_file(run.dir / art.path)
        assert art.bytes == (run.dir / art.path).stat().st_size
    assert run.dir == workspace.runs_dir / run_id and run.dir.is_dir()
    assert not list(workspace.runs_dir.glob(".*.staging"))
    assert workspace.verify(run_id) == []
    assert workspace.resolve_run(run_id, stage="calibrate") == run.dir


def test_list_runs_newest_first_and_filters(workspace):
    first = _finished_run(workspace, stage="calibrate")
    second = _finished_run(workspace, stage="build")
    with pytest.raises(RuntimeError), workspace.start_run("build", {}) as ctx:
        raise RuntimeError("boom")
    failed = ctx.id
    assert [r.id for r in workspace.list_runs()] == [failed, second, first]
    assert [r.id for r in workspace.list_runs(stage="build")] == [failed, second]
    assert [r.id for r in workspace.list_runs(status="failed")] == [failed]
    assert workspace.list_runs(stage="validate") == []


def test_failed_run_registers_nothing_and_keeps_no_folder(workspace):
    with pytest.raises(ValueError, match="bad range"), workspace.start_run("calibrate", {"method": "mse"}) as ctx:
        (ctx.dir / "half.json").write_text("{")
        raise ValueError("bad range\nsecond line of detail")
    run = workspace.get_run(ctx.id)
    assert run.status == "failed" and run.error == "bad range"
    assert run.artifacts == [] and not run.dir.exists() and not ctx.dir.exists()
    with pytest.raises(WorkspaceError, match="failed, not finished"):
        workspace.resolve_run(ctx.id)


@dataclass(frozen=True)
class _Config:
    value: int
    path: Path


@dataclass(frozen=True)
class _Artifact:
    dir: Path

    @classmethod
    def load(cls, directory: Path) -> _Artifact:
        return cls(Path(directory))

    def summary(self) -> dict:
        return {"files": len(list(self.dir.iterdir()))}


def test_run_stage_success_reloads_artifact_from_final_folder(workspace, tmp_path):
    def stage(config: _Config, out_dir: Path, *, progress=None) -> _Artifact:
        progress(0.5, "working")
        (out_dir / "out.txt").write_text(str(config.value))
        return _Artifact(out_dir)

    seen = []
    run_id, artifact = run_stage(workspace, "demo-stage", stage, _Config(3, tmp_path),
                                 progress=lambda f, m: seen.append((f, m)))
    assert artifact.dir == workspace.run_dir(run_id)
    run = workspace.get_run(run_id)
    assert run.params == {"value": 3, "path": str(tmp_path)} and run.summary == {"files": 1}
    assert seen == [(0.5, "working")]


def test_failed_stage_registers_nothing(workspace, tmp_path):
    def stage(config: _Config, out_dir: Path, *, progress=None) -> _Artifact:
        (out_dir / "partial.npz").write_bytes(b"partial")
        raise InputError(f"calibration set {config.path} has no rows")

    with pytest.raises(InputError, match="has no rows"):
        run_stage(workspace, "calibrate", stage, _Config(1, tmp_path))
    (run,) = workspace.list_runs()
    assert run.status == "failed" and "has no rows" in run.error
    assert workspace.get_run(run.id).artifacts == []
    assert list(workspace.runs_dir.iterdir()) == []


def test_keyboard_interrupt_marks_run_interrupted(workspace):
    with pytest.raises(KeyboardInterrupt), workspace.start_run("calibrate", {}) as ctx:
        (ctx.dir / "x").write_text("x")
        raise KeyboardInterrupt
    run = workspace.get_run(ctx.id)
    assert run.status == "interrupted" and run.artifacts == [] and not ctx.dir.exists()


_DYING_STAGE = textwrap.dedent("""
    import os, sys
    from calib.workspace import Workspace
    ws = Workspace(sys.argv[1])
    with ws.start_run("calibrate", {"method": "entropy"}) as ctx:
        (ctx.dir / "stats.npz").write_bytes(b"half-written")
        print(ctx.id, flush=True)
        os._exit(3)  # the process dies mid-write: no exception handler, no cleanup
""")


def test_process_dying_mid_run_leaves_an_interrupted_run_and_nothing_registered(tmp_path):
    root = tmp_path / "ws"
    done = subprocess.run([sys.executable, "-c", _DYING_STAGE, str(root)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 3, done.stderr
    run_id = done.stdout.strip()
    staging = root / "runs" / f".{run_id}.staging"
    assert (staging / "stats.npz").is_file()  # what the dead process left behind

    ws = Workspace(root)  # reopening recovers
    run = ws.get_run(run_id)
    assert run.status == "interrupted" and "stopped before it finished" in run.error and run.finished_at
    assert run.artifacts == []
    assert not staging.exists() and not (root / "runs" / run_id).exists()
    assert ws.recover() == []  # idempotent
    with pytest.raises(WorkspaceError, match="interrupted, not finished"):
        ws.resolve_run(run_id)


def test_reopening_keeps_runs_of_live_processes_running(workspace):
    with workspace.start_run("calibrate", {}) as ctx:
        (ctx.dir / "part").write_text("p")
        other = Workspace(workspace.root)  # e.g. the app opening the same workspace meanwhile
        assert other.get_run(ctx.id).status == "running"
        assert (ctx.dir / "part").is_file()
    assert workspace.get_run(ctx.id).status == "finished"


def test_verify_detects_tampered_and_missing_files(workspace):
    run_id = _finished_run(workspace)
    run_dir = workspace.run_dir(run_id)
    (run_dir / "ranges" / "entropy.json").write_text('{"a": 2.0}')
    assert workspace.verify(run_id) == ["ranges/entropy.json"]
    (run_dir / "stats.npz").unlink()
    assert workspace.verify(run_id) == ["ranges/entropy.json", "stats.npz"]


def test_unwritable_workspace_path_is_a_workspace_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkspaceError, match="a-file.*not writable") as info:
        Workspace(blocker / "ws")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_workspace_folder_is_a_workspace_error(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(WorkspaceError, match="not writable"):
            Workspace(root)
    finally:
        root.chmod(0o700)


def test_corrupt_registry_is_a_workspace_error(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "registry.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(WorkspaceError, match="registry.sqlite is not a valid SQLite database"):
        Workspace(root)


def test_unknown_run_and_wrong_stage(workspace):
    run_id = _finished_run(workspace, stage="calibrate")
    with pytest.raises(WorkspaceError, match="no run 'nope'"):
        workspace.get_run("nope")
    with pytest.raises(WorkspaceError, match="is a 'calibrate' run, expected a 'build' run"):
        workspace.resolve_run(run_id, stage="build")


# -- calib runs ----------------------------------------------------------------------------------------

def test_cli_runs_list_show_verify(workspace, capsys):
    run_id = _finished_run(workspace)
    root = str(workspace.root)
    assert cli_main(["--workspace", root, "runs", "list"]) == 0
    out = capsys.readouterr().out
    assert run_id in out and "finished" in out
    assert cli_main(["--workspace", root, "runs", "list", "--stage", "build"]) == 0
    assert "no runs" in capsys.readouterr().out

    assert cli_main(["--workspace", root, "runs", "show", run_id]) == 0
    out = capsys.readouterr().out
    art = workspace.get_run(run_id).artifacts[0]
    assert '"method": "entropy"' in out and art.path in out and art.sha256 in out

    assert cli_main(["--workspace", root, "runs", "verify", run_id]) == 0
    assert "ok: all 2 artifacts" in capsys.readouterr().out
    (workspace.run_dir(run_id) / "stats.npz").write_bytes(b"changed")
    assert cli_main(["--workspace", root, "runs", "verify", run_id]) == 1
    assert "stats.npz" in capsys.readouterr().out

    assert cli_main(["--workspace", root, "runs", "show", "missing-id"]) == 2
    assert "no run 'missing-id'" in capsys.readouterr().err


def test_cli_runs_show_prints_figures_without_float_noise(workspace, capsys):
    with workspace.start_run("validate", {"threshold": 0.1 + 0.2}) as ctx:
        (ctx.dir / "evaluation.json").write_text("{}")
        ctx.summary["accuracy_drop_points"] = 1.6666666666666663
        run_id = ctx.id
    assert cli_main(["--workspace", str(workspace.root), "runs", "show", run_id]) == 0
    out = capsys.readouterr().out
    assert "1.66666666667" in out and "1.6666666666666663" not in out
    assert '"threshold": 0.3' in out and "0.30000000000000004" not in out
    with workspace.start_run("build", {}) as live:
        assert cli_main(["--workspace", str(workspace.root), "runs", "show", live.id]) == 0
        status = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("status"))
        assert status.split() == ["status", "running"]  # no empty "()" when there is no message yet
        (live.dir / "engine.json").write_text("{}")


def test_cli_runs_verify_of_failed_run_fails(workspace, capsys):
    with pytest.raises(RuntimeError), workspace.start_run("build", {}) as ctx:
        raise RuntimeError("no engine")
    assert cli_main(["--workspace", str(workspace.root), "runs", "verify", ctx.id]) == 1
    assert "failed, not finished (no engine)" in capsys.readouterr().out


def test_notes_and_tags_on_a_run(workspace):
    from calib.errors import WorkspaceError

    with workspace.start_run("validate", {"x": 1}) as ctx:
        (ctx.dir / "a.txt").write_text("a")
    rid = ctx.id
    assert workspace.notes() == {}
    workspace.set_notes(rid, " release candidate ", ["rc", " entropy ", "rc", ""])
    assert workspace.notes() == {rid: ("release candidate", ("rc", "entropy"))}
    workspace.set_notes(rid, "", ["rejected"])
    assert workspace.notes([rid]) == {rid: ("", ("rejected",))} and workspace.notes(["other"]) == {}
    assert workspace.verify(rid) == []  # notes are not artifacts: the run's files are untouched
    with pytest.raises(WorkspaceError):
        workspace.set_notes("validate-nope", "x")
    workspace.delete_run(rid)
    assert workspace.notes() == {}


def test_a_cancelled_run_is_recorded_as_cancelled(workspace):
    from calib.errors import RunCancelled

    with pytest.raises(RunCancelled), workspace.start_run("calibset", {}) as ctx:
        (ctx.dir / "partial").write_text("x")
        raise RunCancelled("calibset run cancelled at 40 %")
    run = workspace.get_run(ctx.id)
    assert run.status == "cancelled" and "cancelled at 40 %" in run.error
    assert not run.dir.exists() and not list(workspace.runs_dir.glob(f".{ctx.id}*"))
