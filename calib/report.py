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
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from calib import formatting as fmt
from calib.errors import InputError
from calib.io import atomic_write_json, atomic_write_text, read_artifact_json
from calib.layers import DEGRADED_SQNR_DB, ENGINE_RANGE, LayerReport
from calib.model import check_same_model
from calib.ranges import entropy_over_minmax
from calib.sensitivity import SensitivityResult
from calib.validate import Evaluation
from calib.verdict import (
    MIN_BUCKET_TEXTS,
    Recommendation,
    ReleaseBudget,
    Verdict,
    drop_interval_points,
    gate_command,
    judge,
    recommend,
    resolution_warning,
)
from calib.workspace import ProgressFn

SCHEMA = "calib.report/1"
REPORT_JSON, REPORT_MD, REPORT_HTML = "report.json", "report.md", "report.html"
REPORT_FILES = ((REPORT_HTML, "text/html"), (REPORT_MD, "text/markdown"), (REPORT_JSON, "application/json"))
"""What a report run writes (file, MIME type), as the app offers them for download."""
DROP_CONVENTION = ("drop = FP32 − INT8 accuracy in points (positive: INT8 is worse); its 95 % interval is the "
                   "paired bootstrap interval of the same difference")
LIBRARIES = ("calib", "numpy", "onnx", "onnxruntime", "scikit-learn", "datasets", "tokenizers",
             "transformers", "tensorrt")


@dataclass(frozen=True)
class ReportConfig:
    """``evaluations``: validate run folders, the release candidate first. ``sensitivity``: an optional
    sensitivity run folder. ``layers``: how many per-layer rows to list (worst SQNR first).
    ``budget``: the release budget the verdict is judged against (recorded in the report)."""

    evaluations: tuple[str, ...]
    sensitivity: str | None = None
    title: str = "INT8 accuracy report"
    layers: int = 25
    budget: ReleaseBudget | None = None  # None: calib.verdict.default_budget for the release candidate


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


def _worst_bucket(ev: Evaluation) -> dict | None:
    return ev.metrics.worst_bucket()


def compare_evaluations(evaluations: Sequence[Evaluation | str | Path]) -> list[dict]:
    """One row per evaluation: calibrator, placement, exclusions, calibration set, headline metrics,
    the worst length bucket and the first degraded tensor. All must be of the same model."""
    evs = [e if isinstance(e, Evaluation) else Evaluation.load(e) for e in evaluations]
    if not evs:
        raise InputError("no evaluations to compare; give at least one validate run")
    ref = evs[0].model.sha256
    rows = []
    for ev in evs:
        check_same_model(ref, ev.model.sha256, f"evaluation {ev.dir}")
        m = ev.metrics
        engine = ev.engine
        rows.append({
            "name": " · ".join(str(p) for p in (ev.calibrator, engine.placement_preset,
                                                 f"{len(engine.excluded_nodes)} in float" if engine.excluded_nodes else None,
                                                 f"{m.n:,} texts") if p),
            "run": _run_name(ev.dir),
            "engine": engine.path,
            "calibrator": ev.calibrator,
            "placement": engine.placement_preset,
            "excluded_nodes": len(engine.excluded_nodes),
            "calibration_set": ev.calibration.describe_set() if ev.calibration is not None else None,
            "dataset_fingerprint": ev.dataset.fingerprint,
            "rows": m.n,
            "labelled": ev.labelled,
            "accuracy_fp32": m.accuracy_fp32,
            "accuracy_int8": m.accuracy_int8,
            "accuracy_drop_points": m.accuracy_drop_points,
            **drop_interval_points(m.accuracy_diff_ci),
            "top1_agreement": m.top1_agreement,
            "kl_softmax": m.kl_softmax,
            "embedding_cosine": m.embedding_cosine,
            "worst_bucket": _worst_bucket(ev),
            "first_degraded_tensor": ev.first_degraded_tensor,
        })
    return rows


def _run_name(folder: Path) -> str:
    """A run folder's name; an evaluation inside a comparison run is named ``<run>/<method>``."""
    if folder.name == "evaluation" and (folder.parent.parent / "comparison.json").is_file():
        return f"{folder.parent.parent.name}/{folder.parent.name}"
    return folder.name


def _calibration_recipe(ev: Evaluation) -> dict | None:
    """What the calibration set was made of and how it was calibrated, when the evaluation knows it."""
    cal = ev.calibration
    if cal is None:
        build_cal = ev.engine.calibration
        return {"calibration": build_cal} if build_cal else None
    return {"calibration": cal.folder, "methods": list(cal.methods), "calibration_set": dict(cal.calibration_set) or None,
            "calibration_set_summary": cal.calibration_set_summary, "config": cal.config}


def layer_rows(layers: LayerReport | Mapping | None) -> list[dict]:
    """Per-tensor rows of a per-layer analysis (:meth:`calib.layers.LayerTensor.row`): error (SQNR, cosine,
    local SQNR), FP32 range and, per calibrator (and ``engine``: what the build used), amax, clipped share
    and utilisation."""
    if not layers:
        return []
    report = layers if isinstance(layers, LayerReport) else LayerReport(layers)
    return [t.row() for t in report.tensors]


