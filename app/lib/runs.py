"""Tables of runs: the history listing and a side-by-side comparison."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from calib import formatting as fmt
from calib.compare import CalibratorComparison
from calib.errors import check_choice
from calib.naming import run_name
from calib.report import REPORT_HTML, REPORT_MD
from calib.validate import Evaluation
from calib.workspace import STATUSES, RunRecord, Workspace
from lib.context import STAGE_TITLES


def flatten(data: Mapping[str, Any], prefix: str = "", max_items: int = 12) -> dict[str, Any]:
    """Nested dicts as ``a.b.c`` keys; long lists are shortened to keep tables readable."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}.", max_items))
        elif isinstance(value, (list, tuple)):
            items = list(value)
            text = ", ".join(str(v) for v in items[:max_items])
            out[name] = f"[{text}{', …' if len(items) > max_items else ''}]"
        else:
            out[name] = value
    return out


# numeric summary figures shown as their own (sortable) columns in the history
METRIC_COLUMNS = {
    "accuracy_drop_points": "drop (pts)", "top1_agreement": "agreement", "embedding_cosine": "emb. cosine",
    "accuracy_int8": "INT8 accuracy", "ks": "KS", "rows": "texts",
}


def filter_runs(runs: Sequence[RunRecord], *, stages: Sequence[str] = (), statuses: Sequence[str] = (),
                tags: Sequence[str] = (), notes: Mapping[str, tuple[str, Sequence[str]]] | None = None) -> list[RunRecord]:
    """The runs of any of ``stages`` with any of ``statuses`` carrying every one of ``tags`` (their
    ``notes``: run id -> (note, tags)); an empty filter keeps everything. Order is kept."""
    notes = notes or {}
    return [r for r in runs if (not stages or r.stage in stages) and (not statuses or r.status in statuses)
            and set(tags) <= set(notes.get(r.id, ("", ()))[1])]


FILTERABLE_STATUSES = tuple(s for s in STATUSES if s != "finishing")
"""The statuses the history filters by (``finishing`` lasts a moment, while a run's files are recorded)."""


def loaded_evaluations(runs: Sequence[RunRecord], lookup: Any = None) -> dict[str, Evaluation]:
    """The evaluations of validation ``runs`` that open, by a chart label (the run's name and the end of its
    id); a run that cannot be read is left out (the comparison table still lists it)."""
    evaluations = {}
    for r in runs:
        try:
            evaluations[f"{run_name(r, lookup, with_id=False)} · {r.id[-6:]}"] = Evaluation.load(r.dir)
        except Exception:  # noqa: BLE001, S112 - any unreadable run: listed, not charted
            continue
    return evaluations


def summary_frame(run: RunRecord) -> pd.DataFrame:
    """A run's summary as (key, value) rows, nested keys flattened and values as table cells."""
    return pd.DataFrame([{"key": k, "value": fmt.cell(v)} for k, v in flatten(run.summary).items()],
                        columns=["key", "value"])


def files_frame(run: RunRecord, changed: Sequence[str] = ()) -> pd.DataFrame:
    """A run's recorded files: path, bytes, the start of the sha256 and whether it is still intact (not among
    ``changed``, :meth:`Workspace.verify`'s answer)."""
    bad = set(changed)
    return pd.DataFrame([{"file": a.path, "bytes": a.bytes, "sha256": a.sha256[:16] + "…", "intact": a.path not in bad}
                         for a in run.artifacts], columns=["file", "bytes", "sha256", "intact"])


def changed_files(ws: Workspace, run: RunRecord) -> list[str]:
    """The files of a finished run that changed since it recorded them (none checked for other runs)."""
    return ws.verify(run.id) if run.status == "finished" else []


def report_view(run: RunRecord) -> tuple[str, Path] | None:
    """How the Reports tab shows a report run: (``html``, its page) or (``markdown``, its Markdown file) when
    only that is left; None when neither is."""
    for kind, name in (("html", REPORT_HTML), ("markdown", REPORT_MD)):
        if (run.dir / name).is_file():
            return kind, run.dir / name
    return None


