"""The ``calib`` command line: a thin layer over the library.

Each subcommand lives in its own module here and exposes ``register(subparsers)``; the handler it
sets gets the parsed arguments and returns an exit code (:data:`calib.cli.common.EXIT_CODES`).
Errors a user can cause (:class:`~calib.errors.CalibError`) print one line and exit 2, or 3 for a
missing backend.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import textwrap
import traceback

from calib.cli.common import (
    EXIT_BACKEND_UNAVAILABLE,
    EXIT_BAD_INPUT,
    EXIT_CODES,
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    close_progress_bars,
    json_stdout,
)
from calib.errors import BackendUnavailableError, CalibError
from calib.workspace import OUT_OF_SPACE, default_workspace_path

COMMAND_MODULES = ("demo", "assemble", "calibrate", "build", "validate", "head", "runs", "app")
# Commands that read upstream artifacts: each checks them against their recorded sha256 first.
READS_ARTIFACTS = ("assemble", "calibrate", "build", "bench", "validate", "sensitivity", "report", "gate", "head")

_EPILOG = """run references: wherever a command takes a run id it also takes a unique prefix of one,
`latest` (the newest finished run of the stage it needs) or `latest:LABEL` (the newest with that --label).
Every stage command has --json: one JSON object on stdout, progress on stderr.

exit status:
""" + "\n".join(textwrap.fill(meaning, 100, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
                for code, meaning in EXIT_CODES)


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that take a command's options: ``parser`` itself, or its sub-commands' leaves."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for action in subs for child in dict.fromkeys(action.choices.values()) for leaf in _leaves(child)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calib",
        description="INT8 calibration and accuracy validation for transformer text models (TensorRT / ONNX Runtime).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workspace", default=None,
                        help="workspace folder for runs, caches and the demo (default: $CALIB_WORKSPACE or ./workspace)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(f"calib.cli.{name}") is not None:
            importlib.import_module(f"calib.cli.{name}").register(sub)
    for name in READS_ARTIFACTS:
        if name in sub.choices:
            for leaf in _leaves(sub.choices[name]):
                leaf.add_argument("--trust-changed", action="store_true",
                                  help="use upstream artifacts whose sha256 changed since they were recorded "
                                       "(the run records which)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if getattr(args, "json", False):
            with json_stdout():
                return int(args.handler(args) or 0)
        return int(args.handler(args) or 0)
    except BackendUnavailableError as exc:
        print(f"calib: error: {exc}", file=sys.stderr)
        return EXIT_BACKEND_UNAVAILABLE
    except CalibError as exc:
        print(f"calib: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("calib: interrupted; finished runs are kept in the workspace", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001  (a bug: keep the traceback for the report, but a status of its own)
        if isinstance(exc, OSError) and exc.errno in OUT_OF_SPACE:  # the disk, not calib
            where = args.workspace or default_workspace_path()
            print(f"calib: error: no space left on the device ({exc.filename or where}); free space or choose "
                  f"another folder with --workspace (workspace {where})", file=sys.stderr)
            return EXIT_BAD_INPUT
        traceback.print_exc()
        print(f"calib: internal error ({type(exc).__name__}); this is a bug in calib, please report it "
              "with the traceback above; finished runs are kept", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    finally:
        close_progress_bars()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
