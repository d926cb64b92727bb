"""Validate: INT8 against FP32 on the evaluation data, per length bucket and per layer; find the
layers to keep in float; write the report."""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

import altair as alt
import pandas as pd
import streamlit as st
from lib.charts import (
    bucket_measure_bars,
    bucket_measures_long,
    clipped_long,
    layer_frame,
    method_color,
    worst_first,
)
from lib.context import attempt, shown_errors
from lib.project import data_spec, model_spec, release_budget
from lib.runs import judged_evaluation, other_models_warning, report_choices, verdict_subject
from lib.sensitivity_view import (
    agreement_gain_points,
    judged_stage,
    ranking_frame,
    rebuild_request,
    search_budget,
    search_budget_start,
)
from lib.stages import (
    JUDGE_CHOICES,
    PAGE_COMPARE_SETTINGS,
    PAGE_EVAL_SETTINGS,
    compare_config,
    comparison_report_config,
    default_calibrator_note,
    judge_titles,
    judged_run,
    layer_note,
    report_config,
    report_parents,
    report_title,
    sensitivity_config,
    validate_config,
)
from lib.ui import (
    download_file,
    finished_runs,
    job_section,
    last_outcome,
    page_link,
    pick_run,
    run_button,
    run_title,
    start_page,
    submit,
)
from lib.verdict_view import (
    bucket_frame,
    comparison_chart,
    comparison_frame,
    evaluation_tiles,
    verdict_banner,
)

from calib import formatting as fmt
from calib.build import EngineArtifact, build
from calib.calibrate import Calibration
from calib.compare import CalibratorComparison, compare_calibrators
from calib.placement import PRESET_TITLES, PRESETS
from calib.report import (
    REPORT_FILES,
    Report,
    layer_methods,
    layer_rows,
    make_report,
    method_colour,
)
from calib.sensitivity import (
    GRANULARITIES,
    GRANULARITY_DESCRIPTIONS,
    RANKINGS,
    SEARCH_EVALUATIONS,
    SEARCH_SETTINGS,
    SensitivityResult,
    analyze_sensitivity,
    search_start,
)
from calib.validate import validate
from calib.verdict import MIN_BUCKET_TEXTS, judge, resolution_warning

page = start_page("validate")
ws, project = page.ws, page.project

with shown_errors("Reading the project"):
    spec = model_spec(ws, project)
    eval_spec = data_spec(ws, project, "eval")


def report_verdict(rep_run, *, key: str) -> None:
    """A report's recorded verdict, the gate command that reproduces it, and its three downloads."""
    report = attempt(Report.load, rep_run.dir, what="Opening the report")
    if report is None:
        return
    verdict = report.verdict
    if verdict is not None:
        (st.success if verdict.passed else st.error)(verdict.reason, icon=":material/verified:"
                                                     if verdict.passed else ":material/block:")
        st.code(report.gate_command(), language="bash")
    else:
        st.caption("This report was written before reports carried a verdict.")
    cols = st.columns(len(REPORT_FILES))
    for col, (name, mime) in zip(cols, REPORT_FILES):
        with col:
            download_file(f"Download {name}", rep_run.dir / name, mime=mime, key=f"{key}-{name}",
                          file_name=f"{rep_run.id}-{name}")




# -- verdict -------------------------------------------------------------------------------------
budget = release_budget(ws, project)
st.subheader("Verdict")
run = pick_run(page, "validate", "Validation run", key="val-pick")
comparisons = finished_runs(page, "compare", all_sessions=True, model_sha256=spec.sha256)
judged = verdict_subject(run, comparisons[0] if comparisons else None)
if run is not None and comparisons:
    # both kinds exist: the newer one is judged, until the reader picks the other
    judged_stage(st.session_state, (run.id, comparisons[0].id), judged.stage)
    choice = st.radio("Judge", JUDGE_CHOICES, key="val-judge", horizontal=True,
                      format_func=judge_titles(run_title(comparisons[0], ws)).get)
    judged = judged_run(choice, run, comparisons[0])
