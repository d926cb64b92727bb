"""Runs & reports: the run registry's history, runs side by side, and the reports to open or download."""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

import pandas as pd
import streamlit as st
from lib.context import STAGE_TITLES
from lib.runs import comparison_frame, flatten, history_frame
from lib.ui import age, download_file, start_page

page = start_page("Runs & reports", ":material/history:",
                  "Every run is recorded in the workspace registry with its parameters, status and files "
                  "(sha256). Compare runs side by side and open or download their reports.")
ws = page.ws

REPORT_FILES = (("report.html", "text/html"), ("report.md", "text/markdown"), ("report.json", "application/json"))

tab_history, tab_compare, tab_reports = st.tabs(["History", "Compare", "Reports"])

with tab_history:
    c1, c2, c3 = st.columns([2, 2, 1])
    stages = c1.multiselect("Stages", list(STAGE_TITLES), default=[], key="runs-stages",
                            format_func=lambda s: STAGE_TITLES[s], placeholder="All stages")
    statuses = c2.multiselect("Status", ["running", "finished", "failed", "interrupted"], default=[],
                              key="runs-status", placeholder="Any status")
    everyone = c3.toggle("All sessions", value=True, key="runs-all",
                         help="Off: only the runs started from this browser session.")
    runs = ws.list_runs(session=None if everyone else page.session, limit=1000)
    runs = [r for r in runs if (not stages or r.stage in stages) and (not statuses or r.status in statuses)]
    if not runs:
        st.info("No runs yet. Start with the Calibration set page.", icon=":material/info:")
    else:
        frame = history_frame(runs, page.session)
        st.dataframe(frame, hide_index=True, width="stretch", height=min(600, 38 + 35 * len(frame)),
                     column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0,
                                                                                 max_value=1, format="percent")})
        ids = [r.id for r in runs]
        chosen = st.selectbox("Run details", ids, key="runs-detail", index=0)
        run = ws.get_run(chosen)
        left, right = st.columns(2)
        with left:
            st.markdown(f"**{STAGE_TITLES.get(run.stage, run.stage)}** `{run.id}` · {run.status} · "
                        f"started {age(run.created_at)}" + (f" · session `{run.session}`" if run.session else ""))
            if run.error:
                st.error(run.error, icon=":material/error:")
            if run.parents:
                st.caption("Made from: " + ", ".join(f"`{p}`" for p in run.parents))
            st.markdown("Parameters")
            st.json(run.params, expanded=False)
            if run.summary:
                st.markdown("Summary")
                st.dataframe(pd.DataFrame([{"key": k, "value": str(v)} for k, v in flatten(run.summary).items()]),
                             hide_index=True, width="stretch")
        with right:
            if run.artifacts:
                bad = set(ws.verify(run.id)) if run.status == "finished" else set()
                st.markdown(f"Files ({len(run.artifacts)}){' · ' + str(len(bad)) + ' changed since the run' if bad else ''}")
                st.dataframe(pd.DataFrame([{"file": a.path, "bytes": a.bytes, "sha256": a.sha256[:16] + "…",
                                            "intact": a.path not in bad} for a in run.artifacts]),
                             hide_index=True, width="stretch")
                names = [a.path for a in run.artifacts]
                pick = st.selectbox("Download a file of this run", names, key="runs-file")
                download_file(f"Download {pick}", run.dir / pick, key="runs-file-dl")
            elif run.status == "finished":
                st.caption("This run wrote no files.")

with tab_compare:
    everyone_c = st.toggle("All sessions", value=True, key="compare-all")
    candidates = [r for r in ws.list_runs(session=None if everyone_c else page.session, limit=1000)
                  if r.status == "finished"]
    stage_options = sorted({r.stage for r in candidates}, key=lambda s: list(STAGE_TITLES).index(s)
                           if s in STAGE_TITLES else 99)
    if not stage_options:
        st.info("No finished runs to compare yet.", icon=":material/info:")
    else:
        default_stage = "validate" if "validate" in stage_options else stage_options[0]
        stage = st.selectbox("Stage", stage_options, index=stage_options.index(default_stage), key="compare-stage",
                             format_func=lambda s: STAGE_TITLES.get(s, s))
        same = [r for r in candidates if r.stage == stage]
        picked = st.multiselect("Runs", [r.id for r in same], default=[r.id for r in same[:2]], key="compare-runs")
        if len(picked) >= 1:
            chosen_runs = [r for r in same if r.id in picked]
            only_diff = st.checkbox("Only rows that differ", value=len(chosen_runs) > 1, key="compare-diff")
            st.dataframe(comparison_frame(chosen_runs, only_differences=only_diff), width="stretch")

with tab_reports:
    reports = [r for r in ws.list_runs(stage="report", status="finished", limit=500) if r.dir.is_dir()]
    if not reports:
        st.info("No report yet: validate an INT8 build on the Validate page, then make its report there.",
                icon=":material/info:")
    else:
        mine = [r for r in reports if r.session == page.session] or reports
        ids = [r.id for r in reports]
        rid = st.selectbox("Report", ids, index=ids.index(mine[0].id), key="report-pick",
                           format_func=lambda i: f"{i}" + (" (this session)" if ws.get_run(i).session == page.session
                                                           else ""))
        run = next(r for r in reports if r.id == rid)
        cols = st.columns(len(REPORT_FILES))
        for col, (name, mime) in zip(cols, REPORT_FILES):
            with col:
                download_file(f"Download {name}", run.dir / name, mime=mime, key=f"report-dl-{name}",
                              file_name=f"{run.id}-{name}")
        html = run.dir / "report.html"
        if html.is_file():
            st.iframe(html, alt=f"Report {run.id}")
        elif (run.dir / "report.md").is_file():
            st.markdown((run.dir / "report.md").read_text(encoding="utf-8"))