def all_tags(notes: Mapping[str, tuple[str, Sequence[str]]]) -> list[str]:
    """Every tag the ``notes`` (run id -> (note, tags)) carry, sorted, once each."""
    return sorted({t for _, tags in notes.values() for t in tags})


def report_runs(ws: Workspace, limit: int = 500) -> list[RunRecord]:
    """The finished report runs still on disk, newest first (at most ``limit`` read)."""
    return [r for r in ws.list_runs(stage="report", status="finished", limit=limit) if r.dir.is_dir()]


def stages_present(runs: Sequence[RunRecord]) -> list[str]:
    """The stages these runs were made by, in pipeline order (stages this version does not know last)."""
    order = list(STAGE_TITLES)
    return sorted({r.stage for r in runs}, key=lambda s: (order.index(s) if s in order else len(order), s))


COMPARED_FIRST = "validate"  # the stage the Runs page compares first: validations carry the figures to set side by side
COMPARED_RUNS = 2  # runs picked at first: the two newest of that stage


def compare_defaults(runs: Sequence[RunRecord]) -> tuple[str, list[str]] | None:
    """(stage, run ids) the Runs page's comparison starts from among finished ``runs`` (newest first):
    validations when there are any, else the first stage in pipeline order, and its newest runs; None
    without runs."""
    stages = stages_present(runs)
    if not stages:
        return None
    stage = COMPARED_FIRST if COMPARED_FIRST in stages else stages[0]
    return stage, [r.id for r in runs if r.stage == stage][:COMPARED_RUNS]


def report_to_show(reports: Sequence[RunRecord], session: str) -> RunRecord:
    """The report the Runs page opens first: this session's newest, else the newest of any session."""
    return next((r for r in reports if r.session == session), reports[0])


def parse_tags(text: str) -> list[str]:
    """Tags typed comma separated, trimmed, blanks dropped (``Workspace.set_notes`` also de-duplicates them)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def history_frame(runs: Sequence[RunRecord], session: str, lookup=None,
                  notes: Mapping[str, tuple[str, tuple[str, ...]]] | None = None) -> pd.DataFrame:
    """One row per run: its name (what it is), status, time, the headline metrics as numbers (so the
    table sorts by them), verdict, notes and the id."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "name": run_name(run, lookup, with_id=False), "stage": STAGE_TITLES.get(run.stage, run.stage),
            "status": run.status, "progress": float(run.progress),
            "started": run.created_at.replace("T", " ")[:19],
        }
        for key, column in METRIC_COLUMNS.items():
            value = run.summary.get(key)
            row[column] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        row["verdict"] = run.summary.get("verdict") or (  # comparisons recorded before their summary said it
            ("PASS" if run.summary.get("recommended_passes") else "FAIL") if "recommended_passes" in run.summary else "")
        row["result / error"] = (fmt.headline(run.stage, run.summary) if run.status == "finished"
                                 else run.error or run.message)
        note, tags = (notes or {}).get(run.id, ("", ()))
        row["tags"] = ", ".join(tags)
        row["note"] = note
        row["session"] = ("this" if run.session == session else run.session) or "(cli)"
        row["run"] = run.id
        rows.append(row)
    frame = pd.DataFrame(rows)
    empty = [c for c in METRIC_COLUMNS.values() if c in frame and frame[c].isna().all()]
    frame = frame.drop(columns=empty)
    # what people sort and read first: the name, the outcome and the figures; bookkeeping last
    first = ["name", "status", "verdict", *[c for c in METRIC_COLUMNS.values() if c in frame], "result / error",
             "tags", "note"]
    return frame[[c for c in first if c in frame] + [c for c in frame.columns if c not in first]]


