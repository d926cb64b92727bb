"""Calibrate: one statistics pass over the calibration set gives every calibrator's ranges."""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

import altair as alt
import streamlit as st
from lib.calibrator_view import calibrator_params
from lib.charts import (
    amax_long,
    histogram_bars,
    method_color,
    range_columns,
    range_frame,
    threshold_frame,
    widest_tensor,
)
from lib.context import attempt, shown_errors
from lib.project import model_spec
from lib.stages import calibrate_config, calibration_notes
from lib.ui import download_file, page_link, pick_run, run_button, start_page

from calib import formatting as fmt
from calib.calibrate import CalibrateConfig, Calibration, calibrate
from calib.calibset import CalibrationSet
from calib.methods import default_methods, method_names
from calib.pipeline import config_defaults
from calib.placement import PRESET_TITLES, PRESETS
from calib.stats import HISTOGRAM_MODES, TENSOR_SCOPE_DESCRIPTIONS, TENSOR_SCOPES
from calib.trtcache import DEFAULT_TRT_VERSION

page = start_page("calibrate")
ws, project = page.ws, page.project
spec = attempt(model_spec, ws, project, what="Reading the model")

st.subheader("Calibration set")
cs_run = pick_run(page, "calibset", "Calibrate on", key="cal-cs", model_sha256=spec.sha256 if spec else None)
if cs_run is None:
    st.info("No calibration set yet: assemble one on the Calibration set page.", icon=":material/info:")
    page_link("calibset", "Go to")
else:
    cset = attempt(CalibrationSet.load, cs_run.dir, what="Opening the calibration set")
    if cset is not None:
        st.caption(f"{fmt.count(cset.size)} texts · {cset.strategy} · KS {fmt.ratio(cset.coverage.ks)} · "
                   f"profile sequence min/opt/max {'/'.join(map(str, cset.profile_sequences))}")
    c1, c2, c3 = st.columns(3)
    methods = c1.multiselect("Calibrators", list(method_names()), default=list(default_methods()), key="cal-methods")
    placement = c2.selectbox("Placement (which tensors get ranges)", list(PRESETS), key="cal-placement",
                             format_func=lambda p: PRESET_TITLES.get(p, p))
    scope = c3.selectbox("Tensors", list(TENSOR_SCOPES), key="cal-scope",
                         format_func=TENSOR_SCOPE_DESCRIPTIONS.get)
    params = calibrator_params(methods)  # every chosen calibrator's parameters, from the method registry
    with st.expander("Advanced"):
        a1, a2, a3 = st.columns(3)
        batch_size = a1.number_input("Batch size", min_value=1, max_value=256, value=config_defaults(CalibrateConfig)["batch_size"],
                                     key="cal-batch")
        histogram = a2.selectbox("Histogram", list(HISTOGRAM_MODES), key="cal-hist",
                                 help="stream: one pass, exact bin merging. two-pass: TensorRT's binning, twice the time.")
        trt_version = a3.text_input("TensorRT version for the cache header", value=DEFAULT_TRT_VERSION,
                                    key="cal-trt", help="TensorRT ignores a cache whose header names another version.")
    config = None if params is None else attempt(
        calibrate_config, project, cs_run.dir, methods, params, placement=placement, tensors=scope,
        batch_size=batch_size, trt_version=trt_version, histogram=histogram, what="Choosing the calibrators")
    if config is not None:
        run_button(page, "calibrate", "Calibrating", "Run all calibrators", key="cal-run", fn=calibrate, config=config,
                   parents=(cs_run.id,))

# -- results -------------------------------------------------------------------------------------
st.divider()
st.subheader("Ranges")
run = pick_run(page, "calibrate", "Calibration run", key="cal-run-pick")
if run is None:
    st.info("No calibration yet.", icon=":material/info:")
    st.stop()


@st.cache_resource(show_spinner="Loading the statistics…", max_entries=4)
def load_calibration(run_dir: str):
    cal = Calibration.load(run_dir)
    stats = cal.stats
    ranges = {m: cal.ranges(m) for m in cal.methods}
    return cal, stats, ranges


