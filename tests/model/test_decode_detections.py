"""``decode_detections`` batched over levels against the per-level loop it replaced.

The oracle below is that loop: per level a sigmoid, a threshold and a top-k, the tie
fixing, one gather of the bin logits, the integral, the boxes; the levels' candidates
concatenated, then the same suppression. The batched decoding must find exactly its
detections (the same bits), with ties among scores, levels with fewer pairs than
``nms_pre`` and images with different candidate counts.
"""

import pytest
import torch

from ldexport.model import ModelConfig, TestConfig, build_detector
from ldexport.model.bbox import anchor_centers, distance2bbox
from ldexport.model.detector import decode_detections, level_candidates, suppress_batch, top_candidates
from ldexport.model.priors import grid_anchors

# 16 classes: CPU sigmoid computes a tensor's last (numel % 16) elements with a scalar exp
# that can differ from the vectorised one by an ulp, so the oracle's per-level tensors and
# the batched decoding's concatenated one differ there unless C is a multiple of 16.
CLASSES = 16
TINY = ModelConfig(
    depth=18, num_classes=CLASSES, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=2, norm_groups=8
)


def _old_select(scores, score_thr, topk):
    """The single-level candidate selection as it was: ``scores [N, A_l, C]``."""
    batch, _, num_classes = scores.shape
    flat = scores.reshape(batch, -1)
    flat = flat.masked_fill(flat <= score_thr, -1.0)
    values, index = flat.topk(min(topk, flat.shape[1]), dim=1)
    index, perm = index.sort(dim=1)
    values, perm2 = values.gather(1, perm).sort(dim=1, descending=True, stable=True)
    index = index.gather(1, perm2)
    return values, index // num_classes, index % num_classes, values > score_thr


def _per_level_decode(head, cls_scores, bbox_preds, image_sizes, cfg):
    """The decoding as it was, level by level (the oracle)."""
    featmap_sizes = [tuple(score.shape[-2:]) for score in cls_scores]
    anchors = grid_anchors(featmap_sizes, head.strides, head.octave_base_scale)
    batch, num_classes, bins = cls_scores[0].shape[0], head.num_classes, 4 * (head.reg_max + 1)
    boxes_all, scores_all, labels_all, valid_all = [], [], [], []
    for cls_score, bbox_pred, level_anchors, stride in zip(cls_scores, bbox_preds, anchors, head.strides):
        scores = cls_score.permute(0, 2, 3, 1).reshape(batch, -1, num_classes).sigmoid()
        scores, anchor_index, labels, valid = _old_select(scores, cfg.score_thr, cfg.nms_pre)
        logits = bbox_pred.permute(0, 2, 3, 1).reshape(batch, -1, bins)
        logits = logits.gather(1, anchor_index[..., None].expand(-1, -1, bins))
        distances = head.integral(logits).reshape(batch, -1, 4) * stride
        boxes_all.append(distance2bbox(anchor_centers(level_anchors)[anchor_index], distances))
        scores_all.append(scores)
        labels_all.append(labels)
        valid_all.append(valid)
    boxes = torch.cat(boxes_all, dim=1)
    limits = torch.tensor([(w, h, w, h) for h, w in image_sizes], dtype=boxes.dtype)[:, None]
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    return suppress_batch(boxes, torch.cat(scores_all, 1), torch.cat(labels_all, 1), torch.cat(valid_all, 1), cfg)


def _tied_outputs(model, images, mean, offsets):
    """The model's bin logits, and class logits of the given mean, shifted per image (so
    that the images pass different counts), half of them in steps of 1/4 (many exactly
    equal scores)."""
    with torch.no_grad():
        cls_scores, bbox_preds = model(images)
    generator = torch.Generator().manual_seed(1)
    shift = torch.tensor(offsets)[:, None, None, None] + mean
    cls_scores = [torch.randn(score.shape, generator=generator) * 2 + shift for score in cls_scores]
    tied = [torch.where(score > score.median(), (score * 4).round() / 4, score) for score in cls_scores]
    return tied, bbox_preds


