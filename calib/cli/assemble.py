"""``calib assemble``: draw a calibration set by token-length distribution and show its coverage."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from calib.cli.common import (
    ProgressBar,
    add_input_args,
    format_table,
    input_values,
    int_list,
    json_arg,
    non_negative_int,
    print_run_json,
    workspace_of,
)

_EXAMPLES = """examples:
  calib assemble --demo bbc-topic --size 128 --strategy match --target eval --stratify
  calib assemble --model m.onnx --tokenizer tok/ --data reviews.csv --text-column review \\
      --label-column stars --size 256 --strategy match --target lengths:prod_lengths.csv
  calib assemble --recipe datasets/recipes/bbc-topic-match-eval.json --seed 3
"""


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    from calib.sampling import SHORTFALL_MODES, STRATEGIES

    p = subparsers.add_parser(
        "assemble", help="draw a calibration set by token-length distribution (stage calibset)",
        description="Assemble a calibration set whose token-length distribution you control, and "
                    "report its coverage against the evaluation data or production lengths.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_args(p, demo="use a prepared demo task (bbc-topic, rt-sentiment): fills model, tokenizer and data "
                   "(split calibration; target eval)", model="ONNX model file",
                   split="split of a multi-split dataset to draw from",
                   label_column="label column (default label; 'none' for no labels)", roles=True)
    how = p.add_argument_group("sampling")
    how.add_argument("--size", type=int, help="number of texts (default 128)")
    how.add_argument("--strategy", choices=STRATEGIES, help="default natural")
    how.add_argument("--target", help="what to match and compare against: eval[:SPLIT], dataset:SOURCE[:SPLIT] "
                     "(e.g. dataset:demo:bbc-topic:eval), lengths:FILE (CSV/JSON lengths or histogram) or pool "
                     "(default; eval with --demo)")
    how.add_argument("--weights", type=_float_list, help="bucket weights for --strategy custom, e.g. 1,1,2,2,1,0")
    how.add_argument("--stratify", action=argparse.BooleanOptionalAction, default=None,
                     help="keep the label shares of the target (within one text)")
    how.add_argument("--shortfall", choices=SHORTFALL_MODES,
                     help="when a bucket is short: take from neighbouring buckets (default) or sample with replacement")
    how.add_argument("--edges", type=int_list, help="bucket edges in tokens (default 0,32,64,128,256,512)")
    how.add_argument("--seed", type=non_negative_int, help="random seed (default 0)")
    out = p.add_argument_group("recipes and output")
    out.add_argument("--recipe", type=Path, help="replay a saved recipe (other options override it)")
    out.add_argument("--save-recipe", type=Path, metavar="FILE", help="save the settings as a recipe after the run")
    out.add_argument("--export-npz", type=Path, metavar="FILE", help="also write length-bucketed feed batches (.npz)")
    out.add_argument("--label", default="", help="label for the run in the registry (find it again with latest:LABEL)")
    json_arg(out)
    p.set_defaults(handler=run)


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The AssembleConfig sampling settings the options give (only those given)."""
    from calib.calibset import parse_target

    values = {"size": args.size, "strategy": args.strategy, "weights": args.weights, "stratify": args.stratify,
              "shortfall": args.shortfall, "edges": args.edges, "seed": args.seed}
    values = {k: v for k, v in values.items() if v is not None}
    if args.target is not None:
        kind, source, split = parse_target(args.target)
        values.update(target_kind=kind, target_source=source, target_split=split)
    return values


