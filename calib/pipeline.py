"""Running a stage inside the workspace: one registered run per call, artifacts saved atomically.

Every stage module has one entry function ``fn(config, out_dir, progress=...) -> artifact`` taking a
frozen dataclass config; :func:`run_stage` wraps it with the run registry so the CLI and the app do
exactly the same thing.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from calib.errors import InputError
from calib.workspace import ProgressFn, Workspace

A = TypeVar("A")
C = TypeVar("C")


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


def _part_type(hint: Any) -> type | None:
    """The dataclass a config field holds (``ModelRef``, ``DataSpec``, ``ReleaseBudget | None``), else None."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    parts = [t for t in options if isinstance(t, type) and dataclasses.is_dataclass(t)]
    return parts[0] if parts else None


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


RENAMED = {"pair_column": "text_pair_column", "preset": "placement"}
"""Top-level keys calib 0.1 wrote under another name: old name -> the one name (read, never written)."""


def one_ranges_reference(values: Mapping[str, Any], *, default_method: str | None = None) -> dict[str, Any]:
    """Build params with the range set as today's one ``ranges`` mapping ``{source, method}`` (a
    :class:`~calib.calibrate.RangesRef`). calib 0.1 wrote a ranges file as ``ranges`` or a calibration
    run as ``calibration`` plus ``method``; ``default_method`` fills a missing method (None: the
    ``RangesRef`` default)."""
    values = dict(values)
    if not isinstance(values.get("ranges"), Mapping) and ({"calibration", "method"} & set(values)
                                                           or isinstance(values.get("ranges"), str)):
        source = values.pop("calibration", "") or values.get("ranges") or ""
        method = values.pop("method", None) or default_method
        values["ranges"] = {"source": source, **({"method": method} if method else {})}  # else RangesRef's own
    return values


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """``cls``'s resolved field annotations (resolving them is most of a params read's time)."""
    return typing.get_type_hints(cls)


def nest_params(cls: type, values: Mapping[str, Any], *, renames: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Plain config data in today's layout: each part (a ``ModelRef``, ``DataSpec``, ``Placement``, ...) under
    its own key as a dict, JSON lists as tuples, old top-level key names renamed (``renames``, default
    :data:`RENAMED`).

    Reads the flat layout earlier versions wrote, where a part's fields sat at the top level and the part's
    own key held its first field (``"model": "m.onnx", "tokenizer": ...``; ``"data": "demo:x"``, or
    ``"source": ...``). Keys ``cls`` does not know stay as they are (see :func:`config_from_params`).
    A part given as a dataclass instance is kept.
    """
    hints = _type_hints(cls)
    names = RENAMED if renames is None else renames
    values = {names.get(k, k): v for k, v in values.items() if not (k in names and names[k] in values)}
    out = {k: _tuples(v) for k, v in values.items()}
    own = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        part = _part_type(hints[f.name])
        value = values.get(f.name, dataclasses.MISSING)
        if part is None or value is None or isinstance(value, part):
            continue
        if isinstance(value, Mapping):
            out[f.name] = nest_params(part, value, renames={})
            continue
        part_fields = [p.name for p in dataclasses.fields(part)]
        flat = {k: values[k] for k in part_fields if k in values}
        if value is not dataclasses.MISSING:
            flat[part_fields[0]] = value
        if flat:
            for k in set(part_fields) - own:  # a flat key that belongs to the part only
                out.pop(k, None)
            out[f.name] = nest_params(part, flat, renames={})
    return out


def config_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of config class ``cls`` that has one (factories called): what a form
    offers first, read from the config rather than repeated."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _default_fields(f: dataclasses.Field, part: type) -> dict[str, Any]:
    """The fields of config field ``f``'s default ``part`` instance, as they are ({} when it has none)."""
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        return {}
    return {p.name: getattr(default, p.name) for p in dataclasses.fields(part)} if isinstance(default, part) else {}


def config_from_params(cls: type[C], values: Mapping[str, Any], *, renames: Mapping[str, str] | None = None,
                       strict: bool = False, where: str = "config") -> C:
    """``cls`` from the plain data :func:`config_params` wrote (run params, a manifest's ``config``, a
    recipe) or the flat layout of earlier versions (:func:`nest_params`). Keys ``cls`` does not know are
    left out (written by a later version), or with ``strict`` (a user's recipe) refused in one
    :class:`InputError`; so is a missing or mistyped setting. A config that changed its own layout since
    an earlier version says how to read the old one in a classmethod ``upgrade_params(values) -> values``."""
    return _construct(cls, todays_layout(cls, values, renames=renames), strict, where)


def todays_layout(cls: type, values: Mapping[str, Any], *, renames: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Recorded params of config ``cls`` (any version's layout) as plain data in today's layout: the config's
    own ``upgrade_params`` hook, then :func:`nest_params`. What :func:`config_from_params` constructs from,
    and what a reader that must not fail on a partial record (run names) reads."""
    upgrade = getattr(cls, "upgrade_params", None)
    return nest_params(cls, upgrade(values) if upgrade is not None else values, renames=renames)


def _construct(cls: type[C], values: Mapping[str, Any], strict: bool, where: str) -> C:
    hints = _type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown and strict:
        raise InputError(f"{where}: unknown settings {unknown} (known: {sorted(known)})")
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in known & set(values):
        part, value = _part_type(hints[name]), values[name]
        if part is not None and isinstance(value, Mapping):
            # keys left out keep the config's own default part (a search's budget, not ReleaseBudget's)
            value = _construct(part, {**_default_fields(fields[name], part), **value}, strict, f"{where}: {name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InputError(f"{where}: {exc}") from exc


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
