"""A Q/DQ model run as a chain of transformer-block segments, with activations cached at the cuts.

The sensitivity search evaluates many candidates of one Q/DQ model that differ only in which
quantized nodes are left in float (:func:`calib.quantize.keep_in_float`). A candidate that changes
nothing before block ``k`` computes exactly the same activations as an earlier candidate up to the
start of block ``k``: :class:`SegmentRunner` cuts the graph at the first node of every transformer
block, keeps the tensors that cross each cut (the hidden state, the attention mask and whatever else
later blocks read) per batch in a byte-bounded LRU cache keyed by the float/INT8 choice of every
earlier segment, and re-runs only the segments from the first one that differs.

Segments: the nodes of a topologically ordered graph are numbered in that order and cut where a new
block (``layer.3``, ``blocks.7``, ``h.2`` ...) first appears, so every edge goes from a segment to the
same or a later one. Q/DQ nodes the quantizer added belong to the segment of the node that reads
them, so a segment's float/INT8 choice never leaks into the tensors crossing a cut. Graphs with
sub-graphs (If/Loop) or fewer than two blocks are not split (:class:`SegmentationError`).
"""

from __future__ import annotations

import heapq
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

BLOCK_RX = re.compile(r"(?:^|[/._])((?:layers?|blocks?|h|encoder_layer)[._/]?\d+)(?=$|[/._])")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class SegmentationError(ValueError):
    """The graph cannot be cut into block segments (callers then run whole models)."""


def layer_block(node_name: str) -> str | None:
    """The transformer block a node belongs to (``layer.3`` for ``/encoder/layer.3/attention/...``), or None."""
    match = BLOCK_RX.search(node_name)
    return match.group(1) if match else None


def _topological(nodes: Sequence[onnx.NodeProto], available: set[str]) -> list[int]:
    """Indices of ``nodes`` in a topological order (stable: keeps the given order where it can)."""
    available = set(available) | {""}
    consumers: dict[str, list[int]] = {}
    missing = []
    for i, node in enumerate(nodes):
        need = {x for x in node.input if x not in available}
        missing.append(len(need))
        for x in need:
            consumers.setdefault(x, []).append(i)

    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for out in nodes[i].output:
            for j in consumers.pop(out, ()):
                missing[j] -= 1
                if missing[j] == 0:
                    heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise SegmentationError("the graph has a cycle or reads a tensor nobody produces")
    return order


@dataclass(frozen=True)
class Segment:
    """One segment of the graph: its nodes and the tensors crossing its ends."""

    name: str  # the block it starts (the first segment: "(start)")
    nodes: tuple[int, ...]  # indices into the model's node list
    inputs: tuple[str, ...]  # tensors it reads that earlier segments produce
    graph_inputs: tuple[str, ...]  # model inputs it reads
    outputs: tuple[str, ...]  # tensors it produces that later segments or the model's outputs need
    carried: tuple[str, ...]  # tensors from earlier segments still needed after it (passed through)


def block_cuts(reference: onnx.ModelProto, block: Callable[[str], str | None] = layer_block) -> tuple[dict[str, int], list[str]]:
    """Segment of every computing node of ``reference`` (the FP32 model), and the segment names.

    Nodes are numbered in topological order and a new segment starts where a new block first
    appears; nodes without inputs (constants) are left out: they join their reader's segment."""
    graph = reference.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise SegmentationError("the graph has sub-graphs (If/Loop/Scan)")
    nodes = list(graph.node)
    inits = {t.name for t in graph.initializer}
    order = _topological(nodes, {i.name for i in graph.input} | inits)
    seg: dict[str, int] = {}
    names: list[str] = ["(start)"]
    seen: set[str] = set()
    for i in order:
        node = nodes[i]
        if not any(node.input):
            continue
        b = block(node.name)
        if b is not None and b not in seen:
            seen.add(b)
            if seg:
                names.append(b)
            else:
                names[0] = b
        seg[node.name] = len(names) - 1
    if len(seen) < 2:
        raise SegmentationError("fewer than two transformer blocks found in the node names")
    return seg, names


