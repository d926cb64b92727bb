"""Latency and throughput of a build against FP32 (``calib.bench``), measured as a background run."""

from __future__ import annotations

import dataclasses

import altair as alt
import pandas as pd
import streamlit as st

from calib.bench import BenchConfig, BenchResult, benchmark
from calib.formatting import whole_numbers
from calib.pipeline import config_defaults
from lib.context import attempt
from lib.stages import project_inputs
from lib.ui import run_button

PAGE_BENCH_TEXTS = 64
"""Texts the Build page times first: a quarter of ``BenchConfig.limit``, so a benchmark started from the
browser finishes in seconds on a CPU (the CLI's default times 256)."""


def bench_section(page, run, art) -> None:
    """Controls to benchmark the build ``run`` and the table of its latest benchmark."""
    inputs = attempt(project_inputs, page.ws, page.project, what="Reading the model")
    if inputs is None:
        return
    c1, c2, c3 = st.columns(3)
    first = config_defaults(BenchConfig)
    max_texts = c1.number_input("Texts (a spread of the evaluation lengths)", min_value=8, value=PAGE_BENCH_TEXTS,
                                step=16, key="bench-texts")
    batch_text = c2.text_input("Batch sizes", value=", ".join(map(str, first["batch_sizes"])), key="bench-batches")
    repeats = c3.number_input("Repeats", min_value=1, max_value=10, value=first["repeats"], key="bench-repeats",
                              help="Timed passes per batch size; their spread is the noise shown with the result.")
    batch_sizes = attempt(whole_numbers, batch_text, "batch sizes", what="Reading the batch sizes")
    if batch_sizes is None:
        return
    config = BenchConfig(engine=str(run.dir), **inputs, limit=int(max_texts), batch_sizes=batch_sizes,
                         repeats=int(repeats))
    run_button(page, "bench", "Benchmarking", "Measure FP32 vs INT8", key="bench-run", fn=benchmark, config=config,
               parents=(run.id,), icon=":material/speed:", button_type="secondary")
    done = page.ws.children_of(run.id, "bench")
    if not done:
        st.caption("Not measured yet for this build. Runs on this machine's CPU (ONNX Runtime); a TensorRT "
                   "engine on a GPU is measured with the trtexec commands above.")
        return
    result = attempt(BenchResult.load, done[0].dir, what="Opening the benchmark")
    if result is None:
        return
    measured = [dataclasses.asdict(m) for m in result.measurements]
    rows = pd.DataFrame(measured)
    peaks = result.peak_memory_mb
    table = rows[["kind", "batch_size", "p50_ms", "p95_ms", "texts_per_s"]].rename(columns={
        "kind": "engine", "batch_size": "batch", "p50_ms": "latency p50 (ms)", "p95_ms": "latency p95 (ms)",
        "texts_per_s": "throughput (texts/s)"})
    left, right = st.columns([3, 2])
    with left:
        st.dataframe(table, hide_index=True, width="stretch",
                     column_config={c: st.column_config.NumberColumn(c, format="%.1f") for c in table.columns[2:]})
        sizes = result.sizes_mb
        speedups = ", ".join(f"batch {b}: ×{s:.2f}" for b, s in result.speedups().items())
        st.caption(f"INT8 / FP32 throughput: {speedups or '—'} · model sizes: FP32 "
                   f"{sizes.get('fp32_model_mb', 0):.1f} MB, Q/DQ {sizes.get('qdq_model_mb', 0):.1f} MB, INT8 weights "
                   f"{sizes.get('int8_weights_mb', 0):.1f} MB · peak memory of each engine's process: "
                   + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(peaks.items())) + f" · run `{done[0].id}`")
        note, noisy = timing_note(measured, result.repeats)
        (st.warning if noisy else st.caption)(note, **({"icon": ":material/speed:"} if noisy else {}))
    with right:
        chart = alt.Chart(rows).mark_bar().encode(
            x=alt.X("batch_size:O", title="batch size"),
            xOffset=alt.XOffset("kind:N", sort=["fp32", "int8"]),
            y=alt.Y("texts_per_s:Q", title="texts / s"),
            color=alt.Color("kind:N", title=None, sort=["fp32", "int8"],
                            scale=alt.Scale(domain=["fp32", "int8"], range=["#9aa5b1", "#4c78a8"])),
            tooltip=["kind", "batch_size", alt.Tooltip("texts_per_s:Q", format=".1f"),
                     alt.Tooltip("p50_ms:Q", format=".1f")])
        st.altair_chart(chart.properties(height=220), width="stretch")


NOISY_SPREAD = 0.10  # timed passes further apart than this (relative) make a speed-up hard to trust


def timing_note(rows: list[dict], repeats: int) -> tuple[str, bool]:
    """What the benchmark's own passes say about its noise, and whether that deserves a warning: one
    timed pass cannot show it; passes that differ by more than :data:`NOISY_SPREAD` do."""
    spreads = [r["pass_spread"] for r in rows if r.get("pass_spread") is not None]
    if repeats < 2 or not spreads:
        return ("One timed pass per batch size: its run-to-run noise is unknown; use 2 or more repeats before "
                "comparing speed-ups."), True
    worst = max(spreads)
    if worst > NOISY_SPREAD:
        return (f"Timed passes differed by up to {worst:.0%} (another job sharing the CPU?): the speed-ups may be off "
                f"by about as much; run again on a quiet machine or with more repeats."), True
    return f"Timing noise: the {repeats} timed passes per batch size agreed within {worst:.1%}.", False