def layer_methods(rows: Sequence[Mapping]) -> list[str]:
    """The calibrators whose amax the layer rows show (sorted), without the build's own range."""
    return sorted({m for r in rows for m in r["amax"] if m != ENGINE_RANGE})


def report_data(evaluations: Sequence[Evaluation], sensitivity: SensitivityResult | None = None, *,
                title: str = "INT8 accuracy report", budget: ReleaseBudget | None = None) -> dict:
    """The report as plain data (the JSON form; HTML and Markdown are rendered from it)."""
    ev = evaluations[0]
    headline = ev.headline()
    budget = budget if budget is not None else ev.default_budget()
    verdict = judge(headline, budget)
    metrics = ev.metrics
    engine = ev.engine
    buckets = [{
        "bucket": b.bucket, "n": b.n, "few_texts": b.few_texts,
        "accuracy_fp32": b.accuracy_fp32, "accuracy_int8": b.accuracy_int8,
        "accuracy_drop_points": b.accuracy_drop_points, **drop_interval_points(b.accuracy_diff_ci),
        "top1_agreement": b.top1_agreement, "kl_softmax": b.kl_softmax,
        "embedding_cosine": b.embedding_cosine, "embedding_cosine_p1": b.embedding_cosine_p1,
        "neighbour_recall_at_k": b.neighbour_recall_at_k, "similarity_spearman": b.similarity_spearman,
    } for b in metrics.bucket_figures]
    classes = list(ev.model.classes)
    per_class = metrics.per_class(classes) if ev.labelled else []
    sens = None
    if sensitivity is not None:
        rec = sensitivity.recommended
        sens = {"passes": rec.passes, "note": rec.note, "exclude_nodes": list(rec.exclude_nodes),
                "units": list(rec.units), "evaluations_used": sensitivity.evaluations_used,
                "budget": sensitivity.budget_record, "granularity": sensitivity.granularity,
                "ranking_method": sensitivity.ranking_method, "baseline": dict(sensitivity.baseline.record),
                "recommended": {"top1_agreement": rec.top1_agreement, "accuracy_drop_points": rec.accuracy_drop_points,
                                "embedding_cosine": rec.embedding_cosine, "kl_softmax": rec.kl_softmax},
                "ranking": [r.to_dict() for r in sensitivity.ranking[:20]],
                "placement": sensitivity.placement_record}
    comparison = compare_evaluations(evaluations) if len(evaluations) > 1 else []
    for row in comparison:
        row["verdict"] = judge(row, budget).status
    recommendation = recommend(comparison, budget).to_dict() if comparison else None
    return {
        "schema": SCHEMA,
        "title": title,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "verdict": verdict.to_dict(),
        "budget": budget.to_dict(),
        "gate_command": gate_command(REPORT_JSON, budget),
        "drop_convention": DROP_CONVENTION,
        "resolution_warning": resolution_warning(headline, budget),
        "min_bucket_texts": MIN_BUCKET_TEXTS,
        "model": {"sha256": ev.model.sha256, "path": ev.model.path, "classes": classes},
        "dataset": dict(ev.dataset.record),
        "calibration": _calibration_recipe(ev),
        "build": {"engine": engine.path, "backend": engine.backend, "engine_name": engine.name,
                  "qdq_sha256": engine.qdq_sha256, "calibrator": ev.calibrator, "placement": engine.placement,
                  "excluded_nodes": engine.excluded_node_names},
        "evaluation": str(ev.dir),
        "headline": headline,
        "buckets": buckets,
        "per_class": per_class,
        "confusion": {"classes": classes, "fp32": metrics.confusion("fp32"), "int8": metrics.confusion("int8")},
        "layers": {"first_degraded": ev.layer_report.first_degraded,
                   "rows": layer_rows(ev.layer_report)} if ev.layer_report is not None else None,
        "comparison": comparison,
        "recommendation": recommendation,
        "sensitivity": sens,
        "environment": environment(),
    }


# -- rendering: one list of sections, rendered as Markdown and as HTML (same content) --------------


def _fmt(v, spec: str = ".4g", none: str = fmt.MISSING) -> str:
    """A table cell through the one number formatter (``.Nf``: N decimals, ``.Ng``: N significant digits)."""
    if v is None:
        return none
    if isinstance(v, float):
        if spec.endswith("f") and spec[1:-1].isdigit():
            return fmt.ratio(v, int(spec[1:-1]))
        if spec.endswith("g") and spec[1:-1].isdigit():
            return fmt.number(v, int(spec[1:-1]))
        return format(v, spec)
    return str(v)


def _pct(v) -> str:
    return fmt.percent(v)


