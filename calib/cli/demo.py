"""``calib demo prepare`` and ``calib demo info``: the offline demo tasks in the workspace."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from calib import formatting as fmt
from calib.cli.common import ProgressBar, format_table, non_negative_int
from calib.workspace import default_workspace_path


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="prepare or describe the offline demo tasks (MiniLM-L6, BBC, Rotten Tomatoes)")
    sub = parser.add_subparsers(dest="demo_command", metavar="ACTION", required=True)

    prepare = sub.add_parser("prepare", help="export MiniLM-L6 to ONNX and build the demo tasks (idempotent)")
    prepare.add_argument("--task", action="append", dest="tasks", metavar="TASK",
                         help="task to prepare (repeatable; default: all of bbc-topic, rt-sentiment)")
    prepare.add_argument("--force", action="store_true", help="rebuild even when the prepared files are intact")
    prepare.add_argument("--seed", type=non_negative_int, default=0, help="seed of the train/calibration/eval split (default 0)")
    prepare.set_defaults(handler=cmd_prepare)

    info = sub.add_parser("info", help="list the prepared demo tasks with their FP32 accuracy and paths")
    info.set_defaults(handler=cmd_info)


def _rows(cards: dict[str, dict[str, Any]], root: Path) -> list[list[object]]:
    rows: list[list[object]] = []
    for task, card in cards.items():
        splits = card["splits"]
        rows.append([task, len(card["labels"]), card["max_length"], fmt.percent(card['fp32_eval_accuracy']),
                     f"{splits['train']}/{splits['calibration']}/{splits['eval']}", str(root / "demo" / task)])
    return rows


_HEADERS = ("task", "classes", "max_len", "fp32 eval acc", "train/calib/eval", "folder")


def cmd_prepare(args: argparse.Namespace) -> int:
    from calib.demo import DEMO_TASKS, DemoConfig, prepare_demo

    config = DemoConfig(workspace=args.workspace, tasks=tuple(args.tasks or DEMO_TASKS),
                        force=args.force, seed=args.seed)
    manifest = prepare_demo(config, progress=ProgressBar("demo"))
    print(format_table(_HEADERS, _rows(dict(manifest.cards), manifest.workspace)))
    if manifest.built:
        print(f"built {', '.join(manifest.built)} in {fmt.seconds(manifest.seconds)}", end="")
        print(f"; already prepared: {', '.join(manifest.reused)}" if manifest.reused else "")
    else:
        print(f"already prepared and intact (checked in {fmt.seconds(manifest.seconds)}); use --force to rebuild")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from calib.demo import DEMO_TASKS
    from calib.demo.tasks import CARD_FILE, read_card

    root = Path(args.workspace).expanduser() if args.workspace else default_workspace_path()
    cards = {task: read_card(task, root) for task in DEMO_TASKS if (root / "demo" / task / CARD_FILE).is_file()}
    missing = [task for task in DEMO_TASKS if task not in cards]
    if cards:
        print(format_table(_HEADERS, _rows(cards, root)))
    for task in missing:
        print(f"{task}: not prepared in {root / 'demo'}; run `calib demo prepare`")
    return 0 if not missing else 1
