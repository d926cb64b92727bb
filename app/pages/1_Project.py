"""Project: the demo task (preselected) or your own ONNX model, tokenizer and dataset."""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

import streamlit as st
from lib import uploads
from lib.cluster_view import cluster_editor
from lib.context import attempt, show_error, shown_errors
from lib.datasets_view import peek, summary_frame
from lib.model_view import classes_caption, model_caption, model_facts, model_io_frame
from lib.project import (
    NO_COLUMN,
    POOLING_OPTIONS,
    checked_project,
    custom_form_values,
    custom_project,
    data_form_choices,
    data_spec,
    demo_description,
    demo_project,
    demo_ready,
    demo_task,
    demo_tasks,
    first_max_length,
    model_spec,
    same_rows_warning,
    set_project,
)
from lib.ui import run_button, start_page
from lib.verdict_view import budget_editor

from calib import formatting as fmt
from calib.data import NORMALIZATION_DESCRIPTIONS, NORMALIZATIONS
from calib.demo import DemoConfig, prepare_demo_run
from calib.model import POOLING_DESCRIPTIONS

page = start_page("project")
ws, project = page.ws, page.project


def show_model(spec) -> None:
    st.subheader("Model")
    for col, (label, value) in zip(st.columns(4), model_facts(spec)):
        col.metric(label, value)
    st.caption(model_caption(spec))
    st.dataframe(model_io_frame(spec), hide_index=True, width="stretch")
    if classes := classes_caption(spec):
        st.caption(classes)


def show_data(role: str, title: str) -> None:
    spec = data_spec(ws, project, role)
    count, head, counts = summary_frame(spec)
    st.markdown(f"**{title}** · `{spec.describe()}` · {count:,} rows")
    left, right = st.columns([3, 1])
    left.dataframe(head, hide_index=True, width="stretch", height=240)
    if not counts.empty:
        right.dataframe(counts, hide_index=True, width="stretch", height=240)


# -- choose --------------------------------------------------------------------------------------
modes = ["Demo task", "My own model"]
mode = st.radio("Model and data", modes, index=0 if project.kind == "demo" else 1, horizontal=True,
                key="project-mode")

if mode == "Demo task":
    tasks = list(demo_tasks())
    task = st.selectbox("Demo task", tasks, index=tasks.index(project.task) if project.task in tasks else 0,
                        key="project-task")
    st.caption(demo_description(task))
    if not demo_ready(ws, task):
        st.info(f"The demo task **{task}** is not prepared in `{ws.demo_dir}` yet. Preparing exports the "
                "MiniLM encoder to ONNX, trains its classification head and writes the data splits "
                "(offline; a few minutes on a small CPU).", icon=":material/info:")
        run_button(page, "demo", "Preparing the demo", "Prepare the demo assets", key="prepare-demo",
                   fn=prepare_demo_run, config=DemoConfig(workspace=str(ws.root), tasks=(task,)), run_label=task)
        st.stop()
    with shown_errors("Reading the demo task"):
        demo = demo_task(ws, task)
    default_len = demo.max_length
    # one widget per task, so switching the task shows that task's own max length
    max_length = st.number_input("Max length (tokens)", min_value=8, max_value=512, step=8,
                                 value=first_max_length(project, task=task, card_length=default_len),
                                 key=f"project-demo-maxlen-{task}",
                                 help="Texts are truncated to this many tokens.")
    chosen = demo_project(project, task, int(max_length))
    if chosen != project:
        set_project(ws, page.session, chosen)
        st.rerun()  # the sidebar, drawn before this widget, names the new project
    facts = st.columns(4)
    facts[0].metric("Task", task)
    facts[1].metric("Classes", len(demo.labels))
    facts[2].metric("FP32 eval accuracy", fmt.percent(demo.fp32_eval_accuracy, 1))
    facts[3].metric("Card max length", f"{default_len} tokens")