def _ci(row: dict) -> str:
    """The drop's 95 % interval, FP32 − INT8 in points (older reports: derived from INT8 − FP32)."""
    low, high = row.get("drop_ci_low_points"), row.get("drop_ci_high_points")
    if low is None and row.get("ci_low_points") is not None:
        low, high = -row["ci_high_points"], -row["ci_low_points"]
    if low is None or high is None:
        return "no CI (bootstrap 0)" if row.get("ci_resamples") == 0 else "–"
    return f"[{_drop(low)}, {_drop(high)}]"


def _drop(v) -> str:
    """Signed points with two decimals; never ``-0.00``."""
    return fmt.points(v, unit=False)


_LAYER_RE = re.compile(r"(?:^|/)(?:encoder/)?(?:layers?|block|h)[._]?(\d+)/", re.IGNORECASE)


def short_tensor_name(name: str, max_chars: int = 32) -> str:
    """A readable tensor name for axes and narrow tables: ``/encoder/layer.3/attention/self/Softmax_output_0``
    → ``L3 attention/self/Softmax``; long names keep their end (the op), prefixed with ``…``."""
    text = re.sub(r"_output_\d+$", "", name).lstrip("/")
    prefix = ""
    m = _LAYER_RE.search("/" + text)
    if m:
        prefix, text = f"L{m.group(1)} ", ("/" + text)[m.end():]
    room = max(8, max_chars - len(prefix))
    if len(text) > room:
        text = "…" + text[-(room - 1):]
    return prefix + text


@dataclass(frozen=True)
class Section:
    """A report section: a heading, paragraphs, an optional table (``muted`` rows shown greyed) and the
    charts the HTML report draws with it (self-contained SVG; Markdown has none)."""

    title: str
    notes: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    muted: tuple[bool, ...] = ()
    charts: tuple[str, ...] = ()
    level: int = 2
    tone: str = ""  # pass | fail | note
    banner: bool = False  # HTML: shown as a banner in its tone, PASS / FAIL table cells coloured (the verdict)


def _verdict_section(data: dict) -> Section:
    v = data["verdict"]
    rows = tuple((c["label"], f"{c['comparison']} {c['threshold']:g}" + (" pts" if c["unit"] == "pts" else ""),
                  "not measured" if c["value"] is None else (f"{_drop(c['value'])} pts" if c["unit"] == "pts"
                                                             else f"{c['value']:.4f}"),
                  c["status"]) for c in v["criteria"])
    notes = [v["reason"], (f"Release budget: {ReleaseBudget.from_dict(data['budget']).describe()}. "
             f"Reproduce in a pipeline (in the report's folder): `{data['gate_command']}`")]
    if data.get("resolution_warning"):
        notes.append("Warning: " + data["resolution_warning"] + ".")
    return Section(f"Verdict: {v['status']}", tuple(notes), ("criterion", "threshold", "value", "status"), rows,
                   tone="pass" if v["passed"] else "fail", banner=True)


def _embedding_headline_section(data: dict) -> Section:
    h = data["headline"]
    rows = [("embedding cosine mean / p1 / min",
             (f"{_fmt(h['embedding_cosine'], '.5f')} / {_fmt(h['embedding_cosine_p1'], '.5f')} / "
             f"{_fmt(h['embedding_cosine_min'], '.5f')}")),
            ("nearest-neighbour recall@1", _pct(h["neighbour_recall_at_1"])),
            (f"nearest-neighbour recall@{h['neighbour_k']}", _pct(h["neighbour_recall_at_k"])),
            ("similarity Spearman (per text)", _fmt(h["similarity_spearman"], ".4f"))]
    if h.get("knn_accuracy_fp32") is not None:
        rows += [("k-NN accuracy FP32 / INT8", f"{_pct(h['knn_accuracy_fp32'])} / {_pct(h['knn_accuracy_int8'])}"),
                 ("k-NN accuracy drop (FP32 − INT8, points)", _drop(h["knn_accuracy_drop_points"]))]
    rows.append(("texts", f"{h['rows']:,}"))
    notes = ["Embedding model: FP32 vs INT8 embeddings of the evaluated texts (no logits, so no agreement or KL); "
             "neighbours and similarities are taken within the evaluated texts"
             + ("; k-NN accuracy from the labels." if h.get("knn_accuracy_fp32") is not None else ".")]
    return Section("Headline", tuple(notes), ("metric", "value"), tuple(rows))


