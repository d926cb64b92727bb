"""Reliability of the app's start-up and of read-only browsing: `calib app` sets Streamlit's security
settings on the command line, whatever .streamlit/config.toml the current folder holds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from reliability import REPO, can_unshare, expect_clear_error, run_cli

from calib.cli.app import SAFE_FLAGS, streamlit_command
from calib.workspace import Workspace

HOSTILE_CONFIG = """
[server]
address = "0.0.0.0"
maxUploadSize = 100000
[client]
showErrorDetails = "full"
[browser]
gatherUsageStats = true
"""


def _effective_options(argv: list[str], cwd: Path) -> dict:
    """Streamlit's resolved config for ``argv`` run from ``cwd`` (config files + flags, as `streamlit run` does)."""
    flags = {}
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)  # typed as click would convert them for `streamlit run`
            flags[key] = {"true": True, "false": False}.get(value, int(value) if value.isdigit() else value)
    code = (
        "import json, sys\n"
        "from streamlit import config\n"
        "flags = json.loads(sys.argv[1])\n"
        "opts = config.get_config_options(force_reparse=True, options_from_flags=flags)\n"
        "print(json.dumps({k: opts[k].value for k in ['server.address', 'server.maxUploadSize',"
        " 'client.showErrorDetails', 'browser.gatherUsageStats', 'server.headless']}))\n"
    )
    import json

    done = subprocess.run([sys.executable, "-c", code, json.dumps(flags)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env=dict(os.environ, HOME=str(cwd)))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.reliability("honest")
def test_calib_app_flags_override_a_hostile_local_config(tmp_path):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text(HOSTILE_CONFIG)
    argv, env = streamlit_command(workspace=str(tmp_path / "ws"), port=8765)
    assert env["CALIB_WORKSPACE"] == str((tmp_path / "ws").resolve())
    without = _effective_options([], tmp_path)
    assert without["server.address"] == "0.0.0.0"  # what a bare `streamlit run` here would do
    opts = _effective_options(argv, tmp_path)
    assert opts["server.address"] == "localhost", "SILENT: the app would listen on every interface"
    assert opts["client.showErrorDetails"] == "none" and opts["browser.gatherUsageStats"] is False
    assert opts["server.maxUploadSize"] == int(SAFE_FLAGS["server.maxUploadSize"])


@pytest.mark.reliability("clear-error")
def test_calib_app_refuses_a_public_address_without_expose(tmp_path):
    expect_clear_error(["--workspace", str(tmp_path / "ws"), "app", "--address", "0.0.0.0"], "--expose")
    expect_clear_error(["--workspace", str(tmp_path / "ws"), "app", "--port", "0"], "port")
    code, out, _ = run_cli(["--workspace", str(tmp_path / "ws"), "app", "--address", "0.0.0.0", "--expose",
                            "--print-command"])
    assert code == 0 and "--server.address=0.0.0.0" in out and "--client.showErrorDetails=none" in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.reliability("honest")
def test_calib_app_really_listens_on_localhost_only(tmp_path):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text(HOSTILE_CONFIG)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "calib", "--workspace", str(tmp_path / "ws"), "app", "--port",
                             str(port)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError(f"the app did not start: {proc.stderr.read1(4000) if proc.stderr else ''}")
        addresses = _listening_addresses(port)
        assert addresses, "no listening socket found"
        wildcard = {"00000000", "00000000000000000000000000000000"}
        assert not addresses & wildcard, f"SILENT: the app listens on every interface: {addresses}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


_APP_HISTORY = """
set -e
mount --bind -o ro "$1" "$1"
cd "$2"
CALIB_WORKSPACE="$1" "$3" - "$4" <<'PY'
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app/pages/6_Runs_and_reports.py", default_timeout=120).run()
errors = [e.value for e in at.error] + [str(e.value) for e in at.exception]
print("ERRORS", errors)
print("TABLE", sys.argv[1] in str([d.value for d in at.dataframe]))
PY
"""


@pytest.mark.reliability("clear-error")
@pytest.mark.skipif(not can_unshare("--mount"), reason="needs unshare --mount (root) for a read-only bind mount")
def test_app_history_page_reads_a_read_only_workspace(tmp_path):
    root = tmp_path / "ws"
    ws = Workspace(root)
    with ws.start_run("calibrate", {"method": "entropy"}, label="on a read-only disk") as ctx:
        (ctx.dir / "stats.npz").write_bytes(b"s")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _APP_HISTORY, "sh",
                           str(root), str(REPO), sys.executable, ctx.id], capture_output=True, text=True,
                          timeout=300, check=False, env=dict(os.environ, PYTHONPATH=f"{REPO}:{REPO / 'app'}"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ERRORS []" in done.stdout, f"SILENT: {done.stdout[-2000:]}"
    assert "TABLE True" in done.stdout, done.stdout[-2000:]