def history_column_config(st) -> dict:
    """Number formats of the history's metric columns (percentages, signed points, ratios)."""
    cc = st.column_config
    return {"progress": cc.ProgressColumn("progress", min_value=0, max_value=1, format="percent"),
            "drop (pts)": cc.NumberColumn("drop (pts)", format="%+.2f", help="FP32 − INT8 accuracy in points"),
            "agreement": cc.NumberColumn("agreement", format="percent"),
            "INT8 accuracy": cc.NumberColumn("INT8 accuracy", format="percent"),
            "emb. cosine": cc.NumberColumn("emb. cosine", format="%.4f"),
            "KS": cc.NumberColumn("KS", format="%.4f"), "texts": cc.NumberColumn("texts", format="%d")}


BUCKET_MEASURES = {"agreement": "top-1 agreement", "drop": "accuracy drop (pts, FP32 − INT8)",
                   "cosine": "embedding cosine"}
"""The per-bucket measures the Runs page overlays (key -> title); :func:`overlay_frame` reads each."""


def overlay_frame(evaluations: Mapping[str, Any], measure: str) -> pd.DataFrame:
    """Long frame (run, bucket, texts, value) of one of :data:`BUCKET_MEASURES` for several evaluations:
    ``agreement``, ``drop`` (points, FP32 − INT8) or ``cosine``."""
    check_choice(measure, tuple(BUCKET_MEASURES), "per-bucket measure")
    rows = []
    for name, ev in evaluations.items():
        for b in ev.metrics.bucket_figures:
            if b.empty:
                continue
            value = {"agreement": b.top1_agreement, "drop": b.accuracy_drop_points,
                     "cosine": b.embedding_cosine}[measure]
            if value is not None:
                rows.append({"run": name, "bucket": b.bucket, "texts": b.n, "value": float(value)})
    return pd.DataFrame(rows, columns=["run", "bucket", "texts", "value"])


def layer_overlay_frame(evaluations: Mapping[str, Any]) -> pd.DataFrame:
    """Long frame (run, #, tensor, SQNR dB) of every quantized tensor for several evaluations."""
    rows = []
    for name, ev in evaluations.items():
        quantized = ev.layer_report.quantized if ev.layer_report is not None else []
        for i, t in enumerate(quantized):
            if t.sqnr_db is not None:
                rows.append({"run": name, "#": i, "tensor": t.tensor, "SQNR (dB)": float(t.sqnr_db)})
    return pd.DataFrame(rows, columns=["run", "#", "tensor", "SQNR (dB)"])


def baseline_deltas(evaluations: Mapping[str, Any], baseline: str) -> pd.DataFrame:
    """Headline figures of each run and their difference to the pinned ``baseline`` run."""
    heads = {name: ev.headline() for name, ev in evaluations.items()}
    base = heads[baseline]
    rows = []
    for name, h in heads.items():
        row: dict[str, Any] = {"run": name + (" (baseline)" if name == baseline else "")}
        for key, label, conv in (("accuracy_drop_points", "drop (pts)", fmt.points),
                                 ("top1_agreement", "agreement", fmt.percent),
                                 ("embedding_cosine", "emb. cosine", fmt.ratio)):
            v, b = h.get(key), base.get(key)
            row[label] = conv(v)
            if name != baseline and v is not None and b is not None:
                delta = (v - b) * (100 if key == "top1_agreement" else 1)
                row[f"Δ {label}"] = fmt.signed(delta, 4 if key == "embedding_cosine" else 2) + (
                    " pts" if key != "embedding_cosine" else "")
            else:
                row[f"Δ {label}"] = fmt.MISSING
        rows.append(row)
    return pd.DataFrame(rows)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def comparison_frame(runs: Sequence[RunRecord], *, only_differences: bool = False) -> pd.DataFrame:
    """One column per run; rows are summary figures first, then parameters."""
    columns: dict[str, dict[str, str]] = {}
    for run in runs:
        values = {f"summary · {k}": _short(v) for k, v in flatten(run.summary).items()}
        values.update({f"param · {k}": _short(v) for k, v in flatten(run.params).items()})
        values["created"] = run.created_at.replace("T", " ")[:19]
        values["parents"] = ", ".join(run.parents)
        columns[run.id] = values
    frame = pd.DataFrame(columns).fillna("")
    if only_differences and len(runs) > 1:
        frame = frame[frame.nunique(axis=1) > 1]
    return frame