ev = None
if judged is None:
    st.info("No validation yet: validate an INT8 build below, or every calibrator of a calibration side by side.",
            icon=":material/info:")
else:
    with shown_errors("Opening the validation"):
        ev, subject = judged_evaluation(judged, run_title(judged, ws))
    headline = ev.headline()
    verdict_banner(judge(headline, budget), subject=subject, warning=resolution_warning(headline, budget),
                   key="val")
    if not evaluation_tiles(ev, headline, run_id=judged.id):
        ev = None  # an embedding model's: the details below are the classifier's
    if judged is not run:
        st.caption("The recommended (or closest) calibrator of that comparison; its table, chart and report are under "
                   "“Calibrators side by side” below. Judge the validation run to see its details.")
        ev = None  # the details below are of a validation run

# -- calibrators side by side --------------------------------------------------------------------
st.divider()
st.subheader("Calibrators side by side")
st.caption("Build and validate every range set of one calibration run with the same placement and texts, judged "
           "against the release budget. " + default_calibrator_note())
last_outcome(page, "compare")
cal_run = pick_run(page, "calibrate", "Calibration run", key="cmp-cal", model_sha256=spec.sha256)
if cal_run is None:
    st.info("No calibration yet: calibrate on the Calibrate page first.", icon=":material/info:")
else:
    calibration_run = attempt(Calibration.load, cal_run.dir, what="Opening the calibration")
    methods_available = list(calibration_run.methods) if calibration_run is not None else []
    c1, c2, c3 = st.columns([3, 1, 1])
    methods = c1.multiselect("Range sets to compare", methods_available, default=methods_available, key="cmp-methods")
    placement = c2.selectbox("Placement", list(PRESETS), key="cmp-placement",
                             format_func=lambda p: PRESET_TITLES.get(p, p))
    cmp_limit = c3.number_input("Texts per calibrator (0 = all)", min_value=0, value=PAGE_COMPARE_SETTINGS.limit,
                                step=32, key="cmp-limit")
    cconfig = attempt(compare_config, ws, project, cal_run.dir, methods, placement, limit=int(cmp_limit),
                      budget=budget, what="Choosing the range sets")
    if cconfig is not None:
        run_button(page, "compare", "Validating every calibrator", f"Validate {len(methods)} calibrators side by side",
                   key="cmp-run", fn=compare_calibrators, config=cconfig, parents=(cal_run.id,),
                   icon=":material/compare:")
cmp_run = pick_run(page, "compare", "Comparison", key="cmp-pick", model_sha256=spec.sha256)
if cmp_run is not None:
    comparison = attempt(CalibratorComparison.load, cmp_run.dir, what="Opening the comparison")
    if comparison is not None:
        cbudget = comparison.budget
        rec = comparison.recommendation
        best = comparison.recommended
        verdict_banner(best.verdict, subject=rec.headline, key="cmp")
        (st.success if rec.passes else st.warning)(rec.sentence,
                                                  icon=":material/thumb_up:" if rec.passes else ":material/warning:")
        if rec.default_note:
            st.info(rec.default_note + ".", icon=":material/info:")
        st.dataframe(comparison_frame(comparison.entries), hide_index=True, width="stretch", key="cmp-table")
        left, _ = st.columns([3, 2])
        with left:
            st.altair_chart(comparison_chart(comparison.entries, cbudget), width="stretch")
        if cbudget != budget:
            st.caption(f"Judged with the budget of its time ({cbudget.describe()}); the project's is now "
                       f"{budget.describe()}.")
        st.caption(f"{comparison.placement} placement · {fmt.count(best.texts)} texts · run `{cmp_run.id}`")
        rconfig_cmp = comparison_report_config(comparison, project, budget)
        run_button(page, "report", "Writing the report", "Make the report of this comparison", key="cmp-report",
                   fn=make_report, config=rconfig_cmp, parents=(cmp_run.id,), icon=":material/description:",
                   button_type="secondary")
        cmp_reports = ws.children_of(cmp_run.id, "report")
        if cmp_reports:
            st.caption(f"Latest report of this comparison: `{cmp_reports[0].id}`")
            report_verdict(cmp_reports[0], key="cmp-rep")

