"""Non-maximum suppression in pure PyTorch, with mmcv's semantics, batched over images.

mmcv's ``nms`` keeps a box unless a higher-scoring kept box overlaps it with IoU strictly
greater than the threshold (areas without the legacy +1), and returns the kept indices in
descending score order. ``batched_nms`` makes it class-aware by shifting each class's
boxes by ``label * (max_coordinate + 1)``, exactly as mmcv does, so that borderline
overlaps round the same way.

The greedy pass has no Python loop over boxes: with the candidates sorted by score, box
``j`` is kept when no kept box ``i < j`` suppresses it. That recurrence is solved as a
fixed point, ``keep = valid & ~any_i(keep[i] & S[i, j])`` iterated from ``keep = valid``
(one matrix product a round): after ``t`` rounds every box whose chain of suppressors is
shorter than ``t`` is final, and the unique fixed point is the greedy answer, reached
after (longest chain + 1) rounds, a handful in practice.

Legend: ``N`` images, ``K`` candidates of one image (padded to the batch's largest count).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldexport.model.bbox import box_iou

# IoU matrices of at most this many elements at a time (images are taken in chunks).
_CHUNK_ELEMENTS = 1 << 25


def padded_batched_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, iou_threshold: float
) -> tuple[Tensor, Tensor]:
    """Class-aware greedy NMS of every image of a padded batch at once.

    Args:
        boxes: ``[N, K, 4]`` xyxy.
        scores: ``[N, K]``.
        labels: ``[N, K]`` int64; boxes of different labels never suppress each other.
        valid: ``[N, K]`` bool, the real candidates (the rest is padding).
        iou_threshold: overlaps strictly above it suppress.

    Returns:
        ``order [N, K']``: candidate indices by descending score (ties in index order;
        padding last), ``K' <= K`` the largest candidate count of an image; ``kept
        [N, K']`` bool, whether ``order``'s candidate survives.
    """
    batch = scores.shape[0]
    key = scores.masked_fill(~valid, float("-inf"))
    order = key.sort(dim=1, descending=True, stable=True).indices
    # one read-back: the largest candidate count bounds the [K', K'] overlap matrices
    count = int(valid.sum(1).max()) if valid.numel() else 0
    order = order[:, :count]
    valid = valid.gather(1, order)
    if count == 0:
        return order, valid
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    labels = labels.gather(1, order)
    # [N]: mmcv's offset base, the largest coordinate among an image's candidates
    largest = boxes.masked_fill(~valid[..., None], float("-inf")).amax(dim=(1, 2))
    largest = torch.where(valid.any(1), largest, torch.zeros_like(largest))
    shifted = boxes + (labels.to(boxes) * (largest[:, None] + 1))[..., None]
    chunk = max(1, _CHUNK_ELEMENTS // (count * count))
    kept = torch.cat([_greedy(shifted[s : s + chunk], valid[s : s + chunk], iou_threshold) for s in range(0, batch, chunk)])
    return order, kept


def _greedy(boxes: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy suppression of score-sorted boxes ``[n, K, 4]``; returns ``keep [n, K]``."""
    # [n, K, K]: does row box i (a higher score, i < j) suppress column box j?
    suppresses = (box_iou(boxes, boxes, eps=0.0) > iou_threshold).triu_(diagonal=1)
    suppresses &= valid[:, :, None]
    weights = suppresses.to(boxes.dtype if boxes.is_floating_point() else torch.float32)
    keep = valid
    while True:
        # [n, K]: is some kept box suppressing this one?
        suppressed = torch.bmm(keep.to(weights.dtype)[:, None, :], weights)[:, 0] > 0
        updated = valid & ~suppressed
        if torch.equal(updated, keep):
            return keep
        keep = updated


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of one image.

    Args:
        boxes: ``[K, 4]`` xyxy.
        scores: ``[K]``.
        iou_threshold: overlaps above this suppress.

    Returns:
        ``[K']`` int64 indices into ``boxes``, by descending score.
    """
    labels = torch.zeros(scores.shape, dtype=torch.long, device=boxes.device)
    return batched_nms(boxes, scores, labels, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS of one image: boxes of different labels never suppress each other.

    Args:
        boxes: ``[K, 4]``; scores: ``[K]``; labels: ``[K]`` int64.

    Returns:
        ``[K']`` kept indices by descending score.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    valid = torch.ones(scores.shape, dtype=torch.bool, device=boxes.device)
    order, kept = padded_batched_nms(boxes[None], scores[None], labels[None], valid[None], iou_threshold)
    return order[0][kept[0]]
