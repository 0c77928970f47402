"""Non-maximum suppression in pure PyTorch, with mmcv's semantics, batched over images.

mmcv's ``nms`` keeps a box unless a higher-scoring kept box overlaps it with IoU strictly
greater than the threshold (areas without the legacy +1), and returns the kept indices in
descending score order. ``batched_nms`` makes it class-aware by shifting each class's
boxes by ``label * (max_coordinate + 1)``, exactly as mmcv does, so that borderline
overlaps round the same way.

The greedy pass has no Python loop over boxes: with the candidates sorted by score, box
``j`` is kept when no kept box ``i < j`` suppresses it. That recurrence is solved as a
fixed point, ``keep = valid & ~any_i(keep[i] & S[i, j])`` iterated from ``keep = valid``
(one matrix product a round, one read-back every two rounds): after ``t`` rounds every
box whose chain of suppressors is shorter than ``t`` is final, and the unique fixed point
is the greedy answer, reached after (longest chain + 1) rounds, a handful in practice.

Legend: ``N`` images, ``K`` candidates of one image (padded to the batch's largest count).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldexport.model.bbox import box_iou

# IoU matrices of at most this many elements at a time (images are taken in chunks): a
# bound for the CPU's memory; a GPU takes a batch of 8 images of 5000 candidates as one
# chunk (a few GB of temporaries), so that the rounds' launches and read-backs come once.
_CHUNK_ELEMENTS = 1 << 25
_CHUNK_ELEMENTS_CUDA = 1 << 28


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
    order = torch.where(valid, scores, float("-inf")).sort(dim=1, descending=True, stable=True).indices
    # one read-back: the largest candidate count bounds the [K', K'] overlap matrices
    count = int(valid.sum(1).max()) if valid.numel() else 0
    order = order.narrow(1, 0, count)
    valid = valid.gather(1, order)  # [N, K']: a prefix of each row
    if count == 0:
        return order, valid
    boxes = boxes.gather(1, order.unsqueeze(2).expand(-1, -1, 4))
    labels = labels.gather(1, order)
    # [N]: mmcv's offset base, the largest coordinate among an image's candidates
    largest = torch.where(valid.unsqueeze(2), boxes, float("-inf")).amax(dim=(1, 2))
    largest = torch.where(valid.any(1), largest, 0.0)
    shifted = boxes + (labels.to(boxes) * (largest[:, None] + 1))[..., None]
    limit = _CHUNK_ELEMENTS_CUDA if boxes.device.type == "cuda" else _CHUNK_ELEMENTS
    chunk = max(1, limit // (count * count))
    if chunk >= batch:
        return order, _greedy(shifted, valid, iou_threshold)
    kept = torch.cat([_greedy(shifted[s : s + chunk], valid[s : s + chunk], iou_threshold) for s in range(0, batch, chunk)])
    return order, kept


def _greedy(boxes: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy suppression of score-sorted boxes ``[n, K, 4]``; returns ``keep [n, K]``."""
    # [n, K, K]: would row box i (a higher score, i < j) suppress column box j? Rows of
    # padding need no mask: ``keep`` never holds them.
    weights = (box_iou(boxes, boxes, eps=0.0) > iou_threshold).triu_(diagonal=1)
    weights = weights.to(boxes.dtype if boxes.is_floating_point() else torch.float32)
    # [n, 1, K] as 0/1 floats, the shape and type of one round's matrix product
    candidates = valid.unsqueeze(1).to(weights.dtype)
    keep = candidates
    while True:
        # two rounds a read-back: a round from the fixed point returns it, so when the
        # second round repeats the first, the first is the (unique) fixed point
        once = _round(keep, weights, candidates)
        twice = _round(once, weights, candidates)
        if torch.equal(once, twice):
            return twice[:, 0] > 0
        keep = twice


def _round(keep: Tensor, weights: Tensor, candidates: Tensor) -> Tensor:
    """One round of the fixed point: the candidates no box of ``keep`` suppresses.

    Args:
        keep: ``[n, 1, K]`` 0/1; weights: ``[n, K, K]`` 0/1; candidates: ``[n, 1, K]`` 0/1.
    """
    return torch.where(torch.bmm(keep, weights) > 0, 0.0, candidates)


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
