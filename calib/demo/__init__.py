"""The offline demo: MiniLM-L6 classifiers for two real text tasks, built from pip-shipped assets.

``prepare_demo(DemoConfig(...))`` builds ``<workspace>/demo/<task>/`` for ``bbc-topic`` (BBC News,
5 topics, 256 tokens) and ``rt-sentiment`` (Rotten Tomatoes, fresh vs rotten, 128 tokens);
``load_demo_task(task, workspace)`` gives the task's :class:`~calib.model.ModelSpec` and the
:class:`~calib.data.DataSpec` of its ``train`` / ``calibration`` / ``eval`` splits.
Importing this package is cheap: datasets, scikit-learn and safetensors load only when preparing.
"""

from calib.demo.prepare import DemoConfig, DemoManifest, prepare_demo, prepare_demo_run
from calib.demo.tasks import (
    DEMO_TASKS,
    SPLITS,
    DemoTask,
    TaskRecipe,
    demo_task_dir,
    load_demo_task,
    read_card,
)

__all__ = [
    "DEMO_TASKS", "SPLITS", "DemoConfig", "DemoManifest", "DemoTask", "TaskRecipe",
    "demo_task_dir", "load_demo_task", "prepare_demo", "prepare_demo_run", "read_card",
]
