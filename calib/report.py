"""Release report: one data model (JSON, schema ``calib.report/1``) rendered as self-contained
HTML (inline SVG charts, no script, no external reference), Markdown (for a pull request) and JSON.

``make_report(ReportConfig, out_dir)`` reads one or more evaluation runs (the first is the release
candidate; the others are compared in one table) and optionally a sensitivity run.
``compare_evaluations([...])`` gives the comparison rows on their own.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from calib.errors import InputError
from calib.io import atomic_write_json, atomic_write_text, read_artifact_json
from calib.model import check_same_model
from calib.validate import Evaluation
from calib.workspace import ProgressFn

SCHEMA = "calib.report/1"
LIBRARIES = ("calib", "numpy", "onnx", "onnxruntime", "scikit-learn", "datasets", "tokenizers",
             "transformers", "tensorrt")


@dataclass(frozen=True)
class ReportConfig:
    """``evaluations``: validate run folders, the release candidate first. ``sensitivity``: an optional
    sensitivity run folder. ``layers``: how many per-layer rows to list (worst SQNR first in tables)."""

    evaluations: tuple[str, ...]
    sensitivity: str | None = None
    title: str = "INT8 accuracy report"
    layers: int = 25


# -- data model --------------------------------------------------------------------------------


def environment() -> dict:
    """Library versions and the machine (what a reviewer needs to reproduce the numbers)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "libraries": versions,
        "python": sys.version.split()[0],
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "hostname": platform.node()},
    }


