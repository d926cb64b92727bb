"""Helpers shared by the subcommands: exit codes, workspace and run references, ``--json``
output, progress bar, tables."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from calib.errors import InputError
from calib.formatting import cell, clean, seconds, whole_numbers
from calib.workspace import LATEST, Workspace

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2
EXIT_BACKEND_UNAVAILABLE = 3
EXIT_INTERNAL_ERROR = 4
EXIT_INTERRUPTED = 130
EXIT_CODES = (
    (EXIT_OK, "success"),
    (EXIT_FAILED_CHECK, "a check failed: gate over budget, runs verify found a changed artifact, "
                        + "demo info found a task not prepared"),
    (EXIT_BAD_INPUT, "bad input or usage: unknown or ambiguous run, missing file, bad option (one line on stderr)"),
    (EXIT_BACKEND_UNAVAILABLE, "backend unavailable: no TensorRT or no GPU (build still writes the portable part)"),
    (EXIT_INTERNAL_ERROR, "internal error: a bug in calib (traceback on stderr; finished runs are kept)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C); finished runs are kept"),
)
"""Exit status of every ``calib`` command, with its meaning (shown in ``calib --help`` and the README)."""


POOLING_CHOICES = ("none", "mean", "cls")
NORMALIZATION_CHOICES = ("none", "html")  # calib.data.NORMALIZATIONS (calib.data imports datasets lazily; tested)  # calib.model.POOLINGS (calib.model imports onnx; tests/test_cli.py checks)


def add_role_args(group, *, logits: bool = True) -> None:
    """``--logits-output`` (with ``logits``), ``--embedding-output`` and ``--pooling`` (``--pool``): which model
    outputs are scored (``ModelRef.logits_output``, ``embedding_output``, ``pooling``)."""
    if logits:
        group.add_argument("--logits-output", metavar="NAME", help="model output holding the class logits (B, C)")
    group.add_argument("--embedding-output", metavar="NAME",
                       help="model output holding the sentence embedding (B, D), or token states (B, T, D) with "
                            "--pooling (default: detected)")
    group.add_argument("--pooling", "--pool", dest="pool", choices=POOLING_CHOICES, default=None,
                       help="pool (B, T, D) token states into one embedding per text with the attention mask")


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated whole numbers (``0,32,64``)."""
    try:
        return whole_numbers(text)
    except InputError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def str_list(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated names (``a,b,c``)."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def split_patterns(text: str) -> tuple[str, ...]:
    """Node patterns of one command-line value: comma-separated globs (``a,b``); a ``re:`` pattern runs to
    the end of the value, commas included (``a,re:x{1,2}`` is ``a`` and ``re:x{1,2}``), since regexes hold commas."""
    out: list[str] = []
    parts = text.split(",")
    for i, part in enumerate(parts):
        if part.strip().startswith("re:"):
            out.append(",".join(parts[i:]).strip())
            break
        if part.strip():
            out.append(part.strip())
    return tuple(out)


class _PatternsAction(argparse.Action):
    """Collects node patterns: the option's values (space-separated) each split by :func:`split_patterns`;
    a repeated option adds to the patterns before it."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = tuple(getattr(namespace, self.dest, None) or ())
        setattr(namespace, self.dest, given + tuple(p for v in values for p in split_patterns(v)))


def add_node_pattern_args(parser, *, exclude: str = "node names to keep in float",
                          include: str = "node names to restrict quantization to") -> None:
    """``--exclude`` and ``--include`` (``Placement.exclude_nodes`` / ``include_nodes``), one syntax in every
    command: globs or ``re:REGEX``, space- and/or comma-separated (``--exclude a b,c 're:x{1,2}'``); a tuple."""
    form = " (globs or re:REGEX, space- or comma-separated; a re: pattern keeps its commas)"
    parser.add_argument("--exclude", nargs="+", action=_PatternsAction, default=(), metavar="PATTERN",
                        help=exclude + form)
    parser.add_argument("--include", nargs="+", action=_PatternsAction, default=(), metavar="PATTERN",
                        help=include + form)


def add_placement_arg(parser, *aliases: str, help: str) -> None:
    """``--placement`` (and ``aliases``): a :data:`calib.placement.PRESETS` preset, by default ``Placement``'s."""
    # calib.placement (onnx) is loaded to build the parser anyway: calib build's choices need it
    from calib.placement import PRESETS, Placement

    parser.add_argument("--placement", *aliases, dest="placement", choices=PRESETS, default=Placement().preset,
                        help=help)


def add_ranges_args(parser, *, default_method: str, method_help: str, required: bool = True) -> None:
    """The range set, named the same way by every command: ``--calibration RUN`` (a calibrate run, its
    ``--method`` range set) or ``--ranges FILE`` (a ranges JSON file). ``--ranges`` also takes a calibrate
    run, as calib 0.1's sensitivity did. Read back with :func:`ranges_from_args`."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--calibration", metavar="RUN",
                       help="calibration run (id, unique prefix, latest, latest:LABEL or folder): ranges per method")
    group.add_argument("--ranges", metavar="FILE", help="a ranges JSON file {tensor: amax} (calib.ranges format)")
    parser.add_argument("--method", default=default_method, help=method_help)


def ranges_from_args(ws: Workspace, args: argparse.Namespace, parents: list[str] | None = None):
    """The :class:`~calib.calibrate.RangesRef` that :func:`add_ranges_args`' options name (None: neither
    given); a calibrate run it names joins ``parents``."""
    from calib.calibrate import RangesRef

    if args.calibration:
        return RangesRef(str(Path(run_folder(ws, args.calibration, "calibrate", parents)).resolve()), args.method)
    if args.ranges:
        file = Path(args.ranges)
        where = file if file.is_file() else run_folder(ws, args.ranges, "calibrate", parents)
        return RangesRef(str(Path(where).resolve()), args.method)
    return None


BUDGET_OFF = "none"
"""A release-budget option's value that leaves its criterion out (``--min-embedding-cosine none``)."""
BUDGET_FIELDS = ("max_drop", "min_agreement", "min_embedding_cosine")
"""The thresholds of a :class:`calib.verdict.ReleaseBudget` the budget options set, by option dest."""


