"""ATSS (adaptive training sample selection, Zhang et al., CVPR 2020) as mmdet 3.3's
``ATSSAssigner`` picks GFL/LD training anchors, and LD's valuable localization region.

For each ground-truth box: on every pyramid level take the ``topk`` anchors whose centres
are closest to the box centre; their IoUs with the box give a threshold, mean + standard
deviation (unbiased). Candidates with IoU at or above it, whose centre lies inside the box
by more than 0.01 px, are positives; an anchor positive for several boxes goes to the one
it overlaps most.

The valuable localization region (VLR) of the original LD code (``get_vlr_region`` of its
ATSS assigner) reuses the same threshold: an anchor is in the VLR of a box when its DIoU
with the box lies in ``[low_ratio * threshold, threshold)``, over all anchors of all levels
and with no centre-inside condition. Its weight is its largest IoU over the boxes whose
VLR holds it. Positives are not excluded explicitly: a positive whose DIoU falls below
the threshold (DIoU <= IoU) is in the VLR too.

Legend: ``A`` anchors of one image (all levels, valid ones only), ``A_l`` those of level
``l``, ``M`` ground-truth boxes, ``K = sum_l min(topk, A_l)`` candidates per box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ldexport.assign.overlaps import pairwise_overlaps

# mmdet's "infinite" distance and "no positive" overlap; exact in float32.
INF = 100000000.0
BACKGROUND = -1
IGNORED = -2


def center_distances(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """Euclidean distance between anchor centres and box centres.

    Args:
        anchors: ``[A, 4]``.
        gt_boxes: ``[M, 4]``.

    Returns:
        ``[A, M]``.
    """
    gt_points = torch.stack(((gt_boxes[:, 0] + gt_boxes[:, 2]) / 2.0, (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2.0), dim=1)
    points = torch.stack(((anchors[:, 0] + anchors[:, 2]) / 2.0, (anchors[:, 1] + anchors[:, 3]) / 2.0), dim=1)
    return (points[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()


def ignored_anchors(anchors: Tensor, ignore_boxes: Tensor | None, ignore_iof_thr: float) -> Tensor:
    """Anchors covered by an ignore (crowd) box: IoF above ``ignore_iof_thr`` (> 0 enables).

    Returns:
        ``[A]`` bool.
    """
    ignored = torch.zeros(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    if ignore_iof_thr > 0 and ignore_boxes is not None and ignore_boxes.numel() > 0 and anchors.numel() > 0:
        ignored = pairwise_overlaps(anchors, ignore_boxes, mode="iof").max(dim=1).values > ignore_iof_thr
    return ignored


def closest_candidates(distances: Tensor, num_level_anchors: Sequence[int], topk: int) -> Tensor:
    """Per level and box, the ``topk`` anchors closest to the box centre.

    Args:
        distances: ``[A, M]`` centre distances, levels concatenated in order.
        num_level_anchors: ``A_l`` of every level.
        topk: candidates per level (fewer where a level has fewer anchors).

    Returns:
        ``[K, M]`` anchor indices into ``A``.
    """
    candidates, start = [], 0
    for level_size in num_level_anchors:
        level = distances[start : start + level_size, :]
        _, closest = level.topk(min(topk, level_size), dim=0, largest=False)
        candidates.append(closest + start)
        start += level_size
    return torch.cat(candidates, dim=0)


def candidate_threshold(overlaps: Tensor, candidates: Tensor) -> Tensor:
    """ATSS's adaptive IoU threshold, mean + unbiased std of the candidates' IoUs.

    Args:
        overlaps: ``[A, M]`` IoU.
        candidates: ``[K, M]``.

    Returns:
        ``[M]``.
    """
    candidate_overlaps = overlaps.gather(0, candidates)  # [K, M]
    return candidate_overlaps.mean(0) + candidate_overlaps.std(0)


def _centers_inside(anchors: Tensor, gt_boxes: Tensor, candidates: Tensor) -> Tensor:
    """Whether each candidate's centre is more than 0.01 px inside its box: ``[K, M]``."""
    cx = ((anchors[:, 0] + anchors[:, 2]) / 2.0)[candidates]  # [K, M]
    cy = ((anchors[:, 1] + anchors[:, 3]) / 2.0)[candidates]
    sides = torch.stack(
        (cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy), dim=1
    )  # [K, 4, M]
    return sides.min(dim=1).values > 0.01