# -- validate one build ---------------------------------------------------------------------------
st.divider()
st.subheader("Validate one INT8 build")
last_outcome(page, "build")  # a rebuild started below becomes the build to validate once it is done
build_run = pick_run(page, "build", "INT8 build", key="val-build", model_sha256=None)
if build_run is None:
    st.info("No INT8 build yet: build one on the Build page first.", icon=":material/info:")
    page_link("build", "Go to")
else:
    art = attempt(EngineArtifact.load, build_run.dir, what="Opening the build")
    if art is not None and (other := other_models_warning(art.model_sha256, spec.sha256, "build",
                                                          "validating it against the project's model will be refused")):
        st.warning(other, icon=":material/warning:")
    st.caption(f"Evaluation data: `{eval_spec.describe()}` (from the project)")
    c1, c2, c3, c4 = st.columns(4)
    first = PAGE_EVAL_SETTINGS
    limit = c1.number_input("Texts to evaluate (0 = all)", min_value=0, value=first.limit, step=32, key="val-limit")
    layers_on = c2.checkbox("Per-layer analysis", value=first.layers, key="val-layers")
    layer_texts = c3.number_input("Texts for the per-layer analysis", min_value=1, value=first.layer_rows, step=16,
                                 key="val-layer-rows", disabled=not layers_on)
    bootstrap = c4.number_input("Bootstrap resamples (confidence intervals)", min_value=0, value=first.bootstrap,
                                step=100, key="val-bootstrap")
    config = validate_config(ws, project, build_run, limit=int(limit), layers=bool(layers_on),
                             layer_rows=int(layer_texts), bootstrap=int(bootstrap))
    run_button(page, "validate", "Validating", "Validate", key="val-run", fn=validate, config=config,
               parents=(build_run.id,), run_label=build_run.label)

if ev is None:
    st.stop()
st.divider()
st.subheader("Details of the validation")
tab_buckets, tab_layers, tab_sens, tab_report = st.tabs(
    ["Per length bucket", "Per layer", "Sensitivity", "Report"])

with tab_buckets:
    frame = bucket_frame(ev.metrics.bucket_figures, ev.labelled)
    order = list(frame["bucket"])
    long, value_cols = bucket_measures_long(frame)
    st.altair_chart(bucket_measure_bars(long, order, value_cols).properties(height=300), width="stretch")
    few = frame["few"].tolist()
    styled = frame.drop(columns=["few"]).style.apply(
        lambda row: ["color: #9aa0a6; background-color: #f6f6f6" if few[row.name] else "" for _ in row], axis=1)
    st.dataframe(styled, hide_index=True, width="stretch", key="val-buckets",
                 column_config={**{c: st.column_config.NumberColumn(c, format="percent") for c in value_cols},
                                "drop (pts)": st.column_config.NumberColumn("drop (pts)", format="%+.2f")})
    st.caption(f"Greyed: buckets with fewer than {MIN_BUCKET_TEXTS} texts; their figures are noise. Drop and its 95 % "
               "interval: FP32 − INT8 in accuracy points.")

