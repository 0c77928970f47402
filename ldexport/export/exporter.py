"""Writes a deploy wrapper to an ONNX file: trace, check, simplify, metadata, rename.

The graph is traced with ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based
exporter). On torch 2.13 the ``torch.export`` (dynamo) exporter was tried on the same
wrapper and rejected:

- it specialises dimensions that are 1 in the example input: a trace at 128x160, where the
  stride-128 level is one cell high, produced a graph that failed to reshape at 224x320.
  The TorchScript exporter records every size as a ``Shape`` computation instead, and its
  graphs were correct at every size tested;
- its nodes are named ``node_<op>_<n>``, while the TorchScript exporter names them by
  module path (``/decode/MatMul``), which is how TensorRT keeps the decoding in fp32;
- the in-graph NMS is an ``autograd.Function`` with a ``symbolic``: it runs eagerly (the
  wrapper can be checked against ``predict`` in PyTorch) and exports as one node.

The file appears at its path only when complete and checked (:func:`ldexport.io.atomic_path`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ldexport.errors import LdexportError
from ldexport.export.decode import FixedPoints
from ldexport.export.deploy import DENSE_OUTPUTS, DeployDetector
from ldexport.data.input_spec import INPUT_NAME
from ldexport.export.options import ExportOptions
from ldexport.io import atomic_path, check_writable

_LOG = logging.getLogger(__name__)

Dim = int | str


def export_onnx(
    deploy: DeployDetector,
    path: str | Path,
    *,
    options: ExportOptions,
    metadata: Mapping[str, str],
) -> Path:
    """Exports ``deploy`` to ``path``.

    Args:
        deploy: the deploy wrapper (:func:`~ldexport.export.deploy.build_deploy_model`).
        path: the ``.onnx`` file to write (replaced if it exists).
        options: shape, opset, simplification.
        metadata: ``metadata_props`` (:func:`~ldexport.export.metadata.export_metadata`).

    Returns:
        The path written.

    Raises:
        LdexportError: bad options, or an output folder that does not exist.
    """
    import onnx

    options.validate()
    if options.dynamic and isinstance(deploy.decode.points, FixedPoints):
        raise LdexportError("a dynamic export needs anchor points computed in the graph: build_deploy_model(static_size=None)")
    path = Path(path)
    check_writable(path)  # before the trace, not after it
    example = _example_input(options)
    with torch.no_grad():
        example_outputs = deploy(example)
    names = deploy.output_names
    with atomic_path(path) as temporary:
        _trace(deploy, example, str(temporary), names, options)
        model = onnx.load(str(temporary))
        if options.simplify:
            model = simplify(model)
        _set_output_dims(model, names, example_outputs, options.dynamic)
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        _check(model)
        onnx.save(model, str(temporary))
    return path


def _example_input(options: ExportOptions) -> Tensor:
    shape = options.input_shape(options.height, options.width, options.batch)
    generator = torch.Generator().manual_seed(0)
    if options.preprocess:
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return torch.randn(shape, generator=generator)


def _trace(deploy: DeployDetector, example: Tensor, path: str, names: Sequence[str], options: ExportOptions) -> None:
    dynamic_axes = None
    if options.dynamic:
        spatial = (1, 2) if options.preprocess else (2, 3)
        dynamic_axes = {INPUT_NAME: {0: "batch", spatial[0]: "height", spatial[1]: "width"}}
        dynamic_axes.update({name: {0: "batch"} for name in names})
        if options.nms == "none":
            dynamic_axes.update({name: {0: "batch", 1: "anchors"} for name in names})
    with warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice and tracer notes on shape values
        warnings.simplefilter("ignore")
        torch.onnx.export(
            deploy,
            (example,),
            path,
            dynamo=False,
            opset_version=options.opset,
            input_names=[INPUT_NAME],
            output_names=list(names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            custom_opsets={"TRT": 1} if options.nms == "efficient" else None,
        )


def simplify(model):  # noqa: ANN001, ANN201 - onnx types are imported lazily
    """The graph simplified by onnxslim (constant folding, shape-chain and redundant-node
    elimination); the graph as it is, with a log line, when onnxslim is not installed."""
    try:
        import onnxslim
    except ImportError:
        _LOG.warning("onnxslim is not installed: the graph is kept as traced (pip install onnxslim)")
        return model
    return onnxslim.slim(model)


def _set_output_dims(model, names: Sequence[str], outputs: Sequence[Tensor], dynamic: bool) -> None:  # noqa: ANN001
    """Writes each output's shape: the traced sizes, with ``batch`` (and ``anchors`` for
    the dense outputs) symbolic in a dynamic graph."""
    by_name = {output.name: output for output in model.graph.output}
    for name, tensor in zip(names, outputs):
        symbolic = {0: "batch", 1: "anchors"} if name in DENSE_OUTPUTS else {0: "batch"}
        dims = by_name[name].type.tensor_type.shape.dim
        for axis, size in enumerate(tensor.shape):
            dims[axis].Clear()
            if dynamic and axis in symbolic:
                dims[axis].dim_param = symbolic[axis]
            else:
                dims[axis].dim_value = int(size)


def _check(model) -> None:  # noqa: ANN001
    """The ONNX checker (full check, with shape inference) and strict shape inference.

    A failure here is a bug in the export, not a user error: it keeps its traceback.
    """
    import onnx

    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
