"""Altair charts used by the pages. Inputs are plain arrays / frames; outputs are altair charts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from calib import formatting as fmt
from calib.ranges import entropy_over_minmax
from calib.report import (  # one palette and one naming for app and report
    method_colour,
    padded_floor,
    short_tensor_name,
)

SERIES_COLORS = {"pool": "#9aa5b1", "target": "#e45756", "calibration set": "#4c78a8"}


def length_bins(max_length: int, longest: float) -> np.ndarray:
    """Bin edges in tokens: ~40 bins up to a bit past max length (longer texts share the last bin)."""
    cap = int(max(max_length * 1.5, min(longest, max_length * 3))) + 1
    step = max(4, int(np.ceil(cap / 40 / 4) * 4))
    return np.arange(0, cap + step, step)


def length_histogram(series: Mapping[str, np.ndarray], max_length: int, *, title: str = "") -> alt.Chart:
    """Shares of texts per length bin for each named series (pool, target, calibration set)."""
    longest = max((float(np.max(v)) for v in series.values() if len(v)), default=float(max_length))
    edges = length_bins(max_length, longest)
    rows = []
    for name, values in series.items():
        values = np.asarray(values)
        if not len(values):
            continue
        clipped = np.minimum(values, edges[-1] - 1)
        counts, _ = np.histogram(clipped, bins=edges)
        shares = counts / counts.sum()
        for lo, hi, c, s in zip(edges[:-1], edges[1:], counts, shares):
            rows.append({"series": name, "from": int(lo), "to": int(hi), "texts": int(c), "share": float(s)})
    frame = pd.DataFrame(rows)
    color = alt.Color("series:N", title=None, scale=alt.Scale(domain=list(series),
                                                             range=[SERIES_COLORS.get(s, "#72b7b2") for s in series]))
    base = alt.Chart(frame).encode(
        x=alt.X("from:Q", title="tokens per text (before truncation; last bin: longer)",
                scale=alt.Scale(domain=[0, int(edges[-1])])),
        x2="to:Q",
        y=alt.Y("share:Q", title="share of texts", axis=alt.Axis(format="%"), stack=None),
        y2=alt.datum(0),  # bars from zero (x/x2 alone would make vega-lite draw horizontal ranges)
        color=color,
        tooltip=["series", "from", "to", "texts", alt.Tooltip("share:Q", format=".1%")],
    )
    bars = base.mark_bar(opacity=0.45, binSpacing=0)
    rule = alt.Chart(pd.DataFrame({"x": [max_length], "label": [f"max length {max_length}"]})).mark_rule(
        strokeDash=[4, 4], color="#333").encode(x="x:Q")
    text = alt.Chart(pd.DataFrame({"x": [max_length], "label": [f"max length {max_length}"]})).mark_text(
        align="left", dx=4, dy=-4, baseline="top", color="#333").encode(x="x:Q", y=alt.value(0), text="label:N")
    chart = (bars + rule + text).properties(height=280)
    return chart.properties(title=title) if title else chart


def bucket_bars(buckets: Sequence[str], shares: Mapping[str, Sequence[float]], *, title: str = "") -> alt.Chart:
    """Grouped bars: share of texts per length bucket, one bar per series."""
    rows = [{"bucket": b, "series": name, "share": float(v)} for name, values in shares.items()
            for b, v in zip(buckets, values)]
    frame = pd.DataFrame(rows)
    chart = alt.Chart(frame).mark_bar().encode(
        x=alt.X("bucket:N", sort=list(buckets), title="length bucket (tokens)", axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("series:N", sort=list(shares)),
        y=alt.Y("share:Q", axis=alt.Axis(format="%"), title="share of texts"),
        color=alt.Color("series:N", title=None, sort=list(shares),
                        scale=alt.Scale(domain=list(shares), range=[SERIES_COLORS.get(s, "#72b7b2") for s in shares])),
        tooltip=["bucket", "series", alt.Tooltip("share:Q", format=".1%")],
    ).properties(height=240)
    return chart.properties(title=title) if title else chart


def method_color(methods: Sequence[str]) -> alt.Color:
    return alt.Color("method:N", title="calibrator", sort=list(methods),
                     scale=alt.Scale(domain=list(methods), range=[method_colour(m) for m in methods]))


def range_frame(tensors: Sequence, ranges: Mapping) -> pd.DataFrame:
    """One row per tensor of a calibration (``tensors``: its ``TensorStats`` in graph order; ``ranges``:
    method -> ``Ranges``): index, name, op, observed min / max (None for a tensor never seen), each
    method's amax, entropy ÷ minmax when both ran, and whether it held non-finite values."""
    both = "entropy" in ranges and "minmax" in ranges
    rows = []
    for i, t in enumerate(tensors):
        row = {"#": i, "tensor": t.name, "op": t.op_type, "min": t.min if t.count else None,
               "max": t.max if t.count else None}
        amax = {method: r.amax.get(t.name) for method, r in ranges.items()}
        row.update(amax)
        if both:
            row["entropy / minmax"] = entropy_over_minmax(amax)
        row["non-finite"] = t.nonfinite
        rows.append(row)
    return pd.DataFrame(rows)


def range_columns(table: pd.DataFrame) -> list[str]:
    """The numeric columns of a :func:`range_frame` (observed min / max, each method's amax, the ratio)."""
    return [c for c in table.columns if c not in ("#", "tensor", "op", "non-finite")]


