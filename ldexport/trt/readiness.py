"""Will TensorRT's ONNX parser take this graph, and compute what ONNX Runtime computes?

A pure-onnx check (no TensorRT, no GPU), run by ``ldexport onnx`` after export and by
``ldexport trt`` before building. Rules, each a ``Problem.rule``:

- ``unsupported-op``: a default-domain op the TensorRT 10.x parser does not import at the
  target version (table in :mod:`ldexport.trt.onnx_ops`).
- ``custom-op``: an op from another domain (``com.microsoft``, ``mmdeploy``, ...) or an
  unknown op. Only TensorRT's built-in ``EfficientNMS_TRT`` plugin (in
  ``libnvinfer_plugin``, nothing to build) is accepted; NMS must otherwise be ONNX
  ``NonMaxSuppression``.
- ``topk-k`` / ``topk-sorted``: TensorRT's TopK takes K <= 3840, known at build time,
  and sorted output only.
- ``qdq``: ``QuantizeLinear``/``DequantizeLinear`` symmetric and signed (see
  :mod:`ldexport.trt.qdq`).
- ``float64``, ``integer-type``, ``dtype``: element types (see :mod:`ldexport.trt.dtypes`).
- ``profile``: every dynamic dimension of a graph input covered by the profile.
- ``opset`` / ``metadata``: the default-domain opset, and malformed profile metadata.

Local functions and ``If``/``Loop``/``Scan`` bodies are checked too.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx
from onnx import shape_inference

from ldexport.errors import LdexportError
from ldexport.trt import dtypes, onnx_ops, qdq
from ldexport.trt.graphview import GraphView, qualified_op, subgraphs
from ldexport.trt.problem import Problem, format_problems, has_errors, summary
from ldexport.trt.profile import (
    Dim,
    Profile,
    ShapeRange,
    dynamic_axes,
    graph_inputs,
    input_dims,
    profile_from_metadata,
)

__all__ = ["MAX_TOPK_K", "Problem", "check_onnx", "format_problems", "has_errors", "read_onnx", "summary"]

MAX_TOPK_K = 3840
TRT_NMS_PLUGIN = "EfficientNMS_TRT"
_NMS_NAME = re.compile(r"nms|nonmax", re.IGNORECASE)
_DEFAULT_DOMAINS = ("", "ai.onnx")


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """The ONNX model in ``path`` (its external data not loaded), as ``trt`` checks and builds it.

    Raises:
        LdexportError: no such file, bytes that protobuf cannot parse, or a model with
            nothing to build: no IR version, no graph, or a graph without outputs (a
            0-byte file parses as an empty model).
    """
    path = Path(path)
    if not path.is_file():
        raise LdexportError(f"no ONNX file {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise LdexportError(f"cannot read {path} as ONNX: {error}") from None
    missing = (
        "it is empty" if path.stat().st_size == 0
        else "no IR version" if model.ir_version <= 0
        else "no graph" if not model.HasField("graph")
        else "its graph has no outputs" if not model.graph.output
        else None
    )  # fmt: skip
    if missing is not None:
        raise LdexportError(f"{path} is not an ONNX model: {missing}")
    return model


def check_onnx(
    model: onnx.ModelProto, *, trt_version: str = "10.13", profile: Profile | None = None
) -> list[Problem]:
    """Checks an ONNX model against what TensorRT ``trt_version`` accepts.

    Args:
        model: the model (not modified).
        trt_version: the TensorRT 10.x release to check for (``"10.13"``).
        profile: input name -> (min, opt, max) shapes. When ``None``, the profile recorded
            in the model's metadata (:mod:`ldexport.trt.profile`) is checked instead, and
            a dynamic input with neither is a warning (a profile can still be given when
            building).

    Returns:
        The problems, errors first; empty when the graph is ready.
    """
    version = onnx_ops.parse_trt_version(trt_version)
    problems = _check_opset(model)
    inferred = _with_inferred_types(model)
    functions = {(function.domain, function.name): function for function in inferred.functions}
    view = GraphView.of_graph(inferred.graph)
    problems += _check_graph(inferred.graph, view, version, functions)
    problems += _check_profile(model, profile)
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda problem: problem.severity != "error")


def _with_inferred_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with ``value_info`` filled in, so intermediate tensor types are known."""
    try:
        return shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:  # a model over 2 GiB, or one shape inference cannot follow
        return model


