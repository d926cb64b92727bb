"""Names people can tell runs apart by: what a run is (stage · calibrator · placement · size · label ·
time), with the id secondary. Built from the registry record (parameters and summary) and, for a
validation, from the build it validated."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from calib.pipeline import todays_layout
from calib.stages import STAGES, stage_title
from calib.workspace import RunRecord

Lookup = Callable[[str], "RunRecord | None"]


def short_time(iso: str | None) -> str:
    """``2026-11-25T16:49:49+00:00`` → ``25 Nov 16:49`` (UTC, as recorded)."""
    if not iso:
        return ""
    try:
        return dt.datetime.fromisoformat(iso).strftime("%d %b %H:%M")
    except ValueError:
        return iso[:16]


def _texts(n: Any) -> str | None:
    return f"{int(n):,} texts" if isinstance(n, (int, float)) and n else None


def _preset(params: Mapping[str, Any]) -> Any:
    """The placement preset in today's params layout."""
    return (params.get("placement") or {}).get("preset")


def _build_facts(params: Mapping[str, Any], summary: Mapping[str, Any]) -> list[str | None]:
    excluded = summary.get("excluded_nodes") or len((params.get("placement") or {}).get("exclude_nodes") or ())
    ranges = params.get("ranges") or {}
    source = str(ranges.get("source") or "")
    method = Path(source).stem if source.lower().endswith(".json") else ranges.get("method")  # a file: its stem
    return [method, _preset(params), f"{excluded} in float" if excluded else None]


Facts = Callable[[Mapping[str, Any], Mapping[str, Any], "Lookup | None"], list]


def _calibset_facts(p: Mapping[str, Any], s: Mapping[str, Any], lookup: Lookup | None) -> list:
    return [p.get("strategy"), _texts(p.get("size")), f"seed {p['seed']}" if p.get("seed") else None]


def _calibrate_facts(p: Mapping[str, Any], s: Mapping[str, Any], lookup: Lookup | None) -> list:
    methods = p.get("methods") or s.get("methods") or []
    return [" + ".join(methods) if len(methods) <= 2 else f"{len(methods)} calibrators", _preset(p),
            _texts(s.get("texts"))]


def _of_build(p: Mapping[str, Any], lookup: Lookup | None) -> list:
    """The facts of the build a run measured (its ``engine`` folder), else that folder's name."""
    build = lookup(Path(str(p.get("engine", ""))).name) if lookup and p.get("engine") else None
    return _build_facts(recorded_params(build), build.summary) if build is not None \
        else [Path(str(p.get("engine", ""))).name or None]


def _validate_facts(p: Mapping[str, Any], s: Mapping[str, Any], lookup: Lookup | None) -> list:
    return [*_of_build(p, lookup), _texts(s.get("rows")) or _texts((p.get("settings") or {}).get("limit"))]


def _bench_facts(p: Mapping[str, Any], s: Mapping[str, Any], lookup: Lookup | None) -> list:
    return [*_of_build(p, lookup), _texts(s.get("rows"))]


def _compare_facts(p: Mapping[str, Any], s: Mapping[str, Any], lookup: Lookup | None) -> list:
    methods = p.get("methods") or s.get("methods") or []
    return [f"{len(methods)} calibrators" if methods else "every calibrator", _preset(p),
            _texts((p.get("settings") or {}).get("limit")), f"best {s['recommended']}" if s.get("recommended") else None]


def _sensitivity_facts(p: Mapping[str, Any], s: Mapping[str, Any], lookup: Lookup | None) -> list:
    return [(p.get("ranges") or {}).get("method"), _preset(p), p.get("granularity")]


def _head_facts(p: Mapping[str, Any], s: Mapping[str, Any], lookup: Lookup | None) -> list:
    return []


def _report_facts(p: Mapping[str, Any], s: Mapping[str, Any], lookup: Lookup | None) -> list:
    runs = len(p.get("evaluations") or [])
    return [s.get("verdict"), f"{runs} runs" if runs > 1 else None]


RUN_FACTS: dict[str, Facts] = {
    "calibset": _calibset_facts, "calibrate": _calibrate_facts,
    "build": lambda p, s, lookup: _build_facts(p, s), "bench": _bench_facts, "validate": _validate_facts,
    "compare": _compare_facts, "sensitivity": _sensitivity_facts, "head": _head_facts, "report": _report_facts,
}
"""Per stage (``calib.stages.STAGES`` with a run folder), the facts that tell one of its runs from its
siblings, from the run's registry params and summary (``tests/test_structure.py`` checks each stage
has one), read in today's layout (:func:`recorded_params`). A stage this version does not know is named
by its title and time."""


def recorded_params(run: RunRecord) -> dict[str, Any]:
    """The run's registry params in today's layout, whichever version wrote them (its stage config's
    reader, :func:`calib.pipeline.todays_layout`)."""
    stage = STAGES.get(run.stage)
    return todays_layout(stage.config_type(), run.params) if stage is not None else dict(run.params)


def run_facts(run: RunRecord, lookup: Lookup | None = None) -> list[str]:
    """The few facts that tell this run from its siblings (without stage, label and time)."""
    facts = RUN_FACTS.get(run.stage)
    return [str(f) for f in (facts(recorded_params(run), run.summary, lookup) if facts else []) if f]


def run_name(run: RunRecord, lookup: Lookup | None = None, *, with_id: bool = True) -> str:
    """``Validation · minmax · tensorrt · 400 texts · my label · 25 Nov 16:49 (validate-2026…-1db8b0)``."""
    parts = [stage_title(run.stage), *run_facts(run, lookup)]
    if run.label:
        parts.append(f"“{run.label}”")
    parts.append(short_time(run.created_at))
    name = " · ".join(p for p in parts if p)
    return f"{name} ({run.id})" if with_id else name


def registry_lookup(workspace: Any) -> Lookup:
    """A cached ``run id → RunRecord | None`` over a workspace's registry."""
    cache: dict[str, RunRecord | None] = {}

    def lookup(run_id: str) -> RunRecord | None:
        if run_id not in cache:
            try:
                cache[run_id] = workspace.get_run(run_id)
            except Exception:  # noqa: BLE001 - a deleted or foreign run is simply not described
                cache[run_id] = None
        return cache[run_id]

    return lookup
