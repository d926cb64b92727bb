"""What the Validate page shows of a sensitivity analysis: the ranking table and the recommendation's
gain over the placement as given. Plain data in, plain data out (the page lays it out)."""

from __future__ import annotations

import pandas as pd

from calib.sensitivity import SensitivityResult


def ranking_frame(sens: SensitivityResult) -> pd.DataFrame:
    """One row per ranked unit, most sensitive first: rank, unit, score, node count, and whether the
    recommendation keeps it in float."""
    kept = set(sens.recommended.units)
    return pd.DataFrame([{"rank": i + 1, "unit": r.unit, "score": r.score, "nodes": len(r.nodes),
                          "recommended": r.unit in kept} for i, r in enumerate(sens.ranking)],
                        columns=["rank", "unit", "score", "nodes", "recommended"])


def agreement_gain_points(sens: SensitivityResult) -> float | None:
    """How many points of top-1 agreement the recommended exclusions gain over the baseline placement
    (None: an embedding model, or either figure missing)."""
    rec, base = sens.recommended.top1_agreement, sens.baseline.top1_agreement
    return None if rec is None or base is None else (rec - base) * 100
