"""Run the reliability suite and count its outcomes into the table of RELIABILITY.md.

    PYTHONPATH=. CALIB_THREADS=1 python scripts/reliability_table.py [extra pytest args]

Every case in ``tests/test_reliability_*.py`` is marked ``@pytest.mark.reliability(KIND)`` (see
``tests/reliability.py``). A passing case counts as handled: for ``clear-error`` cases that is a
clear one-line error. A failing case is counted by the tag its assertion carries: ``TRACEBACK:``
(or an exception other than a failed assertion escaping the case) as a traceback, ``LOST:`` as data
lost, anything else as a silent failure. Skipped cases (an environment without namespaces, say) are listed separately.
Exit status: 0 when tracebacks, silent failures and data lost are all 0.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KINDS = ("clear-error", "honest", "no-loss")


class Tally:
    """A pytest plugin counting reliability cases by kind and outcome."""

    def __init__(self) -> None:
        self.kind: dict[str, str] = {}
        self.outcome: dict[str, str] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            marker = item.get_closest_marker("reliability")
            if marker is not None:
                self.kind[item.nodeid] = str(marker.args[0]) if marker.args else "unknown"

    def pytest_runtest_logreport(self, report) -> None:
        if report.nodeid not in self.kind:
            return
        if report.skipped:
            self.outcome.setdefault(report.nodeid, "skipped")
        elif report.failed:
            text = str(report.longrepr) + "".join(content for _, content in report.sections)
            crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", "")
            unexpected = bool(crash) and not crash.startswith(("AssertionError", "Failed"))
            if "TRACEBACK:" in text or unexpected:  # an exception escaped where a clear outcome was due
                self.outcome[report.nodeid] = "traceback"
            elif "LOST:" in text:
                self.outcome[report.nodeid] = "lost"
            else:
                self.outcome[report.nodeid] = "silent"
        elif report.when == "call":
            self.outcome.setdefault(report.nodeid, "handled")


def table(tally: Tally) -> str:
    header = ("| kind | cases tried | handled | clear errors | tracebacks (goal 0) | silent failures (goal 0) "
              "| data lost (goal 0) | skipped |")
    rows = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    totals: Counter = Counter()
    for kind in (*KINDS, *sorted(set(tally.kind.values()) - set(KINDS))):
        ids = [n for n, k in tally.kind.items() if k == kind]
        if not ids:
            continue
        c = Counter(tally.outcome.get(n, "not run") for n in ids)
        tried = len(ids) - c["skipped"] - c["not run"]
        clear = c["handled"] if kind == "clear-error" else 0
        values = (tried, c["handled"], clear, c["traceback"], c["silent"], c["lost"], c["skipped"])
        totals.update(dict(zip(("tried", "handled", "clear", "traceback", "silent", "lost", "skipped"), values)))
        rows.append(f"| {kind} | " + " | ".join(str(v) for v in values) + " |")
    rows.append("| **all** | " + " | ".join(f"**{totals[k]}**" for k in
                                             ("tried", "handled", "clear", "traceback", "silent", "lost", "skipped")) + " |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    tally = Tally()
    start = time.monotonic()
    tests = sorted(str(p) for p in (REPO / "tests").glob("test_reliability_*.py"))
    pytest.main(["-q", "-p", "no:cacheprovider", *tests, *argv], plugins=[tally])
    print(f"\nreliability suite: {len(tally.outcome)} cases run in {time.monotonic() - start:.0f} s\n")
    print(table(tally))
    bad = [n for n, o in tally.outcome.items() if o in ("traceback", "silent", "lost")]
    for nodeid in bad:
        print(f"  {tally.outcome[nodeid]}: {nodeid}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
