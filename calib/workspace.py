"""Workspace: one folder per run plus a SQLite registry of runs and their artifacts.

Layout under the workspace root::

    registry.sqlite         runs (id, stage, params, status, progress, heartbeat, times) and artifacts (path, sha256)
    runs/<run id>/          the artifacts of one finished run (+ .calib-manifest.json, their sha256)
    runs/.<run id>.lock     held (flock) by the process running the stage, for as long as it runs
    runs/.<run id>.staging/ where a running stage writes; renamed to runs/<run id>/ on success
    uploads/                files uploaded through the app (sanitised names)
    cache/                  derived data keyed by content hashes (token lengths, ...)
    demo/                   the prepared demo assets

How a run is kept safe:

* **Liveness is an OS file lock, not a PID.** The running process takes an exclusive ``flock`` on
  ``runs/.<id>.lock`` *before* the run's registry row exists and releases it only after the row says
  how the run ended. A PID says nothing across PID namespaces (containers, ``unshare --pid``) or
  after the PID is reused; a lock is released by the kernel when its holder dies, whatever its PID.
  ``flock`` (not ``lockf``) so two threads of one process (the app's workers) exclude each other too.
  The run also writes a heartbeat timestamp to the registry every few seconds, shown by
  ``calib runs show``.
* **Row before folder.** The order is lock, registry row, staging folder; recovery lists staging
  folders *before* it reads the registry and deletes a folder only while holding its lock, so a
  workspace opened by another process at any moment never removes work in progress.
* **Atomic finish.** The artifacts' sha256 and the status ``finishing`` are written in one
  transaction, then the staging folder is renamed into place, then the status becomes ``finished``.
  A crash in between leaves a ``finishing`` run that recovery promotes to ``finished`` only if every
  file verifies against the recorded sha256; otherwise it becomes ``interrupted`` and its folder goes.
* **Artifacts are verified before use** (:meth:`Workspace.check_inputs`, called for every stage by
  :func:`calib.pipeline.run_stage` and by :meth:`Workspace.resolve_run`).

A read-only workspace (``Workspace(root, read_only=True)`` or ``None`` for "read-only if it cannot be
written") opens the registry with ``mode=ro`` and can list, show and verify runs, but not start any.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calib.errors import InputError, RunCancelled, WorkspaceError
from calib.io import atomic_write_text, sha256_file, to_json

log = logging.getLogger("calib.workspace")

ProgressFn = Callable[[float, str], None]
"""Progress callback: (fraction done in [0, 1], short message)."""

DEFAULT_WORKSPACE_ENV = "CALIB_WORKSPACE"
STATUSES = ("running", "finishing", "finished", "failed", "interrupted", "cancelled")
LATEST = "latest"
"""Run reference keyword: the newest finished run of the stage asked for (``latest:LABEL`` filters by label)."""
MANIFEST_FILE = ".calib-manifest.json"
MANIFEST_SCHEMA = "calib.run-manifest/1"
HEARTBEAT_SECONDS = 10.0
STALE_HEARTBEAT_SECONDS = 120.0  # liveness by heartbeat only where the filesystem has no flock
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)

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
    finished_at TEXT,
    heartbeat_at TEXT,
    host TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (run_id, path)
);
CREATE INDEX IF NOT EXISTS runs_stage ON runs(stage, created_at);
CREATE TABLE IF NOT EXISTS run_notes (
    run_id TEXT PRIMARY KEY REFERENCES runs(id),
    note TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '[]',
    updated_at TEXT NOT NULL
);
"""
_ADDED_COLUMNS = {"heartbeat_at": "TEXT", "host": "TEXT NOT NULL DEFAULT ''"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _age_seconds(stamp: str | None) -> float:
    if not stamp:
        return float("inf")
    try:
        return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp)).total_seconds()
    except ValueError:
        return float("inf")


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
    heartbeat_at: str | None = None
    pid: int = 0
    host: str = ""


# -- hashing with a per-process memo (a file is re-hashed only when its size/mtime/inode change) ----
_HASH_MEMO: dict[tuple[str, int, int, int], str] = {}
_HASH_MEMO_LOCK = threading.Lock()


