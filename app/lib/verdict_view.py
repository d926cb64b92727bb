"""The ship decision on a page: the verdict banner, the headline tiles with their intervals, and the
calibrators-side-by-side table. Decisions come from ``calib.verdict``; this module only lays them out."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import altair as alt
import pandas as pd
import streamlit as st

from calib import formatting as fmt
from calib.compare import ComparisonRow
from calib.errors import InputError
from calib.evaluation import BucketFigures
from calib.report import padded_floor
from calib.verdict import (
    Criterion,
    ReleaseBudget,
    Verdict,
    drop_interval_points,
    mean_interval,
    proportion_interval,
)
from calib.workspace import Workspace
from lib.context import attempt, show_error
from lib.project import Project, release_budget, set_project

PASS_COLOUR, FAIL_COLOUR = "#2a7a2a", "#b00020"


def criterion_text(c: Criterion) -> str:
    """``0.9075 ≥ 0.99`` style: value, comparison, threshold (or why it was not measured)."""
    if c.value is None:
        return c.detail
    value = fmt.points(c.value) if c.unit == "pts" else fmt.ratio(c.value)
    threshold = fmt.points(c.threshold, unit=True).lstrip("+") if c.unit == "pts" else f"{c.threshold:g}"
    return f"{value} (needs {c.comparison} {threshold})"


def verdict_banner(verdict: Verdict, *, subject: str = "", warning: str | None = None, key: str = "verdict") -> None:
    """A bordered banner: PASS/FAIL in colour, then each criterion with its threshold, value and status."""
    colour = "green" if verdict.passed else "red"
    icon = ":material/verified:" if verdict.passed else ":material/block:"
    with st.container(border=True, key=f"{key}-banner"):
        st.markdown(f"#### {icon} :{colour}[**{verdict.status}**]" + (f" · {subject}" if subject else ""))
        cols = st.columns(max(len(verdict.criteria), 1))
        for col, c in zip(cols, verdict.criteria):
            cc = "green" if c.passed else "red"
            col.markdown(f"{c.label}  \n:{cc}[**{c.status}**] {criterion_text(c)}")
        st.caption(f"Release budget: {verdict.budget.describe()} (set on the Project page).")
        if warning:
            st.warning(f"The eval set is too small for this budget: {warning}.", icon=":material/warning:")


def headline_tiles(headline: Mapping, *, has_embedding: bool, row_cosines=None) -> None:
    """Accuracy, drop, agreement and embedding cosine tiles, each with its 95 % interval below."""
    n = int(headline.get("rows") or 0)
    m = st.columns(5)
    if headline.get("labelled"):
        acc32, acc8 = headline.get("accuracy_fp32"), headline.get("accuracy_int8")
        m[0].metric("FP32 accuracy", fmt.percent(acc32), help=_interval_help(acc32, n))
        m[1].metric("INT8 accuracy", fmt.percent(acc8), help=_interval_help(acc8, n))
        low, high = headline.get("drop_ci_low_points"), headline.get("drop_ci_high_points")
        ci = f"95 % CI [{fmt.points(low, unit=False)}, {fmt.points(high, unit=False)}]" if low is not None else ""
        m[2].metric("Accuracy drop", fmt.points(headline.get("accuracy_drop_points")),
                    help="FP32 − INT8 accuracy in points (positive: INT8 is worse); the interval is a paired "
                         "bootstrap of the same difference.")
        if ci:
            m[2].caption(ci)
        for col, value in ((m[0], acc32), (m[1], acc8)):
            if (iv := proportion_interval(value, n)) is not None:
                col.caption(f"95 % CI {fmt.percent(iv[0])} – {fmt.percent(iv[1])}")
    else:
        m[0].metric("Labels", "none")
    agreement = headline.get("top1_agreement")
    m[3].metric("Top-1 agreement", fmt.percent(agreement), help="Share of texts where INT8 predicts FP32's class.")
    if (iv := proportion_interval(agreement, n)) is not None:
        m[3].caption(f"95 % CI {fmt.percent(iv[0])} – {fmt.percent(iv[1])}")
    if has_embedding and headline.get("embedding_cosine") is not None:
        m[4].metric("Embedding cosine", fmt.ratio(headline["embedding_cosine"]),
                    help="Mean cosine between FP32 and INT8 embeddings.")
        iv = mean_interval(row_cosines) if row_cosines is not None else None
        m[4].caption((f"95 % CI {fmt.ratio(iv[0])} – {fmt.ratio(iv[1])} · " if iv else "")
                     + f"lowest text {fmt.ratio(headline.get('embedding_cosine_min'))}")


def _interval_help(p: float | None, n: int) -> str | None:
    iv = proportion_interval(p, n)
    return None if iv is None else f"95 % interval (Wilson) on {fmt.count(n)} texts: {fmt.percent(iv[0])} – {fmt.percent(iv[1])}"


def comparison_frame(entries: Sequence[ComparisonRow]) -> pd.DataFrame:
    """One row per calibrator of a comparison (``CalibratorComparison.entries``): the figures the decision
    rests on, formatted once."""
    out = []
    for e in entries:
        low, high = e.figure("drop_ci_low_points"), e.figure("drop_ci_high_points")
        out.append({
            "calibrator": e.calibrator, "verdict": e.verdict.status,
            "INT8 accuracy": fmt.percent(e.figure("accuracy_int8")),
            "drop (pts, FP32 − INT8)": fmt.points(e.figure("accuracy_drop_points"), unit=False),
            "drop 95 % CI": (f"[{fmt.points(low, unit=False)}, {fmt.points(high, unit=False)}]"
                             if low is not None else fmt.MISSING),
            "top-1 agreement": fmt.percent(e.figure("top1_agreement")),
            "embedding cosine": fmt.ratio(e.figure("embedding_cosine")),
            "worst bucket": e.worst_bucket or fmt.MISSING,
        })
    return pd.DataFrame(out)


def comparison_chart(entries: Sequence[ComparisonRow], budget: ReleaseBudget) -> alt.Chart:
    """Agreement and embedding cosine per calibrator, bars coloured by verdict, budget lines labelled."""
    long = []
    for e in entries:
        for measure, key in (("top-1 agreement", "top1_agreement"), ("embedding cosine", "embedding_cosine")):
            if (value := e.figure(key)) is not None:
                long.append({"calibrator": e.calibrator, "measure": measure, "value": value,
                             "verdict": e.verdict.status})
    frame = pd.DataFrame(long)
    floor = padded_floor([*frame["value"], *(v for v in (budget.min_agreement, budget.min_embedding_cosine) if v)])
    bars = alt.Chart(frame).mark_bar().encode(
        x=alt.X("calibrator:N", title=None, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("measure:N"),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(domain=[floor, 1.0], clamp=True)),
        color=alt.Color("measure:N", title=None, scale=alt.Scale(range=["#4c78a8", "#72b7b2"])),
        opacity=alt.condition(alt.datum.verdict == "PASS", alt.value(1.0), alt.value(0.55)),
        tooltip=["calibrator", "measure", alt.Tooltip("value:Q", format=".4f"), "verdict"])
    layers = [bars]
    lines: dict[float, list[str]] = {}  # one labelled line per threshold value (equal ones share it)
    for name, v in (("agreement", budget.min_agreement), ("embedding cosine", budget.min_embedding_cosine)):
        if v is not None:
            lines.setdefault(float(v), []).append(name)
    lines = [(f"min {' / '.join(names)} {v:g}", v) for v, names in lines.items()]
    if lines:
        rules = pd.DataFrame({"y": [v for _, v in lines], "label": [label for label, _ in lines]})
        layers.append(alt.Chart(rules).mark_rule(color="#e45756", strokeDash=[4, 3]).encode(y="y:Q"))
        layers.append(alt.Chart(rules).mark_text(align="right", dy=-5, color="#e45756", x="width").encode(
            y="y:Q", text="label:N"))
    return alt.layer(*layers).properties(height=260)


def bucket_frame(buckets: Sequence[BucketFigures], labelled: bool) -> pd.DataFrame:
    """Per length bucket of a classifier: texts, accuracy, drop with its 95 % interval, agreement; buckets
    with fewer than ``MIN_BUCKET_TEXTS`` texts are flagged (the page greys them)."""
    rows = []
    for b in buckets:
        row = {"bucket": b.bucket + (" (empty)" if b.empty else " (few texts)" if b.few_texts else ""),
               "texts": b.n, "few": b.few_texts, "agreement": None if b.empty else b.top1_agreement}
        if labelled:
            drop = drop_interval_points(b.accuracy_diff_ci)
            row.update({
                "FP32 accuracy": None if b.empty else b.accuracy_fp32,
                "INT8 accuracy": None if b.empty else b.accuracy_int8,
                "drop (pts)": None if b.empty else b.accuracy_drop_points,
                "drop 95 % CI (pts)": (f"[{fmt.points(drop['drop_ci_low_points'], unit=False)}, "
                                       f"{fmt.points(drop['drop_ci_high_points'], unit=False)}]"
                                       if not b.empty and drop["drop_ci_low_points"] is not None else fmt.MISSING),
            })
        rows.append(row)
    return pd.DataFrame(rows)


def embedding_bucket_frame(buckets: Sequence[BucketFigures]) -> pd.DataFrame:
    """Per length bucket of an embedding model: texts, mean cosine, neighbour recall@k, similarity Spearman."""
    return pd.DataFrame([{"bucket": b.bucket, "texts": b.n, "cosine": b.embedding_cosine,
                          "recall@k": b.neighbour_recall_at_k, "spearman": b.similarity_spearman}
                         for b in buckets], columns=["bucket", "texts", "cosine", "recall@k", "spearman"])


def budget_editor(ws: Workspace, session: str, project: Project) -> Project:
    """The project's release budget: each criterion on/off with its threshold; saved with the project."""
    current = release_budget(ws, project)
    st.subheader("Release budget")
    st.caption("The thresholds an INT8 build must meet to ship. Validate, the reports and `calib gate` judge "
               "every run against them; they are saved with the project and recorded in each report.")
    c1, c2, c3, c4 = st.columns(4)
    on_drop = c1.checkbox("Accuracy drop", value=current.max_drop is not None, key="budget-drop-on")
    max_drop = c1.number_input("Max drop (points, FP32 − INT8)", min_value=0.0, max_value=100.0, step=0.1,
                               value=float(current.max_drop if current.max_drop is not None else 0.5),
                               key="budget-drop", disabled=not on_drop)
    on_agree = c2.checkbox("Top-1 agreement", value=current.min_agreement is not None, key="budget-agree-on")
    min_agree = c2.number_input("Min agreement (0–1)", min_value=0.0, max_value=1.0, step=0.005, format="%.3f",
                                value=float(current.min_agreement if current.min_agreement is not None else 0.99),
                                key="budget-agree", disabled=not on_agree)
    on_cos = c3.checkbox("Embedding cosine", value=current.min_embedding_cosine is not None, key="budget-cos-on")
    min_cos = c3.number_input("Min embedding cosine", min_value=0.0, max_value=1.0, step=0.001, format="%.3f",
                              value=float(current.min_embedding_cosine if current.min_embedding_cosine is not None
                                          else 0.99), key="budget-cos", disabled=not on_cos)
    use_ci = c4.checkbox("Upper 95 % bound of the drop too", value=current.use_ci, key="budget-ci",
                         disabled=not on_drop, help="Stricter: the whole interval of the drop must be within budget, "
                                                    "not only the estimate.")
    try:
        chosen = ReleaseBudget(max_drop=float(max_drop) if on_drop else None,
                               min_agreement=float(min_agree) if on_agree else None,
                               min_embedding_cosine=float(min_cos) if on_cos else None,
                               use_ci=bool(use_ci and on_drop))
        if chosen.empty:
            raise InputError("the release budget needs at least one criterion")
    except InputError as exc:
        show_error(exc)
        return project
    if chosen != current or (project.budget is None and chosen != current):
        project = dataclasses.replace(project, budget=chosen)
        set_project(ws, session, project)
        st.toast("Release budget saved with the project.", icon=":material/save:")
    st.caption(f"Now: {chosen.describe()}.")
    return project


