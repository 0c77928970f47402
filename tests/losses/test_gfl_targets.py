"""GFL targets: mmdet's valid flags (from the padded image shape), the flat layout and the
avg factor."""

import torch

from ldexport.assign.ground_truth import pad_ground_truth
from ldexport.losses.gfl_targets import build_gfl_targets, valid_anchors
from ldexport.model.priors import anchor_grid


def test_valid_flags_follow_the_image_padded_to_32_not_the_batch_nor_the_image():
    # a 40 x 50 image in a 64 x 96 batch: mmdet's pad_shape is (64, 64)
    grid = anchor_grid([(8, 12), (1, 1)], [8, 128], 8.0)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    pad_shapes = pad_ground_truth([empty, empty], [(40, 50), (64, 96)], size_divisor=32).pad_shapes
    assert pad_shapes.tolist() == [[64.0, 64.0], [64.0, 96.0]]
    flags = valid_anchors(grid, pad_shapes)
    level0 = flags[0, :96].reshape(8, 12)
    assert level0[:, :8].all() and not level0[:, 8:].any()  # rows 5-7 lie below the image, still valid
    assert flags[0, 96:].tolist() == [True]  # ceil(64 / 128) = 1 cell
    assert flags[1].all()  # the image that fills the batch


def test_grid_holds_anchor_centres_in_strides_and_levels():
    grid = anchor_grid([(2, 3), (1, 2)], [8, 16], 8.0)
    assert grid.num_level_anchors == (6, 2)
    assert grid.levels.tolist() == [0] * 6 + [1] * 2
    # mmdet's anchors are centred on (x * stride, y * stride)
    torch.testing.assert_close(grid.centers[[0, 5, 7]], torch.tensor([[0.0, 0.0], [2.0, 1.0], [1.0, 0.0]]))
    assert grid.origins[5].tolist() == [8.0, 16.0] and grid.origins[7].tolist() == [0.0, 16.0]  # (y, x) pixels


def test_invalid_anchors_get_background_and_zero_weight():
    grid = anchor_grid([(8, 12)], [8], 8.0)
    # a box at the right of the padded batch, over the invalid columns of image 0
    box = {"boxes": torch.tensor([[70.0, 10.0, 90.0, 40.0]]), "labels": torch.tensor([0])}
    gt = build_gfl_targets(grid, pad_ground_truth([box, box], [(40, 50), (64, 96)]), num_classes=3)
    weights = gt.label_weights.reshape(2, 8, 12)
    labels = gt.labels.reshape(2, 8, 12)
    assert not weights[0, :, 8:].any() and (labels[0] == 3).all()  # no valid anchor near the box
    assert weights[1].all() and (labels[1] == 0).any()  # the same box in a full image
    positives = labels[1].reshape(-1) == 0
    assert gt.positive[1].tolist() == positives.tolist()
    torch.testing.assert_close(gt.bbox_targets[1][positives], box["boxes"].expand(int(positives.sum()), 4))
    assert gt.bbox_targets.shape == (2, 96, 4)
    # image 0 has no positive and counts 1; image 1 counts its positives
    assert gt.num_pos.item() == 1 + int(positives.sum())


def test_targets_are_flat_over_images_and_levels_in_anchor_order():
    grid = anchor_grid([(8, 8), (4, 4)], [8, 16], 8.0)
    target = {"boxes": torch.tensor([[2.0, 6.0, 62.0, 50.0]]), "labels": torch.tensor([2])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    gt = build_gfl_targets(grid, pad_ground_truth([target, empty], [(64, 64)] * 2), num_classes=3, with_vlr=True)
    assert gt.labels.shape == (2, 80) and gt.bbox_targets.shape == (2, 80, 4)
    assert gt.vlr_weights is not None and gt.vlr_weights.shape == (2, 80)
    assert int((gt.labels[0] == 2).sum()) == gt.num_pos.item() - 1 > 0
    assert (gt.labels[1] == 3).all() and not gt.vlr_weights[1].any() and gt.vlr_weights[0].any()
