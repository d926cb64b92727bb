"""Pieces shared by the pages: the page header and sidebar, run pickers, downloads."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from calib.errors import WorkspaceError
from calib.naming import registry_lookup, run_name
from calib.workspace import RunRecord, Workspace
from lib.context import (
    STAGE_TITLES,
    load_session_state,
    save_session_value,
    session_id,
    setup_page,
    shown_errors,
    workspace,
)
from lib.jobs import active_run, job_pool, show_progress, timing_text
from lib.pages import app_page, link_label
from lib.project import Project, current_project

T = TypeVar("T")

CURRENT_KEY = "calib_current_runs"
LAZY_DOWNLOAD_BYTES = 4 << 20


@dataclass(frozen=True)
class Page:
    ws: Workspace
    session: str
    project: Project


def start_page(key: str | None = None, *, title: str = "", icon: str = ":material/tune:", intro: str = "") -> Page:
    """Page config, workspace, session, project and sidebar; the first call of every page. ``key``: the
    page in :data:`lib.pages.APP_PAGES` (its title, icon and intro); Home gives its own ``title``…"""
    if key is not None:
        described = app_page(key)
        title, icon, intro = described.title, described.icon, described.intro
    setup_page(title, icon)
    ws = workspace()
    sid = session_id()
    project = current_project(ws, sid)
    page = Page(ws, sid, project)
    adopt_finished_runs(page)
    sidebar(ws, sid, project)
    st.title(f"{icon} {title}")
    if intro:
        st.caption(intro)
    return page


def page_link(key: str, verb: str = "Go to") -> None:
    """A link to the app page ``key`` (:data:`lib.pages.APP_PAGES`), labelled ``<verb> <its title>``."""
    target = app_page(key)
    st.page_link(target.path, label=link_label(key, verb), icon=target.icon)


def adopt_finished_runs(page: Page) -> None:
    """Runs this session started that have finished since become the current run of their stage,
    whichever page is open when they end (so returning to their page shows them selected)."""
    pool = job_pool()
    for key in [k for k in list(st.session_state.keys()) if str(k).startswith("calib_submitted_")]:
        stage, rid = str(key).removeprefix("calib_submitted_"), st.session_state.get(key)
        if rid and pool.status(page.ws, rid).status == "finished" and current_run_id(page, stage) != rid:
            set_current_run(page, stage, rid)


def sidebar(ws: Workspace, sid: str, project: Project) -> None:
    with st.sidebar:
        st.markdown(f"**Project:** {project.title}")
        st.caption(f"Workspace `{ws.root}` · session `{sid}`")
        pool = job_pool()
        if pool.active_ids(sid) or ws.list_runs(status="running", session=sid, limit=1):
            running_now(ws, sid)


@st.fragment(run_every=2.0)
def running_now(ws: Workspace, sid: str) -> None:
    """This session's active runs with their progress, refreshed every two seconds."""
    pool = job_pool()
    ids = list(dict.fromkeys([r.id for r in ws.list_runs(status="running", session=sid, limit=5)]
                             + pool.active_ids(sid)))
    statuses = [pool.status(ws, rid) for rid in ids]
    active = [s for s in statuses if s.active]
    if not active:
        return
    st.markdown("**Running now**")
    for status in active:
        title = STAGE_TITLES.get(status.stage, status.stage)
        if status.status == "queued":
            st.caption(f"{title}: waiting for a free worker")
        else:
            st.progress(min(max(status.progress, 0.0), 1.0), text=f"{title}: {status.message or 'starting'}")
            st.caption(timing_text(ws, status.run_id, status.progress))


# -- current runs --------------------------------------------------------------------------------
def _current(ws: Workspace, sid: str) -> dict[str, str]:
    if CURRENT_KEY not in st.session_state:
        saved = load_session_state(ws, sid).get("current_runs")
        st.session_state[CURRENT_KEY] = dict(saved) if isinstance(saved, dict) else {}
    return st.session_state[CURRENT_KEY]


def set_current_run(page: Page, stage: str, run_id: str) -> None:
    current = _current(page.ws, page.session)
    current[stage] = run_id
    save_session_value(page.ws, page.session, "current_runs", current)


def current_run_id(page: Page, stage: str) -> str | None:
    return _current(page.ws, page.session).get(stage)


def run_label(run: RunRecord, ws: Workspace | None = None) -> str:
    """What a run is (stage · calibrator · placement · size · label · time), its id in brackets."""
    return run_name(run, registry_lookup(ws) if ws is not None else None)


def run_title(run: RunRecord, ws: Workspace | None = None) -> str:
    """:func:`run_label` without the id (for headings)."""
    return run_name(run, registry_lookup(ws) if ws is not None else None, with_id=False)


def finished_runs(page: Page, stage: str, *, all_sessions: bool = False,
                  model_sha256: str | None = None) -> list[RunRecord]:
    runs = page.ws.list_runs(stage=stage, status="finished", session=None if all_sessions else page.session)
    if model_sha256:
        runs = [r for r in runs if r.summary.get("model_sha256") in (None, "", model_sha256)]
    return [r for r in runs if r.dir.is_dir()]


