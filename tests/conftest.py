"""Shared fixtures: a tiny BERT-like ONNX classifier, its tokenizer and a small text dataset,
all built inside the test session (no downloads); plus the real demo assets for `demo` tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import tinymodel


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    onnx.save(tinymodel.build_model(), str(root / "model.onnx"))
    tinymodel.write_tokenizer(root / "tokenizer")
    texts, labels = tinymodel.make_texts(240, seed=1)
    import pandas as pd

    pd.DataFrame({"text": texts, "label": [tinymodel.LABELS[i] for i in labels]}).to_csv(root / "data.csv", index=False)
    return root


@pytest.fixture(scope="session")
def tiny_model_path(tiny_dir) -> Path:
    return tiny_dir / "model.onnx"


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_dir) -> Path:
    return tiny_dir / "tokenizer"


@pytest.fixture(scope="session")
def tiny_csv(tiny_dir) -> Path:
    return tiny_dir / "data.csv"


@pytest.fixture(scope="session")
def tiny_spec(tiny_model_path, tiny_tokenizer_dir):
    from calib.model import load_model

    return load_model(tiny_model_path, tiny_tokenizer_dir, max_length=64, labels=tinymodel.LABELS)


@pytest.fixture()
def workspace(tmp_path):
    from calib.workspace import Workspace

    return Workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def demo_workspace() -> Path:
    """A workspace with the real demo prepared (MiniLM export, both tasks). Prepared once and
    cached in $CALIB_TEST_WORKSPACE (default: .cache/test-workspace in the repository)."""
    from calib.demo import DemoConfig, prepare_demo
    from calib.workspace import Workspace

    root = Path(os.environ.get("CALIB_TEST_WORKSPACE", Path(__file__).resolve().parent.parent / ".cache" / "test-workspace"))
    ws = Workspace(root)
    prepare_demo(DemoConfig(workspace=str(ws.root)))
    return ws.root


@pytest.fixture()
def rng():
    return np.random.default_rng(0)
