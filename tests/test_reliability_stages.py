"""Reliability of real stages: kill -9 in the middle of each stage loses nothing that finished and
registers nothing half-written; eight runs at once all finish and verify."""

from __future__ import annotations

import signal
import textwrap

import pytest
import tinymodel
from reliability import Pipeline, make_pipeline, python, registry_row

from calib.workspace import Workspace

# The real CLI, with each progress report followed by a pause so that a kill lands mid-stage.
_SLOW_CLI = textwrap.dedent("""
    import sys, time
    import calib.workspace as w
    real = w.RunContext.progress
    def slow(self, fraction, message=""):
        real(self, fraction, message)
        print("PROGRESS", self.id, flush=True)
        time.sleep(1.5)
    w.RunContext.progress = slow
    from calib.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_path, tiny_tokenizer_dir, tiny_csv) -> Pipeline:
    return make_pipeline(tmp_path_factory.mktemp("stages") / "ws", tiny_model_path, tiny_tokenizer_dir, tiny_csv)


def _stage_argv(p: Pipeline, stage: str) -> list[str]:
    model = ["--model", str(p.model), "--tokenizer", str(p.tokenizer), "--max-length", "64"]
    eval_data = [*model, "--data", str(p.data), "--labels", ",".join(tinymodel.LABELS)]
    return {
        "calibset": ["assemble", *model, "--data", str(p.data), "--size", "48"],
        "calibrate": ["calibrate", "--calibration-set", p.calibset, "--method", "minmax"],
        "build": ["build", "--calibration", p.calibration, "--method", "minmax"],
        "validate": ["validate", "--engine", p.build, *eval_data, "--no-layers", "--limit", "32"],
        "sensitivity": ["sensitivity", "--ranges", p.calibration, "--method", "minmax", *eval_data, "--limit", "32"],
        "bench": ["bench", "--engine", p.build, "--data", str(p.data), "--tokenizer", str(p.tokenizer),
                  "--max-length", "64", "--max-texts", "16", "--batch-size", "1", "4"],
        "report": ["report", p.validate_no_ci],
        "head": ["head", "fit", *model, "--data", str(p.data), "--embedding-output", "embedding", "--folds", "2"],
    }[stage]


@pytest.mark.reliability("no-loss")
@pytest.mark.parametrize("stage", ["calibset", "calibrate", "build", "validate", "sensitivity", "bench", "report",
                                   "head"])
def test_kill_9_during_a_stage_loses_nothing(pipeline, stage):
    before = {r.id for r in Workspace(pipeline.root).list_runs(status="finished", limit=10000)}
    proc = python(_SLOW_CLI, *pipeline.ws(*_stage_argv(pipeline, stage)))
    try:
        line = proc.stdout.readline()  # blocks until the stage reports progress (or the process ends)
        assert line.startswith("PROGRESS"), f"{stage} ended before reporting progress: {line}{proc.stderr.read()}"
        run_id = line.split()[1]
        assert registry_row(pipeline.root, run_id)["status"] == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    ws = Workspace(pipeline.root)
    run = ws.get_run(run_id)
    assert run.status == "interrupted", f"SILENT: a killed {stage} run is {run.status}"
    assert run.artifacts == [] and not run.dir.exists(), "SILENT: a killed run registered files"
    assert not list(ws.runs_dir.glob(f".{run_id}.*")), "leftovers of the killed run"
    for other in before:  # every finished run is still there and intact
        assert ws.get_run(other).status == "finished" and ws.verify(other) == [], f"LOST: {other}"


@pytest.mark.reliability("no-loss")
def test_eight_concurrent_runs_all_finish_and_verify(pipeline):
    procs = [python("import sys\nfrom calib.cli import main\nsys.exit(main(sys.argv[1:]))",
                    *pipeline.ws("calibrate", "--calibration-set", pipeline.calibset, "--method", "minmax",
                                 "--label", f"concurrent-{i}")) for i in range(8)]
    failures = []
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failures.append(err.strip().splitlines()[-1:] or [f"exit {proc.returncode}"])
    assert not failures, f"LOST: {len(failures)} of 8 concurrent runs failed: {failures[:3]}"
    ws = Workspace(pipeline.root)
    runs = [r for r in ws.list_runs(stage="calibrate", limit=10000) if r.label.startswith("concurrent-")]
    assert len(runs) == 8 and all(r.status == "finished" for r in runs)
    assert all(ws.verify(r.id) == [] for r in runs)