def _headline_section(data: dict) -> Section:
    h = data["headline"]
    if h.get("model_kind") == "embedding":
        return _embedding_headline_section(data)
    rows: list[tuple[str, str]] = []
    if h["labelled"]:
        rows += [("accuracy FP32", _pct(h["accuracy_fp32"])), ("accuracy INT8", _pct(h["accuracy_int8"])),
                 ("accuracy drop (FP32 − INT8, points)", _drop(h["accuracy_drop_points"])),
                 ("drop, 95 % interval (FP32 − INT8, points)", _ci(h)),
                 ("macro-F1 FP32 / INT8", f"{_fmt(h['macro_f1_fp32'], '.4f')} / {_fmt(h['macro_f1_int8'], '.4f')}")]
    rows += [("top-1 agreement", _pct(h["top1_agreement"])), ("logit cosine", _fmt(h["logit_cosine"], ".5f")),
             ("KL(softmax FP32 ‖ INT8)", _fmt(h["kl_softmax"], ".3g")),
             ("max / mean |logit diff|", f"{_fmt(h['max_abs_diff'], '.3g')} / {_fmt(h['mean_abs_diff'], '.3g')}")]
    if h["embedding_cosine"] is not None:
        rows.append(("embedding cosine (mean / min)",
                     f"{_fmt(h['embedding_cosine'], '.5f')} / {_fmt(h['embedding_cosine_min'], '.5f')}"))
    rows.append(("texts", f"{h['rows']:,}"))
    notes = [f"Agreement-only report: {h['note']}"] if not h["labelled"] else []
    notes.append("Sign convention: " + data.get("drop_convention", DROP_CONVENTION) + ".")
    return Section("Headline", tuple(notes), ("metric", "value"), tuple(rows))


def _comparison_section(data: dict) -> Section | None:
    rows = data.get("comparison") or []
    if not rows:
        return None
    rec = data.get("recommendation") or {}
    notes = []
    if rec:
        notes.append(Recommendation(**rec).sentence)
        if rec.get("default_note"):
            notes.append(rec["default_note"] + ".")
    notes.append("The first row is the release candidate the verdict above is about; each row is judged against "
                 "the same budget.")
    table = tuple((r.get("name") or r["run"], r.get("verdict", "–"), _pct(r["accuracy_int8"]),
                   _drop(r["accuracy_drop_points"]), _ci(r), _pct(r["top1_agreement"]),
                   _fmt(r["embedding_cosine"], ".4f"), (r["worst_bucket"] or {}).get("bucket", "–"), r["run"])
                  for r in rows)
    return Section("Runs compared", tuple(notes), ("what", "verdict", "acc INT8", "drop (pts)", "drop 95 % CI (pts)",
                                                   "agreement", "emb. cosine", "worst bucket", "run"), table,
                   charts=_comparison_charts(data))


def _bucket_section(data: dict) -> Section:
    h, few = data["headline"], data.get("min_bucket_texts", MIN_BUCKET_TEXTS)
    buckets = data["buckets"]

    def name(b: dict) -> str:
        return f"{b['bucket']} (few texts)" if b["n"] < few else b["bucket"]

    if h.get("model_kind") == "embedding":
        headers = ("bucket", "n", "emb. cosine", "cosine p1", f"recall@{h['neighbour_k']}", "similarity Spearman")
        rows = tuple((name(b), str(b["n"]), _fmt(b["embedding_cosine"], ".4f"), _fmt(b["embedding_cosine_p1"], ".4f"),
                      _pct(b["neighbour_recall_at_k"]), _fmt(b["similarity_spearman"], ".4f")) for b in buckets)
    elif h["labelled"]:
        headers = ("bucket", "n", "acc FP32", "acc INT8", "drop (pts)", "drop 95 % CI (pts)", "agreement", "KL",
                   "emb. cosine")
        rows = tuple((name(b), str(b["n"]), _pct(b["accuracy_fp32"]), _pct(b["accuracy_int8"]),
                      _drop(b["accuracy_drop_points"]), _ci(b), _pct(b["top1_agreement"]), _fmt(b["kl_softmax"], ".3g"),
                      _fmt(b["embedding_cosine"], ".4f")) for b in buckets)
    else:
        headers = ("bucket", "n", "agreement", "KL", "emb. cosine")
        rows = tuple((name(b), str(b["n"]), _pct(b["top1_agreement"]), _fmt(b["kl_softmax"], ".3g"),
                      _fmt(b["embedding_cosine"], ".4f")) for b in buckets)
    notes = ("Token counts before truncation. Drop and interval: FP32 − INT8 in points.",
             f"Buckets with fewer than {few} texts are marked “few texts” (greyed in HTML): their figures are noise.")
    return Section("Per length bucket", notes, headers, rows, tuple(b["n"] < few for b in buckets),
                   charts=_bucket_charts(data))


def _class_sections(data: dict) -> list[Section]:
    if not data["per_class"]:
        return []
    out = [Section("Per class", (), ("class", "support", "precision FP32", "recall FP32", "precision INT8", "recall INT8"),
                   tuple((c["class"], str(c["support"]), _fmt(c["precision_fp32"], ".3f"), _fmt(c["recall_fp32"], ".3f"),
                          _fmt(c["precision_int8"], ".3f"), _fmt(c["recall_int8"], ".3f")) for c in data["per_class"]))]
    conf = data["confusion"]
    for kind in ("fp32", "int8"):
        if conf.get(kind):
            out.append(Section(f"Confusion matrix {kind.upper()}", ("Rows: true class; columns: predicted class.",),
                               ("truth \\ predicted", *conf["classes"]),
                               tuple((c, *map(str, r)) for c, r in zip(conf["classes"], conf[kind])), level=3))
    return out


