"""The readiness check on small graphs that break one rule each, and on real exports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ldexport.errors import LdexportError
from ldexport.trt.problem import Problem, format_problems, has_errors
from ldexport.trt.profile import profile_metadata
from ldexport.trt.readiness import MAX_TOPK_K, check_onnx


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
    extra_opsets: tuple[tuple[str, int], ...] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def _float(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _clean_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["y"], name="sigmoid"),
    ]
    return _model(nodes, [_float("x", [1, 3, 8, 8])], [_float("y", [1, 4, 8, 8])], [weight])


def _only(problems: list[Problem], rule: str) -> Problem:
    matching = [problem for problem in problems if problem.rule == rule]
    assert len(matching) == 1, problems
    return matching[0]


def test_clean_graph_has_no_problems() -> None:
    model = _clean_model()
    onnx.checker.check_model(model)
    problems = check_onnx(model)
    assert problems == []
    assert "ready for TensorRT 10.13" in format_problems(problems, trt_version="10.13")


def test_unsupported_op_names_the_node() -> None:
    nodes = [helper.make_node("Unique", ["x"], ["y"], name="dedupe")]
    model = _model(nodes, [_float("x", [5])], [_float("y", ["n"])])
    problem = _only(check_onnx(model), "unsupported-op")
    assert (problem.node, problem.op_type, problem.severity) == ("dedupe", "Unique", "error")
    assert "Unique" in problem.message and problem.fix


def test_op_added_in_a_later_release_depends_on_the_version() -> None:
    nodes = [helper.make_node("STFT", ["x", "step"], ["y"], name="stft", onesided=1)]
    step = numpy_helper.from_array(np.array(4, np.int64), "step")
    model = _model(nodes, [_float("x", [1, 64, 1])], [_float("y", [1, "f", "b", 2])], [step])
    problem = _only(check_onnx(model, trt_version="10.4"), "unsupported-op")
    assert problem.node == "stft" and "10.5" in problem.message
    assert "unsupported-op" not in {p.rule for p in check_onnx(model, trt_version="10.13")}


def test_topk_k_above_the_limit_from_an_initializer() -> None:
    k = numpy_helper.from_array(np.array([5000], np.int64), "k")
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="pre_nms_topk")]
    outputs = [_float("v", [1, 5000]), helper.make_tensor_value_info("i", TensorProto.INT64, [1, 5000])]
    model = _model(nodes, [_float("x", [1, 8000])], outputs, [k])
    problem = _only(check_onnx(model), "topk-k")
    assert problem.node == "pre_nms_topk" and problem.severity == "error"
    assert "5000" in problem.message and str(MAX_TOPK_K) in problem.message


def test_topk_k_from_a_constant_node_at_the_limit_is_fine() -> None:
    nodes = [
        helper.make_node("Constant", [], ["k"], name="k_const",
                         value=numpy_helper.from_array(np.array([MAX_TOPK_K], np.int64))),
        helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk"),
    ]
    outputs = [_float("v", [1, MAX_TOPK_K]),
               helper.make_tensor_value_info("i", TensorProto.INT64, [1, MAX_TOPK_K])]
    model = _model(nodes, [_float("x", [1, 8000])], outputs)
    assert check_onnx(model) == []


def test_topk_k_bounded_by_min_and_unbounded_k() -> None:
    # K = Min(num_anchors, 1000): the bound 1000 is enough.
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape", start=1),
        helper.make_node("Min", ["shape", "limit"], ["k"], name="k_min"),
        helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk"),
    ]
    limit = numpy_helper.from_array(np.array([1000], np.int64), "limit")
    outputs = [_float("v", [1, "k"]), helper.make_tensor_value_info("i", TensorProto.INT64, [1, "k"])]
    model = _model(nodes, [_float("x", [1, 20000])], outputs, [limit])
    assert check_onnx(model) == []
    # K = the input width itself: not provable, a warning only.
    nodes[1] = helper.make_node("Identity", ["shape"], ["k"], name="k_id")
    model = _model(nodes, [_float("x", [1, 20000])], outputs, [limit])
    problem = _only(check_onnx(model), "topk-k")
    assert problem.node == "topk" and problem.severity == "warning"
    assert not has_errors(check_onnx(model))


def test_topk_unsorted_is_an_error() -> None:
    k = numpy_helper.from_array(np.array([10], np.int64), "k")
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_unsorted", sorted=0)]
    outputs = [_float("v", [1, 10]), helper.make_tensor_value_info("i", TensorProto.INT64, [1, 10])]
    model = _model(nodes, [_float("x", [1, 100])], outputs, [k])
    assert _only(check_onnx(model), "topk-sorted").node == "topk_unsorted"


def test_float64_initializer_is_reported_on_its_consumer() -> None:
    scale = numpy_helper.from_array(np.array([2.0]), "scale64")  # numpy's default float64
    nodes = [helper.make_node("Mul", ["x", "scale64"], ["y"], name="decode/scale")]
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [3])
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [3])], [y], [scale])
    problems = check_onnx(model)
    by_node = {p.node: p for p in problems if p.rule == "float64"}
    assert set(by_node) == {"x", "decode/scale"}
    assert "initializer 'scale64' is float64" in by_node["decode/scale"].message
    assert by_node["x"].op_type == "graph input"


def test_cast_to_double_is_reported_once_on_the_cast() -> None:
    nodes = [
        helper.make_node("Cast", ["x"], ["x64"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["x64"], ["y"], name="back", to=TensorProto.FLOAT),
    ]
    model = _model(nodes, [_float("x", [3])], [_float("y", [3])])
    problems = check_onnx(model)
    problem = _only(problems, "float64")
    assert (problem.node, problem.op_type) == ("to_double", "Cast")
    assert "attribute to=float64" in problem.message and "output 'x64'" in problem.message


def test_uint32_input_names_the_type() -> None:
    nodes = [helper.make_node("Cast", ["ids"], ["y"], name="cast_ids", to=TensorProto.INT32)]
    ids = helper.make_tensor_value_info("ids", TensorProto.UINT32, [4])
    model = _model(nodes, [ids], [helper.make_tensor_value_info("y", TensorProto.INT32, [4])])
    problem = _only(check_onnx(model), "integer-type")
    assert (problem.node, problem.op_type) == ("ids", "graph input")
    assert "uint32" in problem.message


def test_int16_intermediate_is_reported_on_its_producer() -> None:
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], name="to_int16", to=TensorProto.INT16),
        helper.make_node("Cast", ["h"], ["y"], name="to_float", to=TensorProto.FLOAT),
    ]
    model = _model(nodes, [_float("x", [3])], [_float("y", [3])])
    problem = _only(check_onnx(model), "integer-type")
    assert problem.node == "to_int16" and "int16" in problem.message


def test_custom_domain_nms_is_an_error_with_a_fix() -> None:
    nodes = [helper.make_node("TRTBatchedNMS", ["boxes", "scores"], ["dets", "labels"],
                              name="batched_nms", domain="mmdeploy")]
    inputs = [_float("boxes", [1, 100, 1, 4]), _float("scores", [1, 100, 3])]
    outputs = [_float("dets", [1, 10, 5]), helper.make_tensor_value_info("labels", TensorProto.INT32, [1, 10])]
    model = _model(nodes, inputs, outputs, extra_opsets=(("mmdeploy", 1),))
    problem = _only(check_onnx(model), "custom-op")
    assert (problem.node, problem.op_type) == ("batched_nms", "mmdeploy::TRTBatchedNMS")
    assert "NonMaxSuppression" in problem.fix and "EfficientNMS_TRT" in problem.fix


def test_other_domains_are_errors_but_efficient_nms_plugin_is_accepted() -> None:
    fused = helper.make_node("FusedConv", ["x", "w"], ["c"], name="fused", domain="com.microsoft")
    nms = helper.make_node("EfficientNMS_TRT", ["c", "s"], ["num", "boxes", "scores", "classes"],
                           name="efficient_nms", domain="TRT", max_output_boxes=10)
    inputs = [_float("x", [1, 100, 4]), _float("w", [4]), _float("s", [1, 100, 3])]
    outputs = [helper.make_tensor_value_info("num", TensorProto.INT32, [1, 1]), _float("boxes", [1, 10, 4]),
               _float("scores", [1, 10]), helper.make_tensor_value_info("classes", TensorProto.INT32, [1, 10])]
    model = _model([fused, nms], inputs, outputs, extra_opsets=(("com.microsoft", 1), ("TRT", 1)))
    problems = check_onnx(model)
    assert [(p.node, p.rule) for p in problems] == [("fused", "custom-op")]
    assert "com.microsoft" in problems[0].message


def _dynamic_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["images"], ["y"], name="relu")]
    return _model(nodes, [_float("images", ["N", 3, "H", "W"])], [_float("y", ["N", 3, "H", "W"])])


def test_profile_missing_an_input_and_outside_the_graph() -> None:
    model = _dynamic_model()
    # Without any profile: a warning (a profile can still be given at build time).
    problem = _only(check_onnx(model), "profile")
    assert (problem.node, problem.severity) == ("images", "warning")
    # A profile that does not cover the dynamic input.
    problems = check_onnx(model, profile={"other": ((1, 3), (1, 3), (1, 3))})
    assert {(p.node, p.severity) for p in problems if p.rule == "profile"} == {
        ("images", "error"), ("other", "error")}
    # A profile that moves the fixed channel axis, and one with min > opt.
    bad = {"images": ((1, 3, 320, 320), (1, 4, 640, 640), (1, 3, 1024, 1024))}
    problem = _only(check_onnx(model, profile=bad), "profile")
    assert problem.node == "images" and "axis 1" in problem.message and "fixes it at 3" in problem.message
    bad = {"images": ((1, 3, 800, 320), (1, 3, 640, 640), (1, 3, 1024, 1024))}
    assert "axis 2" in _only(check_onnx(model, profile=bad), "profile").message
    good = {"images": ((1, 3, 320, 320), (1, 3, 640, 640), (2, 3, 1024, 1024))}
    assert check_onnx(model, profile=good) == []


def test_profile_from_metadata_is_checked() -> None:
    model = _dynamic_model()
    good = {"images": ((1, 3, 320, 320), (1, 3, 640, 640), (1, 3, 1024, 1024))}
    helper.set_model_props(model, profile_metadata(good))
    assert check_onnx(model) == []
    helper.set_model_props(model, {"input_min_shape": '{"images": [1, 3, 320, 320]}'})
    assert _only(check_onnx(model), "metadata").severity == "error"


def test_local_function_bodies_are_checked() -> None:
    body = [helper.make_node("Unique", ["a"], ["b"], name="inner_unique")]
    function = helper.make_function("local", "Dedupe", ["a"], ["b"], body,
                                     [helper.make_opsetid("", 17)])
    call = helper.make_node("Dedupe", ["x"], ["y"], name="call", domain="local")
    model = _model([call], [_float("x", [5])], [_float("y", ["n"])], extra_opsets=(("local", 1),))
    model.functions.append(function)
    problem = _only(check_onnx(model), "unsupported-op")
    assert problem.node == "call/inner_unique"


def test_non_10x_version_is_a_user_error() -> None:
    with pytest.raises(LdexportError, match="10.x"):
        check_onnx(_clean_model(), trt_version="8.6")


class _TinyDetector(torch.nn.Module):
    """A conv, a distribution decode (softmax . project) and a top-k, as the deploy graph."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("project", torch.linspace(0, 7, 8))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(images).flatten(2).transpose(1, 2)  # [N, A, 8]
        distances = features.softmax(-1) @ self.project  # [N, A]
        scores, indices = distances.topk(16, dim=1)
        return scores, indices


def test_real_torch_export_passes(tmp_path) -> None:
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        _TinyDetector().eval(), (torch.rand(1, 3, 32, 32),), str(path), dynamo=False,
        input_names=["images"], output_names=["scores", "indices"], opset_version=17,
        dynamic_axes={"images": {0: "N", 2: "H", 3: "W"}},
    )
    model = onnx.load(str(path))
    profile = {"images": ((1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 128, 128))}
    problems = check_onnx(model, profile=profile)
    assert not has_errors(problems), format_problems(problems)
    assert problems == []
