"""Per-page setup: the workspace, the browser session's id, and errors shown as messages.

A browser session is identified by a short random id kept in ``st.session_state`` and mirrored into
the URL (``?session=...``) so that a page refresh, which starts a new Streamlit session, finds the
same runs and project again. Every run the app starts is tagged with this id in the run registry.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from calib import stages
from calib.errors import CalibError
from calib.io import atomic_write_json, read_json
from calib.workspace import Workspace, default_workspace_path

log = logging.getLogger("calib.app")
T = TypeVar("T")

SESSION_KEY = "calib_session"
_SESSION_RE = re.compile(r"[0-9a-f]{12}")

STAGE_TITLES = stages.STAGE_TITLES  # one registry of stages (calib.stages)


def setup_page(title: str, icon: str = ":material/tune:") -> None:
    """Page config shared by every page (must be the first Streamlit call)."""
    st.set_page_config(page_title=f"{title} · calib", page_icon=icon, layout="wide")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# an uploaded file lives at <workspace>/uploads/<session>/<sha12>-<name>: messages name it by <name> only
_UPLOAD_PATH = re.compile(r"""[^\s'"`(]*/uploads/[^/\s'"`]+/(?:[0-9a-f]{12}-|tokenizer-[0-9a-f]{12}/?)""")


def public_message(text: str) -> str:
    """``text`` with the server's storage paths of uploaded files reduced to the names the user gave."""
    return _UPLOAD_PATH.sub(lambda m: "(uploaded tokenizer)/" if "/tokenizer-" in m.group(0) else "", text)


def show_error(exc: BaseException, what: str = "") -> None:
    """A library error as a readable message; unexpected errors are logged with their traceback
    on the server and shown as one line (never a traceback in the page, never the server's paths of
    uploaded files)."""
    if isinstance(exc, CalibError):
        st.error(public_message(first_line(exc)), icon=":material/error:")
    else:
        log.error("unexpected error%s", f" in {what}" if what else "", exc_info=exc)
        prefix = f"{what} failed" if what else "Something went wrong"
        st.error(public_message(f"{prefix}: {type(exc).__name__}: {first_line(exc)}"), icon=":material/error:")


@contextlib.contextmanager
def shown_errors(what: str = "") -> Iterator[None]:
    """Show any error raised in the block with :func:`show_error` and stop the page there."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - shown to the user, logged when unexpected
        show_error(exc, what)
        st.stop()


def attempt(fn: Callable[..., T], *args: Any, what: str = "", **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)``, or None after showing its error as a message."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        show_error(exc, what)
        return None


@st.cache_resource(show_spinner=False)
def _open_workspace(root: str) -> Workspace:
    return Workspace(root, read_only=None)  # read-only when it cannot be written: history still shows


def workspace() -> Workspace:
    """The workspace named by ``$CALIB_WORKSPACE`` (default ``./workspace``), opened once per process."""
    root = str(default_workspace_path().resolve())
    with shown_errors("Opening the workspace"):
        ws = _open_workspace(root)
        if not ws.root.is_dir():  # removed while the app was running
            _open_workspace.clear()
            ws = _open_workspace(root)
    return ws


def session_id() -> str:
    """This browser session's id (12 hex digits), kept in the URL so a refresh keeps it."""
    sid = st.session_state.get(SESSION_KEY)
    if not sid:
        from_url = st.query_params.get("session", "")
        sid = from_url if _SESSION_RE.fullmatch(from_url or "") else secrets.token_hex(6)
        st.session_state[SESSION_KEY] = sid
    if st.query_params.get("session") != sid:
        st.query_params["session"] = sid
    return sid


def _state_file(ws: Workspace, sid: str) -> Path:
    return ws.cache_dir / "app-sessions" / f"{sid}.json"


def load_session_state(ws: Workspace, sid: str) -> dict[str, Any]:
    """What this session chose so far (project, current runs), as saved by :func:`save_session_value`."""
    path = _state_file(ws, sid)
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except Exception:  # noqa: BLE001 - a damaged state file just means starting fresh
        log.warning("ignoring unreadable session state %s", path)
        return {}
    return data if isinstance(data, dict) else {}


def latest_session_value(ws: Workspace, key: str, *, other_than: str = "") -> Any:
    """``key`` as the most recently active browser session saved it (a new tab reopens the last project)."""
    folder = ws.cache_dir / "app-sessions"
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files:
        if path.stem == other_than:
            continue
        value = load_session_state(ws, path.stem).get(key)
        if value is not None:
            return value
    return None


def save_session_value(ws: Workspace, sid: str, key: str, value: Any) -> None:
    if ws.read_only:  # a read-only workspace keeps no session state; pages still show what is there
        return
    data = load_session_state(ws, sid)
    data[key] = value
    atomic_write_json(_state_file(ws, sid), data)
