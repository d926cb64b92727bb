"""Calibrators side by side: build and validate every range set of one calibration run, then judge
them against one release budget and recommend one.

``compare_calibrators(CompareConfig, out_dir)`` runs the build stage (:func:`calib.build.build`) and
the validate stage (:func:`calib.validate.validate`) once per calibration method, each into its own
sub-folder (``<method>/engine``, ``<method>/evaluation``), and writes ``comparison.json``: one row per
method (headline figures, the drop's interval, the verdict), the recommended method and why, and
whether TensorRT's default calibrator (entropy) is the best choice for this model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from calib.build import BuildConfig, build
from calib.calibrate import Calibration, RangesRef
from calib.data import DataSpec
from calib.errors import InputError
from calib.evaluation import BucketFigures, EvalSettings
from calib.io import atomic_write_json, read_artifact_json
from calib.model import ModelRef
from calib.placement import Placement
from calib.report import compare_evaluations
from calib.validate import Evaluation, ValidateConfig, validate
from calib.verdict import FAIL, PASS, Recommendation, ReleaseBudget, Verdict, judge, recommend
from calib.workspace import ProgressFn

SCHEMA = "calib.comparison/1"
ENGINE_DIR, EVALUATION_DIR = "engine", "evaluation"


@dataclass(frozen=True)
class CompareConfig:
    """``calibration``: a calibrate run folder. ``model`` / ``data`` / ``settings``: the FP32 baseline, the
    evaluation rows and how every method's engine is evaluated (as :class:`~calib.validate.ValidateConfig`).
    ``methods``: which range sets (empty: every method of the calibration). ``placement``: the Q/DQ
    placement of every build (a preset, and nodes kept in float). ``budget``: the release budget (None:
    the default for what the evaluations can measure)."""

    calibration: str
    model: ModelRef
    data: DataSpec
    settings: EvalSettings = field(default_factory=EvalSettings)
    methods: tuple[str, ...] = ()
    placement: Placement = field(default_factory=Placement)
    budget: ReleaseBudget | None = None

    @classmethod
    def upgrade_params(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """0.1 kept the evaluation settings in a ``validation`` template."""
        values = dict(values)
        if "validation" in values:
            values.setdefault("settings", values.pop("validation"))
        return values


@dataclass(frozen=True)
class ComparisonRow:
    """One method's row of a comparison (``comparison.json["rows"]``; ``record`` is the whole row: the
    report's comparison figures, ``verdict``, ``headline``, ``bucket_drops``)."""

    record: Mapping[str, Any]

    @property
    def calibrator(self) -> str:
        return str(self.record["calibrator"])

    @property
    def texts(self) -> int:
        """Texts the method's engine was evaluated on."""
        return int(self.record["rows"])

    @property
    def verdict(self) -> Verdict:
        return Verdict.from_dict(self.record["verdict"])

    @property
    def headline(self) -> dict[str, Any]:
        """The evaluation's headline figures (:meth:`calib.validate.Evaluation.headline`)."""
        return dict(self.record.get("headline") or {})

    @property
    def is_embedding(self) -> bool:
        """An embedding model's row: no agreement or accuracy, its own similarity figures."""
        return self.headline.get("model_kind") == "embedding"

    @property
    def worst_bucket(self) -> str | None:
        """The length bucket where INT8 departs most from FP32 (None: not named)."""
        worst = self.record.get("worst_bucket")
        return str(worst["bucket"]) if isinstance(worst, Mapping) and worst.get("bucket") is not None else None

    def figure(self, name: str) -> float | None:
        """A comparison figure (``top1_agreement``, ``accuracy_drop_points``, ``drop_ci_low_points``, ...;
        None: not measured)."""
        value = self.record.get(name)
        return None if value is None else float(value)


