"""Release gate: does a report's INT8 build stay within the accuracy budget?

``check_gate(report, max_drop=0.5, min_agreement=0.99)`` returns a :class:`GateResult` whose
``reason`` is one line. ``calib gate report.json --max-drop 0.5 [--min-agreement 0.99]`` exits 0
when the build passes and 1 (with the reason) when it does not, for release pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calib.errors import InputError


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str  # one line
    checks: tuple[tuple[str, bool, str], ...] = ()  # (name, passed, detail)


def load_report_data(path: str | Path) -> dict:
    from calib.report import Report

    return Report.load(path).data


def check_gate(report: dict, *, max_drop: float | None = None, min_agreement: float | None = None,
               min_embedding_cosine: float | None = None, use_ci: bool = False) -> GateResult:
    """Check the headline of a report (``calib.report/1`` data) against the budget.

    ``max_drop`` is in accuracy points (FP32 − INT8). With ``use_ci`` the upper end of the 95 %
    interval of the drop must be within budget, not just the point estimate. A report without
    labels cannot pass a ``max_drop`` check: that is said, not assumed.
    """
    if max_drop is None and min_agreement is None and min_embedding_cosine is None:
        raise InputError("the gate needs a budget: give --max-drop, --min-agreement and/or --min-embedding-cosine")
    h = report["headline"]
    checks: list[tuple[str, bool, str]] = []
    if max_drop is not None:
        drop = h.get("accuracy_drop_points")
        if not h.get("labelled") or drop is None:
            checks.append(("max_drop", False, ("the report has no accuracy (eval set without labels); "
                                               "gate on --min-agreement instead or evaluate on a labelled set")))
        else:
            value = -h["ci_low_points"] if use_ci and h.get("ci_low_points") is not None else drop
            what = "upper 95 % bound of the accuracy drop" if use_ci else "accuracy drop"
            checks.append(("max_drop", value <= max_drop + 1e-9,
                           f"{what} {value:.2f} points {'<=' if value <= max_drop + 1e-9 else '>'} budget {max_drop:g}"))
    if min_agreement is not None:
        agreement = h["top1_agreement"]
        ok = agreement >= min_agreement - 1e-12
        checks.append(("min_agreement", ok, f"top-1 agreement {agreement:.4f} {'>=' if ok else '<'} {min_agreement:g}"))
    if min_embedding_cosine is not None:
        cos = h.get("embedding_cosine")
        if cos is None:
            checks.append(("min_embedding_cosine", False, "the model has no embedding output to check"))
        else:
            ok = cos >= min_embedding_cosine
            checks.append(("min_embedding_cosine", ok,
                           f"embedding cosine {cos:.4f} {'>=' if ok else '<'} {min_embedding_cosine:g}"))
    failed = [c for c in checks if not c[1]]
    if failed:
        return GateResult(False, "FAIL: " + "; ".join(c[2] for c in failed), tuple(checks))
    return GateResult(True, "PASS: " + "; ".join(c[2] for c in checks), tuple(checks))
