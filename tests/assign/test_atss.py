"""ATSS assignment and LD's VLR region on hand-built anchors, one image and a batch."""

import statistics

import pytest
import torch

from ldexport.assign import atss
from ldexport.assign.atss import candidate_threshold, center_distances, closest_candidates
from ldexport.assign.ground_truth import GroundTruth, pad_ground_truth, padded_count
from ldexport.assign.overlaps import aligned_overlaps, batched_overlaps, pairwise_overlaps

BACKGROUND, IGNORED = -1, -2


def one_image(gt_boxes, ignore_boxes=None) -> GroundTruth:
    target = {"boxes": gt_boxes, "labels": torch.zeros(len(gt_boxes), dtype=torch.long)}
    if ignore_boxes is not None:
        target["ignore_boxes"] = ignore_boxes
    return pad_ground_truth([target], [(1000, 1000)])


def atss_assign(anchors, levels, gt_boxes, *, valid=None, ignore_boxes=None, **kwargs) -> torch.Tensor:
    """The assignment of one image as ``[A]`` box index, BACKGROUND or IGNORED."""
    valid = torch.ones(1, len(anchors), dtype=torch.bool) if valid is None else valid[None]
    result = atss.atss_assign(anchors, levels, valid, one_image(gt_boxes, ignore_boxes), **kwargs)
    index = torch.where(result.positive, result.gt_index, BACKGROUND)
    return (index if result.ignored is None else torch.where(result.ignored, IGNORED, index))[0]


def vlr_region(anchors, levels, gt_boxes, *, topk=9, low_ratio=0.25) -> torch.Tensor:
    valid = torch.ones(1, len(anchors), dtype=torch.bool)
    gt = one_image(gt_boxes)
    assignment = atss.atss_assign(anchors, levels, valid, gt, topk=topk)
    return atss.vlr_region(anchors, valid, gt, assignment, low_ratio=low_ratio)[0]


def square(cx: float, cy: float, side: float) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
# 10 x 10 anchors around the box centre (5, 5); distances 0, 2, 4, 9, 8, 7.
ANCHORS = torch.tensor(
    [square(5, 5, 10), square(7, 5, 10), square(5, 9, 10), square(14, 5, 10), square(-3, 5, 10), square(5, 12, 10)]
)
IOUS = [1.0, 80 / 120, 60 / 140, 10 / 190, 20 / 180, 30 / 170]
# topk = 3: candidates are the 3 closest anchors, 0, 1 and 2.
THRESHOLD = statistics.mean(IOUS[:3]) + statistics.stdev(IOUS[:3])  # 0.98545


def test_overlaps_hand_values():
    torch.testing.assert_close(pairwise_overlaps(ANCHORS, GT)[:, 0], torch.tensor(IOUS))
    # DIoU of anchor 1: IoU 2/3 minus centre distance^2 4 over enclosing diagonal^2 12^2 + 10^2
    diou = pairwise_overlaps(ANCHORS[1:2], GT, mode="diou")
    assert diou.item() == pytest.approx(2 / 3 - 4 / 244, rel=1e-6)
    iof = pairwise_overlaps(ANCHORS[3:4], GT, mode="iof")  # intersection 10 over the anchor's 100
    assert iof.item() == pytest.approx(0.1, rel=1e-6)
    torch.testing.assert_close(aligned_overlaps(ANCHORS[:3], GT.expand(3, 4)), torch.tensor(IOUS[:3]))


def test_threshold_is_mean_plus_unbiased_std_of_the_closest_candidates():
    candidates = closest_candidates(center_distances((ANCHORS[:, :2] + ANCHORS[:, 2:]) / 2, GT[None]), [6], topk=3)  # [1, 1, 3]
    assert sorted(candidates[0, 0].tolist()) == [0, 1, 2]
    overlaps = batched_overlaps(ANCHORS, GT[None]).gather(2, candidates)
    threshold = candidate_threshold(overlaps, torch.ones_like(candidates, dtype=torch.bool))
    assert threshold.item() == pytest.approx(THRESHOLD, rel=1e-6)
    # a candidate that does not count (an invalid anchor) leaves the statistics
    counted = torch.tensor([[[True, True, False]]])
    two = candidate_threshold(overlaps, counted).item()
    kept = overlaps[counted].tolist()
    assert two == pytest.approx(statistics.mean(kept) + statistics.stdev(kept), rel=1e-6)
    # anchor 1 (IoU 2/3) is a candidate, but under the adaptive threshold
    assert atss_assign(ANCHORS, [6], GT, topk=3).tolist() == [0] + [BACKGROUND] * 5


def test_candidates_are_taken_per_level_with_the_level_offset():
    distances = center_distances((ANCHORS[:, :2] + ANCHORS[:, 2:]) / 2, GT[None])
    # levels [0, 1, 2] and [3, 4, 5]: 2 closest of each
    candidates = closest_candidates(distances, [3, 3], topk=2)[0, 0].tolist()
    assert sorted(candidates[:2]) == [0, 1] and sorted(candidates[2:]) == [4, 5]
    # a level with fewer anchors than topk gives all of them
    assert closest_candidates(distances, [1, 5], topk=2).shape == (1, 1, 3)


