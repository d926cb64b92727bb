"""Long stages run in a small thread pool shared by all browser sessions of the server process.

The page submits ``calib.pipeline.run_stage(...)`` and keeps only the run id. Everything the page
shows about the run (status, progress, message, error) is read back from the run registry, so a
refreshed page, or a second tab of the same session, sees the same progress. A run that is waiting
for a free worker has no registry row yet; the pool reports it as ``queued``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import streamlit as st

from calib import formatting as fmt
from calib.errors import CalibError, RunCancelled, WorkspaceError
from calib.pipeline import run_stage
from calib.workspace import Workspace

log = logging.getLogger("calib.app")

WORKERS = 2  # the machine has few cores; two sessions can still work at once
POLL_SECONDS = 1.0
ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class JobStatus:
    run_id: str
    stage: str
    status: str  # queued | running | finished | failed | interrupted
    progress: float
    message: str
    error: str

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class JobPool:
    """A thread pool running registered stages, with the futures of the runs it started."""

    def __init__(self, workers: int = WORKERS) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="calib-job")
        self._futures: dict[str, tuple[str, str, Future]] = {}  # run id -> (stage, session, future)
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, ws: Workspace, stage: str, fn: Callable[..., Any], config: Any, *,
               parents: Sequence[str] = (), label: str = "", session: str = "") -> str:
        """Queue ``run_stage(ws, stage, fn, config, ...)``; return the run id it will have."""
        run_id = ws.new_run_id(stage)

        def stop_when_cancelled(fraction: float, message: str = "") -> None:
            if run_id in self._cancelled:
                raise RunCancelled(f"{stage} run {run_id} cancelled at {fraction:.0%} ({message or 'starting'})")

        def work() -> Any:
            try:
                return run_stage(ws, stage, fn, config, parents=parents, label=label,
                                 session=session, run_id=run_id, progress=stop_when_cancelled)
            except CalibError:
                raise  # recorded in the registry as the run's error
            except Exception:
                log.exception("run %s (%s) failed unexpectedly", run_id, stage)
                raise

        future = self.executor.submit(work)
        with self._lock:
            self._futures[run_id] = (stage, session, future)
        return run_id

    def status(self, ws: Workspace, run_id: str) -> JobStatus:
        with self._lock:
            stage, _, future = self._futures.get(run_id, ("", "", None))
        try:
            run = ws.get_run(run_id)
        except WorkspaceError:
            if future is not None and future.cancelled():
                return JobStatus(run_id, stage, "cancelled", 0.0, "", "cancelled before it started")
            if future is None:
                return JobStatus(run_id, stage, "failed", 0.0, "", f"no run {run_id} in this workspace")
            if future.done() and future.exception() is not None:
                exc = future.exception()
                return JobStatus(run_id, stage, "failed", 0.0, "", str(exc).splitlines()[0] if str(exc) else
                                 type(exc).__name__)
            return JobStatus(run_id, stage, "queued", 0.0, "waiting for a free worker", "")
        error = run.error
        if run.status == "failed" and future is not None and future.done():
            exc = future.exception()
            if exc is not None and not isinstance(exc, CalibError):
                error = f"{type(exc).__name__}: {error}"
        return JobStatus(run_id, run.stage, run.status, float(run.progress), run.message, error)

    def cancel(self, run_id: str) -> None:
        """Stop a run: a queued one never starts; a running one stops at its next progress report
        (its staging folder is removed and the registry records why)."""
        with self._lock:
            self._cancelled.add(run_id)
            entry = self._futures.get(run_id)
        if entry is not None:
            entry[2].cancel()  # only succeeds while it waits for a worker

    def cancelled(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._cancelled

    def wait(self, run_id: str, timeout: float | None = None) -> None:
        """Block until the run ends (used by tests and scripts, never by a page)."""
        with self._lock:
            entry = self._futures.get(run_id)
        if entry is not None:
            with contextlib.suppress(Exception):  # the registry holds the outcome
                entry[2].result(timeout=timeout)

    def active_ids(self, session: str | None = None) -> list[str]:
        """Runs submitted to the pool that have not ended (of one session, or of all)."""
        with self._lock:
            return [rid for rid, (_, sess, fut) in self._futures.items()
                    if not fut.done() and (session is None or sess == session)]


@st.cache_resource(show_spinner=False)
def job_pool() -> JobPool:
    """The process-wide pool (one per server, shared by all browser sessions)."""
    return JobPool()


def active_run(ws: Workspace, stage: str, session: str) -> str | None:
    """The newest queued or running run of ``stage`` started by this session, if any."""
    pool = job_pool()
    for rid in reversed(pool.active_ids(session)):
        if rid.startswith(f"{stage}-") and pool.status(ws, rid).active:
            return rid
    for run in ws.list_runs(stage=stage, status="running", session=session, limit=1):
        return run.id
    return None


def show_progress(ws: Workspace, run_id: str, title: str) -> None:
    """A live progress bar for an active run; reruns the whole page once the run has ended."""
    pool = job_pool()

    @st.fragment(run_every=POLL_SECONDS)
    def panel() -> None:
        status = pool.status(ws, run_id)
        if not status.active:
            st.rerun(scope="app")
        label = f"{title}: {status.message or status.status}"
        st.progress(min(max(status.progress, 0.0), 1.0), text=label)
        st.caption(f"Run `{run_id}` · {status.status} · {int(status.progress * 100)} % · "
                   f"{timing_text(ws, run_id, status.progress)}. "
                   + ("Cancelling…" if pool.cancelled(run_id) else
                      "You can leave this page; the run continues and its progress is kept."))

    panel()
    # the button lives outside the self-refreshing panel: a widget inside a fragment that reruns the
    # whole app when the run ends can disturb the page's other widgets
    if not pool.cancelled(run_id) and st.button(
            "Cancel", key=f"cancel-{run_id}", icon=":material/cancel:",
            help="Stop this run; its unfinished files are removed and the registry records it as cancelled."):
        pool.cancel(run_id)
        st.rerun()


def wait_until_idle(ws: Workspace, timeout: float = 300.0) -> None:
    """Block until every run started by the pool has ended (tests)."""
    deadline = time.monotonic() + timeout
    pool = job_pool()
    for rid in pool.active_ids():
        pool.wait(rid, timeout=max(0.0, deadline - time.monotonic()))


def elapsed_and_eta(started_iso: str | None, fraction: float, now: float | None = None) -> tuple[float, float | None]:
    """Seconds since ``started_iso`` and the estimated seconds left at ``fraction`` done (None until 5 %
    is done: the first batches load models and say little about the rest)."""
    if not started_iso:
        return 0.0, None
    started = dt.datetime.fromisoformat(started_iso).timestamp()
    elapsed = max(0.0, (time.time() if now is None else now) - started)
    if fraction < 0.05 or fraction >= 1.0:
        return elapsed, None
    return elapsed, elapsed * (1.0 - fraction) / fraction


def timing_text(ws: Workspace, run_id: str, fraction: float) -> str:
    """``running for 1 min 12 s, about 2 min 5 s left`` (or ``waiting for a free worker``)."""
    try:
        run = ws.get_run(run_id)
    except WorkspaceError:
        return "waiting for a free worker"
    elapsed, eta = elapsed_and_eta(run.created_at, fraction)
    return f"running for {fmt.seconds(elapsed)}" + ("" if eta is None else f", about {fmt.seconds(eta)} left")
