"""Latency and throughput of a build (``calib.bench``), measured in the background."""

from __future__ import annotations

import importlib.util

import streamlit as st


def bench_section(page, run, art) -> None:
    if importlib.util.find_spec("calib.bench") is None:
        st.caption("Benchmarking is not available in this installation of calib.")
        return