def length_facts(series: Mapping[str, np.ndarray], max_length: int) -> pd.DataFrame:
    """One row per length distribution (name -> untruncated token lengths (N,)): texts, p50 / p95 / p99,
    longest, and the share longer than ``max_length`` (truncated)."""
    return pd.DataFrame([{"": name, "texts": len(v), "p50": int(np.percentile(v, 50)), "p95": int(np.percentile(v, 95)),
                          "p99": int(np.percentile(v, 99)), "longest": int(v.max()),
                          f"over {max_length} (truncated)": fmt.percent(float(np.mean(v > max_length)), 1)}
                         for name, v in series.items()])


def amax_long(table: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """``range_frame``'s amax columns as long rows (``#``, tensor, method, amax) for a log-scale chart:
    only finite, positive amax (an all-zero or non-finite tensor has no point on a log axis)."""
    long = table.melt(id_vars=["#", "tensor"], value_vars=list(methods), var_name="method", value_name="amax")
    return long[long["amax"].map(lambda v: v is not None and math.isfinite(v) and v > 0)]


def threshold_frame(ranges: Mapping[str, Any], tensor: str) -> pd.DataFrame:
    """Each calibrator's amax of ``tensor`` (columns method, amax) from ``{method: Ranges}``, the methods
    that have a finite one (the rules drawn over its histogram)."""
    return pd.DataFrame([{"method": m, "amax": r.amax[tensor]} for m, r in ranges.items()
                         if tensor in r.amax and math.isfinite(r.amax[tensor])], columns=["method", "amax"])


def histogram_bars(counts: np.ndarray, width: float, max_bars: int = 256) -> pd.DataFrame | None:
    """A tensor's |x| histogram (``counts`` per bin of ``width``) merged into at most ``max_bars`` bars:
    columns from, to, count. None when there is nothing to draw (all zero or empty)."""
    if width <= 0 or not len(counts):
        return None
    group = math.ceil(len(counts) / max_bars)
    merged = np.pad(np.asarray(counts, np.float64), (0, (-len(counts)) % group)).reshape(-1, group).sum(axis=1)
    lo = np.arange(len(merged)) * width * group
    return pd.DataFrame({"from": lo, "to": lo + width * group, "count": merged})


def widest_tensor(table: pd.DataFrame) -> int:
    """The row of ``range_frame`` with the largest observed max (the histogram shown first)."""
    return int(np.argmax(table["max"].fillna(0).to_numpy())) if len(table) else 0


def layer_frame(rows: Sequence[Mapping], methods: Sequence[str]) -> pd.DataFrame:
    """Quantized tensors in network order (``calib.report.layer_rows``): shortened name for axes, error,
    amax and clipped share per calibrator, and entropy ÷ minmax when both exist."""
    out = []
    for i, r in enumerate(rows):
        row = {"#": i, "name": f"{i:02d} {short_tensor_name(r['tensor'])}", "tensor": r["tensor"],
               "SQNR (dB)": r.get("sqnr_db"), "cosine": r.get("cosine"), "local SQNR (dB)": r.get("local_sqnr_db"),
               "FP32 absmax": r.get("fp32_absmax")}
        for m in methods:
            row[f"amax {m}"] = r["amax"].get(m)
        for m in methods:
            row[f"clipped {m}"] = r["saturation_rate"].get(m)
        if "entropy" in methods and "minmax" in methods:
            row["entropy ÷ minmax"] = entropy_over_minmax(r["amax"])
        out.append(row)
    return pd.DataFrame(out)


def worst_first(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`layer_frame` as the Validate page's table: worst SQNR first (tensors without one last), without
    the axis name."""
    return frame.sort_values("SQNR (dB)", na_position="last").drop(columns=["name"])


def clipped_long(frame: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """:func:`layer_frame`'s clipped shares as a long frame (#, name, tensor, method, clipped), the
    tensors a calibrator has a share for."""
    long = frame.melt(id_vars=["#", "name", "tensor"], value_vars=[f"clipped {m}" for m in methods],
                      var_name="method", value_name="clipped").dropna(subset=["clipped"])
    long["method"] = long["method"].str.removeprefix("clipped ")
    return long


BUCKET_MEASURES = ("FP32 accuracy", "INT8 accuracy", "agreement")  # the shares per length bucket a chart draws


def bucket_measures_long(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """:func:`lib.verdict_view.bucket_frame`'s shares as a long frame (bucket, texts, few, measure, value) for
    :func:`bucket_measure_bars`, and the measures it has (no accuracy without labels)."""
    measures = [c for c in BUCKET_MEASURES if c in frame.columns]
    long = frame.melt(id_vars=["bucket", "texts", "few"], value_vars=measures, var_name="measure", value_name="value")
    return long.dropna(subset=["value"]), measures


def bucket_measure_bars(long: pd.DataFrame, order: Sequence[str], measures: Sequence[str]) -> alt.Chart:
    """Grouped bars of shares (0–1) per length bucket: ``long`` has columns bucket, texts, few,
    measure, value. The value axis starts below the smallest bar (:func:`calib.report.padded_floor`),
    so every bar keeps a visible height; few-text buckets are faded."""
    floor = padded_floor([float(v) for v in long["value"]])
    return alt.Chart(long).mark_bar(clip=True).encode(
        x=alt.X("bucket:N", sort=list(order), title="length bucket (tokens, before truncation)",
                axis=alt.Axis(labelAngle=0, labelOverlap=False, labelLimit=200)),
        xOffset=alt.XOffset("measure:N", sort=list(measures)),
        y=alt.Y("value:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[floor, 1.0]), title=None),
        color=alt.Color("measure:N", sort=list(measures), title=None,
                        scale=alt.Scale(domain=list(measures),
                                        range=["#9aa5b1", "#4c78a8", "#54a24b"][:len(measures)])),
        opacity=alt.condition(alt.datum.few, alt.value(0.3), alt.value(1.0)),
        tooltip=["bucket", "texts", "measure", alt.Tooltip("value:Q", format=".2%")])
