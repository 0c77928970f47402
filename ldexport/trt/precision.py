"""Keeping the box decoding in fp32 inside an fp16 or int8 engine.

The distribution decoding (softmax over the ``R`` bins, expectation with ``project``,
``distance2bbox``) and the box outputs lose whole pixels in fp16 (its spacing is 0.5 at
512-1024 and 1.0 at 1024-2048) and are not worth quantizing. The ONNX exporter names
those nodes with a ``decode/`` path segment: ``decode/softmax``, ``/decode/Mul_3`` or
``/head/decode/Add`` all match :data:`DECODE_PATTERN`. TensorRT's ONNX parser names each
layer after its node (helper layers get the node name with a suffix) and records
``[ONNX Layer: <node name>]`` in the layer's metadata; both are searched.

Only layers whose inputs and outputs are all floating point are constrained (shape and
index arithmetic is exact anyway, and TensorRT rejects float precision on it), and the
build sets ``OBEY_PRECISION_CONSTRAINTS`` so that TensorRT may not override them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from ldexport.export.scopes import DECODE_PATTERN

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["DECODE_PATTERN", "DecodePrecision", "constrain_decode_layers", "is_decode_layer"]

DecodePrecision = Literal["fp32", "fp16"]


def is_decode_layer(name: str, metadata: str, pattern: str = DECODE_PATTERN) -> bool:
    """Whether a layer's name or ONNX metadata matches the decode pattern."""
    regex = re.compile(pattern)
    return bool(regex.search(name) or regex.search(metadata))


def constrain_decode_layers(
    network: trt.INetworkDefinition,
    *,
    pattern: str = DECODE_PATTERN,
    precision: DecodePrecision = "fp32",
) -> list[str]:
    """Sets layer precision and output types of the decode layers.

    Args:
        network: a parsed network.
        pattern: regular expression searched in layer names and metadata.
        precision: ``"fp32"`` (default) or ``"fp16"``.

    Returns:
        Names of the layers constrained (empty: nothing matched the pattern).
    """
    import tensorrt as trt

    dtype = trt.float32 if precision == "fp32" else trt.float16
    floating = {trt.float32, trt.float16, trt.bfloat16}
    constrained = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if not is_decode_layer(layer.name, layer.metadata or "", pattern):
            continue
        inputs = [layer.get_input(i) for i in range(layer.num_inputs)]
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        tensors = [tensor for tensor in inputs + outputs if tensor is not None]
        if not outputs or any(tensor.dtype not in floating for tensor in tensors):
            continue
        layer.precision = dtype
        for output_index in range(layer.num_outputs):
            layer.set_output_type(output_index, dtype)
        constrained.append(layer.name)
    return constrained
