"""Calibration set: choose texts whose token lengths cover what the model will see, and check it."""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

import pandas as pd
import streamlit as st
from lib import uploads
from lib.charts import bucket_bars, length_facts, length_histogram
from lib.context import attempt, show_error, shown_errors
from lib.project import data_spec, model_spec
from lib.runs import other_models_warning
from lib.stages import (
    DEFAULT_BUCKET_WEIGHT,
    assemble_values,
    calibset_defaults,
    calibset_form_values,
    dataset_lengths,
    eval_target,
    length_series,
    lengths_source,
    list_recipes,
    project_inputs,
    recipe_data_note,
    recipe_name,
    recipe_path,
    recipe_widget_values,
    save_project_recipe,
    target_fields,
    target_lengths_of,
    target_options,
)
from lib.ui import download_file, open_picked_run, run_button, start_page

from calib.buckets import bucket_labels, parse_edges
from calib.calibset import TARGET_TITLES, CalibrationSet, assemble, config_from_dict
from calib.coverage import TABLE_HEADERS
from calib.errors import InputError
from calib.inputs import load_recipe
from calib.pipeline import config_params
from calib.sampling import (
    SHORTFALL_DESCRIPTIONS,
    SHORTFALL_MODES,
    STRATEGIES,
    STRATEGY_DESCRIPTIONS,
    WEIGHTED_STRATEGIES,
)

page = start_page("calibset")
ws, project = page.ws, page.project

with shown_errors("Reading the project"):
    spec = model_spec(ws, project)
    base = project_inputs(ws, project, "pool")
    pool_spec = data_spec(ws, project, "pool")
    eval_fields = eval_target(ws, project)

# -- recipe loading: fills the widgets below -----------------------------------------------------
with st.expander("Load a saved recipe", icon=":material/upload_file:"):
    recipes = list_recipes(ws)
    c1, c2 = st.columns([3, 2])
    choice = c1.selectbox("Recipe", [str(p) for p in recipes], index=None, key="cs-recipe-pick",
                          placeholder="saved in the workspace or shipped in datasets/recipes",
                          format_func=lambda p: Path(p).name)
    up = c2.file_uploader(f"…or upload one ({uploads.extensions_text(uploads.RECIPE)})",
                          type=uploads.widget_types(uploads.RECIPE), key="cs-recipe-upload",
                          max_upload_size=uploads.widget_limit_mb(uploads.RECIPE))
    if st.button("Apply the recipe", key="cs-recipe-apply", disabled=not (choice or up)):
        try:
            path = Path(choice) if choice else uploads.store_upload(
                ws, page.session, uploads.RECIPE, up.name, up)
            cfg = load_recipe(path, workspace=ws.root)
            note = recipe_data_note(cfg, base["data"])
            if note:
                st.warning(note, icon=":material/warning:")
            st.session_state.update(recipe_widget_values(cfg))
            st.toast(f"Recipe {path.name} applied", icon=":material/check_circle:")
        except Exception as exc:  # noqa: BLE001
            show_error(exc, "Loading the recipe")

# -- target and lengths --------------------------------------------------------------------------
st.subheader("Lengths: pool vs target")
offered = target_options(eval_fields)
if st.session_state.get("cs-target") not in offered:
    st.session_state["cs-target"] = offered[0]
target = st.radio("Target distribution (what the calibration set should look like)", offered,
                  format_func=TARGET_TITLES.get, horizontal=True, key="cs-target")
lengths_path = None
with shown_errors("Counting tokens"):
    pool_lengths = dataset_lengths(ws, project, pool_spec)
    if target == "lengths":
        c1, c2 = st.columns(2)
        up = c1.file_uploader(f"Production lengths ({uploads.extensions_text(uploads.LENGTHS)}: lengths, "
                              "length,count or start,end,count)", type=uploads.widget_types(uploads.LENGTHS),
                              key="cs-lengths-upload",
                              max_upload_size=uploads.widget_limit_mb(uploads.LENGTHS))
        typed = c2.text_input("…or a path on the server", key="cs-lengths-path")
        stored = uploads.store_upload(ws, page.session, uploads.LENGTHS, up.name, up) if up is not None else None
        lengths_path = lengths_source(stored, typed)
        if lengths_path is None:
            st.info("Upload a file of production token lengths to compare against.", icon=":material/info:")
            st.stop()
    target_lengths = target_lengths_of(ws, project, target, pool_lengths, lengths_path)

series = length_series(pool_lengths, target, target_lengths)
st.altair_chart(length_histogram(series, spec.max_length), width="stretch")
st.dataframe(length_facts(series, spec.max_length), hide_index=True, width="stretch")

# -- strategy ------------------------------------------------------------------------------------
st.subheader("Strategy")
defaults = calibset_defaults(target, len(pool_lengths), bool(pool_spec.label_column))
# widgets take their values from the session state (a loaded recipe sets them too)
st.session_state.update(calibset_form_values(st.session_state, defaults))
c1, c2, c3, c4 = st.columns(4)
strategy = c1.selectbox("Strategy", list(STRATEGIES), key="cs-strategy",
                        format_func=lambda s: f"{s} — {STRATEGY_DESCRIPTIONS[s]}")
size = c2.number_input("Size (texts)", min_value=1, max_value=100_000, step=16, key="cs-size")
seed = c3.number_input("Seed", min_value=0, step=1, key="cs-seed")
edges_text = c4.text_input("Bucket edges (tokens)", key="cs-edges")
try:
    edges = parse_edges(edges_text)