def _check_opset(model: onnx.ModelProto) -> list[Problem]:
    for opset in model.opset_import:
        if opset.domain in _DEFAULT_DOMAINS and opset.version < onnx_ops.MIN_OPSET:
            return [
                Problem(
                    "<model>",
                    "model",
                    "opset",
                    f"default-domain opset {opset.version} is below {onnx_ops.MIN_OPSET}, "
                    "the oldest TensorRT 10 parses",
                    "re-export with opset_version=17 (or any from 9 up)",
                )
            ]
    return []


def _check_graph(
    graph: onnx.GraphProto,
    view: GraphView,
    version: onnx_ops.TensorRTVersion,
    functions: dict[tuple[str, str], onnx.FunctionProto],
) -> list[Problem]:
    problems = dtypes.check_graph_io_types(graph, view, version)
    for node in view.nodes:
        problems += _check_node(node, view, version, functions)
    return problems


def _check_node(
    node: onnx.NodeProto,
    view: GraphView,
    version: onnx_ops.TensorRTVersion,
    functions: dict[tuple[str, str], onnx.FunctionProto],
) -> list[Problem]:
    problems = dtypes.check_node_types(node, view, version)
    scope = view.label(node) + "/"
    function = functions.get((node.domain, node.op_type))
    if function is not None:
        # The parser inlines model-local functions: judge their bodies, not the call.
        body = GraphView(function.node, scope=scope, outer=view)
        for inner in body.nodes:
            problems += _check_node(inner, body, version, functions)
    else:
        problems += _check_op(node, view, version)
    for subgraph in subgraphs(node):
        inner_view = GraphView.of_graph(subgraph, scope=scope, outer=view)
        problems += _check_graph(subgraph, inner_view, version, functions)
    return problems


def _check_op(
    node: onnx.NodeProto, view: GraphView, version: onnx_ops.TensorRTVersion
) -> list[Problem]:
    label, op = view.label(node), qualified_op(node)
    if node.op_type == TRT_NMS_PLUGIN:
        return []  # built into libnvinfer_plugin, whatever domain the exporter gave it
    if node.domain not in _DEFAULT_DOMAINS:
        return [_custom_op_problem(node, label, op)]
    support = onnx_ops.op_support(node.op_type, version)
    target = f"TensorRT {version[0]}.{version[1]}"
    if support == "later":
        since = onnx_ops.added_in(node.op_type) or version
        return [
            Problem(
                label,
                op,
                "unsupported-op",
                f"{node.op_type} is imported by TensorRT's ONNX parser from "
                f"{since[0]}.{since[1]} on, not by {target}",
                f"build with TensorRT >= {since[0]}.{since[1]}, or export the model "
                f"without {node.op_type} (decompose it into supported ops)",
            )
        ]
    if support == "unsupported" or (support == "unlisted" and onnx.defs.has(node.op_type)):
        return [
            Problem(
                label,
                op,
                "unsupported-op",
                f"{target}'s ONNX parser does not implement {node.op_type}",
                f"change the model or the export so that {node.op_type} is not emitted "
                "(rewrite it with supported ops), or provide a TensorRT plugin for it",
            )
        ]
    if support == "unlisted":
        return [_custom_op_problem(node, label, op)]
    if node.op_type == "TopK":
        return _check_topk(node, view, label)
    if node.op_type in qdq.QDQ_OPS:
        return qdq.check_qdq(node, view, label)
    return []



def _custom_op_problem(node: onnx.NodeProto, label: str, op: str) -> Problem:
    if _NMS_NAME.search(node.op_type):
        return Problem(
            label,
            op,
            "custom-op",
            f"custom NMS op {op} is not built into TensorRT",
            f"export NMS as ONNX NonMaxSuppression, or as TensorRT's {TRT_NMS_PLUGIN} plugin "
            "(shipped in libnvinfer_plugin)",
        )
    domain = node.domain or "the default domain"
    return Problem(
        label,
        op,
        "custom-op",
        f"{op} (from {domain}) is not an op TensorRT's ONNX parser implements, and TensorRT "
        "ships no plugin of that name",
        "export with standard ONNX ops only (no onnxruntime-specific fusions or custom "
        "symbolics), or build and load a TensorRT plugin implementing it",
    )


