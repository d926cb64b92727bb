"""Runs & reports: the run registry's history, runs side by side, and the reports to open or download."""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

import altair as alt
import pandas as pd
import streamlit as st
from lib.context import STAGE_TITLES, attempt, shown_errors
from lib.runs import (
    BUCKET_MEASURES,
    FILTERABLE_STATUSES,
    all_tags,
    baseline_deltas,
    changed_files,
    compare_defaults,
    comparison_frame,
    files_frame,
    filter_runs,
    history_column_config,
    history_frame,
    layer_overlay_frame,
    loaded_evaluations,
    overlay_frame,
    parse_tags,
    report_runs,
    report_to_show,
    report_view,
    stages_present,
    summary_frame,
)
from lib.ui import age, download_file, start_page

from calib.layers import DEGRADED_SQNR_DB
from calib.naming import registry_lookup, run_name
from calib.report import REPORT_FILES

RUN_COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#9d755d"]

page = start_page("runs")
ws = page.ws
lookup = registry_lookup(ws)


def overlay_section(chosen_runs) -> None:
    """The same charts for every chosen validation, overlaid, with a pinned baseline and deltas to it."""
    evaluations = loaded_evaluations(chosen_runs, lookup)
    if not evaluations:
        return
    names = list(evaluations)
    baseline = st.selectbox("Pinned baseline", names, key="compare-baseline",
                            help="Drawn dashed in black; the table gives every other run's difference to it.")
    st.dataframe(baseline_deltas(evaluations, baseline), hide_index=True, width="stretch")
    measure = st.radio("Per length bucket", list(BUCKET_MEASURES), horizontal=True, key="compare-measure",
                       format_func=BUCKET_MEASURES.get)
    frame = overlay_frame(evaluations, measure)
    if not frame.empty:
        order = list(dict.fromkeys(frame["bucket"]))
        others = [n for n in names if n != baseline]
        colour = alt.Color("run:N", title=None, sort=names,
                           scale=alt.Scale(domain=[baseline, *others], range=["#222222", *RUN_COLOURS]))
        base = alt.Chart(frame).encode(
            x=alt.X("bucket:N", sort=order, title="length bucket (tokens)",
                    axis=alt.Axis(labelAngle=0, labelOverlap=False)),
            y=alt.Y("value:Q", title=measure, scale=alt.Scale(zero=measure == "drop")), color=colour,
            strokeDash=alt.condition(alt.datum.run == baseline, alt.value([6, 4]), alt.value([1, 0])),
            tooltip=["run", "bucket", "texts", alt.Tooltip("value:Q", format=".4f")])
        st.altair_chart((base.mark_line(point=True)).properties(height=280), width="stretch")
    layers = layer_overlay_frame(evaluations)
    if not layers.empty:
        chart = alt.Chart(layers).mark_line(point=alt.OverlayMarkDef(size=20)).encode(
            x=alt.X("#:Q", title="quantized tensor (network order)"), y=alt.Y("SQNR (dB):Q"),
            color=alt.Color("run:N", title=None, sort=names,
                            scale=alt.Scale(domain=[baseline, *[n for n in names if n != baseline]],
                                            range=["#222222", *RUN_COLOURS])),
            strokeDash=alt.condition(alt.datum.run == baseline, alt.value([6, 4]), alt.value([1, 0])),
            tooltip=["run", "tensor", alt.Tooltip("SQNR (dB):Q", format=".1f")])
        rule = alt.Chart(pd.DataFrame({"y": [DEGRADED_SQNR_DB]})).mark_rule(color="#e45756", strokeDash=[4, 3]).encode(
            y="y:Q")
        st.altair_chart((chart + rule).properties(height=280, title=f"SQNR per quantized tensor ({DEGRADED_SQNR_DB:g} dB: "
                                                                     "degraded below)"),
                        width="stretch")


tab_history, tab_compare, tab_reports = st.tabs(["History", "Compare", "Reports"])

