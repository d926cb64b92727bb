"""Progress in named phases (calib.progress) and the CLI's progress bar."""

from __future__ import annotations

import doctest
import io
import json

import pytest
import tinymodel

from calib import progress as progress_module
from calib.cli.common import ProgressBar
from calib.pipeline import config_from_params
from calib.progress import FP32_PASS, INT8_PASS, LAYER_PASS, Phases


def test_docstring_examples_hold():
    assert doctest.testmod(progress_module).failed == 0


def test_phases_name_each_message_and_never_go_back():
    seen: list[tuple[float, str]] = []
    phases = Phases(lambda f, m="": seen.append((f, m)), [("a", 1), ("b", 3)], start=0.1, span=0.8)
    phases.phase("a")(0.5, "1/2")
    phases.phase("a")(1.0, "2/2")
    phases.phase("b")(0.0, "0/9")  # b's counter starts again at 0: the overall fraction does not
    phases.phase("b")(0.5, "")
    phases.phase("a")(0.0, "late")  # out of order: still never backwards
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)
    assert fractions[1] == pytest.approx(0.1 + 0.8 * 0.25) and fractions[3] == pytest.approx(0.1 + 0.8 * 0.625)
    assert [m for _, m in seen][:4] == ["a (1/2): 1/2", "a (1/2): 2/2", "b (2/2): 0/9", "b (2/2)"]
    with pytest.raises(ValueError):
        Phases(None, [])
    Phases(None, [("only", 0)]).phase("only")(1.0)  # zero weights and no callback are fine


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_bar_in_a_log_reports_phases_steps_and_a_heartbeat(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("calib.cli.common.time.monotonic", clock)
    stream = io.StringIO()
    bar = ProgressBar("validate", stream=stream)
    bar(0.02, "256 texts loaded")
    bar(0.03, "FP32 pass (1/3): 16/256 texts")  # a new phase: a line even within the same 10 %
    bar(0.04, "FP32 pass (1/3): 32/256 texts")  # same phase, same 10 %, soon: no line
    clock.now += 20
    bar(0.05, "FP32 pass (1/3): 48/256 texts")  # heartbeat: a line after 15 s without one
    bar(0.31, "FP32 pass (1/3): 160/256 texts")  # a new 10 % step
    clock.now += 5
    bar(0.95, "per-layer pass (3/3): 8/64 texts")
    bar(1.0, "written")
    lines = stream.getvalue().splitlines()
    assert [line.rsplit("  ", 1)[1] for line in lines] == [
        "256 texts loaded", "FP32 pass (1/3): 16/256 texts", "FP32 pass (1/3): 48/256 texts",
        "FP32 pass (1/3): 160/256 texts", "per-layer pass (3/3): 8/64 texts", "written"]
    assert "ETA" in lines[3] and "100%" in lines[-1] and "25.0 s" in lines[-1]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_keeps_each_finished_phase_on_its_own_line():
    stream = _Tty()
    bar = ProgressBar("validate", stream=stream)
    bar(0.2, "FP32 pass (1/2): 8/16 texts")
    bar(0.5, "FP32 pass (1/2): 16/16 texts")
    bar(0.6, "INT8 pass (2/2): 4/16 texts")
    bar(1.0, "written")
    text = stream.getvalue()
    lines = text.split("\n")
    assert "FP32 pass (1/2): 16/16 texts" in lines[0].split("\r")[-1]
    assert text.endswith("\n") and text.count("\n") == 3

    stream = _Tty()
    bar = ProgressBar("sensitivity", stream=stream)
    for i in range(1, 4):  # a counter inside the phase name does not make a new phase per step
        bar(0.5 + i / 10, f"evaluation {i}/24: without layer.{i}")
    assert stream.getvalue().count("\n") == 0


def test_validate_reports_three_named_counted_passes(tiny_spec, tiny_csv, tmp_path):
    from absmax import absmax_ranges

    from calib.placement import Placement
    from calib.quantize import quantize_qdq
    from calib.validate import ValidateConfig, validate

    qdq = tmp_path / "tiny.qdq.onnx"
    quantize_qdq(tiny_spec.onnx_path, absmax_ranges(tiny_spec, tinymodel.make_texts(32, seed=3)[0], "tensorrt"),
                 Placement("tensorrt"), qdq)
    seen: list[tuple[float, str]] = []
    config = config_from_params(ValidateConfig, dict(engine=str(qdq), model=str(tiny_spec.onnx_path), tokenizer=str(tiny_spec.tokenizer_dir),
                            data=str(tiny_csv), labels=tinymodel.LABELS, max_length=64, limit=64, layer_rows=32,
                            batch_size=8, bootstrap=20))
    validate(config, tmp_path / "ev", progress=lambda f, m="": seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for name, place, total in ((FP32_PASS, 1, 64), (INT8_PASS, 2, 64), (LAYER_PASS, 3, 32)):
        messages = [m for _, m in seen if m.startswith(f"{name} ({place}/3): ")]
        assert messages[-1].endswith(f"{total}/{total} texts"), messages
        assert len(messages) >= total // 8
    layer_start = next(f for f, m in seen if m.startswith(LAYER_PASS))
    assert layer_start < 0.9  # the per-layer pass has its own share of the bar, not the last 10 %
    json.loads((tmp_path / "ev" / "layers.json").read_text())


def test_watchdog_speaks_when_a_step_is_long_and_stops_when_the_command_ends():
    import time

    from calib.cli.common import close_progress_bars

    stream = io.StringIO()
    bar = ProgressBar("validate", stream=stream)
    bar.quiet = 0.2
    bar(0.5, "per-layer pass (3/3): 8/64 texts")
    deadline = time.monotonic() + 10
    while "still working" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "per-layer pass (3/3): 8/64 texts (still working; last update" in stream.getvalue()
    watchdog = bar._watchdog
    close_progress_bars()
    assert watchdog is not None and not watchdog.is_alive()
    said = stream.getvalue()
    time.sleep(0.5)
    assert stream.getvalue() == said  # silent once the command has ended

    done = ProgressBar("build", stream=io.StringIO())
    done(0.5, "quantizing")
    done(1.0, "written")  # finishing stops the watchdog by itself
    assert not done._watchdog.is_alive()
