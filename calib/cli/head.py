"""``calib head fit``: attach a logistic-regression classification head to an encoder."""

from __future__ import annotations

import argparse

from calib import formatting as fmt
from calib.cli.common import (
    ProgressBar,
    add_input_args,
    add_role_args,
    inputs_from_args,
    json_arg,
    non_negative_int,
    print_run_json,
    workspace_of,
)

_EXAMPLES = """examples:
  calib head fit --model encoder.onnx --tokenizer tok/ --data train.csv --label-column y
  calib head fit --model encoder.onnx --tokenizer tok/ --data train.tsv --text-column review --label-column stars \\
      --embedding-output last_hidden_state --pooling mean
"""


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    head = subparsers.add_parser("head", help="attach a classification head to an encoder (stage head)")
    sub = head.add_subparsers(dest="head_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "fit", help="fit a logistic-regression head on the encoder's FP32 embeddings; write a classifier ONNX",
        description="Run the FP32 encoder over labelled texts, fit a scikit-learn logistic regression on the pooled "
                    "embeddings (C chosen by stratified cross-validation) and write encoder + pooling + head as one "
                    "ONNX with outputs logits and embedding, plus a model card.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = add_input_args(p, demo=None, model="encoder ONNX model",
                       data="labelled texts: file, save_to_disk folder, SCHEME:NAME (demo:TASK) or hub id",
                       label_column="label column (default label)")
    add_role_args(g, logits=False)  # an encoder: no class scores yet
    p.add_argument("--c-values", type=_floats, default=None, help="C values to cross-validate (default 0.01,0.1,1,10,100)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the cross-validation folds (default 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--label", default="", help="label for the run in the registry")
    json_arg(p)
    p.set_defaults(handler=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    from calib.head import HeadConfig, fit_head
    from calib.pipeline import run_stage

    ws = workspace_of(args)
    from calib.inputs import DEMO_SPLITS

    model, data = inputs_from_args(args, ws.root, default_split=DEMO_SPLITS["train"])
    config = HeadConfig(model=model, data=data, folds=args.folds, seed=args.seed, batch_size=args.batch_size,
                        **({"c_values": args.c_values} if args.c_values else {}))
    run_id, head = run_stage(ws, "head", fit_head, config, label=args.label, progress=ProgressBar("head fit"))
    if args.json:
        print_run_json(ws, run_id, {"model": head.model_path, "card": head.dir / "card.json"})
        return 0
    card = head.card
    print(f"run {run_id}: {head.dir}")
    print(f"classifier: {head.model_path} (outputs logits, embedding; sha256 {card['model']['sha256'][:12]}…)")
    print(f"classes (logit order): {', '.join(head.classes)}")
    print(f"C {card['head']['C']:g} by {card['head']['cv_folds']}-fold cross-validation: FP32 accuracy "
          f"{fmt.percent(card['fp32']['cv_accuracy'])} (training {fmt.percent(card['fp32']['train_accuracy'])}) on "
          f"{fmt.count(card['data']['rows'])} texts; |ONNX − scikit-learn| ≤ {card['head']['max_abs_diff_vs_sklearn']:.1e}")
    print(f"next: calib assemble --model {head.model_path} --tokenizer {args.tokenizer} --labels "
          f"{','.join(head.classes)} --data ...")
    return 0