def _sha256_memo(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _HASH_MEMO_LOCK:
        found = _HASH_MEMO.get(key)
    if found is None:
        found = sha256_file(path)
        with _HASH_MEMO_LOCK:
            _HASH_MEMO[key] = found
    return found


def _is_out_of_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in OUT_OF_SPACE:
        return True
    text = str(exc).lower()
    return isinstance(exc, sqlite3.Error) and ("disk is full" in text or "disk i/o error" in text)


# -- the run lock -------------------------------------------------------------------------------
class _NoLocks(Exception):
    """The filesystem does not support flock (some network filesystems)."""


def _try_lock(path: Path, wait_seconds: float = 0.0) -> int | None:
    """An fd holding an exclusive flock on the file at ``path`` (created if missing), or None if
    another open file description holds it (after waiting up to ``wait_seconds``). Raises
    :class:`_NoLocks` where flock is unsupported.

    A holder may unlink the file before releasing it, so after locking, the fd must still be the
    file at ``path``; otherwise the lock is on a dead inode and the current file is tried instead.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
            continue
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise _NoLocks(str(exc)) from exc
            raise
        held = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
            return fd
        os.close(fd)


def _lock_is_held(path: Path) -> bool:
    """True when some process holds ``path``'s lock (checked without creating the file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


class RunContext:
    """Handle given to the code of a running stage: where to write and how to report progress."""

    def __init__(self, workspace: Workspace, run_id: str, staging_dir: Path) -> None:
        self.workspace = workspace
        self.id = run_id
        self.dir = staging_dir
        self.summary: dict[str, Any] = {}
        self._last_progress = 0.0
        self._warned = False

    def progress(self, fraction: float, message: str = "") -> None:
        """Record progress in the registry (throttled to a few writes a second). A registry that
        cannot be written (busy, full disk) costs the progress display, never the run."""
        now = time.monotonic()
        if fraction < 1.0 and now - self._last_progress < 0.25:
            return
        self._last_progress = now
        try:
            self.workspace._update(self.id, progress=float(min(max(fraction, 0.0), 1.0)), message=message,
                                   heartbeat_at=_now())
        except (sqlite3.Error, OSError) as exc:  # WorkspaceError is an OSError
            if not self._warned:
                log.warning("run %s: progress not recorded (%s); the run continues", self.id, exc)
                self._warned = True


class _Heartbeat(threading.Thread):
    """Writes the run's heartbeat timestamp every ``HEARTBEAT_SECONDS`` until stopped."""

    def __init__(self, workspace: Workspace, run_id: str) -> None:
        super().__init__(name=f"calib-heartbeat-{run_id}", daemon=True)
        self.workspace, self.run_id = workspace, run_id
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(sqlite3.Error, OSError):
                self.workspace._update(self.run_id, heartbeat_at=_now())


class Workspace:
    """A workspace folder with its run registry. Safe to use from several threads and processes.

    ``read_only``: False (default) needs write access; True opens the registry read-only (inspect,
    verify); None opens it writable when possible and read-only otherwise (``self.read_only`` says).
    ``trust_changed``: use upstream artifacts whose sha256 changed (recorded in each run's params).
    """

    def __init__(self, root: str | Path | None = None, *, read_only: bool | None = False,
                 trust_changed: bool = False) -> None:
        self.root = Path(root) if root is not None else default_workspace_path()
        self.db_path = self.root / "registry.sqlite"
        self.trust_changed = trust_changed
        self._lock = threading.Lock()
        self.read_only = bool(read_only)
        if not self.read_only:
            try:
                self._prepare_writable()
            except WorkspaceError:
                if read_only is not None:
                    raise
                self.read_only = True
        if self.read_only:
            if not self.db_path.is_file():
                raise WorkspaceError(f"workspace {self.root} has no run registry (registry.sqlite); "
                                     "nothing to inspect there")
            self._check_registry()
            self.recovered: list[str] = []
            return
        self.recovered = self.recover()  # runs settled on opening (see calib runs recover)

    def _prepare_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in ("runs", "uploads", "cache", "demo"):
                (self.root / sub).mkdir(exist_ok=True)
            probe = self.root / f".write-probe-{os.getpid()}-{threading.get_ident()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise WorkspaceError(
                f"workspace {self.root} is not writable ({exc.strerror or exc}); "
                f"choose another folder with --workspace or ${DEFAULT_WORKSPACE_ENV} "
                "(calib runs list/show/verify can still read it)"
            ) from exc
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
            for column, decl in _ADDED_COLUMNS.items():
                if column not in have:
                    with contextlib.suppress(sqlite3.OperationalError):  # another process added it
                        conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {decl}")

    def _check_registry(self) -> None:
        with self._connect() as conn:
            conn.execute("SELECT count(*) FROM runs").fetchone()

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

    def _staging_dir(self, run_id: str) -> Path:
        return self.runs_dir / f".{run_id}.staging"

    def _lock_path(self, run_id: str) -> Path:
        return self.runs_dir / f".{run_id}.lock"

    # -- registry ------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if not self.read_only:
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            return conn
        uri = f"{self.db_path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            # A WAL database in a folder nobody can write: SQLite cannot create the shared-memory
            # file, but since nobody can write there either, reading it as immutable is exact.
            conn.close()
            conn = sqlite3.connect(f"{uri}&immutable=1", uri=True, timeout=30, isolation_level=None)
        return conn

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A registry connection; SQLite's own failures (full disk, I/O error, read-only file, busy)
        become one-line :class:`WorkspaceError` naming the workspace."""
        try:
            conn = self._open()
        except sqlite3.DatabaseError as exc:
            raise self._registry_error(exc) from exc
        try:
            yield conn
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # our own mistakes, not the disk's
        except sqlite3.DatabaseError as exc:
            raise self._registry_error(exc) from exc
        finally:
            conn.close()

    def _registry_error(self, exc: sqlite3.Error) -> WorkspaceError:
        text = str(exc)
        low = text.lower()
        if "not a database" in low or "malformed" in low:
            return WorkspaceError(f"run registry {self.db_path} is not a valid SQLite database ({text}); "
                                  "restore it from a backup or choose another --workspace")
        if "disk is full" in low or "disk i/o" in low:
            hint = "free space on that disk or choose another folder with --workspace"
        elif "readonly" in low or "read-only" in low:
            hint = "the workspace is read-only here: inspect it with calib runs list/show/verify, or use a writable --workspace"
        elif "locked" in low or "busy" in low:
            hint = "another process keeps the registry busy; try again"
        else:
            hint = f"check the folder or choose another with --workspace or ${DEFAULT_WORKSPACE_ENV}"
        return WorkspaceError(f"workspace {self.root}: run registry {self.db_path.name} failed ({text}); {hint}")

    def _update(self, run_id: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as conn:
            conn.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))

    def _status(self, run_id: str) -> str | None:
        with self._connect() as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else str(row[0])

    def _require_writable(self, what: str) -> None:
        if self.read_only:
            raise WorkspaceError(f"workspace {self.root} is open read-only; cannot {what} "
                                 "(choose a writable folder with --workspace)")

    # -- liveness and recovery -----------------------------------------------------------------
    def is_live(self, run_id: str) -> bool:
        """True while the process running ``run_id`` holds its lock (wherever that process lives)."""
        return _lock_is_held(self._lock_path(run_id))

    def recover(self) -> list[str]:
        """Settle runs whose process is gone; return their ids.

        A run is dead only when its lock can be taken. Dead ``running`` runs become ``interrupted``
        (their staging folder is removed); dead ``finishing`` runs become ``finished`` if every file
        verifies, else ``interrupted``. Leftover staging folders and lock files of dead runs go.
        Nothing whose lock is held is touched.
        """
        if self.read_only:
            return []
        # Folders and locks first, rows second: a run's lock and row exist before its folder, so any
        # folder seen here has its row in the query below, and a newer run holds its lock.
        candidates: dict[str, None] = {}
        for pattern, suffix in ((".*.staging", ".staging"), (".*.lock", ".lock"), (".*.deleting", ".deleting")):
            for path in self.runs_dir.glob(pattern):
                candidates[path.name[1:-len(suffix)]] = None
        with self._connect() as conn:
            for (run_id,) in conn.execute("SELECT id FROM runs WHERE status IN ('running', 'finishing')"):
                candidates[run_id] = None
        return [run_id for run_id in candidates if self._settle_if_dead(run_id)]

    def _settle_if_dead(self, run_id: str) -> bool:
        """If ``run_id``'s lock is free, settle its status and clean its leftovers; True if a run
        had to be marked (interrupted or recovered to finished)."""
        lock_path = self._lock_path(run_id)
        try:
            fd = _try_lock(lock_path)
        except _NoLocks:
            return self._settle_by_heartbeat(run_id)
        except OSError as exc:
            log.warning("cannot check run %s (%s); left as it is", run_id, exc)
            return False
        if fd is None:
            return False  # live
        try:
            return self._settle_locked(run_id)
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
            os.close(fd)

    def _settle_by_heartbeat(self, run_id: str) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT heartbeat_at, created_at FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is not None and _age_seconds(row[0] or row[1]) < STALE_HEARTBEAT_SECONDS:
            return False
        return self._settle_locked(run_id)

    def _settle_locked(self, run_id: str) -> bool:
        """Called holding the run's lock: the owner always records the outcome before releasing it,
        so the status read now is final."""
        status = self._status(run_id)
        staging, final = self._staging_dir(run_id), self.run_dir(run_id)
        shutil.rmtree(self.runs_dir / f".{run_id}.deleting", ignore_errors=True)
        if status == "running":
            self._update(run_id, status="interrupted", finished_at=_now(),
                         error="the process running this stage stopped before it finished")
            shutil.rmtree(staging, ignore_errors=True)
            return True
        if status == "finishing":
            folder = final if final.is_dir() else staging
            if folder.is_dir() and not self._changed_files(run_id, folder):
                if folder == staging:
                    os.replace(staging, final)
                self._update(run_id, status="finished", progress=1.0, finished_at=_now(),
                             message="recovered: the process stopped while finishing; every file verified")
            else:
                with self._connect() as conn:
                    conn.execute("BEGIN")
                    conn.execute("DELETE FROM artifacts WHERE run_id = ?", (run_id,))
                    conn.execute("UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? WHERE id = ?",
                                 (_now(), "the process stopped while finishing and its files do not verify", run_id))
                    conn.execute("COMMIT")
                shutil.rmtree(staging, ignore_errors=True)
                shutil.rmtree(final, ignore_errors=True)
            return True
        if staging.exists():  # failed/interrupted/unknown run: its staging folder is not work in progress
            shutil.rmtree(staging, ignore_errors=True)
        return False

    # -- starting and finishing runs -----------------------------------------------------------
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
        with the error's message, its folder removed, and the exception re-raised (a full disk as a
        one-line :class:`WorkspaceError` naming the workspace).
        """
        self._require_writable(f"start a {stage} run")
        run_id = run_id or self.new_run_id(stage)
        if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith(".") or "\x00" in run_id:
            raise InputError(f"run id {run_id!r} is not a plain name")
        lock_path = self._lock_path(run_id)
        try:  # a recovery that is looking at this (fresh) id holds its lock for a moment at most
            lock_fd = _try_lock(lock_path, wait_seconds=30.0)
        except _NoLocks:
            lock_fd = -1  # liveness falls back to the heartbeat
        except OSError as exc:
            raise self._os_error(exc, f"start the {stage} run") from exc
        if lock_fd is None:
            raise WorkspaceError(f"run {run_id} is already running in workspace {self.root}")
        staging = self._staging_dir(run_id)
        heartbeat: _Heartbeat | None = None
        try:
            with self._connect() as conn:
                conn.execute(
                    "INSERT INTO runs (id, stage, label, session, params, parents, status, pid, created_at,"
                    " heartbeat_at, host) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                    (run_id, stage, label, session, to_json(params), json.dumps(list(parents)),
                     os.getpid(), _now(), _now(), os.uname().nodename),
                )
            try:
                staging.mkdir(parents=True)
            except OSError as exc:
                self._end_failed(run_id, staging, exc)
                raise self._os_error(exc, f"start the {stage} run") from exc
            heartbeat = _Heartbeat(self, run_id)
            heartbeat.start()
            ctx = RunContext(self, run_id, staging)
            try:
                yield ctx
                self._commit(ctx, stage)
            except BaseException as exc:
                self._end_failed(run_id, staging, exc)
                if isinstance(exc, (OSError, sqlite3.Error)) and _is_out_of_space(exc):
                    raise self._os_error(exc, f"finish the {stage} run") from exc
                raise
        finally:
            if heartbeat is not None:
                heartbeat.stopped.set()
            if lock_fd >= 0:
                with contextlib.suppress(FileNotFoundError):
                    lock_path.unlink()
                os.close(lock_fd)

    def _os_error(self, exc: BaseException, what: str) -> WorkspaceError:
        if isinstance(exc, WorkspaceError):
            return exc
        if _is_out_of_space(exc):
            return WorkspaceError(f"no space left to {what} in workspace {self.root}; free space on that disk "
                                  "or choose another folder with --workspace")
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return WorkspaceError(f"cannot {what} in workspace {self.root}: {detail}")

    def _end_failed(self, run_id: str, staging: Path, exc: BaseException) -> None:
        """Record how the run ended (before its lock is released) and remove its unfinished files."""
        shutil.rmtree(staging, ignore_errors=True)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

        status = ("interrupted" if isinstance(exc, KeyboardInterrupt)
                  else "cancelled" if isinstance(exc, RunCancelled) else "failed")
        try:
            with self._connect() as conn:
                conn.execute("BEGIN")
                conn.execute("DELETE FROM artifacts WHERE run_id = ?", (run_id,))
                conn.execute("UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                             (status, _now(), message, run_id))
                conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as db_exc:
            log.warning("run %s: could not record its end (%s)", run_id, db_exc)

    def _commit(self, ctx: RunContext, stage: str) -> None:
        """Hashes + ``finishing`` in one transaction, rename into place, then ``finished``."""
        final = self.run_dir(ctx.id)
        records = [
            ArtifactRecord(str(p.relative_to(ctx.dir)), sha256_file(p), p.stat().st_size)
            for p in sorted(ctx.dir.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE
        ]
        manifest = {"schema": MANIFEST_SCHEMA, "run": ctx.id, "stage": stage,
                    "files": {r.path: {"sha256": r.sha256, "bytes": r.bytes} for r in records}}
        atomic_write_text(ctx.dir / MANIFEST_FILE, to_json(manifest))
        with self._lock, self._connect() as conn:
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO artifacts (run_id, path, sha256, bytes) VALUES (?, ?, ?, ?)",
                [(ctx.id, r.path, r.sha256, r.bytes) for r in records],
            )
            conn.execute("UPDATE runs SET status = 'finishing', summary = ?, heartbeat_at = ? WHERE id = ?",
                         (to_json(ctx.summary), _now(), ctx.id))
            conn.execute("COMMIT")
        os.replace(ctx.dir, final)
        try:
            self._update(ctx.id, status="finished", progress=1.0, finished_at=_now())
        except (sqlite3.Error, OSError) as exc:
            # The files are in place and recorded: recovery promotes the run once its files verify.
            log.warning("run %s: finished, but the registry could not say so yet (%s)", ctx.id, exc)

    # -- deleting ------------------------------------------------------------------------------
    def delete_run(self, run_id: str, *, force: bool = False) -> Path:
        """Remove a run's folder and registry rows. Refuses a live run, and (unless ``force``) a run
        other runs name as their parent. Returns the folder that was removed."""
        self._require_writable(f"delete run {run_id}")
        run = self.get_run(run_id)
        children = [r.id for r in self.list_runs(limit=100000) if run_id in r.parents]
        if children and not force:
            raise WorkspaceError(f"run {run_id} is the parent of {', '.join(children[:5])}"
                                 f"{' …' if len(children) > 5 else ''}; give --force to delete it anyway")
        lock_path = self._lock_path(run_id)
        try:
            fd = _try_lock(lock_path)
        except _NoLocks:
            fd = -1
            if run.status in ("running", "finishing") and _age_seconds(run.heartbeat_at) < STALE_HEARTBEAT_SECONDS:
                fd = None
        if fd is None:
            raise WorkspaceError(f"run {run_id} is still running (its process holds {lock_path.name}); "
                                 "stop that process first")
        try:
            doomed = self.runs_dir / f".{run_id}.deleting"
            for folder in (self.run_dir(run_id), self._staging_dir(run_id)):
                if folder.exists():
                    shutil.rmtree(doomed, ignore_errors=True)
                    os.replace(folder, doomed)  # out of sight first; removed below or by recovery
                    shutil.rmtree(doomed, ignore_errors=True)
            with self._connect() as conn:
                conn.execute("BEGIN")
                conn.execute("DELETE FROM artifacts WHERE run_id = ?", (run_id,))
                conn.execute("DELETE FROM run_notes WHERE run_id = ?", (run_id,))
                conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
                conn.execute("COMMIT")
        finally:
            if fd is not None and fd >= 0:
                with contextlib.suppress(FileNotFoundError):
                    lock_path.unlink()
                os.close(fd)
        return run.dir

    # -- notes and tags: what people write about a run (kept beside it, not among its artifacts) --
    def set_notes(self, run_id: str, note: str = "", tags: Sequence[str] = ()) -> None:
        """Replace the free-text note and the tags of a run (tags trimmed, de-duplicated, in order)."""
        self._require_writable("write notes")
        self.get_run(run_id)  # an unknown run is refused with the usual message
        clean = list(dict.fromkeys(t.strip() for t in tags if t and t.strip()))
        with self._connect() as conn:
            conn.execute("INSERT INTO run_notes (run_id, note, tags, updated_at) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(run_id) DO UPDATE SET note = excluded.note, tags = excluded.tags, "
                         "updated_at = excluded.updated_at", (run_id, note.strip(), json.dumps(clean), _now()))

    def notes(self, run_ids: Sequence[str] | None = None) -> dict[str, tuple[str, tuple[str, ...]]]:
        """``{run id: (note, tags)}`` for the runs that have any (all runs, or those of ``run_ids``)."""
        with self._connect() as conn:
            try:
                rows = conn.execute("SELECT run_id, note, tags FROM run_notes").fetchall()
            except sqlite3.OperationalError:  # a registry written before notes existed, opened read-only
                return {}
        wanted = None if run_ids is None else set(run_ids)
        return {str(r[0]): (str(r[1]), tuple(json.loads(r[2] or "[]"))) for r in rows
                if wanted is None or r[0] in wanted}

    # -- reading -------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunRecord:
        with self._connect() as conn:
            cur = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,))
            names = [d[0] for d in cur.description]
            row = cur.fetchone()
            if row is None:
                raise WorkspaceError(f"no run {run_id!r} in workspace {self.root}")
            arts = conn.execute(
                "SELECT path, sha256, bytes FROM artifacts WHERE run_id = ? ORDER BY path", (run_id,)
            ).fetchall()
        return self._record(dict(zip(names, row)), [ArtifactRecord(*a) for a in arts])

    def parent_of(self, run: RunRecord, stage: str) -> RunRecord | None:
        """The first of ``run``'s parents made by ``stage`` that is still in the workspace (its folder
        there), by its registry row, never by its id's spelling; None when there is none."""
        for parent in run.parents:
            try:
                record = self.get_run(parent)
            except WorkspaceError:  # deleted since
                continue
            if record.stage == stage and record.dir.is_dir():
                return record
        return None

    def children_of(self, run_id: str, stage: str, *, limit: int = 200) -> list[RunRecord]:
        """The finished ``stage`` runs made from run ``run_id`` (it is among their parents) whose folders
        are still here, newest first; of the newest ``limit`` runs of that stage."""
        return [r for r in self.list_runs(stage=stage, status="finished", limit=limit)
                if run_id in r.parents and r.dir.is_dir()]

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
            heartbeat_at=row.get("heartbeat_at"), pid=int(row.get("pid") or 0), host=row.get("host") or "",
        )

    def _changed_files(self, run_id: str, folder: Path, under: str = "") -> list[str]:
        """Registered files of ``run_id`` (below ``under``) that are missing from ``folder`` or whose
        sha256 differs from the record."""
        with self._connect() as conn:
            arts = conn.execute("SELECT path, sha256 FROM artifacts WHERE run_id = ? ORDER BY path",
                                (run_id,)).fetchall()
        bad = []
        for rel, digest in arts:
            if under and rel != under and not rel.startswith(under.rstrip("/") + "/"):
                continue
            path = folder / rel
            if not path.is_file() or _sha256_memo(path) != digest:
                bad.append(rel)
        return bad

    def verify(self, run_id: str) -> list[str]:
        """Artifacts of a finished run whose file is missing or whose sha256 changed."""
        run = self.get_run(run_id)
        return self._changed_files(run.id, run.dir)

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

    # -- resolving and verifying upstream artifacts -----------------------------------------------
    def resolve_run(self, ref: str | Path, stage: str | None = None) -> Path:
        """A run folder from a run reference (see :meth:`find_run_id`), or a path given directly (for
        artifacts outside the workspace). ``latest`` is always the keyword; write ``./latest`` for a folder.

        Either way its files are checked against their recorded sha256 first
        (:meth:`check_inputs`); a changed file is refused unless ``trust_changed``.
        """
        path = Path(ref)
        if path.exists() and str(ref).partition(":")[0] != LATEST:
            self.check_inputs([str(path)])
            return path
        ref = self.find_run_id(str(ref), stage)
        run = self.get_run(ref)
        if stage is not None and run.stage != stage:
            raise WorkspaceError(f"run {ref} is a {run.stage!r} run, expected a {stage!r} run")
        if run.status != "finished":
            raise WorkspaceError(f"run {ref} is {run.status}, not finished: {run.error or run.message}")
        self.check_inputs([str(run.dir)])
        return run.dir

    def check_inputs(self, params: Any, *, trust_changed: bool | None = None) -> list[str]:
        """Verify every upstream artifact a stage's parameters name, before the stage reads it.

        Every string in ``params`` (nested dicts/lists walked) that is an existing path is checked:
        inside this workspace's ``runs/`` against the sha256 the registry recorded (the run must be
        finished; the runs it was made from are checked too); elsewhere against the
        ``.calib-manifest.json`` of the run folder it was copied from, if any. A changed or missing
        file raises one line naming it; with ``trust_changed`` (default ``self.trust_changed``) the
        changed files are returned instead, for the run to record.
        """
        trust = self.trust_changed if trust_changed is None else trust_changed
        changed: list[str] = []
        seen: set[str] = set()
        for text in _strings(params):
            self._check_path(text, trust, changed, seen, depth=0)
        return changed

    def _check_path(self, text: str, trust: bool, changed: list[str], seen: set[str], depth: int) -> None:
        if not text or len(text) > 4096 or "\x00" in text or ("/" not in text and os.sep not in text):
            return
        path = Path(text)
        try:
            if not path.exists():
                return
            path = path.resolve()
        except OSError:
            return
        if str(path) in seen:
            return
        seen.add(str(path))
        runs = self.runs_dir.resolve()
        if path == runs or runs not in path.parents:
            check_manifest(path, trust_changed=trust, changed=changed)
            return
        rel = path.relative_to(runs)
        run_id, under = rel.parts[0], "/".join(rel.parts[1:])
        if run_id.startswith("."):
            raise InputError(f"{path} is inside the unfinished folder of a run ({rel.parts[0]}); "
                             "give a finished run id or folder")
        try:
            run = self.get_run(run_id)
        except WorkspaceError:
            raise InputError(f"{path} is in {runs} but no run {run_id!r} is registered for it; "
                             "give a finished run id or folder") from None
        if run.status != "finished":
            raise InputError(f"run {run_id} is {run.status}, not finished ({run.error or run.message}); "
                             f"its files in {run.dir} cannot be used")
        for rel_path in self._changed_files(run_id, run.dir, under):
            _changed(run.dir / rel_path, f"run {run_id}", trust, changed)
        if depth < 16 and f"run:{run_id}" not in seen:
            seen.add(f"run:{run_id}")
            for value in _strings(run.params):  # the runs this run was made from
                self._check_path(value, trust, changed, seen, depth + 1)

