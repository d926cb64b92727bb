"""Sensitivity analysis and accuracy-driven fallback: which quantized nodes should stay in float.

``analyze_sensitivity(SensitivityConfig, out_dir)``:

1. Runs the FP32 model once on a subset of the evaluation texts and keeps its logits/embeddings.
2. Quantizes the model with the given ranges and placement (ONNX Runtime's Q/DQ quantizer through
   :func:`calib.quantize.quantize_qdq`) and evaluates it against those FP32 outputs.
3. Ranks the quantized units (nodes, or transformer blocks: nodes grouped by their layer prefix):
   - ``local``: one instrumented run; each node scores the worst local quantization noise of the
     Q/DQ pairs on its inputs/outputs (noise-to-signal of DequantizeLinear vs its QuantizeLinear
     input; an infinite or non-finite range counts as the worst). No extra evaluations.
   - ``exclude-one``: evaluate the full set minus each unit; score = KL reduction.
   - ``quantize-one``: evaluate each unit quantized alone; score = KL it causes.
4. Searches the fewest top-ranked units to keep in float so that the accuracy drop is within
   ``max_drop`` points AND top-1 agreement ≥ ``min_agreement`` (AND embedding cosine ≥
   ``min_embedding_cosine`` when set): a doubling search over the ranked prefix, a bisection, then a
   pruning pass that puts back units the budget does not need. Every evaluation is counted and the
   total never exceeds ``max_evaluations``.

The result, ``sensitivity.json``, lists the ranking, every evaluation, and the recommended
exclusions (exact node names, usable as ``Placement.exclude_nodes`` by the build stage).
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from calib.engines.ort import OrtEngine, OrtSessionLoader
from calib.errors import InputError
from calib.io import atomic_write_json, read_json
from calib.model import load_model
from calib.placement import Placement
from calib.workspace import ProgressFn

SCHEMA = "calib.sensitivity/1"
GRANULARITIES = ("node", "block")
RANKINGS = ("auto", "local", "exclude-one", "quantize-one")
_BLOCK_RX = re.compile(r"(?:^|[/._])((?:layers?|blocks?|h|encoder_layer)[._/]?\d+)(?=$|[/._])")


@dataclass(frozen=True)
class SensitivityConfig:
    """Model, ranges, placement, evaluation subset and the budget.

    ``ranges``: a calibration folder (with ``method``) or a JSON file ``{tensor: amax}`` (or
    ``{"amax": {...}}``). ``limit``: evaluation texts used for every candidate (seeded sample).
    """

    model: str
    tokenizer: str
    data: str
    ranges: str
    method: str = "entropy"
    text_column: str = "text"
    label_column: str | None = "label"
    text_pair_column: str | None = None
    split: str | None = None
    workspace: str | None = None
    labels: tuple[str, ...] = ()
    max_length: int = 128
    preset: str = "tensorrt"
    include_nodes: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    include_op_types: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    granularity: str = "node"
    ranking: str = "auto"  # auto: exclude-one when the units fit the budget of evaluations, else local
    max_drop: float = 0.5  # accuracy points
    min_agreement: float = 0.99
    min_embedding_cosine: float | None = None
    max_evaluations: int = 24
    limit: int = 256
    local_rows: int = 32  # texts for the instrumented run of the local ranking
    batch_size: int = 16
    seed: int = 0
    threads: int | None = None

    @property
    def placement(self) -> Placement:
        return Placement(self.preset, tuple(self.include_nodes), tuple(self.exclude_nodes),
                         tuple(self.include_op_types), tuple(self.exclude_op_types))


def load_amax(ranges: str | Path, method: str) -> dict[str, float]:
    """Per-tensor amax from a calibration folder (``method``) or a JSON file."""
    path = Path(ranges)
    if path.is_dir():
        from calib.calibrate import Calibration

        return {k: float(v) for k, v in Calibration.load(path).ranges(method).amax.items()}
    if path.is_file() and path.suffix.lower() == ".json":
        data = read_json(path)
        amax = data.get("amax", data) if isinstance(data, dict) else None
        if not isinstance(amax, dict) or not amax:
            raise InputError(f"ranges file {path} holds no {{tensor: amax}} mapping")
        try:
            return {str(k): float(v) if v is not None else float("nan") for k, v in amax.items()}
        except (TypeError, ValueError) as exc:
            raise InputError(f"ranges file {path}: amax values must be numbers ({exc})") from exc
    raise InputError(f"ranges {path} is neither a calibration folder nor a .json file of amax values")


def block_of(node_name: str) -> str:
    """Transformer block of a node: ``layer.3`` for ``/encoder/layer.3/attention/...``; else the
    first path component (``embeddings``, ``pooler``, ``classifier``) or the name itself."""
    match = _BLOCK_RX.search(node_name)
    if match:
        return match.group(1)
    parts = [p for p in re.split(r"[/]", node_name) if p]
    if len(parts) > 1:
        return parts[0]
    head = re.split(r"[._]", node_name)[0]
    return head or node_name


def exact_pattern(name: str) -> str:
    """A Placement pattern matching exactly ``name`` (glob metacharacters escaped)."""
    if any(ch in name for ch in "*?[]") or name.startswith("re:"):
        return "re:^" + re.escape(name) + "$"
    return name


@dataclass(frozen=True)
class Unit:
    name: str
    nodes: tuple[str, ...]


class _Evaluator:
    """Quantize with some units kept in float and compare with the cached FP32 outputs."""

    def __init__(self, config: SensitivityConfig, spec, amax: Mapping[str, float], data, fp32: dict,
                 workdir: Path, max_evaluations: int, progress: ProgressFn) -> None:
        self.config, self.spec, self.amax, self.data, self.fp32 = config, spec, dict(amax), data, fp32
        self.workdir, self.max_evaluations, self.progress = workdir, max_evaluations, progress
        self.cache: dict[tuple, dict] = {}
        self.log: list[dict] = []
        self.last_qdq: Path | None = None

    @property
    def used(self) -> int:
        return len(self.log)

    @property
    def left(self) -> int:
        return self.max_evaluations - self.used

    def __call__(self, excluded: Sequence[str], *, only: Sequence[str] | None = None, why: str) -> dict | None:
        """Metrics with ``excluded`` nodes in float (or, with ``only``, only those nodes quantized).

        Returns None when the evaluation budget is used up. Repeated requests are free."""
        from calib.quantize import quantize_qdq
        from calib.validate import compare_engines, run_outputs

        key = (tuple(sorted(excluded)), None if only is None else tuple(sorted(only)))
        if key in self.cache:
            return self.cache[key]
        if self.left <= 0:
            return None
        placement = self.config.placement
        if only is not None:
            placement = dataclasses.replace(placement, include_nodes=tuple(exact_pattern(n) for n in only))
        placement = placement.with_exclusions(exact_pattern(n) for n in excluded)
        path = self.workdir / f"candidate_{self.used}.onnx"
        t0 = time.monotonic()
        result = quantize_qdq(self.spec.onnx_path, self.amax, placement, path)
        engine = OrtEngine(OrtSessionLoader(path, threads=self.config.threads), name="onnxruntime-int8")
        int8 = run_outputs(engine, self.data.encoded, self.spec.input_dtypes, list(self.fp32),
                           batch_size=self.config.batch_size)
        metrics = compare_engines(self.fp32, int8, self.spec.logits_output, self.data.labels,
                                  self.data.encoded.full_lengths, self.fp32[self.spec.logits_output].shape[1],
                                  edges=(0, 1 << 30), n_resamples=0, seed=self.config.seed)["overall"]
        entry = {
            "evaluation": self.used + 1, "why": why, "excluded": list(key[0]), "only": None if only is None else list(only),
            "quantized_nodes": len(result.quantized_nodes), "seconds": round(time.monotonic() - t0, 2),
            **headline(metrics),
        }
        entry["passes"] = passes(entry, self.config)
        self.log.append(entry)
        self.cache[key] = entry
        if self.last_qdq is not None and self.last_qdq != path:
            self.last_qdq.unlink(missing_ok=True)
        self.last_qdq = path
        self.progress(0.1 + 0.85 * self.used / self.max_evaluations, f"evaluation {self.used}/{self.max_evaluations}: {why}")
        self.quantize_result = result
        return entry


def headline(overall: Mapping) -> dict:
    """The numbers the budget is checked on, from an ``overall`` metrics block."""
    out = {"top1_agreement": overall["agreement"]["top1_agreement"], "kl_softmax": overall["agreement"]["kl_softmax"],
           "accuracy_drop_points": overall.get("accuracy_drop_points")}
    if "fp32" in overall:
        out["accuracy_fp32"], out["accuracy_int8"] = overall["fp32"]["accuracy"], overall["int8"]["accuracy"]
    if "embedding_cosine" in overall:
        out["embedding_cosine"] = overall["embedding_cosine"]["mean"]
    return out


def passes(entry: Mapping, config: SensitivityConfig) -> bool:
    drop = entry.get("accuracy_drop_points")
    if drop is not None and drop > config.max_drop + 1e-9:
        return False
    if entry["top1_agreement"] < config.min_agreement - 1e-12:
        return False
    cos = entry.get("embedding_cosine")
    return not (config.min_embedding_cosine is not None and cos is not None and cos < config.min_embedding_cosine)


def make_units(nodes: Sequence[str], granularity: str) -> list[Unit]:
    if granularity == "node":
        return [Unit(n, (n,)) for n in nodes]
    groups: dict[str, list[str]] = {}
    for n in nodes:
        groups.setdefault(block_of(n), []).append(n)
    return [Unit(k, tuple(v)) for k, v in groups.items()]


def local_scores(model_path: Path, qdq_path: Path, quantized_nodes: Sequence[str], encoded, input_dtypes,
                 batch_size: int, threads: int | None) -> dict[str, float]:
    """Per quantized node: the worst local noise-to-signal ratio of the Q/DQ pairs around it.

    Non-finite ranges (e.g. a ``-inf`` attention mask) score infinity; nodes left out of the Q/DQ
    graph for lack of a usable range are not scored (they are already in float)."""
    from calib.batching import iter_batches
    from calib.layers import LayerAnalysis, producer_order, quantized_tensors

    ref = onnx.load(str(model_path))
    qdq = onnx.load(str(qdq_path))
    tensors = quantized_tensors(qdq, ref)
    analysis = LayerAnalysis({}, tensors, producer_order(ref))
    int8 = OrtEngine(OrtSessionLoader(qdq_path, intermediates=analysis.int8_names, threads=threads))
    for batch in iter_batches(encoded, input_dtypes, batch_size):
        values = int8.run(batch.feeds, list(analysis.int8_names))
        analysis.add(values, values, batch.mask)  # FP32 side unused here: only the local pairs matter
    quantized = set(quantized_nodes)
    scores = {n: 0.0 for n in quantized_nodes}
    for t in tensors:
        local = analysis.local[t.name]
        if local.nonfinite or not np.isfinite(t.amax) or t.amax <= 0:
            nsr = float("inf")
        elif local.sx2 > 0:
            nsr = local.se2 / local.sx2
        else:
            nsr = 0.0
        for node in (t.producer, *t.consumers):
            if node in quantized:
                scores[node] = max(scores[node], nsr)
    return scores


def _prefix_nodes(units: Sequence[Unit], k: int) -> list[str]:
    return [n for u in units[:k] for n in u.nodes]


@dataclass(frozen=True)
class SensitivityResult:
    """Saved sensitivity analysis (``sensitivity.json``)."""

    dir: Path
    data: dict

    @classmethod
    def load(cls, directory: str | Path) -> SensitivityResult:
        directory = Path(directory)
        path = directory / "sensitivity.json"
        if not path.is_file():
            raise InputError(f"{directory} holds no sensitivity.json; give a sensitivity run folder")
        data = read_json(path)
        if data.get("schema") != SCHEMA:
            raise InputError(f"{path} has schema {data.get('schema')!r}, expected {SCHEMA!r}")
        return cls(directory, data)

    @property
    def exclusions(self) -> tuple[str, ...]:
        """Node names to keep in float (exact names; use as ``Placement.exclude_nodes``)."""
        return tuple(self.data["recommended"]["exclude_nodes"])

    @property
    def found(self) -> bool:
        return bool(self.data["recommended"]["passes"])

    def placement(self) -> Placement:
        p = self.data["placement"]
        base = Placement(p["preset"], tuple(p["include_nodes"]), tuple(p["exclude_nodes"]),
                         tuple(p["include_op_types"]), tuple(p["exclude_op_types"]))
        return base.with_exclusions(exact_pattern(n) for n in self.exclusions)

    def summary(self) -> dict:
        rec = self.data["recommended"]
        return {"passes": rec["passes"], "exclusions": len(rec["exclude_nodes"]),
                "evaluations": self.data["evaluations_used"], "max_evaluations": self.data["budget"]["max_evaluations"],
                "top1_agreement": rec.get("top1_agreement"), "accuracy_drop_points": rec.get("accuracy_drop_points"),
                "baseline_top1_agreement": self.data["baseline"].get("top1_agreement")}


def analyze_sensitivity(config: SensitivityConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> SensitivityResult:
    """Rank quantized units by the loss they cause and find the fewest to keep in float (see module doc)."""
    from calib.validate import EMBEDDING_OUTPUT, ValidateConfig, load_eval_data, logits_width, run_outputs

    t0 = time.monotonic()
    report = progress or (lambda f, m="": None)
    if config.granularity not in GRANULARITIES:
        raise InputError(f"unknown granularity {config.granularity!r} (choose from {', '.join(GRANULARITIES)})")
    if config.ranking not in RANKINGS:
        raise InputError(f"unknown ranking {config.ranking!r} (choose from {', '.join(RANKINGS)})")
    if config.max_evaluations < 2:
        raise InputError(f"max evaluations must be at least 2 (baseline + one candidate), got {config.max_evaluations}")
    if not 0 <= config.min_agreement <= 1 or config.max_drop < 0:
        raise InputError("the budget needs max drop >= 0 points and 0 <= min agreement <= 1")
    spec = load_model(config.model, config.tokenizer, max_length=config.max_length, labels=config.labels)
    amax = load_amax(config.ranges, config.method)
    vconfig = ValidateConfig(engine="", model=config.model, tokenizer=config.tokenizer, data=config.data,
                             text_column=config.text_column, label_column=config.label_column,
                             text_pair_column=config.text_pair_column, split=config.split,
                             workspace=config.workspace, labels=config.labels, max_length=config.max_length,
                             limit=config.limit, seed=config.seed)
    data = load_eval_data(vconfig, spec, logits_width(spec))
    outputs = [spec.logits_output] + ([EMBEDDING_OUTPUT] if EMBEDDING_OUTPUT in spec.output_names else [])
    fp32_engine = OrtEngine(OrtSessionLoader(spec.onnx_path, threads=config.threads))
    fp32 = run_outputs(fp32_engine, data.encoded, spec.input_dtypes, outputs, batch_size=config.batch_size,
                       progress=report, start=0.0, span=0.08)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".candidates-") as tmp:
        evaluate = _Evaluator(config, spec, amax, data, fp32, Path(tmp), config.max_evaluations, report)
        baseline = evaluate([], why="full placement")
        base_nodes = list(evaluate.quantize_result.quantized_nodes)
        base_qdq = evaluate.last_qdq
        units = make_units(base_nodes, config.granularity)
        ranking_kind = config.ranking
        if ranking_kind == "auto":
            ranking_kind = "exclude-one" if len(units) <= config.max_evaluations // 2 else "local"
        scores: dict[str, float] = {}
        local = None
        if not baseline["passes"] and units:
            if ranking_kind == "local":
                enc = data.encoded
                if config.local_rows and config.local_rows < len(enc):
                    enc = enc.subset(np.random.default_rng(config.seed).choice(len(enc), config.local_rows, replace=False))
                report(0.1, "ranking nodes by local quantization noise")
                local = local_scores(spec.onnx_path, base_qdq, base_nodes, enc, spec.input_dtypes,
                                     config.batch_size, config.threads)
                scores = {u.name: max(local.get(n, 0.0) for n in u.nodes) for u in units}
            else:
                if len(units) > evaluate.left - 1:
                    raise InputError(
                        f"{ranking_kind} ranking needs {len(units)} evaluations but only {evaluate.left - 1} are left "
                        f"within max evaluations {config.max_evaluations}; use --ranking local or --granularity block")
                for u in units:
                    if ranking_kind == "exclude-one":
                        e = evaluate(list(u.nodes), why=f"exclude {u.name}")
                        scores[u.name] = baseline["kl_softmax"] - e["kl_softmax"]
                    else:
                        e = evaluate([], only=list(u.nodes), why=f"quantize only {u.name}")
                        scores[u.name] = e["kl_softmax"]
        # units that help most first; the search extends into the rest only when the top ones do not suffice
        ranked = sorted(units, key=lambda u: -scores.get(u.name, 0.0)) if scores else list(units)
        chosen: list[Unit] = []
        best = baseline
        reachable = baseline["passes"]
        if not baseline["passes"] and ranked:
            report(0.5, "searching the fewest exclusions")
            chosen, best, reachable = _search(evaluate, ranked)
        if evaluate.last_qdq is not None:
            evaluate.last_qdq.unlink(missing_ok=True)
    nodes_out = _prefix_nodes(chosen, len(chosen))
    data_out = {
        "schema": SCHEMA,
        "model": {"path": str(spec.onnx_path), "sha256": spec.sha256},
        "ranges": {"source": str(config.ranges), "method": config.method if Path(config.ranges).is_dir() else "file"},
        "placement": dataclasses.asdict(config.placement),
        "dataset": data.info,
        "budget": {"max_drop": config.max_drop, "min_agreement": config.min_agreement,
                   "min_embedding_cosine": config.min_embedding_cosine, "max_evaluations": config.max_evaluations},
        "granularity": config.granularity,
        "ranking_method": ranking_kind if not baseline["passes"] else "none (baseline within budget)",
        "baseline": baseline,
        "quantized_nodes": base_nodes,
        "ranking": [{"unit": u.name, "nodes": list(u.nodes), "score": scores.get(u.name)} for u in ranked],
        "evaluations": evaluate.log,
        "evaluations_used": evaluate.used,
        "recommended": {**{k: v for k, v in best.items() if k not in ("excluded", "only", "why", "evaluation")},
                        "units": [u.name for u in chosen], "exclude_nodes": nodes_out, "passes": bool(reachable),
                        "note": _note(baseline, best, reachable, nodes_out, evaluate)},
        "seconds": round(time.monotonic() - t0, 2),
    }
    atomic_write_json(out_dir / "sensitivity.json", data_out)
    report(1.0, "done")
    return SensitivityResult.load(out_dir)


def _note(baseline: dict, best: dict, reachable: bool, nodes: list[str], evaluate: _Evaluator) -> str:
    if baseline["passes"]:
        return "the full placement is already within budget: no exclusions needed"
    if reachable:
        return (f"keeping {len(nodes)} node(s) in float brings the build within budget "
                f"({evaluate.used} of {evaluate.max_evaluations} evaluations)")
    return (f"no exclusion set within budget was found in {evaluate.used} evaluations; the best one tried is "
            "recommended; raise --max-evaluations, the budget, or change the placement")


def _search(evaluate: _Evaluator, ranked: Sequence[Unit]) -> tuple[list[Unit], dict, bool]:
    """Fewest top-ranked units whose exclusion passes, then prune; bounded by the evaluator's budget."""
    n = len(ranked)
    best_fail: dict | None = None
    low, high, high_entry = 0, None, None  # prefix `low` known to fail; `high` known to pass
    k = 1
    while k <= n:  # doubling: 1, 2, 4, ... then all
        e = evaluate(_prefix_nodes(ranked, k), why=f"keep top {k} ranked unit(s) in float")
        if e is None:
            break
        if e["passes"]:
            high, high_entry = k, e
            break
        best_fail = _better(best_fail, e)
        low = k
        if k == n:
            break
        k = min(2 * k, n)
    if high is None:
        return (list(ranked[:low]) if best_fail else []), (best_fail or evaluate.cache[((), None)]), False
    while high - low > 1:  # bisection between a failing and a passing prefix
        mid = (low + high) // 2
        e = evaluate(_prefix_nodes(ranked, mid), why=f"keep top {mid} ranked unit(s) in float")
        if e is None:
            break
        if e["passes"]:
            high, high_entry = mid, e
        else:
            low = mid
    chosen = list(ranked[:high])
    for unit in reversed(list(ranked[:high])):  # put back units the budget does not need
        if len(chosen) <= 1 or evaluate.left <= 0:
            break
        trial = [u for u in chosen if u is not unit]
        e = evaluate([x for u in trial for x in u.nodes], why=f"put {unit.name} back in INT8")
        if e is not None and e["passes"]:
            chosen, high_entry = trial, e
    return chosen, high_entry, True


def _better(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return b if (b["top1_agreement"], -b["kl_softmax"]) > (a["top1_agreement"], -a["kl_softmax"]) else a