@dataclass(frozen=True)
class CalibratorComparison:
    """A saved comparison: ``comparison.json`` plus one engine and one evaluation folder per method."""

    dir: Path
    data: dict

    @classmethod
    def load(cls, directory: str | Path) -> CalibratorComparison:
        directory = Path(directory)
        data = read_artifact_json(directory / "comparison.json", SCHEMA, "give a calibrator comparison run folder")
        return cls(directory, data)

    @property
    def methods(self) -> list[str]:
        return [r["calibrator"] for r in self.data["rows"]]

    @property
    def rows(self) -> list[dict]:
        """One row per method: calibrator, headline figures, verdict, per-bucket drops (``comparison.json``)."""
        return list(self.data["rows"])

    @property
    def budget(self) -> ReleaseBudget:
        """The budget every method was judged against when the comparison ran."""
        return ReleaseBudget.from_dict(self.data["budget"])

    @property
    def placement(self) -> str:
        """The placement preset of every method's build."""
        return self.build_placement.preset

    @property
    def build_placement(self) -> Placement:
        """The Q/DQ placement of every method's build (earlier comparisons recorded the preset alone)."""
        return Placement.from_record(self.data["placement"])

    @property
    def recommended_row(self) -> dict:
        """The recommended method's row."""
        return self.rows[self.recommendation.index]

    @property
    def entries(self) -> list[ComparisonRow]:
        """The rows, typed, in the order the methods ran."""
        return [ComparisonRow(r) for r in self.data["rows"]]

    @property
    def recommended(self) -> ComparisonRow:
        return self.entries[self.recommendation.index]

    @property
    def is_embedding(self) -> bool:
        """Whether every method's row is an embedding model's."""
        return all(e.is_embedding for e in self.entries)

    @property
    def recommendation(self) -> Recommendation:
        return Recommendation(**self.data["recommendation"])

    def evaluation_dir(self, method: str) -> Path:
        if method not in self.methods:
            raise InputError(f"comparison {self.dir} has no method {method!r}; it has {', '.join(self.methods)}")
        return self.dir / method / EVALUATION_DIR

    @property
    def recommended_evaluation(self) -> Path:
        """The evaluation folder of the recommended method (what a verdict on the comparison judges)."""
        return self.evaluation_dir(self.recommendation.name)

    def evaluation_dirs(self, *, recommended_first: bool = True) -> list[Path]:
        """Every method's evaluation folder; the recommended one first (the report's release candidate)."""
        methods = self.methods
        if recommended_first:
            best = self.recommendation.name
            methods = [best, *[m for m in methods if m != best]]
        return [self.evaluation_dir(m) for m in methods]

    def summary(self) -> dict:
        rec = self.recommendation
        return {"recommended": rec.name, "recommended_passes": rec.passes, "verdict": PASS if rec.passes else FAIL,
                "methods": self.methods,
                "passing": [e.calibrator for e in self.entries if e.verdict.passed],
                "placement": self.placement, "model_sha256": self.data["model_sha256"]}


def compare_calibrators(config: CompareConfig, out_dir: Path, *,
                        progress: ProgressFn | None = None) -> CalibratorComparison:
    """Build and validate each method's ranges; write ``comparison.json`` with the recommendation."""
    report = progress or (lambda fraction, message="": None)
    calibration = Calibration.load(config.calibration)
    methods = tuple(config.methods) or tuple(calibration.methods)
    unknown = [m for m in methods if m not in calibration.methods]
    if unknown:
        raise InputError(f"calibration {config.calibration} has no ranges for {', '.join(unknown)}; it has "
                         f"{', '.join(calibration.methods)}")
    if len(set(methods)) != len(methods):
        raise InputError(f"methods repeat: {', '.join(methods)}")
    out_dir = Path(out_dir)
    evaluations: list[Evaluation] = []
    for i, method in enumerate(methods):
        start, span = i / len(methods), 1.0 / len(methods)  # build ≈ 30 % of a method's time, validate 70 %

        engine_dir = out_dir / method / ENGINE_DIR
        build(BuildConfig(model=config.model.model, ranges=RangesRef(config.calibration, method),
                          placement=config.placement), engine_dir,
              progress=lambda f, m="", _s=start, _w=span, _m=method, _i=i: report(
                  _s + _w * 0.3 * f, f"{_m} ({_i + 1}/{len(methods)}): build: {m}"))
        vconfig = ValidateConfig(engine=str(engine_dir), model=config.model, data=config.data,
                                 settings=config.settings, calibration=config.calibration)
        evaluations.append(validate(vconfig, out_dir / method / EVALUATION_DIR,
                                    progress=lambda f, m="", _s=start, _w=span, _m=method, _i=i: report(
                                        _s + _w * (0.3 + 0.7 * f), f"{_m} ({_i + 1}/{len(methods)}): validate: {m}")))
    rows = compare_evaluations(evaluations)
    budget = config.budget if config.budget is not None else evaluations[0].default_budget()
    for row, ev in zip(rows, evaluations):
        row["run"] = row["calibrator"] or row["run"]
        row["verdict"] = judge(row, budget).to_dict()
        row["evaluation"] = f"{row['calibrator']}/{EVALUATION_DIR}"
        row["bucket_drops"] = [_bucket_figures(b) for b in ev.metrics.bucket_figures]
        row["headline"] = ev.headline()
    rec = recommend(rows, budget)
    data = {"schema": SCHEMA, "calibration": str(Path(config.calibration).resolve()), "placement": asdict(config.placement),
            "model_sha256": evaluations[0].model.sha256, "dataset": dict(evaluations[0].dataset.record),
            "budget": budget.to_dict(), "rows": rows, "recommendation": rec.to_dict()}
    atomic_write_json(out_dir / "comparison.json", data)
    report(1.0, rec.headline)
    return CalibratorComparison.load(out_dir)


def _bucket_figures(bucket: BucketFigures) -> dict:
    """One length bucket's headline figures: agreement and drop for a classifier, the embedding cosine
    (and neighbour recall@1) for an embedding model, whose buckets have no agreement."""
    out: dict = {"bucket": bucket.bucket, "n": bucket.n}
    if bucket.has_agreement:
        out.update(top1_agreement=bucket.top1_agreement, accuracy_drop_points=bucket.accuracy_drop_points)
    if bucket.has_embedding:
        out["embedding_cosine"] = bucket.embedding_cosine
    if bucket.neighbour_recall_at_1 is not None:
        out["neighbour_recall_at_1"] = bucket.neighbour_recall_at_1
    return out