def check_manifest(path: str | Path, *, trust_changed: bool = False, changed: list[str] | None = None) -> list[str]:
    """Check ``path`` (a file or folder outside any registry) against the ``.calib-manifest.json`` of
    the run folder it is in or was copied from, if any; a changed or missing file raises one line
    naming it, unless ``trust_changed`` (then it is returned). No manifest: nothing to check."""
    changed = [] if changed is None else changed
    path = Path(path).resolve()
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, *list(folder.parents)[:3]):
        manifest_path = candidate / MANIFEST_FILE
        if not manifest_path.is_file():
            continue
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            files = manifest["files"] if manifest.get("schema") == MANIFEST_SCHEMA else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            files = None
        if not isinstance(files, dict):
            raise InputError(f"{manifest_path} is not a readable calib run manifest; restore it or remove it")
        under = path.relative_to(candidate).as_posix() if path != candidate else ""
        for rel, entry in sorted(files.items()):
            if under and rel != under and not rel.startswith(under + "/"):
                continue
            file = candidate / rel
            digest = entry.get("sha256") if isinstance(entry, dict) else None
            if not file.is_file() or _sha256_memo(file) != digest:
                _changed(file, f"run {manifest.get('run', '?')} (its {MANIFEST_FILE})", trust_changed, changed)
        break
    return changed


def _changed(path: Path, recorder: str, trust: bool, changed: list[str]) -> None:
    what = "is missing" if not path.exists() else "changed"
    if not trust:
        raise InputError(f"{path} {what} since {recorder} recorded its sha256; rerun the stage that made it, "
                         "or pass --trust-changed to use it anyway")
    log.warning("using %s although it %s since %s recorded it (--trust-changed)", path, what, recorder)
    changed.append(str(path))


def _strings(value: Any) -> Iterable[str]:
    """Every string in nested dicts/lists/tuples."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
