"""Where a stage runs: in this process (the default) or on a Ray cluster.

A :class:`Cluster` is the one spelling of that choice, parsed by :meth:`Cluster.parse` for the CLI
(``--cluster``), the library (``CalibrateConfig(cluster=...)``, ``ValidateConfig``,
``SensitivityConfig``) and the app's Project page alike:

- ``None`` (no flag): today's embedded single process; Ray is never imported;
- ``local`` / ``local:N``: start a Ray runtime on this machine with N worker processes (``local``:
  one per core) and shut it down when the stage ends;
- ``ray://HOST:PORT``: join an existing cluster through the Ray client (needs ``ray[client]``,
  which the ``calib[ray]`` extra installs);
- ``auto``: join the cluster this machine is part of (``ray start`` ran here, or ``RAY_ADDRESS``).

:func:`connect` opens a :class:`ClusterSession` (nested calls reuse the open one, so the CLI can
connect once before a run is registered and the stage reuses that connection); a
:class:`WorkerPool` holds one actor per worker, each building its model once from a picklable
factory, and maps shards over them: one shard in flight per worker, results returned in shard
order, progress reported from the driver as shards complete. Actors are created with
``max_restarts`` / ``max_task_retries``, so a worker process that dies mid-shard is restarted
(its model rebuilt by rerunning the factory) and the shard runs again.

Only this module imports ``ray``, lazily: ``import calib`` and every stage work without it. A Ray
that is not installed, and a cluster that cannot be reached, are one-line
:class:`~calib.errors.BackendUnavailableError` (exit 3), raised before any run is registered when
the CLI connects first. A real (multi-node) cluster needs ``calib`` installed on every node (same
version) and the workspace's files at the same paths (a shared file system): workers open models
and engines by path. On a ``local`` cluster the workers run this venv's Python and inherit the
driver's environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

from calib.errors import BackendUnavailableError, CalibError, InputError
from calib.workspace import ProgressFn

SPEC_HELP = "local, local:N, ray://HOST:PORT or auto"
RETRIES = 3
"""How often a worker that died is restarted, and a shard it was running retried, before the run fails."""
FAULT_ENV = "CALIB_CLUSTER_FAULT_ONCE"
"""Fault injection for tests: names a file; the first worker to start a shard while that file exists
deletes it and kills its own process (SIGKILL), so exactly one shard attempt dies."""
_ADDRESS = re.compile(r"ray://[^\s:/]+:\d{1,5}")


@dataclass(frozen=True)
class Cluster:
    """Where to run: ``kind`` ``local`` (``workers``: N, or None for one per core) or ``join``
    (``address``: ``ray://HOST:PORT`` or ``auto``)."""

    kind: str
    workers: int | None = None
    address: str | None = None

    @classmethod
    def parse(cls, text: str | Cluster | None) -> Cluster | None:
        """``None`` / ``""`` / ``"none"``: embedded (returns None); else ``local[:N]``,
        ``ray://HOST:PORT`` or ``auto``; anything else is a one-line :class:`InputError`."""
        if text is None or isinstance(text, Cluster):
            return text
        value = str(text).strip()
        if value.lower() in ("", "none", "embedded"):
            return None
        if value == "local":
            return cls("local")
        if value.startswith("local:"):
            count = value.partition(":")[2]
            if not count.isdigit() or int(count) < 1:
                raise InputError(f"cluster {value!r}: local:N needs a worker count N >= 1 (e.g. local:2)")
            return cls("local", workers=int(count))
        if value == "auto":
            return cls("join", address="auto")
        if _ADDRESS.fullmatch(value):
            return cls("join", address=value)
        raise InputError(f"unknown cluster {value!r} (use {SPEC_HELP}; leave it empty to run in this process)")

    def __str__(self) -> str:
        if self.kind == "local":
            return "local" if self.workers is None else f"local:{self.workers}"
        return str(self.address)


def parse_cluster(text: str | Cluster | None) -> str | None:
    """The canonical spelling of a cluster spec (None: embedded); the value config fields hold."""
    spec = Cluster.parse(text)
    return None if spec is None else str(spec)


def import_ray() -> Any:
    """``ray``, or a one-line :class:`BackendUnavailableError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError("a cluster was requested but Ray is not installed: "
                                      "pip install 'calib[ray]' (or run without --cluster)") from None
    return ray


@dataclass
class ClusterSession:
    """An open connection to Ray: ``workers`` actors will be started per pool; ``threads`` is each
    worker's ONNX Runtime thread count (a local cluster splits this machine's cores)."""

    cluster: Cluster
    workers: int
    threads: int | None
    started: bool  # this session started the Ray runtime (and shuts it down)
    users: int = 0  # open `connect` blocks using it (the runtime is shut down when the last one ends)

    def describe(self) -> dict[str, Any]:
        """What the registry and artifacts record about where the run ran."""
        return {"spec": str(self.cluster), "workers": self.workers, "threads_per_worker": self.threads,
                "started_here": self.started}

    def pool(self, factory: Callable[[], Callable[[Any], Any]], *, workers: int | None = None) -> WorkerPool:
        """A pool of ``workers`` (default: the session's) actors, each running ``factory()`` once."""
        return WorkerPool(self, factory, workers=workers or self.workers)


_OPEN: list[ClusterSession] = []
_LOCK = threading.RLock()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@contextlib.contextmanager
def connect(cluster: str | Cluster | None) -> Iterator[ClusterSession | None]:
    """Open the cluster ``cluster`` names for the duration of the block (``None``: embedded, yields
    None without importing Ray). While a session is open -- a nested call, or another thread (the
    app runs two jobs at once) -- any spec reuses it, and the runtime stays up until the last block
    using it ends; a Ray runtime someone else initialised in this process is used as it is and left
    running."""
    spec = Cluster.parse(cluster)
    if spec is None:
        yield None
        return
    with _LOCK:
        if _OPEN:
            session = _OPEN[-1]
            session.users += 1
        else:
            session = _open(spec)
    try:
        yield session
    finally:
        with _LOCK:
            session.users -= 1
            if session.users <= 0:
                if session in _OPEN:
                    _OPEN.remove(session)
                if session.started:
                    import_ray().shutdown()


def _open(spec: Cluster) -> ClusterSession:
    """Start or join the runtime ``spec`` names; the session returned is registered, with one user."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        try:
            if spec.kind == "local":
                ray.init(num_cpus=spec.workers or os.cpu_count() or 1, include_dashboard=False,
                         log_to_driver=False, logging_level="warning")
            else:
                ray.init(address=spec.address, log_to_driver=False, logging_level="warning")
        except Exception as exc:  # noqa: BLE001 - ConnectionError, TimeoutError, RuntimeError, grpc errors
            raise BackendUnavailableError(f"the Ray cluster {spec} cannot be reached: {_first_line(exc)} "
                                          "(start one with `ray start --head`, check the address, or run "
                                          "without --cluster)") from None
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
    except Exception:
        if started:
            ray.shutdown()
        raise
    workers = spec.workers if spec.kind == "local" and spec.workers else max(cpus, 1)
    threads = max(1, (os.cpu_count() or 1) // workers) if spec.kind == "local" else None
    session = ClusterSession(spec, workers, threads, started, users=1)
    _OPEN.append(session)
    return session


def active() -> ClusterSession | None:
    """The innermost open session (None when none is open)."""
    return _OPEN[-1] if _OPEN else None


def _inject_fault() -> None:
    path = os.environ.get(FAULT_ENV)
    if not path:
        return
    try:
        os.unlink(path)  # only one process can win this
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


class _ShardWorker:
    """The actor: builds its runner (model, sessions) once, then runs shards."""

    def __init__(self, factory: Callable[[], Callable[[Any], Any]]) -> None:
        self.runner = factory()

    def run(self, payload: Any) -> Any:
        _inject_fault()
        return self.runner(payload)

    def pid(self) -> int:
        return os.getpid()


class WorkerPool:
    """``workers`` actors of one factory; :meth:`map` runs shards over them. Use as a context
    manager (or call :meth:`close`) so the actors and their models are released."""

    def __init__(self, session: ClusterSession, factory: Callable[[], Callable[[Any], Any]], *,
                 workers: int) -> None:
        ray = import_ray()
        self._ray = ray
        self.session = session
        actor = ray.remote(_ShardWorker).options(num_cpus=1, max_restarts=RETRIES, max_task_retries=RETRIES)
        self.actors = [actor.remote(factory) for _ in range(max(1, workers))]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self._ray.kill(actor)
        self.actors = []

    def _get(self, ref: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, CalibError):
                raise cause from None
            raise
        except ray.exceptions.RayActorError as exc:
            raise BackendUnavailableError(f"a Ray worker died and its shard failed after {RETRIES} retries: "
                                          f"{_first_line(exc)}") from None

    def map(self, payloads: Sequence[Any], *, weights: Sequence[float] | None = None,
            progress: ProgressFn | None = None, unit: str = "texts",
            affinity: Sequence[int] | None = None) -> list[Any]:
        """Run every payload on some worker; results in payload order. One shard in flight per
        worker (the next goes to whichever finishes first; with ``affinity``, payload ``i`` always
        goes to worker ``affinity[i] % workers``, so a worker sees the same shards again and can reuse
        what it cached for them); ``progress(fraction, "k/n unit ...")`` after each shard,
        ``weights`` (e.g. texts per shard) giving the fraction."""
        n = len(payloads)
        weights = list(weights) if weights is not None else [1.0] * n
        total = float(sum(weights)) or 1.0
        results: list[Any] = [None] * n
        queue = list(range(n))
        idle = list(self.actors)
        pending: dict[Any, tuple[int, Any]] = {}
        done, finished = 0.0, 0

        def next_for(actor: Any) -> int | None:
            if affinity is None:
                return queue.pop(0) if queue else None
            mine = [i for i in queue if affinity[i] % len(self.actors) == self.actors.index(actor)]
            if not mine:
                return None
            queue.remove(mine[0])
            return mine[0]

        while queue or pending:
            for actor in list(idle):
                index = next_for(actor)
                if index is not None:
                    idle.remove(actor)
                    pending[actor.run.remote(payloads[index])] = (index, actor)
            ready, _ = self._ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index, actor = pending.pop(ref)
                results[index] = self._get(ref)
                idle.append(actor)
                done += weights[index]
                finished += 1
                if progress is not None:
                    progress(done / total, f"{_count(done)}/{_count(total)} {unit} "
                                           f"({finished}/{n} shards on {len(self.actors)} workers)")
        return results


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
