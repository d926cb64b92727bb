"""The Streamlit workbench, page by page, through Streamlit's AppTest (no browser).

Fast tests use the tiny model as a "bring your own model" project; the demo flow (marked ``demo``)
uses the real demo assets, linked into a temporary workspace, on a tiny calibration subset.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "app"
HOME = APP / "Home.py"
PAGES = {
    "project": "pages/1_Project.py",
    "calibset": "pages/2_Calibration_set.py",
    "calibrate": "pages/3_Calibrate.py",
    "build": "pages/4_Build.py",
    "validate": "pages/5_Validate.py",
    "runs": "pages/6_Runs_and_reports.py",
}
if str(APP) not in sys.path:
    sys.path.insert(0, str(APP))


@pytest.fixture()
def app_workspace(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "ws"
    monkeypatch.setenv("CALIB_WORKSPACE", str(root))
    monkeypatch.setenv("CALIB_THREADS", os.environ.get("CALIB_THREADS", "1"))
    return root


@pytest.fixture()
def demo_app_workspace(demo_workspace, tmp_path, monkeypatch) -> Path:
    """A fresh workspace whose demo/ links to the prepared demo assets."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "demo").symlink_to(Path(demo_workspace) / "demo", target_is_directory=True)
    monkeypatch.setenv("CALIB_WORKSPACE", str(root))
    monkeypatch.setenv("CALIB_THREADS", os.environ.get("CALIB_THREADS", "1"))
    return root


def open_app(page: str | None = None, timeout: float = 60) -> AppTest:
    at = AppTest.from_file(str(HOME), default_timeout=timeout).run()
    assert not at.exception, at.exception
    if page is not None:
        at.switch_page(PAGES[page]).run()
    return at


