"""``calib runs list|show|verify|recover|delete``: the run registry of the workspace.

``list``, ``show`` and ``verify`` only read, so they also work on a workspace without write access.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from calib.cli.common import format_table, workspace_of
from calib.errors import CalibError
from calib.formatting import clean, headline
from calib.stages import stage_names
from calib.workspace import STATUSES, RunRecord, Workspace


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("runs", help="list, show and verify the runs recorded in the workspace")
    sub = parser.add_subparsers(dest="runs_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", help="runs, newest first")
    listing.add_argument("--stage", choices=stage_names(), metavar="STAGE",
                         help=f"only runs of this stage ({', '.join(stage_names())})")
    listing.add_argument("--status", choices=STATUSES, help="only runs with this status")
    listing.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50)")
    listing.set_defaults(handler=cmd_list)

    show = sub.add_parser("show", help="a run's parameters, status, summary and artifacts (with sha256)")
    show.add_argument("run_id", metavar="ID", help="run id, unique prefix, latest or latest:LABEL")
    show.set_defaults(handler=cmd_show)

    verify = sub.add_parser("verify", help="re-hash a run's artifacts and those of the runs it was made from; exit 1 if "
                            "any is missing or changed, or the run did not finish")
    verify.add_argument("run_id", metavar="ID", help="run id, unique prefix, latest or latest:LABEL")
    verify.set_defaults(handler=cmd_verify)

    recover = sub.add_parser("recover", help="settle runs whose process is gone (running -> interrupted; "
                             "finishing -> finished if every file verifies); never touches a live run")
    recover.set_defaults(handler=cmd_recover)

    delete = sub.add_parser("delete", help="remove a run's folder and registry entry (refuses a live run)")
    delete.add_argument("run_id", metavar="ID", help="the full run id (no prefix, no latest: deleting takes the exact id)")
    delete.add_argument("--force", action="store_true", help="also when other runs were made from it")
    delete.set_defaults(handler=cmd_delete)


def cmd_list(args: argparse.Namespace) -> int:
    ws = workspace_of(args, read_only=None)
    runs = ws.list_runs(stage=args.stage, status=args.status, limit=max(1, args.limit))
    if not runs:
        print(f"no runs in {ws.root}" + (f" for stage {args.stage!r}" if args.stage else ""))
        return 0
    rows = [[r.id, r.stage, _status(ws, r), r.created_at, r.finished_at or "", r.label, _note(r)[:60]] for r in runs]
    print(format_table(("id", "stage", "status", "created", "finished", "label", "result"), rows))
    if ws.read_only:
        print(f"(workspace {ws.root} is read-only here: shown as recorded, nothing recovered)")
    return 0


def _status(ws: Workspace, run: RunRecord) -> str:
    """The recorded status; a run recorded as running whose process is gone says so (a read-only
    workspace is never recovered, so its registry can still say ``running``)."""
    if run.status in ("running", "finishing") and not ws.is_live(run.id):
        return f"{run.status} (process gone)"
    return run.status


def _note(run: RunRecord) -> str:
    """A finished run's headline figure (drop, agreement, KS, ...); otherwise its error or last message."""
    if run.status == "finished":
        return headline(run.stage, run.summary) or run.message
    return run.error or run.message


def cmd_show(args: argparse.Namespace) -> int:
    ws = workspace_of(args, read_only=None)
    run = ws.get_run(ws.find_run_id(args.run_id))
    print(f"run       {run.id}")
    print(f"stage     {run.stage}" + (f"  label {run.label}" if run.label else ""))
    detail = "" if run.status == "finished" else (run.error or run.message)
    print(f"status    {run.status}" + (f" ({detail})" if detail else ""))
    print(f"created   {run.created_at}   finished {run.finished_at or '-'}")
    print(f"folder    {run.dir}")
    if run.status in ("running", "finishing"):
        alive = "alive (holds its run lock)" if ws.is_live(run.id) else "gone (run `calib runs recover`)"
        print(f"process   pid {run.pid}" + (f" on {run.host}" if run.host else "")
              + f", {alive}; last heartbeat {run.heartbeat_at or '-'}")
    if run.parents:
        print(f"parents   {', '.join(run.parents)}")
    print("params    " + json.dumps(clean(run.params), indent=2, sort_keys=True).replace("\n", "\n          "))
    if run.summary:  # floats without noise, as every other CLI output (calib.formatting.clean)
        print("summary   " + json.dumps(clean(run.summary), indent=2, sort_keys=True).replace("\n", "\n          "))
    if run.artifacts:
        print(format_table(("artifact", "bytes", "sha256"), [[a.path, a.bytes, a.sha256] for a in run.artifacts]))
    else:
        print("artifacts none registered")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    ws = workspace_of(args, read_only=None)
    run = ws.get_run(ws.find_run_id(args.run_id))
    bad = ws.verify(run.id)
    if run.status != "finished":
        print(f"run {run.id} is {run.status}, not finished ({run.error or run.message}); nothing to verify")
        return 1
    for path in bad:
        print(f"CHANGED or MISSING  {run.dir / path}")
    try:  # the runs and files this run was made from, as far as they were recorded
        upstream, problem = ws.check_inputs(run.params, trust_changed=True), ""
    except CalibError as exc:
        upstream, problem = [], str(exc)
    for path in upstream:
        print(f"UPSTREAM CHANGED    {path}")
    if problem:
        print(f"UPSTREAM            {problem}")
    if bad:
        print(f"{len(bad)} of {len(run.artifacts)} artifacts of run {run.id} do not match their recorded sha256")
        return 1
    if upstream or problem:
        print(f"all {len(run.artifacts)} artifacts of run {run.id} match their recorded sha256, but what it was "
              "made from changed since")
        return 1
    print(f"ok: all {len(run.artifacts)} artifacts of run {run.id} match their recorded sha256; its inputs too")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    ws = workspace_of(args)  # opening already recovers; this says what was done
    settled = list(dict.fromkeys([*ws.recovered, *ws.recover()]))
    if not settled:
        live = [r.id for r in ws.list_runs(status="running", limit=100000) if ws.is_live(r.id)]
        print(f"nothing to recover in {ws.root}" + (f"; {len(live)} run(s) live: {', '.join(live[:5])}" if live else ""))
        return 0
    for run_id in settled:
        run = ws.get_run(run_id)
        print(f"{run_id}: {run.status} ({run.error or run.message})")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    folder = ws.delete_run(args.run_id, force=args.force)
    print(f"deleted run {args.run_id} ({folder})")
    return 0
