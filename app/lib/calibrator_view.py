"""The Calibrate page's calibrator parameters: one control per parameter of every chosen method, read
from the method registry (:data:`calib.methods.REGISTRY`), so a newly registered calibrator's
parameters appear without a page change. Only values that differ from a method's defaults are
passed on (``CalibrateConfig.params``), so run params stay short."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st

from calib.errors import InputError
from calib.methods import get_method


@dataclass(frozen=True)
class ParamControl:
    """One parameter of one method: its name, default, and which control edits it (``bool``: a
    checkbox, ``int`` / ``float``: a number, ``text``: a JSON value, else the text as it is)."""

    method: str
    name: str
    default: Any
    kind: str

    @property
    def key(self) -> str:
        return f"cal-param-{self.method}-{self.name}"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "text"


def param_controls(methods: Sequence[str]) -> list[ParamControl]:
    """The controls of ``methods``' parameters, in method then definition order."""
    return [ParamControl(m, name, default, _kind(default))
            for m in methods for name, default in get_method(m).defaults.items()]


def read_text(text: str) -> Any:
    """A text control's value: JSON when it parses (numbers, lists, true/false), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def changed_params(values: Mapping[ParamControl, Any]) -> dict[str, dict[str, Any]]:
    """``{method: {name: value}}`` for the values that differ from their defaults, each method's set
    checked by the method itself (one :class:`InputError` line for a bad value)."""
    out: dict[str, dict[str, Any]] = {}
    for control, value in values.items():
        if value != control.default:
            out.setdefault(control.method, {})[control.name] = value
    for method, given in out.items():
        get_method(method).params(given)
    return out


def calibrator_params(methods: Sequence[str]) -> dict[str, dict[str, Any]] | None:
    """One row of controls per chosen method with parameters; the changed values, or None (and the
    method's own error shown) when one is refused."""
    values: dict[ParamControl, Any] = {}
    controls = param_controls(methods)
    by_method: dict[str, list[ParamControl]] = {}
    for c in controls:
        by_method.setdefault(c.method, []).append(c)
    for method, group in by_method.items():
        cols = st.columns(max(len(group), 3))
        for col, c in zip(cols, group):
            label = f"{method}: {c.name.replace('_', ' ')}"
            if c.kind == "bool":
                values[c] = col.checkbox(label, value=c.default, key=c.key)
            elif c.kind == "int":
                values[c] = int(col.number_input(label, value=c.default, step=1, key=c.key))
            elif c.kind == "float":
                values[c] = float(col.number_input(label, value=c.default, step=10 ** -_decimals(c.default),
                                                   format=f"%.{_decimals(c.default)}f", key=c.key))
            else:
                values[c] = read_text(col.text_input(label, value=json.dumps(c.default), key=c.key))
    try:
        return changed_params(values)
    except InputError as exc:
        st.error(str(exc), icon=":material/error:")
        return None


def _decimals(value: float) -> int:
    """Decimals to show for a default like 99.999 (3), at least 1 and at most 6."""
    text = f"{value:.6f}".rstrip("0")
    return min(max(len(text.split(".")[1]) if "." in text else 1, 1), 6)
