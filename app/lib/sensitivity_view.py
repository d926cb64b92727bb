"""What the Validate page shows of a sensitivity analysis: the ranking table and the recommendation's
gain over the placement as given. Plain data in, plain data out (the page lays it out)."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import pandas as pd

from calib.build import BuildConfig
from calib.sensitivity import SEARCH_BUDGET, SensitivityResult
from calib.verdict import ReleaseBudget
from calib.workspace import RunRecord


def search_budget_start(release: ReleaseBudget) -> dict[str, float]:
    """The search's budget inputs, first shown as the project's release budget: its drop, agreement and
    embedding cosine (0: not checked), the search's defaults where the release budget has none."""
    return {"max_drop": float(release.max_drop if release.max_drop is not None else SEARCH_BUDGET.max_drop),
            "min_agreement": float(release.min_agreement if release.min_agreement is not None
                                   else SEARCH_BUDGET.min_agreement),
            "min_embedding_cosine": float(release.min_embedding_cosine or 0.0)}


def search_budget(max_drop: float, min_agreement: float, min_embedding_cosine: float) -> ReleaseBudget:
    """The budget of the inputs (a cosine of 0: not checked)."""
    return ReleaseBudget(max_drop=float(max_drop), min_agreement=float(min_agreement),
                         min_embedding_cosine=float(min_embedding_cosine) if min_embedding_cosine > 0 else None)


def judged_stage(state: MutableMapping, pair: tuple[str, str], newer: str) -> str:
    """Which of the latest validation and comparison (``pair``: their run ids) the Verdict judges: the
    ``newer`` one's stage whenever the pair changes, else what the reader picked (``state["val-judge"]``)."""
    if state.get("val-judge-seen") != pair:
        state["val-judge"] = newer
        state["val-judge-seen"] = pair
    return state["val-judge"]


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


def rebuild_request(build_run: RunRecord, search_run: RunRecord, exclusions: Sequence[str]) -> dict[str, Any]:
    """The ``submit`` arguments that rebuild ``build_run`` with a search's ``exclusions`` kept in float: the
    build's recorded config plus those nodes, its lineage plus the search, and its label (the new run's name
    says how many nodes stay in float)."""
    config = BuildConfig.from_params(build_run.params).with_float_nodes(exclusions)
    return {"config": config, "parents": (*build_run.parents, search_run.id), "label": build_run.label}
