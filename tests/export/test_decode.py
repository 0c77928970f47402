"""The decoding in the graph: the same boxes and scores as the model's own decoding."""

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import TEST_CFG

from ldexport.export.decode import FixedPoints, GridPoints
from ldexport.export.deploy import build_deploy_model, featmap_sizes
from ldexport.model.bbox import anchor_centers
from ldexport.model.priors import level_anchors
from ldexport.parity.runners import decode_dense
from ldexport.trt.precision import DECODE_PATTERN

STRIDES = (8, 16, 32, 64, 128)


def _reference(detector, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        cls_scores, bbox_preds = detector(images)
        boxes, scores = decode_dense(detector.head, cls_scores, bbox_preds, tuple(images.shape[-2:]))
    return boxes.numpy(), scores.numpy()


@pytest.mark.parametrize("size", [(1, 1), (4, 5), (7, 3), (100, 168)])
def test_anchor_points_are_the_models_anchor_centres(size):
    for level, stride in enumerate(STRIDES):
        expected = anchor_centers(level_anchors(size, stride, 8.0))
        assert torch.equal(GridPoints(STRIDES, 8.0)(level, *size), expected)
        assert torch.equal(FixedPoints(STRIDES, 8.0, [size] * 5)(level, 0, 0), expected)


def test_eager_wrapper_decodes_like_the_model(detector):
    images = torch.randn(2, 3, 96, 160)
    deploy = build_deploy_model(detector, test_cfg=TEST_CFG)
    with torch.no_grad():
        boxes, scores = deploy(images)
    expected_boxes, expected_scores = _reference(detector, images)
    assert boxes.shape == (2, 12 * 20 + 6 * 10 + 3 * 5 + 2 * 3 + 1 * 2, 4)
    np.testing.assert_allclose(boxes.numpy(), expected_boxes, atol=1e-4, rtol=0)
    np.testing.assert_allclose(scores.numpy(), expected_scores, atol=1e-6, rtol=0)
    # boxes are clipped to the input, and some reach its border
    assert boxes[..., 2].max() == 160 and boxes[..., 3].max() == 96 and boxes.min() == 0


@pytest.mark.parametrize("shape", [(1, 3, 128, 160), (2, 3, 96, 64), (3, 3, 224, 320), (1, 3, 64, 448)])
def test_dynamic_graph_decodes_any_size_in_pixels(detector, graph, shape):
    session = ort.InferenceSession(str(graph(dynamic=True)), providers=["CPUExecutionProvider"])
    images = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    boxes, scores = session.run(["boxes", "scores"], {"images": images.numpy()})
    expected_boxes, expected_scores = _reference(detector, images)
    np.testing.assert_allclose(boxes, expected_boxes, atol=1e-3, rtol=0)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5, rtol=0)


def test_static_graph_has_constant_anchor_points(detector, graph):
    static = onnx.load(str(graph(dynamic=False)))
    dynamic = onnx.load(str(graph(dynamic=True)))
    assert "Range" not in {node.op_type for node in static.graph.node}
    assert sum(node.op_type == "Range" for node in dynamic.graph.node) == 2 * len(STRIDES)
    points = {init.name: init for init in static.graph.initializer if "points" in init.name}
    sizes = featmap_sizes(detector, (128, 160))
    assert sorted(onnx.numpy_helper.to_array(p).shape for p in points.values()) == sorted((h * w, 2) for h, w in sizes)


def test_static_graph_decodes_in_pixels(detector, graph):
    session = ort.InferenceSession(str(graph(dynamic=False)), providers=["CPUExecutionProvider"])
    images = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    boxes, scores = session.run(["boxes", "scores"], {"images": images.numpy()})
    expected_boxes, expected_scores = _reference(detector, images)
    np.testing.assert_allclose(boxes, expected_boxes, atol=1e-3, rtol=0)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="images"):
        session.run(None, {"images": np.zeros((1, 3, 96, 160), np.float32)})


def test_decode_nodes_are_named_under_decode_scope(graph):
    model = onnx.load(str(graph(nms="onnx", preprocess=True, simplify=True)))
    pattern = re.compile(DECODE_PATTERN)
    by_type: dict[str, list[str]] = {}
    for node in model.graph.node:
        by_type.setdefault(node.op_type, []).append(node.name)
    for op_type in ("Sigmoid", "Softmax", "MatMul", "Clip", "Min", "TopK", "NonMaxSuppression"):
        assert by_type[op_type] and all(pattern.search(name) for name in by_type[op_type]), op_type
    # neither the network nor the preprocessing is under decode/
    assert not any(pattern.search(name) for name in by_type["Conv"])
    consumers = [node.name for node in model.graph.node if "images" in node.input]
    assert consumers and all(name.startswith("/preprocess/") for name in consumers)
