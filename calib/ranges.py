"""Ranges: one calibrator's per-tensor amax, saved as our JSON and as ONNX Runtime ``TensorsData`` JSON.

Symmetric INT8 throughout: a tensor's range is ``[-amax, amax]`` and its scale ``amax / 127``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calib.errors import InputError
from calib.io import atomic_write_json, atomic_write_text, read_json
from calib.model import check_same_model

FORMAT = "calib.ranges/1"
EXTERNAL_METHOD = "external"  # the method of a plain {tensor: amax} mapping, ranged outside calib


@dataclass(frozen=True)
class Ranges:
    """Per-tensor amax (graph order) from one method. ``flags[name]`` holds e.g. ``nonfinite``
    (NaN/±inf counts), ``zero_range`` (all finite values were 0) or ``empty`` (no finite values)."""

    method: str
    params: dict[str, Any]
    model_sha256: str
    amax: dict[str, float]
    flags: dict[str, dict[str, Any]] = field(default_factory=dict)
    # whole-set methods (auto): per tensor, the chosen candidate, the criterion and every candidate's error
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.amax)

    def scale(self, name: str) -> float:
        return self.amax[name] / 127.0

    def usable(self) -> dict[str, float]:
        """Tensors with a finite, positive amax (the ones a quantizer or cache can use)."""
        return {n: a for n, a in self.amax.items() if math.isfinite(a) and a > 0}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "method": self.method, "params": self.params, "model_sha256": self.model_sha256,
                "tensors": [{"name": n, "amax": a, **({"flags": self.flags[n]} if n in self.flags else {}),
                             **({"choice": self.choices[n]} if n in self.choices else {})}
                            for n, a in self.amax.items()]}

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "ranges") -> Ranges:
        """calib's ranges JSON, or a plain ``{tensor: amax}`` mapping (also under ``"amax"``), whose method
        is :data:`EXTERNAL_METHOD` (a None amax reads as NaN: unusable)."""
        if isinstance(data, dict) and "format" not in data:
            return cls._from_mapping(data.get("amax", data) if isinstance(data.get("amax"), dict) else data, where)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{where} is not a calib ranges file (expected format {FORMAT!r}) "
                             "nor a {tensor: amax} mapping")
        amax, flags, choices = {}, {}, {}
        for row in data["tensors"]:
            value = row.get("amax")
            if value is None or not isinstance(value, (int, float)):
                raise InputError(f"{where}: tensor {row.get('name')!r} has no numeric amax")
            amax[row["name"]] = float(value)
            if row.get("flags"):
                flags[row["name"]] = row["flags"]
            if row.get("choice"):
                choices[row["name"]] = row["choice"]
        return cls(method=data["method"], params=dict(data.get("params", {})),
                   model_sha256=data.get("model_sha256", ""), amax=amax, flags=flags, choices=choices)

    @classmethod
    def _from_mapping(cls, amax: Mapping[str, Any], where: str) -> Ranges:
        if not amax:
            raise InputError(f"{where} holds no {{tensor: amax}} mapping")
        values = {}
        for name, value in amax.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise InputError(f"{where}: amax values must be numbers, tensor {name!r} has {value!r}")
            values[str(name)] = float(value) if value is not None else float("nan")
        return cls(method=EXTERNAL_METHOD, params={}, model_sha256="", amax=values)

    @classmethod
    def load(cls, path: str | Path) -> Ranges:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"ranges file {path} does not exist")
        try:
            data = read_json(path)
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"ranges file {path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, str(path))

    def to_tensors_data(self):
        """ONNX Runtime ``TensorsData`` (MinMax) with ``(-amax, amax)`` per usable tensor."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

        return TensorsData(CalibrationMethod.MinMax,
                           {n: (np.float32(-a), np.float32(a)) for n, a in self.usable().items()})

    def save_ort(self, path: str | Path) -> Path:
        """Write the JSON that ``onnxruntime.quantization.calibrate.load_tensors_data`` reads
        (same encoder as ``save_tensors_data``; written atomically through calib.io)."""
        from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

        payload = self.to_tensors_data().to_dict()
        payload["smooth_quant"] = False
        return atomic_write_text(path, json.dumps(payload, cls=CalibrationCacheEncoder))


def load_ort_ranges(path: str | Path) -> dict[str, tuple[float, float]]:
    """(low, high) per tensor from an ONNX Runtime TensorsData JSON file."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    try:
        data = load_tensors_data(path)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not an ONNX Runtime TensorsData JSON file: {exc}") from exc
    return {n: (float(v.range_value[0]), float(v.range_value[1])) for n, v in data.items()}


def diff_ranges(a: Ranges, b: Ranges, *, check_model: bool = True) -> list[dict[str, Any]]:
    """Per-tensor comparison, biggest relative change first: rows with ``tensor``, ``amax_a``,
    ``amax_b``, ``ratio`` (b / a) and ``log2_ratio``, and ``choice_a`` / ``choice_b`` (the candidate a
    whole-set method such as auto chose, with its error; None otherwise). Tensors present in only
    one set come first (ratio None); tensors where both are 0 have ratio 1."""
    if check_model:
        check_same_model(a.model_sha256, b.model_sha256, f"ranges ({b.method})")
    rows = []
    for name in dict.fromkeys([*a.amax, *b.amax]):
        va, vb = a.amax.get(name), b.amax.get(name)
        choice = {"choice_a": a.choices.get(name), "choice_b": b.choices.get(name)}
        if va is None or vb is None:
            rows.append({"tensor": name, "amax_a": va, "amax_b": vb, "ratio": None, "log2_ratio": None, **choice})
            continue
        if va == vb:
            ratio = 1.0
        elif va > 0 and vb > 0:
            ratio = vb / va
        else:
            ratio = math.inf if vb > va else 0.0
        log2 = math.log2(ratio) if 0 < ratio < math.inf else (math.inf if ratio else -math.inf)
        rows.append({"tensor": name, "amax_a": va, "amax_b": vb, "ratio": ratio, "log2_ratio": log2, **choice})
    order = {n: i for i, n in enumerate(dict.fromkeys([*a.amax, *b.amax]))}
    rows.sort(key=lambda r: (r["ratio"] is not None, -abs(r["log2_ratio"]) if r["ratio"] is not None else 0.0,
                             order[r["tensor"]]))
    return rows


def entropy_over_minmax(amax: Mapping[str, float | None]) -> float | None:
    """One tensor's entropy amax over its minmax amax (``amax``: method -> amax): how much of the exact
    range TensorRT's default calibrator keeps (< 1: it clips). None unless both are known and minmax > 0."""
    e, m = amax.get("entropy"), amax.get("minmax")
    return e / m if e is not None and m else None
