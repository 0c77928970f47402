"""Non-maximum suppression in pure PyTorch, with mmcv's semantics, batched over images.

mmcv's ``nms`` keeps a box unless a higher-scoring kept box overlaps it with IoU strictly
greater than the threshold (areas without the legacy +1), and returns the kept indices in
descending score order. ``batched_nms`` makes it class-aware by shifting each class's
boxes by ``label * (max_coordinate + 1)``, exactly as mmcv does, so that borderline
overlaps round the same way.

Only boxes of one label can suppress each other (the shifted classes lie apart), so the
candidates are grouped by label, each group in score order, and each is compared with the
``W`` candidates before it in that order: ``W + 1`` is the largest group of an image.
The overlaps are a band ``[N, K, W]``, not a ``[N, K, K]`` matrix: with the 80 classes of
COCO and 5000 candidates an image, tens of times fewer elements; with one class, the
same. (Where the classes could touch, boxes with negative coordinates or coordinates too
large for the shift to stay exact, or a negative threshold, the band is the whole
triangle: the same answer as comparing every pair.)

The greedy pass has no Python loop over boxes: box ``j`` is kept when no kept box before
it in its group suppresses it. That recurrence is solved as a fixed point, ``keep = valid
& ~any(keep[window] & suppresses)`` iterated from ``keep = valid`` (one read-back every
two rounds): after ``t`` rounds every box whose chain of suppressors is shorter than
``t`` is final, and the unique fixed point is the greedy answer, reached after (longest
chain + 1) rounds, a handful in practice.

Legend: ``N`` images, ``K`` candidates of one image (padded to the batch's largest count),
``W`` the band's width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ldexport.model.bbox import box_iou

# Band elements (``K * W``) of at most this many at a time (images are taken in chunks): a
# bound for the CPU's memory; a GPU takes a batch of 8 images of 5000 candidates as one
# chunk even with a single class (a few GB of temporaries), so that the rounds' launches
# and read-backs come once.
_CHUNK_ELEMENTS = 1 << 25
_CHUNK_ELEMENTS_CUDA = 1 << 28
# Shifted coordinates below this are exact to far better than the 1-pixel gap between
# classes (float32 has 24 bits).
_EXACT_SHIFT = float(1 << 22)


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
    # first read-back: the largest candidate count bounds everything after it
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
    # [N, K']: each label's candidates together, in score order; padding last
    grouped = torch.where(valid, labels, torch.iinfo(labels.dtype).max).sort(dim=1, stable=True)
    width = _band_width(grouped.values, boxes, shifted, iou_threshold)  # second read-back
    if width is None:  # the classes might touch: every pair, in score order
        width, groups = count - 1, None
    else:
        groups = grouped.indices
        shifted = shifted.gather(1, groups.unsqueeze(2).expand(-1, -1, 4))
        valid = valid.gather(1, groups)
    limit = _CHUNK_ELEMENTS_CUDA if boxes.device.type == "cuda" else _CHUNK_ELEMENTS
    chunk = max(1, limit // (count * max(width, 1)))
    if chunk >= batch:
        kept = _greedy(shifted, valid, width, iou_threshold)
    else:
        kept = torch.cat([
            _greedy(shifted[s : s + chunk], valid[s : s + chunk], width, iou_threshold) for s in range(0, batch, chunk)
        ])  # fmt: skip
    if groups is not None:
        kept = torch.zeros_like(kept).scatter_(1, groups, kept)  # back to score order
    return order, kept


def _band_width(keys: Tensor, boxes: Tensor, shifted: Tensor, iou_threshold: float) -> int | None:
    """``W``: the largest group of one label among the valid candidates, less one; or
    ``None`` where the shifted classes might not lie apart (then every pair counts, in
    score order).

    Args:
        keys: ``[N, K']`` the labels sorted, each row's padding last with the largest key.
        boxes, shifted: ``[N, K', 4]`` the candidates before and after the shift.

    The classes lie apart when no coordinate is negative (each class then spans at most
    ``max_coordinate`` from its offset, one pixel short of the next) and the shifted
    coordinates stay below 2**22 (float32 then rounds them by at most an eighth of a
    pixel). Both are checked over every row, padding included: a stricter test.
    """
    if iou_threshold < 0:  # a zero overlap suppresses: classes do not keep apart
        return None
    position = torch.arange(keys.shape[1], device=keys.device)
    # [N, K']: place of each candidate in its group (the index of the group's first key)
    depth = position - torch.searchsorted(keys, keys)
    depth = torch.where(keys != torch.iinfo(keys.dtype).max, depth, 0).amax()
    apart = (boxes.amin() >= 0) & (shifted.amax() < _EXACT_SHIFT)
    width = int(torch.where(apart, depth, -1))
    return width if width >= 0 else None


def _greedy(boxes: Tensor, valid: Tensor, width: int, iou_threshold: float) -> Tensor:
    """Greedy suppression of boxes ``[n, K, 4]`` grouped by label, each group in score
    order; returns ``keep [n, K]``."""
    if width == 0:  # no group holds two candidates
        return valid.clone()
    count = boxes.shape[1]
    # [n, K, W, 4]: the W candidates before each (zero boxes before the first: no overlap)
    before = F.pad(boxes, (0, 0, width, 0)).unfold(1, width, 1)[:, :count].transpose(2, 3)
    # [n, K, W]: would that earlier candidate suppress this one? (IoU's arithmetic is
    # symmetric in its two boxes: the bits of the pair's entry in the full matrix)
    suppresses = box_iou(boxes.unsqueeze(2), before, eps=0.0).squeeze(2) > iou_threshold
    # two keep vectors, each after W places of False, and each one's windows: the rounds
    # write one from the other's windows in place (three operations a round)
    buffers = valid.new_zeros((2, valid.shape[0], width + count))
    keep, once = buffers[:, :, width:].unbind(0)  # [n, K] each
    keep_windows, once_windows = buffers.unfold(2, width, 1)[:, :, :count].unbind(0)  # [n, K, W] each
    keep.copy_(valid)
    while True:
        # two rounds a read-back: a round from the fixed point returns it, so when the
        # second round repeats the first, the first is the (unique) fixed point
        _round(keep_windows, suppresses, valid, once)
        _round(once_windows, suppresses, valid, keep)
        if torch.equal(once, keep):
            return keep


def _round(windows: Tensor, suppresses: Tensor, candidates: Tensor, out: Tensor) -> None:
    """One round of the fixed point into ``out``: the candidates that no kept box of their
    window suppresses.

    Args:
        windows: ``[n, K, W]`` bool, the kept flags of each candidate's window;
            suppresses: ``[n, K, W]`` bool; candidates, out: ``[n, K]`` bool.
    """
    torch.gt(candidates, (windows & suppresses).any(dim=2), out=out)  # candidate and not suppressed


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