def evaluation_tiles(ev, headline: Mapping, *, run_id: str) -> bool:
    """The headline tiles of an evaluation (``calib.validate.Evaluation``) and their caption: a classifier's
    accuracy, drop, agreement and cosine; an embedding model's cosine, neighbours and per-bucket table.
    Returns whether it is a classifier's (whose per-bucket and per-layer details follow on the page)."""
    m = ev.metrics
    if m.is_classifier:
        cosines = attempt(lambda: ev.predictions().get("embedding_cosine"), what="Reading the per-text cosines")
        headline_tiles(headline, has_embedding=m.has_embedding,
                       row_cosines=cosines if cosines is not None and len(cosines) else None)
        if not ev.labelled:
            st.caption(ev.dataset.note or "The evaluation data has no labels: agreement only.")
        st.caption(f"{fmt.count(m.n)} texts · engine {ev.engine.name} · KL(FP32‖INT8) "
                   f"{fmt.number(m.kl_softmax)} · run `{run_id}`")
        return True
    # an embedding model: no logits, so no agreement; cosine and neighbours instead
    cols = st.columns(4)
    cols[0].metric("Embedding cosine (mean)", fmt.ratio(m.embedding_cosine),
                   help=f"lowest 1 % of texts: {fmt.ratio(m.embedding_cosine_p1)}")
    cols[1].metric("Neighbour recall@1", fmt.percent(m.neighbour_recall_at_1))
    cols[2].metric(f"Neighbour recall@{m.neighbour_k}", fmt.percent(m.neighbour_recall_at_k))
    cols[3].metric("Similarity Spearman", fmt.ratio(m.similarity_spearman))
    st.caption(f"{fmt.count(m.n)} texts · embedding model (output `{ev.model.roles.embedding}`) · run `{run_id}`")
    st.dataframe(embedding_bucket_frame(m.bucket_figures), hide_index=True, width="stretch")
    return False
