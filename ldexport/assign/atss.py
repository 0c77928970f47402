"""ATSS (adaptive training sample selection, Zhang et al., CVPR 2020) as mmdet 3.3's
``ATSSAssigner`` picks GFL/LD training anchors, and LD's valuable localization region;
both for a whole batch at once, on fixed-size tensors.

For each ground-truth box: on every pyramid level take the ``topk`` anchors whose centres
are closest to the box centre; their IoUs with the box give a threshold, mean + standard
deviation (unbiased). Candidates with IoU at or above it, whose centre lies inside the box
by more than 0.01 px, are positives; an anchor positive for several boxes goes to the one
it overlaps most.

mmdet assigns image by image, over the anchors inside the image (its valid flags). Here
every image keeps all ``A`` anchors of the padded batch and a validity mask: an invalid
anchor is infinitely far from every box, so that it is picked as a candidate only where
a level has fewer than ``topk`` valid anchors, and such a candidate is left out of the
threshold's statistics, as mmdet leaves it out of its candidate set. Padded boxes (the
:class:`~ldexport.assign.ground_truth.GroundTruth` mask) take part in nothing.

The valuable localization region (VLR) of the original LD code (``get_vlr_region`` of its
ATSS assigner) reuses the same threshold: an anchor is in the VLR of a box when its DIoU
with the box lies in ``[low_ratio * threshold, threshold)``, over all valid anchors of all
levels and with no centre-inside condition. Its weight is its largest IoU over the boxes
whose VLR holds it. Positives are not excluded explicitly: a positive whose DIoU falls
below the threshold (DIoU <= IoU) is in the VLR too.

Legend: ``N`` images, ``A`` anchors (all levels), ``A_l`` those of level ``l``, ``M``
boxes per image (padded), ``G`` ignore boxes per image (padded), ``K = sum_l min(topk,
A_l)`` candidates per box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ldexport.assign.ground_truth import GroundTruth
from ldexport.assign.overlaps import batched_iou_and_diou, batched_overlaps

# mmdet's "infinite" distance and "no positive" overlap; exact in float32.
INF = 100000000.0


@dataclass
class Assignment:
    """What ATSS decided for every anchor of every image.

    Attributes:
        positive: ``[N, A]`` bool.
        gt_index: ``[N, A]`` int64, the box of a positive (0 elsewhere: mask with
            ``positive``).
        ignored: ``[N, A]`` bool, covered by an ignore box and not positive; ``None``
            when ignoring is off.
        overlaps: ``[N, M, A]`` IoU of every box with every anchor.
        threshold: ``[N, M]`` the adaptive IoU threshold of every box.
        dious: ``[N, M, A]`` their DIoU when asked for (the VLR reads it), else ``None``.
    """

    positive: Tensor
    gt_index: Tensor
    ignored: Tensor | None
    overlaps: Tensor
    threshold: Tensor
    dious: Tensor | None = None


def _centers(boxes: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> ``[..., 2]`` centres, as mmdet computes them (``(x1 + x2) / 2.0``)."""
    top_left, bottom_right = boxes.split(2, dim=-1)
    return (top_left + bottom_right) / 2.0


def center_distances(points: Tensor, gt_boxes: Tensor) -> Tensor:
    """Euclidean distance between anchor centres and box centres.

    Args:
        points: ``[A, 2]`` anchor centres.
        gt_boxes: ``[N, M, 4]``.

    Returns:
        ``[N, M, A]``.
    """
    return (points - _centers(gt_boxes)[:, :, None, :]).pow(2).sum(-1).sqrt()  # [A, 2] broadcasts


def ignored_anchors(anchors: Tensor, gt: GroundTruth, ignore_iof_thr: float) -> Tensor | None:
    """Anchors covered by an ignore (crowd) box: IoF above ``ignore_iof_thr`` (> 0 enables).

    Returns:
        ``[N, A]`` bool, or ``None`` when ignoring is off (mmdet's default).
    """
    if ignore_iof_thr <= 0:
        return None
    iof = batched_overlaps(anchors, gt.ignore_boxes, mode="iof")  # [N, G, A]
    iof = torch.where(gt.ignore_mask[:, :, None], iof, 0.0)
    return iof.max(dim=1).values > ignore_iof_thr


def closest_candidates(distances: Tensor, num_level_anchors: Sequence[int], topk: int) -> Tensor:
    """Per level and box, the ``topk`` anchors closest to the box centre.

    Args:
        distances: ``[N, M, A]`` centre distances, levels concatenated in order.
        num_level_anchors: ``A_l`` of every level.
        topk: candidates per level (fewer where a level has fewer anchors).

    Returns:
        ``[N, M, K]`` anchor indices into ``A``.
    """
    candidates, offsets, start = [], [], 0
    for level, level_size in zip(distances.split(list(num_level_anchors), dim=-1), num_level_anchors):
        _, closest = level.topk(min(topk, level_size), dim=-1, largest=False)
        candidates.append(closest)
        offsets += [start] * closest.shape[-1]
        start += level_size
    # each level's first anchor index, added once to all levels' picks
    return torch.cat(candidates, dim=-1).add_(_level_offsets(tuple(offsets), distances.device))


_OFFSETS: dict[tuple[tuple[int, ...], str], Tensor] = {}


def _level_offsets(offsets: tuple[int, ...], device: torch.device) -> Tensor:
    """``[K]`` the candidates' level offsets as a tensor, made once per layout and device."""
    if torch.compiler.is_compiling():  # a constant of the compiled graph
        return torch.tensor(offsets, dtype=torch.long, device=device)
    key = (offsets, str(device))
    if key not in _OFFSETS:
        _OFFSETS[key] = torch.tensor(offsets, dtype=torch.long).to(device)
    return _OFFSETS[key]


