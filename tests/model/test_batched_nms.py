"""Batched NMS and decoding against a plain greedy loop, box by box, image by image."""

import pytest
import torch
from torch import nn

from ldexport.model import TestConfig, build_detector
from ldexport.model.bbox import box_iou
from ldexport.model.detector import select_candidates, top_candidates
from ldexport.model import nms as nms_module
from ldexport.model.nms import batched_nms, nms, padded_batched_nms

from ldexport.model import ModelConfig

TINY = ModelConfig(depth=18, num_classes=3, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=2, norm_groups=8)


def _greedy_loop(boxes, scores, labels, iou_threshold):
    """mmcv's batched_nms written as the textbook loop (the oracle)."""
    offsets = labels.to(boxes) * (boxes.max() + 1)
    shifted = boxes + offsets[:, None]
    overlaps = box_iou(shifted, shifted, eps=0.0).tolist()
    threshold = torch.tensor(iou_threshold).item()  # mmcv's threshold is a C++ float: compared in float32
    keep = []
    for index in scores.sort(descending=True, stable=True).indices.tolist():
        if all(overlaps[k][index] <= threshold for k in keep):
            keep.append(index)
    return keep


def _clustered(seed, count=300, classes=3):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(8, 2, generator=generator) * 200
    pick = torch.randint(0, 8, (count,), generator=generator)
    xy = centres[pick] + torch.randn(count, 2, generator=generator) * 6
    wh = 20 + torch.rand(count, 2, generator=generator) * 20
    boxes = torch.cat((xy, xy + wh), dim=1)
    return boxes, torch.rand(count, generator=generator), torch.randint(0, classes, (count,), generator=generator)


def test_batched_nms_equals_the_greedy_loop():
    for seed in range(5):
        boxes, scores, labels = _clustered(seed)
        for threshold in (0.3, 0.6):
            assert batched_nms(boxes, scores, labels, threshold).tolist() == _greedy_loop(boxes, scores, labels, threshold)


def test_a_long_suppression_chain_is_solved_exactly():
    # Each box overlaps only its neighbours above the threshold, with falling scores: the
    # greedy answer keeps every other box, which takes one fixed-point round per link.
    boxes = torch.tensor([[i * 2.0, 0.0, i * 2.0 + 10.0, 10.0] for i in range(40)])
    scores = torch.linspace(1.0, 0.5, 40)
    kept = nms(boxes, scores, 0.5)
    assert kept.tolist() == _greedy_loop(boxes, scores, torch.zeros(40, dtype=torch.long), 0.5)
    assert kept.tolist() == list(range(0, 40, 2))


@pytest.mark.parametrize("length", range(1, 9))
def test_chains_of_every_length_end_at_the_fixed_point(length):
    # Rounds come in pairs between read-backs: a chain of either parity must stop at the
    # greedy answer, not one round short or past it.
    boxes = torch.tensor([[i * 2.0, 0.0, i * 2.0 + 10.0, 10.0] for i in range(length)])
    scores = torch.linspace(1.0, 0.5, length)
    assert nms(boxes, scores, 0.5).tolist() == list(range(0, length, 2))


def test_images_in_chunks_equal_the_batch_in_one(monkeypatch):
    images = [_clustered(seed, count) for seed, count in ((3, 200), (4, 150), (5, 180))]
    boxes = torch.zeros(3, 200, 4)
    scores, labels = torch.zeros(3, 200), torch.zeros(3, 200, dtype=torch.long)
    valid = torch.zeros(3, 200, dtype=torch.bool)
    for i, (b, s, l) in enumerate(images):
        boxes[i, : len(s)], scores[i, : len(s)], labels[i, : len(s)], valid[i, : len(s)] = b, s, l, True
    order, together = padded_batched_nms(boxes, scores, labels, valid, 0.5)
    monkeypatch.setattr(nms_module, "_CHUNK_ELEMENTS", 1)  # one image a chunk
    chunked_order, chunked = padded_batched_nms(boxes, scores, labels, valid, 0.5)
    assert torch.equal(order, chunked_order) and torch.equal(together, chunked)
    for i, (b, s, l) in enumerate(images):
        assert order[i][together[i]].tolist() == _greedy_loop(b, s, l, 0.5)


def test_padded_batch_equals_each_image_alone():
    images = [_clustered(seed, count) for seed, count in ((0, 300), (1, 120), (2, 0))]
    size = max(len(scores) for _, scores, _ in images)
    boxes = torch.zeros(3, size, 4)
    scores, labels = torch.zeros(3, size), torch.zeros(3, size, dtype=torch.long)
    valid = torch.zeros(3, size, dtype=torch.bool)
    for i, (b, s, l) in enumerate(images):
        boxes[i, : len(s)], scores[i, : len(s)], labels[i, : len(s)], valid[i, : len(s)] = b, s, l, True
    scores[1, 200:] = 5.0  # padding with high scores must not suppress or be kept
    order, kept = padded_batched_nms(boxes, scores, labels, valid, 0.6)
    for i, (b, s, l) in enumerate(images):
        expected = _greedy_loop(b, s, l, 0.6) if len(s) else []
        assert order[i][kept[i]].tolist() == expected


