"""NMS in the graph: predict's candidates, thresholds and class-aware suppression."""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import TEST_CFG, export_tiny
from torch import nn

from ldexport.errors import LdexportError
from ldexport.export.deploy import build_deploy_model
from ldexport.export.nms import MAX_TOPK, OnnxNMS
from ldexport.model import TestConfig
from ldexport.parity.detections import detections_from_outputs, match_detections
from ldexport.trt.readiness import check_onnx


class _OneLevel(nn.Module):
    """An NMS stage on one level of given boxes and scores (to export it alone)."""

    def __init__(self, stage: nn.Module):
        super().__init__()
        self.stage = stage

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor):
        return self.stage([boxes], [scores])


def _export_stage(stage: nn.Module, boxes: torch.Tensor, scores: torch.Tensor, path) -> ort.InferenceSession:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            _OneLevel(stage), (boxes, scores), str(path), dynamo=False, opset_version=17, input_names=["boxes", "scores"]
        )
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _handmade() -> tuple[torch.Tensor, torch.Tensor]:
    """Six anchors, two classes, each probing one rule (see the test)."""
    boxes = torch.tensor(
        [
            [0, 0, 10, 10],  # 0: class 0, 0.9: kept
            [0, 0, 10, 6],  # 1: class 0, IoU with 0 exactly 0.6, not above: kept
            [0, 0, 10, 6.5],  # 2: class 0, IoU 0.65 with 0: suppressed
            [0, 0, 10, 10],  # 3: class 1, same box as 0: another class, kept
            [5, 5, 5, 9],  # 4: zero width: dropped (min_bbox_size 0)
            [50, 50, 60, 60],  # 5: class 0 at exactly score_thr: dropped; class 1 just above: kept
        ],
        dtype=torch.float32,
    )[None]
    scores = torch.tensor(
        [[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.0, 0.85], [0.95, 0.0], [0.05, 0.0500001]], dtype=torch.float32
    )[None]
    return boxes, scores


@pytest.mark.parametrize("max_det,expected", [(100, [(0, 0), (3, 1), (1, 0), (5, 1)]), (2, [(0, 0), (3, 1)])])
def test_thresholds_are_predicts_in_pytorch_and_onnxruntime(tmp_path, max_det, expected):
    boxes, scores = _handmade()
    stage = OnnxNMS(nms_pre=1000, score_thr=0.05, iou_threshold=0.6, max_det=max_det, min_bbox_size=0)
    session = _export_stage(stage, boxes, scores, tmp_path / "nms.onnx")
    graph = dict(zip(("num_dets", "det_boxes", "det_scores", "det_labels"), session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})))
    with torch.no_grad():
        eager = dict(zip(("num_dets", "det_boxes", "det_scores", "det_labels"), (t.numpy() for t in stage([boxes], [scores]))))
    for outputs in (graph, eager):
        count = int(outputs["num_dets"][0, 0])
        assert count == len(expected)
        assert outputs["det_labels"][0, :count].tolist() == [label for _, label in expected]
        np.testing.assert_array_equal(outputs["det_boxes"][0, :count], boxes[0, [anchor for anchor, _ in expected]].numpy())
        np.testing.assert_array_equal(outputs["det_scores"][0, :count], scores[0, [a for a, _ in expected], [c for _, c in expected]].numpy())
        # zero-padded past num_dets
        assert not outputs["det_boxes"][0, count:].any() and not outputs["det_scores"][0, count:].any()
        assert outputs["num_dets"].dtype == np.int32 and outputs["det_labels"].dtype == np.int32


def test_per_level_topk_keeps_the_best_anchor_class_pairs(tmp_path):
    boxes = torch.tensor([[i * 20.0, 0, i * 20.0 + 10, 10] for i in range(4)])[None]
    scores = torch.tensor([[0.3, 0.6], [0.9, 0.1], [0.5, 0.4], [0.2, 0.7]])[None]
    stage = OnnxNMS(nms_pre=3, score_thr=0.05, iou_threshold=0.6, max_det=10, min_bbox_size=0)
    session = _export_stage(stage, boxes, scores, tmp_path / "topk.onnx")
    outputs = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})
    assert outputs[0][0, 0] == 3
    np.testing.assert_allclose(outputs[2][0, :3], [0.9, 0.7, 0.6])
    assert outputs[3][0, :3].tolist() == [0, 1, 1]


def test_eager_wrapper_detects_like_predict(detector):
    images = torch.randn(3, 3, 160, 96, generator=torch.Generator().manual_seed(3))
    deploy = build_deploy_model(detector, test_cfg=TEST_CFG, nms="onnx")
    with torch.no_grad():
        outputs = dict(zip(deploy.output_names, (t.numpy() for t in deploy(images))))
        expected = detector.predict(images, cfg=TEST_CFG)
    found = detections_from_outputs(outputs)
    match = match_detections(expected, found)
    assert match.passed and match.reference > 30 and match.max_box_error < 1e-4


@pytest.mark.parametrize("shape", [(3, 3, 128, 160), (1, 3, 320, 224), (2, 3, 64, 64)])
def test_onnx_nms_graph_detects_like_predict(detector, graph, shape):
    session = ort.InferenceSession(str(graph(dynamic=True, nms="onnx")), providers=["CPUExecutionProvider"])
    images = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    outputs = dict(zip(("num_dets", "det_boxes", "det_scores", "det_labels"), session.run(None, {"images": images.numpy()})))
    expected = detector.predict(images, cfg=TEST_CFG)
    assert outputs["num_dets"][:, 0].tolist() == [len(found.scores) for found in expected]
    match = match_detections(expected, detections_from_outputs(outputs))
    assert match.passed and match.reference > 0
    assert match.max_box_error <= 1e-3 and match.max_score_error <= 1e-5


