"""Running a stage inside the workspace: one registered run per call, artifacts saved atomically.

Every stage module has one entry function ``fn(config, out_dir, progress=...) -> artifact`` taking a
frozen dataclass config; :func:`run_stage` wraps it with the run registry so the CLI and the app do
exactly the same thing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from calib.workspace import ProgressFn, Workspace

A = TypeVar("A")


def config_params(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-able data (paths as strings)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def run_stage(
    workspace: Workspace,
    stage: str,
    fn: Callable[..., A],
    config: Any,
    *,
    parents: Sequence[str] = (),
    label: str = "",
    session: str = "",
    run_id: str | None = None,
    progress: ProgressFn | None = None,
) -> tuple[str, A]:
    """Run ``fn(config, out_dir, progress=...)`` as a registered run; return (run id, artifact).

    Before the stage starts, every upstream artifact ``config`` names is checked against the sha256
    recorded when it was made (:meth:`Workspace.check_inputs`); a changed file stops the run with one
    line naming it, unless the workspace was opened with ``trust_changed`` -- then the changed files
    are recorded in the run's params (``trust_changed``).
    ``artifact.summary()`` (if defined) is stored in the registry for listings and comparisons.
    The returned artifact is re-loaded from its final folder (``type(artifact).load(run_dir)``) so
    its paths point at ``runs/<id>/``, not at the staging folder it was written in.
    """
    params = config_params(config)
    changed = workspace.check_inputs(params)  # refuses a changed upstream artifact unless trusted
    if changed:
        params["trust_changed"] = changed
    with workspace.start_run(stage, params, parents=parents, label=label,
                             session=session, run_id=run_id) as ctx:
        def report(fraction: float, message: str = "") -> None:
            ctx.progress(fraction, message)
            if progress is not None:
                progress(fraction, message)

        artifact = fn(config, ctx.dir, progress=report)
        summary = getattr(artifact, "summary", None)
        if callable(summary):
            ctx.summary.update(summary())
    loader = getattr(type(artifact), "load", None)
    if callable(loader):
        artifact = loader(workspace.run_dir(ctx.id))
    return ctx.id, artifact
