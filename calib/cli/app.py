"""``calib app``: start the Streamlit workbench with its security settings on the command line.

Streamlit reads ``.streamlit/config.toml`` from the folder it is started in; a folder with another
config (or none) would otherwise decide whether the app listens on every interface, shows
tracebacks to the browser or reports usage. Command-line flags take precedence over every config
file, so these are always passed explicitly (see :data:`SAFE_FLAGS`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from calib.errors import InputError

APP_ENTRY = Path(__file__).resolve().parents[2] / "app" / "Home.py"
MAX_UPLOAD_MB = 1024  # Streamlit's own ceiling; the app applies smaller per-kind limits while streaming

SAFE_FLAGS: dict[str, str] = {
    "server.headless": "true",
    "server.fileWatcherType": "none",
    "server.runOnSave": "false",
    "server.enableCORS": "true",
    "server.enableXsrfProtection": "true",
    "server.maxUploadSize": str(MAX_UPLOAD_MB),
    "browser.gatherUsageStats": "false",
    "client.showErrorDetails": "none",
    "client.toolbarMode": "minimal",
    "global.developmentMode": "false",
}
LOCAL_ADDRESSES = ("localhost", "127.0.0.1", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "app", help="start the browser workbench (Streamlit) on this machine, with safe settings",
        description="Start the Streamlit app for the workspace. It listens on localhost only, shows no "
                    "tracebacks in the browser and sends no usage statistics, whatever .streamlit/config.toml "
                    "the current folder holds.",
    )
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.add_argument("--address", default="localhost",
                   help="interface to listen on (default localhost; anything else needs --expose)")
    p.add_argument("--expose", action="store_true",
                   help="allow a non-local --address (anyone who can reach it can run stages and upload files)")
    p.add_argument("--print-command", action="store_true", help="print the streamlit command instead of running it")
    p.set_defaults(handler=run)


def streamlit_command(*, workspace: str | None, port: int, address: str = "localhost", expose: bool = False,
                      entry: Path = APP_ENTRY) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start the app with :data:`SAFE_FLAGS`."""
    if not 1 <= port <= 65535:
        raise InputError(f"port must be 1-65535, got {port}")
    if address not in LOCAL_ADDRESSES and not expose:
        raise InputError(f"--address {address} would serve the app beyond this machine; add --expose if you mean it")
    if not entry.is_file():
        raise InputError(f"the app is not next to this calib installation ({entry} is missing); "
                         "install calib from a source checkout (pip install -e .)")
    argv = [sys.executable, "-m", "streamlit", "run", str(entry),
            f"--server.address={address}", f"--server.port={port}"]
    argv += [f"--{key}={value}" for key, value in SAFE_FLAGS.items()]
    env = dict(os.environ)
    if workspace:
        env["CALIB_WORKSPACE"] = str(Path(workspace).resolve())
    return argv, env


def run(args: argparse.Namespace) -> int:
    argv, env = streamlit_command(workspace=args.workspace, port=args.port, address=args.address,
                                  expose=args.expose)
    if args.print_command:
        print(" ".join(argv))
        return 0
    print(f"calib app: http://{args.address}:{args.port} (workspace {env.get('CALIB_WORKSPACE', 'workspace')})",
          file=sys.stderr, flush=True)
    os.execve(argv[0], argv, env)
    return 0  # pragma: no cover - execve does not return
