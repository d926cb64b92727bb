"""calib workbench: INT8 calibration and accuracy validation for transformer text models.

Run from the repository root:  streamlit run app/Home.py
(.streamlit/config.toml binds the server to localhost; $CALIB_WORKSPACE picks the workspace.)
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

import streamlit as st
from lib.context import STAGE_TITLES
from lib.pages import APP_PAGES
from lib.project import demo_ready, project_model_sha256, release_budget
from lib.runs import home_verdict_run, judged_evaluation
from lib.ui import age, current_run_id, page_link, run_label, run_title, start_page
from lib.verdict_view import verdict_banner

from calib.errors import CalibError
from calib.verdict import judge, resolution_warning

page = start_page(title="calib workbench", icon=":material/tune:",
                  intro="INT8 calibration and accuracy validation for transformer text models that ship on "
                  "NVIDIA TensorRT. Each step below saves a run in the workspace; every run can be "
                  "reopened, compared and downloaded later.")

if page.project.kind == "demo" and not demo_ready(page.ws, page.project.task):
    st.info(f"The demo task **{page.project.task}** is not prepared in this workspace yet. "
            "Open **Project** to prepare it (a few minutes, all offline).", icon=":material/info:")

st.subheader("Ship or not")
last = home_verdict_run(page.ws, project_model_sha256(page.ws, page.project), current_run_id(page, "validate"))
if last is None:
    st.caption("No validation yet: the verdict against the release budget appears here once an INT8 build is "
               "validated.")
else:
    try:
        ev, subject = judged_evaluation(last, run_title(last, page.ws))
    except (CalibError, OSError, KeyError) as exc:
        st.caption(f"The latest validation cannot be read: {exc}")
    else:
        budget = release_budget(page.ws, page.project)
        headline = ev.headline()
        verdict_banner(judge(headline, budget), subject=subject,
                       warning=resolution_warning(headline, budget), key="home")
        page_link("validate", "Open it on")

st.subheader("Workflow")
for step in APP_PAGES.values():
    stage = step.stage
    with st.container(border=True):
        left, right = st.columns([3, 2])
        with left:
            st.page_link(step.path, label=f"**{step.title}**", icon=step.icon)
            st.caption(step.step)
        if stage:
            runs = page.ws.list_runs(stage=stage, session=page.session, limit=1)
            with right:
                if runs:
                    run = runs[0]
                    st.markdown(f"Last {STAGE_TITLES[stage].lower()} run: {run_label(run, page.ws)} · "
                                f"**{run.status}** · {age(run.created_at)}")
                else:
                    st.caption("No run in this session yet.")

st.caption("Runs started in this browser session are tagged with its id (see the sidebar); the "
           "history page can show the runs of every session.")