def layer_summary(rows: Sequence[dict], threshold_db: float = DEGRADED_SQNR_DB) -> str:
    """``N of M quantized tensors under 20 dB SQNR`` for per-layer rows (report data or layers.json)."""
    q = [r for r in rows if r.get("quantized")]
    low = [r for r in q if r.get("sqnr_db") is not None and r["sqnr_db"] < threshold_db]
    return f"{len(low)} of {len(q)} quantized tensors under {threshold_db:g} dB SQNR"


def _layer_section(data: dict, layers: int) -> Section | None:
    lay = data.get("layers")
    if not lay:
        return None
    q = [r for r in lay["rows"] if r["quantized"]]
    methods = layer_methods(lay["rows"])
    worst = sorted(q, key=lambda r: (r["sqnr_db"] if r["sqnr_db"] is not None else -1e9))[:layers]
    cut = (f"The {len(worst)} of {len(q)} quantized tensors with the lowest SQNR, worst first (all {len(q)} are in "
           "report.json)." if len(worst) < len(q) else f"All {len(q)} quantized tensors, lowest SQNR first.")
    ratio = "entropy" in methods and "minmax" in methods
    notes = ((f"{layer_summary(lay['rows'])}. First degraded tensor in network order: "
             f"{lay['first_degraded'] or 'none'} (SQNR below {DEGRADED_SQNR_DB:g} dB or cosine below 0.99)."),
             cut + " Clipped: share of |x| above each calibrator's amax on the evaluation texts."
             + (" entropy ÷ minmax: how much smaller the entropy range is." if ratio else ""))
    headers = ("#", "tensor", "SQNR dB", "cosine", "local SQNR dB", "FP32 absmax", "FP32 p99.99", "amax engine",
               *[f"amax {m}" for m in methods], *[f"clipped {m}" for m in methods],
               *(("entropy ÷ minmax",) if ratio else ()))

    def ratio_of(r: dict) -> str:
        ratio = entropy_over_minmax(r["amax"])
        return "–" if ratio is None else _fmt(ratio, ".3f")

    rows = tuple((str(r["order"]), r["tensor"], _fmt(r["sqnr_db"], ".1f"), _fmt(r["cosine"], ".5f"),
                  _fmt(r["local_sqnr_db"], ".1f"), _fmt(r["fp32_absmax"], ".4g"), _fmt(r["fp32_p9999"], ".4g"),
                  _fmt(r["amax"].get(ENGINE_RANGE), ".4g"), *[_fmt(r["amax"].get(m), ".4g") for m in methods],
                  *[_fmt(r["saturation_rate"].get(m), ".2e") for m in methods], *((ratio_of(r),) if ratio else ()))
                 for r in worst)
    return Section("Per layer", notes, headers, rows, charts=_layer_charts(data))


def _sensitivity_section(data: dict) -> Section | None:
    s = data.get("sensitivity")
    if not s:
        return None
    stated = s["budget"].get("statement") or (f"drop ≤ {s['budget']['max_drop']} points, agreement ≥ "
                                              f"{s['budget']['min_agreement']}")
    notes = (s["note"], (f"Budget: {stated}; "
             f"{s['evaluations_used']} of {s['budget']['max_evaluations']} evaluations; ranking: {s['ranking_method']}."),
             "Recommended exclusions (keep in float):")
    return Section("Sensitivity and fallback", notes, ("node",), tuple((n,) for n in s["exclude_nodes"]) or (("none",),),
                   tone="pass" if s["passes"] else "fail")


def _dataset_text(d: dict) -> str:
    """Source as given, the resolved path and the split actually used (older evaluations: as given),
    the rows evaluated of the split, and the fingerprint."""
    split = d.get("split_used", d.get("split"))
    resolved = d.get("resolved")
    where = d["source"] + (f" ({resolved})" if resolved and resolved != d["source"] else "")
    rows = (f"; {d['rows_evaluated']:,} of {d['rows_total']:,} rows" if d.get("rows_total") is not None
            and d.get("rows_evaluated") is not None else "")
    return f"{where} split {split or '(none)'}{rows}; fingerprint {d['fingerprint']}"


def _provenance_section(data: dict) -> Section:
    b, env = data["build"], data["environment"]
    rows = (("model sha256", data["model"]["sha256"]),
            ("dataset", _dataset_text(data["dataset"])),
            ("calibration", _fmt((data.get("calibration") or {}).get("calibration"))),
            ("calibration set", _calibset_text(data)),
            ("calibrator", _fmt(b["calibrator"])), ("placement", _fmt(_placement_text(b["placement"]))),
            ("kept in float", ", ".join(b.get("excluded_nodes", b.get("exclusions", ()))) or "none"),
            ("engine", f"{_fmt(b['engine_name'])} ({_fmt(b['backend'])})"), ("Q/DQ sha256", _fmt(b["qdq_sha256"])),
            ("libraries", ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)),
            ("machine", f"{env['machine']['platform']}, {env['machine']['cpu_count']} CPUs, Python {env['python']}"),
            ("created", data["created"]))
    return Section("Provenance", (), ("what", "value"), rows)


