"""Stage configs built from the session's project, and cached looks at saved artifacts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from calib.build import BuildConfig, EngineArtifact, calibration_of
from calib.calibrate import CalibrateConfig, RangesRef
from calib.calibset import AssembleConfig, CalibrationSet
from calib.compare import CalibratorComparison, CompareConfig
from calib.data import DataSpec
from calib.engines import DEPLOYMENT_TARGET, PORTABLE_BACKEND, get_backend
from calib.errors import InputError, check_choice
from calib.evaluation import EvalSettings
from calib.inputs import save_recipe
from calib.lengths import load_length_target, token_lengths
from calib.model import ModelRef, read_onnx
from calib.pipeline import config_defaults
from calib.placement import Placement, ensure_node_names, exact_pattern
from calib.report import ReportConfig, layer_summary
from calib.sampling import WEIGHTED_STRATEGIES
from calib.sensitivity import SEARCH_SETTINGS, SensitivityConfig
from calib.validate import ValidateConfig
from calib.verdict import TENSORRT_DEFAULT_CALIBRATOR, ReleaseBudget
from calib.workspace import RunRecord, Workspace
from lib.project import Project, data_spec, model_spec
from lib.uploads import sanitize_name

REPO = Path(__file__).resolve().parents[2]
RECIPES_SUBDIR = "recipes"


PAGE_EVAL_SETTINGS = EvalSettings(layer_rows=64)
"""The Validate page's first evaluation settings: EvalSettings' own, except 64 texts for the per-layer
analysis (the CLI's 128 halved), which keeps a validation started from the browser interactive on a CPU."""


PAGE_COMPARE_SETTINGS = dataclasses.replace(PAGE_EVAL_SETTINGS, layers=False)
"""How the Validate page evaluates each calibrator side by side: without the per-layer analysis (the table
and chart compare headline figures; validate the chosen build for its layers)."""


def project_inputs(ws: Workspace, project: Project, role: str = "eval") -> dict[str, Any]:
    """The ``model`` (ModelRef, roles as the project resolved them) and ``data`` (DataSpec of the project's
    ``pool`` or ``eval`` data, read in this workspace) every stage config takes."""
    data = dataclasses.replace(data_spec(ws, project, role), workspace=str(ws.root))
    return {"model": ModelRef.of(model_spec(ws, project)), "data": data}


def eval_target(ws: Workspace, project: Project) -> dict[str, Any] | None:
    """AssembleConfig target fields for the project's evaluation data; None when it is the pool."""
    pool = data_spec(ws, project, "pool")
    ev = data_spec(ws, project, "eval")
    if ev.source == pool.source and ev.split == pool.split:
        return None
    if ev.source == pool.source:
        return {"target_kind": "eval", "target_source": None, "target_split": ev.split}
    return {"target_kind": "dataset", "target_source": ev.source, "target_split": ev.split}


LENGTH_CACHE_ENTRIES = 32


@st.cache_resource(show_spinner=False)
def _length_cache() -> dict:
    """Token lengths already counted in this server process (the workspace also caches them on disk)."""
    return {}


def dataset_lengths(ws: Workspace, project: Project, data: DataSpec) -> np.ndarray:
    """Untruncated token lengths (N,) of a dataset under the project's tokenizer (cached), with a
    progress bar that counts the texts while they are tokenised."""
    spec = model_spec(ws, project)
    key = (spec.sha256, str(spec.tokenizer_dir), data, str(ws.root))
    cache = _length_cache()
    if key not in cache:
        bar = st.progress(0.0, text=f"Counting tokens of {data.describe()}…")

        def progress(fraction: float, message: str = "") -> None:
            bar.progress(min(max(fraction, 0.0), 1.0), text=f"Counting tokens of {data.describe()}: {message}")

        table = token_lengths(spec, data, ws, progress=progress)
        bar.empty()
        while len(cache) >= LENGTH_CACHE_ENTRIES:
            cache.pop(next(iter(cache)))
        cache[key] = table.lengths
    return cache[key]


@st.cache_data(show_spinner="Reading the lengths file…", max_entries=16)
def _file_lengths(path: str, mtime: float) -> np.ndarray:
    return load_length_target(path)


def lengths_file(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"lengths file {path} does not exist")
    return _file_lengths(str(p), p.stat().st_mtime)


def recipe_dirs(ws: Workspace) -> list[Path]:
    return [ws.root / RECIPES_SUBDIR, REPO / "datasets" / "recipes"]


def recipe_name(project: Project, strategy: str, size: int) -> str:
    """The name first offered for a calibration set's recipe: ``<task or custom>-<strategy>-<size>``."""
    return f"{project.demo or 'custom'}-{strategy}-{size}"


def save_project_recipe(project: Project, cset: CalibrationSet, path: Path, *, description: str = "") -> Path:
    """Save a calibration set's config as a recipe; a demo project's names its task instead of its paths."""
    return save_recipe(cset.config, path, demo=project.demo, description=description)


def recipe_path(ws: Workspace, name: str) -> Path:
    """Where a recipe named ``name`` is saved: the workspace's recipes folder, a safe file name ending
    in ``.json`` (``recipe.json`` for an empty name)."""
    safe = sanitize_name(name.strip() or "recipe")
    return ws.root / RECIPES_SUBDIR / (safe if safe.endswith(".json") else f"{safe}.json")


def list_recipes(ws: Workspace) -> list[Path]:
    found: list[Path] = []
    for folder in recipe_dirs(ws):
        if folder.is_dir():
            found.extend(sorted(folder.glob("*.json")))
    return found


@st.cache_data(show_spinner=False, max_entries=8)
def _graph_nodes(path: str, mtime: float) -> list[tuple[str, str]]:
    model = read_onnx(path, load_weights=False)
    ensure_node_names(model)
    return [(n.name, n.op_type) for n in model.graph.node]


def graph_nodes(onnx_path: str | Path) -> list[tuple[str, str]]:
    """(node name, op type) of every node of an ONNX graph, in graph order (names as calib sees them)."""
    p = Path(onnx_path)
    if not p.is_file():
        raise InputError(f"ONNX model {p} does not exist")
    return _graph_nodes(str(p), p.stat().st_mtime)


@st.cache_resource(show_spinner=False, ttl=600)
def backend_state(name: str):
    """``calib.engines.get_backend(name).status()`` (available, reason, version), looked up once every
    ten minutes (TensorRT's probes the GPU)."""
    return get_backend(name).status()


def backend_warning(name: str, status: Any = None) -> str | None:
    """The Build page's warning when backend ``name`` cannot build here (``status``: its status, default
    :func:`backend_state`'s), naming the portable backend to choose instead; None when it can."""
    status = backend_state(name) if status is None else status
    if status.available:
        return None
    return (f"{get_backend(name).title} is not available here ({status.reason}), so this build would fail; "
            f"choose {get_backend(PORTABLE_BACKEND).title}.")


def tensorrt_state():
    """The TensorRT backend's status: the deployment target every build writes commands for."""
    return backend_state(DEPLOYMENT_TARGET)


def calibrate_config(project: Project, calibration_set_dir: str | Path, methods: Sequence[str],
                     params: Mapping[str, Mapping[str, Any]], *, placement: str, tensors: str, batch_size: int,
                     trt_version: str, histogram: str) -> CalibrateConfig:
    """The Calibrate page's run: every chosen calibrator (``params``: each one's parameters) from one
    statistics pass over a calibration set, on the project's cluster."""
    if not methods:
        raise InputError("pick at least one calibrator")
    return CalibrateConfig(calibration_set=str(calibration_set_dir), methods=tuple(methods), params=dict(params),
                           placement=Placement(placement), tensors=tensors, batch_size=int(batch_size),
                           trt_version=trt_version, histogram=histogram, cluster=project.cluster_spec)


def build_config(model_path: str | Path, calibration_dir: str | Path, method: str, placement: Placement, *,
                 backend: str, per_channel: bool, trt_version: str, smooth: str, smooth_attention: bool,
                 bias_correction: bool) -> BuildConfig:
    """The Build page's build: the range set ``method`` of a calibration run, placed as ``placement``, on
    ``backend``, with the Advanced settings."""
    return BuildConfig(model=str(model_path), ranges=RangesRef(str(calibration_dir), method), placement=placement,
                       per_channel=bool(per_channel), backend=backend, trt_version=trt_version, smooth=smooth,
                       smooth_attention=bool(smooth_attention), bias_correction=bool(bias_correction))


def reasons_frame(reasons: Mapping[str, str], what: str) -> pd.DataFrame:
    """(``what``, why) rows of a build's tensors or nodes left in float and the reason recorded for each."""
    return pd.DataFrame([{what: k, "why": v} for k, v in reasons.items()], columns=[what, "why"])


def build_placement(preset: str, nodes: Sequence[str], patterns: str, op_types: Sequence[str]) -> Placement:
    """The Build page's placement: ``preset`` with the chosen ``nodes`` (exact names), the typed
    comma-separated ``patterns`` (globs or ``re:REGEX``) and the ``op_types`` kept in float."""
    extra = tuple(p.strip() for p in patterns.split(",") if p.strip())
    return Placement(preset, exclude_nodes=tuple(exact_pattern(n) for n in nodes) + extra,
                     exclude_op_types=tuple(op_types))


def profile_caption(art: EngineArtifact) -> str:
    """One line on what a build's TensorRT files assume: the cache header, its tensors and the profile."""
    p = art.profile
    return (f"Calibration cache header `{art.cache_header}` · {art.cache_tensors} tensors · optimisation profile: "
            f"batch {p.min_batch}/{p.opt_batch}/{p.max_batch} × sequence {p.min_seq}/{p.opt_seq}/{p.max_seq} "
            f"(min/opt/max, from {art.profile_source})")


def profile_warning(art: EngineArtifact, max_length: int) -> str | None:
    """A warning when a build's TensorRT profile cannot take the project's longest inputs: its max
    sequence (derived from the calibration set's lengths) is shorter than the max length."""
    max_seq = art.profile.max_seq
    if max_seq >= max_length:
        return None
    return (f"The TensorRT optimisation profile's max sequence is {max_seq} tokens (from {art.profile_source}) "
            f"but texts are truncated at {max_length}: an engine built with these shapes refuses longer inputs. "
            f"Raise --maxShapes to {max_length} in trtexec.sh, or build with a profile (calib build --profile … "
            f"{max_length}).")


CALIBSET_TARGETS = ("eval", "pool", "lengths")
"""What a calibration set can be matched against on the page: the project's evaluation data (an eval split
or another dataset), the pool itself, or a file of production lengths."""


def target_options(eval_fields: dict[str, Any] | None) -> list[str]:
    """The targets the page offers: ``eval`` only when the project's evaluation data is not the pool."""
    return [k for k in CALIBSET_TARGETS if k != "eval" or eval_fields is not None]


def target_fields(target: str, eval_fields: dict[str, Any] | None, lengths_path: str | None = None) -> dict[str, Any]:
    """The AssembleConfig target fields of the page's choice (``eval``: :func:`eval_target`'s; ``lengths``:
    the production lengths file; ``pool``: none)."""
    if target == "eval" and eval_fields is not None:
        return dict(eval_fields)
    if target == "lengths":
        if not lengths_path:
            raise InputError("give a file of production token lengths to match")
        return {"target_kind": "lengths", "target_source": lengths_path, "target_split": None}
    return {"target_kind": "pool", "target_source": None, "target_split": None}


def lengths_source(stored: str | Path | None, typed: str) -> str | None:
    """The production-lengths file the page reads: an upload (``stored``: where it was saved) before a
    path typed on the server; None when neither is given."""
    if stored is not None:
        return str(stored)
    return typed.strip() or None


def target_lengths_of(ws: Workspace, project: Project, target: str, pool_lengths: np.ndarray,
                   lengths_path: str | None = None) -> np.ndarray | None:
    """The token lengths (N,) of the page's target: the project's evaluation data (``eval``), a production
    lengths file (``lengths``; None until one is given) or the pool itself (``pool``: ``pool_lengths``)."""
    check_choice(target, CALIBSET_TARGETS, "target")
    if target == "eval":
        return dataset_lengths(ws, project, data_spec(ws, project, "eval"))
    if target == "lengths":
        return lengths_file(lengths_path) if lengths_path else None
    return pool_lengths


def _sampling_widgets(*, strategy: str, size: int, seed: int, edges: Sequence[int], stratify: bool, shortfall: str,
                      opt_percentile: float) -> dict[str, Any]:
    """AssembleConfig's sampling settings as the Calibration set page's widget values (key -> value)."""
    return {"cs-strategy": strategy, "cs-size": int(size), "cs-seed": int(seed), "cs-edges": ", ".join(map(str, edges)),
            "cs-stratify": bool(stratify), "cs-shortfall": shortfall, "cs-opt-pct": float(opt_percentile)}


def recipe_widget_values(config: AssembleConfig) -> dict[str, Any]:
    """What a loaded recipe sets on the Calibration set page (widget key -> value): its sampling settings,
    its target when the page offers that kind (else ``eval``), and one weight per bucket."""
    values = _sampling_widgets(strategy=config.strategy, size=config.size, seed=config.seed, edges=config.edges,
                               stratify=config.stratify, shortfall=config.shortfall,
                               opt_percentile=config.opt_percentile)
    values["cs-target"] = config.target_kind if config.target_kind in CALIBSET_TARGETS else "eval"
    values.update({f"cs-weight-{i}": float(w) for i, w in enumerate(config.weights)})
    return values


def recipe_data_note(config: AssembleConfig, project_data: DataSpec) -> str | None:
    """Why only a recipe's sampling settings apply: it was made for another dataset (None: the same one)."""
    if config.data.source == project_data.source:
        return None
    return (f"This recipe was made for {config.data.source}; only its sampling settings are used with the "
            f"project's data ({project_data.source}).")


def length_series(pool: np.ndarray, target: str, target_lengths: np.ndarray | None, *,
                  calibration_set: CalibrationSet | None = None, project_source: str = "") -> dict[str, np.ndarray]:
    """The token-length series a histogram shows: the pool and the chosen target (none when the target is
    the pool). With ``calibration_set`` (a saved set): its lengths too, the pool only when the set was drawn
    from the project's pool, and the target only when the set was matched against the same kind."""
    if calibration_set is None:
        return {"pool": pool, **({"target": target_lengths} if target != "pool" and target_lengths is not None else {})}
    series = {"pool": pool} if calibration_set.dataset_source == project_source else {}
    if target_lengths is not None and calibration_set.target_kind == target and target != "pool":
        series["target"] = target_lengths
    series["calibration set"] = calibration_set.lengths
    return series


def calibset_form_values(state: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The Calibration set form's values to set before its widgets are drawn: each default not set yet, and
    the default edges again for an emptied edges field (a browser can hand back an empty text input after a
    run ends and the page reruns; the edges must never silently become "none")."""
    values = {k: v for k, v in defaults.items() if k not in state}
    if not str(state.get("cs-edges") or "").strip():
        values["cs-edges"] = defaults["cs-edges"]
    return values


DEFAULT_BUCKET_WEIGHT = 1.0  # a weighted strategy's first weight per bucket: every bucket alike


def assemble_values(base: Mapping[str, Any], target: Mapping[str, Any], *, size: int, strategy: str, seed: int,
                    edges: Sequence[int], weights: Sequence[float], stratify: bool, shortfall: str,
                    opt_percentile: float) -> dict[str, Any]:
    """The AssembleConfig values of the Calibration set form (``base``: the project's model and pool,
    ``target``: :func:`target_fields`); weights only for a strategy that takes them."""
    return {**base, **target, "size": int(size), "strategy": strategy, "seed": int(seed), "edges": tuple(edges),
            "weights": tuple(float(w) for w in weights) if strategy in WEIGHTED_STRATEGIES else (),
            "stratify": bool(stratify), "shortfall": shortfall, "opt_percentile": float(opt_percentile)}


def calibset_defaults(target: str, pool_size: int, labelled: bool) -> dict[str, Any]:
    """The Calibration set page's first values (widget key -> value): ``AssembleConfig``'s defaults, the
    size capped at the pool's, ``match`` when there is a target to match (else ``natural``), and
    stratified by label when the pool has labels."""
    base = config_defaults(AssembleConfig)
    return _sampling_widgets(strategy="match" if target != "pool" else base["strategy"],
                             size=min(int(base["size"]), pool_size), seed=base["seed"], edges=base["edges"],
                             stratify=labelled, shortfall=base["shortfall"], opt_percentile=base["opt_percentile"])


@dataclasses.dataclass(frozen=True)
class PageNote:
    """A note a page shows: ``text``, as a warning or as information."""

    text: str
    warning: bool = False


def calibration_notes(cal: Any, *, named: int = 4) -> list[PageNote]:
    """What the Calibrate page says about a calibration (``calib.calibrate.Calibration``): tensors that held
    NaN or ±inf (the first ``named`` of them by name; a warning) and tensors that were all zero."""
    notes = []
    if cal.nonfinite_tensors:
        names = list(cal.nonfinite_tensors)
        notes.append(PageNote(f"{len(names)} tensor(s) hold NaN or ±inf (e.g. attention masks built with -inf): "
                              f"{', '.join(names[:named])}{' …' if len(names) > named else ''}. Their ranges ignore "
                              "the non-finite values; keep them in float (the tensorrt placement does).", warning=True))
    if cal.zero_range_tensors:
        notes.append(PageNote(f"{len(cal.zero_range_tensors)} tensor(s) were all zero on the calibration set."))
    return notes


def layer_note(layers: Any, rows: Sequence[Mapping]) -> PageNote:
    """The Validate page's per-layer line for a ``calib.layers.LayerReport`` (``rows``: its
    ``calib.report.layer_rows``): how many quantized tensors are under the SQNR threshold, and the first
    degraded one in network order (a warning), or that none is."""
    summary = layer_summary(rows, layers.degraded_sqnr_db)
    if layers.first_degraded:
        return PageNote(f"{summary}. First degraded tensor in network order: `{layers.first_degraded}` (SQNR below "
                        f"{layers.degraded_sqnr_db:g} dB or cosine below {layers.degraded_cosine:g}).", warning=True)
    return PageNote(f"{summary}: no quantized tensor is degraded.")


# -- the Validate page's stage configs -----------------------------------------------------------

def compare_config(ws: Workspace, project: Project, calibration_dir: str | Path, methods: Sequence[str],
                   placement: str, *, limit: int, budget: ReleaseBudget) -> CompareConfig:
    """The side-by-side comparison the Validate page starts: every chosen range set of one calibration,
    built with one placement preset and evaluated on ``limit`` texts (0: all) without the per-layer
    analysis, judged against the project's release budget."""
    if not methods:
        raise InputError("pick at least one range set to compare")
    return CompareConfig(calibration=str(calibration_dir), **project_inputs(ws, project), methods=tuple(methods),
                         placement=Placement(placement), budget=budget,
                         settings=dataclasses.replace(PAGE_COMPARE_SETTINGS, limit=int(limit),
                                                      cluster=project.cluster_spec))


def validate_config(ws: Workspace, project: Project, build_run: RunRecord, *, limit: int, layers: bool,
                    layer_rows: int, bootstrap: int) -> ValidateConfig:
    """The validation of one build on the project's evaluation data: ``limit`` texts (0: all), the
    per-layer analysis on ``layer_rows`` texts when ``layers``, ``bootstrap`` resamples for the intervals;
    every calibrator's amax per tensor from the build's calibration when it is still in the workspace."""
    found = calibration_of(ws, build_run)
    return ValidateConfig(engine=str(build_run.dir), **project_inputs(ws, project),
                          calibration=str(found) if found is not None else None,
                          settings=dataclasses.replace(PAGE_EVAL_SETTINGS, limit=int(limit), layers=bool(layers),
                                                       layer_rows=int(layer_rows), bootstrap=int(bootstrap),
                                                       cluster=project.cluster_spec))


def sensitivity_config(ws: Workspace, project: Project, start: Mapping[str, Any], *, granularity: str, ranking: str,
                       budget: ReleaseBudget, max_evaluations: int, limit: int) -> SensitivityConfig:
    """The search for layers to keep in float, from a build's ``start`` fields
    (``calib.sensitivity.search_start``), aiming at ``budget`` within ``max_evaluations`` evaluations of
    ``limit`` texts each."""
    return SensitivityConfig(**project_inputs(ws, project), **start, granularity=granularity, ranking=ranking,
                             budget=budget, max_evaluations=int(max_evaluations),
                             settings=dataclasses.replace(SEARCH_SETTINGS, limit=int(limit),
                                                          cluster=project.cluster_spec))


REPORT_TITLE = "INT8 accuracy report"


def report_title(project: Project, calibrators: int | None = None) -> str:
    """A report's first title: ``INT8 accuracy report — <project>``, and how many calibrators a
    comparison's report sets side by side."""
    title = f"{REPORT_TITLE} — {project.title}"
    return title if calibrators is None else f"{title} — {calibrators} calibrators"


def report_config(ws: Workspace, candidate: RunRecord, compared: Sequence[str], sensitivity: str | None, *,
                  title: str, budget: ReleaseBudget) -> ReportConfig:
    """The report of a validation run (the release candidate), the validation runs ``compared`` with it
    and an optional sensitivity run (run ids in ``ws``), judged against ``budget``."""
    return ReportConfig(evaluations=(str(candidate.dir), *(str(ws.run_dir(r)) for r in compared)),
                        sensitivity=str(ws.run_dir(sensitivity)) if sensitivity else None, title=title,
                        budget=budget)


def comparison_report_config(comparison: CalibratorComparison, project: Project,
                             budget: ReleaseBudget) -> ReportConfig:
    """The report of a side-by-side comparison: every calibrator's evaluation, the recommended first as
    the comparison orders them."""
    return ReportConfig(evaluations=tuple(str(d) for d in comparison.evaluation_dirs()), budget=budget,
                        title=report_title(project, len(comparison.methods)))


def report_parents(candidate: RunRecord, compared: Sequence[str], sensitivity: str | None) -> tuple[str, ...]:
    """A report run's parents: the candidate, the runs compared with it and the sensitivity run."""
    return (candidate.id, *compared, *((sensitivity,) if sensitivity else ()))


JUDGE_CHOICES = ("validate", "compare")  # what the Verdict can judge: a validation run or a comparison


def judge_titles(comparison_title: str) -> dict[str, str]:
    """The Verdict's radio labels for :data:`JUDGE_CHOICES` (``comparison_title``: the latest comparison's)."""
    return {"validate": "the validation run above", "compare": f"the latest side-by-side comparison ({comparison_title})"}


def judged_run(choice: str, validation: RunRecord | None, comparison: RunRecord | None) -> RunRecord | None:
    """The run the Verdict judges for the reader's ``choice`` among :data:`JUDGE_CHOICES`."""
    check_choice(choice, JUDGE_CHOICES, "verdict subject")
    return validation if choice == "validate" else comparison


def default_calibrator_note(method: str | None = None) -> str | None:
    """What the Build and Validate pages say about TensorRT's default calibrator: that it is the default but
    not always the most accurate, so compare the calibrators for this model (for ``method``: only when it is
    that calibrator)."""
    if method is not None and method != TENSORRT_DEFAULT_CALIBRATOR:
        return None
    return (f"{TENSORRT_DEFAULT_CALIBRATOR} is TensorRT's default calibrator, not always the most accurate one for a "
            "model: compare every calibrator with *Calibrators side by side* on the Validate page before you ship it.")


def build_method_help(preferred: str) -> str:
    """The Build page's help on the calibrator it offers first."""
    return (f"First offered: {preferred}, calib's default build method. " + default_calibrator_note())
