"""The library's shape, checked: the generic data loader knows no source by name (schemes register
themselves), and no module of ``calib/`` imports Streamlit or forms an import cycle at module level."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import datasets
from calib import data as calib_data
from calib.data import DataSpec, load_table, register_source_scheme, scheme_folder, source_schemes
from calib.errors import InputError

CALIB = Path(calib_data.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(CALIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Names of calib modules imported by ``path`` (a ``from calib.x import y`` of a submodule ``y`` counts as
    ``calib.x.y``, of a function as ``calib.x``); imports under ``if TYPE_CHECKING`` are left out."""
    tree = ast.parse(path.read_text())
    nodes = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))] if top_level_only else [
        n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif node.module and node.level == 0:
            names |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return names


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in CALIB.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = {t for t in _imports(path, top_level_only=top_level_only) if t in files}
        # a submodule imported as "from calib.pkg import sub" names calib.pkg too; keep the most specific
        graph[name] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)} - {name}
    return graph


def test_the_data_loader_does_not_know_the_demo():
    graph = _graph(top_level_only=False)
    assert not any(t == "calib.demo" or t.startswith("calib.demo.") for t in graph["calib.data"]), graph["calib.data"]
    assert "from calib.demo" not in (CALIB / "data.py").read_text()


def test_no_streamlit_and_no_module_level_import_cycle():
    for path in CALIB.rglob("*.py"):
        assert not any(n == "streamlit" or n.startswith("streamlit.") for n in _imports(path, top_level_only=False)), path
    graph = _graph(top_level_only=True)
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_a_registered_source_scheme_is_read_like_a_folder(tmp_path):
    folder = tmp_path / "shelf" / "reviews"
    datasets.DatasetDict({"eval": datasets.Dataset.from_dict({"text": ["good", "bad", "fine"],
                                                              "label": ["pos", "neg", "pos"]})}).save_to_disk(str(folder))

    def shelf(name: str, workspace: str | None) -> Path:
        path = Path(workspace or tmp_path) / "shelf" / name
        if not path.is_dir():
            raise InputError(f"shelf has no dataset {name!r}")
        return path

    register_source_scheme("shelf", shelf)
    assert "shelf" in source_schemes()
    table, report = load_table(DataSpec("shelf:reviews", split="eval", workspace=str(tmp_path)))
    assert table["text"] == ["good", "bad", "fine"]
    assert report.resolved == str(folder.resolve())
    with pytest.raises(InputError, match="shelf has no dataset 'nothing'"):
        load_table(DataSpec("shelf:nothing", split="eval", workspace=str(tmp_path)))
    # a path that exists is a path, whatever its name looks like; a drive letter is never a scheme
    assert scheme_folder(str(folder), None) is None and scheme_folder("C:/data/x.csv", None) is None
    with pytest.raises(ValueError):
        register_source_scheme("C", shelf)


def test_the_demo_scheme_comes_from_its_entry_point_without_importing_the_demo_first():
    code = ("import sys; from calib.data import scheme_folder; assert 'calib.demo' not in sys.modules; "
            "print(scheme_folder('demo:bbc-topic', sys.argv[1]))")
    with pytest.raises(subprocess.CalledProcessError) as excinfo:  # an empty workspace: the demo's own error
        subprocess.run([sys.executable, "-c", code, "/nonexistent-workspace"], check=True, capture_output=True,
                       text=True)
    assert "demo task bbc-topic is not prepared" in excinfo.value.stderr
    out = subprocess.run([sys.executable, "-c", "from calib.data import source_schemes; print(source_schemes())"],
                         check=True, capture_output=True, text=True).stdout
    assert "'demo'" in out


def test_every_stage_in_the_registry_keeps_the_stage_contract():
    import dataclasses
    import inspect

    from calib.stages import STAGES

    for stage in STAGES.values():
        entry, config, artifact = stage.entry_fn(), stage.config_type(), stage.artifact_type()
        params = list(inspect.signature(entry).parameters.values())
        assert params[0].name == "config" and "progress" in [p.name for p in params], stage
        assert dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen, stage
        if stage.run_folder:
            assert params[1].name == "out_dir" and params[2].kind is inspect.Parameter.KEYWORD_ONLY, stage
            assert callable(getattr(artifact, "load", None)) and callable(getattr(artifact, "summary", None)), stage


def test_every_stage_the_cli_and_the_app_run_is_registered():
    from calib.stages import STAGES

    used: set[str] = set()
    for path in [*CALIB.rglob("*.py"), *(CALIB.parent / "app").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "run_stage", "run_button", "pick_run", "submit", "open_picked_run"):
                used |= {a.value for a in node.args[1:2] if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    assert used and used <= set(STAGES), used - set(STAGES)


def test_only_the_resolver_the_cli_and_the_demo_itself_import_the_demo():
    graph = _graph(top_level_only=False)
    importers = {m for m, targets in graph.items() if any(t == "calib.demo" or t.startswith("calib.demo.")
                                                          for t in targets)}
    assert {m for m in importers if not m.startswith(("calib.demo", "calib.cli"))} == {"calib.inputs"}, importers


def test_app_lib_never_imports_a_page_and_calib_never_imports_the_app():
    """Pages lay out and call app/lib and calib; app/lib decides and calls calib (ARCHITECTURE.md, front ends)."""
    import ast

    app = CALIB.parent / "app"
    offenders = []
    for folder, forbidden in ((app / "lib", ("pages",)), (CALIB, ("lib", "pages", "app", "streamlit"))):
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(CALIB.parent)} imports {n}" for n in names
                              if n.split(".")[0] in forbidden]
    assert not offenders, offenders


