"""Which nodes of an exported graph are quantized, which stay float, and the Q/DQ clean-up.

A graph is quantized in the ONNX QDQ form: ``QuantizeLinear`` -> ``DequantizeLinear``
pairs on the tensors an int8 kernel reads (TensorRT's explicit quantization and ONNX
Runtime's QDQ fusion both start from it). What is quantized:

- the convolutions of ``detector/`` (weights per output channel, activations per tensor),
  the additions of two activations (ResNet's residual, the FPN's top-down sum), max
  pooling and resizing between them, and the ReLUs;
- nothing under ``decode/`` (distribution softmax, expectation, strides, boxes, NMS) or
  ``preprocess/``, nor the convolution that reads the image (:func:`input_convolutions`,
  unless ``--quantize-stem``), nor nodes the user names (``--exclude``): these stay float.

"Float" also means float *inputs*: the distribution logits the decoding reads are not
rounded to int8 on their way in. :func:`float_side` extends the float nodes upstream over
every node that is not quantized and feeds only float nodes (the head's per-level
``Scale`` multiplications, reshapes), and :func:`unquantize_float_inputs` rewires those
nodes to read the tensor before its Q/DQ pair, deleting the pairs nothing else reads.
The last convolutions of the head therefore take int8 inputs and give float outputs.

Legend: ``Q`` a ``QuantizeLinear`` node, ``DQ`` a ``DequantizeLinear`` node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ldexport.export.scopes import DECODE_PATTERN, PREPROCESS_PATTERN

if TYPE_CHECKING:
    import onnx

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# operators of an already-quantized graph in ONNX's other forms (QOperator, integer ops)
_INTEGER_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
)
# what ldexport quantizes (see the module doc); Add only between two activations
QUANTIZED_OP_TYPES = ("Conv", "Add", "MaxPool", "Resize", "Relu")
# kept in float whatever the user excludes
FLOAT_PATTERNS = (DECODE_PATTERN, PREPROCESS_PATTERN)


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether the graph already holds Q/DQ nodes or quantized operators."""
    return any(node.op_type in QDQ_OPS or node.op_type in _INTEGER_OPS for node in model.graph.node)


def inline_constant_identities(model: onnx.ModelProto) -> int:
    """Makes nodes read constants directly instead of through ``Identity`` copies; in place.

    The TorchScript exporter shares equal parameters through ``Identity`` nodes (a head
    convolution used at every level; equal folded biases). ONNX Runtime's int8 fusions
    want a convolution's bias to be an initializer: behind an ``Identity`` the convolution
    stays float between its Q/DQ nodes.

    Returns:
        How many inputs now read the constant directly.
    """
    initializers = {initializer.name for initializer in model.graph.initializer}
    source: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Identity":
            origin = source.get(node.input[0], node.input[0])
            if origin in initializers:
                source[node.output[0]] = origin
    outputs = {output.name for output in model.graph.output}
    inlined = 0
    for node in model.graph.node:
        for index, tensor in enumerate(node.input):
            if tensor in source and node.op_type != "Identity":
                node.input[index] = source[tensor]
                inlined += 1
    dead = [node for node in model.graph.node if node.op_type == "Identity" and node.output[0] in source and node.output[0] not in outputs]
    for node in dead:
        model.graph.node.remove(node)
    return inlined


def onnx_is_quantized(path: str | Path) -> bool:
    """:func:`is_quantized` of an ONNX file (its weights are not loaded)."""
    import onnx

    return is_quantized(onnx.load(str(path), load_external_data=False))


def matching_nodes(model: onnx.ModelProto, patterns: Sequence[str]) -> set[str]:
    """Names of the nodes whose name matches any of the regular expressions ``patterns``."""
    regexes = [re.compile(pattern) for pattern in patterns]
    return {node.name for node in model.graph.node if any(regex.search(node.name) for regex in regexes)}


def input_convolutions(model: onnx.ModelProto) -> set[str]:
    """Names of the convolutions that read the image: the first ``Conv`` on each path from
    a graph input (through the preprocessing, if any; not through ``Shape``).

    Kept float by default: the image's full range in 8 bits costs more accuracy there than
    anywhere else (the demo student's AP drop roughly halves with it float; see
    ``docs/benchmarks.md``), and a three-channel convolution gains little from int8.
    """
    consumers = _consumers(model)
    found: set[str] = set()
    seen: set[str] = set()
    tensors = [tensor.name for tensor in model.graph.input]
    while tensors:
        for reader in consumers.get(tensors.pop(), []):
            if reader.name in seen or reader.op_type == "Shape":
                continue
            seen.add(reader.name)
            if reader.op_type == "Conv":
                found.add(reader.name)
            else:
                tensors.extend(reader.output)
    return found


def nodes_to_quantize(model: onnx.ModelProto, float_nodes: Iterable[str]) -> list[str]:
    """Names of the nodes to quantize: :data:`QUANTIZED_OP_TYPES` outside ``float_nodes``.

    An ``Add`` is quantized only when both its inputs are activations: the affine ``Add``
    of a GroupNorm adds a constant, and int8 buys nothing there.
    """
    excluded = set(float_nodes)
    constants = _constant_tensors(model)
    chosen = []
    for node in model.graph.node:
        if node.name in excluded or node.op_type not in QUANTIZED_OP_TYPES:
            continue
        if node.op_type == "Add" and any(name in constants for name in node.input):
            continue
        chosen.append(node.name)
    return chosen


