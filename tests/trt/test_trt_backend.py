"""Detecting a real TensorRT, the decode-layer pattern, and clean errors without TensorRT."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from ldexport.errors import LdexportError
from ldexport.trt.backend import backend_missing_reason, tensorrt_missing_reason
from ldexport.trt.onnx_ops import op_support, parse_trt_version
from ldexport.trt.precision import DECODE_PATTERN, is_decode_layer


def test_stub_only_tensorrt_is_not_mistaken_for_the_real_one() -> None:
    try:
        module = importlib.import_module("tensorrt")
    except ImportError:
        pytest.skip("no tensorrt package at all (neither stubs nor TensorRT)")
    real = getattr(module, "__file__", None) is not None and hasattr(module, "Builder")
    assert (tensorrt_missing_reason() is None) == real


@pytest.mark.parametrize(
    ("name", "metadata", "expected"),
    [
        ("/decode/Softmax", "", True),
        ("/head/decode/MatMul_1", "", True),
        ("decode/distance2bbox", "", True),
        ("ForeignNode[/decode/Mul...]", "", True),
        ("(Unnamed Layer* 12) [Shuffle]", "[ONNX Layer: /decode/Reshape]", True),
        ("/decoder/Conv", "", False),
        ("/head/reg/Conv", "[ONNX Layer: /head/reg/Conv]", False),
        ("my_decode/x", "", False),
    ],
)
def test_decode_layer_pattern(name: str, metadata: str, expected: bool) -> None:
    assert is_decode_layer(name, metadata, DECODE_PATTERN) is expected


def test_op_table_versions() -> None:
    assert parse_trt_version("10.13.0.35") == (10, 13)
    assert op_support("Conv", (10, 0)) == "supported"
    assert op_support("Attention", (10, 13)) == "later"
    assert op_support("Attention", (10, 14)) == "supported"
    assert op_support("NonZero", (10, 13)) == "supported"
    assert op_support("Unique", (10, 13)) == "unsupported"
    assert op_support("NotAnOp", (10, 13)) == "unlisted"


@pytest.mark.skipif(backend_missing_reason() is None, reason="a real TensorRT and CUDA are here")
def test_build_and_run_without_tensorrt_raise_user_errors(tiny_onnx: Path, tmp_path: Path) -> None:
    from ldexport.trt.build import build_engine
    from ldexport.trt.engine import load_engine
    from ldexport.trt.runner import TensorRTRunner

    with pytest.raises(LdexportError, match="TensorRT/CUDA is not available"):
        build_engine(tiny_onnx, tmp_path / "tiny.engine")
    engine = tmp_path / "some.engine"
    engine.write_bytes(b"x")
    with pytest.raises(LdexportError, match="TensorRT/CUDA is not available"):
        load_engine(engine)
    with pytest.raises(LdexportError, match="TensorRT/CUDA is not available"):
        TensorRTRunner(engine)


def test_output_buffers_grow_and_reshape_what_tensorrt_wrote() -> None:
    # the runner's IOutputAllocator state, on CPU memory: the same logic as on the GPU
    import torch

    from ldexport.trt.runner import _OutputBuffers

    outputs = _OutputBuffers(torch.device("cpu"))
    first = outputs.buffer("boxes", 24)
    assert outputs.buffer("boxes", 16) == first  # large enough: reused
    values = torch.arange(6, dtype=torch.float32)
    outputs.buffers["boxes"][:24].copy_(values.view(torch.uint8))  # what TensorRT writes
    outputs.shapes["boxes"] = (3, 2)
    assert outputs.output("boxes", torch.float32).tolist() == [[0, 1], [2, 3], [4, 5]]
    outputs.buffer("boxes", 64)
    assert outputs.buffers["boxes"].numel() >= 64
    outputs.shapes["empty"] = (0, 3)
    outputs.buffer("empty", 1)
    assert outputs.output("empty", torch.int64).shape == (0, 3)
    with pytest.raises(LdexportError, match="did not report output 'scores'"):
        outputs.output("scores", torch.float32)
