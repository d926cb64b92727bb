"""Reliability of the run registry: liveness across PID namespaces and PID reuse, no creation race,
atomic finish, recover/delete, read-only inspection. Processes are real child processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from reliability import (
    REPO,
    can_unshare,
    expect_clear_error,
    missing_pid,
    python,
    registry_row,
    run_cli,
    set_pid,
    wait_for,
)

from calib.errors import InputError, WorkspaceError
from calib.pipeline import run_stage
from calib.workspace import MANIFEST_FILE, Workspace

# A stage that writes one file, says its run id, waits for a go-file, then writes a second file.
_HOLDER = textwrap.dedent("""
    import sys, time, pathlib
    from calib.workspace import Workspace
    root, go = sys.argv[1], pathlib.Path(sys.argv[2])
    ws = Workspace(root)
    with ws.start_run("calibrate", {"method": "entropy"}) as ctx:
        (ctx.dir / "stats.npz").write_bytes(b"s" * 4096)
        print(ctx.id, flush=True)
        while not go.exists():
            time.sleep(0.05)
        (ctx.dir / "stats.json").write_text('{"tensors": 2}')
    print("finished", flush=True)
""")


def _start_holder(root: Path, go: Path, *prefix: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), CALIB_THREADS="1")
    proc = subprocess.Popen([*prefix, sys.executable, "-c", _HOLDER, str(root), str(go)], cwd=REPO, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.stderr.read()
    return proc, run_id


def _finish_holder(proc: subprocess.Popen, go: Path) -> None:
    go.write_text("go")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"LOST: the live run failed after another process opened the workspace:\n{err}"
    assert "finished" in out


@pytest.mark.reliability("no-loss")
def test_live_run_whose_pid_looks_dead_is_not_recovered(tmp_path):
    """A run in another PID namespace has a PID that means nothing here: its lock keeps it alive."""
    root, go = tmp_path / "ws", tmp_path / "go"
    Workspace(root)
    proc, run_id = _start_holder(root, go)
    try:
        set_pid(root, run_id, missing_pid())  # what a containerised process's PID looks like from here
        ws = Workspace(root)  # e.g. the app opening the workspace: recovery runs
        assert ws.get_run(run_id).status == "running", "LOST: a live run was marked interrupted"
        assert (root / "runs" / f".{run_id}.staging" / "stats.npz").is_file(), "LOST: live staging folder deleted"
        assert ws.recover() == [] and ws.is_live(run_id)
        expect_clear_error(["--workspace", str(root), "runs", "delete", run_id], "still running")
        code, out, _ = run_cli(["--workspace", str(root), "runs", "show", run_id])
        assert code == 0 and "alive (holds its run lock)" in out and "last heartbeat 20" in out
    finally:
        _finish_holder(proc, go)
    run = Workspace(root).get_run(run_id)
    assert run.status == "finished"
    assert [a.path for a in run.artifacts] == ["stats.json", "stats.npz"], "LOST: finished without its files"
    assert Workspace(root).verify(run_id) == []


@pytest.mark.reliability("no-loss")
def test_dead_run_whose_pid_was_reused_is_interrupted(tmp_path):
    """A run whose process died while its PID now belongs to a live process must not stay running."""
    root, go = tmp_path / "ws", tmp_path / "go"
    Workspace(root)
    proc, run_id = _start_holder(root, go)
    proc.kill()
    proc.wait(timeout=30)
    set_pid(root, run_id, os.getpid())  # the PID is alive again: reused by another process
    settled = Workspace(root).recovered
    run = Workspace(root).get_run(run_id)
    assert run.status == "interrupted" and run_id in settled, f"SILENT: dead run left {run.status}"
    assert not (root / "runs" / f".{run_id}.staging").exists()
    assert not (root / "runs" / f".{run_id}.lock").exists()


@pytest.mark.reliability("no-loss")
@pytest.mark.skipif(not can_unshare("--pid", "--fork"), reason="needs unshare --pid (root, namespaces)")
def test_run_in_its_own_pid_namespace(tmp_path):
    """`unshare --pid --fork`: the stage runs as PID 1 of its namespace. While it lives, opening the
    workspace keeps it; once it is killed, recovery marks it interrupted (PID 1 is always 'alive' here)."""
    root = tmp_path / "ws"
    Workspace(root)
    go = tmp_path / "go"
    proc, run_id = _start_holder(root, go, "unshare", "--pid", "--fork", "--kill-child")
    try:
        row = registry_row(root, run_id)
        assert row["pid"] != proc.pid  # the PID it sees is its namespace's
        assert Workspace(root).get_run(run_id).status == "running"
        assert (root / "runs" / f".{run_id}.staging" / "stats.npz").is_file(), "LOST: live staging folder deleted"
    finally:
        _finish_holder(proc, go)
    assert Workspace(root).verify(run_id) == [] and Workspace(root).get_run(run_id).status == "finished"

    go2 = tmp_path / "go2"
    proc, run_id = _start_holder(root, go2, "unshare", "--pid", "--fork", "--kill-child")
    assert registry_row(root, run_id)["pid"] == 1
    proc.send_signal(signal.SIGKILL)  # unshare dies; --kill-child takes the namespace's PID 1 with it
    proc.wait(timeout=30)
    try:  # the namespace's processes die with it; the next opening of the workspace settles the run
        wait_for(lambda: Workspace(root).get_run(run_id).status == "interrupted", timeout=30, what="recovery")
    except AssertionError:
        status = Workspace(root).get_run(run_id).status
        raise AssertionError(f"SILENT: a dead run whose PID was 1 in its namespace stayed {status}") from None


_STRESS_WRITER = textwrap.dedent("""
    import sys, time
    from calib.workspace import Workspace
    root, n = sys.argv[1], int(sys.argv[2])
    ws = Workspace(root)
    done = []
    for i in range(n):
        with ws.start_run("calibrate", {"i": i}) as ctx:
            (ctx.dir / "a.bin").write_bytes(bytes([i % 256]) * 2048)
            time.sleep(0.02)
            (ctx.dir / "b.json").write_text('{"i": %d}' % i)
            done.append(ctx.id)
    print(" ".join(done), flush=True)