def _check_topk(node: onnx.NodeProto, view: GraphView, label: str) -> list[Problem]:
    problems = []
    attributes = {attribute.name: attribute for attribute in node.attribute}
    if "sorted" in attributes and attributes["sorted"].i == 0:
        problems.append(
            Problem(
                label,
                "TopK",
                "topk-sorted",
                "TopK with sorted=0: TensorRT's TopK only returns sorted results",
                "export with sorted=True (torch.topk's default)",
            )
        )
    if "k" in attributes:  # opset < 10
        bound: int | None = attributes["k"].i
    else:
        bound = view.upper_bound(node.input[1]) if len(node.input) > 1 else None
    fix = (
        f"keep K <= {MAX_TOPK_K} (e.g. lower the pre-NMS top-k, nms_pre, to at most "
        f"{MAX_TOPK_K}, or clamp it with min(k, {MAX_TOPK_K}) in the model)"
    )
    if bound is None:
        problems.append(
            Problem(
                label,
                "TopK",
                "topk-k",
                f"TopK's K is computed at run time and cannot be shown to be <= {MAX_TOPK_K}",
                fix,
                severity="warning",
            )
        )
    elif bound > MAX_TOPK_K:
        problems.append(
            Problem(
                label,
                "TopK",
                "topk-k",
                f"TopK takes K={bound} but TensorRT's TopK supports K <= {MAX_TOPK_K}",
                fix,
            )
        )
    return problems


def _check_profile(model: onnx.ModelProto, profile: Profile | None) -> list[Problem]:
    source = "the given profile"
    if profile is None:
        try:
            profile = profile_from_metadata(model)
        except LdexportError as error:
            fix = (
                "re-export: write input_min_shape/input_opt_shape/input_max_shape as "
                'JSON objects such as {"images": [1, 3, 640, 640]}'
            )
            return [Problem("<model>", "model", "metadata", str(error), fix)]
        source = "the profile in the ONNX metadata"
    inputs = {value.name: value for value in graph_inputs(model.graph)}
    problems = []
    for name, value in inputs.items():
        axes = dynamic_axes(value)
        if not axes or (profile is not None and name in profile):
            continue
        dims = "x".join(str(d) if isinstance(d, int) else (d or "?") for d in input_dims(value))
        message = f"input has dynamic shape {dims} (axes {axes}) and {source} has no range for it"
        fix = "give min/opt/max shapes for it (ldexport trt --min/--opt/--max NxCxHxW)"
        if profile is None:
            message = f"input has dynamic shape {dims} (axes {axes}) and no profile was given"
            problems.append(Problem(name, "graph input", "profile", message, fix, "warning"))
        else:
            problems.append(Problem(name, "graph input", "profile", message, fix))
    for name, ranges in (profile or {}).items():
        if name not in inputs:
            known = ", ".join(inputs) or "none"
            message = f"{source} names an input the graph does not have (inputs: {known})"
            problems.append(
                Problem(name, "graph input", "profile", message, "use the graph's input names")
            )
            continue
        problems += _check_range(name, input_dims(inputs[name]), ranges, source)
    return problems


def _check_range(
    name: str, dims: list[Dim], ranges: ShapeRange, source: str
) -> list[Problem]:
    low, opt, high = ranges
    shown = "/".join("x".join(map(str, shape)) for shape in ranges)
    fix = "make min <= opt <= max on every axis, and equal to the graph's size on fixed axes"
    if not len(low) == len(opt) == len(high) == len(dims):
        message = f"{source} gives shapes {shown} but the input has rank {len(dims)}"
        return [Problem(name, "graph input", "profile", message, fix)]
    problems = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int) and not low[axis] == opt[axis] == high[axis] == dim:
            message = (
                f"{source} ranges axis {axis} over {low[axis]}..{high[axis]} (opt {opt[axis]}) "
                f"but the graph fixes it at {dim}"
            )
            problems.append(Problem(name, "graph input", "profile", message, fix))
        elif not 1 <= low[axis] <= opt[axis] <= high[axis]:
            message = (
                f"{source} gives axis {axis} min {low[axis]}, opt {opt[axis]}, max {high[axis]}, "
                "outside min <= opt <= max"
            )
            problems.append(Problem(name, "graph input", "profile", message, fix))
    return problems

