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


REPO = Path(__file__).resolve().parent.parent


def share_prepared_demo(test_root: Path, demo_root: Path) -> None:
    """Make ``test_root/demo`` a link to the demo prepared in the workspace ``demo_root`` (preparing
    it there first if needed), so that the tests and `make demo` use one prepared copy while test
    runs stay in their own registry. A ``test_root/demo`` that already holds files is left alone."""
    from calib.demo import DemoConfig, prepare_demo

    link = test_root / "demo"
    if link.is_symlink() or (link.is_dir() and any(link.iterdir())):
        return
    prepare_demo(DemoConfig(workspace=str(demo_root)))
    test_root.mkdir(parents=True, exist_ok=True)
    if link.is_dir():
        link.rmdir()  # the empty folder an earlier Workspace() made
    link.symlink_to((demo_root / "demo").resolve(), target_is_directory=True)


@pytest.fixture(scope="session")
def demo_workspace() -> Path:
    """A workspace with the real demo prepared (MiniLM-L6 ONNX, both tasks), prepared once.

    ``$CALIB_TEST_WORKSPACE`` if set (prepared there). Otherwise ``.cache/test-workspace`` in the
    repository, whose ``demo`` links to the demo of ``$CALIB_TEST_DEMO_WORKSPACE`` (default
    ``./workspace``, the one `make demo` prepares and serves)."""
    from calib.demo import DemoConfig, prepare_demo
    from calib.workspace import Workspace

    explicit = os.environ.get("CALIB_TEST_WORKSPACE")
    root = Path(explicit) if explicit else REPO / ".cache" / "test-workspace"
    if not explicit:
        share_prepared_demo(root, Path(os.environ.get("CALIB_TEST_DEMO_WORKSPACE") or REPO / "workspace"))
    ws = Workspace(root)
    prepare_demo(DemoConfig(workspace=str(ws.root)))  # checks the prepared files; no work when intact
    return ws.root


@pytest.fixture()
def rng():
    return np.random.default_rng(0)
