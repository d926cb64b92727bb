"""Helpers shared by the subcommands: workspace, progress bar, tables."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence

from calib.formatting import cell
from calib.workspace import Workspace


def workspace_of(args: argparse.Namespace) -> Workspace:
    return Workspace(args.workspace)


class ProgressBar:
    """A one-line text progress bar on stderr; a callable ``(fraction, message)``."""

    def __init__(self, title: str, width: int = 30) -> None:
        self.title, self.width = title, width
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self._last_pct = -1

    def __call__(self, fraction: float, message: str = "") -> None:
        pct = int(fraction * 100)
        if not self.tty and pct // 10 == self._last_pct // 10 and fraction < 1:
            return
        self._last_pct = pct
        filled = int(self.width * fraction)
        line = f"{self.title} [{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}% {time.monotonic() - self.start:6.1f}s {message}"
        end = "\r" if self.tty and fraction < 1 else "\n"
        print(line[:160].ljust(100) if self.tty else line[:160], end=end, file=sys.stderr, flush=True)


_NUMERIC_TEXT = re.compile(r"^([+-]?(\d|inf|nan)|–$)")


def _right_aligned(raw: object, text: str) -> bool:
    """Numbers and already-formatted figures ('+0.39 pts', '97.25 %', '–') align right."""
    return isinstance(raw, (int, float)) or bool(_NUMERIC_TEXT.match(text))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table; numbers are written by :func:`calib.formatting.cell` and right-aligned."""
    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    for row, raw in zip(text, rows):
        out.append("  ".join(c.rjust(w) if _right_aligned(v, c) else c.ljust(w)
                             for c, w, v in zip(row, widths, raw)))
    return "\n".join(out)