""")
_STRESS_OPENER = textwrap.dedent("""
    import sys, time
    from calib.workspace import Workspace
    root, seconds = sys.argv[1], float(sys.argv[2])
    end, opened = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        Workspace(root)
        opened += 1
    print(opened, flush=True)
""")


@pytest.mark.reliability("no-loss")
def test_many_processes_starting_runs_while_others_open_the_workspace_lose_nothing(tmp_path):
    root = tmp_path / "ws"
    Workspace(root)
    writers = [python(_STRESS_WRITER, str(root), "8") for _ in range(5)]
    openers = [python(_STRESS_OPENER, str(root), "8") for _ in range(3)]
    ids, errors = [], []
    for proc in writers:
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
        ids += out.split()
    opens = sum(int(p.communicate(timeout=300)[0] or 0) for p in openers)
    assert not errors, f"LOST: {len(errors)} writer(s) lost runs: {errors[:3]}"
    assert opens > 10  # the openers really raced the writers
    ws = Workspace(root)
    runs = ws.list_runs(limit=1000)
    assert len(ids) == 40 and {r.id for r in runs} == set(ids)
    assert all(r.status == "finished" for r in runs), "LOST: " + str({r.status for r in runs})
    assert all(ws.verify(r.id) == [] and len(ws.get_run(r.id).artifacts) == 2 for r in runs)
    assert not list((root / "runs").glob(".*"))


# -- atomic finish ---------------------------------------------------------------------------------
# The process dies right after the staging folder is renamed into place, before the registry says
# "finished" (the crash the old order could not tell from a complete run).
_DIES_AFTER_RENAME = textwrap.dedent("""
    import os, sys
    import calib.workspace as w
    real_replace = os.replace
    def replace_then_die(src, dst):
        real_replace(src, dst)
        if str(src).endswith(".staging"):
            os._exit(9)
    w.os.replace = replace_then_die
    ws = w.Workspace(sys.argv[1])
    with ws.start_run("calibrate", {"method": "entropy"}) as ctx:
        (ctx.dir / "ranges").mkdir()
        (ctx.dir / "ranges" / "entropy.json").write_text('{"a": 1.0}')
        (ctx.dir / "stats.npz").write_bytes(b"x" * 1000)
        print(ctx.id, flush=True)