def report_sections(data: dict, layers: int = 25) -> list[Section]:
    """Everything a report shows, in order; Markdown and HTML render exactly these sections."""
    sections = [_verdict_section(data) if data.get("verdict") else None, _headline_section(data),
                _comparison_section(data), _bucket_section(data), *_class_sections(data),
                _layer_section(data, layers), _sensitivity_section(data), _provenance_section(data)]
    return [s for s in sections if s is not None]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(data: dict, layers: int = 25) -> str:
    """Markdown for a pull request: the same sections as the HTML report, without the charts."""
    lines = [f"# {data['title']}", ""]
    for sec in report_sections(data, layers):
        lines += [f"{'#' * sec.level} {sec.title}", ""]
        for note in sec.notes:
            lines += [f"**{note}**" if sec.tone and note == sec.notes[0] else note, ""]
        if sec.headers:
            numeric = [all(_looks_numeric(r[i]) for r in sec.rows) and i > 0 for i in range(len(sec.headers))]
            lines.append("| " + " | ".join(_md_cell(h) for h in sec.headers) + " |")
            lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in sec.rows]
            lines.append("")
    return "\n".join(lines)


def _looks_numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[+\-−]?[\d.,]+(?:e[+\-]?\d+)?(?: ?%| pts)?|–", str(text)))


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
# One colour per calibrator, the same in the app's charts and in the report's.
METHOD_COLORS = {"entropy": "#4c78a8", "minmax": "#f58518", "percentile": "#54a24b", "mse": "#b279a2",
                 "engine": "#222222", "fp32 absmax": "#9aa5b1"}
_SPARE_COLORS = ("#72b7b2", "#eeca3b", "#9d755d", "#ff9da6", "#bab0ac")


def method_colour(name: str) -> str:
    """The colour of a calibrator (or ``engine`` / ``fp32 absmax``); other names get a spare colour."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    return _SPARE_COLORS[sum(map(ord, name)) % len(_SPARE_COLORS)]


def svg_grouped_bars(categories: Sequence[str], series: dict[str, Sequence[float | None]], *, title: str,
                     y_label: str, y_min: float | None = None, y_max: float | None = None,
                     width: int = 640, height: int = 260, threshold: float | None = None,
                     threshold_label: str = "") -> str:
    """Grouped bar chart as an inline ``<svg>``; ``None`` values leave a gap; a value at the axis floor
    still shows a sliver; an optional labelled threshold line."""
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
            h = max(abs(base - top_y), 1.5 if v != 0 else 0.0)  # a value at the floor is not an empty slot
            parts.append(f'<rect x="{gx + si * bar:.1f}" y="{min(top_y, base - h if top_y <= base else base):.1f}" '
                         f'width="{bar * 0.92:.1f}" height="{h:.1f}" fill="{_COLORS[si % len(_COLORS)]}">'
                         f'<title>{html.escape(name)} {html.escape(cat)}: {v:.4g}</title></rect>')
        parts.append(f'<text x="{left + ci * group + group / 2:.1f}" y="{top + ph + 14}" font-size="10" '
                     f'text-anchor="middle">{html.escape(cat)}</text>')
    if threshold is not None:
        ty = y(threshold)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e45756" '
                     f'stroke-dasharray="4 3"/><text x="{left + pw - 2}" y="{ty - 3:.1f}" font-size="10" '
                     f'text-anchor="end" fill="#e45756">{html.escape(threshold_label or f"{threshold:g}")}</text>')
    for si, name in enumerate(series):
        lx = left + si * 120
        parts.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{_COLORS[si % len(_COLORS)]}"/>'
                     f'<text x="{lx + 14}" y="{height - 5}" font-size="10">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_line(points: Sequence[float | None] | dict[str, Sequence[float | None]], labels: Sequence[str], *,
             title: str, y_label: str, threshold: float | None = None, threshold_label: str = "",
             width: int = 900, height: int = 380) -> str:
    """Line chart over tensors in network order, tensor names (``labels``) on the x axis; points at
    ``None`` are skipped; optional labelled threshold line. ``points`` may be ``{series: values}``
    (e.g. one line per calibrator, in its :func:`method_colour`, with a legend)."""
    series = dict(points) if isinstance(points, dict) else {"": list(points)}
    points = next(iter(series.values()), [])
    values = [v for vs in series.values() for v in vs if v is not None]
    lo = min([*values, threshold if threshold is not None else min(values or [0.0])]) if values else 0.0
    hi = max([*values, threshold if threshold is not None else max(values or [1.0])]) if values else 1.0
    if hi <= lo:
        hi = lo + 1.0
    left, right, top, bottom = 56, 12, 28, 140
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
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e45756" stroke-dasharray="4 3"/>'
                     f'<text x="{left + pw - 2}" y="{ty - 3:.1f}" font-size="10" text-anchor="end" fill="#e45756">'
                     f'{html.escape(threshold_label or f"{threshold:g}")}</text>')
    for k, (name, vs) in enumerate(series.items()):
        colour = method_colour(name) if name else _COLORS[0]
        path = " ".join(f"{'M' if j == 0 else 'L'}{x:.1f},{y:.1f}"
                        for j, (x, y) in enumerate(xy(i, v) for i, v in enumerate(vs) if v is not None))
        if path:
            parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for i, v in enumerate(vs):
            if v is not None:
                x, y = xy(i, v)
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}">'
                             f'<title>{html.escape(name + " " if name else "")}{html.escape(labels[i])}: {v:.4g}'
                             f'</title></circle>')
        if name:
            lx = left + 8 + k * 110
            parts.append(f'<rect x="{lx}" y="{top + 2}" width="10" height="10" fill="{colour}"/>'
                         f'<text x="{lx + 14}" y="{top + 11}" font-size="10">{html.escape(name)}</text>')
    step = max(1, int(np.ceil(len(points) / 60)))  # at most ~60 names, each readable
    for i in range(0, len(points), step):
        x, _ = xy(i, lo)
        yb = top + ph + 6
        parts.append(f'<text x="{x:.1f}" y="{yb:.1f}" font-size="8" text-anchor="end" '
                     f'transform="rotate(-60 {x:.1f} {yb:.1f})">{html.escape(labels[i])}</text>')
    parts.append(f'<text x="{left}" y="{height - 4}" font-size="10">network order →'
                 + ("" if step == 1 else f" (every {step}th name shown)") + "</text></svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], muted: Sequence[bool] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(("<tr class=\"muted\">" if i < len(muted) and muted[i] else "<tr>")
                   + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for i, r in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{background:#fff5d6;border-left:4px solid #f5b800;padding:.5em 1em}code{font-size:12px}svg{display:block;margin:1em 0}
.pass{color:#2a7a2a}.fail{color:#b00020}tr.muted td{color:#999;background:#fafafa}
.banner{padding:.6em 1em;border-radius:4px;margin:1em 0}.banner.pass{background:#e6f4e6;border-left:6px solid #2a7a2a}
.banner.fail{background:#fdecee;border-left:6px solid #b00020}.banner h2{margin:.2em 0}
td.PASS{color:#2a7a2a;font-weight:bold}td.FAIL{color:#b00020;font-weight:bold}"""


