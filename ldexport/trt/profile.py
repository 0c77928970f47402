"""Shapes, optimisation profiles, and the ONNX metadata keys that carry them.

An optimisation profile gives, for each graph input with a dynamic dimension, the
smallest, the typical and the largest shape TensorRT must handle::

    profile = {"images": ((1, 3, 320, 320), (1, 3, 640, 640), (1, 3, 1024, 1024))}

The ONNX exporter records the profile it exported for in the model's ``metadata_props``,
one key per bound, each a JSON object from input name to shape::

    input_min_shape = {"images": [1, 3, 320, 320]}
    input_opt_shape = {"images": [1, 3, 640, 640]}
    input_max_shape = {"images": [1, 3, 1024, 1024]}

(:func:`ldexport.export.keys.profile_metadata` writes exactly these; the keys are owned
by :mod:`ldexport.export.keys`). For a model with one graph input a bare
shape (``"1x3x640x640"`` or ``"[1, 3, 640, 640]"``) is read too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import onnx

from ldexport.errors import LdexportError
from ldexport.export.keys import MAX_SHAPE_KEY, MIN_SHAPE_KEY, OPT_SHAPE_KEY, PROFILE_KEYS, profile_metadata  # noqa: F401

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]  # (min, opt, max)
Profile = dict[str, ShapeRange]

Dim = int | str | None  # a static size, a symbolic name, or unknown


def parse_shape(text: str) -> Shape:
    """``"1x3x640x640"`` -> ``(1, 3, 640, 640)``; every size a positive integer."""
    parts = text.strip().lower().split("x")
    if not all(re.fullmatch(r"\d+", part) for part in parts) or not text.strip():
        raise LdexportError(f"not a shape: {text!r} (expected sizes joined by x, e.g. 1x3x640x640)")
    shape = tuple(int(part) for part in parts)
    if any(size <= 0 for size in shape):
        raise LdexportError(f"shape {text!r} has a size below 1")
    return shape


def format_shape(shape: Sequence[int]) -> str:
    """``(1, 3, 640, 640)`` -> ``"1x3x640x640"``."""
    return "x".join(str(size) for size in shape)


def parse_shape_arg(text: str) -> tuple[str | None, Shape]:
    """A command-line shape, optionally naming its input: ``"images:1x3x640x640"``."""
    name, _, dims = text.rpartition(":")
    return (name or None), parse_shape(dims)


def graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (IR < 4 also lists initializers among them)."""
    initializers = {tensor.name for tensor in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


def input_dims(value: onnx.ValueInfoProto) -> list[Dim]:
    """Each dimension of an input: its size, its symbolic name, or ``None`` if unknown."""
    dims: list[Dim] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(dim.dim_value)
        else:
            dims.append(dim.dim_param or None)
    return dims


def dynamic_axes(value: onnx.ValueInfoProto) -> list[int]:
    """Indices of the dimensions of an input that are not fixed in the graph."""
    return [axis for axis, dim in enumerate(input_dims(value)) if not isinstance(dim, int)]


def _parse_metadata_value(key: str, text: str, input_names: Sequence[str]) -> dict[str, Shape]:
    stripped = text.strip()
    try:
        value = json.loads(stripped) if stripped[:1] in "[{" else None
    except json.JSONDecodeError as error:
        raise LdexportError(f"metadata {key} is not valid JSON: {error}") from None
    if value is None or isinstance(value, list):
        if len(input_names) != 1:
            raise LdexportError(
                f"metadata {key} is a bare shape but the graph has {len(input_names)} inputs; "
                'write a JSON object such as {"images": [1, 3, 640, 640]}'
            )
        value = {input_names[0]: value if value is not None else list(parse_shape(stripped))}
    if not isinstance(value, dict):
        raise LdexportError(f"metadata {key} must be a JSON object from input name to shape")
    shapes = {}
    for name, dims in value.items():
        if not isinstance(dims, list) or not all(type(d) is int and d > 0 for d in dims):
            raise LdexportError(f"metadata {key} gives {name!r} a shape of non-positive sizes: {dims!r}")
        shapes[str(name)] = tuple(dims)
    return shapes


def profile_from_metadata(model: onnx.ModelProto) -> Profile | None:
    """The profile the exporter recorded, or ``None`` when the model carries none.

    Raises:
        LdexportError: only some of the three keys are present, or one is malformed.
    """
    props = {prop.key: prop.value for prop in model.metadata_props}
    present = [key for key in PROFILE_KEYS if key in props]
    if not present:
        return None
    if len(present) != len(PROFILE_KEYS):
        missing = ", ".join(key for key in PROFILE_KEYS if key not in props)
        raise LdexportError(f"the ONNX metadata has {', '.join(present)} but not {missing}")
    names = [value.name for value in graph_inputs(model.graph)]
    bounds = [_parse_metadata_value(key, props[key], names) for key in PROFILE_KEYS]
    if not bounds[0].keys() == bounds[1].keys() == bounds[2].keys():
        raise LdexportError("the ONNX metadata input_{min,opt,max}_shape name different inputs")
    return {name: (bounds[0][name], bounds[1][name], bounds[2][name]) for name in bounds[0]}


def profile_from_args(
    model: onnx.ModelProto,
    min_shapes: Sequence[str],
    opt_shapes: Sequence[str],
    max_shapes: Sequence[str],
) -> Profile | None:
    """A profile from ``--min/--opt/--max`` values (``[name:]NxCxHxW``, one per input).

    A shape without a name belongs to the graph's only dynamic input (or only input).

    Returns:
        ``None`` when no shape was given.
    """
    given = [list(min_shapes), list(opt_shapes), list(max_shapes)]
    if not any(given):
        return None
    if not all(given) or len({len(shapes) for shapes in given}) != 1:
        raise LdexportError("give --min, --opt and --max together, the same number of times")
    inputs = graph_inputs(model.graph)
    dynamic = [value.name for value in inputs if dynamic_axes(value)]
    default = dynamic[0] if len(dynamic) == 1 else inputs[0].name if len(inputs) == 1 else None
    bounds: list[dict[str, Shape]] = []
    for shapes in given:
        named: dict[str, Shape] = {}
        for text in shapes:
            name, shape = parse_shape_arg(text)
            name = name or default
            if name is None:
                raise LdexportError(
                    f"the graph has several inputs; name the one {text!r} is for (name:NxCxHxW)"
                )
            named[name] = shape
        bounds.append(named)
    if not bounds[0].keys() == bounds[1].keys() == bounds[2].keys():
        raise LdexportError("--min, --opt and --max must name the same inputs")
    return {name: (bounds[0][name], bounds[1][name], bounds[2][name]) for name in bounds[0]}


def resolve_profile(model: onnx.ModelProto, given: Profile | None) -> Profile:
    """The profile to build with: ``given``, else the model's metadata, else static shapes.

    Only inputs with a dynamic dimension appear in the result.

    Raises:
        LdexportError: an input has a dynamic dimension and no shape range covers it.
    """
    profile = given if given is not None else profile_from_metadata(model) or {}
    resolved: Profile = {}
    for value in graph_inputs(model.graph):
        axes = dynamic_axes(value)
        if not axes:
            continue
        if value.name not in profile:
            dims = "x".join("?" if not isinstance(d, int) else str(d) for d in input_dims(value))
            raise LdexportError(
                f"input {value.name!r} has dynamic shape {dims} and no profile: pass "
                f"--min/--opt/--max, or export with {MIN_SHAPE_KEY}/{OPT_SHAPE_KEY}/"
                f"{MAX_SHAPE_KEY} metadata"
            )
        resolved[value.name] = profile[value.name]
    return resolved
