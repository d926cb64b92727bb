"""Tables of runs: the history listing and a side-by-side comparison."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from calib.workspace import RunRecord
from lib.context import STAGE_TITLES


def flatten(data: Mapping[str, Any], prefix: str = "", max_items: int = 12) -> dict[str, Any]:
    """Nested dicts as ``a.b.c`` keys; long lists are shortened to keep tables readable."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}.", max_items))
        elif isinstance(value, (list, tuple)):
            items = list(value)
            text = ", ".join(str(v) for v in items[:max_items])
            out[name] = f"[{text}{', …' if len(items) > max_items else ''}]"
        else:
            out[name] = value
    return out


def history_frame(runs: Sequence[RunRecord], session: str) -> pd.DataFrame:
    rows = []
    for run in runs:
        summary = ", ".join(f"{k}={_short(v)}" for k, v in list(flatten(run.summary).items())[:4])
        rows.append({
            "run": run.id, "stage": STAGE_TITLES.get(run.stage, run.stage), "status": run.status,
            "progress": float(run.progress), "started": run.created_at.replace("T", " ")[:19],
            "session": ("this" if run.session == session else run.session) or "(cli)",
            "label": run.label, "summary / error": run.error or run.message if run.status != "finished" else summary,
        })
    return pd.DataFrame(rows)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def comparison_frame(runs: Sequence[RunRecord], *, only_differences: bool = False) -> pd.DataFrame:
    """One column per run; rows are summary figures first, then parameters."""
    columns: dict[str, dict[str, str]] = {}
    for run in runs:
        values = {f"summary · {k}": _short(v) for k, v in flatten(run.summary).items()}
        values.update({f"param · {k}": _short(v) for k, v in flatten(run.params).items()})
        values["created"] = run.created_at.replace("T", " ")[:19]
        values["parents"] = ", ".join(run.parents)
        columns[run.id] = values
    frame = pd.DataFrame(columns).fillna("")
    if only_differences and len(runs) > 1:
        frame = frame[frame.nunique(axis=1) > 1]
    return frame
