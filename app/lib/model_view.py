"""What the Project page shows of a model (``calib.model.ModelSpec``): its facts, the outputs calib scores
and its inputs and outputs as a table. Typed object in, plain data out (the page lays it out)."""

from __future__ import annotations

from typing import Any

import pandas as pd

UNKNOWN = "?"


def model_facts(spec: Any) -> list[tuple[str, str | int]]:
    """The metric tiles: (label, value) for inputs, outputs, max length and classes (``?`` when the model
    names none)."""
    return [("Inputs", len(spec.inputs)), ("Outputs", len(spec.outputs)), ("Max length", f"{spec.max_length} tokens"),
            ("Classes", len(spec.labels) or UNKNOWN)]


def scored_outputs(spec: Any) -> str:
    """The outputs calib compares: ``logits `name``` and/or ``embedding `name```, and the pooling used."""
    named = [f"{role} `{name}`" for role, name in (("logits", spec.logits_output), ("embedding", spec.embedding_output))
             if name]
    pooled = f" (pooled: {spec.pooling})" if spec.pooling != "none" else ""
    return (", ".join(named) or "none") + pooled


def model_caption(spec: Any) -> str:
    """One line under the tiles: the ONNX file, the start of its sha256 and the scored outputs."""
    return f"`{spec.onnx_path}` · sha256 `{spec.sha256[:16]}…` · scored outputs: {scored_outputs(spec)}"


def model_io_frame(spec: Any) -> pd.DataFrame:
    """One row per graph input then output: kind, name, dtype and shape (dimensions joined by ×)."""
    return pd.DataFrame([{"kind": kind, "name": t.name, "dtype": t.dtype, "shape": " × ".join(str(d) for d in t.shape)}
                         for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)) for t in tensors],
                        columns=["kind", "name", "dtype", "shape"])


def classes_caption(spec: Any) -> str | None:
    """The classes in logit order, or None when the model names none."""
    return "Classes in logit order: " + ", ".join(spec.labels) if spec.labels else None