@pytest.mark.parametrize(
    "mean,nms_pre,max_per_img",
    [(-6.0, 1000, 100), (-3.0, 1000, 100), (-1.0, 60, 100), (0.0, 1000, 20)],
)
def test_decode_equals_the_per_level_decoding(mean, nms_pre, max_per_img):
    torch.manual_seed(0)
    model = build_detector(TINY).eval()
    images = torch.randn(3, 3, 128, 192)
    # image 0 passes few pairs, image 2 many; the coarse levels (4x6, 2x3, 1x2 anchors)
    # have fewer than nms_pre pairs
    cls_scores, bbox_preds = _tied_outputs(model, images, mean, [-3.0, 0.0, 2.0])
    sizes = [(100, 150), (128, 192), (90, 170)]
    cfg = TestConfig(score_thr=0.05, nms_pre=nms_pre, max_per_img=max_per_img)
    expected = _per_level_decode(model.head, cls_scores, bbox_preds, sizes, cfg)
    found = decode_detections(model.head, cls_scores, bbox_preds, sizes, cfg)
    counts = [len(item.scores) for item in expected]
    assert [len(item.scores) for item in found] == counts
    for mine, theirs in zip(found, expected):
        assert torch.equal(mine.boxes, theirs.boxes)
        assert torch.equal(mine.scores, theirs.scores)
        assert torch.equal(mine.labels, theirs.labels)
    passing = [int(sum((score[i].sigmoid() > cfg.score_thr).sum() for score in cls_scores)) for i in range(3)]
    assert passing[0] < passing[1] < passing[2]  # the images passed different counts
    assert counts[2] >= min(max_per_img, 20)  # and there was work for NMS


def test_level_candidates_equal_each_level_alone():
    generator = torch.Generator().manual_seed(0)
    level_pairs = [300 * CLASSES, 40 * CLASSES, 3 * CLASSES, CLASSES]
    # scores in steps of 1/64: many exact ties, across and within levels
    scores = (torch.rand(4, sum(level_pairs), generator=generator) * 64).floor() / 64
    scores[1] *= 0.2  # image 1 passes few pairs, image 3 none
    scores[3] = 0.01
    topk, score_thr = 50, 0.3
    values, pair_index, valid = level_candidates(scores, level_pairs, score_thr, topk)
    assert values.shape == pair_index.shape == valid.shape == (4, len(level_pairs), topk)
    start = 0
    for level, pairs in enumerate(level_pairs):
        level_scores = scores[:, start : start + pairs].reshape(4, -1, CLASSES)
        start += pairs
        old_values, old_anchors, old_labels, old_valid = _old_select(level_scores, score_thr, topk)
        size = old_values.shape[1]
        assert torch.equal(valid[:, level, :size], old_valid)
        assert not valid[:, level, size:].any() and (values[:, level, size:] == float("-inf")).all()
        for image in range(4):
            count = int(old_valid[image].sum())
            got = pair_index[image, level, :count]
            assert torch.equal(values[image, level, :count], old_values[image, :count])
            assert torch.equal(got // CLASSES, old_anchors[image, :count])
            assert torch.equal(got % CLASSES, old_labels[image, :count])
            # the one-image form the parity code calls finds the same
            alone = top_candidates(level_scores[image], score_thr, topk)
            assert torch.equal(alone[0], values[image, level, :count])
            assert torch.equal(alone[1] * CLASSES + alone[2], got)
    assert int(valid[1].sum()) < int(valid[0].sum()) and not valid[3].any()


def test_anchor_grids_are_built_once_per_size_and_device():
    model = build_detector(TINY)
    head = model.head
    keys = set(model.state_dict())
    sizes = [(12, 20), (6, 10), (3, 5), (2, 3), (1, 2)]
    grid = head.anchor_grid(sizes, torch.device("cpu"))
    assert head.anchor_grid([torch.Size(size) for size in sizes], "cpu") is grid
    levels = grid_anchors(sizes, head.strides, head.octave_base_scale)
    assert torch.equal(grid.points, anchor_centers(torch.cat(levels)))
    assert grid.num_level_anchors == (240, 60, 15, 6, 2)
    assert grid.level_starts.tolist() == [0, 240, 300, 315, 321]
    assert grid.level_strides.tolist() == [8.0, 16.0, 32.0, 64.0, 128.0]
    assert head.anchor_grid(sizes[:4] + [(1, 1)], "cpu") is not grid
    assert set(model.state_dict()) == keys  # a cache, not buffers
    for side in range(40):  # bounded: the oldest sizes go
        head.anchor_grid([(side + 1, 1)] * 5, "cpu")
    assert len(head._anchor_grids) <= 32 and head.anchor_grid(sizes, "cpu") is not grid
