"""Quantize/dequantize nodes as TensorRT's ONNX parser imports them.

onnx-tensorrt's ``QuantizeLinear``/``DequantizeLinear`` importer (``onnxOpImporters.cpp``;
``docs/operators.md``: types INT8, FP8, INT4, "``x_zero_point`` must be zero"):

- refuses a constant zero point that is not all zeros ("TensorRT only supports symmetric
  quantization") and a scale that is not all positive;
- imports a uint8 zero point as int8 with only a warning ("TensorRT doesn't support
  QuantizeLinear/DequantizeLinear with UINT8 zero_point. TensorRT will use INT8
  instead"), and a ``QuantizeLinear`` without a zero point (uint8 in ONNX) as int8 too.
  At the same scale int8 clamps at 127 x scale and keeps negative values, where ONNX
  Runtime's uint8 keeps 0 to 255 x scale: the engine computes something else;
- has no Q/DQ of other integer types (ONNX Runtime's int32 bias ``DequantizeLinear``).

Each is an error here. ``ldexport quantize`` writes int8 zero points of 0 and float
biases, which pass.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from ldexport.trt.graphview import GraphView, qualified_op
from ldexport.trt.problem import Problem

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# The types TensorRT's Q/DQ layers quantize to (FP4 from 10.8; the type rules judge that).
_QUANTIZED_TYPES = frozenset(
    {TensorProto.INT8, TensorProto.INT4, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT4E2M1}
)
_FIX = (
    "quantize symmetrically to int8: int8 zero points of 0, positive scales, float biases "
    "(ldexport quantize does; with onnxruntime: activation_type=weight_type=QuantType.QInt8, "
    "extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True}, no int32 biases)"
)


def quantized_type(node: onnx.NodeProto, view: GraphView) -> int:
    """The type a Q/DQ node quantizes to in ONNX: its zero point's, else its ``output_dtype``,
    else (``DequantizeLinear``) its input's; ``QuantizeLinear``'s default is uint8."""
    zero_point = _zero_point(node)
    if zero_point is not None:
        elem_type = view.elem_type(zero_point)
        if elem_type:
            return elem_type
    output_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    if output_dtype:
        return output_dtype
    if node.op_type == "DequantizeLinear":
        return view.elem_type(node.input[0]) or TensorProto.UNDEFINED
    return TensorProto.UINT8


def check_qdq(node: onnx.NodeProto, view: GraphView, label: str) -> list[Problem]:
    """What TensorRT's Q/DQ importer refuses, or imports with another meaning."""
    op = qualified_op(node)
    problems = []
    scale = view.constant(node.input[1]) if len(node.input) > 1 else None
    if scale is not None and scale.dtype.kind == "f" and not np.all(scale > 0):
        message = f"scale '{node.input[1]}' is not all positive, which TensorRT's parser rejects"
        problems.append(Problem(label, op, "qdq", message, _FIX))
    zero_point = _zero_point(node)
    values = view.constant(zero_point) if zero_point is not None else None
    if values is not None and values.dtype.kind in "iub" and np.any(values != 0):
        message = (
            f"zero point '{zero_point}' is not 0: TensorRT only supports symmetric quantization "
            "and its parser rejects the node"
        )
        problems.append(Problem(label, op, "qdq", message, _FIX))
    elem_type = quantized_type(node, view)
    if elem_type == TensorProto.UINT8:
        given = "a uint8 zero point" if zero_point is not None else "no zero point (ONNX's default: uint8)"
        message = (
            f"{op} with {given}: TensorRT quantizes to int8 instead, at the same scale, so it "
            "clamps at 127 x scale and keeps negative values where ONNX Runtime keeps 0..255 x scale"
        )
        problems.append(Problem(label, op, "qdq", message, _FIX))
    elif elem_type != TensorProto.UNDEFINED and elem_type not in _QUANTIZED_TYPES:
        name = str(TensorProto.DataType.Name(elem_type)).lower()
        message = f"{op} of {name}: TensorRT's Q/DQ layers take int8, int4 and fp8 (fp4) only"
        problems.append(Problem(label, op, "qdq", message, _FIX))
    return problems


def _zero_point(node: onnx.NodeProto) -> str | None:
    return node.input[2] if len(node.input) > 2 and node.input[2] else None