def no_crash(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def wait_for_jobs(at: AppTest, timeout: float = 300) -> AppTest:
    """Rerun the page until no run of the pool is active (the page polls the registry)."""
    from lib.jobs import job_pool

    deadline = time.monotonic() + timeout
    pool = job_pool()
    while pool.active_ids():
        assert time.monotonic() < deadline, "background run did not finish in time"
        time.sleep(0.2)
    return at.run()


def use_tiny_project(at: AppTest, tiny_model_path, tiny_tokenizer_dir, tiny_csv) -> AppTest:
    at.radio(key="project-mode").set_value("My own model").run()
    at.text_input(key="project-onnx-path").set_value(str(tiny_model_path))
    at.text_input(key="project-tok-path").set_value(str(tiny_tokenizer_dir))
    at.text_input(key="project-data-path").set_value(str(tiny_csv)).run()
    no_crash(at)
    at.number_input(key="project-maxlen").set_value(64)
    at.button(key="project-apply").click().run()
    no_crash(at)
    assert not errors(at), errors(at)
    return at


def assemble_set(at: AppTest, size: int = 32) -> AppTest:
    """Assemble a calibration set of ``size`` texts, waited for; the app test at the Calibrate page."""
    at.switch_page(PAGES["calibset"]).run()
    at.number_input(key="cs-size").set_value(size)
    at.button(key="cs-assemble").click().run()
    at = wait_for_jobs(at)
    return at.switch_page(PAGES["calibrate"]).run()


def assemble_and_calibrate(at: AppTest, size: int = 32, methods: list[str] | None = None) -> AppTest:
    """Assemble a calibration set of ``size`` texts and calibrate it (``methods``: the page's default
    if None), each waited for; the app test at the Calibrate page."""
    at = assemble_set(at, size)
    if methods is not None:
        at.multiselect(key="cal-methods").set_value(methods)
    at.button(key="cal-run").click().run()
    return wait_for_jobs(at)


# -- infrastructure ------------------------------------------------------------------------------
def test_run_history_filters_and_stage_order(tmp_path):
    from lib.runs import filter_runs, stages_present

    from calib.workspace import RunRecord

    def rec(rid, stage, status="finished"):
        return RunRecord(rid, stage, "", "", {}, [], status, 1.0, "", "", {}, "", None, tmp_path / rid)

    runs = [rec("a", "validate"), rec("b", "build", "failed"), rec("c", "future-stage"), rec("d", "calibset")]
    notes = {"a": ("", ("ship", "bbc")), "d": ("why", ("bbc",))}
    assert filter_runs(runs) == runs
    assert [r.id for r in filter_runs(runs, stages=("build", "validate"))] == ["a", "b"]
    assert [r.id for r in filter_runs(runs, statuses=("finished",), tags=("bbc",), notes=notes)] == ["a", "d"]
    assert [r.id for r in filter_runs(runs, tags=("bbc", "ship"), notes=notes)] == ["a"]
    assert stages_present(runs) == ["calibset", "build", "validate", "future-stage"]


def test_sanitize_upload_names():
    from lib.uploads import sanitize_name

    assert sanitize_name("../../etc/passwd") == "passwd"
    assert sanitize_name("C:\\Users\\me\\data set (1).CSV") == "data_set_1_.csv"
    assert sanitize_name("..hidden.onnx") == "hidden.onnx"
    assert sanitize_name("résumé.jsonl") == "resume.jsonl"
    assert sanitize_name("") == "upload"


def test_store_upload_checks_kind_and_size(workspace):
    from lib import uploads

    from calib.errors import InputError

    path = uploads.store_upload(workspace, "abc123abc123", uploads.DATASET, "../x/my data.csv", b"text,label\na,b\n")
    assert path.parent == workspace.uploads_dir / "abc123abc123"
    assert path.name.endswith("-my_data.csv") and path.read_bytes().startswith(b"text,label")
    with pytest.raises(InputError, match="not one of"):
        uploads.store_upload(workspace, "abc123abc123", uploads.DATASET, "evil.pkl", b"\x80\x04")
    small = uploads.UploadKind("dataset", (".csv",), 4)
    with pytest.raises(InputError, match="limit"):
        uploads.store_upload(workspace, "abc123abc123", small, "big.csv", b"0123456789")
    with pytest.raises(InputError, match="not a tokenizer file"):
        uploads.store_tokenizer(workspace, "abc123abc123", [("vocab.txt", b"a\n"), ("evil.json", b"{}")])
    folder = uploads.store_tokenizer(workspace, "abc123abc123", [("vocab.txt", b"[PAD]\n[UNK]\n")])
    assert (folder / "vocab.txt").is_file() and folder.parent == workspace.uploads_dir / "abc123abc123"


def test_job_pool_cancels_a_run_and_removes_its_files(workspace):
    import threading

    from lib.jobs import JobPool, elapsed_and_eta

    started, release = threading.Event(), threading.Event()

    def slow(config, out_dir, progress=None):
        (out_dir / "partial.bin").write_bytes(b"x" * 10)
        for i in range(1000):
            progress(i / 1000, f"step {i}")
            started.set()
            release.wait(0.01)

    pool = JobPool(workers=1)
    rid = pool.submit(workspace, "calibset", slow, {"n": 1})
    queued = pool.submit(workspace, "calibset", slow, {"n": 2})  # waits for the only worker
    assert started.wait(30)
    pool.cancel(queued)
    pool.cancel(rid)
    pool.wait(rid, timeout=30)
    run = workspace.get_run(rid)
    assert run.status in ("cancelled", "failed") and "cancelled" in run.error
    assert not run.dir.exists() and not list(workspace.runs_dir.glob(f".{rid}*"))
    status = pool.status(workspace, queued)
    assert status.status == "cancelled" and not status.active
    assert pool.cancelled(rid) and not pool.cancelled("other")
    # elapsed and ETA: nothing before 5 %, then the remaining share at the rate so far
    assert elapsed_and_eta("2026-01-01T00:00:00+00:00", 0.01, now=1767225610.0) == (10.0, None)
    assert elapsed_and_eta("2026-01-01T00:00:00+00:00", 0.25, now=1767225610.0) == (10.0, 30.0)


def test_job_pool_records_progress_and_errors(workspace):
    from lib.jobs import JobPool

    from calib.errors import InputError

    class Done:
        def summary(self):
            return {"value": 3}

    def good(config, out_dir, progress=None):
        progress(0.5, "half way")
        (out_dir / "out.txt").write_text(str(config))
        return Done()

    def bad(config, out_dir, progress=None):
        raise InputError("dataset x.csv has no text column 'txt'")

    pool = JobPool(workers=1)
    ok = pool.submit(workspace, "calibset", good, 7, session="s1")
    ko = pool.submit(workspace, "calibset", bad, 7, session="s1")
    pool.wait(ok, 30)
    pool.wait(ko, 30)
    assert pool.status(workspace, ok).status == "finished"
    assert (workspace.run_dir(ok) / "out.txt").read_text() == "7"
    failed = pool.status(workspace, ko)
    assert failed.status == "failed" and failed.error == "dataset x.csv has no text column 'txt'"
    assert {r.id for r in workspace.list_runs(session="s1")} == {ok, ko}
    assert workspace.list_runs(session="other") == []


# -- pages ---------------------------------------------------------------------------------------
def test_home_lists_the_workflow(app_workspace):
    at = open_app()
    no_crash(at)
    labels = [p.label for p in at.get("page_link")]
    assert any("Calibration set" in label for label in labels) and any("Validate" in label for label in labels)
    assert at.query_params.get("session"), "the session id is kept in the URL"


def test_project_page_demo_preselected(app_workspace):
    at = open_app("project")
    no_crash(at)
    assert at.radio(key="project-mode").value == "Demo task"
    assert at.selectbox(key="project-task").value == "bbc-topic"
    # the demo is not prepared in this empty workspace: the page offers to prepare it
    assert at.button(key="prepare-demo").label == "Prepare the demo assets"


def test_project_page_own_model(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    at = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    assert at.success, "project saved"
    assert [s.label for s in at.selectbox][:2] == ["Text column", "Label column"]
    frames = [d.value for d in at.dataframe]
    io_table = frames[0]
    assert set(io_table["name"]) >= {"input_ids", "attention_mask", "logits"}
    assert any(len(f) == 50 and "text" in f.columns for f in frames), "dataset preview"
    assert any(m.label == "Max length" and m.value == "64 tokens" for m in at.metric)
    # the project survives a new browser session that comes back with the same URL
    sid = at.query_params["session"]
    again = AppTest.from_file(str(HOME), default_timeout=60)
    again.query_params["session"] = sid
    again.run()
    again.switch_page(PAGES["project"]).run()
    assert again.radio(key="project-mode").value == "My own model"
    assert again.text_input(key="project-onnx-path").value == str(tiny_model_path)


def test_project_page_sets_the_datas_hygiene(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    """HTML unescaping and dropping empty rows, as the CLI's --normalize / --drop-empty, set on the Project page."""
    from lib.project import PROJECT_KEY

    at = open_app("project")
    at.radio(key="project-mode").set_value("My own model").run()
    at.text_input(key="project-onnx-path").set_value(str(tiny_model_path))
    at.text_input(key="project-tok-path").set_value(str(tiny_tokenizer_dir))
    at.text_input(key="project-data-path").set_value(str(tiny_csv)).run()
    at.number_input(key="project-maxlen").set_value(64)
    at.checkbox(key="project-drop-empty").check()
    at.selectbox(key="project-normalize").set_value("html")
    at.button(key="project-apply").click().run()
    no_crash(at)
    assert not errors(at), errors(at)
    project = at.session_state[PROJECT_KEY]
    assert project.drop_empty is True and project.normalize == "html"


def test_project_page_upload(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    at = open_app("project")
    at.radio(key="project-mode").set_value("My own model").run()
    at.radio(key="project-onnx-src").set_value("Upload")
    at.radio(key="project-tok-src").set_value("Upload files")
    at.radio(key="project-data-src").set_value("Upload").run()
    at.file_uploader(key="project-onnx-upload").set_value(
        ("../my model.onnx", tiny_model_path.read_bytes(), "application/octet-stream"))
    at.file_uploader(key="project-tok-upload").set_value(
        [(p.name, p.read_bytes(), "application/json") for p in tiny_tokenizer_dir.iterdir()
         if p.name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")])
    at.file_uploader(key="project-data-upload").set_value(("data.csv", tiny_csv.read_bytes(), "text/csv")).run()
    no_crash(at)
    # each uploader carries its kind's limit, so the browser refuses an oversized file before sending it
    limits = {key: at.file_uploader(key=key).proto.max_upload_size_mb
              for key in ("project-onnx-upload", "project-tok-upload", "project-data-upload")}
    assert limits == {"project-onnx-upload": 1024, "project-tok-upload": 64, "project-data-upload": 512}, limits
    at.button(key="project-apply").click().run()
    no_crash(at)
    assert not errors(at), errors(at)
    uploaded = sorted(p.name for p in (app_workspace / "uploads").rglob("*") if p.is_file())
    assert any(name.endswith("-my_model.onnx") for name in uploaded)
    assert any(name.endswith("-data.csv") for name in uploaded)
    assert "vocab.txt" in uploaded


def test_project_page_shows_errors_as_messages(app_workspace, tiny_tokenizer_dir, tiny_csv, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    at = open_app("project")
    at.radio(key="project-mode").set_value("My own model").run()
    at.text_input(key="project-onnx-path").set_value(str(broken))
    at.text_input(key="project-tok-path").set_value(str(tiny_tokenizer_dir))
    at.text_input(key="project-data-path").set_value(str(tiny_csv)).run()
    at.button(key="project-apply").click().run()
    no_crash(at)
    assert any("broken.onnx" in e and "cannot be read" in e for e in errors(at)), errors(at)
    at.text_input(key="project-data-path").set_value(str(tmp_path / "missing.csv")).run()
    no_crash(at)
    assert any("missing.csv" in e and "does not exist" in e for e in errors(at)), errors(at)


def _fake_run(root: Path, stage: str, params: dict, summary: dict, session: str = "", files=()) -> str:
    from calib.workspace import Workspace

    ws = Workspace(root)
    with ws.start_run(stage, params, session=session) as ctx:
        for name, text in files:
            (ctx.dir / name).write_text(text)
        ctx.summary.update(summary)
    return ctx.id


def test_runs_page_history_compare_and_reports(app_workspace):
    a = _fake_run(app_workspace, "validate", {"engine": "x", "limit": 16}, {"top1_agreement": 0.99}, "other")
    b = _fake_run(app_workspace, "validate", {"engine": "y", "limit": 16}, {"top1_agreement": 0.95}, "other",
                  files=[("evaluation.json", "{}")])
    r = _fake_run(app_workspace, "report", {"evaluations": [a, b]}, {}, "other",
                  files=[("report.html", "<html><body><h1>Report</h1></body></html>"), ("report.md", "# Report"),
                         ("report.json", "{}")])
    at = open_app("runs")
    no_crash(at)
    history = at.dataframe[0].value
    assert set(history["run"]) == {a, b, r}
    assert set(history["session"]) == {"other"}
    # compare: the two validate runs side by side, only the differing rows
    compare = [d.value for d in at.dataframe if a in d.value.columns]
    assert compare, "comparison table"
    assert list(compare[0].columns) == [b, a] or list(compare[0].columns) == [a, b]
    assert "param · engine" in compare[0].index and "param · limit" not in compare[0].index
    labels = [d.label for d in at.download_button]
    assert {"Download report.html", "Download report.md", "Download report.json"} <= set(labels)
    # this session only: nothing of the other session
    at.toggle(key="runs-all").set_value(False).run()
    no_crash(at)
    assert any("No runs yet" in i.value for i in at.info)


@pytest.mark.parametrize("page, widgets, empty", [
    ("calibset", ["cs-strategy", "cs-size", "cs-seed", "cs-edges", "cs-shortfall", "cs-assemble"],
     "No calibration set yet"),
    ("calibrate", [], "No calibration set yet"),
    ("build", [], "No calibration yet"),
    ("validate", [], "No INT8 build yet"),
    ("runs", ["runs-stages", "runs-status", "runs-all"], "No runs yet"),
])
def test_pages_before_any_run(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv, page, widgets, empty):
    at = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    at.switch_page(PAGES[page]).run()
    no_crash(at)
    assert not errors(at), errors(at)
    for key in widgets:
        assert at.get("selectbox") is not None
        found = [w for kind in ("selectbox", "number_input", "text_input", "button", "multiselect", "toggle")
                 for w in at.get(kind) if getattr(w, "key", None) == key]
        assert found, f"{page}: no widget {key}"
    assert any(empty in i.value for i in at.info), [i.value for i in at.info]


def test_failed_run_shows_the_library_error(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    at = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    at.switch_page(PAGES["calibset"]).run()
    no_crash(at)
    at.number_input(key="cs-size").set_value(1000)
    at.button(key="cs-assemble").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    assert any("requested 1000 texts" in e and "has only 240" in e for e in errors(at)), errors(at)
    assert not at.exception


def test_two_sessions_do_not_mix(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    first = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    second = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    assert first.query_params["session"] != second.query_params["session"]
    for at, size in ((first, 16), (second, 24)):
        at.switch_page(PAGES["calibset"]).run()
        at.number_input(key="cs-size").set_value(size)
        at.button(key="cs-assemble").click().run()
    first, second = wait_for_jobs(first), wait_for_jobs(second)
    for at, size in ((first, 16), (second, 24)):
        no_crash(at)
        # pickers list every session's runs (a new tab is never empty), each session shows its own run
        assert len(at.selectbox(key="cs-run").options) == 2
        assert any(m.label == "Texts" and m.value == str(size) for m in at.metric)
    # this session's runs only: one toggle away
    first.toggle(key="cs-run-all").set_value(False).run()
    assert len(first.selectbox(key="cs-run").options) == 1
    assert any(m.label == "Texts" and m.value == "16" for m in first.metric)


def test_tiny_flow_through_every_page(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    """Calibration set -> calibrate -> build -> validate -> sensitivity -> report, all from the pages."""
    at = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    at.switch_page(PAGES["calibset"]).run()
    at.number_input(key="cs-size").set_value(16)
    at.button(key="cs-assemble").click().run()
    at = wait_for_jobs(at)
    at.button(key="cs-recipe-save").click().run()
    no_crash(at)
    assert list((app_workspace / "recipes").glob("*.json"))

    at.switch_page(PAGES["calibrate"]).run()
    at.button(key="cal-run").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    assert [d.label for d in at.download_button].count("TensorRT cache") == 4

    at.switch_page(PAGES["build"]).run()
    no_crash(at)
    assert any("TensorRT" in i.value for i in [*at.info, *at.success]), "backend availability is shown"
    at.button(key="build-run").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    assert "Q/DQ ONNX model" in [d.label for d in at.download_button]
    assert any("trtexec" in c.value for c in at.code)

    at.switch_page(PAGES["validate"]).run()
    at.number_input(key="val-limit").set_value(32)
    at.number_input(key="val-layer-rows").set_value(8)
    at.button(key="val-run").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    assert any(m.label == "Top-1 agreement" for m in at.metric)
    assert not errors(at), errors(at)
    assert any(c.value.startswith("95 % CI") for c in at.caption)  # the tiles carry their intervals
    at.number_input(key="sens-limit").set_value(16)
    at.number_input(key="sens-budget").set_value(4)
    at.button(key="sens-run").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    assert any(m.label == "Recommended exclusions" for m in at.metric)
    at.button(key="rep-run").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    assert "Download report.html" in [d.label for d in at.download_button]
    assert any(s.value.startswith(("PASS", "FAIL")) for s in [*at.success, *at.error])

    from calib.workspace import Workspace

    runs = Workspace(app_workspace).list_runs(session=at.query_params["session"])
    assert {r.stage for r in runs} == {"calibset", "calibrate", "build", "validate", "sensitivity", "report"}
    assert all(r.status == "finished" for r in runs)


@pytest.mark.demo
def test_the_calibration_set_page_matches_a_production_lengths_file(demo_app_workspace, tmp_path):
    """The lengths target asks for a file, then sets its lengths beside the pool's (a path typed on the server)."""
    at = open_app("calibset")
    no_crash(at)
    at.radio(key="cs-target").set_value("lengths").run()
    no_crash(at)
    assert any("production token lengths" in i.value for i in at.info)
    prod = tmp_path / "prod.csv"
    prod.write_text("length,count\n12,30\n40,50\n200,20\n")
    at.text_input(key="cs-lengths-path").set_value(str(prod)).run()
    no_crash(at)
    assert not errors(at), errors(at)
    facts = next(d.value for d in at.dataframe if "p50" in d.value.columns)
    assert list(facts[""]) == ["pool", "target"] and facts.loc[1, "texts"] == 100 and facts.loc[1, "longest"] == 200


@pytest.mark.demo
def test_demo_flow_assembles_and_calibrates(demo_app_workspace):
    at = open_app("project")
    no_crash(at)
    assert at.selectbox(key="project-task").value == "bbc-topic"
    assert any(m.label == "FP32 eval accuracy" for m in at.metric)
    at.switch_page(PAGES["calibset"]).run()
    no_crash(at)
    assert at.radio(key="cs-target").value == "eval" and at.selectbox(key="cs-strategy").value == "match"
    at.number_input(key="cs-size").set_value(16)
    at.button(key="cs-assemble").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    assert any(m.label == "Texts" and m.value == "16" for m in at.metric)
    coverage = next(d.value for d in at.dataframe if "bucket (tokens)" in d.value.columns)
    assert coverage["calibration"].sum() == 16

    at.switch_page(PAGES["calibrate"]).run()
    at.multiselect(key="cal-methods").set_value(["entropy", "minmax"])
    at.button(key="cal-run").click().run()
    at = wait_for_jobs(at, timeout=600)
    no_crash(at)
    assert any(m.label == "Texts" and m.value == "16" for m in at.metric)
    table = next(d.value for d in at.dataframe if "entropy" in d.value.columns)
    assert len(table) > 10 and (table["entropy"] <= table["minmax"] + 1e-6).all()
    labels = [d.label for d in at.download_button]
    assert labels.count("TensorRT cache") == 2 and labels.count("Ranges JSON") == 2


def test_sensitivity_exclusions_rebuild_in_one_click(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    """Quantize every op, ask for an embedding cosine the full placement misses, rebuild with the
    recommended float exclusions, and find the rebuilt engine selected for validation."""
    at = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    at.switch_page(PAGES["calibset"]).run()
    at.number_input(key="cs-size").set_value(32)
    at.button(key="cs-assemble").click().run()
    at = wait_for_jobs(at)
    at.switch_page(PAGES["calibrate"]).run()
    at.selectbox(key="cal-placement").set_value("all")
    at.selectbox(key="cal-scope").set_value("all")
    at.multiselect(key="cal-methods").set_value(["minmax"])
    at.button(key="cal-run").click().run()
    at = wait_for_jobs(at)
    at.switch_page(PAGES["build"]).run()
    at.selectbox(key="build-preset").set_value("all")
    at.button(key="build-run").click().run()
    at = wait_for_jobs(at)
    first_build = at.selectbox(key="build-run-pick").value
    at.switch_page(PAGES["validate"]).run()
    at.number_input(key="val-limit").set_value(48)
    at.checkbox(key="val-layers").set_value(False)
    at.button(key="val-run").click().run()
    at = wait_for_jobs(at)
    at.number_input(key="sens-cos").set_value(0.9999)
    at.number_input(key="sens-limit").set_value(48)
    at.number_input(key="sens-budget").set_value(30)
    at.selectbox(key="sens-gran").set_value("block")
    at.button(key="sens-run").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    excluded = next(m for m in at.metric if m.label == "Recommended exclusions")
    assert int(excluded.value) > 0
    at.button(key="sens-rebuild").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    rebuilt = at.selectbox(key="val-build").value
    assert rebuilt != first_build and rebuilt.startswith("build-")
    from calib.build import EngineArtifact
    from calib.workspace import Workspace

    art = EngineArtifact.load(Workspace(app_workspace).run_dir(rebuilt))
    assert len(art.meta["placement"]["exclude_nodes"]) == int(excluded.value)


def test_release_budget_is_saved_with_the_project(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    at = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    assert at.checkbox(key="budget-drop-on").value and at.number_input(key="budget-drop").value == 0.5
    at.number_input(key="budget-agree").set_value(0.95).run()
    at.checkbox(key="budget-ci").set_value(True).run()
    no_crash(at)
    # a refreshed page (new Streamlit session, same ?session=) finds the saved budget
    again = AppTest.from_file(str(HOME), default_timeout=60)
    again.query_params["session"] = at.query_params["session"]
    again.run()
    again.switch_page(PAGES["project"]).run()
    no_crash(again)
    assert again.number_input(key="budget-agree").value == 0.95 and again.checkbox(key="budget-ci").value
    # no criterion at all is refused with a message, and the saved budget is kept
    for key in ("budget-drop-on", "budget-agree-on", "budget-cos-on"):
        again.checkbox(key=key).set_value(False)
    again.run()
    assert any("at least one criterion" in e for e in errors(again))
    from lib.context import load_session_state
    from lib.project import Project

    from calib.workspace import Workspace

    saved = load_session_state(Workspace(app_workspace), at.query_params["session"])["project"]
    assert Project.from_dict(saved).budget.min_agreement == 0.95 and Project.from_dict(saved).budget.use_ci


def test_calibrators_side_by_side_verdict_and_report(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    """One action validates every range set; the table, the recommendation and a FAIL banner show; the
    report made from it carries the verdict of the project's budget."""
    at = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    at.checkbox(key="budget-cos-on").set_value(True).run()
    at.number_input(key="budget-cos").set_value(1.0).run()  # no INT8 engine reaches a cosine of exactly 1
    at.switch_page(PAGES["calibset"]).run()
    at.number_input(key="cs-size").set_value(32)
    at.button(key="cs-assemble").click().run()
    at = wait_for_jobs(at)
    at.switch_page(PAGES["calibrate"]).run()
    at.multiselect(key="cal-methods").set_value(["entropy", "minmax"])
    at.button(key="cal-run").click().run()
    at = wait_for_jobs(at)
    at.switch_page(PAGES["validate"]).run()
    no_crash(at)
    assert at.multiselect(key="cmp-methods").value == ["entropy", "minmax"]
    at.number_input(key="cmp-limit").set_value(48)
    at.button(key="cmp-run").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    table = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    assert list(table["calibrator"]) == ["entropy", "minmax"] and set(table["verdict"]) == {"FAIL"}
    texts = [m.value for m in at.markdown]
    # nothing passes: the banner names the closest calibrator and never calls it recommended
    assert any("FAIL" in t and "none passes · closest:" in t for t in texts), texts
    assert not any("recommended:" in t for t in texts), texts
    # the page's Verdict section (at the top) judges the comparison just made, not "No validation yet"
    assert not any(i.value.startswith("No validation yet") for i in at.info)
    assert sum("FAIL" in t and "none passes · closest:" in t for t in texts) == 2, texts  # Verdict + side by side
    assert any(w.value.startswith("None of the 2 passes") for w in at.warning)
    # Home judges the same comparison first (the newest of the project model's validations and comparisons)
    home = open_app()
    no_crash(home)
    judged = [m.value for m in home.markdown if "FAIL" in m.value and "none passes · closest:" in m.value]
    assert len(judged) == 1 and "Calibrators side by side" in judged[0], [m.value for m in home.markdown]
    at.button(key="cmp-report").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    assert any(e.value.startswith("FAIL: ") and "embedding cosine" in e.value for e in at.error)
    assert any("calib gate" in c.value and "--min-embedding-cosine 1" in c.value for c in at.code)
    from calib.report import Report
    from calib.workspace import Workspace

    ws = Workspace(app_workspace)
    report = Report.load(ws.list_runs(stage="report", limit=1)[0].dir)
    assert report.data["verdict"]["status"] == "FAIL" and report.data["budget"]["min_embedding_cosine"] == 1.0
    assert len(report.data["comparison"]) == 2
    assert report.data["build"]["calibrator"] == report.data["recommendation"]["name"]


def test_compare_view_overlays_validations_with_a_pinned_baseline(app_workspace, tiny_spec, tiny_csv):
    import tinymodel
    from test_validate import absmax_ranges, vconfig

    from calib.pipeline import run_stage
    from calib.placement import Placement
    from calib.quantize import quantize_qdq
    from calib.validate import validate
    from calib.workspace import Workspace

    ws = Workspace(app_workspace)
    texts, _ = tinymodel.make_texts(48, seed=3)
    ids = []
    for preset in ("tensorrt", "all"):
        qdq = app_workspace / f"{preset}.qdq.onnx"
        quantize_qdq(tiny_spec.onnx_path, absmax_ranges(tiny_spec, texts, preset), Placement(preset), qdq)
        rid, _ = run_stage(ws, "validate", validate, vconfig(tiny_spec, qdq, tiny_csv, limit=60, bootstrap=50,
                                                             layer_rows=16), label=preset)
        ids.append(rid)
    home = open_app()  # Home opens with the verdict of the newest validation against the project's budget
    assert any(("PASS" in m.value or "FAIL" in m.value) and "Validation · " in m.value for m in home.markdown)
    at = open_app("runs")
    no_crash(at)
    history = at.dataframe[0].value
    assert {"name", "agreement", "drop (pts)", "run"} <= set(history.columns)
    assert history["agreement"].dtype.kind == "f"  # numbers, so the column sorts
    assert all(n.startswith("Validation · ") for n in history["name"])
    baseline = at.selectbox(key="compare-baseline")
    assert len(baseline.options) == 2
    deltas = next(d.value for d in at.dataframe if "Δ agreement" in d.value.columns)
    assert deltas["run"].str.endswith("(baseline)").sum() == 1
    assert (deltas["Δ agreement"] == "–").sum() == 1  # the baseline has no difference to itself
    at.radio(key="compare-measure").set_value("drop").run()
    no_crash(at)
    at.selectbox(key="compare-baseline").set_value(baseline.options[1]).run()
    no_crash(at)
    # notes and tags on a run, shown in the history and used to filter it
    at.text_area(key=f"runs-note-{history['run'][0]}").set_value("looks best")
    at.text_input(key=f"runs-tags-{history['run'][0]}").set_value("candidate, tensorrt")
    next(b for b in at.button if b.label == "Save note and tags").click().run()
    no_crash(at)
    assert ws.notes() == {history["run"][0]: ("looks best", ("candidate", "tensorrt"))}
    assert at.dataframe[0].value["tags"].tolist().count("candidate, tensorrt") == 1
    at.multiselect(key="runs-tags").set_value(["candidate"]).run()
    assert list(at.dataframe[0].value["run"]) == [history["run"][0]]
    assert len(at.get("vega_lite_chart")) >= 2  # buckets and per-layer SQNR, overlaid


def test_new_tab_reopens_the_last_project(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    first = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    fresh = open_app("project")  # a new tab: no ?session= in its URL
    no_crash(fresh)
    assert fresh.query_params["session"] != first.query_params["session"]
    assert fresh.radio(key="project-mode").value == "My own model"
    assert fresh.text_input(key="project-onnx-path").value == str(tiny_model_path)


def test_csv_without_a_text_column_asks_which(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv, tmp_path):
    import pandas as pd

    data = pd.read_csv(tiny_csv)
    odd = tmp_path / "odd.csv"
    pd.DataFrame({"id": range(len(data)), "body": data["text"], "label": data["label"]}).to_csv(odd, index=False)
    at = open_app("project")
    at.radio(key="project-mode").set_value("My own model").run()
    at.text_input(key="project-onnx-path").set_value(str(tiny_model_path))
    at.text_input(key="project-tok-path").set_value(str(tiny_tokenizer_dir))
    at.text_input(key="project-data-path").set_value(str(odd)).run()
    no_crash(at)
    assert at.selectbox(key="project-text-col").value is None
    assert any("Which column holds the texts?" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "project-apply"]
    at.selectbox(key="project-text-col").set_value("body").run()
    at.number_input(key="project-maxlen").set_value(64)
    at.button(key="project-apply").click().run()
    no_crash(at)
    assert not errors(at) and at.success


def test_error_messages_name_uploads_as_the_user_did():
    from lib.context import public_message

    assert public_message("dataset /srv/ws/uploads/abc123abc123/0a1b2c3d4e5f-data.csv has no text column 'txt'") == \
        "dataset data.csv has no text column 'txt'"
    assert public_message("ONNX model '/x/uploads/s1/0a1b2c3d4e5f-m.onnx' cannot be read") == \
        "ONNX model 'm.onnx' cannot be read"
    assert "uploads" not in public_message("tokenizer /w/uploads/s1/tokenizer-0a1b2c3d4e5f/ has no vocab.txt")
    assert public_message("dataset /data/texts.csv has no column x") == "dataset /data/texts.csv has no column x"


def test_project_cluster_setting_reaches_the_runs(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    """The Project page's "where heavy passes run": a bad address is one line and not saved; local Ray
    workers are saved with the project and the Calibrate run records them."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'calib[ray]')")
    at = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    assert at.radio(key="cluster-kind").value == "This process"
    at.radio(key="cluster-kind").set_value("Join a Ray cluster").run()
    at.text_input(key="cluster-address").set_value("ray://nowhere").run()
    assert any("unknown cluster 'ray://nowhere'" in e for e in errors(at))
    at.radio(key="cluster-kind").set_value("Local Ray workers").run()
    at.number_input(key="cluster-workers").set_value(2).run()
    no_crash(at)
    from lib.context import load_session_state
    from lib.project import Project

    from calib.workspace import Workspace

    ws = Workspace(app_workspace)
    assert Project.from_dict(load_session_state(ws, at.query_params["session"])["project"]).cluster == "local:2"
    at = assemble_and_calibrate(at, 32, ["minmax"])
    no_crash(at)
    run = next(r for r in ws.list_runs() if r.stage == "calibrate")
    assert run.status == "finished" and run.params["cluster"] == "local:2" and run.summary["workers"] == 2


def test_calibrator_parameters_are_set_on_the_page(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    """Every chosen calibrator's parameters have a control (from the method registry); a changed value
    reaches the run, a refused one is the method's own one-line error and no run can start."""
    from calib.calibrate import Calibration
    from calib.workspace import Workspace

    at = assemble_set(use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv))
    at.multiselect(key="cal-methods").set_value(["minmax", "percentile"]).run()
    assert at.number_input(key="cal-param-percentile-percentile").value == 99.999
    at.number_input(key="cal-param-percentile-percentile").set_value(120.0).run()
    assert any("percentile must be in (0, 100]" in e.value for e in at.error)
    assert "cal-run" not in [b.key for b in at.button]
    at.number_input(key="cal-param-percentile-percentile").set_value(99.9).run()
    at.button(key="cal-run").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    run = next(r for r in Workspace(app_workspace).list_runs() if r.stage == "calibrate")
    assert run.params["params"] == {"percentile": {"percentile": 99.9}}
    assert Calibration.load(run.dir).ranges("percentile").params == {"percentile": 99.9}


def test_bucket_bars_keep_every_bar_visible():
    """The per-bucket bars' value axis starts below the smallest bar (it used to start at it, so the
    lowest bar had zero height) and every bucket keeps its label."""
    import pandas as pd
    from lib.charts import bucket_measure_bars

    long = pd.DataFrame({"bucket": ["0–16", "16–32", "32–64", "64–128"] * 2, "texts": [40, 50, 60, 30] * 2,
                         "few": [False] * 8, "measure": ["FP32 accuracy"] * 4 + ["agreement"] * 4,
                         "value": [0.91, 0.88, 0.86, 0.93, 0.99, 0.97, 0.955, 1.0]})
    spec = bucket_measure_bars(long, ["0–16", "16–32", "32–64", "64–128"], ["FP32 accuracy", "agreement"]).to_dict()
    low, high = spec["encoding"]["y"]["scale"]["domain"]
    assert low < 0.86 - 0.01 and high == 1.0
    assert spec["encoding"]["x"]["axis"]["labelOverlap"] is False and spec["encoding"]["x"]["sort"][-1] == "64–128"


def test_build_page_benchmark_shows_its_measured_noise(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    """Benchmark from the Build page: one peak-memory figure per engine process, and a timing-noise
    line from the run's own passes (a warning only when they disagree or cannot tell)."""
    at = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    at = assemble_and_calibrate(at, 32, ["minmax"])
    at.switch_page(PAGES["build"]).run()
    at.button(key="build-run").click().run()
    at = wait_for_jobs(at)
    assert at.number_input(key="bench-repeats").value == 2
    at.number_input(key="bench-texts").set_value(16)
    at.text_input(key="bench-batches").set_value("1, 8")
    at.button(key="bench-run").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    from calib.bench import BenchResult
    from calib.workspace import Workspace

    ws = Workspace(app_workspace)
    bench = BenchResult.load(next(r for r in ws.list_runs(stage="bench")).dir)
    worst = max(r["pass_spread"] for r in bench.rows)
    texts = [c.value for c in at.caption] + [w.value for w in at.warning]
    assert any("peak memory of each engine's process: fp32" in t for t in texts)
    noise = [w.value for w in at.warning if "Timed passes differed" in w.value]
    quiet = [c.value for c in at.caption if "timed passes per batch size agreed within" in c.value]
    assert (noise and not quiet) if worst > 0.10 else (quiet and not noise), (worst, texts)