def plan_segments(model: onnx.ModelProto, reference: onnx.ModelProto | None = None,
                  block: Callable[[str], str | None] = layer_block) -> list[Segment]:
    """Cut ``model`` (the FP32 model or its Q/DQ copy) into block segments; see the module docstring.

    ``reference``: the FP32 model the cuts are placed on (default ``model`` itself). Nodes of
    ``model`` it does not name (Q/DQ pairs, constants) join the segment of their earliest reader."""
    known, names = block_cuts(reference if reference is not None else model, block)
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise SegmentationError("the graph has sub-graphs (If/Loop/Scan)")
    nodes = list(graph.node)
    inits = {t.name for t in graph.initializer}
    order = _topological(nodes, {i.name for i in graph.input} | inits)
    seg: dict[int, int] = {i: known[n.name] for i, n in enumerate(nodes) if n.name in known and any(n.input)}
    current = len(names) - 1
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for x in n.input:
            readers.setdefault(x, []).append(i)

    def place(i: int, depth: int = 0) -> int:  # an added node joins its earliest reader's segment
        if i in seg:
            return seg[i]
        outs = [j for o in nodes[i].output for j in readers.get(o, ())]
        if outs and depth < 64:
            seg[i] = min(place(j, depth + 1) for j in outs)
        else:
            ins = [producer[x] for x in nodes[i].input if x in producer]
            seg[i] = max((place(j, depth + 1) for j in ins), default=0)
        return seg[i]

    for i in order:
        place(i)
    for i, n in enumerate(nodes):  # every edge must go forward
        for x in n.input:
            if x in producer and seg[producer[x]] > seg[i]:
                raise SegmentationError(f"tensor {x} flows back from segment {seg[producer[x]]} to {seg[i]}")
    count = current + 1
    graph_outputs = {o.name for o in graph.output}
    last_read: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for x in n.input:
            if x and x not in inits:
                last_read[x] = max(last_read.get(x, -1), seg[i])
    for name in graph_outputs:
        last_read[name] = count  # needed at the end
    segments = []
    for s in range(count):
        members = tuple(i for i in order if seg[i] == s)
        produced = {o for i in members for o in nodes[i].output if o}
        read = [x for i in members for x in nodes[i].input if x and x not in inits and x not in produced]
        read = list(dict.fromkeys(read))
        ins = tuple(x for x in read if x in producer)
        gins = tuple(x for x in read if x not in producer)
        outs = tuple(o for i in members for o in nodes[i].output if o and last_read.get(o, -1) > s)
        carried = tuple(sorted(x for x, last in last_read.items()
                               if x in producer and seg[producer[x]] < s and last > s))
        segments.append(Segment(names[s], members, ins, gins, outs, carried))
    return segments


