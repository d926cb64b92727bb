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
from lib.project import demo_ready, project_model_sha256, release_budget
from lib.runs import home_verdict_run, judged_evaluation
from lib.ui import age, current_run_id, run_label, run_title, start_page
from lib.verdict_view import verdict_banner

from calib.errors import CalibError
from calib.methods import method_names
from calib.verdict import judge, resolution_warning

page = start_page("calib workbench", ":material/tune:",
                  "INT8 calibration and accuracy validation for transformer text models that ship on "
                  "NVIDIA TensorRT. Each step below saves a run in the workspace; every run can be "
                  "reopened, compared and downloaded later.")

STEPS = [  # page, title, icon, what it does, the stage whose last run it shows (None: no run of its own)
    ("pages/1_Project.py", "Project", ":material/folder_open:",
     "Pick the demo task or bring your own ONNX model, tokenizer and data.", None),
    ("pages/2_Calibration_set.py", "Calibration set", ":material/bar_chart:",
     "Choose calibration texts whose lengths match what the model will see; check coverage.", "calibset"),
    ("pages/3_Calibrate.py", "Calibrate", ":material/straighten:",
     f"One pass over the calibration set gives the ranges of every calibrator ({', '.join(method_names())}).",
     "calibrate"),
    ("pages/4_Build.py", "Build", ":material/construction:",
     "Place Q/DQ, build the INT8 model, get the TensorRT commands.", "build"),
    ("pages/5_Validate.py", "Validate", ":material/fact_check:",
     "Compare INT8 against FP32: accuracy, agreement, per length bucket, per layer; find sensitive layers.",
     "validate"),
    ("pages/6_Runs_and_reports.py", "Runs & reports", ":material/history:",
     "History, side-by-side comparison and reports.", "report"),
]

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
        st.page_link("pages/5_Validate.py", label="Open it on Validate", icon=":material/fact_check:")

st.subheader("Workflow")
for path, title, icon, text, stage in STEPS:
    with st.container(border=True):
        left, right = st.columns([3, 2])
        with left:
            st.page_link(path, label=f"**{title}**", icon=icon)
            st.caption(text)
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