def _best_box(overlaps: Tensor, candidates: Tensor, is_pos: Tensor) -> tuple[Tensor, Tensor]:
    """For each anchor, the positive pair with the largest IoU.

    The ``[M, A]`` buffer read through its transpose is mmdet's layout, so that ``max``
    breaks ties (equal IoU with two boxes) as mmdet does.

    Returns:
        ``[A]`` largest IoU (``-INF`` where the anchor is in no positive pair) and ``[A]``
        the index of its box.
    """
    num_anchors, num_gt = overlaps.shape
    masked = overlaps.new_full((num_gt, num_anchors), -INF)
    gt_ids = torch.arange(num_gt, device=overlaps.device).expand_as(candidates)
    pos_gt, pos_anchor = gt_ids[is_pos], candidates[is_pos]
    masked[pos_gt, pos_anchor] = overlaps[pos_anchor, pos_gt]
    return masked.t().max(dim=1)


def atss_assign(
    anchors: Tensor,
    num_level_anchors: Sequence[int],
    gt_boxes: Tensor,
    *,
    topk: int = 9,
    ignore_boxes: Tensor | None = None,
    ignore_iof_thr: float = -1.0,
) -> Tensor:
    """Assigns each anchor to a ground-truth box, to the background, or to "ignored".

    Args:
        anchors: ``[A, 4]`` xyxy, levels concatenated in order.
        num_level_anchors: ``A_l`` of every level.
        gt_boxes: ``[M, 4]`` xyxy.
        topk: candidates per level and box.
        ignore_boxes: ``[G, 4]`` crowd boxes; used only when ``ignore_iof_thr > 0``.
        ignore_iof_thr: IoF above which an anchor is ignored; mmdet's default -1 disables.

    Returns:
        ``[A]`` int64: index into ``gt_boxes``, :data:`BACKGROUND` or :data:`IGNORED`.
    """
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    gt_index = torch.full((num_anchors,), BACKGROUND, dtype=torch.long, device=anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return gt_index
    overlaps = pairwise_overlaps(anchors, gt_boxes)  # [A, M]
    distances = center_distances(anchors, gt_boxes)  # [A, M]
    ignored = ignored_anchors(anchors, ignore_boxes, ignore_iof_thr)
    distances[ignored, :] = INF
    gt_index[ignored] = IGNORED
    candidates = closest_candidates(distances, num_level_anchors, topk)  # [K, M]
    threshold = candidate_threshold(overlaps, candidates)  # [M]
    is_pos = overlaps.gather(0, candidates) >= threshold[None, :]
    is_pos &= _centers_inside(anchors, gt_boxes, candidates)
    best_overlap, best_gt = _best_box(overlaps, candidates, is_pos)
    positive = best_overlap != -INF
    gt_index[positive] = best_gt[positive]
    return gt_index


def vlr_region(
    anchors: Tensor,
    num_level_anchors: Sequence[int],
    gt_boxes: Tensor,
    *,
    topk: int = 9,
    low_ratio: float = 0.25,
    ignore_boxes: Tensor | None = None,
    ignore_iof_thr: float = -1.0,
) -> Tensor:
    """LD's valuable localization region and its weights.

    Args:
        anchors: ``[A, 4]`` xyxy, levels concatenated in order.
        num_level_anchors: ``A_l`` of every level.
        gt_boxes: ``[M, 4]`` xyxy.
        topk: candidates per level and box for the ATSS threshold.
        low_ratio: the region's lower DIoU bound as a fraction of the ATSS threshold.
        ignore_boxes: as in :func:`atss_assign` (they only leave the threshold's
            candidates).
        ignore_iof_thr: as in :func:`atss_assign`.

    Returns:
        ``[A]`` float: the anchor's largest IoU with a box whose VLR holds it; 0 outside
        every VLR (and for an image without boxes).
    """
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if num_gt == 0 or num_anchors == 0:
        return anchors.new_zeros(num_anchors)
    overlaps = pairwise_overlaps(anchors, gt_boxes)  # [A, M]
    dious = pairwise_overlaps(anchors, gt_boxes, mode="diou")  # [A, M]
    distances = center_distances(anchors, gt_boxes)
    distances[ignored_anchors(anchors, ignore_boxes, ignore_iof_thr), :] = INF
    threshold = candidate_threshold(overlaps, closest_candidates(distances, num_level_anchors, topk))[None, :]
    in_region = (dious < threshold) & (dious >= low_ratio * threshold)  # [A, M]
    best = torch.where(in_region, overlaps, overlaps.new_tensor(-INF)).max(dim=1).values
    return torch.where(best != -INF, best, best.new_zeros(()))