""")


@dataclass(frozen=True)
class _Reads:
    source: str


def _reader(config: _Reads, out_dir: Path, *, progress=None):
    (out_dir / "read.txt").write_text(Path(config.source, "ranges", "entropy.json").read_text())


def _crash_after_rename(root: Path) -> str:
    proc = python(_DIES_AFTER_RENAME, str(root))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 9, err
    return out.strip()


@pytest.mark.reliability("honest")
def test_crash_between_rename_and_registry_is_accepted_only_if_it_verifies(tmp_path):
    root = tmp_path / "ws"
    Workspace(root)
    run_id = _crash_after_rename(root)
    assert registry_row(root, run_id)["status"] == "finishing"
    ws = Workspace(root)  # recovery: every file verifies -> finished
    run = ws.get_run(run_id)
    assert run.status == "finished" and ws.verify(run_id) == [] and "recovered" in run.message
    run_stage(ws, "reader", _reader, _Reads(str(run.dir)))

    tampered = _crash_after_rename(root)
    (root / "runs" / tampered / "stats.npz").write_bytes(b"y" * 1000)  # changed before anyone verified it
    with pytest.raises(InputError, match="not finished"):
        run_stage(_no_recover(root), "reader", _reader, _Reads(str(root / "runs" / tampered)))
    ws = Workspace(root)
    assert ws.get_run(tampered).status == "interrupted", "SILENT: a crashed run with a changed file was accepted"
    assert not (root / "runs" / tampered).exists() and ws.get_run(tampered).artifacts == []
    with pytest.raises(WorkspaceError, match="interrupted, not finished"):
        ws.resolve_run(tampered)


def _no_recover(root: Path) -> Workspace:
    """A workspace handle that has not run recovery (another process opened it before the crash)."""
    ws = Workspace.__new__(Workspace)
    ws.root, ws.db_path, ws.trust_changed, ws.read_only = root, root / "registry.sqlite", False, False
    import threading

    ws._lock, ws.recovered = threading.Lock(), []
    return ws


@pytest.mark.reliability("honest")
def test_finished_run_writes_its_own_manifest(workspace):
    with workspace.start_run("calibrate", {}) as ctx:
        (ctx.dir / "x.json").write_text("{}")
    manifest = json.loads((workspace.run_dir(ctx.id) / MANIFEST_FILE).read_text())
    assert manifest["run"] == ctx.id and set(manifest["files"]) == {"x.json"}
    assert [a.path for a in workspace.get_run(ctx.id).artifacts] == ["x.json"]


# -- recover / delete ------------------------------------------------------------------------------
_DIES = textwrap.dedent("""
    import os, sys
    from calib.workspace import Workspace
    ws = Workspace(sys.argv[1])
    with ws.start_run("calibrate", {}) as ctx:
        (ctx.dir / "half").write_bytes(b"h")
        print(ctx.id, flush=True)
        os._exit(3)