@pytest.mark.parametrize("valid", [[0, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 1], [1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 1, 0]])
def test_invalid_anchors_are_left_out_as_mmdet_leaves_them_out(valid):
    """mmdet assigns the valid anchors alone; the mask must give the same on them, and
    nothing on the invalid ones (which also leave the threshold's statistics, even where a
    level has fewer valid anchors than ``topk``)."""
    valid = torch.tensor(valid, dtype=torch.bool)
    wide = torch.tensor([[0.0, 0.0, 12.0, 10.0]])  # anchors 0 and 1 both positive when alone
    for gt_boxes in (GT, wide):
        masked = atss_assign(ANCHORS, [3, 3], gt_boxes, topk=2, valid=valid)
        alone = atss_assign(ANCHORS[valid], [int(valid[:3].sum()), int(valid[3:].sum())], gt_boxes, topk=2)
        assert masked[valid].tolist() == alone.tolist()
        assert (masked[~valid] == BACKGROUND).all()


def test_centre_must_be_more_than_001_inside_the_box():
    gt = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    # 8 x 8 anchors containing the 4 x 4 box (IoU 1/4 each), centres 2, 0.02 and 0.005
    # inside its right side, and six far anchors (IoU 0): threshold 1/12 + 1/8 < 1/4.
    near = [square(2, 2, 8), square(3.98, 2, 8), square(3.995, 2, 8)]
    far = [square(30 + 10 * i, 2, 8) for i in range(6)]
    gt_index = atss_assign(torch.tensor(near + far), [9], gt, topk=9)
    assert gt_index.tolist() == [0, 0] + [BACKGROUND] * 7


def test_anchor_positive_for_two_boxes_goes_to_the_larger_iou():
    gts = torch.tensor([[0.0, 0, 10, 10], [2.0, 0, 12, 10]])
    near = [[0.0, 0, 10, 10], [2.0, 0, 12, 10], [0.5, 0, 10.5, 10]]
    far = [square(100 + 20 * i, 5, 10) for i in range(6)]
    # box 0: IoUs 1, 2/3, 0.905 -> threshold 0.723; box 1: 2/3, 1, 0.739 -> 0.678.
    # Anchor 2 is positive for both and goes to box 0 (0.905 > 0.739).
    gt_index = atss_assign(torch.tensor(near + far), [9], gts, topk=9)
    assert gt_index.tolist() == [0, 1, 0] + [BACKGROUND] * 6


def test_ignore_boxes_are_unused_by_default_and_mark_anchors_when_enabled():
    ignore = torch.tensor([square(-3, 5, 10)])  # covers anchor 4 entirely
    default = atss_assign(ANCHORS, [6], GT, topk=3, ignore_boxes=ignore)
    assert default.tolist() == [0] + [BACKGROUND] * 5
    enabled = atss_assign(ANCHORS, [6], GT, topk=3, ignore_boxes=ignore, ignore_iof_thr=0.5)
    assert enabled.tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND, IGNORED, BACKGROUND]


def test_image_without_boxes_is_all_background_and_has_no_vlr():
    empty = torch.zeros(0, 4)
    assert atss_assign(ANCHORS, [6], empty).tolist() == [BACKGROUND] * 6
    assert vlr_region(ANCHORS, [6], empty).tolist() == [0.0] * 6


def test_a_batch_is_assigned_as_its_images_one_by_one():
    """Padding to the batch's largest box count changes nothing: each image of a batch gets
    what it gets alone (boxes of one image never reach another's anchors)."""
    boxes = [GT, torch.zeros(0, 4), torch.tensor([[0.0, 0, 10, 10], [2.0, 0, 12, 10], [4.0, 4, 9, 9]])]
    targets = [{"boxes": b, "labels": torch.arange(len(b))} for b in boxes]
    gt = pad_ground_truth(targets, [(1000, 1000)] * 3)
    assert gt.boxes.shape == (3, 4, 4) and gt.mask.sum(1).tolist() == [1, 0, 3]
    valid = torch.ones(3, len(ANCHORS), dtype=torch.bool)
    batched = atss.atss_assign(ANCHORS, [6], valid, gt, topk=3)
    for image, image_boxes in enumerate(boxes):
        alone = atss_assign(ANCHORS, [6], image_boxes, topk=3)
        together = torch.where(batched.positive[image], batched.gt_index[image], BACKGROUND)
        assert together.tolist() == alone.tolist()
    assert batched.positive[0].any() and batched.positive[2].any()


def test_padded_counts_are_powers_of_two():
    assert [padded_count(n) for n in (0, 1, 4, 5, 9, 64, 65)] == [4, 4, 4, 8, 16, 64, 128]


def test_vlr_region_is_the_diou_band_below_the_threshold():
    # DIoU: anchor 0: 1 (>= threshold, out); 1: 2/3 - 4/244 and 2: 3/7 - 16/296 (in);
    # 3 and 4: negative (out); 5: 3/17 - 49/389 = 0.051, under 0.25 * threshold (out).
    weights = vlr_region(ANCHORS, [6], GT, topk=3)
    torch.testing.assert_close(weights, torch.tensor([0.0, IOUS[1], IOUS[2], 0.0, 0.0, 0.0]))
    # a lower bound of 0.05 * threshold lets anchor 5 in, with its IoU as weight
    assert vlr_region(ANCHORS, [6], GT, topk=3, low_ratio=0.05)[5].item() == pytest.approx(IOUS[5], rel=1e-6)


def test_vlr_weight_is_the_largest_iou_over_the_boxes_holding_the_anchor():
    gts = torch.cat([GT, GT + torch.tensor([0.0, 1.0, 0.0, 1.0])])  # the box, and 1 px lower
    weights = vlr_region(ANCHORS, [6], gts, topk=3)
    single = [vlr_region(ANCHORS, [6], gts[i : i + 1], topk=3) for i in range(2)]
    torch.testing.assert_close(weights, torch.maximum(single[0], single[1]))
    assert weights[2].item() > IOUS[2]  # anchor 2 (centre y 9) overlaps the lower box more