except InputError as exc:
    st.error(str(exc), icon=":material/error:")
    st.stop()
c1, c2, c3 = st.columns(3)
stratify = c1.checkbox("Stratify by label", key="cs-stratify", disabled=not pool_spec.label_column,
                       help="Keep the label shares of the target (or of the pool) first.")
shortfall = c2.selectbox("When a bucket is short", list(SHORTFALL_MODES), key="cs-shortfall",
                         format_func=SHORTFALL_DESCRIPTIONS.get)
opt_pct = c3.number_input("Length percentile for the TensorRT 'opt' shape", min_value=1.0, max_value=100.0,
                          step=1.0, key="cs-opt-pct")
weights: tuple[float, ...] = ()
if strategy in WEIGHTED_STRATEGIES:
    st.caption("Weight per length bucket (relative; 0 leaves a bucket out)")
    cols = st.columns(len(edges))
    for i in range(len(edges)):
        st.session_state.setdefault(f"cs-weight-{i}", DEFAULT_BUCKET_WEIGHT)
    weights = tuple(float(col.number_input(label, min_value=0.0, step=0.5, key=f"cs-weight-{i}"))
                    for i, (col, label) in enumerate(zip(cols, bucket_labels(edges))))

config_values = assemble_values(base, target_fields(target, eval_fields, lengths_path), size=size, strategy=strategy,
                                seed=seed, edges=edges, weights=weights, stratify=stratify, shortfall=shortfall,
                                opt_percentile=opt_pct)
config = attempt(config_from_dict, config_values, what="Checking the settings")
if config is None:
    st.stop()

run_button(page, "calibset", "Assembling the calibration set", "Assemble the calibration set", key="cs-assemble",
           fn=assemble, config=config)  # the run is named by what it is (strategy · size · time)

# -- result --------------------------------------------------------------------------------------
st.divider()
st.subheader("Calibration set")
run, cs = open_picked_run(page, "calibset", "Calibration set run", CalibrationSet.load, key="cs-run",
                          empty="No calibration set yet: choose a strategy and assemble one.",
                          what="Opening the calibration set")
cov = cs.coverage
if other := other_models_warning(cs.model_sha256, spec.sha256, "calibration set",
                                 "the next pages will refuse to combine them"):
    st.warning(other, icon=":material/warning:")
m = st.columns(6)
m[0].metric("Texts", cs.size)
m[1].metric("Strategy", cs.strategy)
m[2].metric("KS distance", f"{cov.ks:.3f}", help="Kolmogorov–Smirnov statistic vs the target (0 = same).")
m[3].metric("Wasserstein", f"{cov.wasserstein:.1f} tok")
m[4].metric("Longest covered", f"{cov.longest_covered} tok")
m[5].metric("Warnings", len(cov.warnings))
for warning in cov.warnings:
    st.warning(warning, icon=":material/warning:")
for note in cs.notes:
    st.info(note, icon=":material/info:")

left, right = st.columns([3, 2])
with left:
    run_series = length_series(pool_lengths, target, target_lengths, calibration_set=cs,
                               project_source=base["data"].source)
    st.altair_chart(length_histogram(run_series, cs.max_length), width="stretch")
with right:
    st.altair_chart(bucket_bars(cov.buckets, {"calibration set": cov.calib_shares, "target": cov.target_shares},
                                title=f"per bucket, vs {cov.target_name}"), width="stretch")
st.markdown("**Coverage by length bucket**")
st.dataframe(pd.DataFrame(cov.table_rows(), columns=list(TABLE_HEADERS)), hide_index=True, width="stretch")
if cov.label_names:
    st.markdown("**Labels**")
    st.dataframe(pd.DataFrame(cov.label_rows(), columns=["label", "calibration", "calib %", "target", "target %"]),
                 hide_index=True, width="stretch")

st.markdown("**Derived TensorRT optimisation profile**")
shapes = pd.DataFrame([{"shape": k, "batch": b, "sequence": t} for k, (b, t) in cs.profile_shapes.items()])
c1, c2 = st.columns([1, 2])
c1.dataframe(shapes, hide_index=True, width="stretch")
c2.code(" \\\n  ".join(cs.trtexec_flags), language="bash")

st.markdown("**Recipe**")
c1, c2 = st.columns([2, 1])
name = c1.text_input("Recipe name", value=recipe_name(project, cs.strategy, cs.size), key="cs-recipe-name")
recipe_file = recipe_path(ws, name)
with c2:
    st.write("")
    if st.button("Save as recipe", key="cs-recipe-save", icon=":material/save:"):
        try:
            save_project_recipe(project, cs, recipe_file, description=f"{cs.strategy}, {cs.size} texts, from run {run.id}")
            st.toast(f"Saved {recipe_file}", icon=":material/check_circle:")
        except Exception as exc:  # noqa: BLE001
            show_error(exc, "Saving the recipe")
if recipe_file.is_file():
    st.caption(f"Saved as `{recipe_file}`")
    download_file("Download the recipe", recipe_file, mime="application/json", key="cs-recipe-dl")
download_file("Download manifest.json", run.dir / "manifest.json", mime="application/json", key="cs-manifest-dl",
              file_name=f"{run.id}-manifest.json")
with st.expander("Settings of this run"):
    st.json(config_params(cs.config), expanded=False)
