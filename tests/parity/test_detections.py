"""Detection-level matching, and predict's post-processing of dense outputs."""

import numpy as np
import torch
from export_helpers import TEST_CFG

from ldexport.data.input_spec import InputSpec
from ldexport.model import TestConfig
from ldexport.model.detector import Detections
from ldexport.parity.detections import detections_from_dense, detections_from_outputs, match_detections, pad_detections
from ldexport.parity.runners import TorchRunner


def _detections(boxes, scores, labels) -> Detections:
    return Detections(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores), torch.tensor(labels))


def test_matching_needs_the_label_and_iou_099_one_to_one():
    reference = _detections([[0, 0, 100, 100], [0, 0, 100, 100], [200, 200, 300, 300]], [0.9, 0.8, 0.7], [0, 1, 2])
    same = _detections([[0, 0, 100, 100.5], [0, 0, 100, 100], [200, 200, 300, 300]], [0.9, 0.8, 0.7], [0, 1, 2])
    assert match_detections([reference], [same]).passed
    wrong_label = _detections([[0, 0, 100, 100], [0, 0, 100, 100], [200, 200, 300, 300]], [0.9, 0.8, 0.7], [0, 1, 1])
    match = match_detections([reference], [wrong_label])
    assert (match.matched, match.reference_recall, match.candidate_precision) == (2, 2 / 3, 2 / 3) and not match.passed
    shifted = _detections([[0, 0, 100, 100], [0, 0, 100, 100], [202, 200, 302, 300]], [0.9, 0.8, 0.7], [0, 1, 2])
    assert match_detections([reference], [shifted]).matched == 2  # IoU 0.96
    extra = _detections([[0, 0, 100, 100]] * 2 + [[200, 200, 300, 300]] * 2, [0.9, 0.8, 0.7, 0.6], [0, 1, 2, 2])
    match = match_detections([reference], [extra])
    assert match.matched == 3 and match.reference_recall == 1.0 and match.candidate_precision == 0.75
    empty = _detections(np.zeros((0, 4)), [], [])
    assert match_detections([empty], [empty]).passed


def test_a_nan_score_in_a_matched_pair_is_an_infinite_error_wherever_it_is():
    reference = _detections([[0, 0, 100, 100], [200, 200, 300, 300]], [0.9, 0.7], [0, 1])
    for index in (0, 1):
        scores = [0.9, 0.7]
        scores[index] = float("nan")
        match = match_detections([reference], [_detections([[0, 0, 100, 100], [200, 200, 300, 300]], scores, [0, 1])])
        # matched by box and label, but the score error is unbounded, first pair or not
        assert match.matched == 2 and match.max_score_error == np.inf and match.mean_score_error == np.inf


def test_padding_round_trips():
    found = [_detections([[1, 2, 3, 4]], [0.5], [2]), _detections(np.zeros((0, 4)), [], [])]
    outputs = pad_detections(found, max_det=5)
    assert outputs["num_dets"].tolist() == [[1], [0]] and outputs["det_boxes"].shape == (2, 5, 4)
    back = detections_from_outputs(outputs)
    assert torch.equal(back[0].boxes, found[0].boxes) and back[0].labels.tolist() == [2] and len(back[1].scores) == 0


def test_dense_post_processing_is_predicts(detector):
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    for cfg in (TEST_CFG, TestConfig(nms_pre=7, max_per_img=5, min_bbox_size=20.0)):
        result = TorchRunner(detector, test_cfg=cfg, spec=InputSpec()).run({"images": images.numpy()})
        found = detections_from_dense(result.outputs["boxes"], result.outputs["scores"], result.featmap_sizes, cfg)
        for actual, expected in zip(found, result.detections):
            assert torch.allclose(actual.boxes, expected.boxes, atol=1e-4) and torch.equal(actual.labels, expected.labels)
            assert torch.allclose(actual.scores, expected.scores)
        assert sum(len(d.scores) for d in found) > 0
