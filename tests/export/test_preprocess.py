"""Preprocessing in the graph: uint8 BGR bytes in, the same detections as normalised RGB."""

import numpy as np
import onnx
import onnxruntime as ort
import torch
from export_helpers import EXPORT_SIZE, TEST_CFG

from ldexport.export.deploy import build_deploy_model
from ldexport.data.transforms import IMAGENET_MEAN as DEFAULT_MEAN, IMAGENET_STD as DEFAULT_STD
from ldexport.export.preprocess import Preprocess, with_bgr_input
from ldexport.parity.detections import detections_from_outputs, match_detections
from ldexport.data.input_spec import InputSpec
from ldexport.parity.runners import TorchRunner

NHWC = InputSpec(layout="NHWC", dtype="uint8", channel_order="BGR")


def _bgr_bytes(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def test_bgr_folded_into_the_stem_gives_the_rgb_models_outputs(detector):
    images = torch.from_numpy(_bgr_bytes(2, 96, 128))
    rgb = (images.flip(-1).permute(0, 3, 1, 2).float() - torch.tensor(DEFAULT_MEAN).reshape(1, 3, 1, 1)) / torch.tensor(
        DEFAULT_STD
    ).reshape(1, 3, 1, 1)
    folded = with_bgr_input(detector)
    with torch.no_grad():
        expected_cls, expected_reg = detector(rgb)
        cls_scores, bbox_preds = folded(Preprocess()(images))
    for actual, expected in zip(cls_scores + bbox_preds, expected_cls + expected_reg):
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    # the trained detector itself is untouched
    assert not torch.equal(folded.backbone.conv1.weight, detector.backbone.conv1.weight)
    assert torch.equal(folded.backbone.conv1.weight.flip(1), detector.backbone.conv1.weight)


def test_preprocessing_graph_takes_uint8_bgr_and_detects_like_predict(detector, graph):
    path = graph(nms="onnx", preprocess=True, simplify=True)
    model = onnx.load(str(path))
    (images_input,) = model.graph.input
    assert images_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [dim.dim_value for dim in images_input.type.tensor_type.shape.dim] == [1, *EXPORT_SIZE, 3]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = TorchRunner(detector, test_cfg=TEST_CFG, spec=NHWC, detections=True)
    for seed in range(3):
        feeds = {"images": _bgr_bytes(1, *EXPORT_SIZE, seed=seed)}
        outputs = dict(zip(("num_dets", "det_boxes", "det_scores", "det_labels"), session.run(None, feeds)))
        expected = reference.run(feeds)
        match = match_detections(expected.detections, detections_from_outputs(outputs))
        assert match.passed and match.reference > 10
        assert match.max_box_error <= 1e-3 and match.max_score_error <= 1e-5


def test_preprocessing_eager_wrapper_matches_the_reference_runner(detector):
    deploy = build_deploy_model(detector, test_cfg=TEST_CFG, preprocess=True)
    feeds = {"images": _bgr_bytes(2, 64, 96, seed=7)}
    reference = TorchRunner(detector, test_cfg=TEST_CFG, spec=NHWC)
    with torch.no_grad():
        boxes, scores = deploy(torch.from_numpy(feeds["images"]))
    expected = reference.infer(feeds)
    np.testing.assert_allclose(boxes.numpy(), expected["boxes"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(scores.numpy(), expected["scores"], atol=1e-5, rtol=0)
