"""Build: place Q/DQ with the calibrated ranges, build the INT8 model, get the TensorRT commands."""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

import streamlit as st
from lib.bench_view import bench_section
from lib.context import attempt, shown_errors
from lib.project import model_spec
from lib.stages import (
    backend_warning,
    build_config,
    build_method_help,
    build_placement,
    default_calibrator_note,
    graph_nodes,
    profile_caption,
    profile_warning,
    reasons_frame,
    tensorrt_state,
)
from lib.ui import download_file, open_picked_run, page_link, pick_run, run_button, start_page

from calib import formatting as fmt
from calib.build import CACHE_FILE, ENGINE_FILE, SCRIPT_FILE, BuildConfig, EngineArtifact, build
from calib.calibrate import Calibration
from calib.engines import backend_names, get_backend
from calib.methods import build_method_of
from calib.pipeline import config_defaults
from calib.placement import PRESET_TITLES, PRESETS
from calib.smooth import SMOOTH_CHOICES

page = start_page("build")
ws = page.ws

# -- backend -------------------------------------------------------------------------------------
trt = tensorrt_state()
if trt.available:
    st.success(f"TensorRT found: {trt.reason}", icon=":material/memory:")
else:
    st.info(f"TensorRT not available here: {trt.reason}. The build writes the Q/DQ ONNX model (run with "
            "ONNX Runtime here), the TensorRT calibration cache and the exact trtexec commands for a GPU machine.",
            icon=":material/info:")

# -- settings ------------------------------------------------------------------------------------
st.subheader("Ranges and placement")
cal_run = pick_run(page, "calibrate", "Calibration run", key="build-cal")
if cal_run is None:
    st.info("No calibration yet: run the calibrators on the Calibrate page first.", icon=":material/info:")
    page_link("calibrate", "Go to")
else:
    with shown_errors("Opening the calibration"):
        cal = Calibration.load(cal_run.dir)
        model_path = str(cal.model_path())
        nodes = graph_nodes(model_path)
    methods = list(cal.methods)
    c1, c2, c3 = st.columns(3)
    preferred = build_method_of(methods)
    method = c1.selectbox("Calibrator", methods, index=methods.index(preferred), key="build-method",
                          help=build_method_help(preferred))
    if note := default_calibrator_note(method):
        c1.caption(note)
    preset = c2.selectbox("Placement preset", list(PRESETS), key="build-preset",
                          format_func=lambda p: PRESET_TITLES.get(p, p))
    backend = c3.selectbox("Backend", list(backend_names()), key="build-backend",
                           format_func=lambda name: get_backend(name).label,
                           help=None if trt.available else f"TensorRT: {trt.reason}")
    if unavailable := backend_warning(backend):
        st.warning(unavailable, icon=":material/warning:")
    op_types = sorted({op for _, op in nodes})
    c1, c2 = st.columns(2)
    st.session_state.setdefault("build-exclude", [])
    excluded = c1.multiselect("Keep these nodes in float", [name for name, _ in nodes], key="build-exclude",
                              help="Exact node names; the sensitivity analysis on the Validate page recommends some.")
    exclude_ops = c2.multiselect("Keep these op types in float", op_types, default=[], key="build-exclude-ops")
    patterns = st.text_input("More exclusion patterns (globs like `*/attention/*` or `re:REGEX`, comma separated)",
                             key="build-patterns")
    with st.expander("Advanced"):
        first = config_defaults(BuildConfig)
        a1, a2 = st.columns(2)
        per_channel = a1.checkbox("Per-channel weight scales", value=first["per_channel"], key="build-per-channel")
        trt_version = a2.text_input("TensorRT version for the calibration cache header", value=first["trt_version"],
                                    key="build-trt-version")
        smooth = a1.selectbox("Outlier migration (alpha)", list(SMOOTH_CHOICES), key="build-smooth",
                              help="Move activation outliers into the weights before Q/DQ (FP32 outputs unchanged); "
                                   "auto picks alpha per tensor by simulated INT8 error.")
        smooth_attention = a2.checkbox("Also fold scales into attention's projections", value=first["smooth_attention"],
                                       key="build-smooth-attention", disabled=smooth == "off",
                                       help="With outlier migration: equalize Q/K and migrate the attention context "
                                            "through V's projection (FP32 outputs unchanged; opt-in, see BENCHMARKS.md).")
        bias_correction = a2.checkbox("Bias correction", value=first["bias_correction"], key="build-bias-correction",
                                      help="Fold the output shift that weight quantization causes into each MatMul's "
                                           "bias, from calibration-set input means.")
    placement = build_placement(preset, excluded, patterns, exclude_ops)
    config = build_config(model_path, cal_run.dir, method, placement, backend=backend, per_channel=per_channel,
                          trt_version=trt_version, smooth=smooth, smooth_attention=smooth_attention,
                          bias_correction=bias_correction)
    run_button(page, "build", "Building", "Build the INT8 model", key="build-run", fn=build, config=config,
               parents=(cal_run.id,))