def open_picked_run(page: Page, stage: str, label: str, loader: Callable[[Path], T], *, key: str, empty: str,
                    what: str, model_sha256: str | None = None) -> tuple[RunRecord, T]:
    """:func:`pick_run`, then ``loader(run.dir)``. Without a run the page says ``empty`` and stops there;
    a run that cannot be opened is shown as an error message (``what``) and stops the page too."""
    run = pick_run(page, stage, label, key=key, model_sha256=model_sha256)
    if run is None:
        st.info(empty, icon=":material/info:")
        st.stop()
    with shown_errors(what):
        return run, loader(run.dir)
    raise AssertionError("unreachable: shown_errors stops the page")  # for type checkers


def pick_run(page: Page, stage: str, label: str, *, key: str, help: str | None = None,
             model_sha256: str | None = None) -> RunRecord | None:
    """A select box of finished runs of ``stage`` (this session's first); remembers the choice."""
    all_sessions = st.toggle("Include runs of other sessions", key=f"{key}-all", value=True,
                             help="Off: only the runs started from this browser tab's session.")
    runs = finished_runs(page, stage, all_sessions=all_sessions, model_sha256=model_sha256)
    current = current_run_id(page, stage)
    if current and all(r.id != current for r in runs):
        with contextlib.suppress(WorkspaceError):  # a run deleted from the registry is simply not offered
            run = page.ws.get_run(current)
            same_model = not model_sha256 or run.summary.get("model_sha256") in (None, "", model_sha256)
            if run.status == "finished" and run.dir.is_dir() and same_model:  # another model's stays filtered
                runs.insert(0, run)
    if not runs:
        return None
    ids = [r.id for r in runs]
    seen_key = f"{key}-current"
    if st.session_state.get(seen_key) != current or st.session_state.get(key) not in ids:
        # the current run changed elsewhere (a run just finished, another page chose one): show it
        st.session_state[key] = current if current in ids else ids[0]
    st.session_state[seen_key] = current
    lookup = registry_lookup(page.ws)
    names = {r.id: run_name(r, lookup) for r in runs}
    chosen = st.selectbox(label, ids, key=key, help=help, format_func=names.__getitem__)
    if chosen != current:
        set_current_run(page, stage, chosen)
        st.session_state[seen_key] = chosen
    return runs[ids.index(chosen)]


def job_section(page: Page, stage: str, title: str) -> str | None:
    """Show the progress of this session's active run of ``stage``; returns its id if one runs."""
    rid = active_run(page.ws, stage, page.session)
    if rid is not None:
        show_progress(page.ws, rid, title)
    return rid


def last_outcome(page: Page, stage: str) -> None:
    """After a run of ``stage`` ended: make it current if it finished, or show its error."""
    key = f"calib_submitted_{stage}"
    rid = st.session_state.get(key)
    if not rid:
        return
    status = job_pool().status(page.ws, rid)
    if status.active:
        return
    if status.status == "finished":
        set_current_run(page, stage, rid)
        st.session_state.pop(key, None)
        st.toast(f"{STAGE_TITLES.get(stage, stage)} run {rid} finished", icon=":material/check_circle:")
    elif status.status == "cancelled" or job_pool().cancelled(rid):
        st.info(f"{STAGE_TITLES.get(stage, stage)} run {rid} was cancelled; its unfinished files were removed.",
                icon=":material/cancel:")
    else:
        st.error(f"{STAGE_TITLES.get(stage, stage)} run {rid} {status.status}: {status.error}", icon=":material/error:")


def submit(page: Page, stage: str, fn: Any, config: Any, *, parents: tuple[str, ...] = (),
           label: str = "") -> str:
    rid = job_pool().submit(page.ws, stage, fn, config, parents=parents, label=label, session=page.session)
    st.session_state[f"calib_submitted_{stage}"] = rid
    return rid


def run_button(page: Page, stage: str, progress_title: str, label: str, *, key: str, fn: Any, config: Any,
               parents: tuple[str, ...] = (), run_label: str = "", icon: str = ":material/play_arrow:",
               button_type: str = "primary") -> None:
    """The outcome of this session's last run of ``stage``, then either its live progress or a
    button that starts a new run of ``fn(config)`` in the background."""
    last_outcome(page, stage)
    if job_section(page, stage, progress_title) is not None:
        return
    if st.button(label, type=button_type, key=key, icon=icon):
        submit(page, stage, fn, config, parents=parents, label=run_label)
        st.rerun()


def download_file(label: str, path: Path, *, mime: str = "application/octet-stream", key: str,
                  file_name: str | None = None) -> None:
    if not path.is_file():
        st.caption(f"{label}: not available ({path.name} missing)")
        return
    def read() -> bytes:
        return path.read_bytes()

    # Large files are read only when clicked, so a rerun does not hold them in memory.
    data = read if path.stat().st_size > LAZY_DOWNLOAD_BYTES else path.read_bytes()
    st.download_button(label, data=data, file_name=file_name or path.name, mime=mime, key=key,
                       on_click="ignore", icon=":material/download:")


def age(iso: str | None) -> str:
    if not iso:
        return ""
    try:
        then = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    seconds = (dt.datetime.now(dt.UTC) - then).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"