else:
    st.markdown("#### Model")
    first = custom_form_values(project)
    src = st.radio("ONNX model", ["Path on the server", "Upload"], horizontal=True, key="project-onnx-src")
    onnx_path = first["model"]
    if src == "Upload":
        up = st.file_uploader("ONNX model (.onnx)", type=uploads.widget_types(uploads.MODEL), key="project-onnx-upload",
                              max_upload_size=uploads.widget_limit_mb(uploads.MODEL))
        if up is not None:
            stored = attempt(uploads.store_upload, ws, page.session, uploads.MODEL, up.name, up,
                             what="Storing the model")
            onnx_path = str(stored) if stored else ""
    else:
        onnx_path = st.text_input("ONNX model path", value=onnx_path, key="project-onnx-path",
                                  placeholder="/models/my-model.onnx")
    tsrc = st.radio("Tokenizer", ["Path on the server", "Upload files"], horizontal=True, key="project-tok-src")
    tokenizer_dir = first["tokenizer"]
    if tsrc == "Upload files":
        ups = st.file_uploader(f"Tokenizer files ({', '.join(uploads.TOKENIZER_FILES)})",
                               type=uploads.widget_types(uploads.TOKENIZER), accept_multiple_files=True,
                               key="project-tok-upload", max_upload_size=uploads.widget_limit_mb(uploads.TOKENIZER))
        if ups:
            stored = attempt(uploads.store_tokenizer, ws, page.session, [(u.name, u) for u in ups],
                             what="Storing the tokenizer")
            tokenizer_dir = str(stored) if stored else ""
    else:
        tokenizer_dir = st.text_input("Tokenizer directory", value=tokenizer_dir, key="project-tok-path",
                                      placeholder="/models/my-model/tokenizer")

    st.markdown("#### Data")
    dsrc = st.radio("Dataset", ["Path on the server", "Upload"], horizontal=True, key="project-data-src")
    pool_source = first["pool_source"]
    if dsrc == "Upload":
        up = st.file_uploader(f"Dataset ({uploads.extensions_text(uploads.DATASET)})",
                              type=uploads.widget_types(uploads.DATASET), key="project-data-upload",
                              max_upload_size=uploads.widget_limit_mb(uploads.DATASET))
        if up is not None:
            stored = attempt(uploads.store_upload, ws, page.session, uploads.DATASET, up.name, up,
                             what="Storing the dataset")
            pool_source = str(stored) if stored else ""
    else:
        pool_source = st.text_input("Dataset path (file or save_to_disk folder)", value=pool_source,
                                    key="project-data-path", placeholder="/data/texts.csv")
    eval_source = st.text_input("Separate evaluation dataset (optional)",
                                value=first["eval_source"],
                                key="project-eval-path",
                                help="Leave empty to evaluate on the same dataset (or another split of it).")

    if not pool_source:
        st.info("Give a dataset to continue.", icon=":material/info:")
        st.stop()
    info = attempt(peek, pool_source, None, what="Reading the dataset")
    if info is None:
        st.stop()
    columns = list(info.columns)
    splits = list(info.splits or ())
    chosen = data_form_choices(project, columns, splits)  # the saved project's, else well-known-name guesses
    pool_split = eval_split = None
    if splits:
        c1, c2 = st.columns(2)
        pool_split = c1.selectbox("Calibration pool split", splits, key="project-pool-split",
                                  index=splits.index(chosen["pool_split"]))
        eval_split = c2.selectbox("Evaluation split", splits, key="project-eval-split",
                                  index=splits.index(chosen["eval_split"]))
    c1, c2, c3 = st.columns(3)
    text_column = c1.selectbox("Text column", columns, key="project-text-col",
                               index=None if chosen["text_column"] is None else columns.index(chosen["text_column"]),
                               placeholder="Choose the column with the texts")
    label_options = [NO_COLUMN] + columns
    label_column = c2.selectbox("Label column", label_options, index=label_options.index(chosen["label_column"]),
                                key="project-label-col")
    pair_column = c3.selectbox("Second text column (pairs)", label_options,
                               index=label_options.index(chosen["pair_column"]), key="project-pair-col")
    h1, h2 = st.columns(2)  # data hygiene, as exported files come: DataSpec.drop_empty / .normalize
    drop_empty = h1.checkbox("Drop rows with an empty text or label (counted) instead of refusing the dataset",
                             value=first["drop_empty"], key="project-drop-empty")
    normalize = h2.selectbox("Texts", list(NORMALIZATIONS), index=list(NORMALIZATIONS).index(first["normalize"]),
                             key="project-normalize", format_func=NORMALIZATION_DESCRIPTIONS.get)
    max_length = st.number_input("Max length (tokens)", min_value=8, max_value=4096, step=8,
                                 value=first_max_length(project), key="project-maxlen")
    labels_text = st.text_input("Class names in logit order (comma separated; empty: taken from the data)",
                                value=first["labels"],
                                key="project-labels")
    r1, r2, r3 = st.columns(3)  # which outputs are scored; empty: detected when unambiguous
    logits_output = r1.text_input("Logits output (empty: detect)", value=project.logits_output, key="project-logits-out")
    embedding_output = r2.text_input("Embedding output (empty: detect)", value=project.embedding_output,
                                     key="project-embedding-out")
    pooling = r3.selectbox("Pool token states", list(POOLING_OPTIONS), key="project-pool",
                           index=list(POOLING_OPTIONS).index(chosen["pooling"]),
                           format_func=lambda p: POOLING_DESCRIPTIONS[p or "none"])
    if text_column is None:
        st.info(f"Which column holds the texts? None is called text, sentence, review or content "
                f"(columns: {', '.join(columns)}).", icon=":material/help:")
        st.stop()
    if st.button("Use this model and data", type="primary", key="project-apply"):
        candidate = custom_project(project, model=onnx_path, tokenizer=tokenizer_dir, pool_source=pool_source,
                                   pool_split=pool_split, eval_source=eval_source, eval_split=eval_split,
                                   text_column=text_column, label_column=label_column, pair_column=pair_column,
                                   max_length=max_length, labels_text=labels_text, logits_output=logits_output,
                                   embedding_output=embedding_output, pooling=pooling, drop_empty=drop_empty,
                                   normalize=normalize)
        try:
            candidate = checked_project(ws, candidate)
        except Exception as exc:  # noqa: BLE001 - shown below, project unchanged
            show_error(exc, "Checking the project")
        else:
            set_project(ws, page.session, candidate)
            st.success("Project saved: the other pages now use this model and data.", icon=":material/check_circle:")
            project = candidate
    if project.kind != "custom":
        st.stop()

# -- show ----------------------------------------------------------------------------------------
st.divider()
spec = attempt(model_spec, ws, project, what="Reading the model")
if spec is not None:
    show_model(spec)
st.subheader("Data")
for role, title in (("pool", "Calibration pool"), ("eval", "Evaluation set")):
    try:
        show_data(role, title)
    except Exception as exc:  # noqa: BLE001
        show_error(exc, f"Reading the {title.lower()}")
budget_editor(ws, page.session, project)
cluster_editor(ws, page.session, project)
if (leak := same_rows_warning(project)) is not None:
    st.warning(leak, icon=":material/warning:")