def _pts(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _worst_bucket(ev: Evaluation) -> dict | None:
    return ev.metrics.worst_bucket()


def _calibrator(ev: Evaluation) -> str | None:
    return ev.data["engine"].get("calibrator") or (ev.data.get("calibration") or {}).get("method")


def _placement(ev: Evaluation) -> str | None:
    p = ev.data["engine"].get("placement")
    if isinstance(p, dict):
        return str(p.get("preset"))
    return None if p is None else str(p)


def _exclusions(ev: Evaluation) -> list[str]:
    e = ev.data["engine"].get("exclusions")
    if isinstance(e, dict):
        return sorted(e)
    return list(e or [])


def compare_evaluations(evaluations: Sequence[Evaluation | str | Path]) -> list[dict]:
    """One row per evaluation: calibrator, placement, exclusions, calibration set, headline metrics,
    the worst length bucket and the first degraded tensor. All must be of the same model."""
    evs = [e if isinstance(e, Evaluation) else Evaluation.load(e) for e in evaluations]
    if not evs:
        raise InputError("no evaluations to compare; give at least one validate run")
    ref = evs[0].data["model"]["sha256"]
    rows = []
    for ev in evs:
        check_same_model(ref, ev.data["model"]["sha256"], f"evaluation {ev.dir}")
        o = ev.overall
        ci = o.get("accuracy_diff_ci") or {}
        cal = ev.data.get("calibration") or {}
        rows.append({
            "run": ev.dir.name,
            "engine": ev.data["engine"].get("path"),
            "calibrator": _calibrator(ev),
            "placement": _placement(ev),
            "exclusions": len(_exclusions(ev)),
            "calibration_set": _calibset_of(cal),
            "dataset_fingerprint": ev.data["dataset"]["fingerprint"],
            "rows": o["n"],
            "accuracy_fp32": o.get("fp32", {}).get("accuracy"),
            "accuracy_int8": o.get("int8", {}).get("accuracy"),
            "accuracy_drop_points": o.get("accuracy_drop_points"),
            "ci_low_points": _pts(ci.get("low")), "ci_high_points": _pts(ci.get("high")),
            "top1_agreement": o["agreement"]["top1_agreement"],
            "kl_softmax": o["agreement"]["kl_softmax"],
            "embedding_cosine": (o.get("embedding_cosine") or {}).get("mean"),
            "worst_bucket": _worst_bucket(ev),
            "first_degraded_tensor": (ev.data.get("layers") or {}).get("first_degraded"),
        })
    return rows


def _calibset_of(calibration: dict) -> str | None:
    cs = calibration.get("calibration_set") or {}
    if cs:
        return f"{cs.get('strategy')} × {cs.get('size')} ({Path(str(cs.get('dir'))).name})"
    return calibration.get("folder")


def _calibration_recipe(ev: Evaluation) -> dict | None:
    """What the calibration set was made of and how it was calibrated, when the evaluation knows it."""
    cal = ev.data.get("calibration")
    if not cal:
        build_cal = ev.data["engine"].get("calibration")
        return {"calibration": build_cal} if build_cal else None
    return {"calibration": cal.get("folder"), "methods": cal.get("methods"),
            "calibration_set": cal.get("calibration_set"), "calibration_set_summary": cal.get("calibration_set_summary"),
            "config": cal.get("config")}


def _layer_rows(layers: dict | None) -> list[dict]:
    if not layers:
        return []
    rows = []
    for t in layers["tensors"]:
        r = t.get("ranges") or {}
        methods = r.get("methods") or {}
        rows.append({
            "tensor": t["tensor"], "order": t["order"], "quantized": t.get("quantized", False),
            "sqnr_db": t.get("sqnr_db"), "cosine": t.get("cosine"), "local_sqnr_db": t.get("local_sqnr_db"),
            "fp32_absmax": r.get("fp32_absmax"), "fp32_p9999": r.get("fp32_p9999"),
            "amax": {m: v.get("amax") for m, v in methods.items()},
            "saturation_rate": {m: v.get("saturation_rate") for m, v in methods.items()},
            "utilisation": {m: v.get("utilisation") for m, v in methods.items()},
        })
    return rows


def report_data(evaluations: Sequence[Evaluation], sensitivity: dict | None = None, *,
                title: str = "INT8 accuracy report") -> dict:
    """The report as plain data (the JSON form; HTML and Markdown are rendered from it)."""
    ev = evaluations[0]
    o = ev.overall
    ci = o.get("accuracy_diff_ci") or {}
    headline = {
        "labelled": ev.labelled,
        "note": ev.data["dataset"].get("note") or "",
        "rows": o["n"],
        "accuracy_fp32": o.get("fp32", {}).get("accuracy"),
        "accuracy_int8": o.get("int8", {}).get("accuracy"),
        "macro_f1_fp32": o.get("fp32", {}).get("macro_f1"),
        "macro_f1_int8": o.get("int8", {}).get("macro_f1"),
        "accuracy_drop_points": o.get("accuracy_drop_points"),
        "ci_low_points": _pts(ci.get("low")), "ci_high_points": _pts(ci.get("high")),
        "ci_confidence": ci.get("confidence"),
        **{k: o["agreement"][k] for k in ("top1_agreement", "logit_cosine", "max_abs_diff", "mean_abs_diff", "kl_softmax")},
        "embedding_cosine": (o.get("embedding_cosine") or {}).get("mean"),
        "embedding_cosine_min": (o.get("embedding_cosine") or {}).get("min"),
    }
    buckets = []
    for b in ev.buckets:
        bci = b.get("accuracy_diff_ci") or {}
        buckets.append({
            "bucket": b["bucket"], "n": b["n"],
            "accuracy_fp32": (b.get("fp32") or {}).get("accuracy"), "accuracy_int8": (b.get("int8") or {}).get("accuracy"),
            "accuracy_drop_points": b.get("accuracy_drop_points"),
            "ci_low_points": _pts(bci.get("low")), "ci_high_points": _pts(bci.get("high")),
            "top1_agreement": b["agreement"]["top1_agreement"], "kl_softmax": b["agreement"]["kl_softmax"],
            "embedding_cosine": (b.get("embedding_cosine") or {}).get("mean"),
        })
    classes = ev.data["model"]["classes"]
    per_class = []
    if ev.labelled:
        for i, name in enumerate(classes):
            per_class.append({"class": name, "support": o["fp32"]["support"][i],
                              "precision_fp32": o["fp32"]["precision"][i], "recall_fp32": o["fp32"]["recall"][i],
                              "precision_int8": o["int8"]["precision"][i], "recall_int8": o["int8"]["recall"][i]})
    sens = None
    if sensitivity is not None:
        rec = sensitivity["recommended"]
        sens = {"passes": rec["passes"], "note": rec["note"], "exclude_nodes": rec["exclude_nodes"],
                "units": rec["units"], "evaluations_used": sensitivity["evaluations_used"],
                "budget": sensitivity["budget"], "granularity": sensitivity["granularity"],
                "ranking_method": sensitivity["ranking_method"], "baseline": sensitivity["baseline"],
                "recommended": {k: rec.get(k) for k in ("top1_agreement", "accuracy_drop_points", "embedding_cosine",
                                                         "kl_softmax")},
                "ranking": sensitivity["ranking"][:20],
                "placement": sensitivity["placement"]}
    return {
        "schema": SCHEMA,
        "title": title,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": {"sha256": ev.data["model"]["sha256"], "path": ev.data["model"]["path"], "classes": classes},
        "dataset": ev.data["dataset"],
        "calibration": _calibration_recipe(ev),
        "build": {"engine": ev.data["engine"].get("path"), "backend": ev.data["engine"].get("backend"),
                  "engine_name": ev.data["engine"].get("name"), "qdq_sha256": ev.data["engine"].get("qdq_sha256"),
                  "calibrator": _calibrator(ev), "placement": ev.data["engine"].get("placement"),
                  "exclusions": _exclusions(ev)},
        "evaluation": str(ev.dir),
        "headline": headline,
        "buckets": buckets,
        "per_class": per_class,
        "confusion": {"classes": classes, "fp32": o.get("fp32", {}).get("confusion"),
                      "int8": o.get("int8", {}).get("confusion")},
        "layers": {"first_degraded": (ev.layers or {}).get("first_degraded"),
                   "rows": _layer_rows(ev.layers)} if ev.layers else None,
        "comparison": compare_evaluations(evaluations) if len(evaluations) > 1 else [],
        "sensitivity": sens,
        "environment": environment(),
    }


# -- rendering ---------------------------------------------------------------------------------


def _fmt(v, spec: str = ".4g", none: str = "–") -> str:
    if v is None:
        return none
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


def _ci(row: dict) -> str:
    if row.get("ci_low_points") is None:
        return "–"
    return f"[{row['ci_low_points']:+.2f}, {row['ci_high_points']:+.2f}]"


def _drop(v) -> str:
    return "–" if v is None else f"{v:+.2f}"


def render_markdown(data: dict, layers: int = 25) -> str:
    """Markdown for a pull request: headline, per-bucket table, worst layers, comparison, provenance."""
    h = data["headline"]
    lines = [f"# {data['title']}", ""]
    if not h["labelled"]:
        lines += [f"> **Agreement-only report:** {h['note']}", ""]
    lines += ["| metric | value |", "|---|---|"]
    if h["labelled"]:
        lines += [f"| accuracy FP32 | {_pct(h['accuracy_fp32'])} |", f"| accuracy INT8 | {_pct(h['accuracy_int8'])} |",
                  f"| accuracy drop (points, FP32 − INT8) | {_drop(h['accuracy_drop_points'])} |",
                  f"| INT8 − FP32, 95 % CI (points) | {_ci(h)} |",
                  f"| macro-F1 FP32 / INT8 | {_fmt(h['macro_f1_fp32'])} / {_fmt(h['macro_f1_int8'])} |"]
    lines += [f"| top-1 agreement | {_pct(h['top1_agreement'])} |", f"| logit cosine | {_fmt(h['logit_cosine'], '.5f')} |",
              f"| KL(softmax) | {_fmt(h['kl_softmax'])} |", f"| max / mean abs logit diff | {_fmt(h['max_abs_diff'])} / {_fmt(h['mean_abs_diff'])} |"]
    if h["embedding_cosine"] is not None:
        lines.append(f"| embedding cosine (mean / min) | {_fmt(h['embedding_cosine'], '.5f')} / {_fmt(h['embedding_cosine_min'], '.5f')} |")
    lines += [f"| texts | {h['rows']} |", "", "## Per length bucket (tokens before truncation)", ""]
    if h["labelled"]:
        lines += ["| bucket | n | acc FP32 | acc INT8 | drop (pts) | 95 % CI (pts) | agreement | emb. cosine |",
                  "|---|---:|---:|---:|---:|---|---:|---:|"]
        for b in data["buckets"]:
            lines.append(f"| {b['bucket']} | {b['n']} | {_pct(b['accuracy_fp32'])} | {_pct(b['accuracy_int8'])} | "
                         f"{_drop(b['accuracy_drop_points'])} | {_ci(b)} | {_pct(b['top1_agreement'])} | {_fmt(b['embedding_cosine'], '.4f')} |")
    else:
        lines += ["| bucket | n | agreement | KL | emb. cosine |", "|---|---:|---:|---:|---:|"]
        for b in data["buckets"]:
            lines.append(f"| {b['bucket']} | {b['n']} | {_pct(b['top1_agreement'])} | {_fmt(b['kl_softmax'])} | "
                         f"{_fmt(b['embedding_cosine'], '.4f')} |")
    if data.get("layers"):
        lay = data["layers"]
        lines += ["", "## Per layer (network order)", "",
                  f"First degraded tensor: **{lay['first_degraded'] or 'none'}**", "",
                  "| # | tensor | SQNR dB | cosine | local SQNR dB | amax (engine) | FP32 absmax | FP32 p99.99 | saturation |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in [r for r in lay["rows"] if r["quantized"]][:layers]:
            lines.append(f"| {r['order']} | `{r['tensor']}` | {_fmt(r['sqnr_db'], '.1f')} | {_fmt(r['cosine'], '.5f')} | "
                         f"{_fmt(r['local_sqnr_db'], '.1f')} | {_fmt(r['amax'].get('engine'))} | {_fmt(r['fp32_absmax'])} | "
                         f"{_fmt(r['fp32_p9999'])} | {_fmt(r['saturation_rate'].get('engine'), '.2e')} |")
    if data["comparison"]:
        lines += ["", "## Runs compared", "", "| run | calibrator | placement | excl. | drop (pts) | agreement | emb. cosine | worst bucket |",
                  "|---|---|---|---:|---:|---:|---:|---|"]
        for r in data["comparison"]:
            wb = r["worst_bucket"] or {}
            lines.append(f"| {r['run']} | {_fmt(r['calibrator'])} | {_fmt(r['placement'])} | {r['exclusions']} | "
                         f"{_drop(r['accuracy_drop_points'])} | {_pct(r['top1_agreement'])} | {_fmt(r['embedding_cosine'], '.4f')} | "
                         f"{wb.get('bucket', '–')} |")
    if data.get("sensitivity"):
        s = data["sensitivity"]
        lines += ["", "## Sensitivity and fallback", "", s["note"], "",
                  (f"Budget: drop ≤ {s['budget']['max_drop']} points, agreement ≥ {s['budget']['min_agreement']}; "
                   f"{s['evaluations_used']} of {s['budget']['max_evaluations']} evaluations; ranking: {s['ranking_method']}."), ""]
        lines += [f"- `{n}`" for n in s["exclude_nodes"]] or ["- (no exclusions)"]
    b, env = data["build"], data["environment"]
    lines += ["", "## Provenance", "", f"- model sha256: `{data['model']['sha256']}`",
              f"- dataset: {data['dataset']['source']} split {data['dataset'].get('split')} fingerprint `{data['dataset']['fingerprint']}`",
              f"- calibration: {_fmt((data.get('calibration') or {}).get('calibration'))}; calibration set: {_calibset_text(data)}",
              (f"- calibrator: {_fmt(b['calibrator'])}; placement: {_fmt(_placement_text(b['placement']))}; "
               f"exclusions: {len(b['exclusions'])}"),
              f"- engine: {_fmt(b['engine_name'])} ({_fmt(b['backend'])}), Q/DQ sha256 `{_fmt(b['qdq_sha256'])}`",
              "- libraries: " + ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v),
              f"- machine: {env['machine']['platform']}, {env['machine']['cpu_count']} CPUs, Python {env['python']}", ""]
    return "\n".join(lines)


def _calibset_text(data: dict) -> str:
    cal = data.get("calibration") or {}
    cs = cal.get("calibration_set") or {}
    if not cs:
        return "unknown (pass the calibration run to calib validate --calibration)"
    extra = cal.get("calibration_set_summary") or {}
    parts = [f"{cs.get('strategy')} × {cs.get('size')} texts from {cs.get('dataset')}"]
    if extra:
        parts.append(f"target {extra.get('target')}, KS {extra.get('ks')}, seed {extra.get('seed')}")
    return "; ".join(parts) + f" ({cs.get('dir')})"


def _placement_text(p) -> str | None:
    if isinstance(p, dict):
        return str(p.get("preset"))
    return None if p is None else str(p)


# SVG charts: hand-made, inline, no scripts and no external references.
_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756")


def svg_grouped_bars(categories: Sequence[str], series: dict[str, Sequence[float | None]], *, title: str,
                     y_label: str, y_min: float | None = None, y_max: float | None = None,
                     width: int = 640, height: int = 260) -> str:
    """Grouped bar chart as an inline ``<svg>``; ``None`` values leave a gap."""
    values = [v for vs in series.values() for v in vs if v is not None]
    lo = y_min if y_min is not None else min([0.0, *values])
    hi = y_max if y_max is not None else (max(values) if values else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    left, right, top, bottom = 56, 12, 28, 40
    pw, ph = width - left - right, height - top - bottom
    n, k = max(len(categories), 1), max(len(series), 1)
    group = pw / n
    bar = group * 0.8 / k

    def y(v: float) -> float:
        return top + ph * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))

    parts = [f'<svg role="img" aria-label="{html.escape(title)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>')
    parts.append(f'<text x="12" y="{top + ph / 2:.0f}" font-size="10" transform="rotate(-90 12 {top + ph / 2:.0f})" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')
    for ci, cat in enumerate(categories):
        gx = left + ci * group + group * 0.1
        for si, (name, vs) in enumerate(series.items()):
            v = vs[ci]
            if v is None:
                continue
            base = y(max(lo, min(0.0, hi)) if lo < 0 < hi else lo)
            top_y = y(v)
            parts.append(f'<rect x="{gx + si * bar:.1f}" y="{min(top_y, base):.1f}" width="{bar * 0.92:.1f}" '
                         f'height="{abs(base - top_y):.1f}" fill="{_COLORS[si % len(_COLORS)]}">'
                         f'<title>{html.escape(name)} {html.escape(cat)}: {v:.4g}</title></rect>')
        parts.append(f'<text x="{left + ci * group + group / 2:.1f}" y="{top + ph + 14}" font-size="10" '
                     f'text-anchor="middle">{html.escape(cat)}</text>')
    for si, name in enumerate(series):
        lx = left + si * 120
        parts.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{_COLORS[si % len(_COLORS)]}"/>'
                     f'<text x="{lx + 14}" y="{height - 5}" font-size="10">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_line(points: Sequence[float | None], labels: Sequence[str], *, title: str, y_label: str,
             threshold: float | None = None, width: int = 760, height: int = 260) -> str:
    """Line chart over tensors in network order; points at ``None`` are skipped; optional threshold line."""
    values = [v for v in points if v is not None]
    lo = min([*values, threshold if threshold is not None else min(values or [0.0])]) if values else 0.0
    hi = max([*values, threshold if threshold is not None else max(values or [1.0])]) if values else 1.0
    if hi <= lo:
        hi = lo + 1.0
    left, right, top, bottom = 56, 12, 28, 24
    pw, ph = width - left - right, height - top - bottom
    n = max(len(points) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + pw * i / n, top + ph * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg role="img" aria-label="{html.escape(title)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        _, yy = xy(0, v)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 4}" y="{yy + 4:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>')
    parts.append(f'<text x="12" y="{top + ph / 2:.0f}" font-size="10" transform="rotate(-90 12 {top + ph / 2:.0f})" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')
    if threshold is not None:
        _, ty = xy(0, threshold)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e45756" stroke-dasharray="4 3"/>')
    path = " ".join(f"{'M' if j == 0 else 'L'}{x:.1f},{y:.1f}"
                    for j, (x, y) in enumerate(xy(i, v) for i, v in enumerate(points) if v is not None))
    if path:
        parts.append(f'<path d="{path}" fill="none" stroke="{_COLORS[0]}" stroke-width="1.5"/>')
    for i, v in enumerate(points):
        if v is not None:
            x, y = xy(i, v)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{_COLORS[0]}">'
                         f'<title>{html.escape(labels[i])}: {v:.4g}</title></circle>')
    parts.append(f'<text x="{left}" y="{height - 6}" font-size="10">network order →</text></svg>')
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{background:#fff5d6;border-left:4px solid #f5b800;padding:.5em 1em}code{font-size:12px}svg{display:block;margin:1em 0}
.pass{color:#2a7a2a}.fail{color:#b00020}"""


def render_html(data: dict, layers: int = 25) -> str:
    """A self-contained HTML page: inline CSS and SVG, no scripts, no external references."""
    h = data["headline"]
    out = [(f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(data['title'])}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(data['title'])}</h1>")]
    if not h["labelled"]:
        out.append(f'<p class="note"><b>Agreement-only report:</b> {html.escape(h["note"])}</p>')
    rows = []
    if h["labelled"]:
        rows += [["accuracy FP32", _pct(h["accuracy_fp32"])], ["accuracy INT8", _pct(h["accuracy_int8"])],
                 ["accuracy drop (points, FP32 − INT8)", _drop(h["accuracy_drop_points"])],
                 ["INT8 − FP32, 95 % CI (points)", _ci(h)],
                 ["macro-F1 FP32 / INT8", f"{_fmt(h['macro_f1_fp32'])} / {_fmt(h['macro_f1_int8'])}"]]
    rows += [["top-1 agreement", _pct(h["top1_agreement"])], ["logit cosine", _fmt(h["logit_cosine"], ".5f")],
             ["KL(softmax)", _fmt(h["kl_softmax"])], ["max / mean |logit diff|", f"{_fmt(h['max_abs_diff'])} / {_fmt(h['mean_abs_diff'])}"]]
    if h["embedding_cosine"] is not None:
        rows.append(["embedding cosine (mean / min)", f"{_fmt(h['embedding_cosine'], '.5f')} / {_fmt(h['embedding_cosine_min'], '.5f')}"])
    rows.append(["texts", str(h["rows"])])
    out.append("<h2>Headline</h2>" + _table(["metric", "value"], rows))

    buckets = data["buckets"]
    names = [f"{b['bucket']} (n={b['n']})" for b in buckets]
    out.append("<h2>Per length bucket</h2><p>Token counts before truncation.</p>")
    if h["labelled"]:
        out.append(svg_grouped_bars(names, {"FP32 accuracy": [b["accuracy_fp32"] for b in buckets],
                                            "INT8 accuracy": [b["accuracy_int8"] for b in buckets]},
                                    title="Accuracy per length bucket", y_label="accuracy", y_min=0.0, y_max=1.0))
        out.append(svg_grouped_bars(names, {"accuracy drop (points)": [b["accuracy_drop_points"] for b in buckets]},
                                    title="Accuracy drop per length bucket (FP32 − INT8, points)", y_label="points"))
    out.append(svg_grouped_bars(names, {"top-1 agreement": [b["top1_agreement"] for b in buckets],
                                        "embedding cosine": [b["embedding_cosine"] for b in buckets]},
                                title="Agreement with FP32 per length bucket", y_label="agreement / cosine",
                                y_min=min([0.9, *[v for b in buckets for v in (b["top1_agreement"], b["embedding_cosine"]) if v is not None]]),
                                y_max=1.0))
    out.append(_table(["bucket", "n", "acc FP32", "acc INT8", "drop (pts)", "95 % CI (pts)", "agreement", "KL", "emb. cosine"],
                      [[b["bucket"], str(b["n"]), _pct(b["accuracy_fp32"]), _pct(b["accuracy_int8"]),
                        _drop(b["accuracy_drop_points"]), _ci(b), _pct(b["top1_agreement"]), _fmt(b["kl_softmax"]),
                        _fmt(b["embedding_cosine"], ".4f")] for b in buckets]))
    if data["per_class"]:
        out.append("<h2>Per class</h2>" + _table(
            ["class", "support", "precision FP32", "recall FP32", "precision INT8", "recall INT8"],
            [[c["class"], str(c["support"]), _fmt(c["precision_fp32"], ".3f"), _fmt(c["recall_fp32"], ".3f"),
              _fmt(c["precision_int8"], ".3f"), _fmt(c["recall_int8"], ".3f")] for c in data["per_class"]]))
        conf = data["confusion"]
        out.append("<p>Confusion matrix INT8 (rows = truth):</p>" + _table(
            ["truth \\ predicted", *conf["classes"]], [[c, *map(str, r)] for c, r in zip(conf["classes"], conf["int8"])]))
    if data.get("layers"):
        lay = data["layers"]
        q = [r for r in lay["rows"] if r["quantized"]]
        out.append(f"<h2>Per layer</h2><p>First degraded tensor: <b>{html.escape(str(lay['first_degraded'] or 'none'))}</b> "
                   "(SQNR below 20 dB or cosine below 0.99).</p>")
        out.append(svg_line([r["sqnr_db"] for r in q], [r["tensor"] for r in q], title="SQNR of quantized tensors vs FP32 (dB)",
                            y_label="SQNR dB", threshold=20.0))
        out.append(svg_line([r["saturation_rate"].get("engine") for r in q], [r["tensor"] for r in q],
                            title="Saturation rate (share of |x| above the engine amax)", y_label="share"))
        methods = sorted({m for r in lay["rows"] for m in r["amax"]})
        worst = sorted(q, key=lambda r: (r["sqnr_db"] if r["sqnr_db"] is not None else -1e9))[:layers]
        out.append(f"<p>The {len(worst)} quantized tensors with the lowest SQNR:</p>" + _table(
            ["#", "tensor", "SQNR dB", "cosine", "local SQNR dB", "FP32 absmax", "FP32 p99.99",
             *[f"amax {m}" for m in methods], *[f"sat. {m}" for m in methods]],
            [[str(r["order"]), r["tensor"], _fmt(r["sqnr_db"], ".1f"), _fmt(r["cosine"], ".5f"), _fmt(r["local_sqnr_db"], ".1f"),
              _fmt(r["fp32_absmax"]), _fmt(r["fp32_p9999"]), *[_fmt(r["amax"].get(m)) for m in methods],
              *[_fmt(r["saturation_rate"].get(m), ".2e") for m in methods]] for r in worst]))
    if data["comparison"]:
        out.append("<h2>Runs compared</h2>" + _table(
            ["run", "calibrator", "placement", "excl.", "acc INT8", "drop (pts)", "95 % CI", "agreement", "emb. cosine", "worst bucket"],
            [[r["run"], _fmt(r["calibrator"]), _fmt(r["placement"]), str(r["exclusions"]), _pct(r["accuracy_int8"]),
              _drop(r["accuracy_drop_points"]), _ci(r), _pct(r["top1_agreement"]), _fmt(r["embedding_cosine"], ".4f"),
              (r["worst_bucket"] or {}).get("bucket", "–")] for r in data["comparison"]]))
    if data.get("sensitivity"):
        s = data["sensitivity"]
        cls = "pass" if s["passes"] else "fail"
        out.append(f'<h2>Sensitivity and fallback</h2><p class="{cls}">{html.escape(s["note"])}</p>'
                   f"<p>Budget: drop ≤ {s['budget']['max_drop']} points, agreement ≥ {s['budget']['min_agreement']}; "
                   f"{s['evaluations_used']} of {s['budget']['max_evaluations']} evaluations; ranking: {html.escape(s['ranking_method'])}.</p>")
        out.append("<p>Recommended exclusions (keep in float):</p><ul>" +
                   ("".join(f"<li><code>{html.escape(n)}</code></li>" for n in s["exclude_nodes"]) or "<li>none</li>") + "</ul>")
    b, env = data["build"], data["environment"]
    prov = [["model sha256", data["model"]["sha256"]],
            ["dataset", f"{data['dataset']['source']} [{data['dataset'].get('split')}] fingerprint {data['dataset']['fingerprint']}"],
            ["calibration", _fmt((data.get("calibration") or {}).get("calibration"))],
            ["calibration set", _calibset_text(data)],
            ["calibrator", _fmt(b["calibrator"])], ["placement", _fmt(_placement_text(b["placement"]))],
            ["exclusions", ", ".join(b["exclusions"]) or "none"],
            ["engine", f"{_fmt(b['engine_name'])} ({_fmt(b['backend'])})"], ["Q/DQ sha256", _fmt(b["qdq_sha256"])],
            ["libraries", ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)],
            ["machine", f"{env['machine']['platform']}, {env['machine']['cpu_count']} CPUs, Python {env['python']}"],
            ["created", data["created"]]]
    out.append("<h2>Provenance</h2>" + _table(["what", "value"], prov))
    out.append("</body></html>")
    return "\n".join(out)


@dataclass(frozen=True)
class Report:
    """A saved report: ``report.json`` (schema calib.report/1), ``report.html``, ``report.md``."""

    dir: Path
    data: dict

    @classmethod
    def load(cls, directory: str | Path) -> Report:
        directory = Path(directory)
        path = directory / "report.json" if directory.is_dir() else directory
        data = read_artifact_json(path, SCHEMA, "give a report run folder or file")
        return cls(path.parent, data)

    def summary(self) -> dict:
        h = self.data["headline"]
        return {k: h.get(k) for k in ("accuracy_drop_points", "top1_agreement", "embedding_cosine", "labelled")}


def make_report(config: ReportConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> Report:
    """Write ``report.json``, ``report.html`` and ``report.md`` for the given runs."""
    if not config.evaluations:
        raise InputError("a report needs at least one validate run")
    evaluations = [Evaluation.load(e) for e in config.evaluations]
    sensitivity = None
    if config.sensitivity:
        from calib.sensitivity import SensitivityResult

        sens = SensitivityResult.load(config.sensitivity)
        check_same_model(evaluations[0].data["model"]["sha256"], sens.data["model"]["sha256"],
                         f"sensitivity run {config.sensitivity}")
        sensitivity = sens.data
    data = report_data(evaluations, sensitivity, title=config.title)
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "report.json", data)
    atomic_write_text(out_dir / "report.md", render_markdown(data, config.layers))
    atomic_write_text(out_dir / "report.html", render_html(data, config.layers))
    if progress is not None:
        progress(1.0, "report written")
    return Report.load(out_dir)