def candidate_threshold(candidate_overlaps: Tensor, candidate_valid: Tensor) -> Tensor:
    """ATSS's adaptive IoU threshold, mean + unbiased std of the valid candidates' IoUs.

    Args:
        candidate_overlaps: ``[N, M, K]`` IoU.
        candidate_valid: ``[N, M, K]`` bool, the candidates that count.

    Returns:
        ``[N, M]`` (NaN for a box with a single candidate, as ``torch.std`` gives mmdet).
    """
    count = candidate_valid.sum(-1, dtype=candidate_overlaps.dtype)  # [N, M]
    mean = torch.where(candidate_valid, candidate_overlaps, 0.0).sum(-1) / count
    deviation = torch.where(candidate_valid, candidate_overlaps - mean[..., None], 0.0)
    return mean + (deviation.pow(2).sum(-1) / (count - 1)).sqrt()


def _centers_inside(points: Tensor, gt_boxes: Tensor, candidates: Tensor) -> Tensor:
    """Whether each candidate's centre is more than 0.01 px inside its box: ``[N, M, K]``."""
    points = points[candidates]  # [N, M, K, 2]
    top_left, bottom_right = gt_boxes[:, :, None, :].split(2, dim=-1)  # [N, M, 1, 2] each
    sides = torch.cat((points - top_left, bottom_right - points), dim=-1)  # [N, M, K, 4] l, t, r, b
    return sides.min(dim=-1).values > 0.01


def atss_assign(
    anchors: Tensor,
    num_level_anchors: Sequence[int],
    valid: Tensor,
    gt: GroundTruth,
    *,
    topk: int = 9,
    ignore_iof_thr: float = -1.0,
    with_diou: bool = False,
    points: Tensor | None = None,
    areas: Tensor | None = None,
) -> Assignment:
    """Assigns every anchor of every image to a box, to the background, or to "ignored".

    Args:
        anchors: ``[A, 4]`` xyxy, levels concatenated in order, the same for every image.
        num_level_anchors: ``A_l`` of every level.
        valid: ``[N, A]`` bool, the anchors mmdet assigns (inside each image's padded
            extent).
        gt: the padded ground truth.
        topk: candidates per level and box.
        ignore_iof_thr: IoF with an ignore box above which an anchor is ignored; mmdet's
            default -1 disables.
        with_diou: also compute the DIoUs (:func:`vlr_region` reads them).
        points: ``[A, 2]`` the anchors' centres, when already at hand.
        areas: ``[A]`` the anchors' areas, when already at hand.
    """
    points = _centers(anchors) if points is None else points
    if with_diou:
        overlaps, dious = batched_iou_and_diou(anchors, gt.boxes, anchor_areas=areas)  # [N, M, A] each
    else:
        overlaps, dious = batched_overlaps(anchors, gt.boxes, anchor_areas=areas), None
    distances = center_distances(points, gt.boxes)  # [N, M, A]
    ignored = ignored_anchors(anchors, gt, ignore_iof_thr)
    if ignored is not None:
        distances = torch.where(ignored[:, None, :], INF, distances)
    valid_pairs = valid[:, None, :].expand_as(overlaps)  # [N, M, A]
    # invalid anchors sort after every valid (and ignored) one
    distances = torch.where(valid_pairs, distances, float("inf"))
    candidates = closest_candidates(distances, num_level_anchors, topk)  # [N, M, K]
    candidate_overlaps = overlaps.gather(2, candidates)  # [N, M, K]
    candidate_valid = valid_pairs.gather(2, candidates) & gt.mask[..., None]  # [N, M, K]
    threshold = candidate_threshold(candidate_overlaps, candidate_valid)  # [N, M]
    is_pos = (candidate_overlaps >= threshold[..., None]) & candidate_valid
    is_pos &= _centers_inside(points, gt.boxes, candidates)
    # [N, M, A] positive pairs' IoU, -INF elsewhere; max over M through the transpose
    # (mmdet's [M, A] buffer read as [A, M]) breaks ties between boxes as mmdet does
    masked = overlaps.new_full(overlaps.shape, -INF)
    masked.scatter_(2, candidates, torch.where(is_pos, candidate_overlaps, -INF))
    best_overlap, gt_index = masked.transpose(1, 2).max(dim=2)  # [N, A]
    positive = best_overlap != -INF
    return Assignment(
        positive=positive, gt_index=gt_index, ignored=ignored & ~positive if ignored is not None else None,
        overlaps=overlaps, threshold=threshold,
        dious=dious,
    )


def vlr_region(anchors: Tensor, valid: Tensor, gt: GroundTruth, assignment: Assignment, *, low_ratio: float = 0.25) -> Tensor:
    """LD's valuable localization region and its weights.

    Args:
        anchors: ``[A, 4]`` xyxy, as given to :func:`atss_assign`.
        valid: ``[N, A]`` as given to :func:`atss_assign`.
        gt: as given to :func:`atss_assign`.
        assignment: its result (the IoUs and thresholds are reused).
        low_ratio: the region's lower DIoU bound as a fraction of the ATSS threshold.

    Returns:
        ``[N, A]`` float: the anchor's largest IoU with a box whose VLR holds it; 0 outside
        every VLR, for invalid anchors and in an image without boxes.
    """
    dious = assignment.dious if assignment.dious is not None else batched_overlaps(anchors, gt.boxes, mode="diou")
    threshold = assignment.threshold[..., None]  # [N, M, 1]
    in_region = (dious < threshold) & (dious >= low_ratio * threshold) & gt.mask[..., None] & valid[:, None, :]
    overlaps = assignment.overlaps
    best = torch.where(in_region, overlaps, -INF).max(dim=1).values  # [N, A]
    return torch.where(best != -INF, best, 0.0)
