"""The ``calib`` command line: a thin layer over the library.

Each subcommand lives in its own module here and exposes ``register(subparsers)``; the handler it
sets gets the parsed arguments and returns an exit code. Errors a user can cause
(:class:`~calib.errors.CalibError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from calib.errors import CalibError

COMMAND_MODULES = ("demo", "assemble", "calibrate", "build", "validate", "runs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calib",
        description="INT8 calibration and accuracy validation for transformer text models (TensorRT / ONNX Runtime).",
    )
    parser.add_argument("--workspace", default=None,
                        help="workspace folder for runs, caches and the demo (default: $CALIB_WORKSPACE or ./workspace)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(f"calib.cli.{name}") is not None:
            importlib.import_module(f"calib.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    try:
        return int(args.handler(args) or 0)
    except CalibError as exc:
        print(f"calib: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("calib: interrupted; finished runs are kept in the workspace", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
