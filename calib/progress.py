"""Progress in named phases: every message says which pass it belongs to, and the overall fraction
never goes back when a phase's own counter starts again at zero.

A stage that runs several passes over its data (validate: FP32 pass, INT8 pass, per-layer pass)
declares them with their expected share of the work; each pass reports its own fraction and
counter through :meth:`Phases.phase`, and the stage's one :data:`~calib.workspace.ProgressFn` gets::

    (0.31, "FP32 pass (1/3): 128/256 texts")
    (0.52, "INT8 pass (2/3): 0/256 texts")
    (0.83, "per-layer pass (3/3): 32/128 texts")

so the CLI's bar, the registry and the app all show what is running and how far it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from calib.workspace import ProgressFn

FP32_PASS = "FP32 pass"
INT8_PASS = "INT8 pass"
LAYER_PASS = "per-layer pass"
"""Names of the evaluation passes, as every message about them says them."""


def _silent(fraction: float, message: str = "") -> None:
    """A progress callback that ignores everything."""


class Phases:
    """Split ``progress`` (over ``[start, start + span]``) into named phases weighted by their
    expected cost (any positive unit: texts × passes, seconds, ...).

    >>> seen = []
    >>> phases = Phases(lambda f, m="": seen.append((round(f, 2), m)), [("FP32 pass", 1), ("INT8 pass", 1)])
    >>> phases.phase("FP32 pass")(1.0, "4/4 texts")
    >>> phases.phase("INT8 pass")(0.5, "2/4 texts")
    >>> seen
    [(0.5, 'FP32 pass (1/2): 4/4 texts'), (0.75, 'INT8 pass (2/2): 2/4 texts')]
    """

    def __init__(self, progress: ProgressFn | None, plan: Sequence[tuple[str, float]], *,
                 start: float = 0.0, span: float = 1.0) -> None:
        if not plan or any(weight < 0 for _, weight in plan):
            raise ValueError("phases need at least one phase and non-negative weights")
        self._progress = progress or _silent
        self._names = [name for name, _ in plan]
        raw = [float(weight) for _, weight in plan]
        if sum(raw) == 0:
            raw = [1.0] * len(raw)
        weights = [w / sum(raw) for w in raw]
        self._starts = [sum(weights[:i]) for i in range(len(weights))]
        self._weights = weights
        self._start, self._span = start, span
        self._high = start  # the overall fraction never goes back

    def label(self, name: str) -> str:
        """``'INT8 pass (2/3)'``: the phase's name with its place in the plan."""
        return f"{name} ({self._names.index(name) + 1}/{len(self._names)})"

    def phase(self, name: str) -> ProgressFn:
        """The progress callback of phase ``name``: its own fraction in [0, 1] and message."""
        i = self._names.index(name)
        label = self.label(name)

        def report(fraction: float, message: str = "") -> None:
            inner = min(max(float(fraction), 0.0), 1.0)
            overall = self._start + self._span * (self._starts[i] + self._weights[i] * inner)
            self._high = max(self._high, overall)
            self._progress(self._high, f"{label}: {message}" if message else label)

        return report