def test_the_resolver_is_not_loaded_by_importing_a_stage():
    """calib.inputs loads the demo; the stages below it may call it only from inside a function."""
    graph = _graph(top_level_only=True)
    assert {m for m, targets in graph.items() if "calib.inputs" in targets and not m.startswith("calib.cli")} == set()


LAZY_PACKAGES = {  # imported inside the function that needs them, and why (ARCHITECTURE.md, "What each module may import")
    "ray": "optional", "tensorrt": "optional", "cuda": "optional", "fcntl": "POSIX only", "resource": "POSIX only",
    "datasets": "~1 s to import", "transformers": "~1 s", "scipy": "~1 s", "sklearn": "~1.4 s",
    "onnxruntime.quantization": "~0.8 s",
    "pyarrow": "only to preview an uploaded Parquet file",
}
LAZY_CALIB = {  # (module, imported calib module): a layer above, needed only inside one function
    ("calib.calibrators", "calib.methods"),  # forwards names that moved to calib.methods (module __getattr__)
}


def _function_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    out += [(node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    out.append((node.lineno, node.module or ""))
    return out


def test_imports_sit_at_module_top_except_the_listed_lazy_ones():
    """Outside the CLI (lazy for start-up time), a function-level import is an optional, platform-only or
    costly third-party package, or one of the few calib imports of a module a layer above."""
    odd = []
    for path in sorted(CALIB.rglob("*.py")):
        name = _module_name(path)
        if name.startswith("calib.cli"):
            continue
        for line, module in _function_imports(path):
            is_calib = module == "calib" or module.startswith("calib.")
            if is_calib and (name, module) in LAZY_CALIB or module == "calib" and name == "calib.calibrators":
                continue
            if not is_calib and any(module == p or module.startswith(p + ".") for p in LAZY_PACKAGES):
                continue
            odd.append(f"{name}:{line} imports {module}")
    assert not odd, "import these at module top (or list the reason in LAZY_*): " + "; ".join(odd)


def test_the_app_imports_at_module_top_except_the_listed_lazy_packages():
    """The app's pages and helpers import calib and each other at module top: the dependency order is
    visible, and only a listed costly or optional third-party package waits for the function needing it."""
    odd = []
    for path in sorted((CALIB.parent / "app").rglob("*.py")):
        for line, module in _function_imports(path):
            if not any(module == p or module.startswith(p + ".") for p in LAZY_PACKAGES):
                odd.append(f"{path.relative_to(CALIB.parent)}:{line} imports {module}")
    assert not odd, "import these at module top (or list the reason in LAZY_PACKAGES): " + "; ".join(odd)


def _layers() -> dict[str, int]:
    """Module (or package) name -> layer number, read from ARCHITECTURE.md's layer table (lower first)."""
    import re

    text = (CALIB.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text.split("## What each module may import", 1)[1].split("\n\n", 2)[1]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| layer")]
    return {m.rstrip("/"): i for i, row in enumerate(rows)
            for m in re.findall(r"`([a-z_]+/?)`", row.split("|")[2])}


def test_every_module_imports_only_its_own_layer_or_below():
    """The layer table in ARCHITECTURE.md is the rule: every calib module is in it, and its module-level
    calib imports reach only its own layer or one below."""
    layers = _layers()
    files = {_module_name(p): p for p in CALIB.rglob("*.py")}

    def layer_of(module: str) -> int | None:
        top = module.split(".")[1] if "." in module else None
        return layers.get(top) if top else None

    missing = sorted(m for m in files if m not in ("calib", "calib.__main__") and layer_of(m) is None)
    assert not missing, f"add these modules to ARCHITECTURE.md's layer table: {missing}"
    upward = []
    for name, path in files.items():
        if name in ("calib", "calib.__main__"):
            continue
        for target in _imports(path, top_level_only=True):
            if target in files and target != "calib" and layer_of(target) > layer_of(name):
                upward.append(f"{name} -> {target}")
    assert not upward, f"imports of a higher layer: {sorted(set(upward))}"


def test_every_stage_with_runs_names_them_and_says_how_they_went():
    """A stage added to calib/stages.py needs its run-name facts (calib.naming.RUN_FACTS) and its headline
    (calib.formatting.HEADLINES), one function each; nothing else keys on stage names to name a run."""
    from calib.formatting import HEADLINES
    from calib.naming import RUN_FACTS
    from calib.stages import STAGES

    with_runs = {name for name, stage in STAGES.items() if stage.run_folder}
    assert set(RUN_FACTS) == with_runs and set(HEADLINES) == with_runs