""")


@pytest.mark.reliability("no-loss")
def test_cli_runs_recover_and_delete(tmp_path):
    root = tmp_path / "ws"
    ws = Workspace(root)
    with ws.start_run("calibset", {}) as parent:
        (parent.dir / "manifest.json").write_text("{}")
    with ws.start_run("calibrate", {}, parents=[parent.id]) as child:
        (child.dir / "stats.npz").write_bytes(b"s")
    proc = python(_DIES, str(root))
    dead = proc.communicate(timeout=60)[0].strip()
    code, out, _ = run_cli(["--workspace", str(root), "runs", "recover"])
    assert code == 0 and f"{dead}: interrupted" in out
    code, out, _ = run_cli(["--workspace", str(root), "runs", "recover"])
    assert code == 0 and "nothing to recover" in out

    expect_clear_error(["--workspace", str(root), "runs", "delete", parent.id], "parent of", child.id, "--force")
    assert (root / "runs" / parent.id).is_dir()
    for run_id in (child.id, dead, parent.id):
        code, out, err = run_cli(["--workspace", str(root), "runs", "delete", run_id])
        assert code == 0, err
        assert not (root / "runs" / run_id).exists() and registry_row(root, run_id) is None
    expect_clear_error(["--workspace", str(root), "runs", "delete", "../../etc"], "no run '../../etc'")
    assert not list((root / "runs").iterdir())


# -- read-only workspaces --------------------------------------------------------------------------
@pytest.mark.reliability("clear-error")
def test_read_only_handle_inspects_but_cannot_start_runs(workspace):
    with workspace.start_run("calibrate", {}) as ctx:
        (ctx.dir / "a").write_text("a")
    ro = Workspace(workspace.root, read_only=True)
    assert ro.read_only and [r.id for r in ro.list_runs()] == [ctx.id] and ro.verify(ctx.id) == []
    with pytest.raises(WorkspaceError, match="read-only"), ro.start_run("x", {}):
        pass
    with pytest.raises(WorkspaceError, match="no run registry"):
        Workspace(workspace.root / "nowhere", read_only=True)


_RO_INSPECT = """
set -e
mount --bind -o ro "$1" "$1"
touch "$1/probe" 2>/dev/null && { echo "still writable"; exit 9; }
cd "$3"
for action in "runs list" "runs show $2" "runs verify $2"; do
  "$4" -m calib --workspace "$1" $action || { echo "FAILED: $action"; exit 8; }
done
"$4" -m calib --workspace "$1" runs delete "$2" && exit 7
exit 0
"""


@pytest.mark.reliability("clear-error")
@pytest.mark.skipif(not can_unshare("--mount"), reason="needs unshare --mount (root) for a read-only bind mount")
def test_cli_inspects_a_workspace_on_a_read_only_mount(tmp_path):
    root = tmp_path / "ws"
    ws = Workspace(root)
    with ws.start_run("calibrate", {"method": "minmax"}) as ctx:
        (ctx.dir / "ranges.json").write_text('{"a": 1}')
    with ws.start_run("calibrate", {}) as ctx2:  # keep the WAL files around as a live server would
        (ctx2.dir / "b").write_text("b")
    dead = python(_DIES, str(root))  # a run whose process died; nobody recovers it before the mount
    dead_id = dead.communicate(timeout=60)[0].strip()
    for extra in root.glob("registry.sqlite-*"):
        extra.unlink()  # and the harder case: no -shm/-wal to open read-only with
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _RO_INSPECT, "sh",
                           str(root), ctx.id, str(REPO), sys.executable], capture_output=True, text=True, check=False,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert "Traceback" not in done.stderr, f"TRACEBACK: {done.stderr[-3000:]}"
    assert done.returncode == 0, f"SILENT: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert ctx.id in done.stdout and "ok: all 1 artifacts" in done.stdout and "ranges.json" in done.stdout
    assert f"{dead_id}  calibrate  running (process gone)" in done.stdout, f"SILENT: {done.stdout}"
    assert "is read-only here" in done.stdout
    assert "not writable" in done.stderr and "Read-only file system" in done.stderr  # the refused delete, one line


@pytest.mark.reliability("clear-error")
def test_registry_disk_errors_are_one_line_naming_the_workspace(workspace, monkeypatch):
    def broken(self):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Workspace, "_open", broken)
    line = expect_clear_error(["--workspace", str(workspace.root), "runs", "list"], str(workspace.root), "disk I/O error")
    assert "free space" in line


@pytest.mark.reliability("no-loss")
def test_a_running_stage_writes_a_heartbeat(workspace, monkeypatch):
    import time

    import calib.workspace as w

    monkeypatch.setattr(w, "HEARTBEAT_SECONDS", 0.1)
    with workspace.start_run("calibrate", {}) as ctx:
        first = registry_row(workspace.root, ctx.id)["heartbeat_at"]
        time.sleep(1.3)  # stamps have one-second resolution
        later = registry_row(workspace.root, ctx.id)["heartbeat_at"]
        (ctx.dir / "a").write_text("a")
    assert first and later and later > first, (first, later)
