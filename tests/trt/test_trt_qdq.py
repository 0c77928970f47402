"""The readiness check's Q/DQ rule: what TensorRT's ONNX parser refuses or reinterprets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ldexport.trt.problem import Problem
from ldexport.trt.readiness import check_onnx


def _qdq_model(zero_point: np.ndarray | None, *, scale: float = 0.1) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> y, with that zero point (or none)."""
    initializers = [numpy_helper.from_array(np.array(scale, np.float32), "scale")]
    names = ["x", "scale"]
    if zero_point is not None:
        initializers.append(numpy_helper.from_array(zero_point, "zero"))
        names.append("zero")
    nodes = [
        helper.make_node("QuantizeLinear", names, ["q"], name="quant"),
        helper.make_node("DequantizeLinear", ["q", *names[1:]], ["y"], name="dequant"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _qdq(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.rule == "qdq"]


def test_symmetric_int8_qdq_is_ready() -> None:
    assert check_onnx(_qdq_model(np.array(0, np.int8))) == []


def test_nonzero_zero_point_is_refused_on_both_nodes() -> None:
    problems = _qdq(check_onnx(_qdq_model(np.array(3, np.int8))))
    assert [problem.node for problem in problems] == ["quant", "dequant"]
    assert all("symmetric" in problem.message and problem.severity == "error" for problem in problems)


def test_uint8_qdq_is_an_error_even_with_a_zero_zero_point() -> None:
    problems = _qdq(check_onnx(_qdq_model(np.array(0, np.uint8))))
    assert [problem.node for problem in problems] == ["quant", "dequant"]
    assert all("int8 instead" in problem.message for problem in problems)


def test_quantize_without_zero_point_is_uint8() -> None:
    problems = _qdq(check_onnx(_qdq_model(None)))
    assert {problem.node for problem in problems} == {"quant", "dequant"}
    assert "ONNX's default: uint8" in problems[0].message


def test_non_positive_scale_is_refused() -> None:
    problems = _qdq(check_onnx(_qdq_model(np.array(0, np.int8), scale=0.0)))
    assert len(problems) == 2 and all("positive" in problem.message for problem in problems)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(images))


def _onnxruntime_quantized(tmp_path: Path, name: str, **options: object) -> onnx.ModelProto:
    quantization = pytest.importorskip("onnxruntime.quantization")
    source = tmp_path / "tiny.onnx"
    if not source.is_file():
        torch.onnx.export(_Tiny().eval(), (torch.rand(1, 3, 16, 16),), str(source), dynamo=False,
                          input_names=["images"], output_names=["features"], opset_version=17)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.feeds = iter([{"images": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(2)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    target = tmp_path / name
    quantization.quantize_static(str(source), str(target), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 **options)
    return onnx.load(str(target))


def test_onnxruntime_default_quantization_is_not_ready(tmp_path: Path) -> None:
    # ONNX Runtime's defaults: asymmetric activations (non-zero zero points), int32 biases
    problems = _qdq(check_onnx(_onnxruntime_quantized(tmp_path, "default.onnx")))
    messages = " ".join(problem.message for problem in problems)
    assert "symmetric quantization" in messages and "DequantizeLinear of int32" in messages
    assert all(problem.severity == "error" for problem in problems)


def test_symmetric_int8_quantization_as_ldexport_writes_it_is_ready(tmp_path: Path) -> None:
    quantization = pytest.importorskip("onnxruntime.quantization")
    model = _onnxruntime_quantized(
        tmp_path, "symmetric.onnx",
        activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    assert check_onnx(model) == []
