"""The README's library example runs as written (on the tiny model, under the file names it uses)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_library_example_runs(tmp_path, monkeypatch, tiny_model_path, tiny_tokenizer_dir, tiny_csv, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no python example"
    shutil.copy(tiny_model_path, tmp_path / "model.onnx")
    shutil.copytree(tiny_tokenizer_dir, tmp_path / "tokenizer")
    shutil.copy(tiny_csv, tmp_path / "data.csv")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "accuracy" in out or "agreement" in out
    runs = namespace["ws"].list_runs()  # type: ignore[attr-defined]
    assert [r.stage for r in runs] == ["validate", "build", "calibrate", "calibset"]
    assert all(r.status == "finished" for r in runs)


def test_readme_cli_commands_parse():
    """Every `calib ...` line of the README's bash blocks (the workflow and the set-up) is accepted by
    the real argument parser (placeholders such as <calibrate run id> filled in, [optional parts] included)."""
    import shlex

    from calib.cli import build_parser

    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no bash block"
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    commands = [line for line in lines if line.startswith("calib ")]
    assert len(commands) >= 10
    parser = build_parser()
    for command in commands:
        filled = re.sub(r"<[^>]+>", "RUN", command.replace("[", "").replace("]", ""))
        args = parser.parse_args(shlex.split(filled)[1:])
        assert getattr(args, "handler", None), command
