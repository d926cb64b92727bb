"""``calib validate``, ``calib sensitivity``, ``calib report`` and ``calib gate``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from calib import formatting as fmt
from calib.cli.common import (
    EXIT_FAILED_CHECK,
    EXIT_OK,
    ProgressBar,
    add_budget_args,
    add_cluster_args,
    add_input_args,
    add_node_pattern_args,
    add_placement_arg,
    add_ranges_args,
    budget_from_args,
    cluster_of,
    emit_json,
    format_table,
    inputs_from_args,
    int_list,
    json_arg,
    non_negative_int,
    print_run_json,
    ranges_from_args,
    run_folder,
    workspace_of,
)
from calib.errors import InputError

_VALIDATE_EXAMPLES = """examples:
  calib validate --demo bbc-topic --engine <build run id> --calibration <calibrate run id>
  calib validate --engine int8.qdq.onnx --model model.onnx --tokenizer tok/ --data eval.csv --labels neg,pos
"""
_SENS_EXAMPLES = """examples:
  calib sensitivity --demo bbc-topic --ranges <calibrate run id> --method minmax --placement all --max-drop 0.5
  calib sensitivity --model m.onnx --tokenizer tok/ --data eval.csv --ranges amax.json --granularity block
"""


# Defaults that copy a library value the CLI cannot import cheaply (calib.evaluation, calib.sensitivity and
# calib.build each take 1-2 s to import, on every `calib` start): tests/test_cli.py checks each against it.
_EVAL_BATCH_SIZE, _EVAL_SEED = 16, 0  # calib.evaluation.EvalSettings (and SEARCH_SETTINGS) batch_size, seed
_LAYER_ROWS, _BOOTSTRAP = 128, 1000  # EvalSettings.layer_rows, .bootstrap
_GRANULARITIES = ("node", "tensor", "block", "auto")  # calib.sensitivity.GRANULARITIES; default SensitivityConfig's
_RANKINGS = ("auto", "block-local", "local", "exclude-one", "quantize-one")  # calib.sensitivity.RANKINGS
_SEARCH_DEFAULTS = {"granularity": "node", "ranking": "auto", "rank_check": 8, "speed_texts": 16, "cache_mb": 1024,
                    "max_evaluations": 24, "rank_rows": 64}  # calib.sensitivity.SensitivityConfig's


def _search_budget():
    """calib.sensitivity.SEARCH_BUDGET, spelled out (tests/test_cli.py checks): drop and agreement, no cosine."""
    from calib.verdict import ReleaseBudget

    return ReleaseBudget(min_embedding_cosine=None)


def _model_data_args(p: argparse.ArgumentParser) -> None:
    g = add_input_args(p, demo="a prepared demo task: fills model, tokenizer, labels, max length and data (split eval)",
                       model="FP32 ONNX model (the baseline)", labels=True,
                       data="eval data: file, save_to_disk folder, SCHEME:NAME (demo:TASK) or hub id",
                       split="split of a multi-split dataset (default eval with --demo)",
                       label_column="label column (default label; 'none' for agreement only)", roles=True)
    g.add_argument("--limit", type=int, help="evaluate a seeded sample of this many texts (default: all / 256)")
    g.add_argument("--batch-size", type=int, default=_EVAL_BATCH_SIZE)
    g.add_argument("--seed", type=non_negative_int, default=_EVAL_SEED)
    g.add_argument("--label", default="", help="label for the run in the registry")


def _common(args: argparse.Namespace, ws):
    """(ModelRef, DataSpec) shared by validate, compare and sensitivity, from --demo or explicit options."""
    from calib.inputs import DEMO_SPLITS

    return inputs_from_args(args, ws.root, default_split=DEMO_SPLITS["eval"])


def _eval_settings(args: argparse.Namespace, cluster: str | None = None):
    """The :class:`~calib.evaluation.EvalSettings` the validate options give."""
    from calib.evaluation import EvalSettings

    return EvalSettings(batch_size=args.batch_size, limit=args.limit or 0, layers=not args.no_layers,
                        layer_rows=args.layer_rows, bootstrap=args.bootstrap, seed=args.seed, cluster=cluster,
                        **({"edges": args.edges} if args.edges else {}))


def register(subparsers: argparse._SubParsersAction) -> None:
    from calib.buckets import DEFAULT_EDGES
    from calib.methods import DEFAULT_BUILD_METHOD
    from calib.verdict import default_budget

    p = subparsers.add_parser("validate", help="FP32 vs INT8 on the eval split: per bucket, per layer (stage validate)",
                              epilog=_VALIDATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", help="build run (id, unique prefix, latest, latest:LABEL, folder) or a Q/DQ .onnx "
                   "file; or give --calibration RUN --method all to compare every calibrator")
    _model_data_args(p)
    p.add_argument("--calibration", help="calibrate run id/folder: show every method's amax per tensor")
    p.add_argument("--method", nargs="+", metavar="METHOD",
                   help="instead of --engine: build and validate these range sets of --calibration side by side "
                        "('all': every method it has), then recommend one against the release budget")
    add_placement_arg(p, help="placement preset of the builds made by --method")
    # unset thresholds: calib.verdict.ReleaseBudget's, once any is given (none given: the comparison's default)
    add_budget_args(p, context="with --method: release budget, ")
    p.add_argument("--edges", type=int_list,
                   help=f"length bucket edges (default {','.join(str(e) for e in DEFAULT_EDGES)})")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer analysis")
    p.add_argument("--layer-rows", type=int, default=_LAYER_ROWS,
                   help="texts for the per-layer analysis (default %(default)s; 0 = all)")
    p.add_argument("--bootstrap", type=non_negative_int, default=_BOOTSTRAP,
                   help="bootstrap resamples for the 95 %% CI of the drop (default %(default)s; 0 = no CI)")
    add_cluster_args(p)
    json_arg(p)
    p.set_defaults(handler=run_validate)

    s = subparsers.add_parser("sensitivity", help="rank quantized nodes and find the fewest to keep in float",
                              epilog=_SENS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_data_args(s)
    add_ranges_args(s, required=False, default_method="entropy",  # 0.1's default, kept: scripts rely on it
                    method_help=f"range set of the calibration run (default entropy, TensorRT's; calib build's is "
                                f"{DEFAULT_BUILD_METHOD})")
    s.add_argument("--start-from", metavar="BUILD_RUN",
                   help="a build run (e.g. with --smooth, --method auto, --bias-correction) whose INT8 model the "
                        "search starts from, instead of --calibration/--ranges/--method/--placement")
    add_placement_arg(s, "--preset", help="placement preset, as calib build --placement (--preset: the 0.1 name)")
    add_node_pattern_args(s, exclude="node names already kept in float")
    search = _SEARCH_DEFAULTS
    s.add_argument("--granularity", choices=_GRANULARITIES, default=search["granularity"],
                   help="fallback unit: node, tensor (every reader of one activation's Q/DQ pairs), block, or auto "
                        "(search by node and by tensor, keep the fewer float nodes)")
    s.add_argument("--ranking", choices=_RANKINGS, default=search["ranking"],
                   help="auto: block-local when the model splits into transformer blocks (see calib.sensitivity)")
    s.add_argument("--rank-check", type=int, default=search["rank_check"],
                   help="block-local ranking: units also ranked by quantize-one, Spearman reported "
                        "(default %(default)s; -1 = all)")
    s.add_argument("--speed-texts", type=int, default=search["speed_texts"],
                   help="texts timed per step of the INT8 speed curve along the fallback (default %(default)s; "
                        "0 = no curve)")
    s.add_argument("--cache-mb", type=int, default=search["cache_mb"],
                   help="memory for activations cached at transformer-block cuts (default %(default)s; "
                        "0 = run whole models)")
    b = s.add_argument_group("release budget (what the search must meet)")
    add_budget_args(b, defaults=_search_budget(), use_ci=False,
                    notes={"min_embedding_cosine": f" (a model without logits is held to "
                                                   f"{default_budget(has_logits=False).min_embedding_cosine:g})"})
    s.add_argument("--max-evaluations", type=int, default=search["max_evaluations"],
                   help="bound on quantize+evaluate rounds (default %(default)s)")
    s.add_argument("--rank-rows", type=int, default=search["rank_rows"],
                   help="texts for the quantize-one ranking, a subset of --limit (default %(default)s; 0 = all)")
    s.add_argument("--no-verify", action="store_true",
                   help="do not re-check the recommendation on a model rebuilt by the quantizer")
    add_cluster_args(s)
    json_arg(s)
    s.set_defaults(handler=run_sensitivity)

    r = subparsers.add_parser("report", help="release report (HTML, Markdown, JSON) from validate runs")
    r.add_argument("evaluations", nargs="*", help="validate run ids/folders; the first is the release candidate")
    r.add_argument("--comparison", help="a calibrator comparison run (calib validate --method): every method, the "
                   "recommended one as the release candidate")
    r.add_argument("--sensitivity", help="a sensitivity run id/folder to include")
    r.add_argument("--title", default="INT8 accuracy report")
    r.add_argument("--label", default="")
    json_arg(r)
    b = r.add_argument_group(f"release budget (the verdict; default: {default_budget().describe()} where "
                             "measurable; an option not given keeps its default, 'none' leaves a criterion out)")
    add_budget_args(b)
    r.set_defaults(handler=run_report)

    g = subparsers.add_parser("gate", help="exit non-zero when a report fails the accuracy budget")
    g.add_argument("report", help="report.json, a report run folder, or a report run id (unique prefix, latest, "
                   "latest:LABEL)")
    b = g.add_argument_group("release budget (only the criteria given are checked; at least one)")
    add_budget_args(b)
    g.add_argument("--json", action="store_true", help="print {passed, reason, report} as one JSON object on stdout")
    g.set_defaults(handler=run_gate)


def run_validate(args: argparse.Namespace) -> int:
    from calib.pipeline import run_stage
    from calib.validate import ValidateConfig, validate

    ws = workspace_of(args)
    if args.method:
        return run_compare(args, ws)
    if not args.engine:
        raise InputError("give --engine (a build run) or --calibration RUN --method all (every calibrator side by side)")
    model, data = _common(args, ws)
    parents: list[str] = []
    engine = run_folder(ws, args.engine, "build", parents)
    calibration = None
    if args.calibration:
        calibration = str(run_folder(ws, args.calibration, "calibrate", parents))
    with cluster_of(args) as cluster:
        config = ValidateConfig(engine=str(engine), model=model, data=data, settings=_eval_settings(args, cluster),
                                calibration=calibration)
        run_id, evaluation = run_stage(ws, "validate", validate, config, parents=parents, label=args.label,
                                       progress=ProgressBar("validate"))
    summary = evaluation.summary()
    if args.json:
        outputs = {name.split(".")[0]: evaluation.dir / name for name in ("evaluation.json", "layers.json", "predictions.npz")
                   if (evaluation.dir / name).is_file()}
        print_run_json(ws, run_id, outputs)
        return 0
    print(f"run {run_id}: {evaluation.dir}")
    if not evaluation.labelled:
        print(f"note: {evaluation.dataset.note}")
    for note in evaluation.dataset.notes:
        print(f"note: {note}")
    for warning in evaluation.dataset.warnings:
        print(f"WARNING: {warning}")
    rows = []
    if not evaluation.metrics.is_classifier:
        print(f"embedding model (output {evaluation.model.roles.embedding!r}): cosine, nearest-neighbour "
              "recall within the evaluated texts and similarity rank correlation, FP32 vs INT8")
        for b in evaluation.metrics.bucket_figures:
            rows.append([b.bucket, b.n, fmt.ratio(b.embedding_cosine), fmt.ratio(b.embedding_cosine_p1),
                         fmt.percent(b.neighbour_recall_at_1), fmt.percent(b.neighbour_recall_at_k),
                         fmt.ratio(b.similarity_spearman), fmt.points(b.knn_accuracy_drop_points, unit=False)])
        k = evaluation.metrics.neighbour_k
        print(format_table(["bucket", "n", "cosine", "cos p1", "recall@1", f"recall@{k}", "spearman", "kNN drop pts"],
                           rows))
        print(summary_line(summary))
        return 0
    for b in evaluation.metrics.bucket_figures:
        rows.append([b.bucket, b.n, fmt.percent(b.accuracy_fp32), fmt.percent(b.accuracy_int8),
                     fmt.points(b.accuracy_drop_points, unit=False), fmt.percent(b.top1_agreement),
                     fmt.ratio(b.embedding_cosine)])
    print(format_table(["bucket", "n", "acc FP32", "acc INT8", "drop pts", "agreement", "emb cos"], rows))
    print(summary_line(summary))
    return 0


_SUMMARY_FORMATS = {"accuracy_fp32": fmt.percent, "accuracy_int8": fmt.percent, "accuracy_drop_points": fmt.points,
                    "top1_agreement": fmt.percent, "embedding_cosine": fmt.ratio, "kl_softmax": fmt.number,
                    "embedding_cosine_p1": fmt.ratio, "neighbour_recall_at_1": fmt.percent,
                    "neighbour_recall_at_k": fmt.percent, "similarity_spearman": fmt.ratio,
                    "knn_accuracy_fp32": fmt.percent, "knn_accuracy_int8": fmt.percent,
                    "knn_accuracy_drop_points": fmt.points}


def summary_line(summary: dict) -> str:
    """A validate summary as one line: percentages, signed points and ratios with their units."""
    return ", ".join(f"{k} {_SUMMARY_FORMATS.get(k, fmt.cell)(v) if v is not None else fmt.MISSING}"
                     for k, v in summary.items())


def run_compare(args: argparse.Namespace, ws) -> int:
    """``calib validate --calibration RUN --method all``: every range set built, validated and judged."""
    from calib.compare import CompareConfig, compare_calibrators
    from calib.pipeline import run_stage
    from calib.placement import Placement
    from calib.verdict import ReleaseBudget

    if args.engine:
        raise InputError("give either --engine (one build) or --method (build every range set), not both")
    if not args.calibration:
        raise InputError("--method needs --calibration (the calibrate run whose range sets to compare)")
    model, data = _common(args, ws)
    parents: list[str] = []
    calibration = str(run_folder(ws, args.calibration, "calibrate", parents))
    methods = () if [m.lower() for m in args.method] == ["all"] else tuple(args.method)
    budget = budget_from_args(args, unset=ReleaseBudget(), optional=True)
    with cluster_of(args) as cluster:  # every method's evaluation runs there, as calib validate's does
        config = CompareConfig(calibration=calibration, model=model, data=data, settings=_eval_settings(args, cluster),
                               methods=methods, placement=Placement(args.placement), budget=budget)
        run_id, comparison = run_stage(ws, "compare", compare_calibrators, config, parents=parents, label=args.label,
                                       progress=ProgressBar("compare"))
    rec = comparison.recommendation
    entries = comparison.entries
    if args.json:
        rows = [{k: e.record.get(k) for k in ("calibrator", "accuracy_drop_points", "drop_ci_low_points",
                                              "drop_ci_high_points", "top1_agreement", "embedding_cosine")}
                | {"verdict": e.verdict.status} for e in entries]
        print_run_json(ws, run_id, {"record": comparison.dir / "comparison.json"}, recommendation=rec.to_dict(),
                       rows=rows)
        return 0
    print(f"run {run_id}: {comparison.dir}")
    if comparison.is_embedding:
        # an embedding model: its own metrics, no agreement or accuracy columns (it has no logits)
        heads = [e.headline for e in entries]
        rows = [[e.calibrator, fmt.ratio(h.get("embedding_cosine")), fmt.ratio(h.get("embedding_cosine_p1")),
                 fmt.percent(h.get("neighbour_recall_at_1")), fmt.percent(h.get("neighbour_recall_at_k")),
                 fmt.ratio(h.get("similarity_spearman")), fmt.points(h.get("knn_accuracy_drop_points"), unit=False),
                 e.verdict.status] for e, h in zip(entries, heads)]
        k = heads[0].get("neighbour_k") or "k"
        print(format_table(["calibrator", "emb cos", "cos p1", "recall@1", f"recall@{k}", "spearman", "kNN drop pts",
                            "verdict"], rows))
    else:
        rows = []
        for e in entries:
            low, high = e.figure("drop_ci_low_points"), e.figure("drop_ci_high_points")
            rows.append([e.calibrator, fmt.percent(e.figure("accuracy_int8")),
                         fmt.points(e.figure("accuracy_drop_points"), unit=False),
                         fmt.MISSING if low is None else f"[{fmt.points(low, unit=False)}, {fmt.points(high, unit=False)}]",
                         fmt.percent(e.figure("top1_agreement")), fmt.ratio(e.figure("embedding_cosine")), e.verdict.status])
        print(format_table(["calibrator", "acc INT8", "drop pts (FP32-INT8)", "drop 95% CI", "agreement", "emb cos",
                            "verdict"], rows))
    print(rec.sentence)
    if rec.default_note:
        print(f"note: {rec.default_note}")
    print(f"report: calib report --comparison {run_id}")
    return 0


def run_sensitivity(args: argparse.Namespace) -> int:
    from calib.calibrate import RangesRef
    from calib.pipeline import run_stage
    from calib.placement import Placement
    from calib.sensitivity import SEARCH_SETTINGS, SensitivityConfig, analyze_sensitivity

    ws = workspace_of(args)
    model, data = _common(args, ws)
    parents: list[str] = []
    ranges = ranges_from_args(ws, args, parents)
    if (ranges is None) == (not args.start_from):
        raise InputError("give exactly one of --ranges FILE / --calibration RUN (a range set) or --start-from "
                         "(a build run)")
    start_from = str(run_folder(ws, args.start_from, "build", parents)) if args.start_from else ""
    placement = Placement(args.placement, include_nodes=tuple(args.include), exclude_nodes=tuple(args.exclude))
    budget = budget_from_args(args)  # the options default to the search's budget
    settings = dataclasses.replace(SEARCH_SETTINGS, batch_size=args.batch_size, seed=args.seed,
                                   **({"limit": args.limit} if args.limit is not None else {}))
    config = SensitivityConfig(model=model, data=data, ranges=ranges or RangesRef("", args.method), placement=placement,
                               granularity=args.granularity, ranking=args.ranking, budget=budget, settings=settings,
                               max_evaluations=args.max_evaluations, rank_rows=args.rank_rows, verify=not args.no_verify,
                               rank_check=args.rank_check, cache_mb=args.cache_mb, speed_texts=args.speed_texts,
                               start_from=start_from)
    with cluster_of(args) as cluster:
        config = dataclasses.replace(config, settings=dataclasses.replace(config.settings, cluster=cluster))
        run_id, result = run_stage(ws, "sensitivity", analyze_sensitivity, config, parents=parents, label=args.label,
                                   progress=ProgressBar("sensitivity"))
    if args.json:
        print_run_json(ws, run_id, {"record": result.dir / "sensitivity.json"}, exclude_nodes=list(result.exclude_nodes))
        return 0
    rec = result.recommended
    print(f"run {run_id}: {result.dir}")
    print(rec.note)
    searched = result.searched
    if result.budget_statement:
        print(f"budget: {result.budget_statement}")
    print(f"searched on {fmt.count(searched.rows_evaluated)} of {fmt.count(searched.rows_total)} rows of "
          f"{searched.describe()}" + (" (a seeded sample, --limit)" if searched.sampled else "")
          + "; numbers on the full split may differ: check the build with calib validate")
    cos = rec.embedding_cosine
    print(f"ranking: {result.ranking_method} ({result.ranking_evaluations_used} evaluations on "
          f"{result.ranking_rows} texts); search: {result.evaluations_used} of "
          f"{result.max_evaluations} evaluations; {fmt.seconds(result.seconds)}"
          + ("" if cos is None else f"; recommended embedding cosine {fmt.ratio(cos)}"))
    base = result.baseline
    if base.top1_agreement is None:  # an embedding model
        print(f"baseline: embedding cosine {fmt.ratio(base.embedding_cosine)}; recommended: embedding cosine "
              f"{fmt.ratio(cos)}")
    else:
        print(f"baseline: agreement {fmt.percent(base.top1_agreement)}, drop "
              f"{fmt.points(base.accuracy_drop_points)}; recommended: agreement "
              f"{fmt.percent(rec.top1_agreement)}, drop {fmt.points(rec.accuracy_drop_points)}")
    check = result.ranking_check
    if check is not None and check.units:
        print(f"ranking check: Spearman {fmt.ratio(check.spearman)} against quantize-one on {check.units} unit(s)")
    for search in result.searches:
        if search.skipped:
            print(f"search by {search.granularity}: not run ({search.skipped})")
            continue
        print(f"search by {search.granularity}: {search.float_nodes} float node(s), "
              f"{'passes' if search.passes else 'misses the budget'}" + (" (chosen)" if search.chosen else ""))
    curve = result.speed_curve
    if curve is not None:
        print(f"INT8 speed along the fallback ({curve.texts} texts, batch {curve.batch_size}; FP32 "
              f"{fmt.number(curve.fp32_texts_per_s)} texts/s):")
        for p in curve.points:
            print(f"  {p.float_nodes:>3} float  {fmt.factor(p.int8_over_fp32)} FP32  {p.change}")
    for node in result.exclude_nodes:
        print(f"  exclude {node}")
    command = result.build_command(run_id)
    print(f"build with: {command}" if command else "no exclusions")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from calib.pipeline import run_stage
    from calib.report import ReportConfig, make_report
    from calib.verdict import ReleaseBudget

    ws = workspace_of(args)
    parents: list[str] = []
    folders = [str(run_folder(ws, e, "validate", parents)) for e in args.evaluations]
    budget = budget_from_args(args, unset=ReleaseBudget(), optional=True)
    if args.comparison:
        from calib.compare import CalibratorComparison

        comparison = CalibratorComparison.load(run_folder(ws, args.comparison, "compare", parents))
        folders = [str(d) for d in comparison.evaluation_dirs()] + folders
        budget = budget or comparison.budget
    if not folders:
        raise InputError("give validate runs or --comparison RUN to report on")
    sensitivity = None
    if args.sensitivity:
        sensitivity = str(run_folder(ws, args.sensitivity, "sensitivity", parents))
    config = ReportConfig(evaluations=tuple(folders), sensitivity=sensitivity, title=args.title, budget=budget)
    run_id, report = run_stage(ws, "report", make_report, config, parents=parents, label=args.label,
                               progress=ProgressBar("report"))
    if args.json:
        print_run_json(ws, run_id, {name.replace(".", "_"): report.dir / name
                                    for name in ("report.html", "report.md", "report.json")})
        return 0
    print(f"run {run_id}:")
    for name in ("report.html", "report.md", "report.json"):
        print(f"  {report.dir / name}")
    print(f"verdict: {report.verdict.reason}")
    print(f"reproduce: {report.gate_command()}")
    return 0


def run_gate(args: argparse.Namespace) -> int:
    from calib.gate import check_gate, load_report_data

    path = Path(args.report)
    if not path.exists():
        if path.suffix == ".json" or "/" in args.report:
            raise InputError(f"report {path} does not exist (give a report.json, a report folder or a report run id)")
        path = run_folder(workspace_of(args, read_only=None), args.report, "report")
    else:  # a report given by path is checked too: against the registry, or the manifest it was copied with
        from calib.workspace import check_manifest, default_workspace_path

        root = Path(args.workspace) if args.workspace else default_workspace_path()
        if (root / "registry.sqlite").is_file():
            workspace_of(args, read_only=None).check_inputs([str(path)])
        else:
            check_manifest(path, trust_changed=args.trust_changed)
    report = load_report_data(path)
    budget = budget_from_args(args)  # only the criteria given
    result = check_gate(report, max_drop=budget.max_drop, min_agreement=budget.min_agreement,
                        min_embedding_cosine=budget.min_embedding_cosine, use_ci=budget.use_ci)
    if args.json:
        checks = [{"name": name, "passed": ok, "detail": detail} for name, ok, detail in result.checks]
        emit_json({"passed": result.passed, "reason": result.reason, "checks": checks,
                   "report": str(Path(path).resolve())})
    else:
        print(result.reason, file=sys.stdout if result.passed else sys.stderr)
    return EXIT_OK if result.passed else EXIT_FAILED_CHECK
