"""Type-check calib/engines/tensorrt.py against the TensorRT 10.x Python API, without TensorRT.

TensorRT cannot be installed on machines without an NVIDIA GPU, so its API use is verified
statically with the ``tensorrt-stubs`` package (install with ``pip install --no-deps
tensorrt-stubs==10.13.0.35.1``; its dependencies are placeholder packages that do not install).

The stubs cannot be used as they are: they install ``tensorrt/__init__.pyi`` without a
``py.typed`` marker (mypy then skips them and every TensorRT call is ``Any``), and a few generated
signatures are not valid Python (a parameter named ``in``; a required parameter after defaulted
ones). This script copies them into a temporary stub folder with those lines repaired, then runs
mypy with that folder on MYPYPATH so every TensorRT attribute and call is checked.

Usage: python scripts/typecheck_tensorrt.py   (exit status: mypy's)
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "calib" / "engines" / "tensorrt.py"
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")


def repair(text: str) -> str:
    text = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", text)  # `in` is a keyword
    # a required parameter after defaulted ones (add_scale_nd's channel_axis)
    return re.sub(r"(power: Weights = None, channel_axis: int)\)", r"\1 = ...)", text)


def make_stub_dir(dest: Path) -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    for package in STUB_PACKAGES:
        source = site / package
        if not (source / "__init__.pyi").is_file():
            sys.exit(f"{source}/__init__.pyi not found: pip install --no-deps tensorrt-stubs==10.13.0.35.1")
        for stub in source.glob("*.pyi"):
            target = dest / package / stub.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(repair(stub.read_text()))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="trt-stubs-") as tmp:
        make_stub_dir(Path(tmp))
        config = Path(tmp) / "mypy.ini"  # the stubs' own inconsistencies are not ours to report
        config.write_text("[mypy]\npython_version = 3.11\nignore_missing_imports = True\nfollow_imports = silent\n"
                          "[mypy-tensorrt.*,tensorrt_bindings.*]\nignore_errors = True\n")
        command = [sys.executable, "-m", "mypy", "--config-file", str(config), str(TARGET)]
        return subprocess.run(command, env={"MYPYPATH": tmp, "PATH": ""}, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
