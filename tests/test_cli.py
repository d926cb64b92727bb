"""The scriptable CLI: run references, machine-readable output, exit codes, run listings."""

from __future__ import annotations

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
