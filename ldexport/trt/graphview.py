"""Lookups over one ONNX graph (or local-function body) that the readiness rules share.

A view knows who produces and who consumes each tensor, which tensors are initializers or
``Constant`` outputs, and the element type of every tensor that has one recorded (graph
inputs/outputs, ``value_info``, initializers). Subgraphs (``If``/``Loop``/``Scan``) and
function bodies get their own view whose ``outer`` is the enclosing one, so that names
captured from the enclosing scope still resolve.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

# Ops that pass a constant through unchanged in value (for resolving TopK's K).
_PASSTHROUGH = frozenset({"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})


def node_label(node: onnx.NodeProto) -> str:
    """The node's name, or ``"<OpType>(<first output>)"`` for an unnamed node."""
    if node.name:
        return node.name
    first_output = node.output[0] if node.output else ""
    return f"{node.op_type}({first_output})"


def qualified_op(node: onnx.NodeProto) -> str:
    """``"Op"`` for the default ONNX domain, ``"domain::Op"`` otherwise."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


class GraphView:
    """Producers, consumers, constants and element types of one graph's tensors.

    Args:
        nodes: the graph's (or function body's) nodes, in order.
        initializers: its initializers.
        typed_values: value infos with an element type (inputs, outputs, ``value_info``).
        scope: prefix of node labels (``"caller/"`` inside a subgraph or function).
        outer: the enclosing view, for names captured from outside.
    """

    def __init__(
        self,
        nodes: Sequence[onnx.NodeProto],
        *,
        initializers: Iterable[onnx.TensorProto] = (),
        typed_values: Iterable[onnx.ValueInfoProto] = (),
        scope: str = "",
        outer: GraphView | None = None,
    ) -> None:
        self.nodes = list(nodes)
        self.scope = scope
        self.outer = outer
        self.initializers = {tensor.name: tensor for tensor in initializers}
        self.producers: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.output:
                if name:
                    self.producers[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        # Names read by these nodes or by nodes of their subgraphs (captured names).
        self.used_names = {name for node in self.nodes for name in _inputs_deep(node)}
        self.elem_types: dict[str, int] = {}
        for value in typed_values:
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                self.elem_types[value.name] = value.type.tensor_type.elem_type
        for tensor in self.initializers.values():
            self.elem_types.setdefault(tensor.name, tensor.data_type)

    @classmethod
    def of_graph(
        cls, graph: onnx.GraphProto, *, scope: str = "", outer: GraphView | None = None
    ) -> GraphView:
        """A view of a ``GraphProto`` (the main graph or a subgraph attribute)."""
        typed = [*graph.input, *graph.output, *graph.value_info]
        initializers = [*graph.initializer]
        initializers += [sparse.values for sparse in graph.sparse_initializer]
        return cls(
            graph.node, initializers=initializers, typed_values=typed, scope=scope, outer=outer
        )

    def label(self, node: onnx.NodeProto) -> str:
        """The node's label as reports show it, with this view's scope prefix."""
        return self.scope + node_label(node)

    def initializer(self, name: str) -> onnx.TensorProto | None:
        """The initializer of that name, here or in an enclosing scope."""
        if name in self.initializers:
            return self.initializers[name]
        return self.outer.initializer(name) if self.outer is not None else None

    def elem_type(self, name: str) -> int | None:
        """The recorded ``TensorProto`` element type of a tensor, if any."""
        if name in self.elem_types:
            return self.elem_types[name]
        return self.outer.elem_type(name) if self.outer is not None else None

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a tensor known before run time, or ``None``.

        Follows initializers, ``Constant`` nodes and value-preserving ops
        (``Identity``/``Cast``/``Reshape``/``Squeeze``/``Unsqueeze``/``Flatten``).
        """
        if name in self.initializers:
            return _to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is None:
            return self.outer.constant(name) if self.outer is not None else None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return _constant_node_value(node)
        if node.op_type in _PASSTHROUGH and node.input:
            return self.constant(node.input[0])
        return None

    def upper_bound(self, name: str) -> int | None:
        """An upper bound on the largest element of an integer tensor, or ``None``.

        Exact for constants; ``Min`` is bounded by its smallest bounded input, which covers
        the usual export of ``min(k, num_anchors)``.
        """
        value = self.constant(name)
        if value is not None:
            return int(np.max(value)) if value.size else None
        node = self.producers.get(name)
        if node is None:
            return None
        if node.op_type == "Min":
            bounds = [self.upper_bound(input_name) for input_name in node.input if input_name]
            known = [bound for bound in bounds if bound is not None]
            return min(known) if known else None
        if node.op_type in _PASSTHROUGH and node.input:
            return self.upper_bound(node.input[0])
        return None


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs in a node's attributes (``If`` branches, ``Loop``/``Scan`` bodies)."""
    graphs = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            graphs.append(attribute.g)
        graphs.extend(attribute.graphs)
    return graphs


def _inputs_deep(node: onnx.NodeProto) -> Iterator[str]:
    yield from (name for name in node.input if name)
    for graph in subgraphs(node):
        for inner in graph.node:
            yield from _inputs_deep(inner)


def _to_array(tensor: onnx.TensorProto) -> np.ndarray | None:
    try:
        return np.asarray(numpy_helper.to_array(tensor))
    except Exception:  # external data not loaded, or a type numpy lacks
        return None


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return _to_array(attribute.t)
        if attribute.name == "value_int":
            return np.asarray(attribute.i)
        if attribute.name == "value_ints":
            return np.asarray(list(attribute.ints))
        if attribute.name == "value_float":
            return np.asarray(attribute.f)
        if attribute.name == "value_floats":
            return np.asarray(list(attribute.floats))
    return None