def test_efficient_nms_graph_structure(graph):
    model = onnx.load(str(graph(nms="efficient")))
    (plugin,) = [node for node in model.graph.node if node.op_type == "EfficientNMS_TRT"]
    assert plugin.domain == "TRT" and {op.domain: op.version for op in model.opset_import}["TRT"] == 1
    attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in plugin.attribute}
    assert attributes["score_threshold"] == pytest.approx(TEST_CFG.score_thr)
    assert attributes["iou_threshold"] == pytest.approx(TEST_CFG.iou_threshold)
    assert attributes["max_output_boxes"] == TEST_CFG.max_per_img
    assert attributes["background_class"] == -1 and attributes["box_coding"] == 0 and attributes["score_activation"] == 0
    assert attributes["plugin_version"] == b"1"
    assert list(plugin.output) == ["num_dets", "det_boxes", "det_scores", "det_labels"]
    types = {value.name: value.type.tensor_type for value in model.graph.output}
    assert [types[name].elem_type for name in plugin.output] == [onnx.TensorProto.INT32, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT, onnx.TensorProto.INT32]
    assert [dim.dim_value for dim in types["det_boxes"].shape.dim] == [1, 100, 4]
    assert "/decode/nms/" in plugin.name
    assert check_onnx(model) == []


def test_efficient_nms_plugin_gets_predicts_candidates(detector, graph, tmp_path):
    """The plugin's inputs (run in onnxruntime without the plugin): predict's candidates,
    ``[N, B, 4]`` boxes and ``[N, B, C]`` scores with only the candidate's class set."""
    path = graph(nms="efficient")
    plugin = next(node for node in onnx.load(str(path)).graph.node if node.op_type == "EfficientNMS_TRT")
    onnx.utils.extract_model(str(path), str(tmp_path / "inputs.onnx"), ["images"], list(plugin.input))
    images = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(5))
    session = ort.InferenceSession(str(tmp_path / "inputs.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(None, {"images": images.numpy()})
    assert boxes.shape == (1, 5 * TEST_CFG.nms_pre, 4) and scores.shape == (1, 5 * TEST_CFG.nms_pre, 3)
    assert ((scores > 0).sum(-1) <= 1).all()
    kept = scores.max(-1) > 0
    (expected,) = detector.predict(images, cfg=TestConfig(iou_threshold=1.0, max_per_img=5000))
    assert kept.sum() == len(expected.scores)
    order = np.argsort(-scores.max(-1)[kept], kind="stable")
    np.testing.assert_allclose(scores.max(-1)[kept][order], expected.scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(boxes[kept][order], expected.boxes.numpy(), atol=1e-3)
    np.testing.assert_array_equal(scores.argmax(-1)[kept][order], expected.labels.numpy())


def test_topk_stays_within_tensorrts_limit(graph):
    model = onnx.load(str(graph(dynamic=True, nms="onnx")))
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    constants.update({node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t) for node in model.graph.node if node.op_type == "Constant"})
    ks = [int(constants[node.input[1]].item()) for node in model.graph.node if node.op_type == "TopK"]
    assert sorted(ks) == [100] + [1000] * 5
    assert check_onnx(model) == []


@pytest.mark.parametrize(
    "cfg,message",
    [
        (TestConfig(nms_pre=MAX_TOPK + 1), "nms_pre"),
        (TestConfig(max_per_img=0), "max_per_img"),
        (TestConfig(score_thr=-0.1), "score_thr"),
        (TestConfig(iou_threshold=1.5), "iou_threshold"),
    ],
)
def test_nms_settings_tensorrt_cannot_take_are_user_errors(detector, cfg, message):
    with pytest.raises(LdexportError, match=message):
        build_deploy_model(detector, test_cfg=cfg, nms="onnx")


def test_efficient_nms_plugin_inputs_hold_nothing_its_filter_keeps_but_candidates(detector, tmp_path):
    """TensorRT's EfficientNMS_TRT keeps every score ``>= score_threshold`` and suppresses
    at ``IoU >= iou_threshold``; predict keeps scores ``> score_thr`` and suppresses at
    ``IoU > iou_threshold``. With ``score_thr=0`` a zero filler would pass the plugin's
    filter: every other class of every candidate would become a detection of score 0."""
    from export_helpers import export_tiny

    cfg = TestConfig(score_thr=0.0, iou_threshold=0.6)
    path = export_tiny(detector, tmp_path / "efficient.onnx", test_cfg=cfg, nms="efficient")
    plugin = next(node for node in onnx.load(str(path)).graph.node if node.op_type == "EfficientNMS_TRT")
    attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in plugin.attribute}
    onnx.utils.extract_model(str(path), str(tmp_path / "inputs.onnx"), ["images"], list(plugin.input))
    images = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(7))
    session = ort.InferenceSession(str(tmp_path / "inputs.onnx"), providers=["CPUExecutionProvider"])
    _, scores = session.run(None, {"images": images.numpy()})
    (expected,) = detector.predict(images, cfg=TestConfig(score_thr=0.0, iou_threshold=1.0, max_per_img=5000))
    # exactly predict's candidate pairs pass the plugin's filter (score >= its threshold)
    assert (scores >= attributes["score_threshold"]).sum() == len(expected.scores) > 0
    # the plugin's threshold is the float32 just above iou_threshold: IoU >= it <=> IoU > 0.6
    threshold = np.float32(attributes["iou_threshold"])
    assert threshold > np.float32(cfg.iou_threshold) and np.nextafter(np.float32(cfg.iou_threshold), np.float32(1)) == threshold
