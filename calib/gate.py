"""Release gate: does a report's INT8 build stay within the accuracy budget?

``check_gate(report, max_drop=0.5, min_agreement=0.99)`` returns a :class:`GateResult` whose
``reason`` is one line. ``calib gate report.json --max-drop 0.5 [--min-agreement 0.99]`` exits 0
when the build passes and 1 (with the reason) when it does not, for release pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calib.errors import InputError
from calib.report import Report
from calib.verdict import ReleaseBudget, judge


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str  # one line
    checks: tuple[tuple[str, bool, str], ...] = ()  # (name, passed, detail)


def load_report_data(path: str | Path) -> dict:
    return Report.load(path).data


def check_gate(report: dict, *, max_drop: float | None = None, min_agreement: float | None = None,
               min_embedding_cosine: float | None = None, use_ci: bool = False) -> GateResult:
    """Check the headline of a report (``calib.report/1`` data) against the budget.

    ``max_drop`` is in accuracy points (FP32 − INT8). With ``use_ci`` the upper end of the 95 %
    interval of the drop must be within budget too, not just the point estimate; a report without that
    interval (validated with ``--bootstrap 0``) FAILs ``use_ci`` rather than falling back to the
    estimate. A report without labels cannot pass a ``max_drop`` check: that is said, not assumed. The decision is
    :func:`calib.verdict.judge`, the same that the report and the app show.
    """
    if max_drop is None and min_agreement is None and min_embedding_cosine is None:
        raise InputError("the gate needs a budget: give --max-drop, --min-agreement and/or --min-embedding-cosine")
    budget = ReleaseBudget(max_drop=max_drop, min_agreement=min_agreement,
                           min_embedding_cosine=min_embedding_cosine, use_ci=use_ci)
    verdict = judge(report["headline"], budget)
    return GateResult(verdict.passed, verdict.reason, tuple((c.name, c.passed, c.detail) for c in verdict.criteria))