def budget_value(text: str) -> float | str:
    """argparse type of a release-budget threshold: a number, or ``none`` (also ``off``) to leave the criterion
    out (:data:`BUDGET_OFF`)."""
    if text.strip().lower() in ("none", "off"):
        return BUDGET_OFF
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def add_budget_args(parser, *, defaults=None, use_ci: bool = True, context: str = "",
                    notes: Mapping[str, str] | None = None) -> None:
    """The release budget options, one declaration for ``validate --method``, ``sensitivity``, ``report`` and
    ``gate`` (read back with :func:`budget_from_args`): ``--max-drop``, ``--min-agreement`` and
    ``--min-embedding-cosine``, each a number or ``none`` (the criterion left out), and ``--use-ci``
    (when ``use_ci``). ``defaults``: a :class:`calib.verdict.ReleaseBudget` whose thresholds are the
    options' defaults (shown in their help); None: an option not given stays None, for
    :func:`budget_from_args` to decide. ``context`` starts every help text; ``notes`` (by dest) end them."""
    notes = notes or {}

    def text(dest: str, what: str) -> str:
        shown = ""
        if defaults is not None:
            value = getattr(defaults, dest)
            shown = f"; default {value:g}" if value is not None else "; default none"
        return f"{context}{what}{shown}{notes.get(dest, '')}; none: not checked"

    def default(dest: str):
        return None if defaults is None else getattr(defaults, dest)

    parser.add_argument("--max-drop", type=budget_value, default=default("max_drop"), metavar="POINTS",
                        help=text("max_drop", "largest allowed accuracy drop, FP32 − INT8, in points"))
    parser.add_argument("--min-agreement", type=budget_value, default=default("min_agreement"), metavar="RATIO",
                        help=text("min_agreement", "smallest allowed top-1 agreement with FP32 (0-1)"))
    parser.add_argument("--min-embedding-cosine", type=budget_value, default=default("min_embedding_cosine"),
                        metavar="COSINE", help=text("min_embedding_cosine",
                                                    "smallest allowed mean FP32-vs-INT8 embedding cosine"))
    if use_ci:
        parser.add_argument("--use-ci", action="store_true",
                            help=f"{context}the upper 95 %% bound of the drop must be within --max-drop too, "
                                 "not only the estimate")