def build_config(args: argparse.Namespace, workspace_root: Path) -> tuple[Any, str | None]:
    """The AssembleConfig the arguments describe, and the demo task it uses (if any): a recipe's settings,
    model and pool filled by ``--demo`` (or the recipe), then the options given on top."""
    from calib.calibset import AssembleConfig, read_recipe
    from calib.inputs import DEMO_SPLITS, assemble_start, resolve_inputs
    from calib.pipeline import config_from_params

    recipe = read_recipe(args.recipe) if args.recipe is not None else None
    settings, model, data, demo = assemble_start(workspace_root, recipe=recipe, demo=args.demo,
                                                 where=f"recipe {args.recipe}")
    given_model, given_data = input_values(args)
    ref, spec = resolve_inputs(workspace_root, demo=args.demo, split=args.split, default_split=DEMO_SPLITS["pool"],
                               model={**model, **given_model}, data={**data, **given_data,
                                                                     "workspace": str(workspace_root)},
                               hint="or --demo TASK, or --recipe FILE", ask="calib assemble needs")
    values = {**settings, **_sampling(args), "model": ref, "data": spec}
    return config_from_params(AssembleConfig, values, strict=True, where="calib assemble"), demo


def print_result(run_id: str, cset: Any) -> None:
    from calib import formatting as fmt
    from calib.coverage import TABLE_HEADERS

    cov = cset.coverage
    data = cset.dataset_record
    where = data["source"] + (f"[{data['split']}]" if data["split"] else "")
    print(f"run {run_id}: {fmt.count(cset.size)} texts from {where} ({fmt.count(data['num_rows'])} rows), strategy "
          f"{cset.strategy}, seed {cset.seed}" + (", stratified by label" if cset.stratified else ""))
    print(f"pool: p50 {data['lengths']['p50']:.0f}, p95 {data['lengths']['p95']:.0f}, max {data['lengths']['max']:.0f} "
          f"tokens; {fmt.percent(data['truncation_rate'], 1)} longer than max length {cset.max_length}")
    print(f"\ncoverage against the {cov.target_name} lengths ({cset.target_record['num_lengths']} texts):")
    print(format_table(TABLE_HEADERS, cov.table_rows()))
    ts, cs = cov.target_stats, cov.calib_stats
    print(f"KS {fmt.ratio(cov.ks)}, Wasserstein {fmt.number(cov.wasserstein, 3)} tokens; longest calibration text "
          f"{cov.longest_covered} tokens vs {cov.target_name} p95 {ts['p95']:.0f} / p99 {ts['p99']:.0f} / "
          f"max {ts['max']:.0f} (lengths capped at {cset.max_length}); calibration p50 {cs['p50']:.0f}")
    if cov.label_names and any(cov.target_label_counts):
        print("\nlabel balance:")
        print(format_table(("label", "calibration", "calib %", cov.target_name, "target %"), cov.label_rows()))
    print(f"\nTensorRT profile: sequence min/opt/max {'/'.join(map(str, cset.profile_sequences))}, "
          f"batch {'/'.join(map(str, cset.profile_batches))}")
    for note in cset.notes:
        print(f"note: {note}")
    if cov.warnings:
        for warning in cov.warnings:
            print(f"WARNING: {warning}")
    else:
        print("no coverage warnings")


def run(args: argparse.Namespace) -> int:
    from calib.calibset import assemble
    from calib.inputs import save_recipe
    from calib.pipeline import run_stage

    ws = workspace_of(args)
    config, demo = build_config(args, ws.root)
    run_id, cset = run_stage(ws, "calibset", assemble, config, label=args.label,
                             progress=ProgressBar("assemble"))
    if not args.json:
        print_result(run_id, cset)
    outputs = {"manifest": cset.dir / "manifest.json"}
    if args.export_npz is not None:
        outputs["feed_batches"] = cset.export_npz(args.export_npz, batch_size=int(cset.profile["batch"]["opt"]))
        if not args.json:
            print(f"feed batches written to {outputs['feed_batches']}")
    if args.save_recipe is not None:
        save_recipe(config, args.save_recipe, demo=demo)
        outputs["recipe"] = args.save_recipe
        if not args.json:
            print(f"recipe written to {args.save_recipe}")
    if args.json:
        print_run_json(ws, run_id, outputs, warnings=list(cset.coverage.warnings), notes=list(cset.notes))
    return 0