with tab_layers:
    layers = ev.layer_report
    if layers is None:
        st.info("This validation ran without the per-layer analysis.", icon=":material/info:")
    else:
        rows = layer_rows(layers)
        q = [t.row() for t in layers.quantized]
        threshold = layers.degraded_sqnr_db
        note = layer_note(layers, rows)
        if note.warning:
            st.warning(note.text, icon=":material/warning:")
        else:
            st.success(note.text, icon=":material/check_circle:")
        methods = layer_methods(rows)
        frame = layer_frame(q, methods)
        if not frame.empty:
            order = list(frame["name"])
            x = alt.X("name:N", sort=order, title=None, axis=alt.Axis(labelAngle=-60, labelLimit=220,
                                                                       labelOverlap=False, labelFontSize=9))
            line = alt.Chart(frame.dropna(subset=["SQNR (dB)"])).mark_line(point=True, color=method_colour("engine")).encode(
                x=x, y=alt.Y("SQNR (dB):Q", title="SQNR vs FP32 (dB)"),
                tooltip=["tensor", alt.Tooltip("SQNR (dB):Q", format=".1f"), alt.Tooltip("cosine:Q", format=".4f")])
            rule_df = pd.DataFrame({"y": [threshold], "label": [f"{threshold:g} dB: degraded below"]})
            rule = alt.Chart(rule_df).mark_rule(color="#e45756", strokeDash=[4, 4]).encode(y="y:Q")
            label = alt.Chart(rule_df).mark_text(align="left", dx=4, dy=-6, color="#e45756", x=0).encode(
                y="y:Q", text="label:N")
            st.altair_chart((line + rule + label).properties(height=340, title="SQNR per quantized tensor"),
                            width="stretch")
            clipped = clipped_long(frame, methods)
            if not clipped.empty:
                chart = alt.Chart(clipped).mark_line(point=True).encode(
                    x=x, y=alt.Y("clipped:Q", title="share of |x| above amax",
                                 scale=alt.Scale(type="symlog", constant=1e-5), axis=alt.Axis(format=".1e")),
                    color=method_color(methods),
                    tooltip=["tensor", "method", alt.Tooltip("clipped:Q", format=".2e")])
                st.altair_chart(chart.properties(height=300, title="Clipped share per calibrator (evaluation texts)"),
                                width="stretch")
            st.caption("Worst SQNR first. Clipped: share of |x| above each calibrator's amax on the evaluation texts. "
                       + ("entropy ÷ minmax: how much smaller the entropy range is (1 = the same)."
                          if "entropy ÷ minmax" in frame else ""))
            st.dataframe(worst_first(frame), hide_index=True, width="stretch",
                         height=320, column_config={
                             **{f"clipped {m}": st.column_config.NumberColumn(f"clipped {m}", format="%.2e")
                                for m in methods},
                             "SQNR (dB)": st.column_config.NumberColumn("SQNR (dB)", format="%.1f"),
                             "local SQNR (dB)": st.column_config.NumberColumn("local SQNR (dB)", format="%.1f"),
                             "cosine": st.column_config.NumberColumn("cosine", format="%.4f"),
                             "entropy ÷ minmax": st.column_config.NumberColumn("entropy ÷ minmax", format="%.3f")})