def budget_from_args(args: argparse.Namespace, *, unset=None, optional: bool = False):
    """The :class:`calib.verdict.ReleaseBudget` the options of :func:`add_budget_args` give. A threshold
    whose option was not given takes ``unset``'s (a ReleaseBudget; None: the criterion is left out), one
    given as ``none`` is left out. ``optional``: None when no budget option is given at all (and no
    ``--use-ci``): the stage applies its own default budget."""
    given = {k: getattr(args, k, None) for k in BUDGET_FIELDS}
    use_ci = bool(getattr(args, "use_ci", False))
    if optional and all(v is None for v in given.values()) and not use_ci:
        return None
    from calib.verdict import ReleaseBudget

    values = {k: (None if unset is None else getattr(unset, k)) if v is None else None if v == BUDGET_OFF else v
              for k, v in given.items()}
    return ReleaseBudget(**values, use_ci=use_ci)


def add_input_args(parser, *, demo: str | None, model: str | None = "FP32 ONNX model", labels: bool = False,
                   data: str = "dataset: CSV/TSV/JSON/JSONL/Parquet file, save_to_disk folder, SCHEME:NAME "
                                "(demo:TASK) or hub id",
                   split: str = "split of a multi-split dataset", pairs: bool = True,
                   label_column: str | None = None, roles: bool = False, hygiene: bool = True) -> argparse._ArgumentGroup:
    """The "model and data" options, one declaration for every command that reads a model and texts
    (read back with :func:`inputs_from_args`): ``--demo`` (when ``demo`` gives its help), ``--model``,
    ``--tokenizer``, ``--labels``, ``--max-length``, ``--data``, ``--split``, ``--text-column``,
    ``--text-pair-column``, ``--label-column``, the output roles and the data hygiene options.
    Unset options stay None, so a demo task or a recipe fills them."""
    group = parser.add_argument_group("model and data")
    if demo:
        group.add_argument("--demo", metavar="TASK", help=demo)
    if model:
        group.add_argument("--model", help=model)
    group.add_argument("--tokenizer", help="tokenizer directory (tokenizer.json / vocab.txt)")
    if labels:
        group.add_argument("--labels", type=str_list, help="model classes in logit order, comma-separated")
    group.add_argument("--max-length", type=int, help="max sequence length in tokens (default: the demo task's, else 128)")
    group.add_argument("--data", help=data)
    group.add_argument("--split", help=split)
    group.add_argument("--text-column", help="column holding the texts (default: the demo task's, else text)")
    if pairs:
        group.add_argument("--text-pair-column", "--pair-column", dest="text_pair_column",
                           help="second text column, for sentence-pair models (--pair-column: the 0.1 name)")
    if label_column:
        group.add_argument("--label-column", help=label_column)
    if roles:
        add_role_args(group)
    if hygiene:
        add_hygiene_args(group)
    return group


def input_values(args: argparse.Namespace) -> tuple[dict, dict]:
    """The ModelRef and DataSpec fields the "model and data" options set (only those given; ``--label-column
    none`` is None, no labels)."""
    from calib.inputs import given

    model = given(model=getattr(args, "model", None), tokenizer=args.tokenizer, labels=getattr(args, "labels", None),
                  max_length=args.max_length)
    if hasattr(args, "pool"):
        model.update(role_values(args))
    data = given(source=args.data, text_column=args.text_column, text_pair_column=getattr(args, "text_pair_column", None))
    if hasattr(args, "drop_empty"):
        data.update(hygiene_values(args))
    label_column = getattr(args, "label_column", None)
    if label_column is not None:
        data["label_column"] = None if label_column.strip().lower() in ("", "none") else label_column
    return model, data


def inputs_from_args(args: argparse.Namespace, workspace, *, default_split: str,
                     need: tuple[str, ...] = ("model", "tokenizer", "source")):
    """(ModelRef, DataSpec) from ``--demo`` and/or the explicit options (:func:`calib.inputs.resolve_inputs`)."""
    from calib.inputs import resolve_inputs

    model, data = input_values(args)
    return resolve_inputs(workspace, demo=getattr(args, "demo", None), split=args.split, default_split=default_split,
                          model=model, data=data, need=need,
                          hint="or --demo TASK" if hasattr(args, "demo") else "")


def add_cluster_args(parser) -> None:
    """``--cluster``: where the stage's heavy passes run (:mod:`calib.cluster`; no flag: this process)."""
    group = parser.add_argument_group("scale-out (needs the calib[ray] extra)")
    group.add_argument("--cluster", metavar="SPEC", default=None,
                       help="local[:N] (start a local Ray runtime with N workers), ray://HOST:PORT or auto "
                            "(join a running cluster); default: this process only")


