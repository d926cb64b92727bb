"""Helpers for the reliability suite (tests/test_reliability_*.py).

Every reliability test carries ``@pytest.mark.reliability(KIND)``:

* ``clear-error``  bad input must end in one actionable line (exit 2), never a traceback;
* ``honest``       a result must not claim what it does not have (tampered input, missing CI);
* ``no-loss``      finished or in-progress work must survive (crashes, races, other processes).

When a test fails, its assertion message starts with ``TRACEBACK:``, ``SILENT:`` or ``LOST:`` where
the helpers can tell; ``scripts/reliability_table.py`` counts passes and failures by these tags
into the table in RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tinymodel

REPO = Path(__file__).resolve().parent.parent


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """``calib`` in this process; (exit code, stdout, stderr). SystemExit (argparse) is an exit code."""
    from calib.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
        except BaseException as exc:  # noqa: BLE001 - a raw exception is exactly what we look for
            import traceback

            traceback.print_exc(file=err)
            code = -1
            del exc
    return code, out.getvalue(), err.getvalue()


def expect_clear_error(argv: Sequence[str], *needles: str) -> str:
    """Run ``calib argv``; assert exit 2 with one ``calib: error:`` line naming every needle."""
    code, out, err = run_cli(argv)
    assert "Traceback" not in err, f"TRACEBACK: calib {' '.join(argv)}\n{err[-2000:]}"
    assert code == 2, f"SILENT: calib {' '.join(argv)} exited {code}, expected 2\n{out[-1000:]}\n{err[-1000:]}"
    lines = [line for line in err.splitlines() if line.startswith("calib: error:")]
    assert len(lines) == 1, f"TRACEBACK: expected one error line, got:\n{err}"
    for needle in needles:
        assert needle in lines[0], f"SILENT: {needle!r} not in the error line: {lines[0]}"
    return lines[0]


def expect_usage_error(argv: Sequence[str], needle: str) -> str:
    """argparse refuses: exit 2 and ``error:`` naming ``needle`` (after argparse's usage line)."""
    code, _, err = run_cli(argv)
    assert "Traceback" not in err, f"TRACEBACK: {err[-2000:]}"
    assert code == 2, f"SILENT: calib {' '.join(argv)} exited {code}, expected 2\n{err}"
    assert needle in err, f"SILENT: {needle!r} not in {err}"
    return err


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """A Python child running ``code`` with this checkout's calib importable."""
    env = dict(os.environ, PYTHONPATH=str(REPO), CALIB_THREADS="1")
    env.update(kwargs.pop("env", {}))
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, text=True,
                            stdout=kwargs.pop("stdout", subprocess.PIPE), stderr=kwargs.pop("stderr", subprocess.PIPE),
                            **kwargs)


def registry_row(root: Path, run_id: str) -> dict | None:
    """A run's registry row read straight from SQLite (no Workspace, so no recovery)."""
    conn = sqlite3.connect(root / "registry.sqlite", timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dict(row) if row is not None else None
    finally:
        conn.close()


def set_pid(root: Path, run_id: str, pid: int) -> None:
    conn = sqlite3.connect(root / "registry.sqlite", timeout=30)
    try:
        conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (pid, run_id))
        conn.commit()
    finally:
        conn.close()


def missing_pid() -> int:
    """A PID no process has here (what a run in another PID namespace looks like from outside)."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text()) if Path("/proc/sys/kernel/pid_max").exists() else 32768
    for pid in range(pid_max - 1, 1, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise RuntimeError("no free PID")


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def can_unshare(*flags: str) -> bool:
    """True when ``unshare FLAGS true`` works here (root, namespaces allowed)."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", *flags, "true"], check=False, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cli_ok(*argv: str) -> str:
    code, out, err = run_cli(list(argv))
    assert code == 0, f"calib {' '.join(argv)} exited {code}:\n{out[-1500:]}\n{err[-1500:]}"
    return out


def run_id_of(out: str) -> str:
    for line in out.splitlines():
        if line.startswith("run "):
            return line.split()[1].rstrip(":")
    raise AssertionError(f"no run id in:\n{out}")


@dataclass(frozen=True)
class Pipeline:
    root: Path
    model: Path
    tokenizer: Path
    data: Path
    calibset: str
    calibration: str
    build: str
    validate_no_ci: str
    report_no_ci: str

    def ws(self, *argv: str) -> list[str]:
        return ["--workspace", str(self.root), *argv]

    def model_args(self) -> list[str]:
        return ["--model", str(self.model), "--tokenizer", str(self.tokenizer), "--data", str(self.data),
                "--labels", ",".join(tinymodel.LABELS), "--max-length", "64"]


def make_pipeline(root: Path, tiny_model_path: Path, tiny_tokenizer_dir: Path, tiny_csv: Path) -> Pipeline:
    """A workspace with one run of each stage on the tiny model (validate without a CI)."""
    ws = ["--workspace", str(root)]
    model = ["--model", str(tiny_model_path), "--tokenizer", str(tiny_tokenizer_dir)]
    cs = run_id_of(cli_ok(*ws, "assemble", *model, "--data", str(tiny_csv), "--max-length", "64", "--size", "48"))
    cal = run_id_of(cli_ok(*ws, "calibrate", "--calibration-set", cs, "--method", "minmax", "entropy"))
    eng = run_id_of(cli_ok(*ws, "build", "--calibration", cal, "--method", "minmax"))
    val = run_id_of(cli_ok(*ws, "validate", "--engine", eng, *model, "--data", str(tiny_csv), "--labels",
                          ",".join(tinymodel.LABELS), "--max-length", "64", "--no-layers", "--bootstrap", "0",
                          "--limit", "64"))
    rep = run_id_of(cli_ok(*ws, "report", val))
    return Pipeline(root, tiny_model_path, tiny_tokenizer_dir, tiny_csv, cs, cal, eng, val, rep)