# -- result --------------------------------------------------------------------------------------
st.divider()
st.subheader("INT8 build")
run, art = open_picked_run(page, "build", "Build run", EngineArtifact.load, key="build-run-pick",
                           empty="No build yet.", what="Opening the build")
m = st.columns(5)
m[0].metric("Backend", art.backend)
m[1].metric("Calibrator", art.method)
m[2].metric("Quantized nodes", len(art.quantized_nodes))
m[3].metric("Kept in float", len(art.excluded_nodes))
m[4].metric("Q/DQ model", fmt.size(art.qdq_bytes))
if art.unmatched_patterns:
    st.warning("These exclusion patterns matched no node: " + ", ".join(art.unmatched_patterns),
               icon=":material/warning:")
if art.skipped_tensors:
    with st.expander(f"{len(art.skipped_tensors)} tensor(s) without a usable range (left in float)"):
        st.dataframe(reasons_frame(art.skipped_tensors, "tensor"), hide_index=True, width="stretch")
if art.excluded_nodes:
    with st.expander(f"{len(art.excluded_nodes)} node(s) kept in float, and why"):
        st.dataframe(reasons_frame(art.excluded_nodes, "node"), hide_index=True, width="stretch")

st.markdown("**Downloads**")
c = st.columns(4)
with c[0]:
    download_file("Q/DQ ONNX model", art.qdq_path, key="build-dl-qdq", file_name=f"{run.id}.qdq.onnx")
with c[1]:
    download_file("TensorRT calibration cache", run.dir / CACHE_FILE, key="build-dl-cache",
                  file_name=f"{run.id}.calibration.cache")
with c[2]:
    download_file(SCRIPT_FILE, run.dir / SCRIPT_FILE, mime="text/x-shellscript", key="build-dl-sh")
with c[3]:
    download_file(ENGINE_FILE, run.dir / ENGINE_FILE, mime="application/json", key="build-dl-json")
if (built := art.built_engine_path) is not None:  # the engine file the build's backend made
    download_file(f"{get_backend(art.engine_backend).title} engine ({built.name})", built, key="build-dl-plan")

st.markdown("**TensorRT and ModelOpt commands** (run on the GPU machine, next to the downloaded files)")
for tab, command in zip(st.tabs(list(art.COMMAND_TITLES.values())), art.commands.values()):
    with tab:
        st.code(command, language="bash")
st.caption(profile_caption(art))
project_spec = attempt(model_spec, page.ws, page.project, what="Reading the model")
if project_spec is not None and (shape_warning := profile_warning(art, int(project_spec.max_length))):
    st.warning(shape_warning, icon=":material/warning:")

# -- speed ---------------------------------------------------------------------------------------
st.markdown("**Latency and throughput**")
bench_section(page, run, art)
