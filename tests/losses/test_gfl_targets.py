"""GFL targets: mmdet's valid flags (from the padded image shape) and the avg factor."""

import torch

from ldexport.losses.gfl_targets import build_gfl_targets, image_valid_flags
from ldexport.model.priors import grid_anchors


def test_valid_flags_follow_the_image_padded_to_32_not_the_batch_nor_the_image():
    # a 40 x 50 image in a 64 x 96 batch: mmdet's pad_shape is (64, 64)
    flags = image_valid_flags([(8, 12), (1, 1)], [8, 128], (40, 50), pad_size_divisor=32)
    level0 = flags[:96].reshape(8, 12)
    assert level0[:, :8].all() and not level0[:, 8:].any()  # rows 5-7 lie below the image, still valid
    assert flags[96:].tolist() == [True]  # ceil(64 / 128) = 1 cell


def test_invalid_anchors_get_background_and_zero_weight():
    featmap_sizes, strides = [(8, 12)], [8]
    anchors = grid_anchors(featmap_sizes, strides)
    # a box at the right of the padded batch, over the invalid columns of image 0
    box = {"boxes": torch.tensor([[70.0, 10.0, 90.0, 40.0]]), "labels": torch.tensor([0])}
    gt = build_gfl_targets(anchors, featmap_sizes, strides, [box, box], [(40, 50), (64, 96)], num_classes=3)
    weights = gt.label_weights[0].reshape(2, 8, 12)
    labels = gt.labels[0].reshape(2, 8, 12)
    assert not weights[0, :, 8:].any() and (labels[0] == 3).all()  # no valid anchor near the box
    assert weights[1].all() and (labels[1] == 0).any()  # the same box in a full image
    positives = labels[1] == 0
    positive_targets = gt.bbox_targets[0][1][positives.reshape(-1)]
    torch.testing.assert_close(positive_targets, box["boxes"].expand(int(positives.sum()), 4))
    # image 0 has no positive and counts 1; image 1 counts its positives
    assert gt.num_pos == 1 + int(positives.sum())


def test_targets_are_split_per_level_in_anchor_order():
    featmap_sizes, strides = [(8, 8), (4, 4)], [8, 16]
    anchors = grid_anchors(featmap_sizes, strides)
    target = {"boxes": torch.tensor([[2.0, 6.0, 62.0, 50.0]]), "labels": torch.tensor([2])}
    gt = build_gfl_targets(anchors, featmap_sizes, strides, [target], [(64, 64)], num_classes=3, with_vlr=True)
    assert [tuple(t.shape) for t in gt.labels] == [(1, 64), (1, 16)]
    assert [tuple(t.shape) for t in gt.bbox_targets] == [(1, 64, 4), (1, 16, 4)]
    assert gt.vlr_weights is not None and [tuple(t.shape) for t in gt.vlr_weights] == [(1, 64), (1, 16)]
    assert int(sum((t == 2).sum() for t in gt.labels)) == gt.num_pos > 0