with tab_sens:
    st.markdown("Rank the quantized layers by the loss they cause and search the fewest to keep in float "
                "so that INT8 stays within the budget.")
    src_run = ws.parent_of(run, "build")
    if src_run is None:
        st.info("The build of this validation is not in the workspace; sensitivity needs it.", icon=":material/info:")
    else:
        start_fields = attempt(lambda: search_start(EngineArtifact.load(src_run.dir)), what="Opening the build")
        c1, c2, c3, c4 = st.columns(4)
        # the search aims at the project's release budget (editable here for one search)
        start = search_budget_start(budget)
        max_drop = c1.number_input("Max accuracy drop (points)", min_value=0.0, step=0.1, key="sens-drop",
                                   value=start["max_drop"])
        min_agree = c2.number_input("Min top-1 agreement", min_value=0.0, max_value=1.0, step=0.005,
                                    value=start["min_agreement"], format="%.3f", key="sens-agree")
        max_evals = c3.number_input("Max evaluations", min_value=2, value=SEARCH_EVALUATIONS, step=2, key="sens-budget")
        s_limit = c4.number_input("Texts per evaluation", min_value=8, value=SEARCH_SETTINGS.limit, step=32, key="sens-limit")
        c1, c2, c3 = st.columns(3)
        granularity = c1.selectbox("Granularity", list(GRANULARITIES), key="sens-gran",
                                   format_func=lambda g: GRANULARITY_DESCRIPTIONS.get(g, g))
        ranking = c2.selectbox("Ranking", list(RANKINGS), key="sens-rank")
        min_cos = c3.number_input("Min embedding cosine (0 = no check)", min_value=0.0, max_value=1.0,
                                  value=start["min_embedding_cosine"], step=0.001, format="%.3f", key="sens-cos", disabled=spec.embedding_output is None)
        if start_fields is not None:  # else the build could not be opened (shown above)
            sconfig = sensitivity_config(ws, project, start_fields, granularity=granularity, ranking=ranking,
                                         budget=search_budget(max_drop, min_agree, min_cos),
                                         max_evaluations=int(max_evals), limit=int(s_limit))
            run_button(page, "sensitivity", "Sensitivity analysis", "Find the layers to keep in float", key="sens-run",
                       fn=analyze_sensitivity, config=sconfig, parents=(src_run.id, run.id), icon=":material/search:")
    srun = pick_run(page, "sensitivity", "Sensitivity run", key="sens-pick")
    if srun is not None:
        with shown_errors("Opening the sensitivity analysis"):
            sens = SensitivityResult.load(srun.dir)
        rec = sens.recommended
        (st.success if rec.passes else st.warning)(rec.note, icon=":material/check_circle:" if rec.passes
                                                   else ":material/warning:")
        c = st.columns(4)
        c[0].metric("Recommended exclusions", len(rec.exclude_nodes))
        c[1].metric("Evaluations used", f"{sens.evaluations_used} / {sens.max_evaluations}")
        if rec.top1_agreement is not None:
            gain = agreement_gain_points(sens)
            c[2].metric("Agreement with them", fmt.percent(rec.top1_agreement),
                        delta=None if gain is None else fmt.points(gain))
        if rec.accuracy_drop_points is not None:
            c[3].metric("Accuracy drop with them", fmt.points(rec.accuracy_drop_points))
        st.markdown(f"**Ranking** ({sens.ranking_method})")
        st.dataframe(ranking_frame(sens), hide_index=True, width="stretch", height=260)
        if rec.exclude_nodes:
            st.code("\n".join(rec.exclude_nodes), language=None)
            prun = ws.parent_of(srun, "build")
            if prun is not None:
                active = job_section(page, "build", "Rebuilding")
                if active is None and st.button("Rebuild with these exclusions", type="primary", key="sens-rebuild",
                                                icon=":material/construction:"):
                    rid = submit(page, "build", build, **rebuild_request(prun, srun, rec.exclude_nodes))
                    st.toast(f"Rebuilding as {rid}; validate it above when it is done.", icon=":material/construction:")
                    st.rerun()

with tab_report:
    st.markdown("A report gathers this validation (and optionally others to compare and a sensitivity "
                "analysis) into HTML, Markdown and JSON.")
    others, sens_runs = report_choices(ws, run, spec.sha256)
    compare = st.multiselect("Compare with", [r.id for r in others], key="rep-compare")
    sens_pick = st.selectbox("Sensitivity analysis to include", [None] + [r.id for r in sens_runs], key="rep-sens",
                             format_func=lambda v: "(none)" if v is None else v)
    title = st.text_input("Title", value=report_title(project), key="rep-title")
    rconfig = report_config(ws, run, compare, sens_pick, title=title, budget=budget)
    st.caption(f"The report's verdict uses the project's release budget: {budget.describe()}.")
    run_button(page, "report", "Writing the report", "Make the report", key="rep-run", fn=make_report, config=rconfig,
               parents=report_parents(run, compare, sens_pick), icon=":material/description:")
    rep_run = pick_run(page, "report", "Report", key="rep-pick")
    if rep_run is not None:
        report_verdict(rep_run, key="val-rep")
        page_link("runs", "Open it on")