@contextlib.contextmanager
def cluster_of(args: argparse.Namespace) -> Iterator[str | None]:
    """The canonical ``--cluster`` spec, its cluster connected for the block: an unreachable
    cluster fails here in one line (exit 3), before any run is registered; the stage reuses it."""
    from calib.cluster import connect, parse_cluster

    spec = parse_cluster(getattr(args, "cluster", None))
    with connect(spec):
        yield spec


def add_hygiene_args(group) -> None:
    """``--drop-empty`` and ``--normalize``: what to do with empty rows and HTML-escaped texts."""
    group.add_argument("--drop-empty", action="store_true", default=None,
                       help="drop rows with an empty text or label (counted) instead of refusing the dataset")
    group.add_argument("--normalize", choices=NORMALIZATION_CHOICES, default=None,
                       help="html: unescape HTML entities and strip markup in the texts (default none)")


def hygiene_values(args: argparse.Namespace) -> dict:
    """The config fields ``drop_empty`` and ``normalize`` the hygiene options give (only those set)."""
    values = {"drop_empty": args.drop_empty, "normalize": args.normalize}
    return {k: v for k, v in values.items() if v is not None}


def role_values(args: argparse.Namespace) -> dict:
    """The config fields ``logits_output``, ``embedding_output``, ``pooling`` the role options give."""
    values = {"logits_output": getattr(args, "logits_output", None), "embedding_output": args.embedding_output,
              "pooling": args.pool}
    return {k: v for k, v in values.items() if v is not None}


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (seeds, resample counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def workspace_of(args: argparse.Namespace, *, read_only: bool | None = False) -> Workspace:
    """The ``--workspace`` (``read_only=None``: read-only when it cannot be written, for inspection);
    ``--trust-changed`` (where the command has it) lets stages use changed upstream artifacts."""
    return Workspace(args.workspace, read_only=read_only, trust_changed=bool(getattr(args, "trust_changed", False)))


def run_folder(ws: Workspace, ref: str, stage: str, parents: list[str] | None = None) -> Path:
    """The folder a run reference names: a path, a run id, a unique id prefix, ``latest`` or
    ``latest:LABEL`` (see :meth:`Workspace.find_run_id`). When ``ref`` named a registered run, its
    full id is appended to ``parents`` (the new run's lineage)."""
    folder = ws.resolve_run(ref, stage)
    names_run = ref.partition(":")[0] == LATEST or not Path(ref).exists()
    if parents is not None and names_run:
        parents.append(folder.name)
    return folder


def json_arg(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` flag every stage command has."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (run id, folder, artifact paths, headline "
                             "numbers) instead of the text summary; progress stays on stderr")


def print_run_json(ws: Workspace, run_id: str, outputs: Mapping[str, Any] | None = None,
                   **extra: Any) -> None:
    """The machine-readable result of a stage command: ``{"run", "stage", "label", "dir", "outputs",
    "artifacts", "summary", ...extra}`` with absolute paths and noise-free numbers, on stdout."""
    run = ws.get_run(run_id)
    payload = {
        "run": run.id, "stage": run.stage, "label": run.label, "status": run.status,
        "dir": str(run.dir.resolve()), "parents": run.parents,
        "outputs": {k: str(Path(v).resolve()) for k, v in (outputs or {}).items() if v is not None},
        "artifacts": [str((run.dir / a.path).resolve()) for a in run.artifacts],
        "summary": run.summary, **extra,
    }
    emit_json(payload)


_json_stream: list[TextIO] = []  # the real stdout while a --json command runs (see json_stdout)


@contextlib.contextmanager
def json_stdout() -> Iterator[None]:
    """While a ``--json`` command runs, anything else written to stdout (a library's stray print)
    goes to stderr, so stdout carries exactly the one JSON object :func:`emit_json` writes."""
    _json_stream.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stream.pop()


def emit_json(payload: Any) -> None:
    """Write ``payload`` (floats cleaned of noise) as the command's one JSON object on stdout."""
    stream = _json_stream[-1] if _json_stream else sys.stdout
    print(json.dumps(clean(payload), indent=2), file=stream, flush=True)


class ProgressBar:
    """A text progress bar on stderr; a :data:`~calib.workspace.ProgressFn`.

    The phase of a message is its part before the first colon (``"INT8 pass (2/3): 64/256 texts"``),
    numbers aside (``"evaluation 3/24: ..."`` and ``"evaluation 4/24: ..."`` are one phase).
    On a terminal the bar redraws one line, and a new phase starts a new line so the finished pass
    stays on screen. In a log (stderr not a terminal) it writes a line when the phase changes, at
    every 10 %, and otherwise at least every :attr:`heartbeat` seconds while the stage reports. When
    the stage has not reported for :attr:`quiet` seconds (one long step), a watchdog thread repeats
    the last state with how long ago it came, so the bar is never silent. An ETA shows once the
    estimate means something. :func:`close_progress_bars` (called when a command ends) stops watchdogs.
    """

    heartbeat = 15.0  # seconds between log lines while reports keep coming
    quiet = 30.0  # seconds without a report before the watchdog speaks

    def __init__(self, title: str, width: int = 30, *, stream=None) -> None:
        self.title, self.width = title, width
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self.tty = self.stream.isatty()
        self._last_pct = -1
        self._last_line = -float("inf")
        self._last_report = self.start
        self._last: tuple[float, str] = (0.0, "")
        self._phase: str | None = None
        self._open_line = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def __call__(self, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        fraction = min(max(float(fraction), 0.0), 1.0)
        pct = int(fraction * 100)
        phase = _DIGITS.sub("#", message.partition(":")[0]) if ":" in message else ""  # "evaluation #/#"
        with self._lock:
            new_phase = self._phase is not None and phase != self._phase
            due = (new_phase or self._phase is None or pct // 10 != self._last_pct // 10 or fraction >= 1
                   or now - self._last_line >= self.heartbeat)
            self._phase, self._last, self._last_report = phase, (fraction, message), now
            if self.tty or due:
                self._draw(now, fraction, message, new_phase)
        if fraction >= 1:
            self.close()
        elif self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name=f"progress-{self.title}", daemon=True)
            _OPEN_BARS.append(self)
            self._watchdog.start()

    def _draw(self, now: float, fraction: float, message: str, new_phase: bool = False) -> None:
        pct = int(fraction * 100)
        self._last_pct, self._last_line = pct, now
        elapsed = now - self.start
        eta = ""
        if 0.05 <= fraction < 1 and elapsed >= 3:
            eta = f" ETA {seconds(elapsed * (1 - fraction) / fraction)}"
        filled = int(self.width * fraction)
        line = (f"{self.title} [{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}% "
                f"{seconds(elapsed):>9}{eta}  {message}")[:200]
        if not self.tty:
            print(line, file=self.stream, flush=True)
            return
        if new_phase and self._open_line:
            self.stream.write("\n")  # keep the finished phase's last line on screen
        self.stream.write("\r" + line.ljust(100) + ("\n" if fraction >= 1 else ""))
        self.stream.flush()
        self._open_line = fraction < 1

    def _watch(self) -> None:
        while not self._stop.wait(min(self.quiet, 5.0)):
            with self._lock:
                now = time.monotonic()
                if now - self._last_report >= self.quiet and now - self._last_line >= self.quiet:
                    fraction, message = self._last
                    self._draw(now, fraction, f"{message} (still working; last update {seconds(now - self._last_report)} ago)")

    def close(self) -> None:
        """Stop the watchdog (idempotent)."""
        self._stop.set()
        if self in _OPEN_BARS:
            _OPEN_BARS.remove(self)
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=1.0)


_OPEN_BARS: list[ProgressBar] = []


def close_progress_bars() -> None:
    """Stop every progress bar's watchdog: the command has ended (finished, failed or interrupted)."""
    while _OPEN_BARS:
        _OPEN_BARS[-1].close()  # removes itself


_DIGITS = re.compile(r"\d+")
_NUMERIC_TEXT = re.compile(r"[+-]?(\d[\d,]*(\.\d+)?(e[+-]?\d+)?|inf|nan)( ?(%|pts|×|ms|s|KB|MB|GB|TB|B))?|–")


def _right_aligned(raw: object, text: str) -> bool:
    """Numbers and already-formatted figures ('+0.39 pts', '97.25 %', '–') align right."""
    return isinstance(raw, (int, float)) or bool(_NUMERIC_TEXT.fullmatch(text))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table; numbers are written by :func:`calib.formatting.cell` and right-aligned."""
    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    for row, raw in zip(text, rows):
        out.append("  ".join(c.rjust(w) if _right_aligned(v, c) else c.ljust(w)
                             for c, w, v in zip(row, widths, raw)))
    return "\n".join(out)
