import torch

from ldexport.model.bbox import bbox2distance, box_iou, distance2bbox
from ldexport.model.nms import batched_nms, nms
from ldexport.model.priors import grid_anchors, level_anchors, valid_flags


def test_level_anchors_are_centred_on_stride_multiples():
    anchors = level_anchors((2, 3), stride=8, octave_base_scale=8)
    # [A, 4], row-major: (x, y) = (0,0), (8,0), (16,0), (0,8), ...; side 64
    assert anchors.shape == (6, 4)
    assert anchors[0].tolist() == [-32.0, -32.0, 32.0, 32.0]
    assert anchors[2].tolist() == [-16.0, -32.0, 48.0, 32.0]
    assert anchors[3].tolist() == [-32.0, -24.0, 32.0, 40.0]


def test_grid_anchors_per_level_sizes():
    anchors = grid_anchors([(4, 4), (2, 2)], strides=(8, 16))
    assert [a.shape[0] for a in anchors] == [16, 4]
    assert (anchors[1][:, 2] - anchors[1][:, 0]).unique().tolist() == [128.0]


def test_valid_flags_mark_unpadded_cells():
    flags = valid_flags((2, 3), (1, 2))
    assert flags.tolist() == [True, True, False, False, False, False]


def test_distance_box_round_trip_and_clipping():
    points = torch.tensor([[10.0, 20.0], [50.0, 5.0]])
    distances = torch.tensor([[1.0, 2.0, 3.0, 4.0], [60.0, 10.0, 5.0, 5.0]])
    boxes = distance2bbox(points, distances)
    assert boxes[0].tolist() == [9.0, 18.0, 13.0, 24.0]
    assert torch.allclose(bbox2distance(points, boxes), distances)
    clipped = distance2bbox(points, distances, max_shape=(8, 52))
    assert clipped[1].tolist() == [0.0, 0.0, 52.0, 8.0]


def test_bbox2distance_clamps_below_reg_max():
    points = torch.tensor([[0.0, 0.0]])
    boxes = torch.tensor([[-100.0, -1.0, 3.0, 100.0]])
    assert torch.allclose(bbox2distance(points, boxes, max_dis=16), torch.tensor([[15.9, 1.0, 3.0, 15.9]]))


def test_box_iou_hand_case():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))


def test_nms_keeps_best_and_non_overlapping_in_score_order():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.3])
    # box 1 (0.81 IoU with box 0) suppresses 0 and 3; box 2 is far away
    assert nms(boxes, scores, 0.6).tolist() == [1, 2]
    # IoU exactly at the threshold is kept (mmcv suppresses only above it)
    assert nms(boxes[:2], scores[:2], 0.81).tolist() == [1, 0]


def test_batched_nms_never_suppresses_across_labels():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    assert batched_nms(boxes, scores, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, torch.tensor([1, 1]), 0.5).tolist() == [0]
    assert batched_nms(boxes[:0], scores[:0], torch.tensor([], dtype=torch.long), 0.5).numel() == 0