with tab_history:
    c1, c2, c3 = st.columns([2, 2, 1])
    stages = c1.multiselect("Stages", list(STAGE_TITLES), default=[], key="runs-stages",
                            format_func=lambda s: STAGE_TITLES[s], placeholder="All stages")
    statuses = c2.multiselect("Status", list(FILTERABLE_STATUSES), default=[],
                              key="runs-status", placeholder="Any status")
    everyone = c3.toggle("All sessions", value=True, key="runs-all",
                         help="Off: only the runs started from this browser session.")
    runs = ws.list_runs(session=None if everyone else page.session, limit=1000)
    runs = filter_runs(runs, stages=stages, statuses=statuses)
    if not runs:
        st.info("No runs yet. Start with the Calibration set page.", icon=":material/info:")
    else:
        all_notes = attempt(ws.notes, what="Reading the notes") or {}
        tag_filter = st.multiselect("Tags", all_tags(all_notes),
                                    key="runs-tags", placeholder="Any tag")
        runs = filter_runs(runs, tags=tag_filter, notes=all_notes)
        frame = history_frame(runs, page.session, lookup, all_notes)
        st.dataframe(frame, hide_index=True, width="stretch", height=min(600, 38 + 35 * len(frame)),
                     column_config=history_column_config(st))
        st.caption("Click a column header to sort (drop, agreement, cosine, KS…); names say what each run is, "
                   "the id is in the last column.")
        ids = [r.id for r in runs]
        names = {r.id: run_name(r, lookup) for r in runs}
        chosen = st.selectbox("Run details", ids, key="runs-detail", index=0, format_func=names.__getitem__)
        run = ws.get_run(chosen)
        left, right = st.columns(2)
        with left:
            st.markdown(f"**{STAGE_TITLES.get(run.stage, run.stage)}** `{run.id}` · {run.status} · "
                        f"started {age(run.created_at)}" + (f" · session `{run.session}`" if run.session else ""))
            if run.error:
                st.error(run.error, icon=":material/error:")
            if run.parents:
                st.caption("Made from: " + ", ".join(f"`{p}`" for p in run.parents))
            note, tags = all_notes.get(run.id, ("", ()))
            with st.form(key=f"notes-{run.id}", border=True):
                new_note = st.text_area("Note", value=note, key=f"runs-note-{run.id}", height=80,
                                        placeholder="What this run is for, what you concluded…")
                new_tags = st.text_input("Tags (comma-separated)", value=", ".join(tags), key=f"runs-tags-{run.id}",
                                         placeholder="release-candidate, rejected, …")
                if st.form_submit_button("Save note and tags", icon=":material/save:"):
                    with shown_errors("Saving the note"):
                        ws.set_notes(run.id, new_note, parse_tags(new_tags))
                    st.rerun()
            st.markdown("Parameters")
            st.json(run.params, expanded=False)
            if run.summary:
                st.markdown("Summary")
                st.dataframe(summary_frame(run), hide_index=True, width="stretch")
        with right:
            if run.artifacts:
                bad = changed_files(ws, run)
                st.markdown(f"Files ({len(run.artifacts)}){' · ' + str(len(bad)) + ' changed since the run' if bad else ''}")
                st.dataframe(files_frame(run, bad), hide_index=True, width="stretch")
                names = [a.path for a in run.artifacts]
                pick = st.selectbox("Download a file of this run", names, key="runs-file")
                download_file(f"Download {pick}", run.dir / pick, key="runs-file-dl")
            elif run.status == "finished":
                st.caption("This run wrote no files.")

with tab_compare:
    everyone_c = st.toggle("All sessions", value=True, key="compare-all")
    candidates = filter_runs(ws.list_runs(session=None if everyone_c else page.session, limit=1000),
                             statuses=("finished",))
    first = compare_defaults(candidates)
    if first is None:
        st.info("No finished runs to compare yet.", icon=":material/info:")
    else:
        stage_options = stages_present(candidates)
        stage = st.selectbox("Stage", stage_options, index=stage_options.index(first[0]), key="compare-stage",
                             format_func=lambda s: STAGE_TITLES.get(s, s))
        same = filter_runs(candidates, stages=(stage,))
        cnames = {r.id: run_name(r, lookup) for r in same}
        picked = st.multiselect("Runs", [r.id for r in same], default=compare_defaults(same)[1], key="compare-runs",
                                format_func=cnames.__getitem__)
        if len(picked) >= 1:
            chosen_runs = [r for r in same if r.id in picked]
            if stage == "validate":
                overlay_section(chosen_runs)
            only_diff = st.checkbox("Only rows that differ", value=len(chosen_runs) > 1, key="compare-diff")
            st.dataframe(comparison_frame(chosen_runs, only_differences=only_diff), width="stretch")

with tab_reports:
    reports = report_runs(ws)
    if not reports:
        st.info("No report yet: validate an INT8 build on the Validate page, then make its report there.",
                icon=":material/info:")
    else:
        ids = [r.id for r in reports]
        rnames = {r.id: run_name(r, lookup) + (" · this session" if r.session == page.session else "")
                  for r in reports}
        rid = st.selectbox("Report", ids, index=ids.index(report_to_show(reports, page.session).id), key="report-pick", format_func=rnames.__getitem__)
        run = next(r for r in reports if r.id == rid)
        cols = st.columns(len(REPORT_FILES))
        for col, (name, mime) in zip(cols, REPORT_FILES):
            with col:
                download_file(f"Download {name}", run.dir / name, mime=mime, key=f"report-dl-{name}",
                              file_name=f"{run.id}-{name}")
        view = report_view(run)
        if view is not None and view[0] == "html":
            st.iframe(view[1], alt=f"Report {run.id}")
        elif view is not None:
            st.markdown(view[1].read_text(encoding="utf-8"))
