"""Benchmark workers start from a bare ``__main__``: the parent's main script is not re-run in them."""

from __future__ import annotations

import multiprocessing
import sys
import time
import types


def test_spawned_workers_do_not_rerun_the_main_script(tmp_path, monkeypatch):
    from calib.bench import bare_main

    marker = tmp_path / "ran.txt"
    script = tmp_path / "page.py"
    script.write_text(f"open({str(marker)!r}, 'a').write('ran\\n')\n")  # what a Streamlit page run as __main__ would do
    page = types.ModuleType("__main__")
    page.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", page)
    context = multiprocessing.get_context("spawn")
    with bare_main():
        worker = context.Process(target=time.sleep, args=(0,))
        worker.start()
    worker.join(60)
    assert worker.exitcode == 0 and not marker.exists()
    assert sys.modules["__main__"] is page  # restored
    unguarded = context.Process(target=time.sleep, args=(0,))  # the failure this guards against
    unguarded.start()
    unguarded.join(60)
    assert marker.read_text() == "ran\n"