def float_side(model: onnx.ModelProto, float_nodes: Iterable[str], quantized: Iterable[str]) -> set[str]:
    """``float_nodes`` and every node upstream of them that is not quantized and whose
    outputs only float nodes (or the graph outputs) read."""
    floating = set(float_nodes)
    quantized_names = set(quantized)
    consumers = _consumers(model)
    outputs = {output.name for output in model.graph.output}
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if node.name in floating or node.name in quantized_names or node.op_type in QDQ_OPS:
                continue
            readers = [reader for tensor in node.output for reader in consumers.get(tensor, [])]
            if readers and all(reader.name in floating for reader in readers):
                floating.add(node.name)
                changed = True
            elif not readers and all(tensor in outputs for tensor in node.output):
                floating.add(node.name)
                changed = True
    return floating


def unquantize_float_inputs(model: onnx.ModelProto, floating: Iterable[str]) -> int:
    """Makes the ``floating`` nodes read activations before their Q/DQ pair; in place.

    For every input of a float node produced by ``DQ(Q(x))`` with ``x`` an activation,
    the node reads ``x`` instead; Q/DQ nodes left without readers are deleted.

    Returns:
        How many inputs were rewired.
    """
    floating = set(floating)
    producers = {tensor: node for node in model.graph.node for tensor in node.output}
    constants = _constant_tensors(model)
    rewired = 0
    for node in model.graph.node:
        if node.name not in floating:
            continue
        for index, tensor in enumerate(node.input):
            dequantize = producers.get(tensor)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize = producers.get(dequantize.input[0])
            if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.input[0] in constants:
                continue
            node.input[index] = quantize.input[0]
            rewired += 1
    _remove_unread_qdq(model)
    return rewired


def rename_scoped_qdq(model: onnx.ModelProto, patterns: Sequence[str]) -> int:
    """Renames the Q/DQ nodes whose name falls in a float scope; in place.

    ONNX Runtime names a Q/DQ node after the tensor it quantizes: the first convolution's
    input in a graph with preprocessing is ``/preprocess/Div_output_0``, so its Q/DQ pair
    would look like part of ``preprocess/``. Such a node is renamed after the node that
    reads it: ``<reader>/input_QuantizeLinear``.

    Returns:
        How many nodes were renamed.
    """
    regexes = [re.compile(pattern) for pattern in patterns]
    consumers = _consumers(model)
    taken = {node.name for node in model.graph.node}
    renamed = 0
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS or not any(regex.search(node.name) for regex in regexes):
            continue
        reader = node
        while reader.op_type in QDQ_OPS and consumers.get(reader.output[0]):
            reader = consumers[reader.output[0]][0]
        name = base = f"{reader.name}/input_{node.op_type}"
        suffix = 0
        while name in taken:
            suffix += 1
            name = f"{base}_{suffix}"
        taken.add(name)
        node.name = name
        renamed += 1
    return renamed


def qdq_touching(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """The nodes of ``names`` that are Q/DQ nodes or read a ``DequantizeLinear`` output of
    an activation (a quantized weight read by a float node is not counted: there is none)."""
    selected = set(names)
    producers = {tensor: node for node in model.graph.node for tensor in node.output}
    found = []
    for node in model.graph.node:
        if node.name not in selected:
            continue
        reads_dq = any(
            (producer := producers.get(tensor)) is not None and producer.op_type == "DequantizeLinear"
            for tensor in node.input
        )
        if node.op_type in QDQ_OPS or reads_dq:
            found.append(node.name)
    return found


def count_qdq(model: onnx.ModelProto) -> int:
    """Number of Q/DQ nodes."""
    return sum(node.op_type in QDQ_OPS for node in model.graph.node)


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for tensor in node.input:
            readers.setdefault(tensor, []).append(node)
    return readers


def _constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Initializers, ``Constant`` outputs, and ``Identity`` copies of them (the exporter
    shares a parameter used at several levels through ``Identity`` nodes)."""
    names = {initializer.name for initializer in model.graph.initializer}
    names.update(tensor for node in model.graph.node if node.op_type == "Constant" for tensor in node.output)
    grown = True
    while grown:
        copies = {node.output[0] for node in model.graph.node if node.op_type == "Identity" and node.input[0] in names}
        grown = not copies <= names
        names |= copies
    return names


def _remove_unread_qdq(model: onnx.ModelProto) -> None:
    """Deletes Q/DQ nodes whose outputs nothing reads, until none is left, then the
    initializers (scales, zero points) nothing reads any more."""
    outputs = {output.name for output in model.graph.output}
    while True:
        read = {tensor for node in model.graph.node for tensor in node.input} | outputs
        dead = [node for node in model.graph.node if node.op_type in QDQ_OPS and not any(t in read for t in node.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    read = {tensor for node in model.graph.node for tensor in node.input} | outputs
    for initializer in [init for init in model.graph.initializer if init.name not in read]:
        model.graph.initializer.remove(initializer)