with shown_errors("Opening the calibration"):
    cal, stats, ranges = load_calibration(str(run.dir))
m = st.columns(5)
m[0].metric("Tensors", cal.tensor_count)
m[1].metric("Texts", cal.texts)
m[2].metric("Statistics pass", fmt.seconds(cal.stats_seconds))
m[3].metric("All calibrators", fmt.seconds(cal.calibrators_seconds))
m[4].metric("Non-finite tensors", len(cal.nonfinite_tensors))
for note in calibration_notes(cal):
    (st.warning if note.warning else st.info)(note.text, icon=":material/warning:" if note.warning else
                                              ":material/info:")

table = range_frame(stats.tensors, ranges)
methods_run = list(ranges)

chart = alt.Chart(amax_long(table, methods_run)).mark_line(point=alt.OverlayMarkDef(size=18), strokeWidth=1.2).encode(
    x=alt.X("#:Q", title="tensor (graph order)"),
    y=alt.Y("amax:Q", scale=alt.Scale(type="log"), title="amax (log)"),
    color=method_color(methods_run),
    tooltip=["tensor", "method", alt.Tooltip("amax:Q", format=".4g")],
).properties(height=320, title="amax by calibrator, per tensor")
st.altair_chart(chart, width="stretch")
with st.expander("Per-tensor ranges (table)", expanded=True):
    columns = {c: st.column_config.NumberColumn(c, format="%.4g") for c in range_columns(table)}
    st.dataframe(table, hide_index=True, width="stretch", height=320, column_config=columns)

st.markdown("**Histogram of one tensor, with each calibrator's threshold**")
names = [t.name for t in stats.tensors]
chosen = st.selectbox("Tensor", names, index=widest_tensor(table), key="cal-tensor")
t = stats[chosen]
frame = histogram_bars(t.covering_hist(), t.width)
if frame is not None:
    bars = alt.Chart(frame).mark_bar(color="#9aa5b1", binSpacing=0).encode(
        x=alt.X("from:Q", title="|x|"), x2="to:Q",
        y=alt.Y("count:Q", scale=alt.Scale(type="symlog"), title="values (symlog)"), y2=alt.datum(0),
        tooltip=[alt.Tooltip("from:Q", format=".4g"), alt.Tooltip("to:Q", format=".4g"), "count:Q"])
    thresholds = threshold_frame(ranges, chosen)
    rules = alt.Chart(thresholds).mark_rule(strokeWidth=2).encode(
        x="amax:Q", color=method_color(methods_run), tooltip=["method", alt.Tooltip("amax:Q", format=".4g")])
    st.altair_chart((bars + rules).properties(height=280), width="stretch")
    st.caption(f"{t.count:,} finite values over real tokens · absmax {t.absmax:.4g} · producer `{t.producer}` "
               f"({t.op_type})" + (f" · non-finite: {t.nonfinite:,}" if t.nonfinite else ""))
else:
    st.caption("This tensor was all zero (or empty) on the calibration set.")

st.markdown("**Downloads**")
for method in methods_run:
    c1, c2, c3, c4 = st.columns([1, 2, 2, 2])
    c1.markdown(f"**{method}**")
    with c2:
        download_file("TensorRT cache", cal.cache_path(method), key=f"cal-dl-cache-{method}",
                      file_name=f"{method}.cache")
    with c3:
        download_file("Ranges JSON", cal.ranges_path(method), mime="application/json", key=f"cal-dl-ranges-{method}",
                      file_name=f"{method}.ranges.json")
    with c4:
        download_file("ONNX Runtime ranges", cal.ort_path(method), mime="application/json",
                      key=f"cal-dl-ort-{method}", file_name=f"{method}.ort.json")
    omitted = cal.cache_omitted(method)
    st.caption(f"cache header `{cal.cache_header(method)}`" + (f" · {len(omitted)} tensor(s) without a usable range "
                                                            "left out of the cache" if omitted else ""))