def _bucket_charts(data: dict) -> tuple[str, ...]:
    """Per length bucket: an embedding model's cosine and recall; else accuracy and its drop (labelled data)
    and agreement."""
    h = data["headline"]
    buckets = data["buckets"]
    names = [f"{b['bucket']} (n={b['n']})" for b in buckets]
    out = []
    if h.get("model_kind") == "embedding":
        series = {"embedding cosine": [b["embedding_cosine"] for b in buckets],
                  f"recall@{h['neighbour_k']}": [b["neighbour_recall_at_k"] for b in buckets]}
        values = [v for vs in series.values() for v in vs if v is not None]
        return (svg_grouped_bars(names, series, title="INT8 embeddings against FP32 per length bucket",
                                 y_label="cosine / recall", y_min=padded_floor(values), y_max=1.0),)
    if h["labelled"]:
        out.append(svg_grouped_bars(names, {"FP32 accuracy": [b["accuracy_fp32"] for b in buckets],
                                            "INT8 accuracy": [b["accuracy_int8"] for b in buckets]},
                                    title="Accuracy per length bucket", y_label="accuracy", y_min=0.0, y_max=1.0))
        out.append(svg_grouped_bars(names, {"accuracy drop (points)": [b["accuracy_drop_points"] for b in buckets]},
                                    title="Accuracy drop per length bucket (FP32 − INT8, points)", y_label="points"))
    values = [v for b in buckets for v in (b["top1_agreement"], b["embedding_cosine"]) if v is not None]
    out.append(svg_grouped_bars(names, {"top-1 agreement": [b["top1_agreement"] for b in buckets],
                                        "embedding cosine": [b["embedding_cosine"] for b in buckets]},
                                title="Agreement with FP32 per length bucket", y_label="agreement / cosine",
                                y_min=padded_floor(values), y_max=1.0))
    return tuple(out)


def _layer_charts(data: dict) -> tuple[str, ...]:
    """Per quantized tensor: SQNR against FP32, and each calibrator's clipped share."""
    q = [r for r in data["layers"]["rows"] if r["quantized"]]
    names = [short_tensor_name(r["tensor"]) for r in q]
    return (svg_line([r["sqnr_db"] for r in q], names, title="SQNR of quantized tensors vs FP32 (dB)",
                     y_label="SQNR dB", threshold=DEGRADED_SQNR_DB,
                     threshold_label=f"{DEGRADED_SQNR_DB:g} dB: degraded below"),
            svg_line({m: [r["saturation_rate"].get(m) for r in q]
                      for m in sorted({m for r in q for m in r["saturation_rate"]}) if m != ENGINE_RANGE} or
                     {ENGINE_RANGE: [r["saturation_rate"].get(ENGINE_RANGE) for r in q]}, names,
                     title="Clipped share per calibrator (|x| above its amax on the evaluation texts)",
                     y_label="share"))


