"""The app's pages, in workflow order: where each lives, its title, icon and intro, what Home says of it and
the stage whose last run Home shows. One place for what several pages (and Home) say about a page."""

from __future__ import annotations

from dataclasses import dataclass

from calib.methods import method_names


@dataclass(frozen=True)
class AppPage:
    """``path``: relative to app/ (what ``st.page_link`` takes). ``step``: Home's one line on it.
    ``stage``: the stage whose last run Home shows (None: the page starts no run of its own)."""

    path: str
    title: str
    icon: str
    intro: str
    step: str
    stage: str | None = None


def _pages() -> dict[str, AppPage]:
    methods = ", ".join(method_names())  # every registered calibrator, read when the app starts
    return {
        "project": AppPage(
            "pages/1_Project.py", "Project", ":material/folder_open:",
            "Which model to quantize and which texts to calibrate and evaluate it on.",
            "Pick the demo task or bring your own ONNX model, tokenizer and data."),
        "calibset": AppPage(
            "pages/2_Calibration_set.py", "Calibration set", ":material/bar_chart:",
            "INT8 ranges are only as good as the texts they are measured on: match the token lengths the model "
            "will see (the evaluation data or production traffic), then check the coverage.",
            "Choose calibration texts whose lengths match what the model will see; check coverage.", "calibset"),
        "calibrate": AppPage(
            "pages/3_Calibrate.py", "Calibrate", ":material/straighten:",
            "One FP32 pass over the calibration set collects per-tensor histograms; every calibrator "
            f"({methods}) is computed from the same statistics.",
            f"One pass over the calibration set gives the ranges of every calibrator ({methods}).", "calibrate"),
        "build": AppPage(
            "pages/4_Build.py", "Build", ":material/construction:",
            "Put Q/DQ where TensorRT would run INT8, with the calibrated ranges. Here the INT8 model runs on ONNX "
            "Runtime (CPU); the commands to build the TensorRT engine on a GPU machine come with it.",
            "Place Q/DQ, build the INT8 model, get the TensorRT commands.", "build"),
        "validate": AppPage(
            "pages/5_Validate.py", "Validate", ":material/fact_check:",
            "The INT8 model against FP32 on the evaluation data: accuracy, top-1 agreement, per length bucket and "
            "per layer. The sensitivity analysis finds the fewest layers to keep in float.",
            "Compare INT8 against FP32: accuracy, agreement, per length bucket, per layer; find sensitive layers.",
            "validate"),
        "runs": AppPage(
            "pages/6_Runs_and_reports.py", "Runs & reports", ":material/history:",
            "Every run is recorded in the workspace registry with its parameters, status and files (sha256). "
            "Compare runs side by side and open or download their reports.",
            "History, side-by-side comparison and reports.", "report"),
    }


APP_PAGES = _pages()
"""Page key -> :class:`AppPage`, in workflow order (Home lists them so)."""


def app_page(key: str) -> AppPage:
    """The page ``key`` names (a KeyError names the known keys)."""
    try:
        return APP_PAGES[key]
    except KeyError:
        raise KeyError(f"no app page {key!r}; known: {', '.join(APP_PAGES)}") from None


def link_label(key: str, verb: str = "Go to") -> str:
    """The label of a link to a page: ``Go to Build``, ``Open it on Validate``…"""
    return f"{verb} {app_page(key).title}"