def validation_to_judge(runs: Sequence[RunRecord], current: str | None) -> RunRecord | None:
    """Of finished validation ``runs`` (newest first), the one the Home page judges: the one this session
    looks at (``current``), else the newest; None when none is left on disk."""
    chosen = next((r for r in runs if r.id == current), None) or next(iter(runs), None)
    return chosen if chosen is not None and chosen.dir.is_dir() else None


def of_model(runs: Sequence[RunRecord], model_sha256: str | None) -> list[RunRecord]:
    """The ``runs`` made for this model (sha256; runs that recorded none stay; None: every run)."""
    return [r for r in runs if not model_sha256 or r.summary.get("model_sha256") in (None, "", model_sha256)]


def verdict_subject(validation: RunRecord | None, comparison: RunRecord | None) -> RunRecord | None:
    """What the Validate page's verdict is about by default: the newer of the picked validation run and
    the latest calibrator comparison (whose recommended, or closest, calibrator is then judged)."""
    if validation is None or comparison is None:
        return validation or comparison
    def ended(r: RunRecord) -> str:
        return r.finished_at or r.created_at
    return comparison if ended(comparison) > ended(validation) else validation


def home_verdict_run(ws: Workspace, model_sha256: str | None, current: str | None) -> RunRecord | None:
    """The run Home judges, as the Validate page judges first: the newer of the project model's validation
    (:func:`validation_to_judge`: the one this session looks at, else the newest) and its latest
    side-by-side comparison still on disk; None when there is neither."""
    validation = validation_to_judge(of_model(ws.list_runs(stage="validate", status="finished", limit=50),
                                              model_sha256), current)
    comparisons = [r for r in of_model(ws.list_runs(stage="compare", status="finished", limit=5), model_sha256)
                   if r.dir.is_dir()]
    return verdict_subject(validation, comparisons[0] if comparisons else None)


def judged_evaluation(judged: RunRecord, title: str) -> tuple[Evaluation, str]:
    """The evaluation a verdict judges for ``judged`` (a validation run, or a comparison: its recommended
    or closest calibrator's) and the subject the verdict names (``title``: the run's title)."""
    if judged.stage == "compare":
        comparison = CalibratorComparison.load(judged.dir)
        return Evaluation.load(comparison.recommended_evaluation), f"{comparison.recommendation.headline} ({title})"
    return Evaluation.load(judged.dir), title


def other_models_warning(made_for: str, project_model: str, what: str, then: str) -> str | None:
    """A warning when an artifact (``what``) was made for another model (sha256) than the project's; ``then``
    says what the next step will do about it."""
    if not made_for or made_for == project_model:
        return None
    return f"This {what} was made for another model than the project's; {then}."


REPORT_CANDIDATES = 200  # validation runs offered to compare with in a report (newest first)
REPORT_SENSITIVITIES = 50  # sensitivity runs offered to include


def report_choices(ws, current: RunRecord, model_sha256: str) -> tuple[list[RunRecord], list[RunRecord]]:
    """(validations to compare with, sensitivity runs to include) in a report of ``current``: finished runs
    of the same model (a report refuses to mix models), newest first; runs that recorded no model stay."""
    validations = [r for r in of_model(ws.list_runs(stage="validate", status="finished", limit=REPORT_CANDIDATES),
                                       model_sha256) if r.id != current.id and r.dir.is_dir()]
    searches = [r for r in of_model(ws.list_runs(stage="sensitivity", status="finished", limit=REPORT_SENSITIVITIES),
                                    model_sha256) if r.dir.is_dir()]
    return validations, searches