def _comparison_charts(data: dict) -> tuple[str, ...]:
    """Agreement (and embedding cosine) per compared run, with the budget's minimum agreement."""
    rows = data["comparison"]
    names = [f"{r['calibrator'] or r['run']}" for r in rows]
    values = [v for r in rows for v in (r["top1_agreement"], r["embedding_cosine"]) if v is not None]
    series = {"top-1 agreement": [r["top1_agreement"] for r in rows]}
    if any(r["embedding_cosine"] is not None for r in rows):
        series["embedding cosine"] = [r["embedding_cosine"] for r in rows]
    budget = data.get("budget") or {}
    return (svg_grouped_bars(names, series, title="Agreement with FP32 per run", y_label="agreement / cosine",
                             y_min=padded_floor([*values, *(v for v in (budget.get("min_agreement"),) if v)]),
                             y_max=1.0, threshold=budget.get("min_agreement"),
                             threshold_label=f"min agreement {budget.get('min_agreement')}"),)


def padded_floor(values: Sequence[float]) -> float:
    """A y-axis floor below the smallest value, so the smallest bar keeps a visible height."""
    if not values:
        return 0.0
    low = min(values)
    return max(0.0, low - max(0.02, 0.25 * (1.0 - low)))


def render_html(data: dict, layers: int = 25) -> str:
    """A self-contained HTML page: inline CSS and SVG, no scripts, no external references; the same
    sections as the Markdown report, plus charts."""
    out = [(f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(data['title'])}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(data['title'])}</h1>")]
    for sec in report_sections(data, layers):
        tag = f"h{sec.level}"
        notes = "".join(f"<p>{_inline_code(n)}</p>" for n in sec.notes)
        table = ""
        if sec.headers:
            table = _table(sec.headers, sec.rows, sec.muted)
            if sec.banner:  # colour the status cells
                for status in ("PASS", "FAIL"):
                    table = table.replace(f"<td>{status}</td>", f'<td class="{status}">{status}</td>')
        charts = "".join(sec.charts)
        if sec.banner:
            out.append(f'<div class="banner {sec.tone}"><{tag}>{html.escape(sec.title)}</{tag}>{notes}{table}</div>')
        else:
            cls = f' class="{sec.tone}"' if sec.tone else ""
            out.append(f"<{tag}{cls}>{html.escape(sec.title)}</{tag}>{notes}{charts}{table}")
    out.append("</body></html>")
    return "\n".join(out)


def _inline_code(text: str) -> str:
    """Escape ``text``; spans between backticks become ``<code>``."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


@dataclass(frozen=True)
class Report:
    """A saved report: ``report.json`` (schema calib.report/1), ``report.html``, ``report.md``."""

    dir: Path
    data: dict

    @classmethod
    def load(cls, directory: str | Path) -> Report:
        directory = Path(directory)
        path = directory / REPORT_JSON if directory.is_dir() else directory
        data = read_artifact_json(path, SCHEMA, "give a report run folder or file")
        return cls(path.parent, data)

    @property
    def verdict(self) -> Verdict | None:
        """The verdict the report recorded (None: written before reports carried one)."""
        recorded = self.data.get("verdict")
        return Verdict.from_dict(recorded) if recorded else None

    @property
    def budget(self) -> ReleaseBudget:
        return ReleaseBudget.from_dict(self.data.get("budget"))

    def gate_command(self) -> str:
        """The ``calib gate`` command that checks this report against its budget."""
        return gate_command(str(self.dir / REPORT_JSON), self.budget)

    def summary(self) -> dict:
        h = self.data["headline"]
        verdict = (self.data.get("verdict") or {}).get("status")
        return {"verdict": verdict, **{k: h.get(k) for k in ("accuracy_drop_points", "top1_agreement",
                                                              "embedding_cosine", "labelled")}}


def make_report(config: ReportConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> Report:
    """Write ``report.json``, ``report.html`` and ``report.md`` for the given runs."""
    if not config.evaluations:
        raise InputError("a report needs at least one validate run")
    evaluations = [Evaluation.load(e) for e in config.evaluations]
    sensitivity = None
    if config.sensitivity:
        sensitivity = SensitivityResult.load(config.sensitivity)
        check_same_model(evaluations[0].model.sha256, sensitivity.model_sha256,
                         f"sensitivity run {config.sensitivity}")
    data = report_data(evaluations, sensitivity, title=config.title, budget=config.budget)
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / REPORT_JSON, data)
    atomic_write_text(out_dir / REPORT_MD, render_markdown(data, config.layers))
    atomic_write_text(out_dir / REPORT_HTML, render_html(data, config.layers))
    if progress is not None:
        progress(1.0, "report written")
    return Report.load(out_dir)
