"""The Project page's "where heavy passes run" setting: this process, local Ray workers, or a cluster."""

from __future__ import annotations

import dataclasses
import importlib.util

import streamlit as st

from calib.cluster import SPEC_HELP, Cluster, parse_cluster
from calib.errors import InputError
from calib.workspace import Workspace
from lib.context import show_error
from lib.project import Project, set_project

CHOICES = ("This process", "Local Ray workers", "Join a Ray cluster")


def cluster_editor(ws: Workspace, session: str, project: Project) -> Project:
    """Calibrate's statistics pass, validation and the sensitivity search run where this says; saved
    with the project (the ``--cluster`` of the CLI)."""
    st.subheader("Where heavy passes run")
    st.caption("The statistics pass of Calibrate, Validate and the sensitivity search can run on Ray workers "
               "(each loads the model once); the numbers are the ones this process computes. Saved with the "
               "project; the run records the cluster it used.")
    current = Cluster.parse(project.cluster or None)
    index = 0 if current is None else (1 if current.kind == "local" else 2)
    c1, c2 = st.columns([1, 2])
    choice = c1.radio("Run on", CHOICES, index=index, key="cluster-kind")
    if choice == CHOICES[0]:
        spec = ""
    elif choice == CHOICES[1]:
        workers = c2.number_input("Workers (processes on this machine)", min_value=1, max_value=64, step=1,
                                  value=int(current.workers or 2) if current and current.kind == "local" else 2,
                                  key="cluster-workers")
        spec = f"local:{int(workers)}"
    else:
        spec = c2.text_input("Cluster address", value=str(current) if current and current.kind == "join" else "auto",
                             key="cluster-address", help=f"ray://HOST:PORT, or auto (the cluster this machine is "
                                                         f"part of). Accepted: {SPEC_HELP}.").strip()
    try:
        spec = parse_cluster(spec) or ""
    except InputError as exc:
        show_error(exc)
        return project
    if spec and importlib.util.find_spec("ray") is None:
        st.warning("Ray is not installed in the app's environment: install it with pip install 'calib[ray]', "
                   "or runs with this setting fail in one line.", icon=":material/warning:")
    if spec != project.cluster:
        project = dataclasses.replace(project, cluster=spec)
        set_project(ws, session, project)
        st.toast("Where heavy passes run: saved with the project.", icon=":material/save:")
    st.caption(f"Now: {spec or 'this process only'}.")
    return project
