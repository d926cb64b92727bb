"""Validation stage: FP32 vs INT8 on the evaluation split, per length bucket and per layer.

``validate(ValidateConfig, out_dir)`` streams the evaluation texts in length-bucketed batches
through the FP32 baseline and the INT8 engine (a build artifact folder or a Q/DQ ONNX file),
keeps only per-row logits and per-row embedding cosines, and writes an :class:`Evaluation`:

- ``evaluation.json`` — for classifiers: task metrics (if the eval set is labelled), agreement,
  embedding cosine and the paired bootstrap CI of the accuracy difference; for embedding models:
  cosine, nearest-neighbour recall, similarity Spearman and k-NN accuracy (see
  :mod:`calib.evaluation`); overall and per length bucket, plus what was compared (model sha256 and
  output roles, engine, placement, dataset fingerprint, calibration);
- ``layers.json`` — per-tensor ranges and error through the network (:mod:`calib.layers`);
- ``predictions.npz`` — per-row logits, labels, lengths and embedding cosines (for comparisons).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from calib.batching import iter_batches
from calib.build import EngineArtifact
from calib.calibrate import Calibration, recorded_roles
from calib.calibset import CalibrationSet
from calib.cluster import Cluster, connect
from calib.data import DataSpec, LoadReport, preparation_mismatch
from calib.distributed import run_engines_sharded
from calib.engines import PORTABLE_BACKEND, get_backend
from calib.engines.base import Engine
from calib.engines.ort import OrtEngine, OrtSessionLoader
from calib.errors import InputError, ModelMismatchError
from calib.evaluation import EvalSettings, Metrics, compare, load_eval_data, run_engine
from calib.io import atomic_save_npz, atomic_write_json, read_artifact_json, read_json, sha256_file
from calib.layers import LayerAnalysis, LayerReport, producer_order, quantized_tensors
from calib.model import ModelRef, ModelSpec, OutputRoles, check_same_model
from calib.pipeline import config_params
from calib.progress import FP32_PASS, INT8_PASS, LAYER_PASS, Phases
from calib.verdict import ReleaseBudget, default_budget, drop_interval_points
from calib.workspace import ProgressFn

SCHEMA = "calib.evaluation/1"
LAYER_PASS_COST = 20.0
"""Time of one text in the per-layer pass (both models, every quantized tensor exposed and
histogrammed) relative to one text of the plain FP32 pass; weights the progress phases (measured
12-27 on the demo, see BENCHMARKS.md)."""
LAYER_BATCH = 4
"""Largest batch of the per-layer pass: it holds every quantized tensor of both models for the whole
batch, so small batches keep memory low and report progress every few texts."""
QDQ_MODEL_FILE = "model.qdq.onnx"
ENGINE_FILE = "engine.json"


@dataclass(frozen=True)
class ValidateConfig:
    """What to compare and on which texts.

    ``engine``: a build artifact folder (``engine.json`` + ``model.qdq.onnx``) or a Q/DQ ``.onnx``.
    ``model``: the FP32 baseline (its ``labels``, the classes in logit order; empty: taken from the build
    artifact, else from the dataset's label names). ``data``: the evaluation rows. ``settings``: sample,
    buckets, bootstrap, per-layer analysis, threads, cluster (:class:`~calib.evaluation.EvalSettings`).
    ``calibration``: a calibration folder, to show the calibrated amax of every method per tensor.
    """

    engine: str
    model: ModelRef
    data: DataSpec
    settings: EvalSettings = field(default_factory=EvalSettings)
    calibration: str | None = None


@dataclass(frozen=True)
class EngineSource:
    """Where the INT8 model comes from and what its build recorded."""

    kind: str  # "build" (artifact folder) or "onnx"
    path: Path  # the artifact folder or the .onnx file
    qdq_path: Path  # the Q/DQ ONNX run by ONNX Runtime (and used for the per-layer analysis)
    artifact: EngineArtifact | None = None  # the build folder, read by EngineArtifact.load (None: a bare .onnx)

    @property
    def engine_backend(self) -> str:
        """The backend that runs :attr:`engine_file`: the build's, or ``ort`` for a bare Q/DQ ``.onnx``."""
        return self.artifact.engine_backend if self.artifact is not None else PORTABLE_BACKEND

    @property
    def engine_file(self) -> Path:
        """The file the INT8 engine runs: the build's engine file, or the bare Q/DQ ``.onnx``."""
        return self.artifact.engine_path if self.artifact is not None else self.qdq_path

    @property
    def recorded_model_sha256(self) -> str:
        """The FP32 model's sha256 the build recorded ("" for a bare .onnx, which records none)."""
        return self.artifact.model_sha256 if self.artifact is not None else ""

    def describe(self) -> dict:
        """Placement, exclusions and calibrator as the build recorded them (None for a bare .onnx)."""
        art = self.artifact
        ranges = art.ranges_record if art is not None else {}
        return {
            "kind": self.kind, "path": str(self.path), "qdq_model": str(self.qdq_path),
            "qdq_sha256": sha256_file(self.qdq_path),
            "backend": art.backend if art is not None else PORTABLE_BACKEND,
            "placement": art.placement_record if art is not None else None,
            "excluded_nodes": art.excluded_nodes if art is not None else None,  # node -> why it stays in float
            "calibrator": ranges.get("method"),
            "calibration": ranges.get("source"),
        }


def resolve_engine(path: str | Path) -> EngineSource:
    """Read an engine reference: a build artifact folder or a Q/DQ ONNX file."""
    path = Path(path)
    if path.is_dir():
        meta_path = path / ENGINE_FILE
        if not meta_path.is_file():
            raise InputError(f"engine folder {path} has no {ENGINE_FILE}; give a build run folder or a Q/DQ .onnx file")
        artifact = EngineArtifact.load(path)
        if not artifact.qdq_path.is_file():
            raise InputError(f"engine folder {path} has no Q/DQ model {artifact.qdq_path.name}")
        return EngineSource("build", path, artifact.qdq_path, artifact)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise InputError(f"INT8 model {path} does not exist")
        return EngineSource("onnx", path, path)
    raise InputError(f"engine {path} is neither a build run folder nor a .onnx file")


def check_engine_model(source: EngineSource, fp32: ModelSpec) -> None:
    """Refuse an INT8 engine made from another model than the FP32 baseline.

    A build artifact records its model's sha256. A bare Q/DQ file does not, so its graph is checked
    instead: same inputs and outputs, every FP32 node still present, and weights kept in float
    (Q/DQ on weights keeps the original initializer) identical.
    """
    recorded = source.recorded_model_sha256
    if recorded:
        check_same_model(recorded, fp32.sha256, f"engine {source.path}")
        return
    qdq = onnx.load(str(source.qdq_path), load_external_data=False)
    ref = onnx.load(str(fp32.onnx_path))
    where = f"INT8 model {source.qdq_path} does not come from FP32 model {fp32.onnx_path}"
    if [i.name for i in qdq.graph.input] != [i.name for i in ref.graph.input] or \
            [o.name for o in qdq.graph.output] != [o.name for o in ref.graph.output]:
        raise ModelMismatchError(f"{where}: their inputs/outputs differ; quantize this model (calib build)")
    qdq_nodes = {n.name for n in qdq.graph.node}
    missing = [n.name for n in ref.graph.node if n.name and n.name not in qdq_nodes]
    if missing:
        raise ModelMismatchError(f"{where}: node {missing[0]!r} (and {len(missing) - 1} more) is absent; "
                                 "quantize this model (calib build)")
    qdq_init = {t.name: t for t in qdq.graph.initializer}
    for tensor in sorted(ref.graph.initializer, key=lambda t: -len(t.raw_data))[:8]:
        other = qdq_init.get(tensor.name)
        if other is not None and other.data_type == tensor.data_type and \
                not np.array_equal(onnx.numpy_helper.to_array(other), onnx.numpy_helper.to_array(tensor)):
            raise ModelMismatchError(f"{where}: weight {tensor.name!r} differs; quantize this model (calib build)")


def int8_engine(source: EngineSource, threads: int | None = None) -> Engine:
    """The INT8 engine: a build folder runs its backend's engine (``calib.engines.REGISTRY``, through
    ``EngineArtifact.engine``); a bare Q/DQ ``.onnx`` runs on the ``ort`` backend."""
    if source.artifact is not None:
        return source.artifact.engine("int8", threads=threads)
    return get_backend(PORTABLE_BACKEND).open(source.qdq_path, threads)


def calibrated_amax(calibration: str | Path, model_sha256: str = "") -> tuple[dict[str, dict[str, float]], dict]:
    """``{tensor: {method: amax}}`` for every method of a calibration run, and what it was made from."""
    cal = Calibration.load(Path(calibration))
    check_same_model(cal.model_sha256, model_sha256, f"calibration {calibration}")
    table: dict[str, dict[str, float]] = {}
    for method in cal.methods:
        for tensor, amax in cal.ranges(method).amax.items():
            table.setdefault(tensor, {})[method] = float(amax) if amax is not None else float("nan")
    info = {"folder": str(calibration), "methods": list(cal.methods), "summary": cal.summary(),
            "calibration_set": cal.calibration_set_record or None,
            "config": config_params(cal.config) if cal.config is not None else None}
    calset_dir = cal.calibration_set_dir
    if calset_dir and (Path(calset_dir) / "manifest.json").is_file():
        try:
            info["calibration_set_summary"] = CalibrationSet.load(calset_dir).summary()
        except (InputError, KeyError) as exc:  # provenance is best effort; the ranges are what matter
            info["calibration_set_summary"] = {"unreadable": str(exc)}
    return table, info


def layer_analysis(fp32_model: Path, source: EngineSource, encoded, input_dtypes: Mapping[str, type],
                   ranged: Mapping[str, Mapping[str, float]], *, batch_size: int, threads: int | None,
                   progress: ProgressFn | None = None, start: float = 0.0, span: float = 1.0) -> dict:
    """Per-tensor ranges and FP32-vs-INT8 error over ``encoded`` (see :mod:`calib.layers`).

    The INT8 side runs the Q/DQ model in ONNX Runtime with its intermediates exposed (Q/DQ
    evaluated in float, which is what integer kernels compute up to rounding).
    """
    ref = onnx.load(str(fp32_model))
    qdq = onnx.load(str(source.qdq_path))
    tensors = quantized_tensors(qdq, ref)
    order = producer_order(ref)
    present = {k: v for k, v in ranged.items() if k in order}
    analysis = LayerAnalysis(present, tensors, order)
    n, done = len(encoded), 0
    if progress is not None:
        progress(start, f"0/{n} texts (preparing sessions that expose {len(analysis.fp32_names)} tensors)")
    fp32 = OrtEngine(OrtSessionLoader(fp32_model, intermediates=analysis.fp32_names, threads=threads))
    int8 = OrtEngine(OrtSessionLoader(source.qdq_path, intermediates=analysis.int8_names, threads=threads))
    for batch in iter_batches(encoded, input_dtypes, batch_size):
        a = fp32.run(batch.feeds, list(analysis.fp32_names))
        b = int8.run(batch.feeds, list(analysis.int8_names))
        analysis.add(a, b, batch.mask)
        del a, b
        done += len(batch.rows)
        if progress is not None:
            progress(start + span * done / max(n, 1), f"{done}/{n} texts")
    result = analysis.result()
    result["rows"] = int(n)
    result["ranged_not_in_model"] = sorted(set(ranged) - set(present))
    return result


# -- artifact ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluatedModel:
    """The FP32 model an evaluation compared against (``evaluation.json["model"]``)."""

    path: str
    sha256: str
    classes: tuple[str, ...]  # class names in logit order (empty: unknown)
    roles: OutputRoles
    max_length: int | None

    @classmethod
    def from_dict(cls, d: Mapping) -> EvaluatedModel:
        roles = d.get("roles")  # 0.1 recorded only the logits output and whether an embedding existed
        return cls(path=str(d["path"]), sha256=str(d["sha256"]), classes=tuple(d.get("classes") or ()),
                   roles=OutputRoles(**roles) if roles else OutputRoles(logits=d.get("logits_output")),
                   max_length=d.get("max_length"))


@dataclass(frozen=True)
class EvaluatedEngine:
    """The INT8 engine an evaluation ran and what its build recorded (``evaluation.json["engine"]``);
    None where a bare Q/DQ ``.onnx`` recorded nothing."""

    kind: str  # "build" (artifact folder) or "onnx"
    path: str
    name: str | None  # the runner, e.g. "onnxruntime-int8"
    backend: str
    qdq_sha256: str | None
    calibrator: str | None  # the calibration method behind the build's ranges
    calibration: str | None  # the calibration run (or ranges file) the build used
    placement: Mapping | str | None  # as recorded: a Placement record, or 0.1's preset name
    excluded_nodes: Mapping[str, str]  # node kept in float -> why (0.1 may record a plain list: reason "")

    @classmethod
    def from_dict(cls, d: Mapping) -> EvaluatedEngine:
        e = d.get("excluded_nodes", d.get("exclusions")) or {}  # "exclusions": evaluations before 0.2
        return cls(kind=str(d.get("kind", "onnx")), path=str(d.get("path")), name=d.get("name"),
                   backend=str(d.get("backend") or PORTABLE_BACKEND), qdq_sha256=d.get("qdq_sha256"),
                   calibrator=d.get("calibrator"), calibration=d.get("calibration"), placement=d.get("placement"),
                   excluded_nodes=dict(e) if isinstance(e, Mapping) else dict.fromkeys(e, ""))

    @property
    def placement_preset(self) -> str | None:
        """The placement preset's name (None: not recorded)."""
        p = self.placement
        if isinstance(p, Mapping):
            return str(p.get("preset"))
        return None if p is None else str(p)

    @property
    def excluded_node_names(self) -> list[str]:
        """The nodes kept in float, sorted."""
        return sorted(self.excluded_nodes)


@dataclass(frozen=True)
class EvaluatedCalibration:
    """The calibration run a validation showed per tensor (``--calibration``; ``evaluation.json["calibration"]``):
    its folder and methods, the calibration set it read (``calibration_set``: strategy, size, dir, as
    ``calibration.json`` recorded it), its config, and that set's summary when it could be read."""

    folder: str
    methods: tuple[str, ...]
    calibration_set: Mapping
    config: Mapping | None
    calibration_set_summary: Mapping | None

    @classmethod
    def from_dict(cls, d: Mapping) -> EvaluatedCalibration:
        return cls(folder=str(d.get("folder", "")), methods=tuple(d.get("methods") or ()),
                   calibration_set=dict(d.get("calibration_set") or {}), config=d.get("config"),
                   calibration_set_summary=d.get("calibration_set_summary"))

    @property
    def calibration_set_dir(self) -> Path | None:
        """The calibration set's folder, if it is recorded and still holds a calibration set."""
        where = self.calibration_set.get("dir")
        return Path(str(where)) if where and (Path(str(where)) / "manifest.json").is_file() else None

    def describe_set(self) -> str:
        """``strategy × size (folder name)`` of the calibration set, else the calibration folder."""
        cs = self.calibration_set
        if cs:
            return f"{cs.get('strategy')} × {cs.get('size')} ({Path(str(cs.get('dir'))).name})"
        return self.folder

    @property
    def only_method(self) -> str | None:
        """The method when the run calibrated just one (then it is the one any build from it used)."""
        return self.methods[0] if len(self.methods) == 1 else None


@dataclass(frozen=True)
class EvaluatedData:
    """The rows an evaluation ran on (``evaluation.json["dataset"]``; ``record`` is the whole entry)."""

    record: Mapping

    @property
    def fingerprint(self) -> str:
        return str(self.record["fingerprint"])

    @property
    def labelled(self) -> bool:
        return bool(self.record["labelled"])

    @property
    def note(self) -> str:
        """Why the figures are limited (e.g. no labels: agreement only); "" when nothing is."""
        return str(self.record.get("note") or "")

    @property
    def notes(self) -> list[str]:
        return list(self.record.get("notes") or [])

    @property
    def warnings(self) -> list[str]:
        return list(self.record.get("warnings") or [])


@dataclass(frozen=True)
class Evaluation:
    """A saved FP32-vs-INT8 comparison (``evaluation.json``, ``layers.json``, ``predictions.npz``).

    Read it through the typed parts: ``model``, ``engine``, ``dataset``, ``metrics``; ``data`` is the
    raw JSON.
    """

    dir: Path
    data: dict
    layers: dict | None = None

    @classmethod
    def load(cls, directory: str | Path) -> Evaluation:
        directory = Path(directory)
        data = read_artifact_json(directory / "evaluation.json", SCHEMA, "give a validate run folder")
        layers_path = directory / "layers.json"
        return cls(directory, data, read_json(layers_path) if layers_path.is_file() else None)

    @property
    def metrics(self) -> Metrics:
        return Metrics.from_dict(self.data["metrics"])

    @property
    def model(self) -> EvaluatedModel:
        return EvaluatedModel.from_dict(self.data["model"])

    @property
    def engine(self) -> EvaluatedEngine:
        return EvaluatedEngine.from_dict(self.data["engine"])

    @property
    def dataset(self) -> EvaluatedData:
        return EvaluatedData(self.data["dataset"])

    @property
    def calibration(self) -> EvaluatedCalibration | None:
        """The calibration run shown per tensor (``--calibration``): folder, methods, calibration set; None if none."""
        recorded = self.data.get("calibration")
        return EvaluatedCalibration.from_dict(recorded) if recorded else None

    @property
    def calibrator(self) -> str | None:
        """The calibration method behind the INT8 engine: as its build recorded it, else the shown run's
        when it calibrated one method only (None: not known)."""
        return self.engine.calibrator or (self.calibration.only_method if self.calibration is not None else None)

    def headline(self) -> dict:
        """The headline figures (what the verdict judges and reports show first): accuracy and its drop
        with the 95 % interval, agreement and logit figures, the embedding cosine, and an embedding model's
        neighbour and similarity figures."""
        m = self.metrics
        ci = m.accuracy_diff_ci
        return {
            "labelled": self.labelled,
            "note": self.dataset.note,
            "rows": m.n,
            "accuracy_fp32": m.accuracy_fp32,
            "accuracy_int8": m.accuracy_int8,
            "macro_f1_fp32": m.macro_f1_fp32,
            "macro_f1_int8": m.macro_f1_int8,
            "accuracy_drop_points": m.accuracy_drop_points,
            **drop_interval_points(ci),
            "ci_confidence": ci.get("confidence"),
            **{k: m.agreement(k) for k in ("top1_agreement", "logit_cosine", "max_abs_diff", "mean_abs_diff", "kl_softmax")},
            "embedding_cosine": m.embedding_cosine,
            "embedding_cosine_min": m.embedding_cosine_min,
            **self._embedding_headline(),
        }

    def _embedding_headline(self) -> dict:
        """Headline numbers of an embedding model (no logits): cosine, neighbours, similarity ranks, k-NN."""
        m = self.metrics
        if m.is_classifier:
            return {"model_kind": m.kind}
        knn = m.knn or {}
        return {"model_kind": m.kind, "embedding_cosine_p1": m.embedding_cosine_p1, "neighbour_k": m.neighbour_k,
                "neighbour_recall_at_1": m.neighbour_recall_at_1, "neighbour_recall_at_k": m.neighbour_recall_at_k,
                "similarity_spearman": m.similarity_spearman, "knn_accuracy_fp32": knn.get("accuracy_fp32"),
                "knn_accuracy_int8": knn.get("accuracy_int8"), "knn_accuracy_drop_points": knn.get("accuracy_drop_points")}

    def default_budget(self) -> ReleaseBudget:
        """The release budget for what this evaluation can measure (no drop without labels, no embedding
        criterion without an embedding, no agreement without logits)."""
        return default_budget(has_embedding=self.metrics.has_embedding, labelled=self.labelled,
                              has_logits=self.metrics.is_classifier)

    @property
    def layer_report(self) -> LayerReport | None:
        """The per-layer analysis (None: validated without it)."""
        return LayerReport(self.layers) if self.layers else None

    @property
    def first_degraded_tensor(self) -> str | None:
        return (self.data.get("layers") or {}).get("first_degraded")

    @property
    def labelled(self) -> bool:
        return self.dataset.labelled

    @property
    def overall(self) -> dict:
        return self.data["metrics"]["overall"]

    @property
    def buckets(self) -> list[dict]:
        return self.data["metrics"]["buckets"]

    def predictions(self) -> dict[str, np.ndarray]:
        with np.load(self.dir / "predictions.npz") as npz:
            return {k: npz[k] for k in npz.files}

    def summary(self) -> dict:
        m = self.metrics
        s = {"rows": m.n, "labelled": self.labelled, "model_sha256": self.model.sha256}
        if not m.is_classifier:
            s.update({k: v for k, v in m.headline().items() if v is not None})
        elif m.top1_agreement is not None:
            s.update(top1_agreement=m.top1_agreement, kl_softmax=m.kl_softmax)
        if m.embedding_cosine is not None:
            s["embedding_cosine"] = m.embedding_cosine
        if self.labelled and m.is_classifier:
            s.update({"accuracy_fp32": m.accuracy_fp32, "accuracy_int8": m.accuracy_int8,
                      "accuracy_drop_points": m.accuracy_drop_points})
        if self.layer_report is not None:
            s["first_degraded_tensor"] = self.layer_report.first_degraded
        if self.data.get("cluster"):
            s.update(cluster=self.data["cluster"]["spec"], workers=self.data["cluster"]["workers"])
        return s


def _preparation_warnings(calibration_info: Mapping | None, dataset_info: Mapping) -> list[str]:
    """A warning when the calibration set's texts were prepared unlike the evaluated ones (entities,
    markup, quotes), when the calibration run is known and recorded how its texts looked."""
    calset_dir = EvaluatedCalibration.from_dict(calibration_info).calibration_set_dir if calibration_info else None
    if calset_dir is None:
        return []
    try:
        recorded = CalibrationSet.load(calset_dir).hygiene
    except (InputError, OSError, ValueError, KeyError, TypeError):  # provenance is best effort
        return []
    if recorded is None or not dataset_info.get("hygiene"):
        return []
    mismatch = preparation_mismatch(recorded, LoadReport(**dataset_info["hygiene"]))
    return [mismatch] if mismatch else []


def _ranges_source(built: EngineArtifact) -> str | None:
    """The range set a build read (its config's, else what an older build recorded of it)."""
    return built.config.ranges.source if built.config is not None else built.ranges_record.get("source")


def validate(config: ValidateConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> Evaluation:
    """Compare the INT8 engine with the FP32 baseline on the eval split and save an :class:`Evaluation`."""
    t0 = time.monotonic()
    settings = config.settings
    edges = settings.check()
    source = resolve_engine(config.engine)
    model = config.model
    built = source.artifact
    model = replace(model, labels=model.labels or (built.labels if built is not None else ()))
    if not model.roles_named:  # as the calibration set recorded them, else detected
        model = replace(model, **recorded_roles(config.calibration or (_ranges_source(built) if built is not None
                                                                       else None)))
    spec = model.load()
    check_engine_model(source, spec)
    ranged, calibration_info = ({}, None)
    if config.calibration:
        ranged, calibration_info = calibrated_amax(config.calibration, spec.sha256)
    data = load_eval_data(config.data, spec, limit=settings.limit, seed=settings.seed)
    dataset_record = {**data.info, "warnings": _preparation_warnings(calibration_info, data.info)}
    report = progress or (lambda f, m="": None)
    report(0.02, f"{len(data)} texts loaded")
    layer_rows = min(settings.layer_rows or len(data), len(data)) if settings.layers else 0
    sharded = f"{FP32_PASS} + {INT8_PASS}"  # on a cluster each shard runs both models
    passes = ([(sharded, 2 * len(data))] if Cluster.parse(settings.cluster)
              else [(FP32_PASS, len(data)), (INT8_PASS, len(data))])
    phases = Phases(report, [*passes, *([(LAYER_PASS, LAYER_PASS_COST * layer_rows)] if settings.layers else [])],
                    start=0.02, span=0.97)

    roles = spec.roles
    cluster = None
    with connect(settings.cluster) as session:
        if session is None:
            fp32_engine = OrtEngine(OrtSessionLoader(spec.onnx_path, threads=settings.threads), name="onnxruntime-fp32")
            engine = int8_engine(source, settings.threads)
            fp32 = run_engine(fp32_engine, data.encoded, spec.input_dtypes, roles, batch_size=settings.batch_size,
                              progress=phases.phase(FP32_PASS))
            int8 = run_engine(engine, data.encoded, spec.input_dtypes, roles, batch_size=settings.batch_size,
                              progress=phases.phase(INT8_PASS))
            engine_name = getattr(engine, "name", "int8")
        else:  # both passes shard by shard on the workers, gathered in row order (calib.distributed)
            if not source.engine_file.is_file():  # one line here, not an error on a worker
                raise InputError(f"engine {source.path} has no {source.engine_file.name} (its {source.engine_backend} "
                                 "engine file)")
            fp32, int8, engine_name = run_engines_sharded(
                session, spec.onnx_path, source.engine_backend, source.engine_file, data.encoded, spec.input_dtypes, roles,
                batch_size=settings.batch_size, threads=settings.threads, progress=phases.phase(sharded))
            cluster = session.describe()
    if fp32.logits is not None and data.classes and len(data.classes) != fp32.logits.shape[1]:
        raise InputError(f"the model has {len(data.classes)} labels but outputs {fp32.logits.shape[1]} logits")
    metrics = compare(fp32, int8, data, edges=edges, n_resamples=settings.bootstrap, seed=settings.seed)
    t_run = time.monotonic() - t0

    layers = None
    if settings.layers:
        rows = np.arange(len(data))
        if settings.layer_rows and settings.layer_rows < len(rows):
            rows = np.sort(np.random.default_rng(settings.seed + 1).choice(len(rows), settings.layer_rows, replace=False))
        layers = layer_analysis(spec.onnx_path, source, data.encoded.subset(rows), spec.input_dtypes, ranged,
                                batch_size=min(settings.batch_size, LAYER_BATCH), threads=settings.threads,
                                progress=phases.phase(LAYER_PASS))

    evaluation = {
        "schema": SCHEMA,
        "model": {"path": str(spec.onnx_path), "sha256": spec.sha256, "logits_output": roles.logits,
                  "classes": list(data.classes), "max_length": spec.max_length,
                  "has_embedding": roles.embedding is not None, "kind": metrics.kind, "roles": roles.to_dict()},
        "engine": {**source.describe(), "name": engine_name},
        **({"cluster": cluster} if cluster else {}),
        "dataset": dataset_record,
        "calibration": calibration_info,
        "config": config_params(config),
        "metrics": metrics.to_dict(),
        "layers": None if layers is None else {"rows": layers["rows"], "first_degraded": layers["first_degraded"],
                                               "tensors": len(layers["tensors"])},
        "seconds": {"outputs": round(t_run, 2), "total": round(time.monotonic() - t0, 2)},
    }
    out_dir = Path(out_dir)
    none = np.zeros((len(data), 0), np.float32)
    arrays = {"fp32_logits": none if fp32.logits is None else fp32.logits,
              "int8_logits": none if int8.logits is None else int8.logits}
    if not metrics.is_classifier:  # embedding models: keep the embeddings for later comparisons
        arrays.update(fp32_embedding=fp32.embedding, int8_embedding=int8.embedding)
    atomic_save_npz(out_dir / "predictions.npz", **arrays,
                    labels=data.labels if data.labels is not None else np.full(len(data), -1, np.int64),
                    lengths=data.lengths, rows=data.rows,
                    embedding_cosine=metrics.row_cosine if metrics.row_cosine is not None else np.zeros(0))
    if layers is not None:
        atomic_write_json(out_dir / "layers.json", layers)
    atomic_write_json(out_dir / "evaluation.json", evaluation)
    report(1.0, "written")
    return Evaluation.load(out_dir)
