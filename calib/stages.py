"""The stages, one registry: name (the registry's ``stage`` and the run id's prefix), the title people
read, and where its entry function, config and artifact live.

Every pipeline stage has one entry ``fn(config, out_dir, *, progress=None) -> artifact`` taking a frozen
dataclass config and returning an artifact with ``load(dir)`` and ``summary()``; the demo preparation
writes ``<workspace>/demo/<task>/`` instead of a run folder (``run_folder=False``). Entries are named
by module path and resolved on use, so this module imports nothing and any module may read it.
Adding a stage: its module with the entry, config and artifact, then one :class:`Stage` here (and its
run-name facts in ``calib.naming.RUN_FACTS`` and headline in ``calib.formatting.HEADLINES``); the
CLI's run listing, the app's titles and the run names read them from here (``tests/test_structure.py``
checks every entry against the contract).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    module: str
    entry: str
    config: str
    artifact: str
    run_folder: bool = True  # False: writes outside runs/ (the demo assets)

    def _attr(self, name: str) -> Any:
        return getattr(importlib.import_module(self.module), name)

    def entry_fn(self) -> Callable[..., Any]:
        return self._attr(self.entry)

    def config_type(self) -> type:
        return self._attr(self.config)

    def artifact_type(self) -> type:
        return self._attr(self.artifact)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("demo", "Demo assets", "calib.demo.prepare", "prepare_demo", "DemoConfig", "DemoManifest", run_folder=False),
    Stage("calibset", "Calibration set", "calib.calibset", "assemble", "AssembleConfig", "CalibrationSet"),
    Stage("calibrate", "Calibration", "calib.calibrate", "calibrate", "CalibrateConfig", "Calibration"),
    Stage("build", "Build", "calib.build", "build", "BuildConfig", "EngineArtifact"),
    Stage("bench", "Benchmark", "calib.bench", "benchmark", "BenchConfig", "BenchResult"),
    Stage("validate", "Validation", "calib.validate", "validate", "ValidateConfig", "Evaluation"),
    Stage("compare", "Calibrators side by side", "calib.compare", "compare_calibrators", "CompareConfig",
          "CalibratorComparison"),
    Stage("sensitivity", "Sensitivity", "calib.sensitivity", "analyze_sensitivity", "SensitivityConfig",
          "SensitivityResult"),
    Stage("head", "Classifier head", "calib.head", "fit_head", "HeadConfig", "HeadArtifact"),
    Stage("report", "Report", "calib.report", "make_report", "ReportConfig", "Report"),
)}

STAGE_TITLES: dict[str, str] = {name: stage.title for name, stage in STAGES.items()}


def stage_names() -> tuple[str, ...]:
    return tuple(STAGES)


def stage_title(name: str) -> str:
    """What people read for a stage name (the name itself for one this version does not know)."""
    return STAGE_TITLES.get(name, name)