def segment_model(model: onnx.ModelProto, segment: Segment, elem_types: Mapping[str, int]) -> onnx.ModelProto:
    """A stand-alone model of one segment: its inputs become graph inputs, its outputs graph outputs."""
    graph = model.graph
    nodes = [graph.node[i] for i in segment.nodes]
    used = {x for n in nodes for x in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    value_info = {v.name: v for v in graph.input}

    def info(name: str) -> onnx.ValueInfoProto:
        if name in value_info:
            return value_info[name]
        return onnx.helper.make_tensor_value_info(name, elem_types.get(name, onnx.TensorProto.FLOAT), None)

    sub = onnx.helper.make_graph(nodes, f"{graph.name}:{segment.name}",
                                 [info(x) for x in (*segment.graph_inputs, *segment.inputs)],
                                 [info(x) for x in segment.outputs], inits)
    out = onnx.helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    return out


def elem_types_of(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type of every tensor shape inference can type (others default to float32)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - onnx raises several types; untyped tensors stay float32
        inferred = model
    g = inferred.graph
    return {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)
            if v.type.tensor_type.elem_type}


class BoundaryCache:
    """Per-batch tensors at a cut, keyed by (row set, cut, choices before it); LRU within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.entries: OrderedDict[tuple, tuple[list[dict[str, np.ndarray]], int]] = OrderedDict()

    def get(self, key: tuple) -> list[dict[str, np.ndarray]] | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: tuple, values: list[dict[str, np.ndarray]]) -> None:
        size = sum(v.nbytes for batch in values for v in batch.values())
        if size > self.max_bytes or key in self.entries:
            return
        while self.bytes + size > self.max_bytes and self.entries:
            _, (_, freed) = self.entries.popitem(last=False)
            self.bytes -= freed
        self.entries[key] = (values, size)
        self.bytes += size


class SegmentRunner:
    """Candidates of one input-only Q/DQ model (``floating`` nodes left in float) run segment by segment.

    ``quantized``: the quantized nodes (the names ``floating`` may hold). ``make_candidate(model,
    floating)``: the segment model with those nodes in float (:func:`calib.quantize.keep_in_float`).
    ``session(model_bytes)``: an object with ``run(feeds, names) -> {name: array}``.
    """

    def __init__(self, qdq_model: onnx.ModelProto, quantized: Sequence[str], reference: onnx.ModelProto,
                 make_candidate: Callable[[onnx.ModelProto, set[str]], onnx.ModelProto],
                 session: Callable[[bytes], object], cache_bytes: int, max_sessions: int = 8) -> None:
        self.segments = plan_segments(qdq_model, reference)
        types = elem_types_of(qdq_model)
        self.models = [segment_model(qdq_model, s, types) for s in self.segments]
        member = {qdq_model.graph.node[i].name: k for k, s in enumerate(self.segments) for i in s.nodes}
        self.quantized_in: list[frozenset[str]] = [frozenset() for _ in self.segments]
        for name in quantized:
            k = member[name]
            self.quantized_in[k] = self.quantized_in[k] | {name}
        self.make_candidate, self.session_of = make_candidate, session
        self.cache = BoundaryCache(cache_bytes)
        self.sessions: OrderedDict[tuple, object] = OrderedDict()
        self.max_sessions = max_sessions
        self.segment_runs = 0.0  # segments x row sets executed (a whole model = its number of segments)

    def segment_of(self, node: str) -> int:
        for k, q in enumerate(self.quantized_in):
            if node in q:
                return k
        raise KeyError(node)

    def choices(self, floating: set[str] | frozenset[str]) -> tuple[frozenset[str], ...]:
        return tuple(q & floating for q in self.quantized_in)

    def _session(self, k: int, choice: frozenset[str], keep: bool = True):
        key = (k, choice)
        sess = self.sessions.get(key)
        if sess is None:
            model = self.make_candidate(self.models[k], set(choice)) if choice else self.models[k]
            sess = self.session_of(model.SerializeToString())
            if not keep:
                return sess
            self.sessions[key] = sess
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
        else:
            self.sessions.move_to_end(key)
        return sess

    def run(self, floating: set[str] | frozenset[str], rows: str, batches: Sequence, upto: int | None = None,
            store: bool = True, stop: Callable[[int, Mapping[str, np.ndarray]], bool] | None = None,
            ) -> list[dict[str, np.ndarray]] | None:
        """Per-batch tensors at cut ``upto`` (default: the end, i.e. the model's outputs) for the
        candidate with ``floating`` nodes in float, over ``batches`` (the row set named ``rows``).

        Batches go one at a time through every segment from the latest cached cut; with ``store`` the
        cuts this run computes are cached (and its sessions kept). ``stop(batch index, values)`` is
        asked after each batch: True abandons the run (None is returned, nothing is cached)."""
        choice = self.choices(frozenset(floating))
        end = len(self.segments) if upto is None else upto
        start, state = 0, None
        for cut in range(end, 0, -1):  # the latest cached cut on this candidate's path
            state = self.cache.get((rows, cut, choice[:cut]))
            if state is not None:
                start = cut
                break
        sessions = [self._session(k, choice[k], keep=store) for k in range(start, end)]
        cuts: dict[int, list[dict[str, np.ndarray]]] = {k + 1: [] for k in range(start, end - 1)} if store else {}
        out = []
        for b, batch in enumerate(batches):
            values = state[b] if state is not None else {}
            for k, sess in zip(range(start, end), sessions):
                seg = self.segments[k]
                feeds = {x: batch.feeds[x] for x in seg.graph_inputs}
                feeds.update({x: values[x] for x in seg.inputs})
                computed = sess.run(feeds, list(seg.outputs))
                values = {**{x: values[x] for x in seg.carried}, **computed}
                if k + 1 in cuts:
                    cuts[k + 1].append(values)
            out.append(values)
            if stop is not None and stop(b, values):
                self.segment_runs += (end - start) * (b + 1) / max(len(batches), 1)
                return None
        self.segment_runs += end - start
        for cut, values_at in cuts.items():
            self.cache.put((rows, cut, choice[:cut]), values_at)
        return out