def test_candidates_are_the_threshold_and_topk_of_mmdet():
    scores = torch.rand(2, 50, 3)
    scores[0, 7, 1] = scores[0, 9, 2] = 0.99  # a tie: position order, as a stable sort
    values, anchors, labels, valid = select_candidates(scores, 0.3, 20)
    for i in range(2):
        flat = scores[i].flatten()
        passing = torch.nonzero(flat > 0.3).flatten()
        ordered = passing[flat[passing].sort(descending=True, stable=True).indices][:20]
        count = int(valid[i].sum())
        assert count == len(ordered) and bool(valid[i, :count].all()) and not bool(valid[i, count:].any())
        assert (anchors[i, :count] * 3 + labels[i, :count]).tolist() == ordered.tolist()
        assert torch.equal(values[i, :count], flat[ordered])
    single = top_candidates(scores[0], 0.3, 20)
    assert torch.equal(single[0], values[0, : len(single[0])]) and torch.equal(single[1], anchors[0, : len(single[0])])


def test_predict_of_a_batch_equals_predict_of_each_image():
    torch.manual_seed(0)
    model = build_detector(TINY).eval()
    nn.init.constant_(model.head.gfl_cls.bias, 0.0)  # scores near 0.5: many candidates
    images = torch.randn(3, 3, 96, 128)
    sizes = [(70, 60), (96, 128), (90, 100)]
    cfg = TestConfig(score_thr=0.3, max_per_img=50)
    together = model.predict(images, image_sizes=sizes, cfg=cfg)
    for image, size, found in zip(images, sizes, together):
        (alone,) = model.predict(image[None], image_sizes=[size], cfg=cfg)
        assert len(found.scores) > 5
        torch.testing.assert_close(found.boxes, alone.boxes)
        assert torch.equal(found.labels, alone.labels)
        torch.testing.assert_close(found.scores, alone.scores)


def _detector_like(seed, count, classes):
    """Boxes as decoding gives them: inside a 800 x 1344 image, many classes, and integer
    corners and repeated scores for exact ties."""
    generator = torch.Generator().manual_seed(seed)
    xy = (torch.rand(count, 2, generator=generator) * torch.tensor([1200.0, 700.0])).round()
    wh = (20 + torch.rand(count, 2, generator=generator) * 120).round()
    boxes = torch.cat((xy, torch.minimum(xy + wh, torch.tensor([1344.0, 800.0]))), dim=1)
    scores = (torch.rand(count, generator=generator) * 20).round() / 20
    return boxes, scores, torch.randint(0, classes, (count,), generator=generator)


@pytest.mark.parametrize("classes", [1, 2, 80])
def test_the_band_of_each_label_equals_the_greedy_loop(classes):
    # Only candidates of one label are compared (a band as wide as the largest label's
    # group); every other pair is left out, which must change nothing.
    for seed in range(3):
        boxes, scores, labels = _detector_like(seed, 600, classes)
        for threshold in (0.0, 0.3, 0.6):
            assert batched_nms(boxes, scores, labels, threshold).tolist() == _greedy_loop(boxes, scores, labels, threshold)


def test_the_band_is_the_largest_group_unless_classes_could_touch():
    keys = torch.tensor([[0, 0, 1, 1, 1, 2, 2, torch.iinfo(torch.long).max]])  # padding last
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0]]).expand(1, 8, 4)
    shifted = boxes + 100.0
    assert nms_module._band_width(keys, boxes, shifted, 0.5) == 2  # label 1: three candidates
    assert nms_module._band_width(keys, boxes - 15.0, shifted, 0.5) is None  # a negative coordinate
    assert nms_module._band_width(keys, boxes, shifted + 2.0**22, 0.5) is None  # the shift no longer exact
    assert nms_module._band_width(keys, boxes, shifted, -0.1) is None  # a zero overlap suppresses


@pytest.mark.parametrize("threshold", [0.5, -0.1])
def test_classes_that_could_touch_are_compared_in_score_order(threshold):
    # Negative coordinates (mmcv's offset then lets classes overlap) or a negative
    # threshold: every pair counts, as in mmcv, whatever the labels.
    boxes, scores, labels = _clustered(7, 200, classes=5)
    boxes = boxes - 30.0
    assert bool((boxes < 0).any())
    assert batched_nms(boxes, scores, labels, threshold).tolist() == _greedy_loop(boxes, scores, labels, threshold)
    # mmcv's offset (largest coordinate 10, plus 1) moves label 1's box onto label 0's:
    # across labels, the second is suppressed
    boxes = torch.tensor([[-50.0, -50.0, 10.0, 10.0], [-60.0, -60.0, 0.0, 0.0]])
    scores, labels = torch.tensor([0.9, 0.8]), torch.tensor([0, 1])
    assert _greedy_loop(boxes, scores, labels, threshold) == [0]
    assert batched_nms(boxes, scores, labels, threshold).tolist() == [0]
