"""Element types TensorRT 10.x accepts from ONNX, and the type rules of the readiness check.

TensorRT's ONNX parser accepts FLOAT, FLOAT16, BFLOAT16, INT32, INT64, BOOL and UINT8
(network I/O), plus the quantized types INT8, INT4, FP8 (E4M3FN) and, from 10.8, FP4
(E2M1) behind Q/DQ. DOUBLE is "limited": the parser casts it down to float32, clamping at
+-FLT_MAX, so a float64 graph no longer computes what ONNX Runtime computes; the check
treats every float64 as an error. Other integer widths (int16, uint16, uint32, uint64,
uint4) and string/complex types are not accepted at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from onnx import TensorProto

from ldexport.trt.graphview import GraphView, qualified_op
from ldexport.trt.onnx_ops import TensorRTVersion
from ldexport.trt.problem import Problem

_ACCEPTED = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.BFLOAT16,
        TensorProto.INT32,
        TensorProto.INT64,
        TensorProto.BOOL,
        TensorProto.UINT8,
        TensorProto.INT8,
        TensorProto.INT4,
        TensorProto.FLOAT8E4M3FN,
    }
)
_FP4_SINCE: TensorRTVersion = (10, 8)
# Node attributes that name an element type the node produces or computes in.
_TYPE_ATTRIBUTES = frozenset({"to", "dtype", "output_dtype", "stash_type"})

_FIXES = {
    "float64": (
        "export in float32: call model.float() before exporting, build constants with "
        "dtype=torch.float32 (numpy scalars are float64), and cast to float32, not float64"
    ),
    "integer-type": (
        "use int32 or int64 instead (uint8 only for image bytes at the input/output): "
        "cast before this point in the model, or convert on the host"
    ),
    "dtype": "remove this tensor type from the exported graph (TensorRT cannot hold it)",
}


def type_name(elem_type: int) -> str:
    """``"float64"`` for DOUBLE, else the lower-case ONNX name (``"uint32"``)."""
    if elem_type == TensorProto.DOUBLE:
        return "float64"
    try:
        return str(TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:
        return f"type {elem_type}"


def type_rule(elem_type: int, version: TensorRTVersion) -> str | None:
    """The rule an element type breaks at ``version``: ``float64``, ``integer-type``,
    ``dtype``, or ``None`` when TensorRT accepts it (or it is undefined)."""
    if elem_type == TensorProto.UNDEFINED or elem_type in _ACCEPTED:
        return None
    if elem_type == TensorProto.FLOAT4E2M1 and version >= _FP4_SINCE:
        return None
    if elem_type == TensorProto.DOUBLE:
        return "float64"
    name = type_name(elem_type)
    if name.startswith(("int", "uint")):
        return "integer-type"
    return "dtype"


def _message(rule: str, places: list[str]) -> str:
    listed = "; ".join(places)
    if rule == "float64":
        return (
            f"{listed}: TensorRT has no float64, its parser casts double down to float32 "
            "(clamped to +-FLT_MAX)"
        )
    if rule == "integer-type":
        return f"{listed}: TensorRT accepts int32, int64, int8, uint8 and bool integers only"
    return f"{listed}: TensorRT does not accept this element type"


def _node_places(node: onnx.NodeProto, view: GraphView) -> Iterator[tuple[int, str]]:
    """(element type, where) for each typed thing a node carries or produces."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.INT and attribute.name in _TYPE_ATTRIBUTES:
            yield attribute.i, f"attribute {attribute.name}={type_name(attribute.i)}"
        else:
            tensors = [attribute.t] if attribute.type == onnx.AttributeProto.TENSOR else []
            for tensor in [*tensors, *attribute.tensors]:
                where = f"attribute {attribute.name} is {type_name(tensor.data_type)}"
                yield tensor.data_type, where
    for name in node.input:
        initializer = view.initializer(name) if name else None
        if initializer is not None:
            data_type = initializer.data_type
            yield data_type, f"initializer '{name}' is {type_name(data_type)}"
    for name in node.output:
        elem_type = view.elem_type(name) if name else None
        if elem_type is not None:
            yield elem_type, f"output '{name}' is {type_name(elem_type)}"


def check_node_types(
    node: onnx.NodeProto, view: GraphView, version: TensorRTVersion
) -> list[Problem]:
    """One problem per broken rule for a node, listing every offending place in it."""
    by_rule: dict[str, list[str]] = {}
    for elem_type, place in _node_places(node, view):
        rule = type_rule(elem_type, version)
        if rule is not None and place not in by_rule.setdefault(rule, []):
            by_rule[rule].append(place)
    return [
        Problem(view.label(node), qualified_op(node), rule, _message(rule, places), _FIXES[rule])
        for rule, places in by_rule.items()
    ]


def check_graph_io_types(
    graph: onnx.GraphProto, view: GraphView, version: TensorRTVersion
) -> list[Problem]:
    """Graph inputs, and initializers no node consumes (those consumed are reported on
    their consumer by :func:`check_node_types`)."""
    problems = []
    initializer_names = set(view.initializers)
    for value in graph.input:
        if value.name in initializer_names:
            continue  # IR < 4 lists initializers among the inputs
        elem_type = value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else 0
        rule = type_rule(elem_type, version)
        if rule is not None:
            message = _message(rule, [f"graph input '{value.name}' is {type_name(elem_type)}"])
            problems.append(
                Problem(view.scope + value.name, "graph input", rule, message, _FIXES[rule])
            )
    for name, tensor in view.initializers.items():
        rule = type_rule(tensor.data_type, version)
        if rule is not None and name not in view.used_names:
            message = _message(rule, [f"initializer '{name}' is {type_name(tensor.data_type)}"])
            problems.append(Problem(view.scope + name, "initializer", rule, message, _FIXES[rule]))
    return problems
