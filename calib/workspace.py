"""Workspace: one folder per run plus a SQLite registry of runs and their artifacts.

Layout under the workspace root::

    registry.sqlite         runs (id, stage, params, status, progress, times) and artifacts (path, sha256)
    runs/<run id>/          the artifacts of one finished run
    runs/.<run id>.staging/ where a running stage writes; renamed to runs/<run id>/ on success
    uploads/                files uploaded through the app (sanitised names)
    cache/                  derived data keyed by content hashes (token lengths, ...)
    demo/                   the prepared demo assets

A run's files are registered (with sha256) only after the stage returned and its staging folder
was renamed into place, so a crash never leaves a half-written artifact registered. Runs left
``running`` by a dead process are marked ``interrupted`` when the workspace is next opened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calib.errors import WorkspaceError
from calib.io import sha256_file, to_json

ProgressFn = Callable[[float, str], None]
"""Progress callback: (fraction done in [0, 1], short message)."""

DEFAULT_WORKSPACE_ENV = "CALIB_WORKSPACE"
STATUSES = ("running", "finished", "failed", "interrupted")
LATEST = "latest"
"""Run reference keyword: the newest finished run of the stage asked for (``latest:LABEL`` filters by label)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    session TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL,
    parents TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    summary TEXT NOT NULL DEFAULT '{}',
    pid INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (run_id, path)
);
CREATE INDEX IF NOT EXISTS runs_stage ON runs(stage, created_at);
"""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def default_workspace_path() -> Path:
    """``$CALIB_WORKSPACE`` if set, else ``./workspace``."""
    return Path(os.environ.get(DEFAULT_WORKSPACE_ENV, "workspace")).expanduser()


@dataclass(frozen=True)
class ArtifactRecord:
    path: str  # relative to the run folder
    sha256: str
    bytes: int


@dataclass(frozen=True)
class RunRecord:
    id: str
    stage: str
    label: str
    session: str
    params: dict[str, Any]
    parents: list[str]
    status: str
    progress: float
    message: str
    error: str
    summary: dict[str, Any]
    created_at: str
    finished_at: str | None
    dir: Path
    artifacts: list[ArtifactRecord] = field(default_factory=list)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunContext:
    """Handle given to the code of a running stage: where to write and how to report progress."""

    def __init__(self, workspace: Workspace, run_id: str, staging_dir: Path) -> None:
        self.workspace = workspace
        self.id = run_id
        self.dir = staging_dir
        self.summary: dict[str, Any] = {}
        self._last_progress = 0.0

    def progress(self, fraction: float, message: str = "") -> None:
        """Record progress in the registry (throttled to a few writes a second)."""
        now = time.monotonic()
        if fraction < 1.0 and now - self._last_progress < 0.25:
            return
        self._last_progress = now
        self.workspace._update(self.id, progress=float(min(max(fraction, 0.0), 1.0)), message=message)


class Workspace:
    """A workspace folder with its run registry. Safe to use from several threads and processes."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_workspace_path()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in ("runs", "uploads", "cache", "demo"):
                (self.root / sub).mkdir(exist_ok=True)
            probe = self.root / f".write-probe-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise WorkspaceError(
                f"workspace {self.root} is not writable ({exc.strerror or exc}); "
                f"choose another folder with --workspace or ${DEFAULT_WORKSPACE_ENV}"
            ) from exc
        self.db_path = self.root / "registry.sqlite"
        self._lock = threading.Lock()
        try:
            with self._connect() as conn:
                conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise WorkspaceError(f"run registry {self.db_path} is not a valid SQLite database: {exc}") from exc
        self.recover()

    # -- folders -------------------------------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def uploads_dir(self) -> Path:
        return self.root / "uploads"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def demo_dir(self) -> Path:
        return self.root / "demo"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    # -- registry ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            yield conn
        finally:
            conn.close()

    def _update(self, run_id: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as conn:
            conn.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))

    def recover(self) -> list[str]:
        """Mark runs left ``running`` by dead processes as interrupted and drop their staging folders."""
        with self._connect() as conn:
            rows = conn.execute("SELECT id, pid FROM runs WHERE status = 'running'").fetchall()
        dead = [run_id for run_id, pid in rows if not _pid_alive(pid)]
        for run_id in dead:
            self._update(run_id, status="interrupted", finished_at=_now(),
                         error="the process running this stage stopped before it finished")
            shutil.rmtree(self.runs_dir / f".{run_id}.staging", ignore_errors=True)
        live = {run_id for run_id, pid in rows if run_id not in dead}
        for staging in self.runs_dir.glob(".*.staging"):
            if staging.name[1 : -len(".staging")] not in live:
                shutil.rmtree(staging, ignore_errors=True)
        return dead

    def new_run_id(self, stage: str) -> str:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return f"{stage}-{stamp}-{secrets.token_hex(3)}"

    @contextlib.contextmanager
    def start_run(
        self,
        stage: str,
        params: dict[str, Any],
        *,
        parents: Sequence[str] = (),
        label: str = "",
        session: str = "",
        run_id: str | None = None,
    ) -> Iterator[RunContext]:
        """Register a running stage and yield its :class:`RunContext`.

        The block writes into ``ctx.dir``. When it returns, the folder becomes ``runs/<id>`` and
        every file in it is registered with its sha256; when it raises, the run is marked failed
        with the error's message, its folder removed, and the exception re-raised.
        """
        run_id = run_id or self.new_run_id(stage)
        staging = self.runs_dir / f".{run_id}.staging"
        staging.mkdir(parents=True)
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO runs (id, stage, label, session, params, parents, status, pid, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                (run_id, stage, label, session, to_json(params), json.dumps(list(parents)),
                 os.getpid(), _now()),
            )
        ctx = RunContext(self, run_id, staging)
        try:
            yield ctx
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self._update(run_id, status=status, finished_at=_now(), error=message)
            raise
        self._commit(ctx)

    def _commit(self, ctx: RunContext) -> None:
        final = self.run_dir(ctx.id)
        records = [
            ArtifactRecord(str(p.relative_to(ctx.dir)), sha256_file(p), p.stat().st_size)
            for p in sorted(ctx.dir.rglob("*")) if p.is_file()
        ]
        os.replace(ctx.dir, final)
        with self._lock, self._connect() as conn:
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO artifacts (run_id, path, sha256, bytes) VALUES (?, ?, ?, ?)",
                [(ctx.id, r.path, r.sha256, r.bytes) for r in records],
            )
            conn.execute(
                "UPDATE runs SET status = 'finished', progress = 1, finished_at = ?, summary = ? WHERE id = ?",
                (_now(), to_json(ctx.summary), ctx.id),
            )
            conn.execute("COMMIT")

    def get_run(self, run_id: str) -> RunRecord:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise WorkspaceError(f"no run {run_id!r} in workspace {self.root}")
            arts = conn.execute(
                "SELECT path, sha256, bytes FROM artifacts WHERE run_id = ? ORDER BY path", (run_id,)
            ).fetchall()
            names = [d[0] for d in conn.execute("SELECT * FROM runs LIMIT 0").description]
        return self._record(dict(zip(names, row)), [ArtifactRecord(*a) for a in arts])

    def list_runs(self, stage: str | None = None, status: str | None = None,
                  session: str | None = None, limit: int = 500) -> list[RunRecord]:
        """Runs, newest first, optionally filtered."""
        where, args = [], []
        for col, value in (("stage", stage), ("status", status), ("session", session)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        with self._connect() as conn:
            cur = conn.execute(sql, (*args, limit))
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return [self._record(dict(zip(names, row)), []) for row in rows]

    def _record(self, row: dict[str, Any], artifacts: list[ArtifactRecord]) -> RunRecord:
        return RunRecord(
            id=row["id"], stage=row["stage"], label=row["label"], session=row["session"],
            params=json.loads(row["params"]), parents=json.loads(row["parents"]),
            status=row["status"], progress=row["progress"], message=row["message"],
            error=row["error"], summary=json.loads(row["summary"] or "{}"),
            created_at=row["created_at"], finished_at=row["finished_at"],
            dir=self.run_dir(row["id"]), artifacts=artifacts,
        )

    def verify(self, run_id: str) -> list[str]:
        """Artifacts of a finished run whose file is missing or whose sha256 changed."""
        run = self.get_run(run_id)
        bad = []
        for art in run.artifacts:
            path = run.dir / art.path
            if not path.is_file() or sha256_file(path) != art.sha256:
                bad.append(art.path)
        return bad

    def find_run_id(self, ref: str, stage: str | None = None) -> str:
        """The id of the run ``ref`` names: an exact run id; ``latest`` (the newest finished run of
        ``stage``) or ``latest:LABEL`` (the newest finished one with that label); or a unique prefix
        of a run id (among runs of ``stage`` when there are any). One-line error otherwise."""
        keyword, _, label = ref.partition(":")
        with self._connect() as conn:
            if keyword == LATEST:
                sql, args = "SELECT id FROM runs WHERE status = 'finished'", []
                if stage is not None:
                    sql, args = sql + " AND stage = ?", [stage]
                if label:
                    sql, args = sql + " AND label = ?", [*args, label]
                row = conn.execute(sql + " ORDER BY created_at DESC, rowid DESC LIMIT 1", args).fetchone()
                if row is None:
                    what = " ".join(filter(None, ["finished", stage, "run"]))
                    raise WorkspaceError(f"no {what}{f' labelled {label!r}' if label else ''} in workspace {self.root}")
                return row[0]
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (ref,)).fetchone() is not None:
                return ref
            found = conn.execute("SELECT id, stage FROM runs WHERE substr(id, 1, ?) = ? ORDER BY created_at DESC",
                                 (len(ref), ref)).fetchall()
        if stage is not None and any(s == stage for _, s in found):
            found = [(i, s) for i, s in found if s == stage]
        if not found:
            raise WorkspaceError(f"no run {ref!r} in workspace {self.root} (give a run id, a unique id prefix, "
                                 f"{LATEST} or {LATEST}:LABEL)")
        if len(found) > 1:
            names = ", ".join(i for i, _ in found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
            raise WorkspaceError(f"run prefix {ref!r} is ambiguous: {names}")
        return found[0][0]

    def resolve_run(self, ref: str | Path, stage: str | None = None) -> Path:
        """A run folder from a run reference (see :meth:`find_run_id`), or a path given directly (for
        artifacts outside the workspace). ``latest`` is always the keyword; write ``./latest`` for a folder."""
        path = Path(ref)
        if path.exists() and str(ref).partition(":")[0] != LATEST:
            return path
        ref = self.find_run_id(str(ref), stage)
        run = self.get_run(ref)
        if stage is not None and run.stage != stage:
            raise WorkspaceError(f"run {ref} is a {run.stage!r} run, expected a {stage!r} run")
        if run.status != "finished":
            raise WorkspaceError(f"run {ref} is {run.status}, not finished: {run.error or run.message}")
        return run.dir
